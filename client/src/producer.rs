//! The idempotent producer: a random producer id and, per partition, the
//! next sequence number. A batch takes a range of sequences once; every
//! retry of it sends the same id and range, so the leader stores it at most
//! once and answers a retry with the first attempt's offsets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keel_proto::client as proto;
use rand::Rng;

use crate::nodes::Route;
use crate::{Client, Error, ProduceAck, Record, Result};

/// Produces to any topic and partition; cheap to clone (clones share the
/// id and the sequences, so they may produce concurrently).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    client: Client,
    id: u64,
    /// (topic, partition) → the sequence the next batch starts at.
    next_sequence: Mutex<HashMap<(String, u32), u64>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer with a fresh random id.
    pub fn new(client: Client) -> Self {
        // Zero means "not idempotent" on the wire, so it is never drawn.
        let id = rand::rng().random_range(1..=u64::MAX);
        Self::with_id(client, id).expect("a random id from 1..=MAX is not zero")
    }

    /// A producer with a chosen id (for instance one kept across restarts
    /// together with its sequences; see [`Producer::reserve`]).
    pub fn with_id(client: Client, id: u64) -> Result<Self> {
        if id == 0 {
            return Err(Error::InvalidArgument("producer id 0 means no idempotence; pick another".into()));
        }
        Ok(Self { inner: Arc::new(ProducerInner { client, id, next_sequence: Mutex::new(HashMap::new()) }) })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Takes `count` sequences of a partition and returns the first. Each
    /// call gets a range no other call gets, whatever runs concurrently.
    pub fn reserve(&self, topic: &str, partition: u32, count: u64) -> Result<u64> {
        let mut next = self.inner.next_sequence.lock().expect("no code panics while holding the sequence lock");
        let slot = next.entry((topic.to_string(), partition)).or_insert(0);
        let first = *slot;
        *slot = first
            .checked_add(count)
            .ok_or_else(|| Error::InvalidArgument(format!("producer sequences of {topic}/{partition} exhausted")))?;
        Ok(first)
    }

    /// Appends `records` to one partition, in order, exactly once: retries
    /// (after NOT_LEADER, NO_LEADER, a lost connection, OUTCOME_UNKNOWN, ...)
    /// resend the same producer id and sequence until the deadline.
    ///
    /// Past the deadline the error is [`Error::OutcomeUnknown`] if any
    /// attempt may have stored the batch, [`Error::Unavailable`] if none can
    /// have; a definite refusal is [`Error::Server`] at once.
    pub async fn produce(&self, topic: &str, partition: u32, records: Vec<Record>) -> Result<ProduceAck> {
        check_batch(topic, &records)?;
        let first_sequence = self.reserve(topic, partition, records.len() as u64)?;
        self.produce_at(topic, partition, first_sequence, records).await
    }

    /// [`Producer::produce`] with a sequence range the caller reserved
    /// itself: sending the same batch at the same sequence again (after an
    /// `OutcomeUnknown`, say) returns the first attempt's offsets.
    pub async fn produce_at(
        &self,
        topic: &str,
        partition: u32,
        first_sequence: u64,
        records: Vec<Record>,
    ) -> Result<ProduceAck> {
        check_batch(topic, &records)?;
        let request = proto::ProduceRequest {
            topic: topic.to_string(),
            partition,
            records: records.into_iter().map(Into::into).collect(),
            producer_id: self.inner.id,
            first_sequence,
        };
        let client = &self.inner.client;
        let response = client
            .call(client.spec(Route::Leader, true), request, |mut c, r| async move { c.produce(r).await })
            .await?;
        Ok(ProduceAck::from_response(topic.to_string(), partition, response))
    }
}

fn check_batch(topic: &str, records: &[Record]) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::InvalidArgument("topic name is empty".into()));
    }
    if records.is_empty() {
        return Err(Error::InvalidArgument("a produce request needs at least one record".into()));
    }
    if u32::try_from(records.len()).is_err() {
        return Err(Error::InvalidArgument(format!("{} records in one request; split the batch", records.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> Producer {
        let client = Client::connect(vec!["127.0.0.1:1".into()]).expect("a valid address");
        Producer::new(client)
    }

    #[test]
    fn ids_are_never_zero() {
        assert!(Producer::with_id(Client::connect(vec!["a:1".into()]).expect("valid"), 0).is_err());
        for _ in 0..100 {
            assert_ne!(producer().id(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_never_overlap_and_leave_no_gap() {
        // Phase: 16 tasks each take 200 ranges of 1..=7 sequences on two partitions.
        let p = producer();
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..200u64 {
                    let count = 1 + (t + i) % 7;
                    let partition = (i % 2) as u32;
                    let first = p.reserve("orders", partition, count).expect("no overflow");
                    got.push((partition, first, count));
                    tokio::task::yield_now().await;
                }
                got
            }));
        }
        let mut ranges: Vec<(u32, u64, u64)> = Vec::new();
        for t in tasks {
            ranges.extend(t.await.expect("reserving task does not panic"));
        }
        // Phase: per partition, the ranges sorted by start tile 0..total exactly.
        ranges.sort();
        for partition in 0..2 {
            let mut expected = 0;
            for &(_, first, count) in ranges.iter().filter(|r| r.0 == partition) {
                assert_eq!(first, expected, "partition {partition}: overlap or gap at {first}");
                expected = first + count;
            }
            assert!(expected > 0);
        }
        // Phase: other topics have their own counters.
        assert_eq!(p.reserve("other", 0, 1).ok(), Some(0));
    }

    #[test]
    fn an_exhausted_counter_is_an_error_not_a_wrap() {
        let p = producer();
        assert_eq!(p.reserve("t", 0, u64::MAX).ok(), Some(0));
        assert!(p.reserve("t", 0, 1).is_err());
    }

    #[test]
    fn empty_batches_and_names_are_refused_before_sending() {
        assert!(check_batch("t", &[]).is_err());
        assert!(check_batch("", &[Record::new("x")]).is_err());
        assert!(check_batch("t", &[Record::new("x")]).is_ok());
    }
}
