//! The preparer actor: keeps the next segment file preallocated (and
//! optionally preheated) in the background, so rolling to a new segment is a
//! rename, not 64 MiB of zero-filling under a producer's latency.
//!
//! Files are `prepared-{pid}-{instance}-{n}.log`; the store renames one to
//! its segment name when it rolls. The actor runs on its own OS thread at a
//! lower CPU priority (nice 10): zero-filling a segment copies as many bytes
//! as the producers write, and on a small machine it must not take CPU from
//! the append and fsync path. Stale ones are deleted when the store opens. Running out of
//! space is reported to the roll that asked ([`Error::NoSpace`], not fatal);
//! the actor does not retry until asked again, so a full disk is not hammered.
//! A roll that finds no file ready within a few milliseconds `fallocate`s one
//! itself rather than stall behind the zero-fill.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use bytes::Bytes;

use crate::io::{FileIo, FileSystem, Preallocate};

pub const PREPARED_PREFIX: &str = "prepared-";

/// How long a roll waits for the background file before making its own.
const TAKE_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
struct Job {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    bytes: u64,
    mode: Preallocate,
    preheat: bool,
    instance: u64,
}

impl Job {
    fn prepare(&self, seq: u64) -> Result<PathBuf> {
        self.prepare_as(&format!("{seq}"), self.mode, self.preheat)
    }

    fn prepare_as(&self, tag: &str, mode: Preallocate, preheat: bool) -> Result<PathBuf> {
        let name = format!("{PREPARED_PREFIX}{}-{}-{tag}.log", std::process::id(), self.instance);
        let path = self.dir.join(name);
        match self.fs.preallocate(&path, self.bytes, mode, preheat) {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = self.fs.remove(&path);
                if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
                    Err(Error::NoSpace { dir: self.dir.clone(), reason: e.to_string() })
                } else {
                    Err(Error::io(format!("prepare segment {}", path.display()), e))
                }
            }
        }
    }
}

enum Request {
    Take {
        reply: oneshot::Sender<Result<PathBuf>>,
    },
    /// Drop a sealed, synced segment's pages from the page cache.
    DropCache {
        file: Arc<dyn FileIo>,
        map: Option<Bytes>,
    },
}

#[derive(Clone, Debug)]
pub struct PreparerHandle {
    tx: mpsc::Sender<Request>,
    /// For a roll that cannot wait for the background fill.
    job: Job,
    fallbacks: Arc<AtomicU64>,
    /// The first roll after open waits for the first zero-filled file (once,
    /// at start-up) rather than run a whole segment on a slower fallback.
    primed: Arc<std::sync::atomic::AtomicBool>,
}

impl PreparerHandle {
    pub fn spawn(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        bytes: u64,
        mode: Preallocate,
        preheat: bool,
    ) -> Result<(Self, std::thread::JoinHandle<()>)> {
        // Unique per process and store instance, so a closing store's
        // cleanup never deletes a file its successor just prepared.
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(4);
        let job = Job { fs, dir, bytes, mode, preheat, instance };
        let actor = Preparer { job: job.clone(), rx, ready: None, seq: 0, failed: false };
        let thread = std::thread::Builder::new()
            .name("keel-preparer".into())
            .spawn(move || actor.run())
            .map_err(|e| Error::io("start the segment preparer thread", e))?;
        let primed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Ok((Self { tx, job, fallbacks: Arc::new(AtomicU64::new(0)), primed }, thread))
    }

    /// A preallocated file, ready to be renamed into place. When the
    /// background one is not ready within a few milliseconds (the producers
    /// write faster than the disk zero-fills), a file is `fallocate`d on the
    /// spot instead: its syncs cost more, but the roll does not stall. The
    /// background file is then kept for the next roll. Only the first roll
    /// after open waits for the background file.
    pub async fn take(&self) -> Result<PathBuf> {
        let (reply, mut rx) = oneshot::channel();
        match self.tx.try_send(Request::Take { reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return self.fallback().await,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Closed),
        }
        if !self.primed.swap(true, Ordering::Relaxed) {
            return rx.await.map_err(|_| Error::Closed)?;
        }
        if let Ok(answer) = tokio::time::timeout(TAKE_WAIT, &mut rx).await {
            return answer.map_err(|_| Error::Closed)?;
        }
        match self.fallback().await {
            Ok(quick) => {
                // The background file may have been delivered meanwhile:
                // prefer it (zero-filled) and drop the quick one, so no
                // full-size file is ever left behind. Closing first makes a
                // later reply fail, and the actor then keeps its file.
                rx.close();
                match rx.try_recv() {
                    Ok(Ok(background)) => {
                        let _ = self.job.fs.remove(&quick);
                        Ok(background)
                    }
                    _ => Ok(quick),
                }
            }
            // No quick file either (no space?): the background one may still come.
            Err(e) => rx.await.unwrap_or(Err(e)),
        }
    }

    /// Drop a sealed segment's pages from the page cache, in the
    /// background (best effort: skipped when the actor is busy).
    pub fn drop_cache(&self, file: Arc<dyn FileIo>, map: Option<Bytes>) {
        let _ = self.tx.try_send(Request::DropCache { file, map });
    }

    async fn fallback(&self) -> Result<PathBuf> {
        let n = self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let job = self.job.clone();
        tracing::debug!("next segment not prepared yet; fallocating one");
        tokio::task::spawn_blocking(move || job.prepare_as(&format!("f{n}"), Preallocate::Fallocate, false))
            .await
            .map_err(|e| Error::io("prepare segment", std::io::Error::other(e.to_string())))?
    }
}

struct Preparer {
    job: Job,
    rx: mpsc::Receiver<Request>,
    ready: Option<PathBuf>,
    seq: u64,
    /// The last background attempt failed: wait to be asked before retrying.
    failed: bool,
}

impl Preparer {
    fn run(mut self) {
        // SAFETY: setpriority on this thread's own id; failure only means
        // the fill runs at normal priority.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        loop {
            if self.ready.is_none() && !self.failed {
                self.seq += 1;
                match self.job.prepare(self.seq) {
                    Ok(path) => self.ready = Some(path),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not prepare the next segment in the background");
                        self.failed = true;
                    }
                }
            }
            let reply = match self.rx.blocking_recv() {
                None => break,
                Some(Request::DropCache { file, map }) => {
                    if let Err(e) = file.drop_cache(map.as_ref()) {
                        tracing::debug!(error = %e, file = ?file, "could not drop a segment's cached pages");
                    }
                    continue;
                }
                Some(Request::Take { reply }) => reply,
            };
            let answer = match self.ready.take() {
                Some(path) => Ok(path),
                None => {
                    self.seq += 1;
                    self.job.prepare(self.seq)
                }
            };
            self.failed = answer.is_err();
            // The roll stopped waiting and made its own file: keep ours.
            if let Err(Ok(path)) = reply.send(answer) {
                self.ready = Some(path);
            }
        }
        if let Some(path) = self.ready.take() {
            let _ = self.job.fs.remove(&path);
        }
    }
}
