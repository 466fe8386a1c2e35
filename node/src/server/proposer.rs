//! The proposer actor: packs concurrent produce batches into one Raft entry.
//!
//! One Raft entry per produce request would cost a Raft round (an
//! AppendEntries, a state-machine apply, an answer) per request. The
//! proposer drains whatever batches are queued when a slot frees up (at
//! most `MAX_GROUP_BYTES` / `MAX_GROUP_BATCHES`) and proposes them as one
//! entry; with `MAX_IN_FLIGHT` entries in Raft at once (openraft 0.10 keeps
//! appends and replication pipelined, and the log's flusher groups their
//! fsyncs), the batches that arrive while entries are being replicated and
//! fsynced form the next.
//!
//! # Sequence order
//!
//! The state machine stores an idempotent producer's batch only at the
//! next sequence (`state.rs`). One producer's concurrent requests for a
//! partition reach this node in order but its handlers in any order (HTTP/2
//! streams are served side by side), and a batch proposed ahead of its
//! predecessor is refused as a gap: the client must send it again, and
//! every batch after it with it. So the handle's **gate** puts each
//! producer's batches for a partition into the mailbox in sequence order: a
//! batch ahead of the sequence the gate expects (the end of the last one
//! let through, or the applied state's when that is further) waits up to
//! `HOLD` for its predecessor, then goes anyway. A batch refused when
//! applied sets the gate back to its first sequence, so the client's
//! resends are ordered too. The gate is this leader's guess only; the
//! state machine judges. Entries then reach Raft in the order they were
//! packed: submitted from the actor's loop, not from the tasks that wait
//! for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use openraft::error::RaftError;

use super::entry::GroupEncoder;
use super::raft_errors::{ProposeError, propose_error, stopped_error};
use super::state::{Applied, BatchOutcome};
use super::state_machine::Raft;
use super::types::{Request, now_ms};

const MAILBOX: usize = 16_384;
/// Stop adding batches to an entry past this size (one batch may be larger).
pub const GROUP_TARGET_BYTES: usize = 1 << 20;
/// Largest single produce request, encoded.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
const MAX_GROUP_BATCHES: usize = 4096;
/// Entries proposed and not yet applied. Measured with `keel bench produce
/// --inflight 64` (4 producers, SYNC_FLUSH, three nodes on one disk):
/// 1 → 44k msg/s, 2 → 53k, 4 → 68–72k, 8 → 48k (entries too small again).
const MAX_IN_FLIGHT: usize = 4;
/// How long a batch that reached the gate ahead of its predecessor waits
/// for it. Handlers overtake each other by microseconds to a few
/// milliseconds; a predecessor that takes longer was most likely refused
/// before proposing, and its successor will be refused as a gap anyway.
const HOLD: Duration = Duration::from_millis(50);
/// Streams (producer id, topic, partition) the gate keeps; past this it
/// forgets those idle for `GATE_IDLE`, and if that is not enough, all.
const GATE_STREAMS: usize = 65_536;
const GATE_IDLE: Duration = Duration::from_secs(60);

pub type Reply = Result<BatchOutcome, ProposeError>;

/// Where an idempotent batch stands in its producer's sequence for its
/// partition, for the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceOrder {
    pub producer_id: u64,
    pub topic: String,
    pub partition: u32,
    pub first_sequence: u64,
    pub count: u64,
    /// The sequence the applied state expects next, if it knows the producer.
    pub applied_next: Option<u64>,
}

impl SequenceOrder {
    fn stream(&self) -> Stream {
        (self.producer_id, self.topic.clone(), self.partition)
    }
}

type Stream = (u64, String, u32);

/// The gate's view of one stream.
struct Turn {
    /// Where the next batch should start: the end of the last one let
    /// through, or the first of one refused since.
    next: u64,
    used: Instant,
}

/// See the module doc.
#[derive(Default)]
struct Gate {
    streams: HashMap<Stream, Turn>,
    /// Woken whenever a stream's turn moves on.
    moved: Arc<Notify>,
}

impl Gate {
    /// Whether `order` must wait for a predecessor.
    fn ahead(&self, order: &SequenceOrder) -> bool {
        let known = self.streams.get(&order.stream()).map(|t| t.next);
        let expected = match (known, order.applied_next) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        expected.is_some_and(|e| order.first_sequence > e)
    }

    /// `order` goes into the mailbox now.
    fn let_through(&mut self, order: &SequenceOrder) {
        if self.streams.len() >= GATE_STREAMS && !self.streams.contains_key(&order.stream()) {
            let now = Instant::now();
            self.streams.retain(|_, t| now.duration_since(t.used) < GATE_IDLE);
            if self.streams.len() >= GATE_STREAMS {
                self.streams.clear();
            }
        }
        let end = order.first_sequence.saturating_add(order.count);
        let turn = self.streams.entry(order.stream()).or_insert(Turn { next: end, used: Instant::now() });
        turn.next = turn.next.max(end);
        turn.used = Instant::now();
        self.moved.notify_waiters();
    }

    /// `order` was applied and refused: nothing of it is stored, so the
    /// stream goes on from its first sequence at the latest.
    fn refused(&mut self, order: &SequenceOrder) {
        if let Some(turn) = self.streams.get_mut(&order.stream()) {
            turn.next = turn.next.min(order.first_sequence);
        }
    }
}

struct Propose {
    /// One encoded batch (see `entry::encode_batch`).
    batch: Vec<u8>,
    /// `None`: not idempotent.
    order: Option<SequenceOrder>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub struct ProposerHandle {
    tx: mpsc::Sender<Propose>,
    /// In the handle rather than the actor: it orders batches before they
    /// enter the mailbox, whose order is all the actor sees. The actor's
    /// reply tasks set it back after refusals.
    gate: Arc<Mutex<Gate>>,
}

fn lock(gate: &Mutex<Gate>) -> MutexGuard<'_, Gate> {
    gate.lock().expect("no code panics while holding the gate")
}

impl ProposerHandle {
    /// `max_entry_bytes`: the largest payload the log store takes (it
    /// depends on `segment.bytes`); a group never grows past it.
    /// `timeout`: how long an entry may take to apply before its slot is
    /// freed and its batches are answered "outcome unknown" (openraft never
    /// answers a deposed leader's write that a snapshot overtook).
    pub fn start(raft: Raft, max_entry_bytes: usize, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let gate = Arc::new(Mutex::new(Gate::default()));
        tokio::spawn(Proposer { raft, rx, slots, max_entry_bytes, timeout, held: None, gate: Arc::clone(&gate) }.run());
        Self { tx, gate }
    }

    /// Propose one encoded batch (an idempotent one in its producer's
    /// order, see the module doc); resolves once its entry is applied.
    pub async fn propose(&self, batch: Vec<u8>, order: Option<SequenceOrder>) -> Reply {
        let (reply, rx) = oneshot::channel();
        let propose = Propose { batch, order, reply };
        match propose.order.clone() {
            None => self.tx.send(propose).await.map_err(|_| ProposeError::ShuttingDown)?,
            Some(order) => self.enqueue_in_turn(propose, &order).await?,
        }
        rx.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Into the mailbox once `order`'s predecessor went (or `HOLD` passed).
    async fn enqueue_in_turn(&self, propose: Propose, order: &SequenceOrder) -> Result<(), ProposeError> {
        let deadline = Instant::now() + HOLD;
        let moved = Arc::clone(&lock(&self.gate).moved);
        let mut propose = Some(propose);
        loop {
            // Armed before looking, so a turn that moves in between still wakes us.
            let notified = moved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let full = {
                let mut gate = lock(&self.gate);
                if gate.ahead(order) && Instant::now() < deadline {
                    None
                } else {
                    gate.let_through(order);
                    // Sent under the lock, so batches of one stream enter
                    // the mailbox in the order the gate let them through.
                    match self.tx.try_send(propose.take().expect("sent once, then the loop ends")) {
                        Ok(()) => return Ok(()),
                        Err(TrySendError::Closed(_)) => return Err(ProposeError::ShuttingDown),
                        Err(TrySendError::Full(propose)) => Some(propose),
                    }
                }
            };
            if let Some(propose) = full {
                // 16384 batches queued: order is the least of the worries.
                return self.tx.send(propose).await.map_err(|_| ProposeError::ShuttingDown);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

struct Proposer {
    raft: Raft,
    rx: mpsc::Receiver<Propose>,
    slots: Arc<Semaphore>,
    max_entry_bytes: usize,
    timeout: Duration,
    /// A batch that did not fit the last group: it starts the next one.
    held: Option<Propose>,
    gate: Arc<Mutex<Gate>>,
}

impl Proposer {
    async fn run(mut self) {
        loop {
            let first = match self.held.take() {
                Some(p) => p,
                None => match self.rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let Ok(permit) = self.slots.clone().acquire_owned().await else { return };
            // Drain what queued up while we waited for a slot. The client
            // service refused any single batch larger than an entry, so the
            // first always fits.
            // `bytes` counts the group as encoded: its header, then the batches.
            let mut bytes = GroupEncoder::new().encoded_bytes() + first.batch.len();
            debug_assert!(bytes <= self.max_entry_bytes, "batch larger than an entry");
            let mut batches = vec![first];
            while bytes < GROUP_TARGET_BYTES && batches.len() < MAX_GROUP_BATCHES {
                match self.rx.try_recv() {
                    Ok(p) if bytes + p.batch.len() > self.max_entry_bytes => {
                        self.held = Some(p);
                        break;
                    }
                    Ok(p) => {
                        bytes += p.batch.len();
                        batches.push(p);
                    }
                    Err(_) => break,
                }
            }
            let mut group = GroupEncoder::new();
            let mut replies = Vec::with_capacity(batches.len());
            let mut orders = Vec::with_capacity(batches.len());
            for p in batches {
                group.push_encoded(&p.batch);
                replies.push(p.reply);
                orders.push(p.order);
            }
            debug_assert_eq!(group.encoded_bytes(), bytes);
            let request = Request { timestamp_ms: now_ms(), payload: group.finish().into() };
            // Submitted here, in packing order; only the wait is spawned.
            let (responder, answer) = openraft::impls::ProgressResponder::complete_only();
            let submitted = self.raft.client_write_ff(request, Some(responder)).await.map(|()| answer);
            let raft = self.raft.clone();
            let timeout = self.timeout;
            let gate = Arc::clone(&self.gate);
            tokio::spawn(async move {
                let result = match submitted {
                    Err(fatal) => Err(propose_error(&raft, RaftError::Fatal(fatal))),
                    Ok(answer) => match tokio::time::timeout(timeout, answer).await {
                        Err(_) => Err(ProposeError::OutcomeUnknown),
                        // Raft dropped the responder: it stopped.
                        Ok(Err(_)) => Err(stopped_error(&raft)),
                        Ok(Ok(Err(e))) => Err(propose_error(&raft, RaftError::APIError(e))),
                        Ok(Ok(Ok(resp))) => Ok(resp),
                    },
                };
                drop(permit);
                match result {
                    Ok(resp) => match resp.data {
                        Applied::Batches(outcomes) if outcomes.len() == replies.len() => {
                            {
                                // Before the answers go out, so resends find the gate set back.
                                let mut gate = lock(&gate);
                                for (order, outcome) in orders.iter().zip(&outcomes) {
                                    if let (Some(order), BatchOutcome::Rejected(_)) = (order, outcome) {
                                        gate.refused(order);
                                    }
                                }
                            }
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(outcome));
                            }
                        }
                        other => {
                            let e = ProposeError::Internal(format!("produce entry applied as {other:?}"));
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    },
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(first_sequence: u64, applied_next: Option<u64>) -> SequenceOrder {
        SequenceOrder { producer_id: 7, topic: "t".into(), partition: 0, first_sequence, count: 4, applied_next }
    }

    /// A handle whose mailbox the test reads itself (no Raft behind it).
    fn handle() -> (ProposerHandle, mpsc::Receiver<Propose>) {
        let (tx, rx) = mpsc::channel(16);
        (ProposerHandle { tx, gate: Arc::default() }, rx)
    }

    fn firsts(rx: &mut mpsc::Receiver<Propose>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|p| p.order.map(|o| o.first_sequence)).collect()
    }

    #[test]
    fn the_gate_holds_only_batches_ahead_of_what_it_or_the_state_expects() {
        let mut gate = Gate::default();
        // Phase: a stream neither knows goes at any sequence, and sets the turn.
        assert!(!gate.ahead(&order(100, None)));
        gate.let_through(&order(100, None));
        assert!(gate.ahead(&order(108, None)), "a gap after 100..104");
        assert!(!gate.ahead(&order(104, None)) && !gate.ahead(&order(0, None)), "next, or behind");
        // Phase: the applied state's expectation counts when it is further.
        assert!(!gate.ahead(&order(108, Some(108))));
        assert!(gate.ahead(&order(108, Some(50))));
        // Phase: a refused batch sets the turn back to its first sequence.
        gate.let_through(&order(104, None));
        gate.refused(&order(104, None));
        assert!(gate.ahead(&order(108, None)) && !gate.ahead(&order(104, None)));
    }

    #[tokio::test]
    async fn batches_of_one_stream_enter_the_mailbox_in_sequence_order() {
        // Phase: the state expects 0; 4 and 8 arrive before 0.
        let (h, mut rx) = handle();
        let send = |first: u64| {
            let h = h.clone();
            async move {
                let (reply, _) = oneshot::channel();
                let p = Propose { batch: vec![], order: Some(order(first, Some(0))), reply };
                h.enqueue_in_turn(p, &order(first, Some(0))).await
            }
        };
        let (a, b, c) = tokio::join!(send(8), send(4), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            send(0).await
        });
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(firsts(&mut rx), [0, 4, 8]);
        // Phase: a batch whose predecessor never comes goes after HOLD.
        let started = Instant::now();
        send(100).await.expect("mailbox open");
        assert!(started.elapsed() >= HOLD, "{:?}", started.elapsed());
        assert_eq!(firsts(&mut rx), [100]);
    }
}
