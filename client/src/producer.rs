//! The idempotent producer: a random producer id and, per partition, the
//! next sequence number. A batch takes a range of sequences once; every
//! retry of it sends the same id and range, so the leader stores it at most
//! once and answers a retry with the first attempt's offsets.
//!
//! # Sequence gaps
//!
//! A leader stores a batch of a producer id it knows only at the sequence
//! it expects next (one past the last stored), as Kafka's does; any other
//! is refused OUT_OF_ORDER_SEQUENCE, with the expected sequence in the
//! `keel-expected-sequence` metadata, and nothing of it is stored. An id
//! the leader does not know (new, or forgotten after
//! `producer.id.expiry.ms`) may start at any sequence. [`Producer::produce`]
//! keeps each partition going under that rule:
//!
//! - Clones share the sequences, so one partition may have several batches
//!   in flight, and a later one can reach the leader first (the leader puts
//!   them back in order when they arrive close together). Refused as a gap
//!   while an earlier range of its partition is still in flight, it is
//!   sent again once one of those is answered (or after the usual backoff),
//!   within the call's deadline.
//! - Until a batch of the partition is stored under its producer id, the
//!   leader may not know the id and would take whichever batch came first
//!   as its start; so until then only the lowest range in flight is sent.
//! - A batch refused for good (MESSAGE_TOO_LARGE, RESOURCE_EXHAUSTED,
//!   UNKNOWN_TOPIC, ..., or no node reached) stored nothing. When its range
//!   was the last one the partition gave out, the partition's next batch
//!   takes that range again.
//! - Otherwise the hole stays: an earlier batch was refused after later ones
//!   had taken their ranges, or its outcome stayed unknown and it was not
//!   stored. Every later batch would be refused. So a batch refused as a gap
//!   with nothing earlier in flight that could fill it, or refused because
//!   the leader expects a sequence past it (it forgot the id and took up a
//!   later batch as its start), is sent again under a **fresh random
//!   producer id from sequence 0**, and the partition's later batches
//!   follow it there. Such a refusal of a range only this call sent, with no
//!   attempt that may have stored it (that would end the call
//!   OutcomeUnknown), proves the batch is not stored, so this cannot store
//!   it twice. Other partitions keep their ids.
//!
//! [`Producer::produce_at`], with sequences the caller took with
//! [`Producer::reserve`], does none of this: it returns the refusal.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_proto::client as proto;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::backoff::Backoff;
use crate::error::expected_sequence;
use crate::nodes::Route;
use crate::{Client, Error, ErrorCode, ProduceAck, Record, Result};

/// Bounds the sends of one batch after gap refusals; the call's deadline
/// normally ends them first.
const MAX_GAP_ROUNDS: u32 = 1_000;

/// Produces to any topic and partition; cheap to clone (clones share the
/// ids and the sequences, so they may produce concurrently).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    client: Client,
    id: u64,
    /// (topic, partition) → its sequences. Entries are never removed.
    partitions: Mutex<HashMap<(String, u32), Sequences>>,
}

/// One partition's sequences.
struct Sequences {
    /// The id its batches go under: the producer's own, until a gap that
    /// can no longer be filled moves the partition onto a fresh one.
    producer_id: u64,
    /// Where the next range starts.
    next: u64,
    /// Ranges `produce` gave out and has not finished with: (producer id,
    /// first sequence).
    in_flight: BTreeSet<(u64, u64)>,
    /// Woken whenever a range leaves `in_flight`.
    answered: Arc<Notify>,
    /// Whether a batch under `producer_id` was stored here. Until one is,
    /// the leader may not know the id and would take whichever batch comes
    /// first as its start, refusing the earlier ones; so until then only
    /// the lowest range in flight is sent.
    established: bool,
}

impl Sequences {
    fn new(producer_id: u64) -> Self {
        Self { producer_id, next: 0, in_flight: BTreeSet::new(), answered: Arc::default(), established: false }
    }

    fn take(&mut self, count: u64, topic: &str, partition: u32) -> Result<u64> {
        let first = self.next;
        self.next = first
            .checked_add(count)
            .ok_or_else(|| Error::InvalidArgument(format!("producer sequences of {topic}/{partition} exhausted")))?;
        Ok(first)
    }
}

/// A range `produce` took: in flight until dropped (answered, refused, or
/// the call's future dropped).
struct Range<'a> {
    producer: &'a Producer,
    key: (String, u32),
    producer_id: u64,
    first: u64,
    count: u64,
}

impl Range<'_> {
    /// Runs `f` on this range's partition.
    fn with<T>(&self, f: impl FnOnce(&mut Sequences) -> T) -> T {
        let mut partitions = self.producer.lock();
        f(partitions.get_mut(&self.key).expect("a partition that gave out a range stays in the map"))
    }

    /// Whether an earlier range under the same id is still in flight: its
    /// batch may yet fill a gap before this one.
    fn earlier_in_flight(&self) -> bool {
        let (id, first) = (self.producer_id, self.first);
        self.with(|s| s.in_flight.range((id, 0)..(id, first)).next().is_some())
    }

    fn answered(&self) -> Arc<Notify> {
        self.with(|s| Arc::clone(&s.answered))
    }

    /// Whether this range may be sent now: its id is established on the
    /// partition, or it is that id's lowest range in flight (or the
    /// partition has moved on to another id, whose rules are not this
    /// range's).
    fn may_send(&self) -> bool {
        let id = self.producer_id;
        self.with(|s| s.producer_id != id || s.established) || !self.earlier_in_flight()
    }

    /// Waits (bounded by `deadline`) until [`Range::may_send`].
    async fn wait_to_send(&self, deadline: Instant) {
        // The bound only guards against a lost wake-up: each round waits
        // for a range to leave, and at most every range in flight does.
        for _ in 0..MAX_GAP_ROUNDS {
            let answered = self.answered();
            let notified = answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.may_send() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// The batch was stored: its id is known to the leader now.
    fn stored(&self) {
        let id = self.producer_id;
        self.with(|s| {
            if s.producer_id == id {
                s.established = true;
            }
        });
    }

    /// The batch stored nothing: if no range was given out after it, the
    /// partition's next batch takes it again (no hole is left).
    fn give_back(&self) {
        let (id, first, end) = (self.producer_id, self.first, self.first + self.count);
        self.with(|s| {
            if s.producer_id == id && s.next == end {
                s.next = first;
            }
        });
    }

    /// Takes a new range for the batch under the partition's producer id,
    /// first moving the partition onto a fresh id unless another batch did
    /// already (module doc).
    fn move_to_fresh_id(&mut self, topic: &str, partition: u32) -> Result<()> {
        let (old_id, old_first, count) = (self.producer_id, self.first, self.count);
        let (id, first) = self.with(|s| {
            if s.producer_id == old_id {
                s.producer_id = fresh_id(old_id);
                s.next = 0;
                s.established = false;
                debug!(%topic, partition, from = old_id, to = s.producer_id, "unfillable sequence gap: fresh producer id");
            }
            s.in_flight.remove(&(old_id, old_first));
            s.answered.notify_waiters();
            let first = s.take(count, topic, partition)?;
            s.in_flight.insert((s.producer_id, first));
            Ok::<_, Error>((s.producer_id, first))
        })?;
        self.producer_id = id;
        self.first = first;
        Ok(())
    }
}

impl Drop for Range<'_> {
    fn drop(&mut self) {
        let (id, first) = (self.producer_id, self.first);
        self.with(|s| {
            s.in_flight.remove(&(id, first));
            s.answered.notify_waiters();
        });
    }
}

/// A random producer id other than `old` (and never 0, which means "not
/// idempotent" on the wire).
fn fresh_id(old: u64) -> u64 {
    std::iter::repeat_with(|| rand::rng().random_range(1..=u64::MAX))
        .take(64)
        .find(|&id| id != old)
        .expect("64 random draws from 1..=MAX are not all one value")
}

/// Whether a failed produce call stored nothing, so its range may be taken
/// again: a definite refusal, or no node reached. Not OUT_OF_ORDER_SEQUENCE
/// (an overlap, or a batch older than the leader's window, may have been
/// stored by an earlier call), not an unrecognised code, not an outcome
/// unknown.
fn stored_nothing(error: &Error) -> bool {
    match error {
        Error::Server { code, .. } => !matches!(code, ErrorCode::OutOfOrderSequence | ErrorCode::Unspecified),
        Error::Unavailable { .. } | Error::InvalidArgument(_) | Error::Rpc { .. } => true,
        Error::OutcomeUnknown { .. } | Error::Protocol(_) => false,
    }
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
        Ok(Self { inner: Arc::new(ProducerInner { client, id, partitions: Mutex::new(HashMap::new()) }) })
    }

    /// The producer's own id. A partition that [`Producer::produce`] moved
    /// past a gap it could not fill goes under another (module doc).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, u32), Sequences>> {
        self.inner.partitions.lock().expect("no code panics while holding the sequence lock")
    }

    /// Takes `count` sequences of a partition under [`Producer::id`] and
    /// returns the first, for [`Producer::produce_at`]. Each call gets a
    /// range no other call (nor `produce`) gets, whatever runs concurrently.
    /// Refused once `produce` has moved the partition onto another producer
    /// id: sequences of this id there would follow a hole.
    pub fn reserve(&self, topic: &str, partition: u32, count: u64) -> Result<u64> {
        let mut partitions = self.lock();
        let s = partitions.entry((topic.to_string(), partition)).or_insert_with(|| Sequences::new(self.inner.id));
        if s.producer_id != self.inner.id {
            return Err(Error::InvalidArgument(format!(
                "{topic}/{partition} went over to producer id {} after a sequence gap; \
                 reserve sequences with a Producer of its own (Producer::with_id)",
                s.producer_id
            )));
        }
        s.take(count, topic, partition)
    }

    /// A range for `produce`, in flight until dropped.
    fn take_range(&self, topic: &str, partition: u32, count: u64) -> Result<Range<'_>> {
        let key = (topic.to_string(), partition);
        let mut partitions = self.lock();
        let s = partitions.entry(key.clone()).or_insert_with(|| Sequences::new(self.inner.id));
        let first = s.take(count, topic, partition)?;
        s.in_flight.insert((s.producer_id, first));
        Ok(Range { producer: self, key, producer_id: s.producer_id, first, count })
    }

    /// Appends `records` to one partition, in order, exactly once: retries
    /// (after NOT_LEADER, NO_LEADER, a lost connection, OUTCOME_UNKNOWN, ...)
    /// resend the same producer id and sequence until the deadline, and a
    /// sequence gap is waited out or left behind (module doc).
    ///
    /// Past the deadline the error is [`Error::OutcomeUnknown`] if any
    /// attempt may have stored the batch, [`Error::Unavailable`] if none can
    /// have; a definite refusal is [`Error::Server`] at once.
    pub async fn produce(&self, topic: &str, partition: u32, records: Vec<Record>) -> Result<ProduceAck> {
        check_batch(topic, &records)?;
        let records: Vec<proto::Record> = records.into_iter().map(Into::into).collect();
        let options = self.inner.client.options();
        let deadline = Instant::now() + options.call_timeout;
        let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
        let mut range = self.take_range(topic, partition, records.len() as u64)?;
        for round in 1..=MAX_GAP_ROUNDS {
            range.wait_to_send(deadline).await;
            let earlier_when_sent = range.earlier_in_flight();
            let left = deadline.saturating_duration_since(Instant::now());
            let (answer, expected) =
                self.send(topic, partition, range.producer_id, range.first, records.clone(), left).await;
            let error = match answer {
                Ok(ack) => {
                    range.stored();
                    return Ok(ack);
                }
                Err(error) => error,
            };
            // A refusal of a range this call alone sent, with no attempt
            // that may have stored it (else the error would be
            // OutcomeUnknown): the batch is not stored.
            let refused_at = match (error.code(), expected) {
                (Some(ErrorCode::OutOfOrderSequence), Some(e)) if e != range.first => Some(e),
                _ => None,
            };
            if refused_at.is_none() || round == MAX_GAP_ROUNDS || Instant::now() >= deadline {
                if refused_at.is_some() || stored_nothing(&error) {
                    range.give_back();
                }
                return Err(error);
            }
            if refused_at.is_some_and(|e| e > range.first) {
                // The leader expects a sequence past this range (it took a
                // later batch as the id's start, or forgot the id and took a
                // later one since): this range can never be stored here.
                range.move_to_fresh_id(topic, partition)?;
                continue;
            }
            // A gap. Armed before looking, so an answer that lands in
            // between still wakes us.
            let answered = range.answered();
            let notified = answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if range.earlier_in_flight() {
                // An earlier batch may yet fill the gap: send again once one
                // is answered, or after the backoff.
                let pause = backoff.next_delay().min(deadline.saturating_duration_since(Instant::now()));
                let _ = tokio::time::timeout(pause, notified).await;
            } else if !earlier_when_sent {
                // Nothing under way could fill the gap when this was sent,
                // so nothing ever will.
                range.move_to_fresh_id(topic, partition)?;
            }
            // Else earlier batches were answered since it was sent: they may
            // have filled the gap, so it goes again at once.
        }
        unreachable!("the last round returns")
    }

    /// [`Producer::produce`] with a sequence range the caller reserved
    /// itself: sending the same batch at the same sequence again (after an
    /// `OutcomeUnknown`, say) returns the first attempt's offsets. Refusals,
    /// a sequence gap included, are returned as they are.
    pub async fn produce_at(
        &self,
        topic: &str,
        partition: u32,
        first_sequence: u64,
        records: Vec<Record>,
    ) -> Result<ProduceAck> {
        check_batch(topic, &records)?;
        let records = records.into_iter().map(Into::into).collect();
        let timeout = self.inner.client.options().call_timeout;
        self.send(topic, partition, self.inner.id, first_sequence, records, timeout).await.0
    }

    /// One produce call (with the client's retries), and the expected
    /// sequence its last refusal named, if any.
    async fn send(
        &self,
        topic: &str,
        partition: u32,
        producer_id: u64,
        first_sequence: u64,
        records: Vec<proto::Record>,
        timeout: Duration,
    ) -> (Result<ProduceAck>, Option<u64>) {
        let request =
            proto::ProduceRequest { topic: topic.to_string(), partition, records, producer_id, first_sequence };
        let client = &self.inner.client;
        let mut spec = client.spec(Route::Leader, true);
        spec.timeout = timeout;
        // `Error` carries a refusal's code and message only, so the
        // expected sequence is noted from each attempt's status here.
        let expected = Mutex::new(None);
        let answer = client
            .call(spec, request, |mut c, r| {
                let expected = &expected;
                async move {
                    let answer = c.produce(r).await;
                    *expected.lock().expect("no code panics while holding it") =
                        answer.as_ref().err().and_then(expected_sequence);
                    answer
                }
            })
            .await;
        let expected = expected.into_inner().expect("no code panicked while holding it");
        (answer.map(|response| ProduceAck::from_response(topic.to_string(), partition, response)), expected)
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
    fn only_refusals_that_stored_nothing_give_a_range_back() {
        let server = |code| Error::Server { code, message: String::new() };
        for code in [ErrorCode::MessageTooLarge, ErrorCode::ResourceExhausted, ErrorCode::UnknownTopic] {
            assert!(stored_nothing(&server(code)), "{code:?}");
        }
        assert!(stored_nothing(&Error::Unavailable { attempts: 3, last: String::new() }));
        // An overlap may be a batch stored by an earlier call; an unknown
        // code or outcome may be anything.
        assert!(!stored_nothing(&server(ErrorCode::OutOfOrderSequence)));
        assert!(!stored_nothing(&server(ErrorCode::Unspecified)));
        assert!(!stored_nothing(&Error::OutcomeUnknown { attempts: 3, last: String::new() }));
    }

    #[test]
    fn empty_batches_and_names_are_refused_before_sending() {
        assert!(check_batch("t", &[]).is_err());
        assert!(check_batch("", &[Record::new("x")]).is_err());
        assert!(check_batch("t", &[Record::new("x")]).is_ok());
    }
}
