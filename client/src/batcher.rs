//! The batching producer: records sent one at a time travel in batches, as
//! Kafka's producer does (its `batch.size` and `linger.ms`).
//!
//! Each (topic, partition) has a queue and at most one request in flight.
//! While a request is out, records queue up; when it is answered, everything
//! queued (up to [`BatchOptions::max_records`] / [`BatchOptions::max_bytes`])
//! goes out as the next request. With one request in flight per partition,
//! a producer's records are stored in the order it sent them, and every
//! request is an idempotent [`Producer`] batch (its retries never store
//! twice). An idle partition sends a lone record at once (no linger).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::{Durability, Error, Producer, Record, Result};

/// Bounds of one request built from queued records.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_records: usize,
    /// Approximate encoded bytes ([`Record::approx_bytes`]).
    pub max_bytes: usize,
    /// Records queued per partition beyond which `send` waits for room.
    pub max_queued: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { max_records: 10_000, max_bytes: 1 << 20, max_queued: 100_000 }
    }
}

/// Where one record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAck {
    pub offset: u64,
    pub durability: Durability,
    pub durable_index: u64,
    pub log_index: u64,
    pub duplicate: bool,
}

/// Scheduler turns a partition's sender waits before it takes a batch.
const LINGER_YIELDS: usize = 2;

type Waiter = oneshot::Sender<Result<RecordAck>>;

#[derive(Default)]
struct Queue {
    records: VecDeque<(Record, Waiter)>,
    sending: bool,
}

/// Cheap to clone; clones share the producer and the queues.
#[derive(Clone)]
pub struct Batcher {
    producer: Producer,
    options: BatchOptions,
    queues: Arc<Mutex<HashMap<(String, u32), Queue>>>,
    room: Arc<tokio::sync::Notify>,
}

impl Batcher {
    pub fn new(producer: Producer, options: BatchOptions) -> Self {
        Self { producer, options, queues: Arc::default(), room: Arc::default() }
    }

    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Queue one record; resolves when its batch is acknowledged (or failed:
    /// every record of a failed batch gets the batch's error).
    pub async fn send(&self, topic: &str, partition: u32, record: Record) -> Result<RecordAck> {
        let (tx, rx) = oneshot::channel();
        let mut item = Some((record, tx));
        loop {
            let notified = self.room.notified();
            {
                let mut queues = self.queues.lock().expect("no code panics while holding the queues");
                let q = queues.entry((topic.to_string(), partition)).or_default();
                if q.records.len() < self.options.max_queued {
                    q.records.push_back(item.take().expect("queued once"));
                    if !q.sending {
                        q.sending = true;
                        tokio::spawn(self.clone().drain(topic.to_string(), partition));
                    }
                    break;
                }
            }
            notified.await;
        }
        rx.await.map_err(|_| Error::Protocol("the batcher dropped a record without an answer".into()))?
    }

    /// Send what the partition's queue holds, batch after batch, until it is empty.
    async fn drain(self, topic: String, partition: u32) {
        loop {
            // Let senders that are running right now (typically a burst of
            // callers answered by the previous batch) queue their records, so
            // they ride in this request instead of waiting for the next.
            for _ in 0..LINGER_YIELDS {
                tokio::task::yield_now().await;
            }
            let batch: Vec<(Record, Waiter)> = {
                let mut queues = self.queues.lock().expect("no code panics while holding the queues");
                let q = queues.get_mut(&(topic.clone(), partition)).expect("a draining queue exists");
                let mut bytes = 0;
                let mut n = 0;
                for (r, _) in &q.records {
                    if n > 0 && (n >= self.options.max_records || bytes + r.approx_bytes() > self.options.max_bytes) {
                        break;
                    }
                    bytes += r.approx_bytes();
                    n += 1;
                }
                if n == 0 {
                    q.sending = false;
                    return;
                }
                q.records.drain(..n).collect()
            };
            self.room.notify_waiters();
            let (records, waiters): (Vec<Record>, Vec<Waiter>) = batch.into_iter().unzip();
            match self.producer.produce(&topic, partition, records).await {
                Ok(ack) => {
                    for (i, w) in waiters.into_iter().enumerate() {
                        let _ = w.send(Ok(RecordAck {
                            offset: ack.base_offset + i as u64,
                            durability: ack.durability,
                            durable_index: ack.durable_index,
                            log_index: ack.log_index,
                            duplicate: ack.duplicate,
                        }));
                    }
                }
                Err(e) => {
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}
