//! The four systems, each as a three-node cluster on loopback whose ack
//! means "fsynced on a majority" (keel also under its weaker policies).
//! One file per system: its ports, its configuration (documented there and
//! in bench/README.md) and how it is started, made ready and reset between
//! load points.
//!
//! Ports stay clear of `keel dev`'s defaults (9091–9093, 9191–9193) and of
//! each system's defaults, so a cluster someone else runs on this machine
//! neither collides with nor answers for ours.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::load::Target;
use crate::procs::Procs;

pub mod etcd;
pub mod keel;
pub mod nats;
pub mod rabbitmq;

/// How long a cluster may take to become ready (RabbitMQ's three Erlang
/// nodes joining is the slowest, ~20 s on 2 cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between readiness probes.
pub const READY_POLL: Duration = Duration::from_millis(250);

/// What to do between two load points so that one point's backlog does not
/// weigh on the next (and the disk does not fill). The clients are boxed:
/// they differ in size by hundreds of bytes.
pub enum Reset {
    /// keel: nothing (its log is the measurement; retention is not needed
    /// for a run this short).
    Nothing,
    /// etcd: compact away old revisions (physical), so bbolt reuses pages.
    EtcdCompact(Box<etcd_client::KvClient>),
    /// NATS: purge the stream.
    NatsPurge(Box<async_nats::jetstream::stream::Stream>),
    /// RabbitMQ: purge the queue.
    RabbitPurge(lapin::Channel, String),
}

/// What a system's `start` returns once its cluster is ready; its processes
/// are in the [`Procs`] the caller passed, so that the caller can stop them
/// whether `start` succeeded, failed or was interrupted.
pub struct Started {
    pub system: &'static str,
    /// The system, or for keel which of its series ([`keel::Producing`]).
    pub series: &'static str,
    pub version: String,
    pub flush: &'static str,
    pub target: Target,
    pub reset: Reset,
    pub data_dir: PathBuf,
}

/// A running cluster, ready for load.
pub struct Cluster {
    pub system: &'static str,
    pub series: &'static str,
    pub version: String,
    /// `SYNC_FLUSH` for every configuration that acks after fsync on a
    /// majority; keel's own policy name otherwise.
    pub flush: &'static str,
    pub target: Target,
    procs: Procs,
    reset: Reset,
    data_dir: PathBuf,
}

impl Cluster {
    pub fn new(started: Started, procs: Procs) -> Self {
        let Started { system, series, version, flush, target, reset, data_dir } = started;
        Cluster { system, series, version, flush, target, procs, reset, data_dir }
    }

    /// Fails if one of the cluster's processes has died.
    pub fn check_running(&mut self) -> Result<()> {
        self.procs.check_running()
    }

    pub async fn reset(&mut self) -> Result<()> {
        match &mut self.reset {
            Reset::Nothing => Ok(()),
            Reset::EtcdCompact(kv) => etcd::compact(kv).await,
            Reset::NatsPurge(stream) => nats::purge(stream).await,
            Reset::RabbitPurge(channel, queue) => rabbitmq::purge(channel, queue).await,
        }
    }

    /// Stops every process and removes the cluster's data.
    pub async fn stop(mut self) {
        // Drop the clients first, so no reconnect loop outlives the servers.
        self.reset = Reset::Nothing;
        self.procs.stop_all().await;
        if let Err(e) = std::fs::remove_dir_all(&self.data_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("  could not remove {}: {e}", self.data_dir.display());
        }
    }
}

/// Removes what an earlier, interrupted run may have left in `dir` (keel dev,
/// for one, would reuse its node files) and creates it empty.
pub fn fresh_dir(dir: &std::path::Path) -> Result<()> {
    use anyhow::Context as _;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", dir.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// An error of a readiness probe that waiting will not cure (a refused
/// configuration, say): [`wait_ready`] gives up at once.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Retries `probe` until it succeeds, fails with [`Fatal`], a process dies,
/// or [`READY_TIMEOUT`] passes (then the last error, with `what`).
pub async fn wait_ready<T, F, Fut>(procs: &mut Procs, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        procs.check_running()?;
        let last = match tokio::time::timeout(Duration::from_secs(10), probe()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.is::<Fatal>() => return Err(e.context(what.to_string())),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer within 10 s".to_string(),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not ready after {} s: {last}", READY_TIMEOUT.as_secs());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
