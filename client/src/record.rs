//! The client's domain types for records, fetches and produce acks, and
//! their conversions to and from the wire types (the one file where the
//! two meet).

use std::time::Duration;

use bytes::Bytes;
use keel_proto::client as proto;
use keel_proto::client::Durability;

/// One record header. Keys are text, values bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

impl Header {
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self { key: key.into(), value: value.into() }
    }
}

/// A record to produce. Built from its value, with optional key, tag,
/// headers and timestamp:
///
/// ```
/// let r = keel_client::Record::new("hello").key("user-7").tag("greeting").header("trace", "abc");
/// assert_eq!(&r.value[..], b"hello");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Empty: no key.
    pub key: Bytes,
    pub value: Bytes,
    /// Empty: no tag.
    pub tag: String,
    pub headers: Vec<Header>,
    /// `None`: the leader stamps its clock when it appends the record.
    pub timestamp_ms: Option<u64>,
}

impl Record {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self { value: value.into(), ..Self::default() }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = key.into();
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }

    pub fn timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Bytes this record adds to a request, roughly (what batching limits
    /// count; the exact protobuf size differs by a few bytes of framing).
    pub fn approx_bytes(&self) -> usize {
        let headers: usize = self.headers.iter().map(|h| h.key.len() + h.value.len() + 4).sum();
        self.key.len() + self.value.len() + self.tag.len() + headers + 16
    }
}

/// A record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp_ms: u64,
    /// Empty: no key.
    pub key: Bytes,
    pub value: Bytes,
    /// Empty: no tag.
    pub tag: String,
    pub headers: Vec<Header>,
}

/// What a fetch returned, and where the partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub records: Vec<FetchedRecord>,
    /// Where the next fetch should start (past records a tag filter skipped too).
    pub next_offset: u64,
    /// First retained offset of the partition.
    pub start_offset: u64,
    /// One past the last committed offset.
    pub end_offset: u64,
    /// The answering node's applied log index.
    pub applied_index: u64,
}

/// A fetch request: from `offset` of one partition.
///
/// ```
/// use std::time::Duration;
/// let f = keel_client::Fetch::new("orders", 0, 42).max_wait(Duration::from_millis(500)).tags("A || B");
/// assert_eq!(f.offset, 42);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// 0: the node's default (1 MiB); the node answers at most 4 MiB − 64
    /// KiB whatever is asked. At least one record comes back if any is there.
    pub max_bytes: u32,
    /// Long-poll: how long the node waits for a record at `offset`, counted
    /// with the wait for `min_index`.
    pub max_wait: Duration,
    /// `""` (all) or `"TagA || TagB"`.
    pub tag_filter: String,
    /// The node waits until it has applied this log index (read your writes
    /// from any node: pass the `durable_index` or `log_index` of an ack),
    /// at most `max_wait`, else the call's deadline, else 5 s; then it
    /// answers NOT_CAUGHT_UP and the client asks the next node.
    pub min_index: u64,
}

impl Fetch {
    pub fn new(topic: impl Into<String>, partition: u32, offset: u64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 0,
            max_wait: Duration::ZERO,
            tag_filter: String::new(),
            min_index: 0,
        }
    }

    pub fn max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    pub fn tags(mut self, tag_filter: impl Into<String>) -> Self {
        self.tag_filter = tag_filter.into();
        self
    }

    pub fn min_index(mut self, min_index: u64) -> Self {
        self.min_index = min_index;
        self
    }
}

/// The leader's acknowledgement of a produce: where the records went and
/// what durability they reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceAck {
    pub topic: String,
    pub partition: u32,
    /// Offset of the first record; the batch holds `base_offset..base_offset + count`.
    pub base_offset: u64,
    pub count: u32,
    /// QUORUM_FSYNCED (SYNC_FLUSH, BATCH_FLUSH) or QUORUM_WRITTEN (ASYNC_FLUSH).
    pub durability: Durability,
    /// The cluster's durable log index when the leader acknowledged.
    pub durable_index: u64,
    /// The Raft log index holding the records.
    pub log_index: u64,
    /// This answer is for an earlier attempt that had already stored the
    /// batch (a retry after a lost answer), so nothing was stored twice.
    pub duplicate: bool,
}

impl ProduceAck {
    pub(crate) fn from_response(topic: String, partition: u32, r: proto::ProduceResponse) -> Self {
        Self {
            topic,
            partition,
            base_offset: r.base_offset,
            count: r.count,
            // An unknown number from a newer server reads as "unspecified",
            // never as a stronger guarantee than was given.
            durability: Durability::try_from(r.durability).unwrap_or(Durability::Unspecified),
            durable_index: r.durable_index,
            log_index: r.log_index,
            duplicate: r.duplicate,
        }
    }

    /// Offset of the last record (`None` for an empty batch).
    pub fn last_offset(&self) -> Option<u64> {
        self.count.checked_sub(1).map(|n| self.base_offset + u64::from(n))
    }
}

impl From<Header> for proto::Header {
    fn from(h: Header) -> Self {
        Self { key: h.key, value: h.value }
    }
}

impl From<proto::Header> for Header {
    fn from(h: proto::Header) -> Self {
        Self { key: h.key, value: h.value }
    }
}

impl From<Record> for proto::Record {
    fn from(r: Record) -> Self {
        Self {
            key: r.key,
            value: r.value,
            tag: r.tag,
            headers: r.headers.into_iter().map(Into::into).collect(),
            timestamp_ms: r.timestamp_ms.unwrap_or(0),
        }
    }
}

impl From<proto::FetchedRecord> for FetchedRecord {
    fn from(r: proto::FetchedRecord) -> Self {
        Self {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            tag: r.tag,
            headers: r.headers.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::FetchResponse> for Fetched {
    fn from(r: proto::FetchResponse) -> Self {
        Self {
            records: r.records.into_iter().map(Into::into).collect(),
            next_offset: r.next_offset,
            start_offset: r.start_offset,
            end_offset: r.end_offset,
            applied_index: r.applied_index,
        }
    }
}

impl From<Fetch> for proto::FetchRequest {
    fn from(f: Fetch) -> Self {
        Self {
            topic: f.topic,
            partition: f.partition,
            offset: f.offset,
            max_bytes: f.max_bytes,
            max_wait_ms: u32::try_from(f.max_wait.as_millis()).unwrap_or(u32::MAX),
            tag_filter: f.tag_filter,
            min_index: f.min_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_converts_field_by_field_and_no_timestamp_is_zero() {
        let r = Record::new("v").key("k").tag("t").header("h", "x");
        let p: proto::Record = r.clone().into();
        assert_eq!(&p.key[..], b"k");
        assert_eq!(&p.value[..], b"v");
        assert_eq!(p.tag, "t");
        assert_eq!(p.headers, vec![proto::Header { key: "h".into(), value: Bytes::from_static(b"x") }]);
        assert_eq!(p.timestamp_ms, 0, "0 asks the leader to stamp its clock");
        let p: proto::Record = r.timestamp_ms(17).into();
        assert_eq!(p.timestamp_ms, 17);
    }

    #[test]
    fn an_ack_never_claims_more_durability_than_the_wire_said() {
        let resp = proto::ProduceResponse { base_offset: 10, count: 3, durability: 99, ..Default::default() };
        let ack = ProduceAck::from_response("t".into(), 0, resp);
        assert_eq!(ack.durability, Durability::Unspecified);
        assert_eq!(ack.last_offset(), Some(12));
        let empty = ProduceAck { count: 0, ..ack };
        assert_eq!(empty.last_offset(), None);
    }

    #[test]
    fn fetch_wait_saturates_into_milliseconds() {
        let f: proto::FetchRequest = Fetch::new("t", 1, 5).max_wait(Duration::from_secs(u64::MAX / 2)).into();
        assert_eq!(f.max_wait_ms, u32::MAX);
        let f: proto::FetchRequest = Fetch::new("t", 1, 5).max_wait(Duration::from_millis(250)).min_index(9).into();
        assert_eq!((f.max_wait_ms, f.min_index, f.offset, f.partition), (250, 9, 5, 1));
    }
}
