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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::io::{FileSystem, Preallocate};

pub const PREPARED_PREFIX: &str = "prepared-";

#[derive(Debug)]
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
        let name = format!("{PREPARED_PREFIX}{}-{}-{seq}.log", std::process::id(), self.instance);
        let path = self.dir.join(name);
        match self.fs.preallocate(&path, self.bytes, self.mode, self.preheat) {
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
    Take { reply: oneshot::Sender<Result<PathBuf>> },
}

#[derive(Clone, Debug)]
pub struct PreparerHandle {
    tx: mpsc::Sender<Request>,
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
        let actor = Preparer { job, rx, ready: None, seq: 0, failed: false };
        let thread = std::thread::Builder::new()
            .name("keel-preparer".into())
            .spawn(move || actor.run())
            .map_err(|e| Error::io("start the segment preparer thread", e))?;
        Ok((Self { tx }, thread))
    }

    /// A preallocated file, ready to be renamed into place.
    pub async fn take(&self) -> Result<PathBuf> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Take { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
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
            let Some(Request::Take { reply }) = self.rx.blocking_recv() else { break };
            let answer = match self.ready.take() {
                Some(path) => Ok(path),
                None => {
                    self.seq += 1;
                    self.job.prepare(self.seq)
                }
            };
            self.failed = answer.is_err();
            let _ = reply.send(answer);
        }
        if let Some(path) = self.ready.take() {
            let _ = self.job.fs.remove(&path);
        }
    }
}
