//! The durable-index actor: the highest log index fsynced on a majority,
//! and the one place that says which policies wait for it
//! ([`waits_for_fsync`]; ARCHITECTURE.md, "The durability rule").
//!
//! **The rule.** Under SYNC_FLUSH and BATCH_FLUSH nothing counts toward a
//! commit, is applied, served or acknowledged before a majority has fsynced
//! it:
//! - a follower answers AppendEntries only once its fsync covers the
//!   entries (`LogStore::leader_acks_on_write`: its appends complete after
//!   their fsync under both policies), so the leader's matched index of a
//!   follower is that follower's fsynced index;
//! - the leader's own entries count for openraft once written (openraft
//!   0.9's core waits for each append's flush; the leader's fsync runs on,
//!   at once under SYNC_FLUSH, on the batch's count or interval under
//!   BATCH_FLUSH), so openraft's commit index may count the leader's
//!   unsynced copy. The leader therefore computes the **durable index**: the
//!   majority-th highest over the voters of (its own fsynced index, each
//!   follower's matched index), never above the commit index;
//! - the state machine applies an entry only once the durable index covers
//!   it ([`Gate`]), so acks, fetches and lookups show only majority-fsynced
//!   data;
//! - every AppendEntries carries, as the commit followers see, the log id
//!   at the durable index (`network::durable_commit`), never openraft's raw
//!   commit: Raft takes a follower's committed entries as permanent, and an
//!   entry only the leader's unsynced copy made committed can still be lost
//!   to a power cut of the leader and replaced.
//!
//! Under ASYNC_FLUSH followers answer once written, so matched indexes say
//! nothing of fsyncs: followers report their fsynced log id to the leader
//! over the peer service (`ReportSynced`, at once when it changes), and the
//! leader takes the majority-th highest over the voters, never above the
//! commit index; a report counts only if the leader's log holds the same log
//! id at that index. Acks there mean "written on a majority" and the state
//! machine applies what is committed: the durable index only tells clients
//! how far a power cut cannot reach.

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

/// Whether `policy` acknowledges, applies and gives followers as committed
/// only what a majority has fsynced (SYNC_FLUSH, BATCH_FLUSH), or what a
/// majority has written (ASYNC_FLUSH).
pub fn waits_for_fsync(policy: FlushPolicy) -> bool {
    policy != FlushPolicy::AsyncFlush
}

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
    /// carried, so the actor knows when followers lag it.
    pub fn sent(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sent)
    }

    /// The durable index as it changes (the network gives followers the
    /// log id there as their commit).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
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

/// What the state machine waits on, under SYNC_FLUSH and BATCH_FLUSH,
/// before it applies.
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
        // When the leader's durable index passes what the last
        // AppendEntries carried, a heartbeat shortly after tells followers
        // (unless replication traffic did meanwhile), so they need not wait
        // for the next heartbeat to apply (SYNC_FLUSH, BATCH_FLUSH).
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
                    report_now = !waits_for_fsync(self.policy);
                }
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = self.poke.notified() => {}
                _ = tick.tick() => {
                    report_now = true;
                    // The committed id on disk lags by about a second at
                    // most (`Store::flush_committed`): a restart re-applies
                    // up to it. A failure here is the store's fail-stop,
                    // which stops the node.
                    let _ = self.store.flush_committed().await;
                }
            }
            // One snapshot of the metrics serves both steps of this round.
            let m = metrics.borrow_and_update().clone();
            let leads = self.recompute(&m);
            if leads
                && waits_for_fsync(self.policy)
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
            // (SYNC_FLUSH, BATCH_FLUSH) or from the answers to its reports.
            self.reports.clear();
            return false;
        }
        let matched = |v: u64| -> u64 {
            if waits_for_fsync(self.policy) {
                // A follower's matched index is fsynced there (the rule above).
                m.replication.as_ref().and_then(|r| r.get(&v).copied().flatten()).map_or(0, |l| l.index)
            } else {
                self.reports.get(&v).copied().unwrap_or(0)
            }
        };
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let durable = majority_fsynced(&voters, self.node_id, own, matched).min(commit);
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
        // The leader's fsync behind (BATCH_FLUSH): a majority without it counts.
        assert_eq!(majority_fsynced(&[1, 2, 3], 1, 6, followers), 6);
        assert_eq!(majority_fsynced(&[1, 2, 3], 1, 2, |v| if v == 2 { 8 } else { 7 }), 7);
        // Five voters need three.
        assert_eq!(majority_fsynced(&[1, 2, 3, 4, 5], 1, 9, |v| v), 4);
        // A learner (not a voter) never counts; a lone voter is its own majority.
        assert_eq!(majority_fsynced(&[1], 1, 4, |_| 100), 4);
        assert_eq!(majority_fsynced(&[], 1, 4, |_| 100), 0);
    }

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
