//! The log store under load, driven the way openraft 0.10 drives it.
//!
//! W writer tasks each keep one entry in flight: submit it to a shared
//! queue, wait to be told it is flushed, repeat. One driver task plays
//! openraft's core: it takes everything queued and appends it as one batch
//! of consecutive entries, and goes on as soon as the append returns
//! (written), without waiting for its flush: several appends are in flight
//! while the flusher syncs. A completion task waits for each append's
//! flush callback in order and then tells its writers. Appends that queue
//! while a sync runs share the next `fdatasync`: the group commit the
//! engine is built for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use keel_raft_log::raw::{RawConfig, RawData};
use keel_raft_log::{FlushConfig, FlushPolicy, FlushStats, LogStore, Preallocate, RecordKind, Store, StoreConfig};
use openraft::EntryPayload;
use openraft::storage::RaftLogStorageExt;
use tokio::sync::{mpsc, oneshot};

use super::{Latency, micros, new_histogram};

/// Every bench entry has one leader in one term.
const TERM: u64 = 1;
const LEADER: u64 = 1;
/// The first log index a phase appends (the priming entry).
const FIRST_INDEX: u64 = 1;
/// How long past a phase's end an append or a writer may still take before
/// the bench gives up: a flush callback that never fires must not hang it.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// Payload bytes one phase may append, so a fast disk under ASYNC_FLUSH
/// cannot fill the filesystem; the measured window ends early instead.
const PHASE_MAX_PAYLOAD_BYTES: u64 = 4 << 30;
const PHASE_MAX_ENTRIES: u64 = 50_000_000;
/// `max_bytes` of each `read_range` call in the read-back.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// One measured point.
#[derive(Debug, Clone)]
pub struct Phase {
    /// A directory of its own: the store flocks it.
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub preallocate: Preallocate,
    pub policy: FlushPolicy,
    pub writers: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Read every entry back after the load (SYNC run only).
    pub read_back: bool,
}

/// The flusher's work during the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushWindow {
    pub syncs: u64,
    pub entries_written: u64,
    pub sync_nanos_total: u64,
    /// Over the whole phase (the store keeps only a running maximum).
    pub sync_nanos_max: u64,
}

impl FlushWindow {
    fn between(a: &FlushStats, b: &FlushStats) -> Self {
        Self {
            syncs: b.syncs.saturating_sub(a.syncs),
            entries_written: b.entries_written.saturating_sub(a.entries_written),
            sync_nanos_total: b.sync_nanos_total.saturating_sub(a.sync_nanos_total),
            sync_nanos_max: b.sync_nanos_max,
        }
    }

    pub fn entries_per_sync(&self) -> f64 {
        if self.syncs == 0 { 0.0 } else { self.entries_written as f64 / self.syncs as f64 }
    }

    pub fn mean_sync_us(&self) -> f64 {
        if self.syncs == 0 { 0.0 } else { self.sync_nanos_total as f64 / self.syncs as f64 / 1e3 }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ReadBack {
    pub entries: u64,
    pub payload_bytes: u64,
    pub elapsed: Duration,
}

impl ReadBack {
    pub fn mib_per_s(&self) -> f64 {
        self.payload_bytes as f64 / (1u64 << 20) as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub appends_per_s: f64,
    pub latency: Latency,
    /// Entries completed inside the measured window.
    pub measured_entries: u64,
    pub measured: Duration,
    /// Every entry of the phase, priming and warm-up included.
    pub appended_entries: u64,
    /// The phase hit its entry or byte bound and ended early.
    pub capped: bool,
    pub flush: FlushWindow,
    pub read: Option<ReadBack>,
}

/// A writer's entry, waiting for the driver.
struct Submit {
    bytes: Vec<u8>,
    submitted: Instant,
    done: oneshot::Sender<()>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

struct Driven {
    log_store: LogStore<RawConfig>,
    next_index: u64,
    hist: Histogram<u64>,
    counted: u64,
    last_completion: Option<Instant>,
    stats_start: Option<FlushStats>,
    stats_end: Option<FlushStats>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn entry(index: u64, timestamp_ms: u64, bytes: Vec<u8>) -> keel_raft_log::KeelEntry<RawData> {
    keel_raft_log::KeelEntry {
        log_id: keel_raft_log::LogId::new(keel_raft_log::LeaderId { term: TERM, node_id: LEADER }, index),
        payload: EntryPayload::Normal(RawData { timestamp_ms, bytes }),
    }
}

/// Run one phase: open a store in `phase.dir`, load it, optionally read it
/// back, close it and remove the directory.
pub async fn run(phase: &Phase) -> Result<Outcome> {
    let mut config = StoreConfig::new(&phase.dir);
    config.segment_bytes = phase.segment_bytes;
    config.preallocate = phase.preallocate;
    config.flush = FlushConfig::with_policy(phase.policy);
    let store = Store::open(config).await.with_context(|| format!("open the log store in {}", phase.dir.display()))?;
    let mut log_store = LogStore::<RawConfig>::new(store);
    let payload = Arc::new(super::raw_disk::pattern(phase.size));

    // Priming: the first append rolls to the first segment, which waits for
    // the preparer's initial zero-fill. That is start-up cost, not load.
    log_store
        .blocking_append(vec![entry(FIRST_INDEX, now_ms(), payload.to_vec())])
        .await
        .context("append the priming entry")?;

    let start = Instant::now() + phase.warmup;
    let window = Window { start, end: start + phase.duration };
    let record_bytes = (phase.size + keel_raft_log::format::RECORD_HEADER_BYTES) as u64;
    let max_entries = (PHASE_MAX_PAYLOAD_BYTES / record_bytes).clamp(1, PHASE_MAX_ENTRIES);
    let per_writer = max_entries.div_ceil(phase.writers as u64);

    // Each writer has at most one entry queued, so `writers` is the bound.
    let (tx, rx) = mpsc::channel::<Submit>(phase.writers);
    let mut writers = Vec::with_capacity(phase.writers);
    for _ in 0..phase.writers {
        writers.push(tokio::spawn(write_loop(tx.clone(), payload.clone(), window.end, per_writer)));
    }
    drop(tx);
    let driver = tokio::spawn(drive(log_store, rx, FIRST_INDEX + 1, window, phase.writers));

    let mut capped = false;
    let mut writer_error = None;
    for w in writers {
        match w.await {
            Ok(Ok(hit_bound)) => capped |= hit_bound,
            Ok(Err(e)) => writer_error = Some(e),
            Err(e) => writer_error = Some(anyhow!("a writer task failed: {e}")),
        }
    }
    // The driver's error is the cause; a writer's is usually its echo.
    let driven = driver.await.context("the driver task failed")??;
    if let Some(e) = writer_error {
        return Err(e);
    }
    let Driven { log_store, next_index, hist, counted, last_completion, stats_start, stats_end } = driven;

    let store = log_store.store().clone();
    let last = next_index - 1;
    if let Some(e) = store.failure() {
        bail!("the log store entered fail-stop during the run: {e}");
    }
    let stats_now = store.flush_stats();
    if phase.policy == FlushPolicy::SyncFlush && stats_now.synced_index != Some(last) {
        bail!(
            "under SYNC_FLUSH every append waited for its sync, yet the synced index is {:?} after appending up to {last}",
            stats_now.synced_index
        );
    }
    let flush = match (stats_start, stats_end) {
        (Some(a), Some(b)) => FlushWindow::between(&a, &b),
        (Some(a), None) => FlushWindow::between(&a, &stats_now),
        _ => FlushWindow::default(),
    };

    let window_end = match last_completion {
        Some(t) if capped => t.min(window.end),
        _ => window.end,
    };
    let measured = window_end.saturating_duration_since(window.start);
    if counted == 0 || measured.is_zero() {
        bail!(
            "no append completed inside the measured window ({:.2} s after a {:.2} s warm-up); try a longer --duration",
            phase.duration.as_secs_f64(),
            phase.warmup.as_secs_f64()
        );
    }

    let read = if phase.read_back {
        let (s, p) = (store.clone(), payload.clone());
        Some(
            tokio::task::spawn_blocking(move || read_back(&s, last, &p))
                .await
                .context("the read-back task failed")??,
        )
    } else {
        None
    };
    drop(store);
    close(log_store, &phase.dir).await?;

    Ok(Outcome {
        appends_per_s: counted as f64 / measured.as_secs_f64(),
        latency: Latency::of(&hist),
        measured_entries: counted,
        measured,
        appended_entries: last - FIRST_INDEX + 1,
        capped,
        flush,
        read,
    })
}

/// One writer: submit an entry, wait for its flush, repeat until `end` or
/// `max_entries`. Returns whether it stopped on the count bound.
async fn write_loop(tx: mpsc::Sender<Submit>, payload: Arc<Vec<u8>>, end: Instant, max_entries: u64) -> Result<bool> {
    for _ in 0..max_entries {
        if Instant::now() >= end {
            return Ok(false);
        }
        let (done, flushed) = oneshot::channel();
        let submit = Submit { bytes: payload.to_vec(), submitted: Instant::now(), done };
        tx.send(submit).await.map_err(|_| anyhow!("the driver stopped while a writer was submitting"))?;
        flushed.await.map_err(|_| anyhow!("the driver dropped an entry without completing it"))?;
    }
    Ok(true)
}

/// An append in flight: its writers and when its flush callback fired.
struct InFlight {
    writers: Vec<Submit>,
    last: u64,
    flushed: oneshot::Receiver<keel_raft_log::Result<()>>,
}

/// What the completion task measured.
struct Completed {
    hist: Histogram<u64>,
    counted: u64,
    last_completion: Option<Instant>,
}

/// openraft's core, reduced to the log path: batch what is queued, append it
/// (returns once written), hand its flush to the completion task, go on.
/// Ends when every writer has dropped its sender.
async fn drive(
    log_store: LogStore<RawConfig>,
    mut rx: mpsc::Receiver<Submit>,
    mut next_index: u64,
    window: Window,
    max_batch: usize,
) -> Result<Driven> {
    let deadline = tokio::time::Instant::from_std(window.end + STOP_GRACE);
    let (mut stats_start, mut stats_end) = (None, None);
    // Bounded like openraft's log I/O queue: at most this many appends wait
    // for their flush before the driver waits too.
    let (flights, mut flights_rx) = mpsc::channel::<InFlight>(1024);
    let completions = tokio::spawn(async move {
        let mut done = Completed { hist: new_histogram(), counted: 0, last_completion: None };
        while let Some(f) = flights_rx.recv().await {
            match tokio::time::timeout_at(deadline, f.flushed).await {
                Ok(Ok(r)) => r.with_context(|| format!("flush of entries up to {}", f.last))?,
                Ok(Err(_)) => bail!("the flush callback of entries up to {} was dropped", f.last),
                Err(_) => {
                    bail!("the append of entries up to {} never completed (its flush callback did not fire)", f.last)
                }
            }
            let done_at = Instant::now();
            done.last_completion = Some(done_at);
            let in_window = done_at >= window.start && done_at < window.end;
            for s in f.writers {
                if in_window {
                    done.hist.saturating_record(micros(done_at - s.submitted));
                    done.counted += 1;
                }
                // A writer waits on every entry it submits; if it is gone, the
                // phase is failing already and its error is reported.
                let _ = s.done.send(());
            }
        }
        Ok::<_, anyhow::Error>(done)
    });
    let store = log_store.store().clone();
    let mut batch: Vec<Submit> = Vec::with_capacity(max_batch);
    loop {
        let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(_) => bail!("writers were still submitting {STOP_GRACE:?} after the phase ended"),
        };
        // Snapshots between appends, so syncs and entries stay consistent.
        let now = Instant::now();
        if stats_start.is_none() && now >= window.start {
            stats_start = Some(store.flush_stats());
        }
        if stats_end.is_none() && now >= window.end {
            stats_end = Some(store.flush_stats());
        }
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let timestamp_ms = now_ms();
        let records = batch
            .iter_mut()
            .zip(next_index..)
            .map(|(s, index)| keel_raft_log::entry_to_record(&entry(index, timestamp_ms, std::mem::take(&mut s.bytes))))
            .collect::<keel_raft_log::Result<Vec<_>>>()
            .context("encode entries")?;
        let last = next_index + n - 1;
        let (tx, flushed) = oneshot::channel();
        store
            .append(records, Box::new(move |r| drop(tx.send(r))))
            .await
            .with_context(|| format!("append entries {next_index}..={last}"))?;
        next_index = last + 1;
        let writers = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        if flights.send(InFlight { writers, last, flushed }).await.is_err() {
            break;
        }
    }
    drop(flights);
    let Completed { hist, counted, last_completion } = completions.await.context("the completion task failed")??;
    Ok(Driven { log_store, next_index, hist, counted, last_completion, stats_start, stats_end })
}

/// Read entries `FIRST_INDEX..=last` back through `Store::read_range` (the
/// segments' maps) and check each against what was written.
fn read_back(store: &Store, last: u64, payload: &[u8]) -> Result<ReadBack> {
    let started = Instant::now();
    let mut index = FIRST_INDEX;
    let mut payload_bytes = 0u64;
    // Each round yields at least one record or fails, so it runs at most
    // `last` times.
    while index <= last {
        let records = store
            .read_range(index, last + 1, READ_CHUNK_BYTES)
            .with_context(|| format!("read entries {index}..={last} back"))?;
        if records.is_empty() {
            bail!(
                "read_range({index}, {}) returned nothing, but entries {FIRST_INDEX}..={last} were appended",
                last + 1
            );
        }
        for r in records {
            if r.index != index {
                bail!("read back entry {} where {index} was expected", r.index);
            }
            if r.kind != RecordKind::Normal {
                bail!("entry {index} reads back as {:?}, not a normal entry", r.kind);
            }
            if r.payload.len() != payload.len() {
                bail!(
                    "entry {index} reads back with {} payload bytes; {} were written",
                    r.payload.len(),
                    payload.len()
                );
            }
            if r.payload[..] != payload[..] {
                bail!("entry {index} reads back with a payload different from the one written");
            }
            payload_bytes += r.payload.len() as u64;
            index += 1;
        }
    }
    let entries = index - FIRST_INDEX;
    if entries != last - FIRST_INDEX + 1 {
        bail!("read back {entries} entries; {} were appended", last - FIRST_INDEX + 1);
    }
    Ok(ReadBack { entries, payload_bytes, elapsed: started.elapsed() })
}

/// Drop the store, wait for its background work, remove its directory.
///
/// Dropping the last handle lets the store's actors finish on their own: the
/// flusher syncs once more and the preparer removes its spare segment, after
/// finishing a zero-fill if one is running. The next phase must not share the
/// disk with that 64 MiB write, so wait until the spare is gone.
async fn close(log_store: LogStore<RawConfig>, dir: &Path) -> Result<()> {
    // Waits for the final sync and for a segment still being zero-filled, so
    // the next phase starts on a quiet disk.
    log_store.into_store().close().await.context("close the store")?;
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}
