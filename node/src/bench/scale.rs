//! `keel bench scale`: how a node's memory, its restart time and its reads
//! grow with the data it retains (ARCHITECTURE.md's "scale is a design
//! property", measured).
//!
//! Three `keel node` processes on loopback, laid out and started through
//! [`crate::launch`] with the default configuration (SYNC_FLUSH), each
//! writing its output to `node{i}.log` beside its data, in a scratch
//! directory `keel-scale-*` under `--dir`. One topic that keeps everything
//! (retention -1). For each of `--sizes` in turn (cumulative: the same
//! cluster is filled to the first size, measured, filled on to the second):
//!
//! 1. **fill**: `--producers` batching producers (keel-client's
//!    [`Batcher`]), each with `--inflight` records in flight. Record `i` has
//!    key `k<i>`, a `--size`-byte value that starts with `i` (little
//!    endian), the leader's timestamp, and goes to partition
//!    `i mod --partitions`. A line on stderr every 2 s: records so far,
//!    rate, ETA.
//! 2. **settle**: every node returns the last record the cluster stored
//!    (the highest log index acknowledged) from its own LookupByKey, so it
//!    has applied everything; the topic holds exactly the records written;
//!    then 2 s. Each node's `RssAnon`, `VmRSS` and `VmHWM` from
//!    `/proc/<pid>/status`.
//! 3. **restart**: SIGKILL all three nodes, start them again on the same
//!    directories and time, from the start: the first node to report
//!    itself leader; *ready*, a leader and the client's LookupByKey of that
//!    last record returning it (the state is rebuilt: what the targets
//!    judge); every node returning it itself. Then each node's `RssAnon`.
//! 4. **lookups**, one call at a time through the client: `--samples`
//!    LookupByKey of random keys (the answer must be that key's record,
//!    value included, once), then as many OffsetForTimestamp of random times
//!    between a partition's first and last record (the offset's record must
//!    be at or after the time and the one before it earlier, checked with a
//!    fetch outside the timing).
//! 5. **fetch** from the start of every partition, one reader per
//!    partition, 1 MiB per fetch (the node's default, what `keel consume`
//!    asks), until min(retained, 2 M) records in all or 60 s: records/s and
//!    MiB/s (keys and values) over what was read.
//!
//! Then a table, one row per size, and the scale issue's targets as
//! figures with PASS/MISS (RssAnon at the largest size ≤ 1.5× the smallest's
//! and ≤ 128 MiB; restart to ready ≤ 3 s at every size; lookup p50 at the
//! largest size ≤ 2× the smallest's). A missed target does not fail the run;
//! a wrong answer, a node that exits or does not come up, a produce that
//! fails after the client's retries do. `--results DIR` writes
//! `scale-<date>.json`, `.md` and `.svg` (a panel per metric against
//! retained records); `--json` prints the same report as the last stdout line.
//! Both are written with what was measured even when a later size failed.
//!
//! Lifetime: the nodes are killed at the end whatever happened (an error,
//! Ctrl-C, SIGTERM); they run in their own process group, so a terminal's
//! Ctrl-C reaches only the bench, and each gets SIGKILL if the bench itself
//! dies ([`launch::kill_with_parent`]). The scratch directory is removed
//! unless `--keep`. Every wait has a bound: the fill `FILL_MAX` per size,
//! (re)starts `--ready-timeout`, lookups `LOOKUPS_MAX`, the fetch
//! `FETCH_MAX`, each call the client's deadline; the fill stops with an
//! error when the machine has less than 1 GiB available, before the OOM
//! killer picks a process for it.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use keel_client::proto::{PartitionInfo, TopicConfig};
use keel_client::{BatchOptions, Batcher, Client, ClientOptions, Fetch, FetchedRecord};
use keel_proto::client::keel_client::KeelClient;
use keel_proto::client::{ClusterInfoRequest, LookupByKeyRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::Signal;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tonic::transport::Endpoint;

use super::produce::parse_count;
use super::{Latency, human_us, micros, new_histogram, parse_duration_s, thousands};
use crate::launch;

const NODES: u64 = 3;
const TOPIC: &str = "scale";
const DEFAULT_SIZES: &str = "1000000,5000000,20000000";
const MAX_SIZES: usize = 16;
const MAX_RECORDS: u64 = 1_000_000_000;
const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_PARTITIONS: u32 = 64;
const MAX_SAMPLES: usize = 100_000;
const MAX_PRODUCERS: usize = 64;
const MAX_INFLIGHT: usize = 65_536;
/// Node i's admin port is its gRPC port plus this, as in `keel dev`.
const ADMIN_PORT_OFFSET: u16 = 100;
/// Highest `--base-port`: node 3's admin port must be a port.
const MAX_BASE_PORT: u16 = u16::MAX - ADMIN_PORT_OFFSET - (NODES as u16 - 1);

/// Longest fill of one size; at the 100k records/s the bench aims for, an
/// hour is 360 M records.
const FILL_MAX: Duration = Duration::from_secs(3600);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// After every node has applied everything: time for what the apply left
/// behind (freed buffers, a checkpoint) before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// How often a (re)start is polled: the restart figures are this fine.
const POLL: Duration = Duration::from_millis(50);
/// Bounds one probe of one node (connect and call), so a node that is still
/// replaying cannot stall a poll.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// After SIGKILL a process ends at once unless stuck in the kernel.
const KILL_WAIT: Duration = Duration::from_secs(5);
const FETCH_RECORDS_MAX: u64 = 2_000_000;
/// Bytes asked per fetch: the node's default. (Not its 4 MiB − 64 KiB
/// ceiling: today a node decodes a record by skipping the records before it
/// in its log entry, so a fetch costs the square of the records per entry,
/// and 4 MiB of 16-byte records from 10,000-record batches outlasts the
/// client's 10 s request timeout.)
const FETCH_MAX_BYTES: u32 = 1 << 20;
/// The fetch phase's bound: the rate is over what was read by then.
const FETCH_MAX: Duration = Duration::from_secs(60);
const LOOKUPS_MAX: Duration = Duration::from_secs(600);
/// Enough of a partition's records to hold the two the timestamp check reads.
const CHECK_FETCH_BYTES: u32 = 4096;
/// The fill stops below this much `MemAvailable` (KiB): today's state grows
/// with the data, three nodes share the machine, and there is no swap.
const MIN_MEM_AVAILABLE_KIB: u64 = 1 << 20;
/// Deadline of the bench's own calls (fill, lookups, fetch): rides out an
/// election.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 20;
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The scale issue's targets.
const RSS_GROWTH_TARGET: f64 = 1.5;
const RSS_TARGET_MIB: f64 = 128.0;
const RESTART_TARGET_S: f64 = 3.0;
const LOOKUP_GROWTH_TARGET: f64 = 2.0;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Retained records to measure at, increasing, comma-separated (`k` and
    /// `M` suffixes: 1M,5M,20M); the same cluster is filled to each in turn
    #[arg(long, value_name = "N,N,...", default_value = DEFAULT_SIZES, value_parser = parse_sizes)]
    sizes: Sizes,
    /// Value bytes per record (each also has a key `k<i>` and a timestamp)
    #[arg(long, value_name = "BYTES", default_value_t = 16, value_parser = parse_count::<MAX_VALUE_BYTES>)]
    size: usize,
    /// Partitions of the topic; record i goes to partition i mod N
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    partitions: u32,
    /// Where the scratch directory (`keel-scale-*`: the nodes' files, data
    /// and logs) is made [default: the current directory]
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Keep the scratch directory at the end
    #[arg(long)]
    keep: bool,
    /// The keel binary that runs the nodes [default: this one]
    #[arg(long, value_name = "PATH")]
    keel_bin: Option<PathBuf>,
    /// Node i serves gRPC on 127.0.0.1:P+i-1 and admin HTTP on
    /// 127.0.0.1:P+100+i-1, as with `keel dev` [default: free ports]
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_BASE_PORT)))]
    base_port: Option<u16>,
    /// LookupByKey calls, and OffsetForTimestamp calls, at each size
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = parse_count::<MAX_SAMPLES>)]
    samples: usize,
    /// Producers during the fill, each a batching producer of its own
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_count::<MAX_PRODUCERS>)]
    producers: usize,
    /// Records in flight per producer during the fill
    #[arg(long, value_name = "N", default_value_t = 8192, value_parser = parse_count::<MAX_INFLIGHT>)]
    inflight: usize,
    /// Seconds the cluster has to be ready after its start and each restart
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0, value_parser = parse_duration_s)]
    ready_timeout: f64,
    /// Seed of the random keys and times asked for [default: from the clock]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Write scale-<date>.json, scale-<date>.md and scale-<date>.svg (one
    /// panel per metric against retained records) into DIR
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Also print the results as one JSON object, the last line of stdout
    #[arg(long)]
    json: bool,
}

/// `--sizes`: strictly increasing record counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sizes(Vec<u64>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    let mut sizes = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (digits, scale) = match item.char_indices().last() {
            Some((at, 'k' | 'K')) => (&item[..at], 1_000),
            Some((at, 'M' | 'm')) => (&item[..at], 1_000_000),
            _ => (item, 1),
        };
        let n = digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| format!("`{item}` is not a record count (e.g. 1000000 or 1M)"))?;
        if n == 0 || n > MAX_RECORDS {
            return Err(format!("`{item}`: sizes are 1 to {} records", thousands(MAX_RECORDS)));
        }
        if sizes.last().is_some_and(|&last| n <= last) {
            return Err(format!("`{item}`: sizes must increase (the cluster is filled to each in turn)"));
        }
        sizes.push(n);
    }
    if sizes.len() > MAX_SIZES {
        return Err(format!("at most {MAX_SIZES} sizes"));
    }
    Ok(Sizes(sizes))
}

// ---- the report ----

/// What `--json` prints and `--results` writes.
#[derive(Debug, Serialize)]
struct Report {
    /// UTC, `YYYY-MM-DD HH:MM`.
    started: String,
    sizes: Vec<u64>,
    value_bytes: usize,
    partitions: u32,
    samples: usize,
    producers: usize,
    inflight: usize,
    seed: u64,
    keel_bin: String,
    machine: Machine,
    /// One per size measured, in order.
    points: Vec<Point>,
    /// The targets, from the first and last point.
    verdict: Option<Verdict>,
    /// Why the run stopped before its last size.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    mem_total_kib: u64,
    kernel: String,
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    /// Records retained (all partitions).
    records: u64,
    fill: FillFigures,
    nodes: Vec<NodeFigures>,
    restart: Restart,
    key_lookup: Latency,
    timestamp_lookup: Latency,
    fetch: FetchFigures,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct FillFigures {
    /// Records written to reach this size (since the previous one).
    records: u64,
    seconds: f64,
    records_per_s: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct NodeFigures {
    id: u64,
    /// After the fill settled.
    settled: Memory,
    /// Once the cluster was ready after the restart.
    restarted: Memory,
}

/// From `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct Memory {
    rss_anon_kib: u64,
    vm_rss_kib: u64,
    /// Peak resident set since the process started.
    vm_hwm_kib: u64,
}

/// Milliseconds from starting the killed nodes again.
#[derive(Debug, Clone, Copy, Serialize)]
struct Restart {
    /// A node reports itself leader.
    leader_ms: u64,
    /// A leader, and the client's LookupByKey returns the last record.
    ready_ms: u64,
    /// Ready, and every node returns the last record from its own state.
    all_nodes_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct FetchFigures {
    records: u64,
    /// Key and value bytes.
    bytes: u64,
    seconds: f64,
    records_per_s: f64,
    mib_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Verdict {
    from_records: u64,
    to_records: u64,
    /// Largest over the nodes of RssAnon at the last size / at the first.
    rss_anon_growth: f64,
    rss_anon_growth_pass: bool,
    /// Largest RssAnon of a node at the last size.
    rss_anon_max_mib: f64,
    rss_anon_max_pass: bool,
    /// Slowest restart to ready over all sizes.
    restart_ready_max_s: f64,
    restart_pass: bool,
    key_lookup_p50_growth: f64,
    key_lookup_p99_growth: f64,
    timestamp_lookup_p50_growth: f64,
    timestamp_lookup_p99_growth: f64,
    /// Judged on the p50s: 200 samples make a noisy p99.
    lookup_pass: bool,
}

impl Verdict {
    fn of(points: &[Point]) -> Option<Self> {
        let (first, last) = (points.first()?, points.last()?);
        let growth = |to: f64, from: f64| if from > 0.0 { to / from } else { f64::INFINITY };
        let rss_anon_growth = first
            .nodes
            .iter()
            .zip(&last.nodes)
            .map(|(a, b)| growth(b.settled.rss_anon_kib as f64, a.settled.rss_anon_kib as f64))
            .fold(0.0, f64::max);
        let rss_anon_max_mib = last.nodes.iter().map(|n| mib(n.settled.rss_anon_kib)).fold(0.0, f64::max);
        let restart_ready_max_s = points.iter().map(|p| p.restart.ready_ms as f64 / 1e3).fold(0.0, f64::max);
        let lat = |l: fn(&Point) -> u64| growth(l(last) as f64, l(first) as f64);
        let key_lookup_p50_growth = lat(|p| p.key_lookup.p50_us);
        let timestamp_lookup_p50_growth = lat(|p| p.timestamp_lookup.p50_us);
        Some(Self {
            from_records: first.records,
            to_records: last.records,
            rss_anon_growth,
            rss_anon_growth_pass: rss_anon_growth <= RSS_GROWTH_TARGET,
            rss_anon_max_mib,
            rss_anon_max_pass: rss_anon_max_mib <= RSS_TARGET_MIB,
            restart_ready_max_s,
            restart_pass: restart_ready_max_s <= RESTART_TARGET_S,
            key_lookup_p50_growth,
            key_lookup_p99_growth: lat(|p| p.key_lookup.p99_us),
            timestamp_lookup_p50_growth,
            timestamp_lookup_p99_growth: lat(|p| p.timestamp_lookup.p99_us),
            lookup_pass: key_lookup_p50_growth <= LOOKUP_GROWTH_TARGET
                && timestamp_lookup_p50_growth <= LOOKUP_GROWTH_TARGET,
        })
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---- the run ----

pub async fn run(args: ScaleArgs) -> Result<()> {
    let keel = match &args.keel_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("find the keel binary to run the nodes")?,
    };
    if !keel.is_file() {
        bail!("no keel binary at {} (build it, or pass --keel-bin)", keel.display());
    }
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let scratch = tempfile::Builder::new()
        .prefix("keel-scale-")
        .tempdir_in(&parent)
        .with_context(|| format!("make a scratch directory in {}", parent.display()))?;
    let root = std::fs::canonicalize(scratch.path()).context("resolve the scratch directory")?;
    let seed =
        args.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let started = SystemTime::now();
    eprintln!(
        "keel bench scale: {} nodes on loopback (SYNC_FLUSH), {}-byte values, {} partition(s), sizes {}; \
         scratch {}, seed {seed}",
        NODES,
        args.size,
        args.partitions,
        args.sizes.0.iter().map(|&n| thousands(n)).collect::<Vec<_>>().join(" → "),
        root.display()
    );

    // Registered before the first node starts, so that Ctrl-C or SIGTERM
    // ends the measurement and the nodes are killed in order.
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut cluster = Cluster::lay_out(&root, &keel, args.base_port)?;
    let mut points = Vec::new();
    let outcome = tokio::select! {
        // `measure` is polled here, on the thread `main` blocks on, so the
        // nodes it starts are tied to a thread that lives as long as we do.
        r = measure(&args, &mut cluster, &mut points, seed) => r,
        _ = interrupt.recv() => Err(anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow!("SIGTERM received")),
    };
    let stopped = cluster.kill().await;
    if outcome.is_err() {
        cluster.print_log_tails();
    }

    let report = Report {
        started: utc_date_time(started),
        sizes: args.sizes.0.clone(),
        value_bytes: args.size,
        partitions: args.partitions,
        samples: args.samples,
        producers: args.producers,
        inflight: args.inflight,
        seed,
        keel_bin: keel.display().to_string(),
        machine: machine(),
        verdict: Verdict::of(&points),
        points,
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
    };
    println!("{}", human_report(&report));
    let written = match &args.results {
        Some(dir) => write_results(dir, &report, started).map(Some),
        None => Ok(None),
    };
    if let Ok(Some(base)) = &written {
        println!("results: {}.{{json,md,svg}}", base.display());
    }
    if args.keep {
        println!("kept the scratch directory {}", scratch.keep().display());
    } else {
        eprintln!("removing {}", root.display());
        scratch.close().with_context(|| format!("remove the scratch directory {}", root.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encode the JSON report")?);
    }
    outcome?;
    stopped?;
    written.context("write the results")?;
    Ok(())
}

/// Every size in turn; pushes each point as it is complete, so a failure
/// later still leaves the earlier points for the report.
async fn measure(args: &ScaleArgs, cluster: &mut Cluster, points: &mut Vec<Point>, seed: u64) -> Result<()> {
    let ready_timeout = Duration::from_secs_f64(args.ready_timeout);
    let mut rng = StdRng::seed_from_u64(seed);
    cluster.start()?;
    let mut client = cluster.client(CALL_TIMEOUT)?;
    wait_for_leader(cluster, Instant::now() + ready_timeout).await?;
    let config =
        TopicConfig { partitions: args.partitions, retention_ms: -1, retention_bytes: -1, ..TopicConfig::default() };
    client.create_topic(TOPIC, config).await.with_context(|| format!("create the topic {TOPIC}"))?;

    let mut written = 0;
    let mut last = Stored::default();
    for &size in &args.sizes.0 {
        eprintln!("-- {} records: fill", thousands(size));
        let (fill, stored) = fill(&client, written, size, args).await?;
        written = size;
        last = last.max(stored);

        eprintln!("-- {} records: settle, then memory", thousands(size));
        let retained = settle(cluster, &client, &last, size, args, Instant::now() + ready_timeout).await?;
        sleep(SETTLE).await;
        let settled = cluster.memory()?;

        // The fill leaves gigabytes of dirty page cache; a restart right
        // after it waits behind their writeback (its vote and meta fsyncs
        // queue behind the fill's pages), which measures the disk catching
        // up with the fill, not the restart. Write them back first.
        let synced = std::time::Instant::now();
        cluster.write_back()?;
        eprintln!(
            "-- {} records: SIGKILL all nodes, restart (the fill's page cache written back first, {:.2} s)",
            thousands(size),
            synced.elapsed().as_secs_f64()
        );
        cluster.kill().await?;
        let restarted_at = Instant::now();
        cluster.start()?;
        client = cluster.client(CALL_TIMEOUT)?;
        let restart = wait_ready(cluster, &last, args.partitions, restarted_at, ready_timeout).await?;
        let restarted = cluster.memory()?;
        eprintln!(
            "   leader {:.2} s, ready {:.2} s, all nodes {:.2} s",
            restart.leader_ms as f64 / 1e3,
            restart.ready_ms as f64 / 1e3,
            restart.all_nodes_ms as f64 / 1e3
        );

        eprintln!("-- {} records: {} key and {} timestamp lookups", thousands(size), args.samples, args.samples);
        let lookups_end = Instant::now() + LOOKUPS_MAX;
        let key_lookup = key_lookups(&client, size, args, &mut rng, lookups_end).await?;
        let timestamp_lookup = timestamp_lookups(&client, &retained, args.samples, &mut rng, lookups_end).await?;

        eprintln!("-- {} records: fetch from the start", thousands(size));
        let fetch = fetch_from_start(&client, &retained).await?;

        let nodes = (1..=NODES)
            .zip(settled.into_iter().zip(restarted))
            .map(|(id, (settled, restarted))| NodeFigures { id, settled, restarted })
            .collect();
        points.push(Point { records: size, fill, nodes, restart, key_lookup, timestamp_lookup, fetch });
    }
    Ok(())
}

/// A record the cluster acknowledged, ordered by where it is in the Raft
/// log: the greatest is the last one stored, which a node returns only
/// once it has applied the whole log (entries are applied in order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    log_index: u64,
    offset: u64,
    /// Record number: key `k<i>`.
    i: u64,
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i}"))
}

/// `size` bytes starting with `i` (little endian, as much as fits), so a
/// lookup can check it got the record it asked for and not another.
fn value(i: u64, size: usize) -> Bytes {
    let mut v = vec![b'.'; size];
    let n = size.min(8);
    v[..n].copy_from_slice(&i.to_le_bytes()[..n]);
    Bytes::from(v)
}

fn partition_of(i: u64, partitions: u32) -> u32 {
    u32::try_from(i % u64::from(partitions)).expect("a remainder of a u32 fits in one")
}

/// Records `from..to`, each through a batching producer; returns the fill's
/// figures and the last record stored.
async fn fill(client: &Client, from: u64, to: u64, args: &ScaleArgs) -> Result<(FillFigures, Stored)> {
    let next = Arc::new(AtomicU64::new(from));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + FILL_MAX;
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        let batcher = Batcher::new(client.producer(), BatchOptions::default());
        let (next, acked) = (Arc::clone(&next), Arc::clone(&acked));
        let (inflight, size, partitions) = (args.inflight, args.size, args.partitions);
        producers.push(tokio::spawn(async move {
            let batcher = &batcher;
            let mut pending = FuturesUnordered::new();
            let mut last = Stored::default();
            let mut issuing = true;
            loop {
                // Bounded by `to` (shared) and `inflight`.
                while issuing && pending.len() < inflight {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        issuing = false;
                        break;
                    }
                    let record = keel_client::Record::new(value(i, size)).key(key(i));
                    pending.push(async move { (i, batcher.send(TOPIC, partition_of(i, partitions), record).await) });
                }
                let Some((i, result)) = pending.next().await else { return Ok(last) };
                let ack = result.with_context(|| format!("produce record {i} (key k{i})"))?;
                acked.fetch_add(1, Ordering::Relaxed);
                last = last.max(Stored { log_index: ack.log_index, offset: ack.offset, i });
                if Instant::now() > deadline {
                    bail!("the fill to {} records took more than {} s", thousands(to), FILL_MAX.as_secs());
                }
            }
        }));
    }
    let aborts: Vec<_> = producers.iter().map(tokio::task::JoinHandle::abort_handle).collect();
    let stop = || aborts.iter().for_each(tokio::task::AbortHandle::abort);
    // The first producer to fail ends the fill (the others are stopped).
    let joined = producers.into_iter().map(|p| async move { p.await.context("a producer task panicked")? });
    let mut all = std::pin::pin!(futures::future::try_join_all(joined));
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let results = loop {
        tokio::select! {
            joined = &mut all => break joined.inspect_err(|_| stop())?,
            _ = tick.tick() => {
                let done = acked.load(Ordering::Relaxed);
                let rate = done as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
                let eta = (to - from).saturating_sub(done) as f64 / rate.max(1.0);
                eprintln!(
                    "   fill: {} of {} records, {} rec/s, ETA {:.0} s",
                    thousands(from + done),
                    thousands(to),
                    thousands(rate as u64),
                    eta
                );
                if let Some(available) = mem_available_kib().filter(|&kib| kib < MIN_MEM_AVAILABLE_KIB) {
                    stop();
                    bail!(
                        "the machine has {} MiB of memory left (MemAvailable): stopping the fill at {} records \
                         before the OOM killer picks a process",
                        available / 1024,
                        thousands(from + done)
                    );
                }
            }
        }
    };
    let last = results.into_iter().max().unwrap_or_default();
    let seconds = started.elapsed().as_secs_f64();
    let records = to - from;
    eprintln!("   filled {} records in {:.1} s", thousands(records), seconds);
    Ok((FillFigures { records, seconds, records_per_s: records as f64 / seconds.max(f64::EPSILON) }, last))
}

/// Waits until every node has applied everything (it returns `last` itself),
/// then checks that the topic holds exactly `records`; returns its
/// partitions.
async fn settle(
    cluster: &mut Cluster,
    client: &Client,
    last: &Stored,
    records: u64,
    args: &ScaleArgs,
    deadline: Instant,
) -> Result<Vec<PartitionInfo>> {
    let mut applied = [false; NODES as usize];
    while !applied.iter().all(|&a| a) {
        cluster.check_running()?;
        for (node, done) in cluster.addrs().iter().zip(&mut applied) {
            *done = *done || node_returns(node, last, args.partitions).await;
        }
        if Instant::now() >= deadline {
            bail!("not every node applied the fill in time (applied: {applied:?})");
        }
        sleep(POLL).await;
    }
    let info = client.describe_topic(TOPIC).await.with_context(|| format!("describe the topic {TOPIC}"))?;
    let retained: u64 = info.partition_info.iter().map(|p| p.end_offset - p.start_offset).sum();
    ensure!(
        retained == records,
        "the topic holds {} records after {} were written, each once",
        thousands(retained),
        thousands(records)
    );
    Ok(info.partition_info)
}

/// Does the node at `addr`, by itself, return the record `last`?
async fn node_returns(addr: &str, last: &Stored, partitions: u32) -> bool {
    let key = key(last.i);
    let request = LookupByKeyRequest {
        topic: TOPIC.to_string(),
        partition: partition_of(last.i, partitions),
        key: key.clone(),
        limit: 1,
    };
    let call = async {
        let mut node = KeelClient::new(probe_endpoint(addr)?.connect().await.ok()?);
        let mut request = tonic::Request::new(request);
        // Tells the node how long it may wait to catch up before answering.
        request.set_timeout(PROBE_TIMEOUT);
        node.lookup_by_key(request).await.ok()
    };
    let Ok(Some(answer)) = timeout(PROBE_TIMEOUT * 2, call).await else { return false };
    answer.into_inner().records.iter().any(|r| r.key == key && r.offset == last.offset)
}

/// Does the node at `addr` say it is the leader? (Right after a restart the
/// followers name the leader their saved vote names, before any election:
/// the leader's own word is the one to take.)
async fn self_reported_leader(addr: &str, id: u64) -> bool {
    let call = async {
        let mut node = KeelClient::new(probe_endpoint(addr)?.connect().await.ok()?);
        node.cluster_info(ClusterInfoRequest {}).await.ok()
    };
    matches!(timeout(PROBE_TIMEOUT * 2, call).await, Ok(Some(info)) if info.get_ref().leader_id == id)
}

fn probe_endpoint(addr: &str) -> Option<Endpoint> {
    Some(Endpoint::from_shared(format!("http://{addr}")).ok()?.connect_timeout(PROBE_TIMEOUT).timeout(PROBE_TIMEOUT))
}

async fn wait_for_leader(cluster: &mut Cluster, deadline: Instant) -> Result<()> {
    loop {
        cluster.check_running()?;
        for (id, addr) in (1..=NODES).zip(cluster.addrs()) {
            if self_reported_leader(&addr, id).await {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("no node reports itself leader; see the nodes' logs");
        }
        sleep(POLL).await;
    }
}

/// Polls the restarted cluster until it is ready and every node returns
/// `last`; the figures are counted from `started`.
async fn wait_ready(
    cluster: &mut Cluster,
    last: &Stored,
    partitions: u32,
    started: Instant,
    bound: Duration,
) -> Result<Restart> {
    // Short deadline and backoff: each poll asks once, and a client backing
    // off for 500 ms would blur the figure.
    let options = ClientOptions {
        call_timeout: PROBE_TIMEOUT,
        request_timeout: PROBE_TIMEOUT,
        connect_timeout: PROBE_TIMEOUT / 2,
        backoff_min: Duration::from_millis(10),
        backoff_max: POLL,
        ..ClientOptions::default()
    };
    let client = Client::with_options(cluster.addrs(), options).context("a client for the restarted cluster")?;
    // Each probe polls on its own and notes the time of its own answer: in
    // one loop of all three, a slow one (a lookup waiting for a node to
    // catch up, up to two probe timeouts) delayed the next ask of the
    // others and added up to 2 s to the figures.
    let ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let key = key(last.i);
    let addrs = cluster.addrs();
    let until = |probe: &'static str| {
        move |ok: bool| -> Option<Result<u64, &'static str>> {
            if ok {
                Some(Ok(ms()))
            } else if started.elapsed() >= bound {
                Some(Err(probe))
            } else {
                None
            }
        }
    };
    let leader = async {
        let done = until("no node reports itself leader");
        loop {
            let asks = (1..=NODES).zip(&addrs).map(|(id, addr)| self_reported_leader(addr, id));
            let any = futures::future::join_all(asks).await.into_iter().any(|leads| leads);
            if let Some(r) = done(any) {
                return r;
            }
            sleep(POLL).await;
        }
    };
    let lookup = async {
        let done = until("the client's lookup of the last record did not find it");
        loop {
            let found = client.lookup_by_key(TOPIC, partition_of(last.i, partitions), key.clone(), 1).await;
            let ok = found.is_ok_and(|records| records.iter().any(|r| r.key == key && r.offset == last.offset));
            if let Some(r) = done(ok) {
                return r;
            }
            sleep(POLL).await;
        }
    };
    let nodes = futures::future::join_all(addrs.iter().map(|addr| async move {
        let done = until("a node did not return the last record from its own state");
        loop {
            if let Some(r) = done(node_returns(addr, last, partitions).await) {
                return r;
            }
            sleep(POLL).await;
        }
    }));
    let probes = async { tokio::join!(leader, lookup, nodes) };
    tokio::pin!(probes);
    let (leader_ms, lookup_ms, nodes_ms) = loop {
        tokio::select! {
            r = &mut probes => break r,
            _ = sleep(POLL) => cluster.check_running()?,
        }
    };
    let failed = |why: &str| {
        anyhow!(
            "the cluster was not ready {} s after the restart: {why} (lookup of k{}); raise --ready-timeout, or see \
             the nodes' logs",
            bound.as_secs(),
            last.i
        )
    };
    let leader_ms = leader_ms.map_err(failed)?;
    let lookup_ms = lookup_ms.map_err(failed)?;
    let nodes_ms = nodes_ms.into_iter().collect::<Result<Vec<u64>, _>>().map_err(failed)?;
    // Ready: a leader *and* the record served (a follower may serve it
    // before any leader is elected). All nodes: ready, and every node
    // serving it.
    let ready_ms = leader_ms.max(lookup_ms);
    let all_nodes_ms = nodes_ms.into_iter().fold(ready_ms, u64::max);
    Ok(Restart { leader_ms, ready_ms, all_nodes_ms })
}

async fn key_lookups(
    client: &Client,
    records: u64,
    args: &ScaleArgs,
    rng: &mut StdRng,
    deadline: Instant,
) -> Result<Latency> {
    let mut histogram = new_histogram();
    for _ in 0..args.samples {
        ensure!(Instant::now() < deadline, "the lookups took more than {} s", LOOKUPS_MAX.as_secs());
        let i = rng.random_range(0..records);
        let (key, partition) = (key(i), partition_of(i, args.partitions));
        let sent = Instant::now();
        let found = client.lookup_by_key(TOPIC, partition, key.clone(), 0).await;
        histogram.saturating_record(micros(sent.elapsed()).max(1));
        let found = found.with_context(|| format!("LookupByKey k{i} in partition {partition}"))?;
        let expected = value(i, args.size);
        ensure!(
            found.len() == 1 && found[0].key == key && found[0].value == expected,
            "LookupByKey k{i} in partition {partition} answered {} record(s) ({}), not the one record written with it",
            found.len(),
            found.iter().map(describe_record).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Latency::of(&histogram))
}

fn describe_record(r: &FetchedRecord) -> String {
    format!("offset {} key {:?} {} value bytes", r.offset, String::from_utf8_lossy(&r.key), r.value.len())
}

async fn timestamp_lookups(
    client: &Client,
    partitions: &[PartitionInfo],
    samples: usize,
    rng: &mut StdRng,
    deadline: Instant,
) -> Result<Latency> {
    // Each partition's first and last timestamp: the range asked within.
    let mut ranges = Vec::with_capacity(partitions.len());
    for p in partitions.iter().filter(|p| p.end_offset > p.start_offset) {
        let first = record_at(client, p.partition, p.start_offset).await?;
        let last = record_at(client, p.partition, p.end_offset - 1).await?;
        ranges.push((p, first.timestamp_ms, last.timestamp_ms.max(first.timestamp_ms)));
    }
    ensure!(!ranges.is_empty(), "no partition holds a record");
    let mut histogram = new_histogram();
    for _ in 0..samples {
        ensure!(Instant::now() < deadline, "the lookups took more than {} s", LOOKUPS_MAX.as_secs());
        let (p, from, to) = ranges[rng.random_range(0..ranges.len())];
        let asked = rng.random_range(from..=to);
        let sent = Instant::now();
        let answer = client.offset_for_timestamp(TOPIC, p.partition, asked).await;
        histogram.saturating_record(micros(sent.elapsed()).max(1));
        let answer = answer.with_context(|| format!("OffsetForTimestamp {asked} in partition {}", p.partition))?;
        let wrong = |why: String| anyhow!("OffsetForTimestamp {asked} in partition {}: {why}", p.partition);
        if !answer.found || answer.offset < p.start_offset || answer.offset >= p.end_offset {
            return Err(wrong(format!(
                "found={} offset {}, but the partition holds {}..{} and its last record is at {to}",
                answer.found, answer.offset, p.start_offset, p.end_offset
            )));
        }
        if answer.timestamp_ms < asked {
            return Err(wrong(format!(
                "answered offset {} stamped {}, before the time",
                answer.offset, answer.timestamp_ms
            )));
        }
        // Outside the timing: the records there, to check the answer.
        let from_offset = answer.offset.saturating_sub(1).max(p.start_offset);
        let fetched = client
            .fetch(Fetch::new(TOPIC, p.partition, from_offset).max_bytes(CHECK_FETCH_BYTES))
            .await
            .with_context(|| format!("fetch {}/{from_offset} to check a timestamp answer", p.partition))?;
        let at = |offset: u64| fetched.records.iter().find(|r| r.offset == offset);
        match at(answer.offset) {
            Some(r) if r.timestamp_ms == answer.timestamp_ms => {}
            Some(r) => {
                return Err(wrong(format!(
                    "offset {} is stamped {}, not {}",
                    r.offset, r.timestamp_ms, answer.timestamp_ms
                )));
            }
            None => return Err(wrong(format!("a fetch from {from_offset} did not return offset {}", answer.offset))),
        }
        if answer.offset > p.start_offset {
            match at(answer.offset - 1) {
                Some(r) if r.timestamp_ms < asked => {}
                Some(r) => {
                    return Err(wrong(format!(
                        "answered offset {}, but offset {} before it is stamped {}, already at or after the time",
                        answer.offset, r.offset, r.timestamp_ms
                    )));
                }
                None => return Err(wrong(format!("a fetch from {from_offset} did not return offset {from_offset}"))),
            }
        }
    }
    Ok(Latency::of(&histogram))
}

/// The record at `offset`.
async fn record_at(client: &Client, partition: u32, offset: u64) -> Result<FetchedRecord> {
    let fetched = client
        .fetch(Fetch::new(TOPIC, partition, offset).max_bytes(CHECK_FETCH_BYTES))
        .await
        .with_context(|| format!("fetch {TOPIC}/{partition} at {offset}"))?;
    fetched
        .records
        .into_iter()
        .find(|r| r.offset == offset)
        .ok_or_else(|| anyhow!("a fetch of {TOPIC}/{partition} at {offset} did not return that offset"))
}

/// Reads from the start of every partition, one reader each, min(retained,
/// `FETCH_RECORDS_MAX`) records in all; checks the offsets follow on.
async fn fetch_from_start(client: &Client, partitions: &[PartitionInfo]) -> Result<FetchFigures> {
    let retained: u64 = partitions.iter().map(|p| p.end_offset - p.start_offset).sum();
    let quota = retained.min(FETCH_RECORDS_MAX).div_ceil(partitions.len().max(1) as u64);
    let started = Instant::now();
    let deadline = started + FETCH_MAX;
    let readers = partitions.iter().map(|p| {
        let (partition, start) = (p.partition, p.start_offset);
        let end = p.end_offset.min(start + quota);
        async move {
            let (mut offset, mut bytes) = (start, 0u64);
            // Bounded by `end` and the deadline.
            while offset < end && Instant::now() < deadline {
                let fetch = Fetch::new(TOPIC, partition, offset).max_bytes(FETCH_MAX_BYTES);
                let fetched =
                    client.fetch(fetch).await.with_context(|| format!("fetch {TOPIC}/{partition} at {offset}"))?;
                if fetched.records.is_empty() {
                    // Nothing where records are (a lagging node): a short pause, not a spin.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
                for r in fetched.records.iter().take_while(|r| r.offset < end) {
                    ensure!(
                        r.offset == offset,
                        "a fetch of {TOPIC}/{partition} returned offset {} where {offset} was next",
                        r.offset
                    );
                    bytes += (r.key.len() + r.value.len()) as u64;
                    offset += 1;
                }
            }
            Ok::<_, anyhow::Error>((offset - start, bytes))
        }
    });
    let mut records = 0;
    let mut bytes = 0;
    for (n, b) in futures::future::try_join_all(readers).await? {
        records += n;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    if records < retained.min(FETCH_RECORDS_MAX) {
        eprintln!("   the fetch stopped after {} s with {} records read", FETCH_MAX.as_secs(), thousands(records));
    }
    Ok(FetchFigures {
        records,
        bytes,
        seconds,
        records_per_s: records as f64 / seconds,
        mib_per_s: bytes as f64 / seconds / f64::from(1u32 << 20),
    })
}

// ---- the cluster ----

struct Node {
    id: u64,
    grpc: String,
    /// The node's data directory.
    data: PathBuf,
    properties: PathBuf,
    /// The node's stdout and stderr, appended across restarts.
    log: PathBuf,
    /// `None` before the first start and after a kill.
    child: Option<Child>,
}

/// Three `keel node` processes laid out by [`launch`]. Dropped, it kills
/// them (`kill_on_drop`); [`Cluster::kill`] also waits for them.
struct Cluster {
    keel: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Writes each node's properties file (the default configuration).
    fn lay_out(root: &Path, keel: &Path, base_port: Option<u16>) -> Result<Self> {
        let count = NODES as u16;
        let ports: Vec<u16> = match base_port {
            Some(p) => (0..count).map(|i| p + i).chain((0..count).map(|i| p + ADMIN_PORT_OFFSET + i)).collect(),
            None => launch::free_ports(2 * usize::from(count)).context("pick free loopback ports")?,
        };
        let layouts: Vec<launch::NodeLayout> = (1..=NODES)
            .zip(0..usize::from(count))
            .map(|(id, index)| launch::NodeLayout {
                id,
                grpc: format!("127.0.0.1:{}", ports[index]),
                admin: format!("127.0.0.1:{}", ports[index + usize::from(count)]),
                data: root.join(format!("node{id}")).join("data"),
            })
            .collect();
        let peers = launch::peers(&layouts);
        let mut nodes = Vec::with_capacity(layouts.len());
        for layout in &layouts {
            let dir = root.join(format!("node{}", layout.id));
            std::fs::create_dir_all(&layout.data)
                .with_context(|| format!("create the data directory {}", layout.data.display()))?;
            let properties = dir.join("node.properties");
            std::fs::write(&properties, launch::properties(layout, &peers, layout.id == 1, &[]))
                .with_context(|| format!("write {}", properties.display()))?;
            nodes.push(Node {
                id: layout.id,
                grpc: layout.grpc.clone(),
                data: layout.data.clone(),
                properties,
                log: dir.join(format!("node{}.log", layout.id)),
                child: None,
            });
        }
        Ok(Self { keel: keel.to_path_buf(), nodes })
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.clone()).collect()
    }

    fn client(&self, call_timeout: Duration) -> Result<Client> {
        let options = ClientOptions { call_timeout, ..ClientOptions::default() };
        Client::with_options(self.addrs(), options).context("a client for the cluster")
    }

    /// Starts every node that is not running. Call it from `measure`'s
    /// future, never from a spawned task (see [`launch::kill_with_parent`]).
    fn start(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if node.child.is_some() {
                continue;
            }
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .with_context(|| format!("open {}", node.log.display()))?;
            let _ = writeln!(log, "--- keel bench scale: starting node{}", node.id);
            let mut command = launch::node_command(&self.keel, &node.properties, None);
            command.stdout(log.try_clone().context("share the node's log")?).stderr(log).process_group(0);
            launch::kill_with_parent(&mut command);
            let mut command = Command::from(command);
            command.kill_on_drop(true);
            let child = command.spawn().with_context(|| format!("start node{} ({})", node.id, self.keel.display()))?;
            node.child = Some(child);
        }
        Ok(())
    }

    /// SIGKILL to every node, and wait (bounded) until each has exited.
    /// syncfs(2) of every node's data directory: its dirty pages on disk.
    fn write_back(&self) -> Result<()> {
        for node in &self.nodes {
            let data = &node.data;
            let dir = std::fs::File::open(data).with_context(|| format!("open {}", data.display()))?;
            rustix::fs::syncfs(&dir).with_context(|| format!("syncfs {}", data.display()))?;
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<()> {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            // Not reaped yet (only this method reaps), so the pid is the node's.
            if let Some(pid) = child.id() {
                // An error: it has just exited, and the wait below reaps it.
                let _ = launch::signal(pid, Signal::KILL);
            }
        }
        let mut stuck = Vec::new();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take()
                && timeout(KILL_WAIT, child.wait()).await.is_err()
            {
                stuck.push(format!("node{}", node.id));
            }
        }
        ensure!(stuck.is_empty(), "{} did not exit within {} s of SIGKILL", stuck.join(", "), KILL_WAIT.as_secs());
        Ok(())
    }

    /// Fails, naming the node, when one has exited.
    fn check_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(status) = child.try_wait().context("wait for a node")?
            {
                node.child = None;
                bail!("node{} exited ({status}); its log is {}", node.id, node.log.display());
            }
        }
        Ok(())
    }

    fn memory(&mut self) -> Result<Vec<Memory>> {
        self.check_running()?;
        self.nodes
            .iter()
            .map(|n| {
                let pid = n.child.as_ref().and_then(Child::id).context("a node is not running")?;
                memory_of(pid).with_context(|| format!("read node{}'s memory", n.id))
            })
            .collect()
    }

    fn print_log_tails(&self) {
        for node in &self.nodes {
            eprintln!("--- the end of node{}'s log ({}):\n{}", node.id, node.log.display(), log_tail(&node.log));
        }
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn memory_of(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_status(&text).with_context(|| format!("{path} has no RssAnon, VmRSS or VmHWM line"))
}

/// `RssAnon`, `VmRSS` and `VmHWM` of a `/proc/<pid>/status` text.
fn parse_status(text: &str) -> Option<Memory> {
    let kib = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(Memory { rss_anon_kib: kib("RssAnon")?, vm_rss_kib: kib("VmRSS")?, vm_hwm_kib: kib("VmHWM")? })
}

fn meminfo_kib(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

fn mem_available_kib() -> Option<u64> {
    meminfo_kib("MemAvailable")
}

fn machine() -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        mem_total_kib: meminfo_kib("MemTotal").unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| String::new(), |s| s.trim().into()),
    }
}

// ---- output ----

/// One of the targets, as the table and the Markdown show it.
struct TargetRow {
    what: &'static str,
    measured: String,
    target: String,
    met: bool,
}

fn target_rows(v: &Verdict) -> [TargetRow; 5] {
    let growth = |what, p50: f64, p99: f64| TargetRow {
        what,
        measured: format!("{p50:.2}× (p99 {p99:.2}×)"),
        target: format!("≤ {LOOKUP_GROWTH_TARGET}×"),
        met: p50 <= LOOKUP_GROWTH_TARGET,
    };
    [
        TargetRow {
            what: "RssAnon growth, worst node",
            measured: format!("{:.2}×", v.rss_anon_growth),
            target: format!("≤ {RSS_GROWTH_TARGET}×"),
            met: v.rss_anon_growth_pass,
        },
        TargetRow {
            what: "RssAnon at the largest size, worst node",
            measured: format!("{:.1} MiB", v.rss_anon_max_mib),
            target: format!("≤ {RSS_TARGET_MIB} MiB"),
            met: v.rss_anon_max_pass,
        },
        TargetRow {
            what: "restart to ready, slowest size",
            measured: format!("{:.2} s", v.restart_ready_max_s),
            target: format!("≤ {RESTART_TARGET_S} s"),
            met: v.restart_pass,
        },
        growth("LookupByKey p50 growth", v.key_lookup_p50_growth, v.key_lookup_p99_growth),
        growth("OffsetForTimestamp p50 growth", v.timestamp_lookup_p50_growth, v.timestamp_lookup_p99_growth),
    ]
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn per_node(nodes: &[NodeFigures], memory: fn(&NodeFigures) -> Memory) -> String {
    nodes.iter().map(|n| format!("{:.1}", mib(memory(n).rss_anon_kib))).collect::<Vec<_>>().join("/")
}

/// A column of the results table: its heading on the terminal (and width)
/// and in Markdown.
struct Column {
    short: &'static str,
    width: usize,
    long: &'static str,
}

const TABLE: [Column; 10] = [
    Column { short: "records", width: 12, long: "records" },
    Column { short: "fill/s", width: 9, long: "fill rec/s" },
    Column { short: "RssAnon MiB n1/n2/n3", width: 20, long: "RssAnon MiB n1/n2/n3" },
    Column { short: "after restart", width: 20, long: "after restart" },
    Column { short: "VmRSS/HWM max", width: 13, long: "VmRSS / VmHWM MiB (max)" },
    Column { short: "restart s l/r/all", width: 17, long: "restart s: leader / ready / all nodes" },
    Column { short: "key p50/p99", width: 17, long: "LookupByKey p50 / p99" },
    Column { short: "time p50/p99", width: 16, long: "OffsetForTimestamp p50 / p99" },
    Column { short: "fetch rec/s", width: 12, long: "fetch rec/s" },
    Column { short: "fetch MiB/s", width: 11, long: "fetch MiB/s" },
];

/// One size's figures in [`TABLE`]'s order; `md` spaces the pairs and
/// bolds the restart figure the target reads.
fn cells(p: &Point, md: bool) -> Vec<String> {
    let max = |kib: fn(&Memory) -> u64| mib(p.nodes.iter().map(|n| kib(&n.settled)).max().unwrap_or(0));
    let sep = if md { " / " } else { "/" };
    let s = |ms: u64| format!("{:.2}", ms as f64 / 1e3);
    let ready = if md { format!("**{}**", s(p.restart.ready_ms)) } else { s(p.restart.ready_ms) };
    vec![
        thousands(p.records),
        thousands(p.fill.records_per_s as u64),
        per_node(&p.nodes, |n| n.settled),
        per_node(&p.nodes, |n| n.restarted),
        format!("{:.1}{sep}{:.1}", max(|m| m.vm_rss_kib), max(|m| m.vm_hwm_kib)),
        [s(p.restart.leader_ms), ready, s(p.restart.all_nodes_ms)].join(sep),
        format!("{}{sep}{}", human_us(p.key_lookup.p50_us), human_us(p.key_lookup.p99_us)),
        format!("{}{sep}{}", human_us(p.timestamp_lookup.p50_us), human_us(p.timestamp_lookup.p99_us)),
        thousands(p.fetch.records_per_s as u64),
        format!("{:.1}", p.fetch.mib_per_s),
    ]
}

/// The table, one row per size, and the targets.
fn human_report(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keel bench scale: {} nodes (SYNC_FLUSH), {}-byte values, {} partition(s), {} lookups of each kind per size",
        NODES, report.value_bytes, report.partitions, report.samples
    );
    let header: Vec<String> = TABLE.iter().map(|c| format!("{:>w$}", c.short, w = c.width)).collect();
    let _ = writeln!(out, "{}", header.join("  "));
    for p in &report.points {
        let row: Vec<String> =
            TABLE.iter().zip(cells(p, false)).map(|(c, cell)| format!("{cell:>w$}", w = c.width)).collect();
        let _ = writeln!(out, "{}", row.join("  "));
    }
    if let Some(v) = &report.verdict {
        let _ = writeln!(out, "targets, {} → {} records:", thousands(v.from_records), thousands(v.to_records));
        for row in target_rows(v) {
            let _ = writeln!(out, "  {:<40} {:>18}  {:<10} {}", row.what, row.measured, row.target, pass(row.met));
        }
    }
    if let Some(error) = &report.error {
        let _ = writeln!(out, "stopped early: {error}");
    }
    out.trim_end().to_string()
}

/// The same as a Markdown page, the plot beside it.
fn markdown(report: &Report, svg_name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# `keel bench scale`, {} UTC\n", report.started);
    let _ = writeln!(
        md,
        "Three `keel node` processes on loopback (SYNC_FLUSH), {}-byte values with keys `k<i>`, {} partition(s), \
         {} lookups of each kind per size, fill by {} batching producers × {} in flight, its page cache written \
         back (syncfs) before each kill -9; {} CPUs, {:.1} GiB, Linux {}; `{}`; seed {}.\n",
        report.value_bytes,
        report.partitions,
        report.samples,
        report.producers,
        report.inflight,
        report.machine.cpus,
        report.machine.mem_total_kib as f64 / f64::from(1u32 << 20),
        report.machine.kernel,
        report.keel_bin,
        report.seed
    );
    let header: Vec<&str> = TABLE.iter().map(|c| c.long).collect();
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---:|".repeat(TABLE.len()));
    for p in &report.points {
        let _ = writeln!(md, "| {} |", cells(p, true).join(" | "));
    }
    if let Some(v) = &report.verdict {
        let _ = writeln!(
            md,
            "\n| {} → {} records | measured | target | |",
            thousands(v.from_records),
            thousands(v.to_records)
        );
        let _ = writeln!(md, "|---|---:|---|---|");
        for row in target_rows(v) {
            let _ = writeln!(md, "| {} | {} | {} | {} |", row.what, row.measured, row.target, pass(row.met));
        }
    }
    if let Some(error) = &report.error {
        let _ = writeln!(md, "\nThe run stopped early: {error}");
    }
    let _ = writeln!(md, "\n![each metric against retained records]({svg_name})");
    md
}

/// Writes `scale-<date>[-n].{json,md,svg}` into `dir` (a second run of the
/// day gets `-2`, and so on: a before and an after are often one day's
/// work); returns the path without its extension.
fn write_results(dir: &Path, report: &Report, started: SystemTime) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let date = &utc_date_time(started)[..10];
    let base = (1..=100)
        .map(|n| if n == 1 { format!("scale-{date}") } else { format!("scale-{date}-{n}") })
        .find(|name| !dir.join(format!("{name}.json")).exists())
        .with_context(|| format!("{} holds 100 scale results of {date} already", dir.display()))?;
    let path = |ext: &str| dir.join(format!("{base}.{ext}"));
    let json = serde_json::to_string_pretty(report).context("encode the JSON report")?;
    std::fs::write(path("json"), json + "\n").with_context(|| format!("write {}", path("json").display()))?;
    std::fs::write(path("md"), markdown(report, &format!("{base}.svg")))
        .with_context(|| format!("write {}", path("md").display()))?;
    let title = format!(
        "keel bench scale, {} UTC: 3 nodes, {}-byte values, {} partition(s)",
        report.started, report.value_bytes, report.partitions
    );
    std::fs::write(path("svg"), svg(&title, &panels(&report.points)))
        .with_context(|| format!("write {}", path("svg").display()))?;
    Ok(dir.join(base))
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn utc_date_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", secs % 86_400 / 3600, secs % 3600 / 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---- the plot ----

/// One small chart of the SVG: each series against retained records.
struct Panel {
    title: String,
    series: Vec<Series>,
    /// Drawn as a dashed line.
    target: Option<f64>,
}

struct Series {
    name: String,
    /// (records, value).
    points: Vec<(f64, f64)>,
}

fn panels(points: &[Point]) -> Vec<Panel> {
    let series = |name: &str, y: &dyn Fn(&Point) -> f64| Series {
        name: name.to_string(),
        points: points.iter().map(|p| (p.records as f64, y(p))).collect(),
    };
    let per_node = |memory: fn(&NodeFigures) -> Memory| -> Vec<Series> {
        (0..NODES as usize)
            .map(|i| {
                series(&format!("node{}", i + 1), &|p: &Point| {
                    p.nodes.get(i).map_or(f64::NAN, |n| mib(memory(n).rss_anon_kib))
                })
            })
            .collect()
    };
    let ms = |us: u64| us as f64 / 1e3;
    vec![
        Panel {
            title: "RssAnon after the fill (MiB)".into(),
            series: per_node(|n| n.settled),
            target: Some(RSS_TARGET_MIB),
        },
        Panel {
            title: "RssAnon after restart (MiB)".into(),
            series: per_node(|n| n.restarted),
            target: Some(RSS_TARGET_MIB),
        },
        Panel {
            title: "restart after kill -9 of all (s)".into(),
            series: vec![
                series("ready", &|p| p.restart.ready_ms as f64 / 1e3),
                series("all nodes", &|p| p.restart.all_nodes_ms as f64 / 1e3),
            ],
            target: Some(RESTART_TARGET_S),
        },
        Panel {
            title: "LookupByKey latency (ms)".into(),
            series: vec![series("p50", &|p| ms(p.key_lookup.p50_us)), series("p99", &|p| ms(p.key_lookup.p99_us))],
            target: None,
        },
        Panel {
            title: "OffsetForTimestamp latency (ms)".into(),
            series: vec![
                series("p50", &|p| ms(p.timestamp_lookup.p50_us)),
                series("p99", &|p| ms(p.timestamp_lookup.p99_us)),
            ],
            target: None,
        },
        Panel {
            title: "fetch from offset 0 (k records/s)".into(),
            series: vec![series("records/s", &|p| p.fetch.records_per_s / 1e3)],
            target: None,
        },
    ]
}

const PANEL_W: f64 = 320.0;
const PANEL_H: f64 = 220.0;
const COLUMNS: usize = 3;
/// A panel's margins: room for the y labels, the title and legend, the x labels.
const LEFT: f64 = 46.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 30.0;
const HEADER: f64 = 26.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];

/// The panels in a grid, by hand: axes from zero, a tick at each x measured,
/// non-finite values left out.
fn svg(title: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let (width, height) = (PANEL_W * COLUMNS as f64, HEADER + PANEL_H * rows as f64);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"8\" y=\"17\" font-size=\"13\">{}</text>\n",
        escape(title)
    );
    for (k, panel) in panels.iter().enumerate() {
        let (ox, oy) = ((k % COLUMNS) as f64 * PANEL_W, HEADER + (k / COLUMNS) as f64 * PANEL_H);
        let (left, right, top, bottom) = (ox + LEFT, ox + PANEL_W - RIGHT, oy + TOP, oy + PANEL_H - BOTTOM);
        let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
        let all = || panel.series.iter().flat_map(|s| s.points.iter()).filter(finite);
        let x_max = all().map(|p| p.0).fold(0.0, f64::max);
        let x_max = if x_max > 0.0 { x_max } else { 1.0 };
        let y_max = nice_ceiling(all().map(|p| p.1).chain(panel.target).fold(0.0, f64::max) * 1.05);
        let px = |x: f64| left + (right - left) * x / x_max;
        let py = |y: f64| bottom - (bottom - top) * y / y_max;
        let _ = writeln!(s, "<g class=\"panel\">");
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"{:.1}\" font-size=\"11\" font-weight=\"bold\">{}</text>",
            oy + 18.0,
            escape(&panel.title)
        );
        let _ = writeln!(s, "<path d=\"M{left:.1} {top:.1}V{bottom:.1}H{right:.1}\" stroke=\"black\" fill=\"none\"/>");
        for y in [0.0, y_max / 2.0, y_max] {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 4.0,
                py(y) + 3.0,
                short(y)
            );
        }
        let mut xs: Vec<f64> = all().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        for x in xs {
            let _ = writeln!(
                s,
                "<path d=\"M{0:.1} {bottom:.1}v4\" stroke=\"black\"/><text x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">{2}</text>",
                px(x),
                bottom + 15.0,
                short(x)
            );
        }
        if let Some(target) = panel.target {
            let _ = writeln!(
                s,
                "<path d=\"M{left:.1} {0:.1}H{right:.1}\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{right:.1}\" y=\"{1:.1}\" text-anchor=\"end\" fill=\"#d62728\">target {2}</text>",
                py(target),
                py(target) - 3.0,
                short(target)
            );
        }
        let mut legend_x = left;
        for (j, series) in panel.series.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            // One legend line under the title, above the plot.
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                legend_x + 3.0,
                oy + 27.0,
                legend_x + 9.0,
                oy + 30.5,
                escape(&series.name)
            );
            legend_x += 20.0 + 6.0 * series.name.chars().count() as f64;
            let points: Vec<String> =
                series.points.iter().filter(finite).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let _ = writeln!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\"/>", points.join(" "));
            for point in &points {
                let (x, y) = point.split_once(',').expect("formatted as x,y above");
                let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{colour}\"/>");
            }
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power
/// of ten) that is ≥ `v` (1 for nothing to show), so the axis and its
/// middle tick read well.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&m| m >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// A tick label: `20M`, `500k`, `128`, `2.5`, `0.35`.
fn short(v: f64) -> String {
    let trim = |t: String| if t.contains('.') { t.trim_end_matches('0').trim_end_matches('.').to_string() } else { t };
    match v.abs() {
        a if a >= 1e6 => trim(format!("{:.1}", v / 1e6)) + "M",
        a if a >= 1e4 => trim(format!("{:.1}", v / 1e3)) + "k",
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 1.0 => trim(format!("{v:.1}")),
        _ => trim(format!("{v:.2}")),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        scale: ScaleArgs,
    }

    fn parse(args: &[&str]) -> Result<ScaleArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("scale").chain(args.iter().copied())).map(|cli| cli.scale)
    }

    #[test]
    fn flags_have_the_documented_defaults_and_bounds() {
        // Defaults: 1, 5 and 20 million 16-byte records, 200 lookups each.
        let args = parse(&[]).expect("no flags is valid");
        assert_eq!(args.sizes, Sizes(vec![1_000_000, 5_000_000, 20_000_000]));
        assert_eq!((args.size, args.partitions, args.samples), (16, 1, 200));
        assert_eq!((args.base_port, args.dir, args.results, args.keep, args.json), (None, None, None, false, false));

        // Sizes take suffixes and must increase; each is bounded.
        let args = parse(&["--sizes", "500k, 1M,2000000", "--partitions", "4", "--json"]).expect("valid");
        assert_eq!(args.sizes, Sizes(vec![500_000, 1_000_000, 2_000_000]));
        assert_eq!(args.partitions, 4);
        for bad in ["5M,1M", "1M,1M", "0", "", "1M,x", "2000M", "1.5M", "18446744073709551615k"] {
            assert!(parse(&["--sizes", bad]).is_err(), "--sizes {bad:?} accepted");
        }
        let many: Vec<String> = (1..=MAX_SIZES + 1).map(|i| i.to_string()).collect();
        assert!(parse(&["--sizes", &many.join(",")]).is_err(), "more than {MAX_SIZES} sizes accepted");

        // Counts that would make no run or an unbounded one are refused.
        assert!(parse(&["--samples", "0"]).is_err());
        assert!(parse(&["--size", "0"]).is_err());
        assert!(parse(&["--partitions", "0"]).is_err());
        assert!(parse(&["--partitions", "65"]).is_err());
        assert!(parse(&["--ready-timeout", "0"]).is_err());
        // Node 3's admin port must be a port.
        assert!(parse(&["--base-port", &MAX_BASE_PORT.to_string()]).is_ok());
        assert!(parse(&["--base-port", &(MAX_BASE_PORT + 1).to_string()]).is_err());
    }

    #[test]
    fn status_and_dates_read_as_the_kernel_and_the_calendar_say() {
        let status =
            "Name:\tkeel\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t   81920 kB\nRssFile:\t 20480 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory { rss_anon_kib: 81_920, vm_rss_kib: 102_400, vm_hwm_kib: 204_800 })
        );
        assert_eq!(parse_status("Name:\tkeel\nVmRSS:\t1 kB\n"), None, "no RssAnon: not a figure of zero");

        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(utc_date_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14 22:13");

        // A value starts with its record number, so a lookup can tell records apart.
        assert_eq!(&value(258, 16)[..3], &[2, 1, 0]);
        assert_eq!(value(7, 2).len(), 2);
        assert_ne!(value(1, 16), value(2, 16));
    }

    fn point(records: u64, rss_mib: u64, ready_ms: u64, p50_us: u64) -> Point {
        let memory = Memory { rss_anon_kib: rss_mib * 1024, vm_rss_kib: rss_mib * 2048, vm_hwm_kib: rss_mib * 4096 };
        let latency = Latency { p50_us, p99_us: 2 * p50_us, p999_us: 0, max_us: 0, samples: 200 };
        Point {
            records,
            fill: FillFigures { records, seconds: 1.0, records_per_s: records as f64 },
            nodes: (1..=NODES).map(|id| NodeFigures { id, settled: memory, restarted: memory }).collect(),
            restart: Restart { leader_ms: ready_ms / 2, ready_ms, all_nodes_ms: ready_ms + 10 },
            key_lookup: latency,
            timestamp_lookup: latency,
            fetch: FetchFigures { records: 10, bytes: 10, seconds: 1.0, records_per_s: 10.0, mib_per_s: 0.0 },
        }
    }

    #[test]
    fn the_verdict_compares_the_last_size_with_the_first() {
        let points =
            [point(1_000_000, 100, 1_000, 400), point(5_000_000, 300, 4_000, 500), point(20_000_000, 600, 2_500, 700)];
        let v = Verdict::of(&points).expect("points");
        assert_eq!((v.from_records, v.to_records), (1_000_000, 20_000_000));
        assert!((v.rss_anon_growth - 6.0).abs() < 1e-9 && !v.rss_anon_growth_pass);
        assert!((v.rss_anon_max_mib - 600.0).abs() < 1e-9 && !v.rss_anon_max_pass);
        // The slowest restart of any size, not the last one's.
        assert!((v.restart_ready_max_s - 4.0).abs() < 1e-9 && !v.restart_pass);
        assert!((v.key_lookup_p50_growth - 1.75).abs() < 1e-9 && v.lookup_pass);
        assert!(Verdict::of(&[]).is_none());
        let report = human_report(&Report {
            started: "2026-12-08 10:00".into(),
            sizes: vec![1_000_000, 5_000_000, 20_000_000],
            value_bytes: 16,
            partitions: 1,
            samples: 200,
            producers: 4,
            inflight: 8192,
            seed: 1,
            keel_bin: "keel".into(),
            machine: Machine { cpus: 2, mem_total_kib: 1 << 20, kernel: "6.1".into() },
            verdict: Some(v),
            points: points.to_vec(),
            error: None,
        });
        assert_eq!(report.lines().filter(|l| l.contains("MISS")).count(), 3, "{report}");
        assert!(report.contains("20,000,000") && report.contains("100.0/100.0/100.0"), "{report}");
    }

    #[test]
    fn the_plot_has_a_panel_per_metric_and_only_finite_coordinates() {
        let points = [point(1_000_000, 100, 1_000, 400), point(20_000_000, 600, 2_500, 700)];
        let panels = panels(&points);
        let text = svg("a <title> & more", &panels);
        // Phase: one panel per metric, each with its title and one line per series.
        assert_eq!(text.matches("<g class=\"panel\">").count(), panels.len());
        assert_eq!(panels.len(), 6);
        let lines: usize = panels.iter().map(|p| p.series.len()).sum();
        assert_eq!(text.matches("<polyline").count(), lines);
        assert!(text.contains("RssAnon after the fill (MiB)") && text.contains(">20M<") && text.contains(">1M<"));
        assert!(text.contains("target 128") && text.contains("target 3"));
        // Phase: text is escaped, the document is closed, no NaN reaches it.
        assert!(text.contains("a &lt;title&gt; &amp; more") && text.trim_end().ends_with("</svg>"));
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");

        // Phase: no points, or a missing value, still draws an empty frame.
        let empty = svg(
            "t",
            &[Panel {
                title: "x".into(),
                series: vec![Series { name: "s".into(), points: vec![(1.0, f64::NAN)] }],
                target: None,
            }],
        );
        assert!(!empty.contains("NaN") && empty.contains("<polyline points=\"\""), "{empty}");
        assert_eq!(short(20_000_000.0), "20M");
        assert_eq!(short(500_000.0), "500k");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.35), "0.35");
        assert_eq!(short(128.0), "128");
        assert_eq!(
            (nice_ceiling(141.0), nice_ceiling(0.9), nice_ceiling(2918.0), nice_ceiling(0.0)),
            (150.0, 1.0, 3000.0, 1.0)
        );
    }
}
