//! The retention actor: applies `retention.ms` and `retention.bytes`, and
//! turns what they release into deleted segments.
//!
//! Two steps, every [`INTERVAL`]:
//! 1. On the leader only: for each partition, find the first record that
//!    retention keeps (time: the first whose timestamp is within
//!    `retention.ms` of now; size: the first after which at most
//!    `retention.bytes` remain) and propose a `Trim` command when it moved.
//!    Trims go through Raft, so every replica moves the same start offsets.
//!    It also proposes `ExpireProducers` for idle producer ids.
//! 2. On every node: the first log index any partition still needs (X)
//!    decides what the log can drop. When a whole segment lies below X, it
//!    builds a snapshot whose range starts at X, tells openraft to purge
//!    below X, and deletes the segments wholly below X (under the
//!    transfer lock, so a snapshot being sent keeps its records).
//! 3. On every node: a checkpoint of the state (`StateMachine::checkpoint`:
//!    index files flushed, the small state written), so a restart applies
//!    only the log of the last round or so. A checkpoint that fails stops
//!    the checkpoints (a failed fsync may have dropped pages a later one
//!    would report durable); restarting the node replays from the last good one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_raft_log::Store;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use super::entry::{self, Command};
use super::state_machine::{Raft, Shared, StateMachine};
use super::types::{Request, now_ms};

pub const INTERVAL: Duration = Duration::from_secs(2);
const PRODUCER_SWEEP_EVERY: Duration = Duration::from_secs(60);
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Trims proposed per round: bounds one round's work.
const MAX_TRIMS_PER_ROUND: usize = 256;

pub struct Retention {
    pub node_id: u64,
    pub raft: Raft,
    pub store: Store,
    pub shared: Arc<Shared>,
    pub sm: StateMachine,
    pub producer_id_expiry_ms: u64,
    pub shutdown: watch::Receiver<bool>,
}

impl Retention {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.changed() => return,
            }
            if *self.shutdown.borrow() {
                return;
            }
            let leader = self.raft.metrics().borrow_watched().current_leader == Some(self.node_id);
            if leader {
                self.propose_trims().await;
                if last_sweep.elapsed() >= PRODUCER_SWEEP_EVERY {
                    last_sweep = tokio::time::Instant::now();
                    let idle_before_ms = now_ms().saturating_sub(self.producer_id_expiry_ms);
                    self.propose(Command::ExpireProducers { idle_before_ms }).await;
                }
            }
            if let Err(e) = self.compact().await {
                tracing::warn!(error = %e, "retention could not delete segments this round");
            }
            if let Err(e) = self.sm.checkpoint(None).await {
                tracing::error!(error = %e, "no checkpoint this round");
            }
        }
    }

    async fn propose(&self, c: Command) {
        let req = Request { timestamp_ms: now_ms(), payload: entry::encode_command(&c).into() };
        // Bounded: openraft never answers a deposed leader's write that a
        // snapshot overtook, and this loop must go on.
        match tokio::time::timeout(COMMAND_TIMEOUT, self.raft.client_write(req)).await {
            Err(_) => tracing::warn!("retention command not applied within {COMMAND_TIMEOUT:?}"),
            Ok(Err(e)) => tracing::debug!(error = %e, "retention command not applied"),
            Ok(Ok(_)) => {}
        }
    }

    async fn propose_trims(&self) {
        let now = now_ms();
        let trims: Vec<Command> = {
            let m = self.shared.read();
            let mut out = Vec::new();
            for t in m.state.topics.values() {
                for (i, p) in t.partitions.iter().enumerate() {
                    let (start, end) = (p.cq.start(), p.cq.end());
                    let mut keep = start;
                    if t.config.retention_ms >= 0 {
                        let cutoff = now.saturating_sub(t.config.retention_ms as u64);
                        while keep < end && p.cq.get(keep).is_some_and(|e| e.timestamp_ms < cutoff) {
                            keep += 1;
                        }
                    }
                    if t.config.retention_bytes >= 0 {
                        let limit = t.config.retention_bytes as u64;
                        let mut bytes = p.bytes;
                        let mut o = start;
                        while o < end && bytes > limit {
                            bytes -= p.cq.get(o).map_or(0, |e| u64::from(e.size));
                            o += 1;
                        }
                        keep = keep.max(o);
                    }
                    if keep > start && out.len() < MAX_TRIMS_PER_ROUND {
                        out.push(Command::Trim {
                            topic: t.name.clone(),
                            incarnation: t.incarnation,
                            partition: i as u32,
                            start_offset: keep,
                        });
                    }
                }
            }
            out
        };
        for c in trims {
            self.propose(c).await;
        }
    }

    /// The first log index the state still needs (the oldest retained record
    /// of any partition), or one past the applied index when none is retained.
    fn first_needed(&self) -> u64 {
        let m = self.shared.read();
        let applied = m.last_applied.map_or(0, |l| l.index);
        m.state
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| p.cq.get(p.cq.start()).map(|e| e.log_index))
            .min()
            .unwrap_or(applied + 1)
            .min(applied + 1)
    }

    async fn compact(&self) -> anyhow::Result<()> {
        let x = self.first_needed();
        // Only worth a snapshot when at least one whole segment would go.
        let segments = self.store.segments();
        let deletable = segments.windows(2).any(|w| w[1].first_index <= x);
        if !deletable {
            return Ok(());
        }
        let current = *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none_or(|(start, _)| start < x) {
            self.shared.retain_from.fetch_max(x, Ordering::AcqRel);
            self.raft.trigger().snapshot().await?;
            let waited = tokio::time::timeout(SNAPSHOT_WAIT, async {
                loop {
                    let now = *self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner());
                    if now.is_some_and(|(start, _)| start >= x) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if waited.is_err() {
                anyhow::bail!("snapshot with log start {x} was not built within {SNAPSHOT_WAIT:?}");
            }
        }
        let (start, _) = self.shared.snapshot_range.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or((0, 0));
        let upto = start.min(x);
        if upto == 0 {
            return Ok(());
        }
        self.raft.trigger().purge_log(upto - 1).await?;
        // openraft purges in the background; the store refuses to delete
        // anything above its purge point, so deleting early is harmless.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _transfer = self.shared.transfer_lock.lock().await;
        let deleted = self.store.delete_below(upto).await?;
        if deleted > 0 {
            tracing::info!(deleted, below = upto, "retention deleted segments");
        }
        Ok(())
    }
}
