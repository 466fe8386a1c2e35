//! What a keel Raft entry holds, byte by byte.
//!
//! The record payload of every normal Raft entry is one of:
//!
//! ```text
//! byte 0      kind: 1 = produce group, 2 = command
//! produce group (kind 1): one or more produce batches, each for one
//! (topic, partition). The proposer packs the batches that arrive while
//! its entries are in flight into one entry, so concurrent produce requests
//! do not each take a Raft round (and an entry of its own).
//!   u32 LE    batch count (>= 1)
//!   per batch:
//!     u16 LE  topic name length, then the UTF-8 name
//!     u64 LE  topic incarnation (log index of the topic's create)
//!     u32 LE  partition
//!     u64 LE  producer id (0: not idempotent)
//!     u64 LE  first sequence
//!     u32 LE  record count (>= 1)
//!     per record:
//!       u32 LE  bytes of the record after this field (to skip it)
//!       u64 LE  timestamp_ms (the producer's, or the leader's clock)
//!       u32 LE  key length, key
//!       u16 LE  tag length, tag (UTF-8)
//!       u16 LE  header count; per header: u16 LE name length, name (UTF-8),
//!               u32 LE value length, value
//!       u32 LE  value length, value
//! command (kind 2): a bincode-encoded [`Command`] (the `codec` module).
//! ```
//!
//! All integers are little-endian. A record inside an entry is addressed by
//! its *slot*: its position among all records of the entry, counted over
//! every batch. Reads slice the entry's payload (an mmap-backed `Bytes`), so
//! keys and values reach the client without a copy.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const KIND_PRODUCE: u8 = 1;
pub const KIND_COMMAND: u8 = 2;

/// A record as the state machine and the fetch path see it: every field is
/// a slice of the entry's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub timestamp_ms: u64,
    pub key: Bytes,
    pub tag: Bytes,
    pub headers: Vec<(Bytes, Bytes)>,
    pub value: Bytes,
    /// Encoded size of the record (its consume-queue `size`).
    pub encoded_bytes: u32,
}

/// A produce batch as decoded from an entry.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub topic: String,
    pub incarnation: u64,
    pub partition: u32,
    pub producer_id: u64,
    pub first_sequence: u64,
    pub records: Vec<StoredRecord>,
}

/// A record on its way into an entry (owned: it came from the network).
#[derive(Debug, Clone, Default)]
pub struct NewRecord {
    pub timestamp_ms: u64,
    pub key: Bytes,
    pub tag: String,
    pub headers: Vec<(String, Bytes)>,
    pub value: Bytes,
}

impl NewRecord {
    /// Bytes this record takes in an entry, its length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + 8
            + 4
            + self.key.len()
            + 2
            + self.tag.len()
            + 2
            + self.headers.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum::<usize>()
            + 4
            + self.value.len()
    }
}

/// Commands: everything that is not a produce batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        retention_ms: i64,
        retention_bytes: i64,
        max_message_bytes: u32,
    },
    DeleteTopic {
        name: String,
    },
    CommitOffset {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
    },
    /// Retention: records of this partition below `start_offset` are gone.
    Trim {
        topic: String,
        incarnation: u64,
        partition: u32,
        start_offset: u64,
    },
    /// Forget idempotent producers last seen before this time (leader's
    /// clock minus `producer.id.expiry.ms`; a command so replicas agree).
    ExpireProducers {
        idle_before_ms: u64,
    },
}

/// Encodes one produce batch into a growing produce-group payload.
pub struct GroupEncoder {
    buf: Vec<u8>,
    batches: u32,
}

impl Default for GroupEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupEncoder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.push(KIND_PRODUCE);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, batches: 0 }
    }

    /// Bytes encoded so far (the kind and count header included).
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Append a pre-encoded batch (see [`encode_batch`]).
    pub fn push_encoded(&mut self, batch: &[u8]) {
        self.buf.extend_from_slice(batch);
        self.batches += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.batches > 0, "a produce group holds at least one batch");
        self.buf[1..5].copy_from_slice(&self.batches.to_le_bytes());
        self.buf
    }
}

/// Encode one batch (the part of a produce group after the batch count).
/// The caller has validated lengths: names ≤ 255 bytes, tags and header
/// names ≤ 65,535, record counts ≥ 1.
#[allow(clippy::too_many_arguments)]
pub fn encode_batch(
    out: &mut Vec<u8>,
    topic: &str,
    incarnation: u64,
    partition: u32,
    producer_id: u64,
    first_sequence: u64,
    records: &[NewRecord],
) {
    assert!(!records.is_empty(), "a batch holds at least one record");
    put_u16(out, u16::try_from(topic.len()).expect("topic names are validated to ≤ 249 bytes"));
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&producer_id.to_le_bytes());
    out.extend_from_slice(&first_sequence.to_le_bytes());
    out.extend_from_slice(&u32::try_from(records.len()).expect("record count validated").to_le_bytes());
    for r in records {
        let start = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        put_u32(out, r.key.len());
        out.extend_from_slice(&r.key);
        put_u16(out, u16::try_from(r.tag.len()).expect("tag length validated"));
        out.extend_from_slice(r.tag.as_bytes());
        put_u16(out, u16::try_from(r.headers.len()).expect("header count validated"));
        for (k, v) in &r.headers {
            put_u16(out, u16::try_from(k.len()).expect("header name length validated"));
            out.extend_from_slice(k.as_bytes());
            put_u32(out, v.len());
            out.extend_from_slice(v);
        }
        put_u32(out, r.value.len());
        out.extend_from_slice(&r.value);
        let len = u32::try_from(out.len() - start - 4).expect("record sizes validated against max.message.bytes");
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        debug_assert_eq!(out.len() - start, r.encoded_len());
    }
}

pub fn encode_command(c: &Command) -> Vec<u8> {
    let mut out = vec![KIND_COMMAND];
    out.extend_from_slice(&crate::server::codec::encode(c));
    out
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&u32::try_from(v).expect("lengths validated below 4 GiB").to_le_bytes());
}

/// A decoded entry payload.
#[derive(Debug, Clone)]
pub enum Decoded {
    Produce(Vec<StoredBatch>),
    Command(Command),
}

/// Why an entry payload does not parse. Entries are checksummed in the log,
/// so this means a bug or a format mismatch, never a torn write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed entry payload at byte {at}: {what}")]
pub struct Malformed {
    pub at: usize,
    pub what: &'static str,
}

struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, Malformed> {
        if self.buf.len() - self.at < n {
            return Err(Malformed { at: self.at, what });
        }
        let b = self.buf.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }

    /// Past a batch's header to its first record; returns its record count.
    fn skip_batch_header(&mut self) -> Result<u32, Malformed> {
        let topic_len = self.u16("topic length")? as usize;
        self.take(topic_len + 8 + 4 + 8 + 8, "batch header")?;
        self.u32("record count")
    }

    /// Past one record, by its length prefix.
    fn skip_record(&mut self) -> Result<(), Malformed> {
        let len = self.u32("record length")? as usize;
        self.take(len, "record").map(drop)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b[..].try_into().expect("took 4 bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b[..].try_into().expect("took 8 bytes")))
    }

    fn string(&mut self, n: usize, what: &'static str) -> Result<String, Malformed> {
        let at = self.at;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed { at, what })
    }
}

/// Decode a whole entry payload.
pub fn decode(payload: Bytes) -> Result<Decoded, Malformed> {
    let mut r = Reader { buf: payload, at: 0 };
    let kind = r.take(1, "kind")?[0];
    match kind {
        KIND_PRODUCE => {
            let n = r.u32("batch count")?;
            if n == 0 {
                return Err(Malformed { at: 1, what: "empty produce group" });
            }
            let mut batches = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                batches.push(decode_batch(&mut r)?);
            }
            if r.at != r.buf.len() {
                return Err(Malformed { at: r.at, what: "trailing bytes" });
            }
            Ok(Decoded::Produce(batches))
        }
        KIND_COMMAND => {
            let body = r.take(r.buf.len() - 1, "command")?;
            crate::server::codec::decode(&body)
                .map(Decoded::Command)
                .map_err(|_| Malformed { at: 1, what: "command does not decode" })
        }
        _ => Err(Malformed { at: 0, what: "unknown entry kind" }),
    }
}

fn decode_batch(r: &mut Reader) -> Result<StoredBatch, Malformed> {
    let topic_len = r.u16("topic length")? as usize;
    let topic = r.string(topic_len, "topic name")?;
    let incarnation = r.u64("incarnation")?;
    let partition = r.u32("partition")?;
    let producer_id = r.u64("producer id")?;
    let first_sequence = r.u64("first sequence")?;
    let count = r.u32("record count")?;
    if count == 0 {
        return Err(Malformed { at: r.at, what: "empty batch" });
    }
    let mut records = Vec::with_capacity(count.min(65_536) as usize);
    for _ in 0..count {
        records.push(decode_record(r)?);
    }
    Ok(StoredBatch { topic, incarnation, partition, producer_id, first_sequence, records })
}

fn decode_record(r: &mut Reader) -> Result<StoredRecord, Malformed> {
    let len = r.u32("record length")? as usize;
    let end =
        r.at.checked_add(len).filter(|&e| e <= r.buf.len()).ok_or(Malformed { at: r.at, what: "record length" })?;
    let timestamp_ms = r.u64("timestamp")?;
    let key_len = r.u32("key length")? as usize;
    let key = r.take(key_len, "key")?;
    let tag_len = r.u16("tag length")? as usize;
    let tag = r.take(tag_len, "tag")?;
    let header_count = r.u16("header count")?;
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let kl = r.u16("header name length")? as usize;
        let k = r.take(kl, "header name")?;
        let vl = r.u32("header value length")? as usize;
        let v = r.take(vl, "header value")?;
        headers.push((k, v));
    }
    let value_len = r.u32("value length")? as usize;
    let value = r.take(value_len, "value")?;
    if r.at != end {
        return Err(Malformed { at: r.at, what: "record length does not match its fields" });
    }
    let encoded_bytes = u32::try_from(len + 4).map_err(|_| Malformed { at: r.at, what: "record length" })?;
    Ok(StoredRecord { timestamp_ms, key, tag, headers, value, encoded_bytes })
}

/// The record at `slot` of a produce-group payload, skipping the others by
/// their length prefixes (no need to decode the rest).
pub fn record_at(payload: &Bytes, slot: u32) -> Result<StoredRecord, Malformed> {
    RecordCursor::new(payload.clone())?.record(slot)
}

/// Reads the records of one produce-group payload by slot. It remembers
/// where it stopped, so ascending slots (a fetch reads a partition's records
/// of one entry in slot order) cost one record each; a lower slot starts
/// again from the front. [`record_at`] alone would skip every record before
/// the slot each time: quadratic over an entry of many small records.
pub struct RecordCursor {
    r: Reader,
    /// Batches after the current one, and records left in the current one.
    batches_left: u32,
    records_left: u32,
    /// The slot of the record the reader stands before.
    slot: u32,
}

impl RecordCursor {
    pub fn new(payload: Bytes) -> Result<Self, Malformed> {
        let mut r = Reader { buf: payload, at: 0 };
        if r.take(1, "kind")?[0] != KIND_PRODUCE {
            return Err(Malformed { at: 0, what: "not a produce group" });
        }
        let batches_left = r.u32("batch count")?;
        Ok(Self { r, batches_left, records_left: 0, slot: 0 })
    }

    pub fn record(&mut self, slot: u32) -> Result<StoredRecord, Malformed> {
        if slot < self.slot {
            *self = Self::new(self.r.buf.clone())?;
        }
        loop {
            if self.records_left == 0 {
                if self.batches_left == 0 {
                    return Err(Malformed { at: self.r.at, what: "slot past the last record" });
                }
                self.records_left = self.r.skip_batch_header()?;
                self.batches_left -= 1;
                continue;
            }
            self.records_left -= 1;
            self.slot += 1;
            if self.slot - 1 == slot {
                return decode_record(&mut self.r);
            }
            self.r.skip_record()?;
        }
    }
}

/// How many messages (records) an entry payload carries: the sum of its
/// batches' record counts, read from the batch headers (records are skipped
/// by their length prefixes); 1 for a command or a payload that does not
/// parse (BATCH_FLUSH's `flush.batch.size` counts messages).
pub fn message_count(payload: &Bytes) -> u64 {
    fn count(payload: &Bytes) -> Result<u64, Malformed> {
        let mut r = Reader { buf: payload.clone(), at: 0 };
        if r.take(1, "kind")?[0] != KIND_PRODUCE {
            return Ok(1);
        }
        let mut total = 0u64;
        for _ in 0..r.u32("batch count")? {
            let records = r.skip_batch_header()?;
            for _ in 0..records {
                r.skip_record()?;
            }
            total += u64::from(records);
        }
        Ok(total)
    }
    count(payload).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &str, tag: &str) -> NewRecord {
        NewRecord {
            timestamp_ms: 42,
            key: Bytes::copy_from_slice(key.as_bytes()),
            tag: tag.to_string(),
            headers: vec![("h".to_string(), Bytes::from_static(b"v"))],
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// Two batches: "orders" partition 1 (two records), "audit" (one).
    fn two_batch_group() -> Bytes {
        let mut g = GroupEncoder::new();
        let mut b = Vec::new();
        encode_batch(&mut b, "orders", 7, 1, 99, 5, &[rec("k1", "v1", "A"), rec("", "v2", "")]);
        g.push_encoded(&b);
        b.clear();
        encode_batch(&mut b, "audit", 9, 0, 0, 0, &[rec("k3", "v3", "B")]);
        g.push_encoded(&b);
        Bytes::from(g.finish())
    }

    #[test]
    fn a_produce_group_counts_its_records_as_messages_and_a_command_as_one() {
        assert_eq!(message_count(&two_batch_group()), 3);
        let delete = Command::DeleteTopic { name: "t".into() };
        assert_eq!(message_count(&Bytes::from(encode_command(&delete))), 1);
        assert_eq!(message_count(&Bytes::from_static(&[KIND_PRODUCE, 9])), 1, "malformed: counted as one");
    }

    #[test]
    fn produce_group_round_trips_and_slots_address_records() {
        let payload = two_batch_group();
        let Decoded::Produce(batches) = decode(payload.clone()).expect("decodes") else { panic!("not produce") };
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].topic, "orders");
        assert_eq!((batches[0].incarnation, batches[0].partition, batches[0].producer_id), (7, 1, 99));
        assert_eq!(batches[0].first_sequence, 5);
        assert_eq!(&batches[0].records[0].key[..], b"k1");
        assert_eq!(&batches[0].records[1].value[..], b"v2");
        assert_eq!(&batches[1].records[0].tag[..], b"B");
        assert_eq!(batches[0].records[0].encoded_bytes as usize, rec("k1", "v1", "A").encoded_len());
        for (slot, want) in [(0, "v1"), (1, "v2"), (2, "v3")] {
            assert_eq!(&record_at(&payload, slot).expect("slot").value[..], want.as_bytes());
        }
        assert!(record_at(&payload, 3).is_err(), "slot past the end must fail");
    }

    #[test]
    fn a_cursor_reads_any_slot_in_any_order_as_record_at_does() {
        let payload = two_batch_group();
        let want = |slot| record_at(&payload, slot).expect("slot").value;
        let mut cursor = RecordCursor::new(payload.clone()).expect("a produce group");
        // Ascending (the fetch path), then back, skipping, and repeating.
        for slot in [0, 1, 2, 0, 2, 1, 1, 0] {
            assert_eq!(cursor.record(slot).expect("slot").value, want(slot), "slot {slot}");
        }
        assert!(cursor.record(3).is_err(), "slot past the end must fail");
        assert_eq!(cursor.record(2).expect("after an error, from the front").value, want(2));
        let delete = Command::DeleteTopic { name: "t".into() };
        assert!(RecordCursor::new(Bytes::from(encode_command(&delete))).is_err(), "a command has no records");
    }

    #[test]
    fn truncated_or_padded_payloads_are_malformed() {
        let mut g = GroupEncoder::new();
        let mut b = Vec::new();
        encode_batch(&mut b, "t", 1, 0, 0, 0, &[rec("k", "v", "")]);
        g.push_encoded(&b);
        let full = g.finish();
        for cut in 0..full.len() {
            assert!(decode(Bytes::copy_from_slice(&full[..cut])).is_err(), "cut at {cut} decoded");
        }
        let mut padded = full.clone();
        padded.push(0);
        assert!(decode(Bytes::from(padded)).is_err(), "trailing byte accepted");
        assert!(decode(Bytes::from_static(&[9])).is_err(), "unknown kind accepted");
    }

    #[test]
    fn a_command_whose_string_runs_past_the_payload_is_malformed() {
        // CreateTopic (variant 0) whose name claims 2^60 bytes: bincode
        // allocated that much before reading it (found by fuzzing).
        let mut payload = vec![KIND_COMMAND, 0, 0xFD];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        payload.extend_from_slice(b"orders");
        assert!(decode(Bytes::from(payload)).is_err());
    }

    #[test]
    fn commands_round_trip() {
        let c = Command::CommitOffset { group: "g".into(), topic: "t".into(), partition: 2, offset: 10 };
        let Decoded::Command(back) = decode(Bytes::from(encode_command(&c))).expect("decodes") else {
            panic!("not a command")
        };
        assert_eq!(back, c);
    }
}
