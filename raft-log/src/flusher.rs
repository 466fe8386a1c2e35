//! The flusher actor: owns durability of the log.
//!
//! The store writes records into the page cache and tells the flusher
//! ("written up to index I; call this when durable"). The flusher merges all
//! such requests that arrive while a sync runs (group commit), calls
//! `fdatasync` on every file written since the last sync and `fsync` on the
//! directory after a segment roll, and only then publishes the new fsynced
//! index and fires the callbacks that sync covered.
//!
//! A failed sync is fatal (fail-stop): the kernel may have dropped the dirty
//! pages, so a retry could report success for data that is gone. The failure
//! is recorded in [`SyncState`], every waiting and later callback gets the
//! error, and the sync is never retried.
//!
//! The actor runs on its own OS thread (it only makes blocking syscalls);
//! requests reach it over a bounded tokio channel, replies go back over
//! oneshots and openraft's callbacks.
//!
//! Under SYNC_FLUSH the flusher syncs as soon as anything is waiting: with an
//! idle disk it adds no wait of its own, and appends that queue while a sync
//! runs share the next one. Under BATCH_FLUSH callbacks wait for the batch's
//! sync, which comes when the unsynced messages reach `flush.batch.size` or
//! `flush.interval.ms` elapses; under ASYNC_FLUSH callbacks fire at write
//! time (in the store) and the flusher syncs on `flush.commitlog.interval`
//! entries or the interval.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{FlushConfig, FlushPolicy};
use crate::error::{Error, Result};
use crate::io::{FileIo, FileSystem};
use crate::latency::LatencyRecorder;

/// Called once the entries it was registered for are durable (or failed).
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// Bound on queued requests; appends wait when the flusher is this far behind.
const QUEUE_DEPTH: usize = 1024;

/// What has been written but not yet synced. Shared between the store (which
/// adds to it on every write) and the flusher (which takes it on each sync).
#[derive(Debug, Default)]
struct Dirty {
    files: Vec<Arc<dyn FileIo>>,
    dir: bool,
    written: Option<u64>,
    /// Bumped by truncation and range installs: a sync that started before
    /// one must not publish an index that no longer means the same entries.
    epoch: u64,
    entries: u64,
    /// Messages in the unsynced entries: what BATCH_FLUSH's batch counts.
    messages: u64,
    bytes: u64,
    since: Option<Instant>,
}

impl Dirty {
    fn add_file(&mut self, file: &Arc<dyn FileIo>) {
        if !self.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            self.files.push(file.clone());
        }
    }
}

/// Counters of the flusher's work, for monitoring.
#[derive(Debug, Default)]
pub struct FlushCounters {
    pub syncs: AtomicU64,
    pub sync_nanos_total: AtomicU64,
    pub sync_nanos_max: AtomicU64,
    pub sync_nanos_last: AtomicU64,
    pub bytes_written: AtomicU64,
    pub entries_written: AtomicU64,
}

/// A snapshot of [`FlushCounters`] and the unsynced backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub policy: FlushPolicy,
    pub syncs: u64,
    pub sync_nanos_total: u64,
    pub sync_nanos_max: u64,
    pub sync_nanos_last: u64,
    pub bytes_written: u64,
    pub entries_written: u64,
    pub unsynced_entries: u64,
    pub unsynced_bytes: u64,
    pub written_index: Option<u64>,
    pub synced_index: Option<u64>,
}

/// State shared by the store and its flusher.
#[derive(Debug)]
pub struct SyncState {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    dirty: Mutex<Dirty>,
    synced: watch::Sender<Option<u64>>,
    failed: OnceLock<Arc<str>>,
    /// Flips to `true` once, when the store enters the fail-stop state, so
    /// the node can stop at once rather than run on as a zombie.
    failed_tx: watch::Sender<bool>,
    pub counters: FlushCounters,
    pub latency: LatencyRecorder,
}

impl SyncState {
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, written: Option<u64>) -> Arc<Self> {
        // Whatever recovery found on disk counts as durable: it survived.
        let (synced, _) = watch::channel(written);
        Arc::new(Self {
            fs,
            dir,
            dirty: Mutex::new(Dirty { written, ..Dirty::default() }),
            synced,
            failed: OnceLock::new(),
            failed_tx: watch::channel(false).0,
            counters: FlushCounters::default(),
            latency: LatencyRecorder::default(),
        })
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().expect("dirty-state lock poisoned")
    }

    /// The store wrote entries up to `index` into `file`.
    pub fn written(&self, file: &Arc<dyn FileIo>, index: u64, entries: u64, bytes: u64) {
        let mut d = self.dirty();
        d.add_file(file);
        d.written = Some(index);
        d.entries += entries;
        d.bytes += bytes;
        d.since.get_or_insert_with(Instant::now);
        self.counters.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.counters.entries_written.fetch_add(entries, Ordering::Relaxed);
    }

    /// The entries just written carry `messages` messages.
    pub fn add_messages(&self, messages: u64) {
        self.dirty().messages += messages;
    }

    /// A file must be synced before the next published index (a new segment's header).
    pub fn file_dirty(&self, file: &Arc<dyn FileIo>) {
        self.dirty().add_file(file);
    }

    /// The directory changed (a segment was renamed into place).
    pub fn dir_dirty(&self) {
        self.dirty().dir = true;
    }

    /// The log was cut back or replaced: entries after `last` are gone, and
    /// everything up to it is durable (callers sync before resetting).
    pub fn reset(&self, last: Option<u64>) {
        let mut d = self.dirty();
        d.epoch += 1;
        d.written = last;
        d.entries = 0;
        d.messages = 0;
        d.bytes = 0;
        d.since = None;
        self.synced.send_replace(last);
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.synced.subscribe()
    }

    pub fn synced_index(&self) -> Option<u64> {
        *self.synced.borrow()
    }

    pub fn failure(&self) -> Option<Error> {
        self.failed.get().map(|m| Error::Failed(m.clone()))
    }

    /// Enter the fail-stop state (first failure wins).
    pub fn fail(&self, what: String) -> Error {
        tracing::error!(error = %what, "log store fail-stop");
        let _ = self.failed.set(what.into());
        self.failed_tx.send_replace(true);
        self.failure().expect("just set")
    }

    /// Resolves with the fail-stop error once the store has entered that
    /// state (at once if it already has).
    pub async fn wait_failed(&self) -> Error {
        let mut rx = self.failed_tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot see it closed.
        let _ = rx.wait_for(|&failed| failed).await;
        self.failure().expect("the watch flips only after the failure is recorded")
    }

    pub fn stats(&self, policy: FlushPolicy) -> FlushStats {
        let d = self.dirty();
        let c = &self.counters;
        FlushStats {
            policy,
            syncs: c.syncs.load(Ordering::Relaxed),
            sync_nanos_total: c.sync_nanos_total.load(Ordering::Relaxed),
            sync_nanos_max: c.sync_nanos_max.load(Ordering::Relaxed),
            sync_nanos_last: c.sync_nanos_last.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            entries_written: c.entries_written.load(Ordering::Relaxed),
            unsynced_entries: d.entries,
            unsynced_bytes: d.bytes,
            written_index: d.written,
            synced_index: self.synced_index(),
        }
    }

    /// What the policy's count measures of the unsynced backlog (messages
    /// under BATCH_FLUSH, entries otherwise), and since when it is waiting.
    fn unsynced(&self, policy: FlushPolicy) -> (u64, Option<Instant>) {
        let d = self.dirty();
        let count = if policy == FlushPolicy::BatchFlush { d.messages } else { d.entries };
        (count, d.since)
    }

    /// Sync everything written so far; blocking. Returns the fsynced index.
    pub fn sync_now(&self) -> Result<Option<u64>> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let (files, dir, upto, epoch) = {
            let mut d = self.dirty();
            d.entries = 0;
            d.messages = 0;
            d.bytes = 0;
            d.since = None;
            (std::mem::take(&mut d.files), std::mem::take(&mut d.dir), d.written, d.epoch)
        };
        if files.is_empty() && !dir {
            return Ok(self.synced_index());
        }
        let started = Instant::now();
        for file in &files {
            if let Err(e) = file.sync_data() {
                return Err(self.fail(format!("fdatasync {}: {e}", file.path().display())));
            }
        }
        if dir && let Err(e) = self.fs.sync_dir(&self.dir) {
            return Err(self.fail(format!("fsync directory {}: {e}", self.dir.display())));
        }
        let ended = Instant::now();
        let took = ended.duration_since(started);
        self.latency.record(took, ended);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let c = &self.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.sync_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        c.sync_nanos_max.fetch_max(nanos, Ordering::Relaxed);
        c.sync_nanos_last.store(nanos, Ordering::Relaxed);
        let d = self.dirty();
        if d.epoch == epoch {
            self.synced.send_if_modified(|s| {
                let changed = *s != upto && upto > *s;
                if changed {
                    *s = upto;
                }
                changed
            });
        }
        Ok(self.synced_index())
    }
}

enum Request {
    /// Entries up to `index` were written; `done` fires once durable.
    Written { index: u64, done: Option<Completion> },
    /// Sync now and answer with the fsynced index.
    Sync { reply: oneshot::Sender<Result<Option<u64>>> },
}

/// Cloneable handle to the flusher actor; the actor ends when the last
/// handle drops, after one final sync.
#[derive(Clone, Debug)]
pub struct FlusherHandle {
    tx: mpsc::Sender<Request>,
}

impl FlusherHandle {
    /// Start the flusher on its own OS thread. Its whole job is blocking
    /// syscalls, so it does not borrow a tokio worker per fsync: a task
    /// doing `spawn_blocking` pays two more cross-thread wake-ups on every
    /// sync, which `keel bench storage` measured as most of the engine's
    /// overhead over the raw disk.
    pub fn spawn(state: Arc<SyncState>, config: FlushConfig) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let flusher = Flusher { state, config, rx, waiting: Vec::new() };
        let thread = std::thread::Builder::new()
            .name("keel-flusher".into())
            .spawn(move || flusher.run())
            .map_err(|e| Error::io("start the flusher thread", e))?;
        Ok((Self { tx }, thread))
    }

    /// Entries up to `index` are in the page cache; `done` fires once a sync covers them.
    pub async fn written(&self, index: u64, done: Option<Completion>) -> Result<()> {
        self.tx.send(Request::Written { index, done }).await.map_err(|_| Error::Closed)
    }

    /// Sync everything written so far and return the fsynced index.
    pub async fn sync(&self) -> Result<Option<u64>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Sync { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// Wakes the flusher thread when a request arrives.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

enum Next {
    Request(Request),
    Deadline,
    Closed,
}

struct Flusher {
    state: Arc<SyncState>,
    config: FlushConfig,
    rx: mpsc::Receiver<Request>,
    waiting: Vec<(u64, Completion)>,
}

impl Flusher {
    /// Block this thread until a request arrives or `deadline` passes.
    fn next(&mut self, waker: &Waker, deadline: Option<Instant>) -> Next {
        let mut cx = Context::from_waker(waker);
        loop {
            match self.rx.poll_recv(&mut cx) {
                Poll::Ready(Some(r)) => return Next::Request(r),
                Poll::Ready(None) => return Next::Closed,
                Poll::Pending => {}
            }
            match deadline {
                None => std::thread::park(),
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                    _ => return Next::Deadline,
                },
            }
        }
    }

    fn run(mut self) {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let interval = Duration::from_millis(self.config.interval_ms);
        loop {
            let (unsynced, since) = self.state.unsynced(self.config.policy);
            let deadline =
                (self.config.policy != FlushPolicy::SyncFlush).then_some(since).flatten().map(|t| t + interval);
            let first = match self.next(&waker, deadline) {
                Next::Request(r) => r,
                Next::Deadline => {
                    self.sync(Vec::new());
                    continue;
                }
                Next::Closed => break,
            };
            // Merge everything already queued into this round (group commit).
            let mut replies = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Request::Written { index, done } => {
                        if let Some(done) = done {
                            self.waiting.push((index, done));
                        }
                    }
                    Request::Sync { reply } => replies.push(reply),
                }
                next = self.rx.try_recv().ok();
            }
            let (unsynced_now, _) = self.state.unsynced(self.config.policy);
            // SYNC_FLUSH syncs for anyone waiting; BATCH_FLUSH's waiters wait
            // for the batch's count or interval.
            let due = !replies.is_empty()
                || (self.config.policy == FlushPolicy::SyncFlush && !self.waiting.is_empty())
                || unsynced_now.max(unsynced) >= self.config.sync_every_entries();
            if due {
                self.sync(replies);
            }
        }
        // Last handle gone: leave nothing unsynced behind on a clean close.
        if self.state.failure().is_none() {
            let _ = self.state.sync_now();
        }
    }

    fn sync(&mut self, replies: Vec<oneshot::Sender<Result<Option<u64>>>>) {
        let result = self.state.sync_now();
        match &result {
            Ok(synced) => {
                let synced = *synced;
                let (ready, later): (Vec<_>, Vec<_>) =
                    self.waiting.drain(..).partition(|(i, _)| synced.is_some_and(|s| *i <= s));
                self.waiting = later;
                for (_, done) in ready {
                    done(Ok(()));
                }
            }
            Err(e) => {
                for (_, done) in self.waiting.drain(..) {
                    done(Err(e.clone()));
                }
            }
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}
