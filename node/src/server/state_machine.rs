//! openraft's state machine over [`State`], and snapshots that carry the
//! retained log range.
//!
//! # Snapshots
//! A snapshot at log index S is a *checkpoint* (the whole [`State`], the
//! last applied log id and membership, and the log start X: the first log
//! index still retained) plus, when sent to a follower, the log records
//! X..=S. A follower that installs one writes those records into its own
//! log (`Store::install_range`) before it adopts the state, so it serves
//! every message the leader still retains.
//!
//! Files, under `<store.path.commitlog>/sm/`:
//!
//! ```text
//! checkpoint-<S, 20 digits>   the newest checkpoint (older ones are deleted):
//!     bytes 0..4   magic "KCKP"                          CHECKPOINT_MAGIC
//!     byte  4      version (1)                           CP_VERSION_AT
//!     bytes 5..9   crc32c of the body (u32 LE)           CP_CRC
//!     bytes 9..    body: bincode of `Checkpoint`         CP_BODY_AT
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
//!     byte  4      version (2)                           TR_VERSION_AT
//!     bytes 5..13  checkpoint length L (u64 LE)          TR_CP_LEN
//!     bytes 13..   the checkpoint file (L bytes)         TR_CP_AT
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
//! Openraft builds snapshots only when retention asks (`SnapshotPolicy::Never`),
//! so a checkpoint is written once per retention step, not every N entries.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
use super::state::{Applied, State};
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
const CHECKPOINT_VERSION: u8 = 1;
const TRANSFER_VERSION: u8 = 2;
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
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    machine: Machine,
    /// First log index whose record the snapshot carries (X).
    log_start: u64,
    /// Log id of the record before `log_start`.
    prev: (u64, u64, u64),
    /// Kept for the format (openraft 0.9 named snapshots); not read.
    snapshot_id: String,
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
    /// Held while a transfer file is written and while retention deletes
    /// segments, so a snapshot being sent never loses its records.
    pub transfer_lock: tokio::sync::Mutex<()>,
    /// openraft builds snapshots in a task of their own, beside the worker
    /// that installs received ones: one at a time, so a build that read the
    /// state before an install never writes its older checkpoint after it.
    snapshot_lock: tokio::sync::Mutex<()>,
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
    /// The store's I/O layer: checkpoints go through it too.
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
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
        let mut pending_install = None;
        for name in fs.list(&dir).map_err(|e| anyhow::anyhow!("list {}: {e}", dir.display()))? {
            let keep = !unfinished(&name) && (name.starts_with("checkpoint-") || name.starts_with(INSTALL_PREFIX));
            if !keep {
                // Leftovers of a transfer or a write cut short by a crash.
                let _ = fs.remove(&dir.join(&name));
            } else if name.starts_with(INSTALL_PREFIX) {
                pending_install = Some(dir.join(name));
            }
        }
        let sm = Self {
            shared: Arc::new(Shared {
                machine: RwLock::new(Machine::default()),
                applied: watch::channel(0).0,
                retain_from: AtomicU64::new(1),
                snapshot_range: Mutex::new(None),
                transfer_lock: tokio::sync::Mutex::new(()),
                snapshot_lock: tokio::sync::Mutex::new(()),
            }),
            store,
            fs,
            dir,
        };
        // A snapshot install a crash interrupted: finish it (repeatable).
        if let Some(path) = pending_install {
            let mut f = std::fs::File::open(&path)?;
            let (cp, cp_bytes, records, _) =
                read_transfer(&mut f).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), "finishing a snapshot install cut short by a crash");
            sm.install_checkpoint(cp, &cp_bytes, records).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            sm.fs.remove(&path)?;
        }
        let newest = sm.newest_checkpoint().map_err(|e| anyhow::anyhow!(e))?;
        if let Some(path) = newest {
            let bytes =
                keel_raft_log::io::read_file(&*sm.fs, &path).with_context(|| format!("read {}", path.display()))?;
            let cp = decode_checkpoint(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let last = cp.machine.last_applied.map_or(0, |l| l.index);
            *sm.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((cp.log_start, last));
            sm.shared.retain_from.store(cp.log_start, Ordering::Release);
            sm.shared.applied.send_replace(last);
            *sm.shared.write() = cp.machine;
        }
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
    /// already holds its last entry), then its checkpoint, then the state.
    async fn install_checkpoint(
        &self,
        cp: Checkpoint,
        cp_bytes: &[u8],
        records: Vec<Record>,
    ) -> Result<(), SnapshotFileError> {
        let last = cp.machine.last_applied.map_or(0, |l| l.index);
        // Keep the local log if it already holds the snapshot's last entry
        // (then it holds every retained entry before it); otherwise replace
        // it with the carried range.
        let have_last = match cp.machine.last_applied {
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
        self.write_checkpoint(cp_bytes, last)?;
        *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((cp.log_start, last));
        self.shared.retain_from.fetch_max(cp.log_start, Ordering::AcqRel);
        *self.shared.write() = cp.machine;
        self.shared.applied.send_replace(last);
        Ok(())
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
    if bytes[CP_VERSION_AT] != CHECKPOINT_VERSION {
        return Err(SnapshotFileError::Version {
            file: FILE,
            version: bytes[CP_VERSION_AT],
            supported: CHECKPOINT_VERSION,
        });
    }
    let crc = u32::from_le_bytes(bytes[CP_CRC].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[CP_BODY_AT..]) != crc {
        return Err(SnapshotFileError::Checksum { file: FILE });
    }
    codec::decode(&bytes[CP_BODY_AT..]).map_err(|e| SnapshotFileError::Decode(e.to_string()))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let shared = Arc::clone(&self.shared);
        let _one_at_a_time = shared.snapshot_lock.lock().await;
        let (body, meta, log_start, last) = {
            let m = self.shared.read();
            let last = m.last_applied.map_or(0, |l| l.index);
            let previous = *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner());
            // Log start: what retention asked for, never before an earlier
            // snapshot's start, never past the applied index + 1, and at least
            // 1 (entry 0 is the initial membership, which the state holds).
            let asked = self.shared.retain_from.load(Ordering::Acquire);
            let log_start = asked.max(previous.map_or(1, |p| p.0)).clamp(1, last + 1);
            let prev = if log_start > last && log_start > 1 {
                m.last_applied.map(|l| LogPos::new(l.leader_id.term, l.leader_id.node_id, l.index))
            } else {
                None
            };
            let prev = match prev {
                Some(p) => p,
                None => self.prev_pos(log_start).map_err(snap_err)?,
            };
            let snapshot_id = format!("{}-{}-{}", last, log_start, super::types::now_ms());
            let cp = CheckpointRef {
                machine: &m,
                log_start,
                prev: (prev.term, prev.leader, prev.index),
                snapshot_id: snapshot_id.clone(),
            };
            let body = codec::encode(&cp);
            let meta = SnapshotMeta { last_log_id: m.last_applied, last_membership: m.membership.clone() };
            (body, meta, log_start, last)
        };
        let bytes = encode_checkpoint_bytes(&body);
        self.write_checkpoint(&bytes, last).map_err(io_err)?;
        *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()) = Some((log_start, last));
        tracing::info!(last, log_start, bytes = bytes.len(), "snapshot checkpoint written");
        // openraft only keeps the meta of a built snapshot; sending opens it
        // again through `get_current_snapshot`.
        let f = tokio::fs::File::open(self.dir.join(checkpoint_name(last))).await.map_err(snap_err)?;
        Ok(Snapshot { meta, snapshot: f })
    }
}

/// Borrowing twin of [`Checkpoint`] so building a snapshot does not clone
/// the state.
#[derive(Serialize)]
struct CheckpointRef<'a> {
    machine: &'a Machine,
    log_start: u64,
    prev: (u64, u64, u64),
    snapshot_id: String,
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
                        Ok(d) => m.state.apply(index, req.timestamp_ms, d),
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
        let (cp, cp_bytes, records, raw) = tokio::task::spawn_blocking(move || read_transfer(&mut f))
            .await
            .map_err(io_err)?
            .map_err(|e| snap_err(format!("received snapshot: {e}")))?;
        if cp.machine.last_applied != meta.last_log_id {
            return Err(snap_err(format!(
                "received snapshot holds {:?} but its meta says {:?}",
                cp.machine.last_applied, meta.last_log_id
            )));
        }
        // Durable before the log changes: a crash from here on finishes the
        // install at the next start (`open`).
        let last = cp.machine.last_applied.map_or(0, |l| l.index);
        let name = format!("{INSTALL_PREFIX}{last:020}");
        self.write_durably(&name, &raw).map_err(io_err)?;
        self.install_checkpoint(cp, &cp_bytes, records).await.map_err(io_err)?;
        self.fs.remove(&self.dir.join(&name)).map_err(io_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let _transfer = self.shared.transfer_lock.lock().await;
        let Some(path) = self.newest_checkpoint().map_err(snap_err)? else { return Ok(None) };
        let cp_bytes = keel_raft_log::io::read_file(&*self.fs, &path).map_err(snap_err)?;
        let cp = decode_checkpoint(&cp_bytes).map_err(snap_err)?;
        let meta =
            SnapshotMeta { last_log_id: cp.machine.last_applied, last_membership: cp.machine.membership.clone() };
        let last = cp.machine.last_applied.map_or(0, |l| l.index);
        let tpath = self.dir.join(format!("transfer-{:016x}", rand::random::<u64>()));
        let store = self.store.clone();
        let log_start = cp.log_start;
        let written = tpath.clone();
        tokio::task::spawn_blocking(move || write_transfer(&written, &cp_bytes, &store, log_start, last))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        let f = tokio::fs::File::open(&tpath).await.map_err(snap_err)?;
        let _ = std::fs::remove_file(&tpath);
        Ok(Some(Snapshot { meta, snapshot: f }))
    }
}

fn write_transfer(path: &Path, cp: &[u8], store: &Store, from: u64, last: u64) -> Result<(), SnapshotFileError> {
    let io_err = || SnapshotFileError::io(format!("write snapshot transfer file {}", path.display()));
    let mut w = CrcWriter { inner: std::io::BufWriter::new(std::fs::File::create(path).map_err(io_err())?), crc: 0 };
    let mut put = |b: &[u8]| w.write_all(b).map_err(io_err());
    put(TRANSFER_MAGIC)?;
    put(&[TRANSFER_VERSION])?;
    put(&(cp.len() as u64).to_le_bytes())?;
    put(cp)?;
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

fn read_transfer(f: &mut std::fs::File) -> Result<(Checkpoint, Vec<u8>, Vec<Record>, Bytes), SnapshotFileError> {
    use std::io::Seek;
    const FILE: &str = "snapshot";
    let read_err = || SnapshotFileError::io("read the received snapshot");
    f.seek(std::io::SeekFrom::Start(0)).map_err(read_err())?;
    let mut all = Vec::new();
    f.read_to_end(&mut all).map_err(read_err())?;
    if all.len() < TR_CP_AT + TR_TRAILER_BYTES || !all.starts_with(TRANSFER_MAGIC) {
        return Err(SnapshotFileError::BadMagic { file: FILE });
    }
    if all[TR_VERSION_AT] != TRANSFER_VERSION {
        return Err(SnapshotFileError::Version {
            file: FILE,
            version: all[TR_VERSION_AT],
            supported: TRANSFER_VERSION,
        });
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
    let cp_bytes = all[TR_CP_AT..cp_end].to_vec();
    let cp = decode_checkpoint(&cp_bytes)?;
    let mut records = Vec::new();
    let mut at = cp_end;
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
    Ok((cp, cp_bytes, records, all))
}

#[cfg(test)]
mod tests {
    use keel_raft_log::{LeaderId, NewRecord, RecordKind, RecordMeta, StoreConfig};

    use super::*;
    use crate::server::entry::{Command, Decoded};

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

    fn stream(
        entries: Vec<crate::server::types::Entry>,
    ) -> impl Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + Send {
        futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_state_machine_applies_committed_entries_and_refuses_one_the_log_no_longer_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), 6).await;
        let blank = |term, index| crate::server::types::Entry {
            log_id: LogId::new(LeaderId { term, node_id: 1 }, index),
            payload: EntryPayload::Blank,
        };
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
        let machine =
            Machine { last_applied: Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 6)), ..Machine::default() };
        let cp = Checkpoint { machine, log_start: 1, prev: (1, 1, 0), snapshot_id: "s".into() };
        let cp_bytes = encode_checkpoint_bytes(&codec::encode(&cp));
        let path = dir.path().join("transfer");
        write_transfer(&path, &cp_bytes, &store, 1, 6).expect("transfer file");
        let good = std::fs::read(&path).expect("read");
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
        version[CP_VERSION_AT] = 2;
        let e = decode_checkpoint(&version).expect_err("version 2 read");
        assert!(e.to_string().contains("checkpoint version 2 is not supported"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_cut_short_by_a_crash_is_finished_at_the_next_open() {
        // Phase 1: a leader's snapshot: a topic, applied up to 20, log from 5.
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let leader = store_with(leader_dir.path(), 20).await;
        let mut machine = Machine::default();
        let create = Command::CreateTopic {
            name: "t".into(),
            partitions: 2,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 100,
        };
        machine.state.apply(3, 0, Decoded::Command(create));
        machine.last_applied = Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 20));
        let cp = Checkpoint { machine, log_start: 5, prev: (1, 1, 4), snapshot_id: "s".into() };
        let cp_bytes = encode_checkpoint_bytes(&codec::encode(&cp));
        let transfer = leader_dir.path().join("transfer");
        write_transfer(&transfer, &cp_bytes, &leader, 5, 20).expect("transfer file");

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
