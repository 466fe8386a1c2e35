//! The proposer actor: packs concurrent produce batches into one Raft entry.
//!
//! openraft 0.9 appends every `client_write` on its own and waits for its
//! flush before the next append, so one request per entry would cost one
//! fsync per request. The proposer drains whatever batches are queued when
//! a slot frees up (at most `MAX_GROUP_BYTES` / `MAX_GROUP_BATCHES`) and
//! proposes them as one entry; with `MAX_IN_FLIGHT` entries in Raft at
//! once, the batches that arrive while one entry is being replicated and
//! fsynced form the next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::entry::GroupEncoder;
use super::raft_errors::{ProposeError, propose_error};
use super::state::{Applied, BatchOutcome};
use super::types::{Raft, Request, now_ms};

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

pub type Reply = Result<BatchOutcome, ProposeError>;

struct Propose {
    /// One encoded batch (see `entry::encode_batch`).
    batch: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub struct ProposerHandle {
    tx: mpsc::Sender<Propose>,
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
        tokio::spawn(Proposer { raft, rx, slots, max_entry_bytes, timeout, held: None }.run());
        Self { tx }
    }

    /// Propose one encoded batch; resolves once its entry is applied.
    pub async fn propose(&self, batch: Vec<u8>) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Propose { batch, reply }).await.map_err(|_| ProposeError::ShuttingDown)?;
        rx.await.map_err(|_| ProposeError::ShuttingDown)?
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
            let mut group = GroupEncoder::new();
            debug_assert!(
                group.encoded_bytes() + first.batch.len() <= self.max_entry_bytes,
                "batch larger than an entry"
            );
            group.push_encoded(&first.batch);
            let mut replies = vec![first.reply];
            while group.encoded_bytes() < GROUP_TARGET_BYTES && replies.len() < MAX_GROUP_BATCHES {
                match self.rx.try_recv() {
                    Ok(p) if group.encoded_bytes() + p.batch.len() > self.max_entry_bytes => {
                        self.held = Some(p);
                        break;
                    }
                    Ok(p) => {
                        group.push_encoded(&p.batch);
                        replies.push(p.reply);
                    }
                    Err(_) => break,
                }
            }
            let raft = self.raft.clone();
            let request = Request { timestamp_ms: now_ms(), payload: group.finish().into() };
            let timeout = self.timeout;
            tokio::spawn(async move {
                let result = tokio::time::timeout(timeout, raft.client_write(request)).await;
                drop(permit);
                match result {
                    Err(_) => {
                        for reply in replies {
                            let _ = reply.send(Err(ProposeError::OutcomeUnknown));
                        }
                    }
                    Ok(Ok(resp)) => match resp.data {
                        Applied::Batches(outcomes) if outcomes.len() == replies.len() => {
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
                    Ok(Err(e)) => {
                        let e = propose_error(&raft, e);
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    }
}
