//! [`FaultFs`]: a test-only [`FileSystem`] modelling a disk with a volatile
//! write cache, so tests can cut the power and check what survives.
//!
//! The real files are the durable disk. `write_at` only queues the write in
//! memory; `read_at`/`len` show the real content overlaid with the queue and
//! `sync_data` applies it. `create`, `rename`, `remove` and `preallocate`
//! change the real directory at once but stay pending until `sync_dir` of
//! that directory (removed or replaced files wait under `.fault-hidden-<n>`
//! names). [`FaultFs::power_loss`] drops every pending write, optionally
//! tearing the newest one, reverts pending directory operations newest first
//! and kills every open handle. Knobs inject EIO on `sync_data` and ENOSPC on
//! `write_at`/`preallocate`.
//!
//! [`FailpointFs`] is the other layer here: it wraps any [`FileSystem`]
//! (the real one, or `FaultFs`) and fails fsyncs or writes with EIO once an
//! [`EioFailpoint`] strikes (after N calls, or while a trigger file exists).
//! The `keel` binary built for tests arms it from `KEEL_FAULT_EIO`, so a
//! whole node in a real cluster can meet a failing disk.
//!
//! Limits: real disks tear at sector granularity and may persist any subset
//! of unsynced writes; this layer tears only the newest write, at any byte
//! (stricter), and drops the rest. Files are tracked by canonical path and
//! follow renames made through `FaultFs`, not changes behind its back. A
//! cross-directory rename is pending only in the destination directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::io::{FileIo, FileSystem, Preallocate, RealFs};

const HIDDEN_PREFIX: &str = ".fault-hidden-";

/// What [`FaultFs::power_loss`] threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Pending writes not (fully) applied; a torn write counts unless all of it landed.
    pub dropped_writes: usize,
    /// Pending bytes that never reached the disk.
    pub dropped_bytes: u64,
    /// Directory operations undone.
    pub reverted_dir_ops: usize,
}

/// A file system with a volatile write cache and injectable faults. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Lock order: `state`, then any `FileState::pending`, then `faults`.
    state: Mutex<State>,
    faults: Mutex<Faults>,
    /// Bumped by every power loss; handles from an older epoch are dead.
    epoch: AtomicU64,
    /// Global order of pending writes, to find the most recent one.
    next_seq: AtomicU64,
    /// Between `power_loss` and `power_on` every operation fails: a machine
    /// without power makes no syscalls, so a sync that was under way when
    /// the power went cannot complete afterwards.
    off: AtomicBool,
}

fn powered_off() -> io::Error {
    io::Error::other("powered off")
}

#[derive(Debug, Default)]
struct State {
    /// Open-file state by canonical path; follows renames and removals.
    files: HashMap<PathBuf, Arc<FileState>>,
    /// Directory operations not yet made durable by `sync_dir`, oldest first.
    dir_ops: Vec<DirOp>,
    next_hidden: u64,
}

#[derive(Debug, Default)]
struct Faults {
    /// `Some(n)`: n more syncs succeed, then all fail with EIO.
    sync_ok_left: Option<usize>,
    enospc_writes: bool,
    enospc_preallocate: bool,
}

#[derive(Debug)]
enum DirOp {
    Created { path: PathBuf },
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<PathBuf> },
    Removed { path: PathBuf, hidden: PathBuf },
}

impl DirOp {
    /// The directory whose fsync makes this operation durable.
    fn dir(&self) -> &Path {
        let path = match self {
            DirOp::Created { path } | DirOp::Removed { path, .. } => path,
            DirOp::Renamed { to, .. } => to,
        };
        path.parent().unwrap_or(Path::new("/"))
    }
}

#[derive(Debug)]
struct FileState {
    file: File,
    pending: Mutex<Vec<PendingWrite>>,
}

#[derive(Debug)]
struct PendingWrite {
    pos: u64,
    data: Vec<u8>,
    seq: u64,
}

impl PendingWrite {
    fn end(&self) -> u64 {
        self.pos + self.data.len() as u64
    }
}

/// A file opened through [`FaultFs`].
#[derive(Debug)]
pub struct FaultFile {
    fs: Arc<Inner>,
    state: Arc<FileState>,
    epoch: u64,
    path: PathBuf,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("a FaultFs lock was poisoned by a panicking test thread")
}

fn context(path: &Path, verb: &str) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{verb} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The canonical path of `path`: its parent canonicalized, joined with its name.
fn key(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "path has no file name"))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.canonicalize()?.join(name))
}

/// Power loss cannot fail half way and still model anything; a real I/O error
/// while simulating it fails the test loudly. NotFound is tolerated (a
/// cross-directory rename synced on one side only).
fn must(result: io::Result<()>, what: &str) {
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => panic!("FaultFs power loss: {what}: {e}"),
        _ => {}
    }
}

impl State {
    /// Move `key`'s file to an unused hidden name in its directory and return that name.
    fn hide(&mut self, key: &Path) -> io::Result<PathBuf> {
        let dir = key.parent().unwrap_or(Path::new("/"));
        let hidden = loop {
            self.next_hidden += 1;
            let candidate = dir.join(format!("{HIDDEN_PREFIX}{}", self.next_hidden));
            if !candidate.try_exists()? {
                break candidate;
            }
        };
        std::fs::rename(key, &hidden).map_err(context(key, "hide"))?;
        self.move_key(key, &hidden);
        Ok(hidden)
    }

    fn register(&mut self, key: &Path, file: File) -> Arc<FileState> {
        let file = Arc::new(FileState { file, pending: Mutex::default() });
        self.files.insert(key.to_path_buf(), Arc::clone(&file));
        file
    }

    fn move_key(&mut self, from: &Path, to: &Path) {
        if let Some(file) = self.files.remove(from) {
            self.files.insert(to.to_path_buf(), file);
        }
    }

    /// Model truncation of an existing file as removal plus creation.
    fn remove_if_exists(&mut self, key: &Path) -> io::Result<()> {
        if key.try_exists()? {
            let hidden = self.hide(key)?;
            self.dir_ops.push(DirOp::Removed { path: key.to_path_buf(), hidden });
        }
        Ok(())
    }
}

impl FaultFs {
    /// A fresh file system over the real one, with no pending state and no faults.
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// The next `n_ok` `sync_data` calls succeed; every later one fails with
    /// EIO and leaves its pending writes unapplied.
    pub fn fail_sync_with_eio(&self, n_ok: usize) {
        lock(&self.inner.faults).sync_ok_left = Some(n_ok);
    }

    /// While on, `write_at` fails with ENOSPC and records nothing.
    pub fn fail_writes_with_enospc(&self, on: bool) {
        lock(&self.inner.faults).enospc_writes = on;
    }

    /// While on, `preallocate` fails with ENOSPC and creates nothing.
    pub fn fail_preallocate_with_enospc(&self, on: bool) {
        lock(&self.inner.faults).enospc_preallocate = on;
    }

    /// Turn every injected fault off.
    pub fn clear_faults(&self) {
        *lock(&self.inner.faults) = Faults::default();
    }

    /// Total bytes written but not yet synced, across all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let state = lock(&self.inner.state);
        state.files.values().map(|f| lock(&f.pending).iter().map(|w| w.data.len() as u64).sum::<u64>()).sum()
    }

    /// Cut the power: drop all pending writes, after first applying the first
    /// `tear` bytes of the most recent one if asked; revert pending directory
    /// operations newest first; kill every open [`FaultFile`].
    ///
    /// # Panics
    /// If the real file system fails while undoing: the simulation would be meaningless.
    pub fn power_loss(&self, tear: Option<usize>) -> PowerLossReport {
        let mut state = lock(&self.inner.state);
        self.inner.off.store(true, Ordering::SeqCst);
        // Bump first: a writer checks the epoch under its file's lock, so
        // once we hold every file lock below no new write can slip in.
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        let files: Vec<Arc<FileState>> = state.files.drain().map(|(_, f)| f).collect();
        let mut pendings: Vec<_> = files.iter().map(|f| lock(&f.pending)).collect();
        let mut report = PowerLossReport::default();
        for pending in &pendings {
            report.dropped_writes += pending.len();
            report.dropped_bytes += pending.iter().map(|w| w.data.len() as u64).sum::<u64>();
        }
        let newest =
            pendings.iter().zip(&files).flat_map(|(p, f)| p.iter().map(move |w| (f, w))).max_by_key(|(_, w)| w.seq);
        if let (Some(n), Some((file, write))) = (tear, newest) {
            let n = n.min(write.data.len());
            must(file.file.write_all_at(&write.data[..n], write.pos), "tear the newest write");
            report.dropped_bytes -= n as u64;
            if n == write.data.len() {
                report.dropped_writes -= 1;
            }
        }
        pendings.iter_mut().for_each(|pending| pending.clear());
        drop(pendings);

        while let Some(op) = state.dir_ops.pop() {
            match op {
                DirOp::Created { path } => must(std::fs::remove_file(&path), "remove a created file"),
                DirOp::Renamed { from, to, replaced } => {
                    must(std::fs::rename(&to, &from), "undo a rename");
                    if let Some(hidden) = replaced {
                        must(std::fs::rename(&hidden, &to), "restore a replaced file");
                    }
                }
                DirOp::Removed { path, hidden } => must(std::fs::rename(&hidden, &path), "restore a removed file"),
            }
            report.reverted_dir_ops += 1;
        }
        report
    }

    /// Restore power after [`Self::power_loss`]: operations work again (on
    /// new handles; the old ones stay dead).
    pub fn power_on(&self) {
        let _state = lock(&self.inner.state);
        self.inner.off.store(false, Ordering::SeqCst);
    }

    fn check_on(&self) -> io::Result<()> {
        if self.inner.off.load(Ordering::SeqCst) { Err(powered_off()) } else { Ok(()) }
    }

    fn handle(&self, key: PathBuf, state: Arc<FileState>) -> Arc<dyn FileIo> {
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        Arc::new(FaultFile { fs: Arc::clone(&self.inner), state, epoch, path: key })
    }
}

fn open_real(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(create).open(path)
}

impl FileSystem for FaultFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let key = key(path).map_err(context(path, "open"))?;
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        let file = match state.files.get(&key) {
            Some(file) => Arc::clone(file),
            None => {
                let file = open_real(&key, false).map_err(context(path, "open"))?;
                state.register(&key, file)
            }
        };
        Ok(self.handle(key, file))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let key = key(path).map_err(context(path, "create"))?;
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        state.remove_if_exists(&key)?;
        let file = open_real(&key, true).map_err(context(path, "create"))?;
        state.dir_ops.push(DirOp::Created { path: key.clone() });
        let file = state.register(&key, file);
        Ok(self.handle(key, file))
    }

    fn preallocate(&self, path: &Path, len: u64, mode: Preallocate, preheat: bool) -> io::Result<()> {
        self.check_on()?;
        if lock(&self.inner.faults).enospc_preallocate {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let key = key(path).map_err(context(path, "preallocate"))?;
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        state.remove_if_exists(&key)?;
        let result = RealFs.preallocate(&key, len, mode, preheat);
        if key.try_exists()? {
            state.dir_ops.push(DirOp::Created { path: key });
        }
        result
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_key, to_key) = (key(from).map_err(context(from, "rename"))?, key(to).map_err(context(to, "rename"))?);
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        if from_key == to_key {
            return std::fs::rename(&from_key, &to_key).map_err(context(from, "rename"));
        }
        let replaced = if to_key.try_exists()? && from_key.try_exists()? { Some(state.hide(&to_key)?) } else { None };
        if let Err(e) = std::fs::rename(&from_key, &to_key) {
            if let Some(hidden) = &replaced {
                std::fs::rename(hidden, &to_key)?;
                state.move_key(hidden, &to_key);
            }
            return Err(context(from, "rename")(e));
        }
        state.move_key(&from_key, &to_key);
        state.dir_ops.push(DirOp::Renamed { from: from_key, to: to_key, replaced });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let key = match key(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            other => other.map_err(context(path, "remove"))?,
        };
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        state.remove_if_exists(&key)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.canonicalize().map_err(context(dir, "fsync directory"))?;
        let mut state = lock(&self.inner.state);
        self.check_on()?;
        let (synced, pending): (Vec<_>, _) =
            std::mem::take(&mut state.dir_ops).into_iter().partition(|op| op.dir() == dir);
        state.dir_ops = pending;
        let mut result = Ok(());
        for op in synced {
            if let DirOp::Removed { hidden, .. } | DirOp::Renamed { replaced: Some(hidden), .. } = op {
                state.files.remove(&hidden);
                if let Err(e) = RealFs.remove(&hidden) {
                    result = result.and(Err(e));
                }
            }
        }
        result
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.check_on()?;
        let mut names = RealFs.list(dir)?;
        names.retain(|name| !name.starts_with(HIDDEN_PREFIX));
        Ok(names)
    }
}

impl FaultFile {
    /// This file's pending writes, or an error if the power went off since it was opened.
    fn pending(&self) -> io::Result<MutexGuard<'_, Vec<PendingWrite>>> {
        let pending = lock(&self.state.pending);
        if self.fs.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(io::Error::other(format!("{}: powered off", self.path.display())));
        }
        Ok(pending)
    }

    fn logical_len(&self, pending: &[PendingWrite]) -> io::Result<u64> {
        let real = self.state.file.metadata()?.len();
        Ok(pending.iter().map(PendingWrite::end).fold(real, u64::max))
    }
}

impl FileIo for FaultFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let mut pending = self.pending()?;
        if lock(&self.fs.faults).enospc_writes {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        pos.checked_add(buf.len() as u64).ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "write past u64"))?;
        let seq = self.fs.next_seq.fetch_add(1, Ordering::SeqCst);
        pending.push(PendingWrite { pos, data: buf.to_vec(), seq });
        Ok(())
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let pending = self.pending()?;
        let end = pos.checked_add(buf.len() as u64).ok_or_else(|| io::Error::from(ErrorKind::UnexpectedEof))?;
        if end > self.logical_len(&pending)? {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, format!("read past end of {}", self.path.display())));
        }
        let real_len = self.state.file.metadata()?.len();
        let from_real = usize::try_from(real_len.saturating_sub(pos)).unwrap_or(usize::MAX).min(buf.len());
        self.state.file.read_exact_at(&mut buf[..from_real], pos)?;
        buf[from_real..].fill(0);
        for write in pending.iter() {
            let (start, stop) = (write.pos.max(pos), write.end().min(end));
            if start < stop {
                let (src, dst) = ((start - write.pos) as usize, (start - pos) as usize);
                let n = (stop - start) as usize;
                buf[dst..dst + n].copy_from_slice(&write.data[src..src + n]);
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut pending = self.pending()?;
        {
            let mut faults = lock(&self.fs.faults);
            match &mut faults.sync_ok_left {
                Some(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Some(n) => *n -= 1,
                None => {}
            }
        }
        let mut applied = 0;
        let result = pending.iter().try_for_each(|w| {
            self.state.file.write_all_at(&w.data, w.pos)?;
            applied += 1;
            Ok(())
        });
        pending.drain(..applied);
        result.map_err(context(&self.path, "apply pending writes"))
    }

    fn len(&self) -> io::Result<u64> {
        let pending = self.pending()?;
        self.logical_len(&pending)
    }

    fn map(&self) -> io::Result<Option<Bytes>> {
        self.pending().map(|_| None)
    }
}

/// Which call an [`EioFailpoint`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOp {
    /// `sync_data` of any file (fdatasync) and `sync_dir` (fsync of a directory).
    Fsync,
    /// `write_at` of any file (pwrite).
    Write,
}

/// When an [`EioFailpoint`] starts failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailWhen {
    /// After this many calls of the operation succeeded, every later one fails.
    After(u64),
    /// Every call fails while this file exists (a test creates it to strike
    /// at the moment it chooses, and removes it before a restart).
    Exists(PathBuf),
}

/// An EIO failpoint: the operation fails with EIO once the trigger holds.
///
/// Spelled `OP:after=N` or `OP:when=PATH`, `OP` being `fsync` or `write`
/// (`keel node` reads it from `KEEL_FAULT_EIO` in test builds only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EioFailpoint {
    pub op: FailOp,
    pub when: FailWhen,
    spec: String,
}

impl EioFailpoint {
    /// Parse `OP:after=N` or `OP:when=PATH`; the error names what was wrong.
    pub fn parse(spec: &str) -> Result<EioFailpoint, String> {
        let usage = "expected fsync:after=N, fsync:when=PATH, write:after=N or write:when=PATH";
        let Some((op, trigger)) = spec.split_once(':') else {
            return Err(format!("{spec:?} has no trigger; {usage}"));
        };
        let op = match op {
            "fsync" => FailOp::Fsync,
            "write" => FailOp::Write,
            other => return Err(format!("unknown operation {other:?} in {spec:?}; {usage}")),
        };
        let when = match trigger.split_once('=') {
            Some(("after", n)) => FailWhen::After(
                n.parse().map_err(|_| format!("after={n:?} in {spec:?} is not a whole number of calls; {usage}"))?,
            ),
            Some(("when", path)) if !path.is_empty() => FailWhen::Exists(PathBuf::from(path)),
            _ => return Err(format!("unknown trigger {trigger:?} in {spec:?}; {usage}")),
        };
        Ok(EioFailpoint { op, when, spec: spec.to_string() })
    }
}

#[derive(Debug)]
struct FailpointState {
    point: EioFailpoint,
    /// Calls of `point.op` that succeeded, for `FailWhen::After`.
    passed: AtomicU64,
}

impl FailpointState {
    /// Whether this call of `op` must fail; counts it when it passes.
    fn strikes(&self, op: FailOp) -> bool {
        if op != self.point.op {
            return false;
        }
        match &self.point.when {
            FailWhen::Exists(path) => path.exists(),
            FailWhen::After(n) => {
                // Once past `n` the count stays there: every later call fails.
                self.passed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < *n).then_some(c + 1)).is_err()
            }
        }
    }

    /// EIO, saying it was injected. Like the real layer's, a file's error
    /// leaves naming the file to the caller; a directory's names it.
    fn eio(&self) -> io::Error {
        let eio = io::Error::from_raw_os_error(libc::EIO);
        io::Error::new(eio.kind(), format!("{eio} (injected by failpoint {})", self.point.spec))
    }
}

/// A [`FileSystem`] over another one that fails one operation with EIO
/// when its [`EioFailpoint`] strikes; everything else passes through. It
/// lets a whole node (the `keel` binary built for tests) meet a failing
/// disk, where [`FaultFs`]'s knobs serve tests inside one process.
#[derive(Debug)]
pub struct FailpointFs {
    inner: Arc<dyn FileSystem>,
    state: Arc<FailpointState>,
}

impl FailpointFs {
    pub fn new(inner: Arc<dyn FileSystem>, point: EioFailpoint) -> FailpointFs {
        FailpointFs { inner, state: Arc::new(FailpointState { point, passed: AtomicU64::new(0) }) }
    }

    fn wrap(&self, file: Arc<dyn FileIo>) -> Arc<dyn FileIo> {
        Arc::new(FailpointFile { inner: file, state: Arc::clone(&self.state) })
    }
}

impl FileSystem for FailpointFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        self.inner.open(path).map(|f| self.wrap(f))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        self.inner.create(path).map(|f| self.wrap(f))
    }

    fn preallocate(&self, path: &Path, len: u64, mode: Preallocate, preheat: bool) -> io::Result<()> {
        self.inner.preallocate(path, len, mode, preheat)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.state.strikes(FailOp::Fsync) {
            let e = self.state.eio();
            return Err(io::Error::new(e.kind(), format!("fsync directory {}: {e}", dir.display())));
        }
        self.inner.sync_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
}

#[derive(Debug)]
struct FailpointFile {
    inner: Arc<dyn FileIo>,
    state: Arc<FailpointState>,
}

impl FileIo for FailpointFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        if self.state.strikes(FailOp::Write) {
            return Err(self.state.eio());
        }
        self.inner.write_at(pos, buf)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(pos, buf)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.state.strikes(FailOp::Fsync) {
            return Err(self.state.eio());
        }
        self.inner.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn map(&self) -> io::Result<Option<Bytes>> {
        self.inner.map()
    }

    fn drop_cache(&self, map: Option<&Bytes>) -> io::Result<()> {
        self.inner.drop_cache(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(file: &dyn FileIo) -> Vec<u8> {
        let mut buf = vec![0; usize::try_from(file.len().unwrap()).unwrap()];
        file.read_at(0, &mut buf).unwrap();
        buf
    }

    /// A file created and made durable (name included), ready for writes.
    fn durable_file(fs: &FaultFs, dir: &Path, name: &str) -> Arc<dyn FileIo> {
        let file = fs.create(&dir.join(name)).unwrap();
        fs.sync_dir(dir).unwrap();
        file
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_survive() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let file = durable_file(&fs, dir.path(), "a");
        file.write_at(0, b"durable").unwrap();
        file.sync_data().unwrap();
        file.write_at(7, b"-lost").unwrap();
        assert_eq!(fs.unsynced_bytes(), 5);
        assert_eq!(read_all(&*file), b"durable-lost");
        let report = fs.power_loss(None);
        fs.power_on();
        assert_eq!(report, PowerLossReport { dropped_writes: 1, dropped_bytes: 5, reverted_dir_ops: 0 });
        assert_eq!(fs.unsynced_bytes(), 0);
        assert_eq!(read_all(&*fs.open(&dir.path().join("a")).unwrap()), b"durable");
    }

    #[test]
    fn torn_write_keeps_exactly_n_bytes_of_the_newest_write() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let a = durable_file(&fs, dir.path(), "a");
        let b = durable_file(&fs, dir.path(), "b");
        a.write_at(0, b"older").unwrap();
        b.write_at(0, b"x").unwrap();
        b.write_at(1, b"newest").unwrap();
        let report = fs.power_loss(Some(3));
        fs.power_on();
        assert_eq!(report, PowerLossReport { dropped_writes: 3, dropped_bytes: 9, reverted_dir_ops: 0 });
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"\0new");
    }

    #[test]
    fn rename_is_reverted_unless_the_directory_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, target) = (dir.path().join("x.tmp"), dir.path().join("x"));
        let fs = FaultFs::new();
        std::fs::write(&target, b"old").unwrap();
        std::fs::write(&tmp, b"new").unwrap();
        fs.rename(&tmp, &target).unwrap();
        assert_eq!(fs.list(dir.path()).unwrap(), vec!["x".to_string()]);
        assert_eq!(fs.power_loss(None).reverted_dir_ops, 1);
        fs.power_on();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read(&tmp).unwrap(), b"new");

        fs.rename(&tmp, &target).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        assert_eq!(fs.power_loss(None).reverted_dir_ops, 0);
        fs.power_on();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the replaced file is really gone");
    }

    #[test]
    fn remove_is_reverted_unless_the_directory_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fs = FaultFs::new();
        std::fs::write(&path, b"data").unwrap();
        fs.remove(&path).unwrap();
        fs.remove(&path).unwrap();
        assert!(fs.list(dir.path()).unwrap().is_empty());
        assert!(fs.open(&path).is_err());
        assert_eq!(fs.power_loss(None).reverted_dir_ops, 1);
        fs.power_on();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");

        fs.remove(&path).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        fs.power_loss(None);
        fs.power_on();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn created_files_vanish_and_truncated_files_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        std::fs::write(dir.path().join("old"), b"kept").unwrap();
        fs.create(&dir.path().join("old")).unwrap();
        fs.create(&dir.path().join("new")).unwrap();
        fs.preallocate(&dir.path().join("seg"), 4096, Preallocate::Zero, false).unwrap();
        assert_eq!(fs.power_loss(None).reverted_dir_ops, 4);
        fs.power_on();
        assert_eq!(fs.list(dir.path()).unwrap(), vec!["old".to_string()]);
        assert_eq!(std::fs::read(dir.path().join("old")).unwrap(), b"kept");
    }

    #[test]
    fn eio_after_n_ok_syncs_leaves_writes_unapplied() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let file = durable_file(&fs, dir.path(), "a");
        fs.fail_sync_with_eio(1);
        file.write_at(0, b"one").unwrap();
        file.sync_data().unwrap();
        file.write_at(3, b"two").unwrap();
        for _ in 0..2 {
            assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        }
        assert_eq!(fs.unsynced_bytes(), 3);
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"one");
        fs.power_loss(None);
        fs.power_on();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"one");
        fs.clear_faults();
        fs.open(&dir.path().join("a")).unwrap().sync_data().unwrap();
    }

    #[test]
    fn enospc_on_write_and_preallocate() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let file = durable_file(&fs, dir.path(), "a");
        fs.fail_writes_with_enospc(true);
        assert_eq!(file.write_at(0, b"x").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!((fs.unsynced_bytes(), file.len().unwrap()), (0, 0));
        fs.fail_preallocate_with_enospc(true);
        let err = fs.preallocate(&dir.path().join("seg"), 4096, Preallocate::Fallocate, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(!dir.path().join("seg").exists());
        fs.fail_writes_with_enospc(false);
        file.write_at(0, b"x").unwrap();
    }

    #[test]
    fn reads_overlay_pending_writes_past_the_real_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"0123456789").unwrap();
        let fs = FaultFs::new();
        let file = fs.open(&path).unwrap();
        let same = fs.open(&path).unwrap();
        file.write_at(8, b"abcd").unwrap();
        file.write_at(2, b"XY").unwrap();
        file.write_at(16, b"z").unwrap();
        file.write_at(3, b"W").unwrap();
        assert_eq!(same.len().unwrap(), 17);
        assert_eq!(read_all(&*same), b"01XW4567abcd\0\0\0\0z");
        let mut tail = [0u8; 4];
        same.read_at(9, &mut tail).unwrap();
        assert_eq!(&tail, b"bcd\0");
        assert_eq!(same.read_at(14, &mut tail).unwrap_err().kind(), ErrorKind::UnexpectedEof);
        assert!(same.map().unwrap().is_none());
        same.sync_data().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"01XW4567abcd\0\0\0\0z");
    }

    #[test]
    fn old_handles_fail_after_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        let file = durable_file(&fs, dir.path(), "a");
        fs.clone().power_loss(None);
        fs.power_on();
        let mut buf = [0u8; 0];
        let errors = [
            file.write_at(0, b"x").unwrap_err(),
            file.read_at(0, &mut buf).unwrap_err(),
            file.sync_data().unwrap_err(),
            file.len().unwrap_err(),
            file.map().unwrap_err(),
        ];
        assert!(errors.iter().all(|e| e.to_string().contains("powered off")), "{errors:?}");
        let reopened = fs.open(&dir.path().join("a")).unwrap();
        reopened.write_at(0, b"ok").unwrap();
        reopened.sync_data().unwrap();
    }

    #[test]
    fn failpoint_specs_parse_and_bad_ones_are_named() {
        let p = EioFailpoint::parse("fsync:after=3").unwrap();
        assert_eq!((p.op, p.when), (FailOp::Fsync, FailWhen::After(3)));
        let p = EioFailpoint::parse("write:when=/tmp/x").unwrap();
        assert_eq!((p.op, p.when), (FailOp::Write, FailWhen::Exists(PathBuf::from("/tmp/x"))));
        for (bad, names) in [
            ("fsync", "has no trigger"),
            ("read:after=1", "unknown operation \"read\""),
            ("fsync:after=x", "after=\"x\""),
            ("fsync:when=", "unknown trigger"),
            ("fsync:sometimes", "unknown trigger \"sometimes\""),
        ] {
            let err = EioFailpoint::parse(bad).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }

    #[test]
    fn failpoint_fails_its_operation_after_n_calls_or_while_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        // Phase: fsync after 1 call; writes pass; the error names file and op.
        let fs = FailpointFs::new(Arc::new(RealFs), EioFailpoint::parse("fsync:after=1").unwrap());
        let file = fs.create(&dir.path().join("a")).unwrap();
        file.write_at(0, b"x").unwrap();
        file.sync_data().unwrap();
        for _ in 0..2 {
            let err = file.sync_data().unwrap_err().to_string();
            assert!(err.contains("Input/output error") && err.contains("injected by failpoint fsync:after=1"), "{err}");
        }
        assert!(fs.sync_dir(dir.path()).unwrap_err().to_string().contains("fsync directory"));
        file.write_at(1, b"y").unwrap();
        // Phase: write while a trigger file exists, and only then.
        let trigger = dir.path().join("trigger");
        let spec = format!("write:when={}", trigger.display());
        let fs = FailpointFs::new(Arc::new(RealFs), EioFailpoint::parse(&spec).unwrap());
        let file = fs.open(&dir.path().join("a")).unwrap();
        file.write_at(0, b"1").unwrap();
        std::fs::write(&trigger, b"").unwrap();
        let err = file.write_at(0, b"2").unwrap_err().to_string();
        assert!(err.contains("Input/output error") && err.contains("injected by failpoint write:when="), "{err}");
        file.sync_data().unwrap();
        std::fs::remove_file(&trigger).unwrap();
        file.write_at(0, b"3").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"3y");
    }
}
