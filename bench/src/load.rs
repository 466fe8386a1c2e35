//! The one load generator: `inflight` workers, each sending one message and
//! waiting for its acknowledgement before it sends the next, so exactly
//! `inflight` messages are outstanding at any time. A message's latency is
//! from the call that sends it to its ack, in a per-worker HdrHistogram.
//!
//! A point runs `warmup` unmeasured, then `duration` measured: a message
//! counts when it was sent at or after the start of the measured window and
//! acknowledged before its end. At the end workers stop sending; messages
//! still outstanding are awaited (each bounded by [`SEND_TIMEOUT`]) but not
//! counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_client::{Batcher, Durability, Producer, Record};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Longest a single send may take before it counts as an error.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an error, so a broken system is not hammered in a hot loop.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Bound on messages one worker sends in a point, far above what any point
/// reaches (a point lasts seconds).
const MAX_SENDS_PER_WORKER: u64 = 50_000_000;
/// Latency histogram bounds: 1 µs to one minute, 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// etcd keys a worker cycles through: a bounded key space keeps the index
/// small, while every put still makes a new revision (a full WAL write).
const ETCD_KEYS_PER_WORKER: u64 = 64;

/// One system's way of sending a message and waiting for its ack.
#[derive(Clone)]
pub enum Target {
    /// keel-client's batching producer: one record per send, batched by
    /// the client while a request is in flight (as Kafka's producer does).
    Keel { batcher: Batcher, topic: Arc<str>, expect: Durability },
    /// keel-client's idempotent producer, one record per Produce request:
    /// each worker gets a producer (id) of its own ([`Target::for_worker`]),
    /// so no worker's request waits on another's sequence.
    KeelProduce { producer: Producer, topic: Arc<str>, expect: Durability },
    /// A put per message, connected to the leader.
    Etcd { kv: etcd_client::KvClient },
    /// JetStream publish, then await the publish ack.
    Nats { js: async_nats::jetstream::Context, subject: Arc<str> },
    /// basic.publish on a confirm channel, then await the confirm.
    Rabbit { channel: lapin::Channel, queue: Arc<str> },
}

/// keel's ack must state the durability its flush policy promises.
fn check_durability(acked: Durability, expect: Durability) -> Result<(), String> {
    if acked != expect {
        return Err(format!("ack says {} where {} was configured", acked.as_str_name(), expect.as_str_name()));
    }
    Ok(())
}

impl Target {
    /// The target one worker drives: a clone, except that a
    /// [`Target::KeelProduce`] worker gets a fresh producer id, since clones
    /// of a `Producer` share one id and its sequences.
    fn for_worker(&self) -> Target {
        match self {
            Target::KeelProduce { producer, topic, expect } => {
                Target::KeelProduce { producer: producer.client().producer(), topic: topic.clone(), expect: *expect }
            }
            other => other.clone(),
        }
    }

    async fn send(&mut self, worker: usize, seq: u64, payload: &Bytes) -> Result<(), String> {
        match self {
            Target::Keel { batcher, topic, expect } => {
                let ack = batcher.send(topic, 0, Record::new(payload.clone())).await.map_err(|e| e.to_string())?;
                check_durability(ack.durability, *expect)
            }
            Target::KeelProduce { producer, topic, expect } => {
                let ack =
                    producer.produce(topic, 0, vec![Record::new(payload.clone())]).await.map_err(|e| e.to_string())?;
                check_durability(ack.durability, *expect)
            }
            Target::Etcd { kv } => {
                let key = format!("bench/{worker}/{}", seq % ETCD_KEYS_PER_WORKER);
                kv.put(key, payload.to_vec(), None).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Target::Nats { js, subject } => {
                let ack = js.publish(subject.to_string(), payload.clone()).await.map_err(|e| e.to_string())?;
                ack.await.map(|_| ()).map_err(|e| e.to_string())
            }
            Target::Rabbit { channel, queue } => {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_ref().into(),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match confirm.await.map_err(|e| e.to_string())? {
                    Confirmation::Ack(_) => Ok(()),
                    Confirmation::Nack(_) => Err("nacked by the broker".into()),
                    Confirmation::NotRequested => Err("no confirm requested (confirm_select missing)".into()),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub size: usize,
    pub inflight: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One point's figures; a results row carries them as they are (flattened).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub duration_s: f64,
    pub msgs_per_s: f64,
    pub mib_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    #[serde(skip)]
    pub first_error: Option<String>,
}

struct WorkerResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Incompressible-looking bytes (xorshift), the same for every system.
pub fn payload(size: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

pub async fn run_point(target: &Target, point: Point) -> Measured {
    let payload = payload(point.size);
    let start = Instant::now() + point.warmup;
    let end = start + point.duration;
    let mut workers = JoinSet::new();
    for worker in 0..point.inflight {
        let mut target = target.for_worker();
        let payload = payload.clone();
        workers.spawn(async move {
            let mut result = WorkerResult { histogram: new_histogram(), errors: 0, first_error: None };
            for seq in 0..MAX_SENDS_PER_WORKER {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = match tokio::time::timeout(SEND_TIMEOUT, target.send(worker, seq, &payload)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no ack within {} s", SEND_TIMEOUT.as_secs())),
                };
                let acked = Instant::now();
                match outcome {
                    Ok(()) if sent >= start && acked <= end => {
                        let us = u64::try_from((acked - sent).as_micros()).unwrap_or(u64::MAX);
                        result.histogram.saturating_record(us.max(1));
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if sent >= start {
                            result.errors += 1;
                            result.first_error.get_or_insert(e);
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            result
        });
    }
    let mut histogram = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(r) => {
                histogram.add(&r.histogram).expect("histograms with the same bounds add up");
                errors += r.errors;
                if first_error.is_none() {
                    first_error = r.first_error;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("a load worker failed: {e}"));
            }
        }
    }
    let duration_s = point.duration.as_secs_f64();
    let messages = histogram.len();
    let msgs_per_s = messages as f64 / duration_s;
    let quantile = |q: f64| if messages == 0 { 0 } else { histogram.value_at_quantile(q) };
    Measured {
        duration_s,
        msgs_per_s,
        mib_per_s: msgs_per_s * point.size as f64 / (1024.0 * 1024.0),
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        errors,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_asked_size_and_does_not_repeat_a_short_pattern() {
        for size in [1, 7, 1024, 65_536] {
            assert_eq!(payload(size).len(), size);
        }
        let p = payload(4096);
        assert_ne!(p[..8], p[8..16]);
    }
}
