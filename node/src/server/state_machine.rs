//! openraft's state machine over [`State`], and snapshots that carry the
//! retained log range.
//!
//! # Snapshots
//! A snapshot at log index S is a *checkpoint* (the [`State`] but for its
//! index files, how far each partition's files are durable, the last
//! applied log id and membership, and the log start X: the first log index
//! still retained) plus, when sent to a follower, every partition's
//! consume-queue entries and the log records X..=S. A follower that
//! installs one writes those records into its own log
//! (`Store::install_range`), writes the entries into fresh index files
//! (rebuilding the key and time indexes from them and the records), and
//! then adopts the state, so it serves every message the leader retains.
//!
//! # Checkpoints
//! Every few seconds (the retention actor's round) and at every snapshot
//! the index files are flushed and a checkpoint is written, so a restart
//! applies only the log after it: restart time is bounded by the interval,
//! not by what is retained. The files are trusted up to the checkpoint
//! only; a crash leaves their tails behind or torn, and the replay writes
//! them again.
//!
//! Files, under `<store.path.commitlog>/sm/`:
//!
//! ```text
//! checkpoint-<S, 20 digits>   the newest checkpoint (older ones are deleted):
//!     bytes 0..4   magic "KCKP"                          CHECKPOINT_MAGIC
//!     byte  4      version (1)                           CP_VERSION_AT
//!     bytes 5..9   crc32c of the body (u32 LE)           CP_CRC
//!     bytes 9..    body: bincode of `CheckpointBody`     CP_BODY_AT
//!                  version 2: the state without its index files
//!                  (`StoredState`); version 1 (read, never written)
//!                  held the whole state, consume queues included
//!     written through the log's I/O layer (`io::write_file_durably`:
//!     <name>.tmp, fdatasync, rename, fsync directory), so the fault layers
//!     (EIO, power loss) reach it as they reach the segments
//! transfer-<random>           a snapshot being sent (deleted once opened)
//! incoming-<random>           a snapshot being received (unlinked at once)
//! install-<S, 20 digits>      a received snapshot, written durably before
//!                             its install changes the log; removed once the
//!                             checkpoint is written; found at start-up, the
//!                             install is finished then (it is repeatable)
//!     bytes 0..4   magic "KSNT"                          TRANSFER_MAGIC
//!     byte  4      version (3)                           TR_VERSION_AT
//!     bytes 5..13  checkpoint length L (u64 LE)          TR_CP_LEN
//!     bytes 13..   the checkpoint file (L bytes)         TR_CP_AT
//!     then (version 3) every partition's consume queue, in the
//!         checkpoint's order: first offset (u64 LE), entry count N
//!         (u64 LE), N entries of 28 bytes (the consume queue's layout);
//!         version 2 (read, never written) had none: its version-1
//!         checkpoint carried the queues
//!     then records until 4 bytes before the end, each in the log's own
//!         record format (raft-log `format::encode_record`: header with its
//!         crc32c seeded by TRANSFER_SALT, then the payload), read back by
//!         `format::check_record`: one record codec for segments and
//!         snapshots (version 1 had a third, hand-written one)
//!     last 4 bytes: crc32c of everything before them     TR_TRAILER_BYTES
//! ```
//!
//! Crash safety: openraft purges a follower's log up to a received snapshot
//! before the state machine installs it. If the node stops in between, the
//! purge point lies past the newest checkpoint; `open` moves it back (the
//! entries are still on disk: purging is logical) or, once the install had
//! begun, finishes the install from `install-<S>`.
//!
//! Openraft builds snapshots only when retention asks (`SnapshotPolicy::Never`);
//! the checkpoints between them are written by `StateMachine::checkpoint`.
//!
//! Index files live under `sm/index/<topic>-<incarnation>/<partition>/`
//! (see [`super::index`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::Context as _;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use keel_raft_log::format::{self, RecordMeta};
use keel_raft_log::{FileSystem, LogPos, Record, Store};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec;
use super::entry;
use super::index;
use super::state::{Applied, CQ_ENTRY_BYTES, CqEntry, IndexRoot, State, StoredState, v1};
use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

type Membership = StoredMembership;

/// The node's openraft instance: keel's types over this state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

// The files' layouts, as the module doc draws them.
const CHECKPOINT_MAGIC: &[u8; 4] = b"KCKP";
const CP_VERSION_AT: usize = 4;
const CP_CRC: std::ops::Range<usize> = 5..9;
const CP_BODY_AT: usize = 9;
const TRANSFER_MAGIC: &[u8; 4] = b"KSNT";
const TR_VERSION_AT: usize = 4;
const TR_CP_LEN: std::ops::Range<usize> = 5..13;
const TR_CP_AT: usize = 13;
const TR_TRAILER_BYTES: usize = 4;
/// Seeds each transfer record's crc32c (segments use a random salt each;
/// a transfer file is one stream and needs no more than a fixed one).
const TRANSFER_SALT: u32 = u32::from_le_bytes(*b"KSNT");
const _: () = assert!(CP_CRC.end == CP_BODY_AT && TR_CP_LEN.end == TR_CP_AT);

/// Why a checkpoint or snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("not a keel {file} (bad magic)")]
    BadMagic { file: &'static str },
    #[error("{file} version {version} is not supported (this build reads version {supported})")]
    Version { file: &'static str, version: u8, supported: u8 },
    #[error("{file} checksum mismatch")]
    Checksum { file: &'static str },
    #[error("snapshot cut short: {0}")]
    CutShort(String),
    #[error("the record at byte {at} of the snapshot: {defect}")]
    Record { at: usize, defect: keel_raft_log::format::RecordDefect },
    #[error("checkpoint does not decode: {0}")]
    Decode(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Log {
        what: String,
        #[source]
        source: keel_raft_log::Error,
    },
    #[error("{0}")]
    MissingEntry(String),
    #[error("index files: {0}")]
    Index(#[from] super::index::IndexError),
    #[error(
        "checkpoints stopped after an I/O error ({0}): restart the node (it replays the log from the last good one)"
    )]
    Stopped(String),
}

impl SnapshotFileError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| SnapshotFileError::Io { what, source }
    }

    fn log(what: impl Into<String>) -> impl FnOnce(keel_raft_log::Error) -> Self {
        let what = what.into();
        move |source| SnapshotFileError::Log { what, source }
    }
}

/// A received snapshot kept until its install is complete.
const INSTALL_PREFIX: &str = "install-";
const CHECKPOINT_VERSION: u8 = 2;
/// Version-1 checkpoints carried the whole state (`state::v1`).
const CHECKPOINT_VERSION_WHOLE: u8 = 1;
const TRANSFER_VERSION: u8 = 3;
/// Version-2 transfer files carry a version-1 checkpoint and no queues.
const TRANSFER_VERSION_WHOLE: u8 = 2;
/// Suffixes of a file whose durable write a crash cut short: `.tmp` (the
/// log's I/O layer) and `.partial` (builds before it).
const UNFINISHED: [&str; 2] = [".tmp", ".partial"];

fn unfinished(name: &str) -> bool {
    UNFINISHED.iter().any(|suffix| name.ends_with(suffix))
}
/// Records read from the log per step while writing a transfer file.
const TRANSFER_READ_BATCH: u64 = 1024;

/// The state and where it stands in the log, under one lock so a snapshot
/// sees a consistent pair.
#[derive(Debug)]
pub struct Machine {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

impl Machine {
    fn new(state: State) -> Self {
        Self { state, last_applied: None, membership: Membership::default() }
    }
}

/// A checkpoint file's body: `S` is [`StoredState`] (version 2) or
/// [`v1::State`] (version 1).
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointBody<S> {
    machine: MachineBody<S>,
    /// First log index whose record the snapshot carries (X).
    log_start: u64,
    /// Log id of the record before `log_start`.
    prev: (u64, u64, u64),
    /// Kept for the format (openraft 0.9 named snapshots); not read.
    snapshot_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct MachineBody<S> {
    state: S,
    last_applied: Option<LogId>,
    membership: Membership,
}

/// A checkpoint as read, of either version.
#[derive(Debug)]
struct Checkpoint {
    image: Image,
    last_applied: Option<LogId>,
    membership: Membership,
    log_start: u64,
    prev: (u64, u64, u64),
}

#[derive(Debug)]
enum Image {
    /// Version 2: the index files hold the queues.
    Files(StoredState),
    /// Version 1: the queues are in the checkpoint.
    Whole(v1::State),
}

impl<S> CheckpointBody<S> {
    fn read(self, image: impl FnOnce(S) -> Image) -> Checkpoint {
        let m = self.machine;
        Checkpoint {
            image: image(m.state),
            last_applied: m.last_applied,
            membership: m.membership,
            log_start: self.log_start,
            prev: self.prev,
        }
    }
}

/// One partition's consume-queue entries as a transfer file carries them.
#[derive(Debug)]
struct ShippedQueue {
    start: u64,
    entries: Bytes,
}

/// What readers (the client service, retention) share with the state machine.
pub struct Shared {
    pub machine: RwLock<Machine>,
    /// Last applied log index (0 before the first).
    pub applied: watch::Sender<u64>,
    /// Retention sets the first log index the next snapshot must keep.
    pub retain_from: AtomicU64,
    /// The newest checkpoint's log start and last index; retention deletes
    /// segments only below a log start a checkpoint already covers.
    pub snapshot_range: Mutex<Option<(u64, u64)>>,
    /// The log id before the newest checkpoint's log start: a checkpoint
    /// that keeps that start needs it, and the entry may be deleted.
    checkpoint_prev: Mutex<Option<LogPos>>,
    /// Held while a transfer file is written and while retention deletes
    /// segments, so a snapshot being sent never loses its records.
    pub transfer_lock: tokio::sync::Mutex<()>,
    /// openraft builds snapshots in a task of their own, beside the worker
    /// that installs received ones: one at a time, so a build that read the
    /// state before an install never writes its older checkpoint after it.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Raft has started ([`StateMachine::raft_started`]). Before, openraft
    /// asks for the current snapshot only for its meta (twice, while it
    /// builds its initial state): it gets the checkpoint file, not a
    /// transfer file, whose log range would cost a copy of the whole
    /// retained log at every start.
    raft_started: std::sync::atomic::AtomicBool,
    /// Why checkpoints stopped ([`StateMachine::checkpoint`]), once one failed.
    checkpoints_stopped: OnceLock<String>,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Machine> {
        self.machine.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Machine> {
        self.machine.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    store: Store,
    /// The store's I/O layer: checkpoints and index files go through it too.
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    root: IndexRoot,
}

/// The index files' directory under `sm/`.
const INDEX_DIR: &str = "index";

/// The bytes of a checkpoint of `m` (its index files flushed first), and
/// what the files no longer need once it is durable.
fn checkpoint_bytes(
    m: &mut Machine,
    log_start: u64,
    prev: LogPos,
) -> Result<(Vec<u8>, super::state::Retired), SnapshotFileError> {
    let (state, retired) = m.state.stored()?;
    let last = m.last_applied.map_or(0, |l| l.index);
    let body = CheckpointBody {
        machine: MachineBody { state, last_applied: m.last_applied, membership: m.membership.clone() },
        log_start,
        prev: (prev.term, prev.leader, prev.index),
        snapshot_id: format!("{last}-{log_start}-{}", super::types::now_ms()),
    };
    Ok((encode_checkpoint_bytes(&codec::encode(&body)), retired))
}

/// Reads the keys of records by (log index, slot), one decoded entry at a
/// time: rebuilding a key index from shipped queue entries.
struct KeyReader<'a> {
    store: &'a Store,
    cached: Option<(u64, Vec<Option<u64>>)>,
}

impl KeyReader<'_> {
    fn key_hash(&mut self, log_index: u64, slot: u32) -> Result<Option<u64>, SnapshotFileError> {
        if self.cached.as_ref().is_none_or(|(i, _)| *i != log_index) {
            let missing = || SnapshotFileError::MissingEntry(format!("log entry {log_index} a queue entry names"));
            let r = self
                .store
                .read_range(log_index, log_index + 1, 0)
                .map_err(SnapshotFileError::log(format!("read log entry {log_index}")))?
                .into_iter()
                .next()
                .filter(|r| r.index == log_index)
                .ok_or_else(missing)?;
            let keys = match entry::decode(r.payload) {
                Ok(entry::Decoded::Produce(batches)) => batches
                    .iter()
                    .flat_map(|b| b.records.iter())
                    .map(|r| (!r.key.is_empty()).then(|| super::state::key_hash(&r.key)))
                    .collect(),
                _ => return Err(missing()),
            };
            self.cached = Some((log_index, keys));
        }
        let keys = &self.cached.as_ref().expect("just filled").1;
        keys.get(slot as usize).copied().ok_or_else(|| {
            SnapshotFileError::MissingEntry(format!("slot {slot} of log entry {log_index} (it has {})", keys.len()))
        })
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("state machine: {e}"))
}

fn snap_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("snapshot: {e}"))
}

fn checkpoint_name(last: u64) -> String {
    format!("checkpoint-{last:020}")
}

impl StateMachine {
    /// A fresh file to receive a snapshot into (the peer service writes a
    /// leader's snapshot there, then hands it to openraft to install).
    pub async fn begin_receiving_snapshot(&self) -> std::io::Result<tokio::fs::File> {
        let path = self.dir.join(format!("incoming-{:016x}", rand::random::<u64>()));
        let f = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await?;
        // The open handle keeps the data; the name would only be a leftover after a crash.
        std::fs::remove_file(&path)?;
        Ok(f)
    }

    /// Open the state machine under `<store dir>/sm`, loading the newest
    /// checkpoint if there is one (openraft then re-applies the committed
    /// entries after it).
    pub async fn open(store: Store) -> anyhow::Result<(Self, Arc<Shared>)> {
        let dir = store.config().dir.join("sm");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
        let fs = store.file_system();
        let root = IndexRoot::new(fs.clone(), dir.join(INDEX_DIR), index::ENTRIES_PER_FILE);
        let mut pending_install = None;
        for name in fs.list(&dir).map_err(|e| anyhow::anyhow!("list {}: {e}", dir.display()))? {
            let keep = name == INDEX_DIR
                || !unfinished(&name) && (name.starts_with("checkpoint-") || name.starts_with(INSTALL_PREFIX));
            if !keep {
                // Leftovers of a transfer or a write cut short by a crash.
                let _ = fs.remove(&dir.join(&name));
            } else if name.starts_with(INSTALL_PREFIX) {
                pending_install = Some(dir.join(name));
            }
        }
        let sm = Self {
            shared: Arc::new(Shared {
                machine: RwLock::new(Machine::new(State::new(root.clone()))),
                applied: watch::channel(0).0,
                retain_from: AtomicU64::new(1),
                snapshot_range: Mutex::new(None),
                checkpoint_prev: Mutex::new(None),
                transfer_lock: tokio::sync::Mutex::new(()),
                snapshot_lock: tokio::sync::Mutex::new(()),
                raft_started: std::sync::atomic::AtomicBool::new(false),
                checkpoints_stopped: OnceLock::new(),
            }),
            store,
            fs,
            dir,
            root,
        };
        // A snapshot install a crash interrupted: finish it (repeatable).
        if let Some(path) = pending_install {
            let mut f = std::fs::File::open(&path)?;
            let (cp, queues, records, _) =
                read_transfer(&mut f).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), "finishing a snapshot install cut short by a crash");
            sm.install_checkpoint(cp, queues, records).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            sm.fs.remove(&path)?;
        }
        let newest = sm.newest_checkpoint().map_err(|e| anyhow::anyhow!(e))?;
        let cp = match newest {
            Some(path) => {
                let bytes =
                    keel_raft_log::io::read_file(&*sm.fs, &path).with_context(|| format!("read {}", path.display()))?;
                Some(decode_checkpoint(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
            }
            None => None,
        };
        let opened = std::time::Instant::now();
        let machine = match cp {
            Some(cp) => {
                let last = cp.last_applied.map_or(0, |l| l.index);
                *sm.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((cp.log_start, last));
                *sm.shared.checkpoint_prev.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(LogPos::new(cp.prev.0, cp.prev.1, cp.prev.2));
                sm.shared.retain_from.store(cp.log_start, Ordering::Release);
                sm.shared.applied.send_replace(last);
                let upgraded = matches!(cp.image, Image::Whole(_));
                let state = match cp.image {
                    Image::Files(stored) => State::restore(stored, sm.root.clone()),
                    Image::Whole(whole) => {
                        tracing::info!("writing a version-1 checkpoint's consume queues into index files");
                        whole.into_current(sm.root.clone())
                    }
                }
                .map_err(|e| {
                    anyhow::anyhow!(
                        "open the index files under {}: {e}; if they are damaged, remove this node's data directory \
                         and restart it: it catches up from the other nodes",
                        sm.root.dir().display()
                    )
                })?;
                let mut machine = Machine { state, last_applied: cp.last_applied, membership: cp.membership };
                if upgraded {
                    // Checkpoint the converted state at once: a transfer
                    // ships queues only beside a checkpoint of this version.
                    let prev = LogPos::new(cp.prev.0, cp.prev.1, cp.prev.2);
                    let (bytes, retired) = checkpoint_bytes(&mut machine, cp.log_start, prev)?;
                    sm.write_checkpoint(&bytes, last)?;
                    machine.state.checkpointed(retired)?;
                }
                machine
            }
            // Nothing checkpointed: the log replays every topic's creation,
            // so index files a crash left are stale.
            None => Machine::new(
                State::restore(StoredState::default(), sm.root.clone())
                    .map_err(|e| anyhow::anyhow!("clear the index files under {}: {e}", sm.root.dir().display()))?,
            ),
        };
        tracing::info!(took_ms = opened.elapsed().as_millis() as u64, "state machine opened from its checkpoint");
        *sm.shared.write() = machine;
        // openraft purges up to a received snapshot before the state machine
        // has installed it; a crash in between leaves the purge point past
        // the checkpoint, and the entries between must be re-applied.
        let applied = sm.shared.read().last_applied;
        let purged = sm.store.log_state().0;
        if purged.is_some_and(|p| applied.is_none_or(|a| p.index > a.index)) {
            let to = applied.map(|a| LogPos::new(a.leader_id.term, a.leader_id.node_id, a.index));
            sm.store.unpurge(to).await.map_err(|e| {
                anyhow::anyhow!(
                    "the log is purged up to {:?} but the state checkpoint only reaches {:?}, and the entries \
                     between are gone ({e}); remove this node's data directory and restart it: it catches up \
                     from the other nodes",
                    purged.map(|p| p.index),
                    applied.map(|a| a.index)
                )
            })?;
            tracing::info!(from = ?purged.map(|p| p.index), to = ?applied.map(|a| a.index), "purge point moved back to the checkpoint");
        }
        let shared = sm.shared.clone();
        Ok((sm, shared))
    }

    /// Put a received snapshot in place: its log range (unless the log
    /// already holds its last entry), then its queues in fresh index files,
    /// then a checkpoint of it, then the state.
    async fn install_checkpoint(
        &self,
        cp: Checkpoint,
        queues: Vec<ShippedQueue>,
        records: Vec<Record>,
    ) -> Result<(), SnapshotFileError> {
        let last = cp.last_applied.map_or(0, |l| l.index);
        // Keep the local log if it already holds the snapshot's last entry
        // (then it holds every retained entry before it); otherwise replace
        // it with the carried range.
        let have_last = match cp.last_applied {
            Some(l) => self
                .store
                .read_range(l.index, l.index + 1, 0)
                .ok()
                .and_then(|r| r.first().map(|r| r.term == l.leader_id.term && r.leader == l.leader_id.node_id))
                .unwrap_or(false),
            None => true,
        };
        if !have_last {
            let prev = LogPos::new(cp.prev.0, cp.prev.1, cp.prev.2);
            tracing::info!(records = records.len(), from = cp.log_start, last, "installing the snapshot's log range");
            self.store
                .install_range(prev, records)
                .await
                .map_err(SnapshotFileError::log("install the snapshot's log range"))?;
        }
        let state = match cp.image {
            Image::Whole(whole) => whole.into_current(self.root.clone())?,
            Image::Files(stored) => {
                let mut queues = queues.into_iter();
                let mut keys = KeyReader { store: &self.store, cached: None };
                State::install(stored, self.root.clone(), |root, topic, incarnation, i| {
                    let q = queues.next().ok_or_else(|| {
                        SnapshotFileError::CutShort(format!("no consume queue for {topic}/{i} in the snapshot"))
                    })?;
                    let mut p = root.create(topic, incarnation, i, q.start)?;
                    for raw in q.entries.chunks_exact(CQ_ENTRY_BYTES) {
                        let e = CqEntry::decode(0, raw);
                        let key = keys.key_hash(e.log_index, e.slot)?;
                        p.cq.append(e.log_index, e.slot, e.size, e.timestamp_ms, e.tag_hash, key)?;
                        p.bytes += u64::from(e.size);
                    }
                    Ok::<_, SnapshotFileError>(p)
                })?
            }
        };
        let mut machine = Machine { state, last_applied: cp.last_applied, membership: cp.membership };
        let prev = LogPos::new(cp.prev.0, cp.prev.1, cp.prev.2);
        let (bytes, retired) = checkpoint_bytes(&mut machine, cp.log_start, prev)?;
        self.write_checkpoint(&bytes, last)?;
        machine.state.checkpointed(retired)?;
        *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((cp.log_start, last));
        *self.shared.checkpoint_prev.lock().unwrap_or_else(|p| p.into_inner()) = Some(prev);
        self.shared.retain_from.fetch_max(cp.log_start, Ordering::AcqRel);
        *self.shared.write() = machine;
        self.shared.applied.send_replace(last);
        Ok(())
    }

    /// Raft is running: from now on a snapshot asked for is one to send.
    pub fn raft_started(&self) {
        self.shared.raft_started.store(true, Ordering::Release);
    }

    /// Flush the index files and write a checkpoint of the applied state,
    /// keeping the newest checkpoint's log start (`None`) or moving it to
    /// `log_start` (a snapshot for retention). Returns the snapshot's meta
    /// and last index, or `None` when nothing is applied yet or nothing
    /// changed since the newest checkpoint.
    ///
    /// A checkpoint that fails stops every later one until the node
    /// restarts: a failed fdatasync may have dropped pages that a later one
    /// would report durable. The restart replays from the last good one.
    pub async fn checkpoint(&self, log_start: Option<u64>) -> Result<Option<SnapshotMeta>, SnapshotFileError> {
        if let Some(why) = self.shared.checkpoints_stopped.get() {
            return Err(SnapshotFileError::Stopped(why.clone()));
        }
        let written = self.write_state_checkpoint(log_start).await;
        if let Err(e) = &written {
            tracing::error!(error = %e, "checkpoint failed; no more checkpoints until the node restarts");
            let _ = self.shared.checkpoints_stopped.set(e.to_string());
        }
        written
    }

    async fn write_state_checkpoint(&self, log_start: Option<u64>) -> Result<Option<SnapshotMeta>, SnapshotFileError> {
        let _one_at_a_time = self.shared.snapshot_lock.lock().await;
        let previous = *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner());
        let known_prev = *self.shared.checkpoint_prev.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, retired, meta, log_start, last, prev) = {
            let mut m = self.shared.write();
            let Some(applied) = m.last_applied else { return Ok(None) };
            let last = applied.index;
            // Log start: what retention asked for, never before an earlier
            // snapshot's start, never past the applied index + 1, and at least
            // 1 (entry 0 is the initial membership, which the state holds).
            let kept = previous.map_or(1, |p| p.0);
            let log_start = log_start.unwrap_or(kept).max(kept).clamp(1, last + 1);
            if previous == Some((log_start, last)) {
                return Ok(None);
            }
            let prev = if log_start > last && log_start > 1 {
                LogPos::new(applied.leader_id.term, applied.leader_id.node_id, applied.index)
            } else if let Some(p) = known_prev.filter(|p| p.index + 1 == log_start) {
                p
            } else {
                self.prev_pos(log_start)?
            };
            let (bytes, retired) = checkpoint_bytes(&mut m, log_start, prev)?;
            let meta = SnapshotMeta { last_log_id: m.last_applied, last_membership: m.membership.clone() };
            (bytes, retired, meta, log_start, last, prev)
        };
        self.write_checkpoint(&bytes, last)?;
        *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((log_start, last));
        *self.shared.checkpoint_prev.lock().unwrap_or_else(|p| p.into_inner()) = Some(prev);
        self.shared.write().state.checkpointed(retired)?;
        tracing::debug!(last, log_start, bytes = bytes.len(), "checkpoint written");
        Ok(Some(meta))
    }

    fn newest_checkpoint(&self) -> Result<Option<PathBuf>, SnapshotFileError> {
        let mut newest = None;
        let list = SnapshotFileError::io(format!("list {}", self.dir.display()));
        for name in self.fs.list(&self.dir).map_err(list)? {
            if name.starts_with("checkpoint-") && !unfinished(&name) && newest.as_ref().is_none_or(|n| name > *n) {
                newest = Some(name);
            }
        }
        Ok(newest.map(|n| self.dir.join(n)))
    }

    /// The newest checkpoint as a snapshot: its meta, and the checkpoint
    /// file itself as the data (what openraft keeps of a built snapshot,
    /// and all it reads while it builds its initial state).
    async fn newest_checkpoint_as_snapshot(&self) -> Result<Option<Snapshot>, std::io::Error> {
        let Some(path) = self.newest_checkpoint().map_err(snap_err)? else { return Ok(None) };
        let cp =
            decode_checkpoint(&keel_raft_log::io::read_file(&*self.fs, &path).map_err(snap_err)?).map_err(snap_err)?;
        let meta = SnapshotMeta { last_log_id: cp.last_applied, last_membership: cp.membership };
        let snapshot = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Some(Snapshot { meta, snapshot }))
    }

    /// Write a checkpoint of the current machine durably; drop older ones.
    fn write_checkpoint(&self, cp_bytes: &[u8], last: u64) -> Result<(), SnapshotFileError> {
        let name = checkpoint_name(last);
        self.write_durably(&name, cp_bytes)?;
        let list = SnapshotFileError::io(format!("list {}", self.dir.display()));
        for other in self.fs.list(&self.dir).map_err(list)? {
            // Only older ones: names sort by last index.
            if other.starts_with("checkpoint-") && !unfinished(&other) && other < name {
                let _ = self.fs.remove(&self.dir.join(other));
            }
        }
        Ok(())
    }

    /// Write `bytes` as `sm/name`, atomically and durably, through the
    /// log's I/O layer.
    fn write_durably(&self, name: &str, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        keel_raft_log::io::write_file_durably(&*self.fs, &self.dir, name, bytes)
            .map_err(SnapshotFileError::io(format!("write {name} in {}", self.dir.display())))
    }

    fn prev_pos(&self, log_start: u64) -> Result<LogPos, SnapshotFileError> {
        let prev = log_start - 1;
        let rec = self
            .store
            .read_range(prev, prev + 1, 0)
            .map_err(SnapshotFileError::log(format!("read log entry {prev}")))?;
        match rec.first() {
            Some(r) if r.index == prev => Ok(LogPos::new(r.term, r.leader, r.index)),
            _ => Err(SnapshotFileError::MissingEntry(format!(
                "log entry {prev} (just before the snapshot's log start) is not in the log"
            ))),
        }
    }
}

pub fn encode_checkpoint_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CP_BODY_AT + body.len());
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.push(CHECKPOINT_VERSION);
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, SnapshotFileError> {
    const FILE: &str = "checkpoint";
    if bytes.len() < CP_BODY_AT || !bytes.starts_with(CHECKPOINT_MAGIC) {
        return Err(SnapshotFileError::BadMagic { file: FILE });
    }
    let version = bytes[CP_VERSION_AT];
    if version != CHECKPOINT_VERSION && version != CHECKPOINT_VERSION_WHOLE {
        return Err(SnapshotFileError::Version { file: FILE, version, supported: CHECKPOINT_VERSION });
    }
    let crc = u32::from_le_bytes(bytes[CP_CRC].try_into().expect("4 bytes"));
    let body = &bytes[CP_BODY_AT..];
    if crc32c::crc32c(body) != crc {
        return Err(SnapshotFileError::Checksum { file: FILE });
    }
    Ok(if version == CHECKPOINT_VERSION {
        let body: CheckpointBody<StoredState> =
            codec::decode(body).map_err(|e| SnapshotFileError::Decode(e.to_string()))?;
        body.read(Image::Files)
    } else {
        let body: CheckpointBody<v1::State> =
            codec::decode(body).map_err(|e| SnapshotFileError::Decode(e.to_string()))?;
        body.read(Image::Whole)
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let asked = self.shared.retain_from.load(Ordering::Acquire);
        self.checkpoint(Some(asked)).await.map_err(io_err)?;
        // openraft only keeps the meta of a built snapshot; sending opens it
        // again through `get_current_snapshot`.
        self.newest_checkpoint_as_snapshot()
            .await?
            .ok_or_else(|| snap_err("no checkpoint to build a snapshot from: nothing is applied yet"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), std::io::Error> {
        let m = self.shared.read();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if let Some((last, _)) = entries.last() {
            // openraft read these entries when they were committed; a
            // committed entry is never replaced, so if the log now holds
            // another one there, something broke Raft's guarantee: stop
            // rather than apply what the cluster no longer holds.
            let id = last.log_id;
            let purged = self.store.log_state().0.is_some_and(|p| p.index >= id.index);
            if !purged {
                let held = self
                    .store
                    .log_pos_at(id.index)
                    .map_err(|e| io_err(format!("read log index {} before applying it: {e}", id.index)))?;
                if held.map(keel_raft_log::log_id) != Some(id) {
                    return Err(io_err(format!(
                        "log index {} to apply as {id} now holds {} in the log: refusing to apply",
                        id.index,
                        held.map_or("nothing".to_string(), |p| format!("term {} leader {}", p.term, p.leader))
                    )));
                }
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        let last = {
            let mut m = self.shared.write();
            for (e, responder) in entries {
                let index = e.log_id.index;
                m.last_applied = Some(e.log_id);
                let r = match e.payload {
                    EntryPayload::Blank => Applied::Nothing,
                    EntryPayload::Membership(mem) => {
                        m.membership = StoredMembership::new(Some(e.log_id), mem);
                        Applied::Nothing
                    }
                    EntryPayload::Normal(req) => match entry::decode(req.payload) {
                        Ok(d) => m.state.apply(index, req.timestamp_ms, d).map_err(|e| {
                            tracing::error!(index, error = %e, "the index files failed: the state machine stops");
                            io_err(format!("apply log index {index}: {e}"))
                        })?,
                        Err(err) => {
                            tracing::error!(index, %err, "entry does not decode; skipped");
                            Applied::Malformed(err.to_string())
                        }
                    },
                };
                out.push((responder, r));
            }
            m.last_applied.map_or(0, |l| l.index)
        };
        self.shared.applied.send_replace(last);
        // Answer the proposers once the lock is released.
        for (responder, r) in out {
            if let Some(responder) = responder {
                responder.send(r);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: tokio::fs::File) -> Result<(), std::io::Error> {
        let shared = Arc::clone(&self.shared);
        let _one_at_a_time = shared.snapshot_lock.lock().await;
        let mut f = snapshot.into_std().await;
        // The receiver wrote it from the start; read it from there.
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).map_err(io_err)?;
        let (cp, queues, records, raw) = tokio::task::spawn_blocking(move || read_transfer(&mut f))
            .await
            .map_err(io_err)?
            .map_err(|e| snap_err(format!("received snapshot: {e}")))?;
        if cp.last_applied != meta.last_log_id {
            return Err(snap_err(format!(
                "received snapshot holds {:?} but its meta says {:?}",
                cp.last_applied, meta.last_log_id
            )));
        }
        // Durable before the log changes: a crash from here on finishes the
        // install at the next start (`open`).
        let last = cp.last_applied.map_or(0, |l| l.index);
        let name = format!("{INSTALL_PREFIX}{last:020}");
        self.write_durably(&name, &raw).map_err(io_err)?;
        self.install_checkpoint(cp, queues, records).await.map_err(io_err)?;
        self.fs.remove(&self.dir.join(&name)).map_err(io_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        if !self.shared.raft_started.load(Ordering::Acquire) {
            // openraft building its initial state: it reads the meta only.
            return self.newest_checkpoint_as_snapshot().await;
        }
        // A checkpoint of what is applied now: the queues shipped with it
        // are read from the live index files, which retention trims on.
        self.checkpoint(None).await.map_err(snap_err)?;
        let _transfer = self.shared.transfer_lock.lock().await;
        let Some(path) = self.newest_checkpoint().map_err(snap_err)? else { return Ok(None) };
        let cp_bytes = keel_raft_log::io::read_file(&*self.fs, &path).map_err(snap_err)?;
        let cp = decode_checkpoint(&cp_bytes).map_err(snap_err)?;
        let Image::Files(stored) = cp.image else {
            return Err(snap_err("the newest checkpoint is of version 1; a newer one is written at the next round"));
        };
        let meta = SnapshotMeta { last_log_id: cp.last_applied, last_membership: cp.membership.clone() };
        let last = cp.last_applied.map_or(0, |l| l.index);
        let tpath = self.dir.join(format!("transfer-{:016x}", rand::random::<u64>()));
        let store = self.store.clone();
        let shared = self.shared.clone();
        let log_start = cp.log_start;
        let written = tpath.clone();
        tokio::task::spawn_blocking(move || {
            write_transfer(&written, &cp_bytes, &stored, &shared, &store, log_start, last)
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        let f = tokio::fs::File::open(&tpath).await.map_err(snap_err)?;
        let _ = std::fs::remove_file(&tpath);
        Ok(Some(Snapshot { meta, snapshot: f }))
    }
}

/// The partition of `topic` in its `incarnation` as the live state holds it:
/// retention trims it and a delete (and a re-create under the same name)
/// may come while a snapshot of an earlier checkpoint is written.
fn live_partition<'m>(m: &'m Machine, topic: &str, incarnation: u64, i: usize) -> Option<&'m super::state::Partition> {
    m.state.topics.get(topic).filter(|t| t.incarnation == incarnation).and_then(|t| t.partitions.get(i))
}

/// Consume-queue entries read under one hold of the state's read lock
/// while a transfer file is written.
const SHIP_CHUNK: u64 = 16 * 1024;

fn write_transfer(
    path: &Path,
    cp: &[u8],
    stored: &StoredState,
    shared: &Shared,
    store: &Store,
    from: u64,
    last: u64,
) -> Result<(), SnapshotFileError> {
    let io_err = || SnapshotFileError::io(format!("write snapshot transfer file {}", path.display()));
    let mut w = CrcWriter { inner: std::io::BufWriter::new(std::fs::File::create(path).map_err(io_err())?), crc: 0 };
    let mut put = |b: &[u8]| w.write_all(b).map_err(io_err());
    put(TRANSFER_MAGIC)?;
    put(&[TRANSFER_VERSION])?;
    put(&(cp.len() as u64).to_le_bytes())?;
    put(cp)?;
    // Each partition's queue as the checkpoint holds it, from the live files:
    // entries below a start retention moved on since are gone there, and
    // the receiver counts bytes from what it gets.
    for (name, t) in &stored.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let gone = |what: String| SnapshotFileError::MissingEntry(format!("{what}; the next snapshot will do"));
            let live_start = live_partition(&shared.read(), name, t.incarnation, i)
                .map(|l| l.cq.start())
                .ok_or_else(|| gone(format!("topic {name} was deleted while its snapshot was being written")))?;
            let start = p.index.start.max(live_start).min(p.index.end);
            put(&start.to_le_bytes())?;
            put(&(p.index.end - start).to_le_bytes())?;
            let mut o = start;
            let mut buf = Vec::with_capacity(SHIP_CHUNK as usize * CQ_ENTRY_BYTES);
            while o < p.index.end {
                let upto = (o + SHIP_CHUNK).min(p.index.end);
                buf.clear();
                {
                    let m = shared.read();
                    let live = live_partition(&m, name, t.incarnation, i);
                    for at in o..upto {
                        let e = live.and_then(|l| l.cq.get(at)).ok_or_else(|| {
                            gone(format!(
                                "offset {at} of {name}/{i} left the index files while its snapshot was being written"
                            ))
                        })?;
                        e.encode(&mut buf);
                    }
                }
                put(&buf)?;
                o = upto;
            }
        }
    }
    let mut next = from;
    while next <= last {
        let end = (next + TRANSFER_READ_BATCH).min(last + 1);
        let records = store
            .read_range(next, end, usize::MAX)
            .map_err(SnapshotFileError::log(format!("read log {next}..{end}")))?;
        if records.first().map(|r| r.index) != Some(next) {
            return Err(SnapshotFileError::MissingEntry(format!(
                "log entry {next} is missing; the snapshot cannot carry it"
            )));
        }
        let mut encoded = Vec::new();
        for r in &records {
            encoded.clear();
            let meta = RecordMeta {
                kind: r.kind,
                term: r.term,
                leader: r.leader,
                index: r.index,
                timestamp_ms: r.timestamp_ms,
            };
            format::encode_record(&mut encoded, &meta, 0, TRANSFER_SALT, &r.payload);
            put(&encoded)?;
        }
        next = records.last().map_or(end, |r| r.index + 1);
    }
    let crc = w.crc;
    w.inner.write_all(&crc.to_le_bytes()).map_err(io_err())?;
    w.inner.into_inner().map_err(|e| io_err()(e.into_error()))?.sync_data().map_err(io_err())
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Transfer = (Checkpoint, Vec<ShippedQueue>, Vec<Record>, Bytes);

fn read_transfer(f: &mut std::fs::File) -> Result<Transfer, SnapshotFileError> {
    use std::io::Seek;
    const FILE: &str = "snapshot";
    let read_err = || SnapshotFileError::io("read the received snapshot");
    f.seek(std::io::SeekFrom::Start(0)).map_err(read_err())?;
    let mut all = Vec::new();
    f.read_to_end(&mut all).map_err(read_err())?;
    if all.len() < TR_CP_AT + TR_TRAILER_BYTES || !all.starts_with(TRANSFER_MAGIC) {
        return Err(SnapshotFileError::BadMagic { file: FILE });
    }
    let version = all[TR_VERSION_AT];
    if version != TRANSFER_VERSION && version != TRANSFER_VERSION_WHOLE {
        return Err(SnapshotFileError::Version { file: FILE, version, supported: TRANSFER_VERSION });
    }
    let body_end = all.len() - TR_TRAILER_BYTES;
    let crc = u32::from_le_bytes(all[body_end..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&all[..body_end]) != crc {
        return Err(SnapshotFileError::Checksum { file: FILE });
    }
    let all = Bytes::from(all);
    let cp_len = u64::from_le_bytes(all[TR_CP_LEN].try_into().expect("8 bytes"));
    let cp_end = usize::try_from(cp_len)
        .ok()
        .and_then(|l| TR_CP_AT.checked_add(l))
        .filter(|&e| e <= body_end)
        .ok_or_else(|| SnapshotFileError::CutShort(format!("checkpoint length {cp_len} past the end")))?;
    let cp = decode_checkpoint(&all[TR_CP_AT..cp_end])?;
    let mut at = cp_end;
    let mut queues = Vec::new();
    match (&cp.image, version) {
        (Image::Files(stored), TRANSFER_VERSION) => {
            for (name, t) in &stored.topics {
                for i in 0..t.partitions.len() {
                    let cut = |what: &str| SnapshotFileError::CutShort(format!("{what} of {name}/{i} past the end"));
                    let word = |at: usize| -> Option<u64> {
                        all.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    };
                    let start = word(at).filter(|_| at + 16 <= body_end).ok_or_else(|| cut("queue header"))?;
                    let count = word(at + 8).ok_or_else(|| cut("queue header"))?;
                    let from = at + 16;
                    let to = usize::try_from(count)
                        .ok()
                        .and_then(|n| n.checked_mul(CQ_ENTRY_BYTES))
                        .and_then(|n| from.checked_add(n))
                        .filter(|&e| e <= body_end)
                        .ok_or_else(|| cut(&format!("a queue of {count} entries")))?;
                    queues.push(ShippedQueue { start, entries: all.slice(from..to) });
                    at = to;
                }
            }
        }
        (Image::Whole(_), TRANSFER_VERSION_WHOLE) => {}
        _ => {
            return Err(SnapshotFileError::Decode(format!(
                "a version-{version} snapshot holds a checkpoint of the other version"
            )));
        }
    }
    let mut records = Vec::new();
    // A record can be no larger than the largest segment holds.
    let max_payload = format::max_payload_in(format::MAX_SEGMENT_BYTES);
    while at < body_end {
        let h = format::check_record(&all[at..body_end], max_payload, TRANSFER_SALT)
            .map_err(|defect| SnapshotFileError::Record { at, defect })?;
        let start = at + format::RECORD_HEADER_BYTES;
        let end = start + h.payload_len as usize;
        records.push(Record {
            term: h.term,
            leader: h.leader,
            index: h.index,
            timestamp_ms: h.timestamp_ms,
            kind: h.kind,
            payload: all.slice(start..end),
        });
        at = end;
    }
    Ok((cp, queues, records, all))
}

#[cfg(test)]
mod tests {
    use keel_raft_log::{LeaderId, NewRecord, RecordKind, RecordMeta, StoreConfig};

    use super::*;
    use crate::server::entry::Command;
    use crate::server::types::{Entry, Request};

    async fn store_with(dir: &Path, last: u64) -> Store {
        let mut config = StoreConfig::new(dir);
        config.segment_bytes = 8192;
        let store = Store::open(config).await.expect("open store");
        let records = (0..=last)
            .map(|index| NewRecord {
                meta: RecordMeta { kind: RecordKind::Blank, term: 1, leader: 1, index, timestamp_ms: 0 },
                payload: vec![7; 300],
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(records, Box::new(move |r| drop(tx.send(r)))).await.expect("append");
        rx.await.expect("flushed").expect("flush ok");
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_go_through_the_logs_io_layer_so_its_faults_reach_them() {
        // Phase: a store on an EIO failpoint layer that strikes every fsync
        // while the trigger file exists.
        let dir = tempfile::tempdir().expect("tempdir");
        let trigger = dir.path().join("strike");
        let spec = format!("fsync:when={}", trigger.display());
        let fs = keel_raft_log::io::with_eio_failpoint(Arc::new(keel_raft_log::RealFs), Some(&spec)).expect("armed");
        let mut config = StoreConfig::new(dir.path().join("log"));
        config.segment_bytes = 8192;
        let store = Store::open_with(config, fs).await.expect("open store");
        let (sm, _shared) = StateMachine::open(store).await.expect("open");
        let cp = encode_checkpoint_bytes(b"body");

        // Phase: unarmed, the checkpoint is written and is the newest.
        sm.write_checkpoint(&cp, 5).expect("write the checkpoint");
        assert_eq!(sm.newest_checkpoint().expect("list"), Some(sm.dir.join(checkpoint_name(5))));

        // Phase: armed, the checkpoint's fdatasync fails with EIO, the error
        // names the file, and no new checkpoint appears (the old one stays).
        std::fs::write(&trigger, b"").expect("arm");
        let err = sm.write_checkpoint(&cp, 9).expect_err("a checkpoint written past an EIO");
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains(&checkpoint_name(9)), "{text}");
        std::fs::remove_file(&trigger).expect("disarm");
        assert_eq!(sm.newest_checkpoint().expect("list"), Some(sm.dir.join(checkpoint_name(5))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_checkpoint_stops_every_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trigger = dir.path().join("strike");
        let spec = format!("fsync:when={}", trigger.display());
        let fs = keel_raft_log::io::with_eio_failpoint(Arc::new(keel_raft_log::RealFs), Some(&spec)).expect("armed");
        let mut config = StoreConfig::new(dir.path().join("log"));
        config.segment_bytes = 8192;
        let store = Store::open_with(config, fs).await.expect("open store");
        let entries = keyed_log(2);
        append_entries(&store, &entries[..2]).await;
        let (mut sm, _shared) = StateMachine::open(store.clone()).await.expect("open");
        sm.apply(stream(entries[..2].to_vec())).await.expect("applied");
        // Phase: an fdatasync fails under the checkpoint: it is refused.
        std::fs::write(&trigger, b"").expect("arm");
        sm.checkpoint(None).await.expect_err("a checkpoint past an EIO");
        std::fs::remove_file(&trigger).expect("disarm");
        // Phase: the disk answers again, more is applied, and still no
        // checkpoint is written: the failed sync may have dropped pages.
        append_entries(&store, &entries[2..]).await;
        sm.apply(stream(entries[2..].to_vec())).await.expect("applied");
        let e = sm.checkpoint(None).await.expect_err("a checkpoint after a failed one");
        assert!(matches!(e, SnapshotFileError::Stopped(_)), "{e:?}");
        assert_eq!(sm.newest_checkpoint().expect("list"), None);
    }

    fn stream(
        entries: Vec<crate::server::types::Entry>,
    ) -> impl Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + Send {
        futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_state_machine_applies_committed_entries_and_refuses_one_the_log_no_longer_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), 6).await;
        let (mut sm, shared) = StateMachine::open(store.clone()).await.expect("open");
        sm.apply(stream(vec![blank(1, 0), blank(1, 1), blank(1, 2), blank(1, 3)])).await.expect("applied");
        assert_eq!(*shared.applied.borrow(), 3);
        // The log holds index 4 of term 1; an entry of term 2 there is not it.
        let err = sm.apply(stream(vec![blank(2, 4)])).await.expect_err("applied an entry the log does not hold");
        assert!(err.to_string().contains("refusing to apply"), "{err}");
        assert_eq!(*shared.applied.borrow(), 3, "nothing applied");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_past_the_checkpoint_is_moved_back_or_refused_with_advice() {
        // Phase 1: a crash after openraft's purge but before any install
        // leaves the entries on disk: open moves the purge point back.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), 40).await;
        store.purge(LogPos::new(1, 1, 30)).await.expect("purge");
        let (_sm, shared) = StateMachine::open(store.clone()).await.expect("open");
        assert_eq!(store.log_state().0, None, "purge point not moved back to the (empty) checkpoint");
        assert_eq!(*shared.applied.borrow(), 0);
        assert_eq!(store.read_range(1, 41, usize::MAX).expect("read").len(), 40, "entries to re-apply are readable");

        // Phase 2: once the entries are gone, open refuses and says what to do.
        store.purge(LogPos::new(1, 1, 30)).await.expect("purge");
        assert!(store.delete_below(31).await.expect("delete") > 0, "the test needs a deleted segment");
        let err = StateMachine::open(store.clone()).await.err().expect("opened over a hole");
        assert!(err.to_string().contains("remove this node's data directory"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_snapshot_and_checkpoint_files_are_refused_naming_what_is_wrong() {
        // Phase: a valid transfer file of entries 1..=6 reads back whole.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), 6).await;
        let (mut sm, _shared) = StateMachine::open(store.clone()).await.expect("open");
        sm.apply(stream((0..=6).map(|i| blank(1, i)).collect())).await.expect("applied");
        sm.checkpoint(Some(1)).await.expect("checkpoint");
        let good = snapshot_bytes(&mut sm).await;
        let cp_len = u64::from_le_bytes(good[TR_CP_LEN].try_into().expect("8 bytes")) as usize;
        let cp_bytes = good[TR_CP_AT..TR_CP_AT + cp_len].to_vec();
        let path = dir.path().join("transfer");
        let read = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            read_transfer(&mut std::fs::File::open(&path).expect("open"))
        };
        let (_, _, records, _) = read(&good).expect("a valid transfer file");
        assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
        // A damaged body with its checksum made right again, as a bug (not
        // the disk) would leave it.
        let resealed = |mut bytes: Vec<u8>| {
            let end = bytes.len() - TR_TRAILER_BYTES;
            let crc = crc32c::crc32c(&bytes[..end]);
            bytes[end..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let first_record = TR_CP_AT + cp_bytes.len();
        type Expect = fn(&SnapshotFileError) -> bool;
        let mut cases: Vec<(&str, Vec<u8>, Expect)> = Vec::new();
        let mut magic = good.clone();
        magic[0] = b'X';
        cases.push(("magic", magic, |e| matches!(e, SnapshotFileError::BadMagic { file: "snapshot" })));
        let mut version = good.clone();
        version[TR_VERSION_AT] = 9;
        cases.push(("version", version, |e| matches!(e, SnapshotFileError::Version { version: 9, .. })));
        // Offsets in the log's record header (raft-log's format.rs table).
        const FLAGS_AT: usize = 3;
        const PAYLOAD_LEN: std::ops::Range<usize> = 4..8;
        let payload_at = first_record + format::RECORD_HEADER_BYTES;
        let mut flipped = good.clone();
        flipped[payload_at] ^= 1;
        cases.push(("payload bit", flipped.clone(), |e| matches!(e, SnapshotFileError::Checksum { file: "snapshot" })));
        // The file's checksum made right again: the record's own crc32c
        // still catches it.
        cases.push(("payload bit, resealed", resealed(flipped), |e| {
            matches!(e, SnapshotFileError::Record { defect: format::RecordDefect::BadChecksum, .. })
        }));
        let mut kind = good.clone();
        kind[first_record + FLAGS_AT] = 77;
        cases.push(("kind", resealed(kind), |e| {
            matches!(e, SnapshotFileError::Record { defect: format::RecordDefect::BadFlags, .. })
        }));
        let mut long = good.clone();
        long[first_record + PAYLOAD_LEN.start..first_record + PAYLOAD_LEN.end].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("length", resealed(long), |e| {
            matches!(e, SnapshotFileError::Record { defect: format::RecordDefect::TooLong, .. })
        }));
        let mut cp_len = good.clone();
        cp_len[TR_CP_LEN].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(("checkpoint length", resealed(cp_len), |e| matches!(e, SnapshotFileError::CutShort(_))));
        let mut cut = good[..first_record + 10].to_vec();
        cut.extend_from_slice(&[0; TR_TRAILER_BYTES]);
        cases.push(("cut header", resealed(cut), |e| {
            matches!(e, SnapshotFileError::Record { defect: format::RecordDefect::Short, .. })
        }));
        for (what, bytes, expected) in cases {
            let e = read(&bytes).err().unwrap_or_else(|| panic!("{what}: a damaged file was read"));
            assert!(expected(&e), "{what}: {e:?}");
        }
        // Phase: a checkpoint whose body does not decode, or whose version is
        // unknown, is refused naming it.
        let mut body = cp_bytes.clone();
        body.truncate(CP_BODY_AT + 3);
        let crc = crc32c::crc32c(&body[CP_BODY_AT..]);
        body[CP_CRC].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_checkpoint(&body), Err(SnapshotFileError::Decode(_))));
        let mut version = cp_bytes.clone();
        version[CP_VERSION_AT] = 3;
        let e = decode_checkpoint(&version).expect_err("version 3 read");
        assert!(e.to_string().contains("checkpoint version 3 is not supported"), "{e}");
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(LeaderId { term, node_id: 1 }, index), payload: EntryPayload::Blank }
    }

    fn normal(index: u64, payload: Vec<u8>) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
            payload: EntryPayload::Normal(Request { timestamp_ms: 1000 + index, payload: payload.into() }),
        }
    }

    fn create_topic(name: &str, partitions: u32) -> Vec<u8> {
        entry::encode_command(&Command::CreateTopic {
            name: name.into(),
            partitions,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 1 << 20,
        })
    }

    /// A produce of one record per key to partition 0 of `topic`, timestamped `ts`.
    fn produce(topic: &str, incarnation: u64, keys: &[&str], ts: u64) -> Vec<u8> {
        let records: Vec<entry::NewRecord> = keys
            .iter()
            .map(|k| entry::NewRecord {
                timestamp_ms: ts,
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::from_static(b"value"),
                ..entry::NewRecord::default()
            })
            .collect();
        let mut batch = Vec::new();
        entry::encode_batch(&mut batch, topic, incarnation, 0, 0, 0, &records);
        let mut group = entry::GroupEncoder::new();
        group.push_encoded(&batch);
        group.finish()
    }

    /// `entries` written to a fresh log in `dir` (as openraft would) and
    /// applied by a state machine over it.
    async fn machine_with(dir: &Path, entries: Vec<Entry>) -> (Store, StateMachine, Arc<Shared>) {
        let mut config = StoreConfig::new(dir);
        config.segment_bytes = 8192;
        let store = Store::open(config).await.expect("open store");
        append_entries(&store, &entries).await;
        let (mut sm, shared) = StateMachine::open(store.clone()).await.expect("open");
        sm.apply(stream(entries)).await.expect("applied");
        (store, sm, shared)
    }

    async fn append_entries(store: &Store, entries: &[Entry]) {
        let records = entries.iter().map(|e| keel_raft_log::entry_to_record(e).expect("encode")).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(records, Box::new(move |r| drop(tx.send(r)))).await.expect("append");
        rx.await.expect("flushed").expect("flush ok");
    }

    /// The transfer file `get_current_snapshot` gives, as bytes.
    async fn snapshot_bytes(sm: &mut StateMachine) -> Vec<u8> {
        sm.raft_started();
        let snap = sm.get_current_snapshot().await.expect("snapshot").expect("a checkpoint to send");
        let mut f = snap.snapshot.into_std().await;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).expect("read the transfer file");
        bytes
    }

    fn offsets(shared: &Shared, key: &str) -> Vec<u64> {
        shared.read().state.key_candidates("t", 0, key.as_bytes()).expect("lookup").iter().map(|e| e.offset).collect()
    }

    /// A log of a topic and `batches` produces of keys k0..k3, from index 0.
    fn keyed_log(batches: u64) -> Vec<Entry> {
        let mut entries = vec![blank(1, 0), normal(1, create_topic("t", 1))];
        for i in 0..batches {
            let keys = [format!("k{}", i % 4), format!("k{}", (i + 1) % 4)];
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            entries.push(normal(2 + i, produce("t", 1, &keys, 100 + i)));
        }
        entries
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_trusts_the_index_files_up_to_the_checkpoint_and_replays_the_rest() {
        // Phase 1: 30 batches applied, checkpointed after 20.
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = keyed_log(30);
        let (store, mut sm, shared) = machine_with(dir.path(), entries[..22].to_vec()).await;
        sm.checkpoint(None).await.expect("checkpoint").expect("a checkpoint was written");
        append_entries(&store, &entries[22..]).await;
        sm.apply(stream(entries[22..].to_vec())).await.expect("applied");
        let before = offsets(&shared, "k1");
        assert_eq!(before.len(), 16, "{before:?}");
        drop((sm, shared));

        // Phase 2: reopened, the state is the checkpoint's (20 batches) ...
        let (mut sm, shared) = StateMachine::open(store.clone()).await.expect("reopen");
        assert_eq!(*shared.applied.borrow(), 21);
        // ... and openraft, building its initial state, is handed the
        // checkpoint for its meta, not a transfer file of the whole log.
        let snap = sm.get_current_snapshot().await.expect("snapshot").expect("a checkpoint");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(21));
        let mut head = [0u8; 4];
        snap.snapshot.into_std().await.read_exact(&mut head).expect("read");
        assert_eq!(&head, CHECKPOINT_MAGIC, "a transfer file was written before Raft started");
        assert_eq!(shared.read().state.partition("t", 0).expect("p").cq.end(), 40);
        // ... and the replay of the rest gives the same answers as before.
        sm.apply(stream(entries[22..].to_vec())).await.expect("replayed");
        assert_eq!(offsets(&shared, "k1"), before);
        assert_eq!(shared.read().state.partition("t", 0).expect("p").cq.end(), 60);
        let at = shared.read().state.offset_for_timestamp("t", 0, 125).expect("t").map(|e| e.offset);
        assert_eq!(at, Some(50));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_installs_a_snapshot_with_the_leaders_queues_and_keys() {
        // Phase 1: the leader's state, checkpointed with its log from 1.
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let (_leader, mut leader_sm, leader_shared) = machine_with(leader_dir.path(), keyed_log(12)).await;
        let transfer = snapshot_bytes(&mut leader_sm).await;

        // Phase 2: a follower with an empty log installs it.
        let dir = tempfile::tempdir().expect("tempdir");
        let follower = store_with(dir.path(), 0).await;
        let (mut sm, shared) = StateMachine::open(follower.clone()).await.expect("open");
        let path = dir.path().join("received");
        std::fs::write(&path, &transfer).expect("write");
        let meta = SnapshotMeta {
            last_log_id: leader_shared.read().last_applied,
            last_membership: leader_shared.read().membership.clone(),
        };
        let f = tokio::fs::File::open(&path).await.expect("open");
        sm.install_snapshot(&meta, f).await.expect("install");
        for key in ["k0", "k1", "k2", "k3"] {
            assert_eq!(offsets(&shared, key), offsets(&leader_shared, key), "{key}");
        }
        let (m, l) = (shared.read(), leader_shared.read());
        let (p, lp) = (m.state.partition("t", 0).expect("p"), l.state.partition("t", 0).expect("p"));
        assert_eq!((p.cq.start(), p.cq.end(), p.bytes), (lp.cq.start(), lp.cq.end(), lp.bytes));
        for o in 0..p.cq.end() {
            assert_eq!(p.cq.get(o), lp.cq.get(o), "offset {o}");
        }
        assert_eq!(
            m.state.offset_for_timestamp("t", 0, 105).expect("t").map(|e| e.offset),
            l.state.offset_for_timestamp("t", 0, 105).expect("t").map(|e| e.offset)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_1_checkpoint_opens_and_its_queues_become_index_files() {
        // Version 1 held the whole state; bincode lays a struct out as the
        // tuple of its fields, so these mirror its layout.
        #[derive(Serialize)]
        struct V1Partition {
            cq: (u64, Vec<u8>),
            bytes: u64,
            keys: std::collections::HashMap<u64, Vec<u64>>,
            time: Vec<(u64, u64)>,
        }
        #[derive(Serialize)]
        struct V1Topic {
            name: String,
            incarnation: u64,
            config: super::super::state::TopicConfig,
            partitions: Vec<V1Partition>,
        }
        type Producers = std::collections::HashMap<(u64, String, u32), (Vec<(u64, u32, u64, u64)>, u64)>;
        #[derive(Serialize)]
        struct V1State {
            topics: std::collections::BTreeMap<String, V1Topic>,
            groups: std::collections::BTreeMap<(String, String, u32), u64>,
            producers: Producers,
        }
        let entries = keyed_log(3);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(dir.path());
        config.segment_bytes = 8192;
        let store = Store::open(config).await.expect("open store");
        append_entries(&store, &entries).await;
        // Offsets 0..6: keys k0 k1 | k1 k2 | k2 k3, at log indexes 2, 3, 4.
        let mut cq = Vec::new();
        for o in 0..6u64 {
            let e = CqEntry {
                offset: o,
                log_index: 2 + o / 2,
                slot: (o % 2) as u32,
                size: 20,
                timestamp_ms: 100 + o / 2,
                tag_hash: 0,
            };
            e.encode(&mut cq);
        }
        let keys = [("k0", vec![0]), ("k1", vec![1, 2]), ("k2", vec![3, 4]), ("k3", vec![5])]
            .into_iter()
            .map(|(k, o)| (super::super::state::key_hash(k.as_bytes()), o))
            .collect();
        let config = super::super::state::TopicConfig {
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 1 << 20,
        };
        let partition = V1Partition { cq: (0, cq), bytes: 120, keys, time: vec![(100, 0), (101, 2), (102, 4)] };
        let topic = V1Topic { name: "t".into(), incarnation: 1, config, partitions: vec![partition] };
        let state = V1State {
            topics: [("t".to_string(), topic)].into(),
            groups: Default::default(),
            producers: Default::default(),
        };
        let body = CheckpointBody {
            machine: MachineBody {
                state,
                last_applied: Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 4)),
                membership: Membership::default(),
            },
            log_start: 1,
            prev: (1, 1, 0),
            snapshot_id: String::new(),
        };
        let mut bytes = encode_checkpoint_bytes(&codec::encode(&body));
        bytes[CP_VERSION_AT] = CHECKPOINT_VERSION_WHOLE;
        std::fs::create_dir_all(dir.path().join("sm")).expect("sm dir");
        std::fs::write(dir.path().join("sm").join(checkpoint_name(4)), &bytes).expect("write");

        let (_sm, shared) = StateMachine::open(store.clone()).await.expect("open a version-1 checkpoint");
        assert_eq!(*shared.applied.borrow(), 4);
        assert_eq!(offsets(&shared, "k2"), vec![3, 4]);
        assert_eq!(shared.read().state.offset_for_timestamp("t", 0, 101).expect("t").map(|e| e.offset), Some(2));
        let newest = std::fs::read(dir.path().join("sm").join(checkpoint_name(4))).expect("read");
        assert_eq!(newest[CP_VERSION_AT], CHECKPOINT_VERSION, "the converted state was not checkpointed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_cut_short_by_a_crash_is_finished_at_the_next_open() {
        // Phase 1: a leader's snapshot: a topic, applied up to 20, log from 5.
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let mut entries = keyed_log(0);
        entries[1] = normal(1, create_topic("t", 2));
        entries.extend((2..=20).map(|i| blank(1, i)));
        let (_leader, mut leader_sm, _) = machine_with(leader_dir.path(), entries).await;
        leader_sm.checkpoint(Some(5)).await.expect("checkpoint").expect("written");
        let transfer = leader_dir.path().join("transfer");
        std::fs::write(&transfer, snapshot_bytes(&mut leader_sm).await).expect("transfer file");

        // Phase 2: a follower crashed after keeping the received snapshot and
        // after openraft purged its short log past it.
        let dir = tempfile::tempdir().expect("tempdir");
        let follower = store_with(dir.path(), 3).await;
        follower.purge(LogPos::new(1, 1, 20)).await.expect("purge");
        std::fs::create_dir_all(dir.path().join("sm")).expect("sm dir");
        let pending = dir.path().join("sm").join(format!("{INSTALL_PREFIX}{:020}", 20));
        std::fs::copy(&transfer, &pending).expect("pending install");

        // Phase 3: open finishes the install: the range, the checkpoint, the state.
        let (_sm, shared) = StateMachine::open(follower.clone()).await.expect("open");
        assert!(!pending.exists(), "the pending install was not removed");
        assert_eq!(*shared.applied.borrow(), 20);
        assert_eq!(shared.read().state.topic("t").expect("topic restored").config.partitions, 2);
        let records = follower.read_range(5, 21, usize::MAX).expect("read");
        assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), (5..=20).collect::<Vec<_>>());
        assert!(dir.path().join("sm").join(checkpoint_name(20)).exists(), "no checkpoint written");
        assert!(follower.log_state().0.is_some_and(|p| p.index <= 20), "purge point past the checkpoint");
    }
}
