//! The client API and the CLI against a real three-node cluster (`keel node`
//! processes, `common::Cluster`): what is produced reads back exactly, in
//! order, from every node; lookups by key and time and tag filters return
//! exactly the records they should; consumer-group offsets are kept; every
//! bad request is refused with an error that names what was wrong and
//! changes nothing; a deleted topic's records never come back; the CLI works
//! end to end; a follower that lags still sends writes to the leader; and a
//! bad configuration file stops a node before it starts. What a client
//! written from keel.proto alone meets holds too: a fetch ahead of its node
//! waits for `min_index` (then NOT_CAUGHT_UP, never OUT_OF_RANGE); a body
//! that does not decode is INVALID_ARGUMENT with `keel-error`; a producer's
//! sequence gap is refused; no answer outgrows gRPC's default 4 MiB. Kills
//! and restarts are `cluster_faults.rs`'s business; the one pause here only makes a
//! follower lag.
//!
//! The tests share nothing, so cargo runs them side by side; each one puts
//! many phases on one cluster, because starting a cluster is the slow part.
//! One test binary, a module per feature; the helpers they share are here.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod from_the_proto;
mod groups;
mod lagging_follower;
mod membership;
mod records;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use common::Cluster;
use keel_client::proto::keel_client::KeelClient;
use keel_client::proto::{self, TopicConfig, TopicInfo};
use keel_client::{
    Client, ClientOptions, Durability, ERROR_CODE_KEY, Error, ErrorCode, Fetch, FetchedRecord, LEADER_ADDR_KEY,
    LEADER_ID_KEY, ProduceAck, Producer, Record, partition_for,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

const ELECTION: Duration = Duration::from_secs(30);
/// Bound of a read that must first wait for its node to apply a write
/// (`min_index`). A read whose records are there returns at once, so this
/// only matters on a slow machine, where it must be generous.
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long every node gets to apply what one node has applied.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one CLI command (its own retries stop after 30 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// 2023-11-14, the base of explicit record timestamps: far from the
/// leader's clock, so a stamped timestamp cannot pass for an explicit one.
/// Topics holding such records keep them forever (`retention_ms: -1`);
/// the default retention (7 days) would trim them within seconds.
const T0: u64 = 1_700_000_000_000;
/// Bounds every read loop: a partition here holds far fewer records.
const MAX_FETCHES: usize = 10_000;

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is past 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit a u64")
}

fn keep_forever(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, retention_ms: -1, ..TopicConfig::default() }
}

/// A client that knows all nodes: writes find the leader.
fn cluster_client(cluster: &Cluster) -> Client {
    Client::connect(cluster.addrs()).expect("harness addresses are valid")
}

/// A client that knows only node `id`, so that node serves its reads
/// (a write it refuses as a follower still reaches the leader it names).
fn node_client(cluster: &Cluster, id: u64) -> Client {
    Client::connect(vec![cluster.grpc(id)]).expect("a harness address is valid")
}

/// One client per node, for reading the same thing from each.
fn node_clients(cluster: &Cluster) -> Vec<(u64, Client)> {
    cluster.ids().map(|id| (id, node_client(cluster, id))).collect()
}

/// Node `id`'s applied log index, asking again until it answers.
async fn applied_index(cluster: &Cluster, id: u64, deadline: Instant) -> u64 {
    loop {
        match cluster.cluster_info(id).await {
            Ok(info) => return info.applied_index,
            Err(error) => {
                assert!(Instant::now() < deadline, "node{id} did not answer ClusterInfo: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until every node has applied all that any node has applied, and so
/// every write acknowledged before the call (the leader that acknowledged it
/// had applied it). Reads that have no `min_index` (lookups, group offsets,
/// topic descriptions) come after this when they go to followers.
async fn sync_all(cluster: &Cluster) {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut target = 0;
    for id in cluster.ids() {
        target = target.max(applied_index(cluster, id, deadline).await);
    }
    for id in cluster.ids() {
        loop {
            let applied = applied_index(cluster, id, deadline).await;
            if applied >= target {
                break;
            }
            assert!(Instant::now() < deadline, "node{id} applied up to {applied} of {target} within {SYNC_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What one node returned for a whole partition.
#[derive(Debug)]
struct Read {
    records: Vec<FetchedRecord>,
    start: u64,
    end: u64,
}

/// Every record of one partition that node `client` serves, from offset
/// `from` to the end offset, fetch after fetch. With `min_index` the node
/// first waits (up to `READ_WAIT`) until it has applied that log index; the
/// partition must then hold a record at `from`, or that first fetch also
/// waits `READ_WAIT` for one (a long poll).
async fn read_from(client: &Client, topic: &str, partition: u32, from: u64, min_index: u64) -> Read {
    let wait = if min_index > 0 { READ_WAIT } else { Duration::ZERO };
    let mut records = Vec::new();
    let mut offset = from;
    for _ in 0..MAX_FETCHES {
        let fetch = Fetch::new(topic, partition, offset).min_index(min_index).max_wait(wait);
        let fetched = client
            .fetch(fetch)
            .await
            .unwrap_or_else(|e| panic!("fetch {topic}/{partition} at {offset} from {:?}: {e}", client.addrs()));
        assert!(
            fetched.applied_index >= min_index,
            "{topic}/{partition}: the node answered at applied index {} below min_index {min_index}",
            fetched.applied_index
        );
        assert!(
            fetched.next_offset > offset || fetched.next_offset == fetched.end_offset,
            "{topic}/{partition}: a fetch at {offset} made no progress: {fetched:?}"
        );
        records.extend(fetched.records);
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            return Read { records, start: fetched.start_offset, end: fetched.end_offset };
        }
    }
    panic!("{topic}/{partition}: not at the end after {MAX_FETCHES} fetches");
}

/// A record as a partition must return it at `offset`.
fn stored(offset: u64, r: &Record, timestamp_ms: u64) -> FetchedRecord {
    FetchedRecord {
        offset,
        timestamp_ms,
        key: r.key.clone(),
        value: r.value.clone(),
        tag: r.tag.clone(),
        headers: r.headers.clone(),
    }
}

fn offsets(records: &[FetchedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

/// What one partition must hold: every record as it must read back, with,
/// for a record the leader stamped, the window its timestamp must fall in.
#[derive(Debug, Default)]
struct Expected {
    records: Vec<(FetchedRecord, Option<(u64, u64)>)>,
}

impl Expected {
    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    /// The records matching `keep`, exactly as they must read back (for
    /// partitions without stamped timestamps).
    fn filtered(&self, keep: impl Fn(&FetchedRecord) -> bool) -> Vec<FetchedRecord> {
        self.records.iter().map(|(r, _)| r).filter(|r| keep(r)).cloned().collect()
    }
}

/// Produces one batch and checks the acknowledgement: the batch starts where
/// the partition ended (offsets are dense), holds every record, and is
/// quorum-fsynced (the nodes run SYNC_FLUSH). Records go into `expected`.
async fn produce_checked(
    producer: &Producer,
    expected: &mut Expected,
    topic: &str,
    partition: u32,
    records: Vec<Record>,
) -> ProduceAck {
    let before = now_ms();
    let ack = producer
        .produce(topic, partition, records.clone())
        .await
        .unwrap_or_else(|e| panic!("produce {} records to {topic}/{partition}: {e}", records.len()));
    let after = now_ms();
    assert_eq!(ack.base_offset, expected.end(), "{topic}/{partition}: a batch starts where the partition ended");
    assert_eq!(ack.count as usize, records.len(), "{topic}/{partition}: every record of the batch is stored");
    assert_eq!(ack.durability, Durability::QuorumFsynced, "{topic}/{partition}: SYNC_FLUSH acknowledges fsynced");
    assert!(
        ack.durable_index >= ack.log_index,
        "{topic}/{partition}: acknowledged as durable up to {} before its own log index {}",
        ack.durable_index,
        ack.log_index
    );
    assert!(!ack.duplicate, "{topic}/{partition}: a first attempt is no duplicate");
    for (i, r) in records.iter().enumerate() {
        let window = r.timestamp_ms.is_none().then_some((before, after));
        expected.records.push((stored(ack.base_offset + i as u64, r, r.timestamp_ms.unwrap_or(0)), window));
    }
    ack
}

/// Asserts that `got` is exactly what `expected` holds, field by field.
#[track_caller]
fn assert_holds(what: &str, got: &[FetchedRecord], expected: &Expected) {
    assert_eq!(got.len(), expected.records.len(), "{what}: got offsets {:?}", offsets(got));
    for (got, (want, window)) in got.iter().zip(&expected.records) {
        let mut want = want.clone();
        if let Some((earliest, latest)) = *window {
            assert!(
                (earliest..=latest).contains(&got.timestamp_ms),
                "{what}: offset {} was stamped {}, outside its produce call ({earliest}..={latest})",
                got.offset,
                got.timestamp_ms
            );
            want.timestamp_ms = got.timestamp_ms;
        }
        assert_eq!(got, &want, "{what}: offset {}", want.offset);
    }
}

/// Asserts that `result` is a refusal with `code` whose message names each
/// of `needles`, and returns the message.
#[track_caller]
fn refused<T: Debug>(result: keel_client::Result<T>, code: ErrorCode, needles: &[&str]) -> String {
    match result {
        Err(Error::Server { code: got, message }) => {
            assert_eq!(got, code, "expected {code:?}, got {got:?}: {message}");
            for needle in needles {
                assert!(message.contains(needle), "the {code:?} message {message:?} does not name {needle:?}");
            }
            message
        }
        other => panic!("expected a {code:?} refusal naming {needles:?}, got {other:?}"),
    }
}

/// The same for a raw gRPC answer: the `keel-error` metadata and the message.
#[track_caller]
fn refused_raw<T: Debug>(result: Result<T, tonic::Status>, code: ErrorCode, needles: &[&str]) -> tonic::Status {
    let status = match result {
        Err(status) => status,
        Ok(answer) => panic!("expected a {code:?} refusal naming {needles:?}, got {answer:?}"),
    };
    let named = status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(code.as_str_name()), "the keel-error of {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the {code:?} message {:?} does not name {needle:?}",
            status.message()
        );
    }
    status
}

/// One node's view of every topic: its description and each partition's records.
type Snapshot = BTreeMap<String, (TopicInfo, Vec<Vec<FetchedRecord>>)>;

async fn snapshot(client: &Client) -> Snapshot {
    let mut out = BTreeMap::new();
    for topic in client.list_topics().await.expect("list topics") {
        let mut partitions = Vec::with_capacity(topic.partition_info.len());
        for p in &topic.partition_info {
            let records = if p.start_offset == p.end_offset {
                Vec::new()
            } else {
                read_from(client, &topic.name, p.partition, p.start_offset, 0).await.records
            };
            partitions.push(records);
        }
        out.insert(topic.name.clone(), (topic, partitions));
    }
    out
}

/// Deterministic bytes of every value 0..=255 (no RNG: a failure replays).
fn binary(len: usize, seed: u32) -> Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Runs `keel ARGS` with `stdin`, bounded by `CLI_TIMEOUT`, without the
/// test run's `KEEL_*` variables (`KEEL_CLUSTER` would point it elsewhere)
/// and without backtraces (they would bury the message under test).
async fn keel(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("KEEL_") {
            command.env_remove(variable);
        }
    }
    command.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0").env("NO_COLOR", "1");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("start keel {args:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    // A command that fails early (an unknown topic) may exit before it
    // reads its input: a broken pipe is then no error of the test's.
    match input.write_all(stdin).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("write the stdin of keel {args:?}: {e}"),
    }
    drop(input);
    // On timeout the child is dropped, which kills it (kill_on_drop).
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("keel {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("wait for keel {args:?}: {e}"))
}

fn show(args: &[&str], output: &Output) -> String {
    format!(
        "keel {args:?} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command that must succeed and returns its stdout.
async fn keel_ok(args: &[&str], stdin: &[u8]) -> String {
    let output = keel(args, stdin).await;
    assert!(output.status.success(), "{}", show(args, &output));
    String::from_utf8(output.stdout.clone()).unwrap_or_else(|_| panic!("stdout is not UTF-8: {}", show(args, &output)))
}

/// Runs a command that must fail, and asserts its stderr names each of `needles`.
async fn keel_fails(args: &[&str], stdin: &[u8], needles: &[&str]) {
    let output = keel(args, stdin).await;
    assert!(!output.status.success(), "expected a failure: {}", show(args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not name {needle:?}: {}", show(args, &output));
    }
}

/// The CLI pointed at one cluster (`--cluster` appended to every command).
struct Cli {
    cluster: String,
}

impl Cli {
    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut argv = args.to_vec();
        argv.extend(["--cluster", self.cluster.as_str()]);
        argv
    }

    async fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        keel_ok(&self.argv(args), stdin).await
    }

    async fn fails(&self, args: &[&str], stdin: &[u8], needles: &[&str]) {
        keel_fails(&self.argv(args), stdin, needles).await;
    }
}
