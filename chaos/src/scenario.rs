//! The scenarios: what one cycle breaks, and how it heals before the next.

use std::time::Duration;

use anyhow::{Result, bail};
use rand::Rng;
use rand::rngs::StdRng;

use crate::backend::Backend;
use crate::run::{LEADER_TIMEOUT, wait_for_leader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillLoop,
    Pause,
    Partition,
    PowerLoss,
    DiskFull,
    RollingRestart,
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
}

pub const ALL: &[Scenario] = &[
    Scenario::KillLoop,
    Scenario::Pause,
    Scenario::Partition,
    Scenario::PowerLoss,
    Scenario::DiskFull,
    Scenario::RollingRestart,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLoop => "kill-loop",
            Scenario::Pause => "pause",
            Scenario::Partition => "partition",
            Scenario::PowerLoss => "power-loss",
            Scenario::DiskFull => "disk-full",
            Scenario::RollingRestart => "rolling-restart",
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
            Scenario::DiskFull => {
                "fill the leader's or a random node's data volume (a tmpfs; needs root) for 2-4 s under load, free it, \
                 restart the node if it stopped (a filled leader refuses produce with RESOURCE_EXHAUSTED, below \
                 store.reserve.bytes; a filled follower stops at its next write that needs new space)"
            }
            Scenario::RollingRestart => "SIGTERM and restart each node in turn",
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

    /// Break the cluster once and heal it; returns the faults applied.
    pub async fn cycle(self, backend: &dyn Backend, rng: &mut StdRng, target: Target) -> Result<Vec<Fault>> {
        let faults = match self {
            Scenario::KillLoop => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.kill(node)?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
                backend.start(node)?;
                vec![Fault { kind: if who == "leader" { "kill_leader" } else { "kill_random" }, node }]
            }
            Scenario::Pause => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.pause(node)?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
                backend.resume(node)?;
                vec![Fault { kind: if who == "leader" { "pause_leader" } else { "pause_random" }, node }]
            }
            Scenario::Partition => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.isolate(node)?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                backend.heal(node)?;
                vec![Fault { kind: if who == "leader" { "partition_leader" } else { "partition_random" }, node }]
            }
            Scenario::PowerLoss => {
                for node in backend.nodes() {
                    backend.kill(node)?;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                for node in backend.nodes() {
                    backend.start(node)?;
                }
                vec![Fault { kind: "power_loss_all", node: 0 }]
            }
            Scenario::DiskFull => {
                let (node, who) = Self::victim(backend, rng, target).await?;
                backend.fill_disk(node)?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(2000..4000))).await;
                backend.free_disk(node)?;
                // A filled leader stays up and refuses produce while it is
                // below its reserve (the workload records those refusals,
                // and the checker that none was stored); a filled follower
                // stops at its next write that needs new space. Either
                // way, once there is room, writes resume and a stopped node
                // comes back.
                backend.start(node)?;
                vec![Fault { kind: if who == "leader" { "disk_full_leader" } else { "disk_full_random" }, node }]
            }
            Scenario::RollingRestart => {
                let mut out = Vec::new();
                for node in backend.nodes() {
                    backend.stop(node)?;
                    backend.start(node)?;
                    wait_for_leader(backend, LEADER_TIMEOUT).await?;
                    out.push(Fault { kind: "restart", node });
                }
                out
            }
        };
        wait_for_leader(backend, LEADER_TIMEOUT).await?;
        Ok(faults)
    }
}
