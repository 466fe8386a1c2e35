//! The scenarios: what one cycle breaks, and how it heals before the next.

use std::time::Duration;

use anyhow::{Result, bail};
use rand::Rng;
use rand::rngs::StdRng;

use crate::backend::Backend;
use crate::run::{LEADER_TIMEOUT, wait_for_leader};
use crate::workload::Workload;

/// How long bitflip waits for the victim to seal a segment.
const SEALED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted node may take to repair its log and answer.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Node `node`'s admin status, once it answers (bounded by `timeout`).
async fn wait_for_status(backend: &dyn Backend, node: u64, timeout: Duration) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match crate::http::get_json(&backend.admin_addr(node), "/api/v1/status") {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() > deadline => {
                bail!("node {node} did not answer within {timeout:?} of its restart: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillLoop,
    Pause,
    Partition,
    PowerLoss,
    PowerLossMajority,
    PowerLossMinority,
    DiskFull,
    RollingRestart,
    Bitflip,
}

/// Which node a single-node fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    Random,
    /// The leader or a random node, by a coin flip per cycle.
    Mixed,
}

impl Target {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "leader" => Ok(Target::Leader),
            "random" => Ok(Target::Random),
            "mixed" => Ok(Target::Mixed),
            _ => bail!("--target {s:?}: expected leader, random or mixed"),
        }
    }
}

/// One fault applied in a cycle.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: &'static str,
    pub node: u64,
    /// Records damaged (bitflip).
    pub flipped: u64,
    /// Of those, records of the active segment under a zeroed header or sector (bitflip).
    pub zeroed: u64,
    /// Damaged log ranges the node repaired from a peer after it (bitflip).
    pub repaired: u64,
}

impl Fault {
    fn new(kind: &'static str, node: u64) -> Self {
        Self { kind, node, flipped: 0, zeroed: 0, repaired: 0 }
    }
}

pub const ALL: &[Scenario] = &[
    Scenario::KillLoop,
    Scenario::Pause,
    Scenario::Partition,
    Scenario::PowerLoss,
    Scenario::PowerLossMajority,
    Scenario::PowerLossMinority,
    Scenario::DiskFull,
    Scenario::RollingRestart,
    Scenario::Bitflip,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLoop => "kill-loop",
            Scenario::Pause => "pause",
            Scenario::Partition => "partition",
            Scenario::PowerLoss => "power-loss",
            Scenario::PowerLossMajority => "power-loss-majority",
            Scenario::PowerLossMinority => "power-loss-minority",
            Scenario::DiskFull => "disk-full",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Bitflip => "bitflip",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::KillLoop => "kill -9 the leader or a random node (--target) mid-write, restart it",
            Scenario::Pause => "SIGSTOP the leader or a random node (--target) for 0.5-2 s, then SIGCONT",
            Scenario::Partition => {
                "cut the leader or a random node (--target) off from its peers for 1-3 s (process backend: network namespaces, needs root)"
            }
            Scenario::PowerLoss => {
                "kill -9 every node at once with unsynced writes in process memory (power-loss build), restart all"
            }
            Scenario::PowerLossMajority => {
                "cut the power of two of the three nodes at once (power-loss build) while the third runs on: the \
                 leader (--target leader), a random node (random) or either by a coin flip (mixed); every other \
                 cycle the survivor is paused until the two restarted nodes have elected a leader among themselves"
            }
            Scenario::PowerLossMinority => {
                "cut the power of one node (power-loss build; the leader or a random node, --target) while the \
                 other two run on, restart it"
            }
            Scenario::DiskFull => {
                "fill the leader's or a random node's data volume (a tmpfs; needs root) for 2-4 s under load, free it, \
                 restart the node if it stopped (a filled leader refuses produce with RESOURCE_EXHAUSTED, below \
                 store.reserve.bytes; a filled follower stops at its next write that needs new space)"
            }
            Scenario::RollingRestart => "SIGTERM and restart each node in turn",
            Scenario::Bitflip => {
                "flip a byte in 1-3 random records of the leader's or a random node's sealed segments under load, \
                 kill -9 it, zero a record header or a whole 512-byte sector of its active segment (among records \
                 its meta file holds committed), restart it: it must repair every damaged record from a peer \
                 (process backend)"
            }
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match ALL.iter().find(|s| s.name() == name) {
            Some(s) => Ok(*s),
            None => {
                let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
                bail!("unknown scenario {name:?}; the scenarios are {}", names.join(", "))
            }
        }
    }

    /// The node a single-node fault hits.
    async fn victim(backend: &dyn Backend, rng: &mut StdRng, target: Target) -> Result<(u64, &'static str)> {
        let leader = match target {
            Target::Leader => true,
            Target::Random => false,
            Target::Mixed => rng.random_bool(0.5),
        };
        if leader {
            Ok((wait_for_leader(backend, LEADER_TIMEOUT).await?, "leader"))
        } else {
            let nodes = backend.nodes();
            Ok((nodes[rng.random_range(0..nodes.len())], "random"))
        }
    }

    /// The power-loss build is needed.
    pub fn cuts_power(self) -> bool {
        matches!(self, Scenario::PowerLoss | Scenario::PowerLossMajority | Scenario::PowerLossMinority)
    }

    /// Break the cluster once and heal it; returns the faults applied.
    ///
    /// With `quiet`, the workload is paused at the moment of the fault, its
    /// sends in flight abandoned (so no client retry writes anything after
    /// the restart either): the caller then reads everything back before
    /// any new write.
    pub async fn cycle(
        self,
        backend: &dyn Backend,
        rng: &mut StdRng,
        target: Target,
        quiet: Option<&Workload>,
    ) -> Result<Vec<Fault>> {
        let hush = || async {
            if let Some(w) = quiet {
                w.pause().await;
            }
        };
        let faults = match self {
            Scenario::KillLoop => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.kill(node)?;
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
                backend.start(node)?;
                vec![Fault::new(if who == "leader" { "kill_leader" } else { "kill_random" }, node)]
            }
            Scenario::Pause => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.pause(node)?;
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
                backend.resume(node)?;
                vec![Fault::new(if who == "leader" { "pause_leader" } else { "pause_random" }, node)]
            }
            Scenario::Partition => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.isolate(node)?;
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                backend.heal(node)?;
                vec![Fault::new(if who == "leader" { "partition_leader" } else { "partition_random" }, node)]
            }
            Scenario::PowerLoss => {
                for node in backend.nodes() {
                    backend.kill(node)?;
                }
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                for node in backend.nodes() {
                    backend.start(node)?;
                }
                vec![Fault::new("power_loss_all", 0)]
            }
            Scenario::PowerLossMajority => {
                let (survivor, who) = Self::victim(backend, rng, target).await?;
                let cut: Vec<u64> = backend.nodes().into_iter().filter(|&n| n != survivor).collect();
                for &node in &cut {
                    backend.kill(node)?;
                }
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                // Every other cycle the survivor sits out while the other two
                // come back, so they elect one of themselves and write on
                // without it: a survivor holding entries they lost must then
                // give them up, not keep them.
                let sit_out = rng.random_bool(0.5);
                if sit_out {
                    backend.pause(survivor)?;
                }
                for &node in &cut {
                    backend.start(node)?;
                }
                if sit_out {
                    let elected = wait_for_leader(backend, LEADER_TIMEOUT).await;
                    backend.resume(survivor)?;
                    elected?;
                }
                let kind = match (who, sit_out) {
                    ("leader", true) => "power_loss_majority_leader_survives_paused",
                    ("leader", false) => "power_loss_majority_leader_survives",
                    (_, true) => "power_loss_majority_random_survives_paused",
                    (_, false) => "power_loss_majority_random_survives",
                };
                vec![Fault::new(kind, survivor)]
            }
            Scenario::PowerLossMinority => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.kill(node)?;
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                backend.start(node)?;
                vec![Fault::new(if who == "leader" { "power_loss_leader" } else { "power_loss_random" }, node)]
            }
            Scenario::DiskFull => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.fill_disk(node)?;
                hush().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(2000..4000))).await;
                backend.free_disk(node)?;
                // A filled leader stays up and refuses produce while it is
                // below its reserve (the workload records those refusals,
                // and the checker that none was stored); a filled follower
                // stops at its next write that needs new space. Either
                // way, once there is room, writes resume and a stopped node
                // comes back.
                backend.start(node)?;
                vec![Fault::new(if who == "leader" { "disk_full_leader" } else { "disk_full_random" }, node)]
            }
            Scenario::Bitflip => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                let dir = backend.data_dir(node)?;
                let count = rng.random_range(1..=3);
                // The load seals a 1 MiB segment every few seconds.
                let deadline = std::time::Instant::now() + SEALED_TIMEOUT;
                let flips = loop {
                    let flips = crate::bitflip::flip_sealed(&dir, rng, count)?;
                    if !flips.is_empty() {
                        break flips;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!("node {node} has no sealed segment after {SEALED_TIMEOUT:?} of load: nothing to flip");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                backend.kill(node)?;
                hush().await;
                // The active segment is written up to the kill: damage only
                // records the meta file holds committed (fsynced here, and on
                // a majority), which recovery must never cut as a torn tail.
                let mut damaged = flips;
                let mut zeroed = 0;
                if let Some(d) = crate::bitflip::damage_active(&dir, rng)? {
                    zeroed = d.last - d.index + 1;
                    damaged.push(d);
                }
                backend.start(node)?;
                // Repair happens before the node serves: once it answers, it is done.
                let status = wait_for_status(backend, node, REPAIR_TIMEOUT).await?;
                let repaired = crate::bitflip::check_repaired(&status, &damaged)?;
                let kind = if who == "leader" { "bitflip_leader" } else { "bitflip_random" };
                vec![Fault { kind, node, flipped: damaged.len() as u64, zeroed, repaired }]
            }
            Scenario::RollingRestart => {
                let mut out = Vec::new();
                for node in backend.nodes() {
                    backend.stop(node)?;
                    if out.is_empty() {
                        hush().await;
                    }
                    backend.start(node)?;
                    wait_for_leader(backend, LEADER_TIMEOUT).await?;
                    out.push(Fault::new("restart", node));
                }
                out
            }
        };
        wait_for_leader(backend, LEADER_TIMEOUT).await?;
        Ok(faults)
    }
}
