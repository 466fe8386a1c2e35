//! The durable-index actor: the highest log index fsynced on a majority,
//! and the one place that says which policies wait for it
//! ([`waits_for_fsync`]; ARCHITECTURE.md, "The durability rule").
//!
//! **The rule.** Under SYNC_FLUSH and BATCH_FLUSH nothing counts toward a
//! commit, is applied, served or acknowledged before a majority has fsynced
//! it. openraft 0.10 makes that hold by construction: every node's append,
//! the leader's own included, completes only after the fsync that covers it
//! (`keel_raft_log::Store::append`: at once under SYNC_FLUSH, with the
//! batch under BATCH_FLUSH), a follower answers AppendEntries only once its
//! append completed, and the leader counts itself toward a commit only once
//! its own append completed. So openraft's commit index *is* the durable
//! index, on the leader and, as AppendEntries carry it, on followers; the
//! state machine applies what is committed, and nothing here needs to wait.
//!
//! Under ASYNC_FLUSH appends complete once written, so a commit means
//! "written on a majority": followers report their fsynced log id to the
//! leader over the peer service (`ReportSynced`, at once when it changes),
//! and the leader takes the majority-th highest over the voters, never above
//! the commit index; a report counts only if the leader's log holds the same
//! log id at that index. The durable index there only tells clients how far
//! a power cut cannot reach.
//!
//! Either way the actor also writes the committed id to the meta file about
//! once a second (`Store::flush_committed`): a restart re-applies up to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::raft as pb;
use keel_raft_log::{FlushPolicy, LogPos, Store};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{mpsc, watch};

use super::network::Peers;
use super::state_machine::Raft;
use super::types::Metrics;

/// Whether `policy` acknowledges and applies only what a majority has
/// fsynced (SYNC_FLUSH, BATCH_FLUSH), or what a majority has written
/// (ASYNC_FLUSH).
pub fn waits_for_fsync(policy: FlushPolicy) -> bool {
    policy != FlushPolicy::AsyncFlush
}

const MAILBOX: usize = 1024;
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

enum Msg {
    /// A follower's fsynced log id.
    Report { node: u64, synced: LogPos },
}

/// Cloneable handle; the actor ends when the last handle drops.
#[derive(Clone)]
pub struct DurableHandle {
    tx: mpsc::Sender<Msg>,
    durable: watch::Receiver<u64>,
}

impl DurableHandle {
    /// Start from `known`, an index known durable (the committed index read
    /// on open: under SYNC_FLUSH and BATCH_FLUSH only durable entries commit).
    pub fn start(node_id: u64, raft: Raft, store: Store, peers: Peers, known: u64) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let sender = Arc::new(watch::channel(known).0);
        let durable = sender.subscribe();
        let actor = Durable {
            node_id,
            policy: store.config().flush.policy,
            raft,
            store,
            peers,
            rx,
            reports: HashMap::new(),
            durable: sender,
        };
        tokio::spawn(actor.run());
        Self { tx, durable }
    }

    pub async fn report(&self, node: u64, synced: LogPos) {
        // A full mailbox only delays the durable index; the next report repeats it.
        let _ = self.tx.try_send(Msg::Report { node, synced });
    }

    /// The durable index as this node knows it (the leader's is exact).
    pub fn durable_index(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

struct Durable {
    node_id: u64,
    policy: FlushPolicy,
    raft: Raft,
    store: Store,
    peers: Peers,
    rx: mpsc::Receiver<Msg>,
    reports: HashMap<u64, u64>,
    /// Shared with the report task, which learns the leader's durable index.
    durable: Arc<watch::Sender<u64>>,
}

fn raise(durable: &watch::Sender<u64>, to: u64) {
    durable.send_if_modified(|d| {
        if to > *d {
            *d = to;
            true
        } else {
            false
        }
    });
}

impl Durable {
    async fn run(mut self) {
        let mut synced = self.store.subscribe_synced();
        let mut metrics = self.raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reporting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let mut report_now = false;
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Msg::Report { node, synced }) => self.accept(node, synced),
                    None => return,
                },
                // Only ASYNC_FLUSH reports its fsynced index; under the
                // others the commit index (the metrics) is the durable index,
                // and waking on every fsync would be work on the hot path.
                r = synced.changed(), if !waits_for_fsync(self.policy) => {
                    if r.is_err() {
                        return;
                    }
                    report_now = true;
                }
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    report_now = !waits_for_fsync(self.policy);
                    // The committed id on disk lags by about a second at
                    // most (`Store::flush_committed`): a restart re-applies
                    // up to it. A failure here is the store's fail-stop,
                    // which stops the node.
                    let _ = self.store.flush_committed().await;
                }
            }
            // One snapshot of the metrics serves both steps of this round.
            let m = metrics.borrow_and_update().clone();
            self.recompute(&m);
            if report_now && reporting.as_ref().is_none_or(|h| h.is_finished()) {
                reporting = self.report_to_leader(&m);
            }
        }
    }

    fn accept(&mut self, node: u64, synced: LogPos) {
        // Count it only if our log holds the same entry there.
        if self.store.log_pos_at(synced.index).ok().flatten() == Some(synced) {
            let e = self.reports.entry(node).or_insert(0);
            *e = (*e).max(synced.index);
        }
    }

    /// Recompute the durable index.
    fn recompute(&mut self, m: &Metrics) {
        let committed = self.store.read_committed().map_or(0, |c| c.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let commit = committed.max(applied);
        if waits_for_fsync(self.policy) {
            // The commit index means fsynced on a majority (the rule above).
            raise(&self.durable, commit);
            return;
        }
        if m.current_leader != Some(self.node_id) {
            // A follower learns the leader's figure from the answers to its reports.
            self.reports.clear();
            return;
        }
        let own = self.store.synced_index().unwrap_or(0);
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let reports = &self.reports;
        let durable = majority_fsynced(&voters, self.node_id, own, |v| reports.get(&v).copied().unwrap_or(0));
        raise(&self.durable, durable.min(commit));
    }

    /// Send our fsynced log id to the leader (one report in flight at a time).
    fn report_to_leader(&self, m: &Metrics) -> Option<tokio::task::JoinHandle<()>> {
        let leader = m.current_leader.filter(|&l| l != self.node_id)?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        let index = self.store.synced_index()?;
        let at = self.store.log_pos_at(index).ok()??;
        let req = pb::ReportSyncedRequest {
            node_id: self.node_id,
            synced: Some(pb::LogId { term: at.term, leader: at.leader, index: at.index }),
        };
        let mut client = self.peers.client(&addr, leader).ok()?;
        let durable = Arc::clone(&self.durable);
        Some(tokio::spawn(async move {
            if let Ok(Ok(r)) = tokio::time::timeout(REPORT_TIMEOUT, client.report_synced(req)).await {
                raise(&durable, r.into_inner().durable_index);
            }
        }))
    }
}

/// The highest index fsynced on a majority of `voters`: the majority-th
/// highest of `me`'s own fsynced index and every other voter's `fsynced`.
fn majority_fsynced(voters: &[u64], me: u64, own: u64, fsynced: impl Fn(u64) -> u64) -> u64 {
    let mut synced: Vec<u64> = voters.iter().map(|&v| if v == me { own } else { fsynced(v) }).collect();
    synced.sort_unstable_by(|a, b| b.cmp(a));
    let majority = synced.len() / 2 + 1;
    synced.get(majority - 1).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_index_is_what_a_majority_counting_the_leader_has_fsynced() {
        let followers = |v: u64| match v {
            2 => 8,
            3 => 5,
            _ => 0,
        };
        // The leader's copy fsynced ahead: the better follower decides.
        assert_eq!(majority_fsynced(&[1, 2, 3], 1, 10, followers), 8);
        // The leader's fsync behind: a majority without it counts.
        assert_eq!(majority_fsynced(&[1, 2, 3], 1, 6, followers), 6);
        assert_eq!(majority_fsynced(&[1, 2, 3], 1, 2, |v| if v == 2 { 8 } else { 7 }), 7);
        // Five voters need three.
        assert_eq!(majority_fsynced(&[1, 2, 3, 4, 5], 1, 9, |v| v), 4);
        // A learner (not a voter) never counts; a lone voter is its own majority.
        assert_eq!(majority_fsynced(&[1], 1, 4, |_| 100), 4);
        assert_eq!(majority_fsynced(&[], 1, 4, |_| 100), 0);
    }
}
