//! The durable-index actor: the highest log index fsynced on a majority.
//!
//! Every node runs it. As a follower it reports its own fsynced log id to
//! the leader over the peer service (at once when it changes under
//! BATCH_FLUSH and ASYNC_FLUSH, where it matters for acks; once a second
//! under SYNC_FLUSH, where the leader needs no reports, below). As the
//! leader it combines the reports with its own fsynced index: the durable
//! index is the majority-th highest over the voters, never above the commit
//! index. A report counts only if the leader's log holds the same log id at
//! that index (so a follower's stale, since-truncated entries never count).
//!
//! Under SYNC_FLUSH no reports are needed: followers answer AppendEntries
//! only after their fdatasync, and the leader's own entries count for
//! openraft once written (`LogStore::leader_acks_on_write`), so an index is
//! fsynced on a majority once it is committed and at or below the leader's
//! fsynced index. The leader computes that; every AppendEntries carries it
//! to followers, as `durable_index` and as the commit openraft sees there
//! (`network::durable_commit`), so a follower never takes for committed an
//! entry a power cut of the leader could still take away. The state machine applies
//! an entry only once it is durable ([`Gate`]), so under SYNC_FLUSH whatever
//! a client sees (acks, fetches, lookups) is fsynced on a majority
//! (DESIGN.md, "Durable index").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_proto::raft as pb;
use keel_raft_log::{FlushPolicy, LogPos, Store};
use tokio::sync::{Notify, mpsc, watch};

use super::network::Peers;
use super::types::Raft;

type Metrics = openraft::RaftMetrics<u64, openraft::BasicNode>;

const MAILBOX: usize = 1024;
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a raised durable index may wait for replication traffic to
/// carry it before a heartbeat does (SYNC_FLUSH).
const NUDGE_AFTER: Duration = Duration::from_millis(5);

enum Msg {
    /// A follower's fsynced log id.
    Report { node: u64, synced: LogPos },
}

/// The durable index before the actor runs: the state machine needs its
/// [`Gate`] before Raft starts, the actor needs Raft.
pub struct Seed {
    durable: Arc<watch::Sender<u64>>,
    poke: Arc<Notify>,
    sent: Arc<AtomicU64>,
}

impl Seed {
    /// Starting from `known`, an index known durable (the committed index
    /// read on open: the store writes only a durable one).
    pub fn new(known: u64) -> Self {
        Self {
            durable: Arc::new(watch::channel(known).0),
            poke: Arc::new(Notify::new()),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Where the network notes the highest durable index an AppendEntries
    /// carried (SYNC_FLUSH), so the actor knows when followers lag it.
    pub fn sent(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sent)
    }

    pub fn gate(&self) -> Gate {
        Gate { durable: self.durable.subscribe(), poke: Arc::clone(&self.poke) }
    }
}

#[cfg(test)]
impl Seed {
    /// As if an AppendEntries had carried `index`.
    pub fn learned(&self, index: u64) {
        raise(&self.durable, index);
    }
}

/// What the state machine waits on, under SYNC_FLUSH, before it applies.
#[derive(Clone)]
pub struct Gate {
    durable: watch::Receiver<u64>,
    poke: Arc<Notify>,
}

impl Gate {
    /// Wait until `index` is fsynced on a majority. Err: the node is
    /// shutting down.
    pub async fn wait(&mut self, index: u64) -> Result<(), String> {
        if *self.durable.borrow() >= index {
            return Ok(());
        }
        // The actor learns of a new commit index through this poke (the
        // metrics need not change with it).
        self.poke.notify_one();
        match self.durable.wait_for(|&d| d >= index).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("the node stopped before log index {index} was durable")),
        }
    }
}

/// Cloneable handle; the actor ends when the last handle drops.
#[derive(Clone)]
pub struct DurableHandle {
    tx: mpsc::Sender<Msg>,
    durable: watch::Receiver<u64>,
    sender: Arc<watch::Sender<u64>>,
}

impl DurableHandle {
    pub fn start(node_id: u64, raft: Raft, store: Store, peers: Peers, seed: Seed) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let durable = seed.durable.subscribe();
        let actor = Durable {
            node_id,
            policy: store.config().flush.policy,
            raft,
            store,
            peers,
            rx,
            reports: HashMap::new(),
            durable: Arc::clone(&seed.durable),
            poke: seed.poke,
            sent: seed.sent,
        };
        tokio::spawn(actor.run());
        Self { tx, durable, sender: seed.durable }
    }

    /// The leader's durable index as an AppendEntries carried it: true of
    /// the cluster whichever leader sent it (durable entries are committed).
    pub fn learned(&self, index: u64) {
        raise(&self.sender, index);
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
    /// Shared with the report task and the peer service, which learn the
    /// leader's durable index.
    durable: Arc<watch::Sender<u64>>,
    /// The state machine waits for an index: recompute.
    poke: Arc<Notify>,
    /// The highest durable index an AppendEntries carried.
    sent: Arc<AtomicU64>,
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
        // SYNC_FLUSH: when the leader's durable index passes what the last
        // AppendEntries carried, a heartbeat shortly after tells followers
        // (unless replication traffic did meanwhile), so they need not wait
        // for the next heartbeat to apply.
        let mut nudge: Option<tokio::time::Instant> = None;
        loop {
            let mut report_now = false;
            let nudge_at = nudge.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(nudge_at), if nudge.is_some() => {
                    nudge = None;
                    if self.sent.load(Ordering::Acquire) < *self.durable.borrow() {
                        let _ = self.raft.trigger().heartbeat().await;
                    }
                    continue;
                }
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
                _ = self.poke.notified() => {}
                _ = tick.tick() => report_now = true,
            }
            // One snapshot of the metrics serves both steps of this round.
            let m = metrics.borrow_and_update().clone();
            let leads = self.recompute(&m);
            if leads
                && self.policy == FlushPolicy::SyncFlush
                && nudge.is_none()
                && self.sent.load(Ordering::Acquire) < *self.durable.borrow()
            {
                nudge = Some(tokio::time::Instant::now() + NUDGE_AFTER);
            }
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

    /// Recompute the durable index; whether this node leads.
    fn recompute(&mut self, m: &Metrics) -> bool {
        let committed = self.store.read_committed().map_or(0, |c| c.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let commit = committed.max(applied);
        let own = self.store.synced_index().unwrap_or(0);
        if m.current_leader != Some(self.node_id) {
            // A follower learns the leader's figure from AppendEntries
            // (SYNC_FLUSH) or from the answers to its reports.
            self.reports.clear();
            return false;
        }
        let durable = if self.policy == FlushPolicy::SyncFlush {
            // Followers' matches are fsynced; the leader's own may not be.
            commit.min(own)
        } else {
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
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_opens_only_once_the_index_is_durable_and_asks_for_a_recompute() {
        let seed = Seed::new(5);
        let mut gate = seed.gate();
        gate.wait(5).await.expect("at the seed: open");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), gate.wait(7)).await.is_err(),
            "index 7 is not durable yet"
        );
        // The waiting gate poked the actor, whose recompute may raise it.
        tokio::time::timeout(Duration::from_secs(5), seed.poke.notified()).await.expect("no poke");
        let waiter = tokio::spawn({
            let mut gate = seed.gate();
            async move { gate.wait(7).await }
        });
        raise(&seed.durable, 6);
        raise(&seed.durable, 8);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("not opened").expect("join").expect("open");
        // A durable index never goes back.
        raise(&seed.durable, 3);
        gate.wait(8).await.expect("still durable");
        // The node stopping is an error, not an open gate.
        let mut gate = seed.gate();
        drop(seed);
        assert!(gate.wait(9).await.is_err());
    }
}
