//! The store: a directory of segments plus the meta file; append, truncate,
//! purge, physical deletion and range install. Recovery on open is in
//! `recovery.rs`.
//!
//! # Durability order
//!
//! - append: encode → one `pwrite` per segment touched → entries readable →
//!   flusher `fdatasync`s (and `fsync`s the directory after a roll) → the
//!   fsynced index is published → SYNC_FLUSH callbacks fire.
//! - roll: the old segment is synced *before* the new one is renamed into
//!   place, so a segment followed by another is always complete on disk and a
//!   hole in it is corruption, never a torn write.
//! - truncate: sync → hide the cut entries from readers → remove later
//!   segments → fsync dir → zero the header ending the kept segment's stale
//!   tail, fdatasync → rename a prepared segment to the truncation index
//!   (write its header, fdatasync) → fsync dir. A crash at any step leaves
//!   the log as it was or as truncated. Payload bytes are never rewritten,
//!   so mapped payloads never change.
//! - open: recovery fdatasyncs the active segment and fsyncs the directory
//!   before publishing what it read as fsynced.
//! - vote / purge / install: the meta file is replaced atomically (temp,
//!   fdatasync, rename, fsync dir) before the call returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::flusher::{Completion, FlushStats, FlusherHandle, SyncState};
use crate::format::{self, Identity, LogPos, Meta, MetaVote, RECORD_HEADER_BYTES, Record, RecordMeta};
use crate::io::{FileSystem, RealFs};
use crate::preparer::PreparerHandle;
use crate::recovery::recover;
use crate::segment::Segment;

/// When an append's completion fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Once the records are in the page cache (ASYNC_FLUSH, and installs,
    /// which sync themselves).
    Written,
    /// Once an fsync covers them: at once under SYNC_FLUSH, with the batch
    /// (`flush.batch.size` messages or `flush.interval.ms`) under
    /// BATCH_FLUSH.
    Synced,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub meta: RecordMeta,
    pub payload: Vec<u8>,
}

/// One segment, as monitoring sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub file: PathBuf,
    pub first_index: u64,
    pub last_index: Option<u64>,
    /// Bytes of records (the file itself is `capacity_bytes`, preallocated).
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub sealed: bool,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) segments: BTreeMap<u64, Segment>,
    pub(crate) meta: Meta,
    /// When the committed log id was last written to the meta file.
    pub(crate) committed_saved_at: Option<Instant>,
    /// The committed id the meta file on disk holds (capped, see
    /// `committed_on_disk`).
    pub(crate) committed_written: Option<LogPos>,
}

impl State {
    fn active(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    fn active_mut(&mut self) -> Option<&mut Segment> {
        self.segments.values_mut().next_back()
    }

    /// Log id of the last entry present, purged or not.
    fn last_present(&self) -> Option<LogPos> {
        self.segments.values().rev().find_map(|s| {
            let (term, leader) = s.last_term?;
            Some(LogPos::new(term, leader, s.last_index()?))
        })
    }

    /// The index the next append must carry, if the log constrains it.
    fn next_index(&self) -> Option<u64> {
        let present = self.last_present().map(|p| p.index);
        let purged = self.meta.purged.map(|p| p.index);
        match (present, purged) {
            (Some(p), Some(u)) => Some(p.max(u) + 1),
            (Some(p), None) => Some(p + 1),
            (None, Some(u)) => Some(u + 1),
            (None, None) => None,
        }
    }

    fn segment_for(&self, index: u64) -> Option<&Segment> {
        self.segments.range(..=index).next_back().map(|(_, s)| s).filter(|s| s.contains(index))
    }
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    fs: Arc<dyn FileSystem>,
    state: Mutex<State>,
    /// Serializes the write paths (append, truncate, purge, install, delete),
    /// which may wait on the flusher or the preparer.
    writer: tokio::sync::Mutex<()>,
    sync: Arc<SyncState>,
    flusher: FlusherHandle,
    preparer: PreparerHandle,
    /// The actors' threads; each ends once its handle is dropped.
    threads: Vec<std::thread::JoinHandle<()>>,
    max_payload: usize,
    /// The highest index the cluster has fsynced on a majority, as the node
    /// last told us ([`Store::note_durable`]); 0 before it does.
    cluster_durable: std::sync::atomic::AtomicU64,
    /// Held for the store's lifetime: the exclusive flock on `LOCK`.
    lock: File,
    /// Meta writes run in blocking tasks that go on when their caller's
    /// future is dropped (openraft drops some), so the writer lock alone
    /// does not order them: each takes a number under it, and the blocking
    /// part runs under this lock, writing only if no later number has.
    meta_seq: std::sync::atomic::AtomicU64,
    meta_written: Arc<Mutex<u64>>,
}

/// keel's segmented log store. Cheap to clone; all clones share one store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create data directory {}", dir.display()), e))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Error::Locked { dir: dir.to_path_buf(), reason: "another keel process holds the lock".into() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Locked { dir: dir.to_path_buf(), reason: e.to_string() }),
    }
}

/// Remove a segment and its index files (missing ones are fine).
pub(crate) fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, first: u64) -> std::io::Result<()> {
    for name in [format::segment_file_name(first), format::index_file_name(first), format::time_index_file_name(first)]
    {
        fs.remove(&dir.join(name))?;
    }
    Ok(())
}

pub(crate) fn corruption(file: &Path, position: u64, index: Option<u64>, reason: impl Into<String>) -> Error {
    Error::Corruption { file: file.to_path_buf(), position, index, reason: reason.into() }
}

impl Store {
    /// Open (or create) the store in `config.dir` on the real filesystem.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        Self::open_with(config, Arc::new(RealFs)).await
    }

    /// Open on a given I/O layer (tests pass [`crate::fault::FaultFs`]).
    pub async fn open_with(config: StoreConfig, fs: Arc<dyn FileSystem>) -> Result<Self> {
        config.validate()?;
        let lock = lock_dir(&config.dir)?;
        let max_payload = config.max_payload_bytes();
        let (fs2, config2) = (fs.clone(), config.clone());
        let state = tokio::task::spawn_blocking(move || recover(&*fs2, &config2))
            .await
            .map_err(|e| Error::io("recovery task", std::io::Error::other(e.to_string())))??;
        let written = state.last_present().map(|p| p.index);
        // Under SYNC_FLUSH and BATCH_FLUSH the meta file only ever holds a
        // committed id the cluster had fsynced on a majority
        // (`committed_on_disk`; under ASYNC_FLUSH it may fall back to the
        // purge point, which the unsynced apply may have carried past the
        // durable index).
        let durable_on_disk = match config.flush.policy {
            crate::FlushPolicy::AsyncFlush => 0,
            _ => state.meta.committed.map_or(0, |c| c.index),
        };
        let sync = SyncState::new(fs.clone(), config.dir.clone(), written);
        let (flusher, flusher_thread) = FlusherHandle::spawn(sync.clone(), config.flush)?;
        let (preparer, preparer_thread) = PreparerHandle::spawn(
            fs.clone(),
            config.dir.clone(),
            config.segment_bytes,
            config.preallocate,
            config.preheat,
        )?;
        let inner = Inner {
            config,
            fs,
            state: Mutex::new(state),
            writer: tokio::sync::Mutex::new(()),
            sync,
            flusher,
            preparer,
            threads: vec![flusher_thread, preparer_thread],
            max_payload,
            cluster_durable: std::sync::atomic::AtomicU64::new(durable_on_disk),
            lock,
            meta_seq: std::sync::atomic::AtomicU64::new(0),
            meta_written: Arc::new(Mutex::new(0)),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Close cleanly: sync what was written, stop the flusher and the
    /// preparer and wait for them (a segment being zero-filled is finished
    /// and removed), then release the directory lock. With other clones
    /// still alive this only syncs; the store closes with the last clone.
    pub async fn close(self) -> Result<()> {
        let synced = self.sync().await.map(|_| ());
        let Some(inner) = Arc::into_inner(self.inner) else { return synced };
        let Inner { flusher, preparer, threads, lock, .. } = inner;
        drop((flusher, preparer));
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a log store thread panicked");
                }
            }
        })
        .await
        .map_err(|e| Error::io("join the log store threads", std::io::Error::other(e.to_string())))?;
        drop(lock);
        synced
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The I/O layer this store runs on, for files kept beside the log (the
    /// node's state checkpoints), so fault injection (EIO, power loss)
    /// reaches them as it reaches the segments.
    pub fn file_system(&self) -> Arc<dyn FileSystem> {
        self.inner.fs.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("store state lock poisoned")
    }

    fn check_failed(&self) -> Result<()> {
        match self.inner.sync.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The largest payload one entry may carry.
    pub fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload
    }

    /// (last purged, last entry present). Entries at or below the purged log
    /// id may still be on disk (purge is logical) until deleted physically.
    pub fn log_state(&self) -> (Option<LogPos>, Option<LogPos>) {
        let s = self.state();
        (s.meta.purged, s.last_present())
    }

    /// Lowest index still on disk, purged or not.
    pub fn first_present_index(&self) -> Option<u64> {
        let s = self.state();
        s.segments.values().find(|seg| seg.len() > 0).map(|seg| seg.first)
    }

    /// Append records, which must continue the log (index = last + 1). When
    /// this returns they are readable; `done` fires when they are flushed as
    /// the policy defines: after the covering fdatasync under SYNC_FLUSH (the
    /// flusher syncs at once, grouping whatever is queued) and BATCH_FLUSH
    /// (the batch's fsync), once written under ASYNC_FLUSH. Several appends
    /// may be in flight: each returns once written, and one fsync completes
    /// every append it covers. When this returns an error, that error is the
    /// answer and `done` may not fire. Records at or below the purge point
    /// are skipped (already gone for Raft). Each normal record counts as one
    /// message toward BATCH_FLUSH's batch; see [`Store::append_messages`].
    pub async fn append(&self, records: Vec<NewRecord>, done: Completion) -> Result<()> {
        let messages = records.iter().filter(|r| r.meta.kind == crate::format::RecordKind::Normal).count() as u64;
        self.append_messages(records, messages, done).await
    }

    /// [`Store::append`], where the records carry `messages` messages in
    /// all: BATCH_FLUSH's `flush.batch.size` counts messages, and one Raft
    /// entry may carry many.
    pub async fn append_messages(&self, records: Vec<NewRecord>, messages: u64, done: Completion) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        let when = match self.inner.config.flush.policy {
            crate::FlushPolicy::AsyncFlush => Done::Written,
            crate::FlushPolicy::SyncFlush | crate::FlushPolicy::BatchFlush => Done::Synced,
        };
        self.append_locked(records, messages, done, when).await
    }

    async fn append_locked(&self, records: Vec<NewRecord>, messages: u64, done: Completion, when: Done) -> Result<()> {
        if let Err(e) = self.check_failed() {
            done(Err(e.clone()));
            return Err(e);
        }
        let (expected, purged) = {
            let s = self.state();
            (s.next_index(), s.meta.purged.map(|p| p.index))
        };
        // Entries at or below the purge point are already gone for Raft
        // (openraft's own suite appends such entries): keep none of them.
        let mut records = records;
        if let Some(p) = purged {
            let below = records.iter().take_while(|r| r.meta.index <= p).count();
            records.drain(..below);
        }
        let Some(last_index) = records.last().map(|r| r.meta.index) else {
            done(Ok(()));
            return Ok(());
        };
        let max = self.inner.max_payload;
        for (k, r) in records.iter().enumerate() {
            if r.payload.len() > max {
                return Err(Error::EntryTooLarge {
                    index: r.meta.index,
                    bytes: r.payload.len(),
                    max,
                    segment_bytes: self.inner.config.segment_bytes,
                });
            }
            let want = expected.unwrap_or(records[0].meta.index) + k as u64;
            if r.meta.index != want {
                return Err(Error::Invalid(format!("append of log index {} where {want} is next", r.meta.index)));
            }
        }
        let total: usize = records.iter().map(|r| RECORD_HEADER_BYTES + r.payload.len()).sum();
        // If the batch needs a new segment, get its file before writing
        // anything, so running out of space leaves nothing half-appended
        // (a batch larger than a whole segment may still roll twice).
        let first = &records[0].meta;
        let fits_whole = {
            let s = self.state();
            s.active().is_some_and(|a| !a.sealed && a.next_index() == first.index && a.end + total as u64 <= a.capacity)
        };
        let mut reserved = if fits_whole { None } else { Some(self.inner.preparer.take().await?) };
        // Recovery's witness that earlier records were already durable.
        let synced_before = self.inner.sync.synced_index().map_or(0, |s| s + 1);
        let mut buf = Vec::with_capacity(total);
        let mut metas = Vec::with_capacity(records.len());
        for r in &records {
            let rec_len = (RECORD_HEADER_BYTES + r.payload.len()) as u64;
            let fits = {
                let s = self.state();
                // `metas` are encoded into `buf` but not yet in the segment.
                s.active()
                    .filter(|a| {
                        !a.sealed
                            && a.next_index() + metas.len() as u64 == r.meta.index
                            && a.end + buf.len() as u64 + rec_len <= a.capacity
                    })
                    .map(|a| a.salt)
            };
            let salt = match fits {
                Some(salt) => salt,
                None => {
                    self.write_batch(&mut buf, &mut metas)?;
                    self.roll(r.meta.index, reserved.take()).await?
                }
            };
            metas.push((r.meta, rec_len));
            format::encode_record(&mut buf, &r.meta, synced_before, salt, &r.payload);
        }
        self.write_batch(&mut buf, &mut metas)?;
        self.inner.sync.add_messages(messages);
        match when {
            Done::Synced => self.inner.flusher.written(last_index, Some(done)).await,
            Done::Written => {
                done(Ok(()));
                self.inner.flusher.written(last_index, None).await
            }
        }
    }

    /// Write the encoded records in `buf` into the active segment with one
    /// pwrite, then make them visible to readers.
    fn write_batch(&self, buf: &mut Vec<u8>, metas: &mut Vec<(RecordMeta, u64)>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (file, pos) = {
            let s = self.state();
            let a = s.active().expect("a batch is only encoded once an active segment exists");
            (a.file.clone(), a.end)
        };
        if let Err(e) = file.write_at(pos, buf) {
            // The space was preallocated: a failed write here means the
            // page cache or the device is in an unknown state.
            return Err(self.inner.sync.fail(format!("pwrite into {} at position {pos}: {e}", file.path().display())));
        }
        let mut s = self.state();
        let a = s.active_mut().expect("active segment present");
        let mut at = pos;
        for &(m, len) in metas.iter() {
            a.push(m.index, at, len, (m.term, m.leader), m.timestamp_ms);
            at += len;
        }
        let (last, n) = (metas.last().expect("non-empty batch").0.index, metas.len() as u64);
        drop(s);
        self.inner.sync.written(&file, last, n, buf.len() as u64);
        buf.clear();
        metas.clear();
        Ok(())
    }

    /// Seal the active segment and start a new one whose first index is
    /// `first`; returns the new segment's salt.
    async fn roll(&self, first: u64, prepared: Option<PathBuf>) -> Result<u32> {
        // The old segment must be complete on disk before a later one exists.
        self.inner.flusher.sync().await?;
        let prepared = match prepared {
            Some(path) => path,
            None => self.inner.preparer.take().await?,
        };
        let fs = &*self.inner.fs;
        let dir = &self.inner.config.dir;
        let path = dir.join(format::segment_file_name(first));
        let generation = self.state().meta.generation;
        let salt = format::new_salt();
        // Once the rename happened, memory and disk disagree until the
        // segment is in place: a failure from here on is fail-stop.
        let fail = |e: std::io::Error| self.inner.sync.fail(format!("roll to segment {}: {e}", path.display()));
        let file = (|| {
            fs.rename(&prepared, &path)?;
            let file = fs.open(&path)?;
            file.write_at(0, &format::encode_segment_header(first, generation, salt))?;
            Ok::<_, std::io::Error>(file)
        })()
        .map_err(fail)?;
        let segment = Segment::new_active(first, path.clone(), file.clone(), self.inner.config.segment_bytes, salt)
            .map_err(fail)?;
        self.inner.sync.file_dirty(&file);
        self.inner.sync.dir_dirty();
        let mut s = self.state();
        if let Some(old) = s.active_mut() {
            old.sealed = true;
            if let Err(e) = old.write_indexes(fs, dir) {
                tracing::warn!(error = %e, "could not write segment indexes; they are rebuilt on open");
            }
        }
        // A segment renamed over an existing name (truncation at a boundary).
        s.segments.insert(first, segment);
        // The sealed segment that just fell out of the cached window (synced:
        // the roll began with a sync) gives its pages back.
        if let Some(keep) = self.inner.config.cached_sealed
            && let Some(old) = s.segments.values().rev().nth(1 + keep)
        {
            self.inner.preparer.drop_cache(old.file.clone(), old.map.clone());
        }
        Ok(salt)
    }

    /// Remove entries from `from` on (inclusive), across segments.
    pub async fn truncate(&self, from: u64) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let Some(LogPos { index: last, .. }) = self.state().last_present() else { return Ok(()) };
        if from > last {
            return Ok(());
        }
        self.inner.flusher.sync().await?;
        let fs = &*self.inner.fs;
        let dir = self.inner.config.dir.clone();
        let prepared = self.inner.preparer.take().await?;
        // Readers stop seeing entries from `from` on before any byte changes.
        let (doomed, stale_tail, generation) = {
            let mut s = self.state();
            let doomed: Vec<u64> = s.segments.range(from..).map(|(&f, _)| f).collect();
            for first in &doomed {
                s.segments.remove(first);
            }
            // The segment that keeps the entries below `from` and still holds
            // records from `from` on: they stay on disk as a stale tail.
            let mut stale_tail = None;
            if let Some(prev) = s.active_mut() {
                if prev.contains(from) {
                    let pos = prev.positions.get((from - prev.first) as usize).expect("contains(from)") as u64;
                    stale_tail = Some((prev.file.clone(), pos));
                    let keep = usize::try_from(from - prev.first).expect("segment record count fits usize");
                    if let Err(e) = prev.keep_first(keep) {
                        return Err(self.inner.sync.fail(format!("truncate from {from}: {e}")));
                    }
                }
                prev.sealed = true;
            }
            (doomed, stale_tail, s.meta.generation)
        };
        let path = dir.join(format::segment_file_name(from));
        let salt = format::new_salt();
        // From here on files change: any failure is fail-stop, since memory
        // and disk no longer agree. First the mark: a crash before the
        // truncation is done leaves records (or a zero header) from `from`
        // on that recovery must cut, never take for damaged durable ones.
        let mut meta = self.state().meta;
        meta.truncated_from = Some(from);
        // (A failed meta write is fail-stop already.)
        self.write_meta(meta).await?;
        let file = (|| {
            // Later segments go first (durably): until then the kept
            // segment stays sealed and whole, so a crash shows the log as it
            // was before this truncation.
            for &first in doomed.iter().rev() {
                if first != from {
                    fs.remove(&dir.join(format::segment_file_name(first)))?;
                }
                fs.remove(&dir.join(format::index_file_name(first)))?;
                fs.remove(&dir.join(format::time_index_file_name(first)))?;
            }
            fs.sync_dir(&dir)?;
            // Then end the kept segment's stale tail at a zero header,
            // durably, before its successor is renamed into place: a crash
            // that leaves it last must not bring truncated records back.
            // Only header bytes change; payload slices handed out stay intact.
            if let Some((file, pos)) = &stale_tail {
                file.write_at(*pos, &[0u8; RECORD_HEADER_BYTES])?;
                file.sync_data()?;
            }
            fs.rename(&prepared, &path)?;
            let file = fs.open(&path)?;
            file.write_at(0, &format::encode_segment_header(from, generation, salt))?;
            file.sync_data()?;
            fs.sync_dir(&dir)?;
            Ok::<_, std::io::Error>(file)
        })()
        .map_err(|e| self.inner.sync.fail(format!("truncate from {from}: {e}")))?;
        let segment = Segment::new_active(from, path, file, self.inner.config.segment_bytes, salt)
            .map_err(|e| self.inner.sync.fail(format!("truncate from {from}: map the new segment: {e}")))?;
        let (last, mut meta) = {
            let mut s = self.state();
            if let Some(prev) = s.active()
                && let Err(e) = prev.write_indexes(fs, &dir)
            {
                tracing::warn!(error = %e, "could not write segment indexes; they are rebuilt on open");
            }
            s.segments.insert(from, segment);
            (s.last_present().map(|p| p.index), s.meta)
        };
        self.inner.sync.reset(last);
        meta.truncated_from = None;
        self.write_meta(meta).await?;
        Ok(())
    }

    /// Mark entries up to and including `upto` purged: Raft no longer sees
    /// them. Durable before returning. Bytes stay until [`Self::delete_below`].
    pub async fn purge(&self, upto: LogPos) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let mut meta = self.state().meta;
        if meta.purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        meta.purged = Some(upto);
        self.write_meta(meta).await
    }

    /// Move the purge point back down to `to`, durably: for a state machine
    /// whose last checkpoint is older than a purge openraft made before a
    /// crash. Refused unless every record after `to` up to the current purge
    /// point is still present (a logical purge leaves them in place).
    pub async fn unpurge(&self, to: Option<LogPos>) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let mut meta = self.state().meta;
        let Some(purged) = meta.purged else { return Ok(()) };
        let from = to.map_or(0, |p| p.index + 1);
        if from > purged.index {
            return Ok(());
        }
        let last = self.state().next_index().map(|n| n.saturating_sub(1));
        let present = self.first_present_index().is_some_and(|f| f <= from) && last.is_some_and(|l| l >= purged.index);
        if !present {
            return Err(Error::Invalid(format!(
                "cannot move the purge point back to {:?}: log entries from {from} are no longer present",
                to.map(|p| p.index)
            )));
        }
        meta.purged = to;
        self.write_meta(meta).await
    }

    /// Delete whole segments all of whose entries are below `index` and
    /// purged. Never the active segment. Returns how many were deleted.
    pub async fn delete_below(&self, index: u64) -> Result<usize> {
        let _writer = self.inner.writer.lock().await;
        let limit = {
            let s = self.state();
            match s.meta.purged {
                Some(p) => index.min(p.index + 1),
                None => return Ok(0),
            }
        };
        let doomed: Vec<u64> = {
            let s = self.state();
            let firsts: Vec<u64> = s.segments.keys().copied().collect();
            firsts.windows(2).filter(|w| w[1] <= limit).map(|w| w[0]).collect()
        };
        let fs = &*self.inner.fs;
        let dir = &self.inner.config.dir;
        for &first in &doomed {
            remove_segment_files(fs, dir, first).map_err(|e| Error::io(format!("delete segment {first}"), e))?;
            self.state().segments.remove(&first);
        }
        // No directory fsync: a segment that reappears after a crash lies
        // below the purge point and is deleted again.
        Ok(doomed.len())
    }

    /// Replace the whole log with `records` (contiguous), durably: for a
    /// follower installing a snapshot that carries the retained log. `prev`
    /// is the log id just before the first record (or of the snapshot's last
    /// entry when `records` is empty); it becomes the purge point.
    pub async fn install_range(&self, prev: LogPos, records: Vec<Record>) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        // Every check before anything changes: a refused range leaves the log as it was.
        let max = self.inner.max_payload;
        for (k, r) in records.iter().enumerate() {
            let want = prev.index + 1 + k as u64;
            if r.index != want {
                return Err(Error::Invalid(format!(
                    "install range: record {k} has index {} where {want} is expected",
                    r.index
                )));
            }
            if r.payload.len() > max {
                return Err(Error::EntryTooLarge {
                    index: r.index,
                    bytes: r.payload.len(),
                    max,
                    segment_bytes: self.inner.config.segment_bytes,
                });
            }
        }
        self.inner.flusher.sync().await?;
        // A new generation makes every existing segment stale, so a crash
        // in the middle never mixes old entries with the installed ones.
        let mut meta = self.state().meta;
        // openraft may purge up to the snapshot before the state machine
        // installs it; that purge point comes back once the range is written
        // (appends drop records at or below the purge point).
        let purged_later = meta.purged.filter(|p| p.index > prev.index);
        meta.generation += 1;
        meta.purged = Some(prev);
        self.write_meta(meta).await?;
        let fs = &*self.inner.fs;
        let dir = &self.inner.config.dir;
        let old: Vec<u64> = self.state().segments.keys().copied().collect();
        for first in old {
            // The meta file already names the new generation: fail-stop.
            remove_segment_files(fs, dir, first)
                .map_err(|e| self.inner.sync.fail(format!("install range: remove segment {first}: {e}")))?;
        }
        self.state().segments.clear();
        self.inner.sync.reset(Some(prev.index));
        if !records.is_empty() {
            let new: Vec<NewRecord> = records
                .into_iter()
                .map(|r| NewRecord {
                    meta: RecordMeta {
                        kind: r.kind,
                        term: r.term,
                        leader: r.leader,
                        index: r.index,
                        timestamp_ms: r.timestamp_ms,
                    },
                    payload: r.payload.to_vec(),
                })
                .collect();
            // Durability comes from the sync below, whatever the policy.
            self.append_locked(new, 0, Box::new(|_| ()), Done::Written).await?;
        }
        self.inner.flusher.sync().await?;
        if purged_later.is_some() {
            let mut meta = self.state().meta;
            meta.purged = purged_later;
            self.write_meta(meta).await?;
        }
        Ok(())
    }

    async fn write_meta(&self, meta: Meta) -> Result<()> {
        let (fs, dir) = (self.inner.fs.clone(), self.inner.config.dir.clone());
        let on_disk = Meta { committed: self.committed_on_disk(meta.committed), ..meta };
        let bytes = on_disk.encode();
        let seq = self.inner.meta_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        let written = self.inner.meta_written.clone();
        tokio::task::spawn_blocking(move || {
            let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
            if *last > seq {
                return Ok(()); // a newer meta is on disk already
            }
            crate::io::write_file_durably(&*fs, &dir, "meta", &bytes)?;
            *last = seq;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| Error::io("write meta", std::io::Error::other(e.to_string())))?
        .map_err(|e| self.inner.sync.fail(format!("write meta file: {e}")))?;
        let mut s = self.state();
        s.meta = meta;
        s.committed_written = on_disk.committed;
        if meta.committed.is_some() {
            s.committed_saved_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Write the committed id to the meta file if the file holds an older
    /// one: [`Store::save_committed`] writes at most once a second, so the
    /// last commits of a burst would otherwise stay in memory until the next
    /// commit, and a write capped by a durable index that has risen since
    /// would stay capped. A node calls this about once a second, so the id
    /// on disk lags by about a second at most: what a restart re-applies
    /// before the cluster tells it more.
    pub async fn flush_committed(&self) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let (meta, written) = {
            let s = self.state();
            (s.meta, s.committed_written)
        };
        let want = self.committed_on_disk(meta.committed);
        if want.map(|c| c.index) <= written.map(|c| c.index) {
            return Ok(());
        }
        self.write_meta(meta).await
    }

    /// Persist the vote; returns only once it is durable.
    pub async fn save_vote(&self, vote: MetaVote) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let mut meta = self.state().meta;
        meta.vote = Some(vote);
        self.write_meta(meta).await
    }

    pub fn read_vote(&self) -> Option<MetaVote> {
        self.state().meta.vote
    }

    /// The node and cluster this directory belongs to, as the meta file says.
    pub fn identity(&self) -> Identity {
        self.state().meta.identity
    }

    /// Record which node and cluster this directory belongs to; returns
    /// once durable.
    pub async fn set_identity(&self, identity: Identity) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        self.check_failed()?;
        let mut meta = self.state().meta;
        if meta.identity == identity {
            return Ok(());
        }
        meta.identity = identity;
        self.write_meta(meta).await
    }

    /// Remember the committed log id. Written to disk at most once a second
    /// (and with every vote or purge): openraft treats it as an optimisation.
    pub async fn save_committed(&self, committed: Option<LogPos>) -> Result<()> {
        // Under the writer lock, so a vote or purge being written cannot
        // put back an older committed id after this one.
        let _writer = self.inner.writer.lock().await;
        let due = {
            let mut s = self.state();
            s.meta.committed = committed;
            s.committed_saved_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        };
        if due {
            self.check_failed()?;
            let meta = self.state().meta;
            self.write_meta(meta).await?;
        }
        Ok(())
    }

    /// The cluster's durable index (fsynced on a majority), as the node
    /// learns it. Under BATCH_FLUSH and ASYNC_FLUSH an entry is committed
    /// once a majority has *written* it, so the committed id may run ahead
    /// of what any power cut spares; only the part at or below this index is
    /// written to the meta file (see `committed_on_disk`).
    pub fn note_durable(&self, index: u64) {
        self.inner.cluster_durable.fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    /// What of `committed` may be written to disk: only up to the cluster's
    /// durable index, never below the purge point. After a power cut a node
    /// must not take entries for committed that a new leader, elected
    /// without them, will replace (found by keel-chaos power-loss under
    /// BATCH_FLUSH: the replicas' committed logs diverged). Under SYNC_FLUSH
    /// and BATCH_FLUSH the node's durable index is its commit index, so the
    /// cap only bites under ASYNC_FLUSH.
    ///
    /// Nor past this node's own fsynced index: recovery treats any damage
    /// at or below the committed id on disk as corruption to repair, never
    /// as a torn tail, which holds only if this node had fsynced it (a
    /// follower may learn a durable index before its own sync covers it).
    fn committed_on_disk(&self, committed: Option<LogPos>) -> Option<LogPos> {
        let c = committed?;
        let cluster = self.inner.cluster_durable.load(std::sync::atomic::Ordering::Acquire);
        let durable = match self.inner.sync.synced_index() {
            Some(own) => cluster.min(own),
            None => 0,
        };
        if c.index <= durable {
            return Some(c);
        }
        let purged = self.state().meta.purged;
        let at = if durable > 0 { self.log_pos_at(durable).ok().flatten() } else { None };
        match (at, purged) {
            (Some(a), Some(p)) if p.index > a.index => Some(p),
            (Some(a), _) => Some(a),
            (None, p) => p,
        }
    }

    /// The committed log id, never past the last entry this log holds.
    ///
    /// The meta file can name a committed id whose entries this node had
    /// written but not yet fsynced when the power went (under BATCH_FLUSH and
    /// ASYNC_FLUSH a follower acknowledges before its fsync, and the id is
    /// saved apart from the log). Those entries are a suffix of the same
    /// committed log, so the entries that survived are committed too, and the
    /// node learns the rest from the leader. Found by the chaos harness: a
    /// node restarted after a power loss refused to start, because openraft
    /// could not re-apply committed entries that were gone.
    pub fn read_committed(&self) -> Option<LogPos> {
        let s = self.state();
        let committed = s.meta.committed?;
        let held = match (s.last_present(), s.meta.purged) {
            (Some(a), Some(b)) => Some(if a.index >= b.index { a } else { b }),
            (a, b) => a.or(b),
        };
        match held {
            Some(last) if last.index < committed.index => Some(last),
            None => None,
            _ => Some(committed),
        }
    }

    /// The log id of the record at `index`, if one is present there
    /// (purged or not).
    pub fn log_pos_at(&self, index: u64) -> Result<Option<LogPos>> {
        let records = self.read_range(index, index.saturating_add(1), 0)?;
        Ok(records.first().filter(|r| r.index == index).map(|r| LogPos::new(r.term, r.leader, r.index)))
    }

    /// Records `start..end` that are present (purged or not), at least one
    /// if any is present at `start`, and at most about `max_bytes` of payload.
    pub fn read_range(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = start;
        while index < end {
            let segment_end;
            {
                let s = self.state();
                // Skip to the next segment over a gap (before the first
                // segment, or below a purge point that jumped ahead).
                let seg = match s.segment_for(index) {
                    Some(seg) => seg,
                    None => match s.segments.range(index..).map(|(_, seg)| seg).find(|seg| seg.len() > 0) {
                        Some(seg) if seg.first < end => {
                            index = seg.first;
                            seg
                        }
                        _ => break,
                    },
                };
                segment_end = seg.next_index().min(end);
                // Read under the lock only from the map (a slice, no copy) or
                // a small read_at; records are immutable once written.
                while index < segment_end {
                    let r = seg.read(index)?;
                    bytes += r.payload.len();
                    out.push(r);
                    index += 1;
                    if bytes >= max_bytes {
                        return Ok(out);
                    }
                }
            }
            debug_assert_eq!(index, segment_end);
        }
        Ok(out)
    }

    /// The first present index whose record has `timestamp_ms >= ts`.
    pub fn index_for_timestamp(&self, ts: u64) -> Result<Option<u64>> {
        let s = self.state();
        for seg in s.segments.values() {
            if let Some(i) = seg.index_for_timestamp(ts)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Sync everything written so far; returns the fsynced index.
    pub async fn sync(&self) -> Result<Option<u64>> {
        self.inner.flusher.sync().await
    }

    /// The fsynced index: every entry at or below it is durable on this node.
    pub fn synced_index(&self) -> Option<u64> {
        self.inner.sync.synced_index()
    }

    /// Watch the fsynced index (BATCH_FLUSH acks wait on it).
    pub fn subscribe_synced(&self) -> watch::Receiver<Option<u64>> {
        self.inner.sync.subscribe()
    }

    /// Wait until `index` is fsynced, for at most `flush.commitlog.timeout`.
    /// `Ok(false)` on timeout: the outcome is unknown, not failed.
    pub async fn wait_synced(&self, index: u64) -> Result<bool> {
        let mut rx = self.subscribe_synced();
        let wait = rx.wait_for(|s| s.is_some_and(|s| s >= index));
        match tokio::time::timeout(self.inner.config.flush.commitlog_timeout(), wait).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(self.inner.sync.failure().unwrap_or(Error::Closed)),
            Err(_) => match self.inner.sync.failure() {
                Some(e) => Err(e),
                None => Ok(false),
            },
        }
    }

    pub fn flush_stats(&self) -> FlushStats {
        self.inner.sync.stats(self.inner.config.flush.policy)
    }

    /// fsync latency since start and over the last minute.
    pub fn sync_latency(&self) -> crate::SyncLatency {
        self.inner.sync.latency.report(Instant::now())
    }

    /// fsync latency of the syncs since the previous call (for one periodic
    /// reader: the node's flush-history sampler).
    pub fn take_sync_latency_interval(&self) -> crate::LatencySummary {
        self.inner.sync.latency.take_interval()
    }

    /// Resolves with the fail-stop error once the store enters that state
    /// (at once if it has): a node waits on it to stop instead of living on
    /// with a log it can no longer write.
    pub async fn wait_failed(&self) -> Error {
        self.inner.sync.wait_failed().await
    }

    /// The fail-stop error, if the store has entered that state.
    pub fn failure(&self) -> Option<Error> {
        self.inner.sync.failure()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let s = self.state();
        s.segments
            .values()
            .map(|seg| SegmentInfo {
                file: seg.path.clone(),
                first_index: seg.first,
                last_index: seg.last_index(),
                used_bytes: seg.end,
                capacity_bytes: seg.capacity,
                sealed: seg.sealed,
            })
            .collect()
    }
}

/// The meta file of the store in `dir`, read without opening the store (a
/// node checks whose directory it is before it touches anything else
/// there). `None`: no meta file, a directory never used.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join("meta");
    match std::fs::read(&path) {
        Ok(bytes) => Meta::decode(&bytes).map(Some).map_err(|reason| corruption(&path, 0, None, reason)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}
