//! The durable-index actor: the highest log index fsynced on a majority.
//!
//! Every node runs it. As a follower it reports its own fsynced log id to
//! the leader over the peer service (at once when it changes under
//! BATCH_FLUSH and ASYNC_FLUSH, where it matters for acks; once a second
//! under SYNC_FLUSH, where the commit index already is durable). As the
//! leader it combines the reports with its own fsynced index: the durable
//! index is the majority-th highest over the voters, never above the commit
//! index. A report counts only if the leader's log holds the same log id at
//! that index (so a follower's stale, since-truncated entries never count).
//! Under SYNC_FLUSH the commit index is the durable index (DESIGN.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::raft as pb;
use keel_raft_log::{FlushPolicy, LogPos, Store};
use tokio::sync::{mpsc, watch};

use super::network::Peers;
use super::types::Raft;

type Metrics = openraft::RaftMetrics<u64, openraft::BasicNode>;

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
    pub fn start(node_id: u64, raft: Raft, store: Store, peers: Peers) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let (durable_tx, durable) = watch::channel(0);
        let actor = Durable {
            node_id,
            policy: store.config().flush.policy,
            raft,
            store,
            peers,
            rx,
            reports: HashMap::new(),
            durable: Arc::new(durable_tx),
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
                r = synced.changed() => {
                    if r.is_err() {
                        return;
                    }
                    report_now = self.policy != FlushPolicy::SyncFlush;
                }
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => report_now = true,
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
        let ours = self.store.read_range(synced.index, synced.index.saturating_add(1), 0).ok();
        let same = ours
            .and_then(|r| r.into_iter().next())
            .is_some_and(|r| r.index == synced.index && r.term == synced.term && r.leader == synced.leader);
        if same {
            let e = self.reports.entry(node).or_insert(0);
            *e = (*e).max(synced.index);
        }
    }

    fn recompute(&mut self, m: &Metrics) {
        let committed = self.store.read_committed().map_or(0, |c| c.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let commit = committed.max(applied);
        if m.current_leader != Some(self.node_id) {
            self.reports.clear();
            // A follower knows its commit index, which under SYNC_FLUSH is
            // durable; otherwise it learns the leader's figure from reports.
            if self.policy == FlushPolicy::SyncFlush {
                raise(&self.durable, commit);
            }
            return;
        }
        let durable = if self.policy == FlushPolicy::SyncFlush {
            commit
        } else {
            let own = self.store.synced_index().unwrap_or(0);
            let mut synced: Vec<u64> = m
                .membership_config
                .membership()
                .voter_ids()
                .map(|v| if v == self.node_id { own } else { self.reports.get(&v).copied().unwrap_or(0) })
                .collect();
            synced.sort_unstable_by(|a, b| b.cmp(a));
            let majority = synced.len() / 2 + 1;
            synced.get(majority - 1).copied().unwrap_or(0).min(commit)
        };
        raise(&self.durable, durable);
    }

    /// Send our fsynced log id to the leader (one report in flight at a time).
    fn report_to_leader(&self, m: &Metrics) -> Option<tokio::task::JoinHandle<()>> {
        let leader = m.current_leader.filter(|&l| l != self.node_id)?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        let index = self.store.synced_index()?;
        let rec = self.store.read_range(index, index + 1, 0).ok()?.into_iter().next()?;
        let req = pb::ReportSyncedRequest {
            node_id: self.node_id,
            synced: Some(pb::LogId { term: rec.term, leader: rec.leader, index: rec.index }),
        };
        let mut client = self.peers.client(&addr).ok()?;
        let durable = Arc::clone(&self.durable);
        Some(tokio::spawn(async move {
            if let Ok(Ok(r)) = tokio::time::timeout(REPORT_TIMEOUT, client.report_synced(req)).await {
                raise(&durable, r.into_inner().durable_index);
            }
        }))
    }
}
