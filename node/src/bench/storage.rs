//! `keel bench storage`: the disk's fdatasync limit next to the log store
//! under each flush policy, in one run on one directory.
//!
//! Phases, in order (each engine phase in a directory of its own, removed
//! when it ends):
//!
//! 1. raw: `pwrite` W×S bytes + `fdatasync` in a loop, no engine → the most
//!    durable appends/s this disk allows at this batch size;
//! 2. raw: 4 KiB `pwrite` + `fdatasync` latency on a zero-filled file;
//! 3. the same on a `fallocate`d file (unwritten extents): the
//!    `segment.preallocate` decision;
//! 4. engine, SYNC_FLUSH, W writers → `ratio` = engine / raw;
//! 5. read every entry of phase 4 back through the segments' maps;
//! 6. raw again, with as many S-byte entries per fdatasync as phase 4
//!    averaged → `ratio_at_engine_batch`: the engine's cost per sync, apart
//!    from how many writers each sync serves;
//! 7. engine, SYNC_FLUSH, one writer → the append latency a lone producer sees;
//! 8. and 9. engine, BATCH_FLUSH (acked with the batch's fsync, which
//!    comes after `flush.batch.size` messages or `flush.interval.ms`: with
//!    fewer writers than the batch, the interval sets the pace) and
//!    ASYNC_FLUSH (acked from the page cache), W writers.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_raft_log::{FlushConfig, FlushPolicy, Preallocate, StoreConfig};
use serde::Serialize;

use super::engine::{self, Phase};
use super::raw_disk;
use super::{Latency, new_histogram};

/// Bound on W×S: one batch of the raw loop and one append of the driver.
const MAX_BATCH_BYTES: usize = 64 << 20;
const MAX_WRITERS: usize = 4096;
const MAX_DURATION_S: f64 = 3600.0;
/// Size of the raw zero-filled file, unless W×S needs more; as big as a
/// segment, so the raw loop wraps about as often as the engine rolls.
const RAW_FILE_BYTES: u64 = 64 << 20;
/// The fallocated file is only reserved, never written up front, so it can be
/// large enough that the loop rarely reaches its end.
const FALLOCATE_FILE_BYTES: u64 = 256 << 20;
const LATENCY_WRITE_BYTES: usize = 4096;
/// The fallocate comparison only needs a p99, not a full-length run.
const FALLOCATE_MAX_DURATION: Duration = Duration::from_secs(3);
const WARMUP_MIN: Duration = Duration::from_millis(250);
const WARMUP_MAX: Duration = Duration::from_secs(1);
const STEPS: usize = 9;
/// Width of the label column of the human table.
const LABEL_WIDTH: usize = 76;

#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// Directory to measure in. The bench works in a fresh subdirectory of it
    /// and removes that at the end [default: the current directory]
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Concurrent writers, each with one append in flight
    #[arg(long, value_name = "N", default_value = "64", value_parser = parse_writers)]
    writers: usize,
    /// Payload bytes per entry
    #[arg(long, value_name = "BYTES", default_value = "1024", value_parser = parse_size)]
    size: usize,
    /// Seconds per measured point (fractions allowed, e.g. 0.5)
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_duration)]
    duration: f64,
    /// `segment.bytes` of the stores under test
    #[arg(long, value_name = "BYTES", default_value_t = StoreConfig::DEFAULT_SEGMENT_BYTES, value_parser = parse_segment_bytes)]
    segment_bytes: u64,
    /// `segment.preallocate` of the stores under test: fallocate or zero
    /// [default: the store's default, fallocate]
    #[arg(long, value_name = "HOW", value_parser = parse_preallocate)]
    preallocate: Option<Preallocate>,
    /// Also print the results as one JSON object, the last line of stdout
    #[arg(long)]
    json: bool,
}

fn parse_writers(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| "expected a whole number".to_string())?;
    match n {
        0 => Err("must be at least 1".into()),
        n if n > MAX_WRITERS => Err(format!("must be at most {MAX_WRITERS}")),
        n => Ok(n),
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of bytes".into()),
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    let d: f64 = s.trim().parse().map_err(|_| "expected a number of seconds".to_string())?;
    if !d.is_finite() || d <= 0.0 {
        return Err("must be a positive number of seconds".into());
    }
    if d > MAX_DURATION_S {
        return Err(format!("must be at most {MAX_DURATION_S} seconds"));
    }
    Ok(d)
}

// The node's own parsers, so the bench accepts exactly what a node would.
fn parse_segment_bytes(s: &str) -> Result<u64, String> {
    crate::config::store_with("segment.bytes", s).map(|c| c.segment_bytes).map_err(|e| e.to_string())
}

fn parse_preallocate(s: &str) -> Result<Preallocate, String> {
    crate::config::store_with("segment.preallocate", s).map(|c| c.preallocate).map_err(|e| e.to_string())
}

/// Validated settings of one run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    writers: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    segment_bytes: u64,
    preallocate: Preallocate,
}

impl Settings {
    fn new(args: &StorageArgs) -> Result<Self> {
        let mut c = StoreConfig::new(".");
        c.segment_bytes = args.segment_bytes;
        let max = c.max_payload_bytes();
        if args.size > max {
            bail!(
                "--size {} is larger than the largest entry a {}-byte segment holds ({max} bytes); \
                 lower --size or raise --segment-bytes",
                args.size,
                args.segment_bytes
            );
        }
        let batch = args.writers.checked_mul(args.size).filter(|&b| b <= MAX_BATCH_BYTES);
        if batch.is_none() {
            bail!(
                "--writers {} × --size {} is more than {} MiB in one batch; lower one of them",
                args.writers,
                args.size,
                MAX_BATCH_BYTES >> 20
            );
        }
        let duration = Duration::from_secs_f64(args.duration);
        Ok(Self {
            writers: args.writers,
            size: args.size,
            duration,
            warmup: duration.clamp(WARMUP_MIN, WARMUP_MAX),
            segment_bytes: args.segment_bytes,
            preallocate: args.preallocate.unwrap_or(c.preallocate),
        })
    }

    fn phase(&self, dir: PathBuf, policy: FlushPolicy, writers: usize, read_back: bool) -> Phase {
        Phase {
            dir,
            segment_bytes: self.segment_bytes,
            preallocate: self.preallocate,
            policy,
            writers,
            size: self.size,
            warmup: self.warmup,
            duration: self.duration,
            read_back,
        }
    }
}

/// What `--json` prints; the human table shows the same numbers.
#[derive(Debug, Serialize)]
struct Report {
    raw_appends_per_s: f64,
    raw_fdatasyncs_per_s: f64,
    engine_appends_per_s: f64,
    ratio: f64,
    /// Entries per fdatasync the engine averaged at W writers (rounded).
    engine_batch_entries: usize,
    /// The raw loop at that many S-byte entries per fdatasync.
    raw_at_engine_batch_appends_per_s: f64,
    ratio_at_engine_batch: f64,
    raw_fsync_p50_us: u64,
    raw_fsync_p99_us: u64,
    /// `None` where the filesystem has no fallocate.
    fallocate_fsync_p50_us: Option<u64>,
    fallocate_fsync_p99_us: Option<u64>,
    engine_append_p50_us: u64,
    engine_append_p99_us: u64,
    /// Append latency at W writers under SYNC_FLUSH (under load).
    engine_loaded_append_p50_us: u64,
    engine_loaded_append_p99_us: u64,
    batch_appends_per_s: f64,
    async_appends_per_s: f64,
    read_mib_per_s: f64,
    read_entries: u64,
    /// The SYNC_FLUSH run at W writers, measured window.
    sync_flush_syncs: u64,
    sync_flush_entries_written: u64,
    sync_flush_entries_per_sync: f64,
    sync_flush_mean_sync_us: f64,
    sync_flush_max_sync_us: f64,
    writers: usize,
    size: usize,
    duration_s: f64,
    warmup_s: f64,
    segment_bytes: u64,
    /// `segment.preallocate` of the engine phases: "fallocate" or "zero".
    preallocate: &'static str,
    /// Some phase hit its bound on appended bytes and ended early.
    capped: bool,
    /// The fallocate loop reached the end of its file before its time was up.
    fallocate_file_exhausted: bool,
    dir: String,
    filesystem: Option<String>,
    latency: Latencies,
    phases: Vec<PhaseReport>,
}

/// Full distributions behind the headline percentiles.
#[derive(Debug, Serialize)]
struct Latencies {
    raw_zero_filled: Latency,
    raw_fallocated: Option<Latency>,
    engine_sync_w1: Latency,
    engine_sync_loaded: Latency,
}

/// One engine phase, for anyone checking how a headline number was made.
#[derive(Debug, Serialize)]
struct PhaseReport {
    policy: &'static str,
    writers: usize,
    appends_per_s: f64,
    /// Entries completed inside the measured window.
    measured_entries: u64,
    measured_s: f64,
    /// Every entry the phase appended, priming and warm-up included.
    appended_entries: u64,
    capped: bool,
    latency: Latency,
    fdatasyncs: u64,
    entries_per_sync: f64,
}

impl PhaseReport {
    fn of(policy: FlushPolicy, writers: usize, o: &engine::Outcome) -> Self {
        Self {
            policy: policy.as_str(),
            writers,
            appends_per_s: o.appends_per_s,
            measured_entries: o.measured_entries,
            measured_s: o.measured.as_secs_f64(),
            appended_entries: o.appended_entries,
            capped: o.capped,
            latency: o.latency,
            fdatasyncs: o.flush.syncs,
            entries_per_sync: o.flush.entries_per_sync(),
        }
    }
}

/// One line per phase on stderr; on a terminal it also ticks while it runs.
struct Progress {
    step: usize,
    tty: bool,
}

struct Ticking {
    prefix: String,
    tty: bool,
    started: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new() -> Self {
        Self { step: 0, tty: std::io::stderr().is_terminal() }
    }

    fn start(&mut self, label: &str) -> Ticking {
        self.step += 1;
        let prefix = format!("[{}/{STEPS}] {label} ...", self.step);
        let started = Instant::now();
        eprint!("{prefix}");
        let _ = std::io::stderr().flush();
        let ticker = self.tty.then(|| {
            // `\x1b[K` clears the rest of the line: only on a terminal.
            let p = prefix.clone();
            tokio::spawn(async move {
                // Ends when the phase does (aborted); never outlives the run.
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    eprint!("\r{p} {:.1}s\x1b[K", started.elapsed().as_secs_f64());
                    let _ = std::io::stderr().flush();
                }
            })
        });
        Ticking { prefix, tty: self.tty, started, ticker }
    }

    /// A step that was measured inside another one.
    fn done(&mut self, label: &str, summary: &str) {
        self.step += 1;
        eprintln!("[{}/{STEPS}] {label} ... {summary}", self.step);
    }
}

impl Ticking {
    fn finish(self, summary: &str) {
        if let Some(t) = self.ticker {
            t.abort();
            eprint!("\r{}", self.prefix);
        }
        let clear = if self.tty { "\x1b[K" } else { "" };
        eprintln!(" {summary} ({:.1} s){clear}", self.started.elapsed().as_secs_f64());
    }
}

/// Run a blocking measurement off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("a measurement thread failed")?
}

pub async fn run(args: StorageArgs) -> Result<()> {
    let settings = Settings::new(&args)?;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create --dir {}", d.display()))?;
            d.clone()
        }
        None => PathBuf::from("."),
    };
    let base = base.canonicalize().with_context(|| format!("resolve {}", base.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".keel-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("create a bench directory in {}", base.display()))?;
    let filesystem = filesystem_of(work.path());
    eprintln!(
        "keel bench storage in {} ({}): W={} S={} B, {:.1} s per point after a {:.1} s warm-up",
        work.path().display(),
        filesystem.as_deref().unwrap_or("filesystem unknown"),
        settings.writers,
        settings.size,
        settings.duration.as_secs_f64(),
        settings.warmup.as_secs_f64(),
    );
    let report = measure(&settings, work.path(), &base, filesystem).await;
    // Remove the bench's files whether or not the run succeeded.
    let removed = work.close().context("remove the bench directory");
    let report = report?;
    removed?;

    print!("{}", table(&report));
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encode the JSON report")?);
    }
    Ok(())
}

async fn measure(s: &Settings, work: &Path, base: &Path, filesystem: Option<String>) -> Result<Report> {
    let mut progress = Progress::new();
    let (w, size, duration) = (s.writers, s.size, s.duration);

    // (a) The disk alone. The zero-filled file serves both raw loops.
    let batch = w * size;
    let raw_path = work.join("raw-zero.dat");
    let raw_file_bytes = RAW_FILE_BYTES.max(4 * batch as u64).next_multiple_of(4096);
    let p = progress.start(&format!("raw pwrite {batch} B (W×S) + fdatasync, zero-filled file"));
    let file = {
        let path = raw_path.clone();
        blocking(move || raw_disk::zero_filled(&path, raw_file_bytes)).await?
    };
    let file = std::sync::Arc::new(file);
    let f = file.clone();
    let raw = blocking(move || raw_disk::write_sync_loop(&f, raw_file_bytes, batch, duration, true, None)).await?;
    let raw_appends_per_s = raw.per_s() * w as f64;
    p.finish(&format!("{} appends/s ({} fdatasync/s)", group(raw_appends_per_s), group(raw.per_s())));

    let p = progress.start("raw 4 KiB pwrite + fdatasync latency, zero-filled file");
    let f = file.clone();
    let zero_hist = blocking(move || {
        let mut h = new_histogram();
        raw_disk::write_sync_loop(&f, raw_file_bytes, LATENCY_WRITE_BYTES, duration, true, Some(&mut h))?;
        Ok(h)
    })
    .await?;
    let zero = Latency::of(&zero_hist);
    p.finish(&format!("p50 {} us, p99 {} us", zero.p50_us, zero.p99_us));

    let p = progress.start("raw 4 KiB pwrite + fdatasync latency, fallocated file");
    let falloc_path = work.join("raw-fallocate.dat");
    let falloc_duration = duration.min(FALLOCATE_MAX_DURATION);
    let fp = falloc_path.clone();
    let fallocated = blocking(move || {
        let Some(file) = raw_disk::fallocated(&fp, FALLOCATE_FILE_BYTES)? else { return Ok(None) };
        let mut h = new_histogram();
        let r = raw_disk::write_sync_loop(
            &file,
            FALLOCATE_FILE_BYTES,
            LATENCY_WRITE_BYTES,
            falloc_duration,
            false,
            Some(&mut h),
        )?;
        Ok(Some((h, r.exhausted)))
    })
    .await?;
    let fallocate_file_exhausted = fallocated.as_ref().is_some_and(|(_, e)| *e);
    let fallocated = fallocated.as_ref().map(|(h, _)| Latency::of(h));
    match fallocated {
        Some(l) => p.finish(&format!("p50 {} us, p99 {} us", l.p50_us, l.p99_us)),
        None => p.finish("fallocate not supported here; skipped"),
    }
    if falloc_path.exists() {
        std::fs::remove_file(&falloc_path).with_context(|| format!("remove {}", falloc_path.display()))?;
    }

    // (b) and (d): the engine under SYNC_FLUSH at W writers, then read back.
    let label = |policy: FlushPolicy, writers: usize| format!("engine {policy} W={writers} S={size}");
    let p = progress.start(&label(FlushPolicy::SyncFlush, w));
    let sync = engine::run(&s.phase(work.join("sync-w"), FlushPolicy::SyncFlush, w, true)).await?;
    p.finish(&format!(
        "{} appends/s, {:.1} entries per fdatasync",
        group(sync.appends_per_s),
        sync.flush.entries_per_sync()
    ));
    let read = sync.read.expect("the SYNC_FLUSH phase reads back");
    // The read ran inside the phase, while the store was still open.
    progress.done(
        "read back through mmap",
        &format!(
            "{} entries, {:.1} MiB/s ({:.1} s)",
            group(read.entries as f64),
            read.mib_per_s(),
            read.elapsed.as_secs_f64()
        ),
    );

    // The raw loop at the batch the engine actually got per fdatasync.
    let engine_batch_entries = (sync.flush.entries_per_sync().round() as usize).clamp(1, w);
    let p = progress.start(&format!("raw pwrite {engine_batch_entries}×S + fdatasync (the engine's batch)"));
    let f = file.clone();
    let chunk = engine_batch_entries * size;
    let raw_same = blocking(move || raw_disk::write_sync_loop(&f, raw_file_bytes, chunk, duration, true, None)).await?;
    let raw_at_engine_batch_appends_per_s = raw_same.per_s() * engine_batch_entries as f64;
    p.finish(&format!("{} appends/s", group(raw_at_engine_batch_appends_per_s)));
    drop(file);
    std::fs::remove_file(&raw_path).with_context(|| format!("remove {}", raw_path.display()))?;

    let p = progress.start(&label(FlushPolicy::SyncFlush, 1));
    let single = engine::run(&s.phase(work.join("sync-1"), FlushPolicy::SyncFlush, 1, false)).await?;
    p.finish(&format!("p50 {} us, p99 {} us", single.latency.p50_us, single.latency.p99_us));

    // (c) The weaker policies.
    let p = progress.start(&label(FlushPolicy::BatchFlush, w));
    let batch_run = engine::run(&s.phase(work.join("batch-w"), FlushPolicy::BatchFlush, w, false)).await?;
    p.finish(&format!("{} appends/s", group(batch_run.appends_per_s)));
    let p = progress.start(&label(FlushPolicy::AsyncFlush, w));
    let async_run = engine::run(&s.phase(work.join("async-w"), FlushPolicy::AsyncFlush, w, false)).await?;
    p.finish(&format!("{} appends/s", group(async_run.appends_per_s)));

    Ok(Report {
        raw_appends_per_s,
        raw_fdatasyncs_per_s: raw.per_s(),
        engine_appends_per_s: sync.appends_per_s,
        ratio: sync.appends_per_s / raw_appends_per_s,
        engine_batch_entries,
        raw_at_engine_batch_appends_per_s,
        ratio_at_engine_batch: sync.appends_per_s / raw_at_engine_batch_appends_per_s,
        raw_fsync_p50_us: zero.p50_us,
        raw_fsync_p99_us: zero.p99_us,
        fallocate_fsync_p50_us: fallocated.map(|l| l.p50_us),
        fallocate_fsync_p99_us: fallocated.map(|l| l.p99_us),
        engine_append_p50_us: single.latency.p50_us,
        engine_append_p99_us: single.latency.p99_us,
        engine_loaded_append_p50_us: sync.latency.p50_us,
        engine_loaded_append_p99_us: sync.latency.p99_us,
        batch_appends_per_s: batch_run.appends_per_s,
        async_appends_per_s: async_run.appends_per_s,
        read_mib_per_s: read.mib_per_s(),
        read_entries: read.entries,
        sync_flush_syncs: sync.flush.syncs,
        sync_flush_entries_written: sync.flush.entries_written,
        sync_flush_entries_per_sync: sync.flush.entries_per_sync(),
        sync_flush_mean_sync_us: sync.flush.mean_sync_us(),
        sync_flush_max_sync_us: sync.flush.sync_nanos_max as f64 / 1e3,
        writers: w,
        size,
        duration_s: duration.as_secs_f64(),
        warmup_s: s.warmup.as_secs_f64(),
        segment_bytes: s.segment_bytes,
        preallocate: s.preallocate.as_str(),
        capped: sync.capped || single.capped || batch_run.capped || async_run.capped,
        fallocate_file_exhausted,
        dir: base.display().to_string(),
        filesystem,
        latency: Latencies {
            raw_zero_filled: zero,
            raw_fallocated: fallocated,
            engine_sync_w1: single.latency,
            engine_sync_loaded: sync.latency,
        },
        phases: vec![
            PhaseReport::of(FlushPolicy::SyncFlush, w, &sync),
            PhaseReport::of(FlushPolicy::SyncFlush, 1, &single),
            PhaseReport::of(FlushPolicy::BatchFlush, w, &batch_run),
            PhaseReport::of(FlushPolicy::AsyncFlush, w, &async_run),
        ],
    })
}

/// `1234567.8` → `1,234,568`.
/// A rate with thousands separators, rounded to a whole number.
fn group(x: f64) -> String {
    super::thousands(x.max(0.0).round() as u64)
}

fn table(r: &Report) -> String {
    let defaults = FlushConfig::default();
    let (w, s) = (r.writers, r.size);
    let mut t = String::new();
    let mut line = |label: &str, value: String, unit: &str| {
        t.push_str(&format!("  {label:<LABEL_WIDTH$} {value:>12}  {unit}\n"));
    };
    let mut out = format!(
        "\nkeel bench storage: {} ({}), W={w} writers, S={s} B, {:.1} s per point, segment.preallocate={}\n\n",
        r.dir,
        r.filesystem.as_deref().unwrap_or("filesystem unknown"),
        r.duration_s,
        r.preallocate
    );
    out.push_str(&format!("  {:<LABEL_WIDTH$} {:>12}  unit\n", format!("throughput (W={w}, S={s} B)"), "value"));
    line("raw disk: pwrite W×S + fdatasync loop, no engine", group(r.raw_appends_per_s), "appends/s");
    line("  (fdatasyncs of the raw loop)", group(r.raw_fdatasyncs_per_s), "fdatasync/s");
    line("engine SYNC_FLUSH   acked after the fdatasync that covers it", group(r.engine_appends_per_s), "appends/s");
    line("ratio engine SYNC_FLUSH / raw", format!("{:.3}", r.ratio), "");
    line(
        &format!("raw disk at the engine's batch ({} entries per fdatasync)", r.engine_batch_entries),
        group(r.raw_at_engine_batch_appends_per_s),
        "appends/s",
    );
    line("ratio engine SYNC_FLUSH / raw at the same batch", format!("{:.3}", r.ratio_at_engine_batch), "");
    line(
        &format!(
            "engine BATCH_FLUSH  acked with the batch's fsync: {} messages / {} ms",
            defaults.batch_size, defaults.interval_ms
        ),
        group(r.batch_appends_per_s),
        "appends/s",
    );
    line(
        &format!(
            "engine ASYNC_FLUSH  weaker: page-cache ack, fsync per {} ms / {} entries",
            defaults.interval_ms, defaults.commitlog_interval
        ),
        group(r.async_appends_per_s),
        "appends/s",
    );
    line(
        &format!("read back via mmap ({} entries of the SYNC run)", group(r.read_entries as f64)),
        format!("{:.1}", r.read_mib_per_s),
        "MiB/s",
    );
    out.push_str(&t);

    out.push_str(&format!(
        "\n  {:<LABEL_WIDTH$} {:>8} {:>8} {:>8} {:>8}\n",
        "latency (us)", "p50", "p99", "p99.9", "max"
    ));
    let lat = |label: &str, l: &Latency| {
        format!("  {label:<LABEL_WIDTH$} {:>8} {:>8} {:>8} {:>8}\n", l.p50_us, l.p99_us, l.p999_us, l.max_us)
    };
    out.push_str(&lat("raw 4 KiB pwrite + fdatasync, zero-filled file", &r.latency.raw_zero_filled));
    match &r.latency.raw_fallocated {
        Some(l) => out.push_str(&lat("raw 4 KiB pwrite + fdatasync, fallocated (unwritten) file", l)),
        None => out.push_str("  raw 4 KiB pwrite + fdatasync, fallocated file: fallocate not supported here\n"),
    }
    out.push_str(&lat(&format!("engine SYNC_FLUSH append, W=1, S={s} B"), &r.latency.engine_sync_w1));
    out.push_str(&lat(&format!("engine SYNC_FLUSH append, W={w} (under load)"), &r.latency.engine_sync_loaded));
    let overhead = |e: u64, raw: u64| format!("{:+}", e as i64 - raw as i64);
    out.push_str(&format!(
        "  {:<LABEL_WIDTH$} {:>8} {:>8}\n",
        "engine W=1 minus raw 4 KiB fdatasync",
        overhead(r.engine_append_p50_us, r.raw_fsync_p50_us),
        overhead(r.engine_append_p99_us, r.raw_fsync_p99_us)
    ));
    out.push_str(&format!(
        "\n  SYNC_FLUSH flusher at W={w}: {} fdatasyncs for {} entries = {:.1} entries per sync; \
         mean sync {:.0} us, max {:.0} us\n",
        group(r.sync_flush_syncs as f64),
        group(r.sync_flush_entries_written as f64),
        r.sync_flush_entries_per_sync,
        r.sync_flush_mean_sync_us,
        r.sync_flush_max_sync_us
    ));
    if r.fallocate_file_exhausted {
        out.push_str("  note: the fallocate loop wrote its whole file before its time was up; its sample is shorter\n");
    }
    if r.capped {
        out.push_str("  note: a phase reached its bound on appended bytes and was measured over a shorter window\n");
    }
    out
}

/// "ext4 (/dev/vda on /)": the mount holding `path`, from /proc/mounts.
fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let mount = unescape_mount(mount);
        // Later lines win a tie: they are mounted over the earlier ones.
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), format!("{fstype} ({device} on {mount})")));
        }
    }
    best.map(|(_, s)| s)
}

/// /proc/mounts writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::try_from(d.iter().fold(0u32, |n, &c| n * 8 + u32::from(c - b'0'))).ok());
        match octal {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_group_by_thousands() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1234.0), "1,234");
        assert_eq!(group(1234567.8), "1,234,568");
    }

    #[test]
    fn mount_points_unescape() {
        assert_eq!(unescape_mount("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/trailing\\04"), "/trailing\\04");
    }
}
