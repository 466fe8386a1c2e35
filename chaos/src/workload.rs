//! The workload: P producers, each sending unique payloads one at a time to
//! its own partition, recording every outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Client, Record};

use crate::checker::{Op, Outcome};

pub const TOPIC: &str = "chaos";

pub struct Workload {
    pub ops: Arc<Mutex<Vec<Op>>>,
    pub acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    client: Client,
    producers: u32,
    partitions: u32,
    run_id: u64,
    max_ops: u64,
    /// Producer sessions started so far (each a fresh producer id).
    sessions: Arc<AtomicU64>,
}

impl Workload {
    /// Start `producers` producers against `client`; each stops after
    /// `max_ops` sends or when told.
    pub fn start(client: Client, producers: u32, partitions: u32, run_id: u64, max_ops: u64) -> Self {
        let w = Self {
            ops: Arc::new(Mutex::new(Vec::new())),
            acked: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Mutex::new(Vec::new()),
            client,
            producers,
            partitions,
            run_id,
            max_ops,
            sessions: Arc::new(AtomicU64::new(0)),
        };
        w.resume();
        w
    }

    /// Start the producers again after [`Workload::pause`] (each as a new
    /// producer session).
    pub fn resume(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for p in 0..self.producers {
            let (client, ops, acked, stop, sessions) =
                (self.client.clone(), self.ops.clone(), self.acked.clone(), self.stop.clone(), self.sessions.clone());
            let (partitions, run_id, max_ops) = (self.partitions, self.run_id, self.max_ops);
            tasks.push(tokio::spawn(async move {
                let partition = p % partitions;
                let mut producer = client.producer();
                let mut session = sessions.fetch_add(1, Ordering::Relaxed);
                let mut seq = 0u64;
                for n in 0..max_ops {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let payload = format!("run{run_id}/p{p}/s{session}/{seq}");
                    // Keyed by itself: the final check looks records up by key.
                    let record = Record::new(payload.clone()).key(payload.clone());
                    // Recorded before it is sent: a send cut off by the
                    // end of the run, or by a pause, stays "unknown",
                    // never unrecorded.
                    let index = {
                        let mut ops = ops.lock().unwrap_or_else(|e| e.into_inner());
                        ops.push(Op { session, seq, partition, payload, outcome: Outcome::Unknown });
                        ops.len() - 1
                    };
                    let outcome = match producer.produce(TOPIC, partition, vec![record]).await {
                        Ok(ack) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            Outcome::Acked { offset: ack.base_offset, log_index: ack.log_index }
                        }
                        Err(e) if e.is_outcome_unknown() => Outcome::Unknown,
                        Err(e) => Outcome::Refused(e.to_string()),
                    };
                    let fresh_session = !matches!(outcome, Outcome::Acked { .. });
                    ops.lock().unwrap_or_else(|e| e.into_inner())[index].outcome = outcome;
                    seq += 1;
                    if fresh_session {
                        // After a failure the producer's sequence may have a
                        // gap the cluster refuses: go on as a new producer id.
                        producer = client.producer();
                        session = sessions.fetch_add(1, Ordering::Relaxed);
                        seq = 0;
                        tokio::time::sleep(Duration::from_millis(20 + n % 50)).await;
                    }
                }
            }));
        }
    }

    /// Stop every producer at once, sends in flight included (they stay
    /// "unknown": they may or may not be stored), so that nothing more is
    /// written, not even a client's retry, until [`Workload::resume`].
    pub async fn pause(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop sending and wait (bounded) for the sends in flight to end.
    pub async fn stop(self, timeout: Duration) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                eprintln!("keel-chaos: a producer did not finish its last send in time");
            }
        }
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
