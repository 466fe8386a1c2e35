//! openraft 0.10's `RaftLogStorage` and `RaftLogReader` over [`Store`].
//!
//! Entries become records: blank and membership entries carry kind and (for
//! membership) a bincode-encoded [`openraft::Membership`]; normal entries
//! carry the application's own bytes, encoded by [`EntryData`], so the node
//! can read them back as raw [`Record`]s without going through openraft.
//!
//! `append` returns once the records are written (readable: openraft's
//! replication reads them at once) and completes openraft's [`IOFlushed`]
//! when the flush policy says they are flushed: after the covering
//! fdatasync under SYNC_FLUSH and BATCH_FLUSH, on leader and followers
//! alike, so openraft counts a node toward commit only once its copy is
//! fsynced ([`Store::append`]). Several appends may be in flight at once;
//! the flusher syncs whatever is queued in one group.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{BasicNode, Entry, EntryPayload, OptionalSend, RaftTypeConfig};

use crate::codec;
use crate::error::Error;
use crate::format::{LogPos, MetaVote, Record, RecordKind, RecordMeta};
use crate::store::{NewRecord, Store};

/// keel's leader id: (term, node id), openraft's "advanced" leader id, as
/// openraft 0.9 had it without `single-term-leader`. The log stores both.
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
/// openraft's log id over [`LeaderId`].
pub type LogId = openraft::LogId<LeaderId>;
/// openraft's vote over [`LeaderId`].
pub type Vote = openraft::impls::Vote<LeaderId>;
/// Cluster membership as stored in membership records.
pub type Membership = openraft::Membership<u64, BasicNode>;
/// The entry type keel's type configurations use.
pub type KeelEntry<D> = Entry<LeaderId, EntryPayload<D, u64, BasicNode>>;

/// The type configurations [`LogStore`] serves: keel's ids, votes, nodes
/// and entries, with any [`EntryData`]. Implemented for every config whose
/// types match.
pub trait KeelTypes:
    RaftTypeConfig<
        NodeId = u64,
        Term = u64,
        LeaderId = LeaderId,
        Vote = Vote,
        Node = BasicNode,
        Payload = EntryPayload<<Self as RaftTypeConfig>::D, u64, BasicNode>,
        Entry = KeelEntry<<Self as RaftTypeConfig>::D>,
    >
where
    <Self as RaftTypeConfig>::D: EntryData,
{
}

impl<C> KeelTypes for C
where
    C: RaftTypeConfig<
            NodeId = u64,
            Term = u64,
            LeaderId = LeaderId,
            Vote = Vote,
            Node = BasicNode,
            Payload = EntryPayload<<C as RaftTypeConfig>::D, u64, BasicNode>,
            Entry = KeelEntry<<C as RaftTypeConfig>::D>,
        >,
    C::D: EntryData,
{
}

/// How the application's entry type (`C::D`) is stored. The payload is
/// opaque to the store; `timestamp_ms` goes into the record header so the
/// time index can answer lookups by time.
pub trait EntryData: openraft::AppData + Sized {
    /// The leader-assigned time of the entry, or 0 if it has none.
    fn timestamp_ms(&self) -> u64;
    /// How many messages the entry carries: what BATCH_FLUSH's
    /// `flush.batch.size` counts.
    fn messages(&self) -> u64 {
        1
    }
    fn encode(&self, out: &mut Vec<u8>);
    /// Decode from the record's payload (a slice of the segment's map: keep
    /// it to stay zero-copy) and the header's timestamp.
    fn decode(payload: Bytes, timestamp_ms: u64) -> Result<Self, String>;
}

/// openraft's view of a [`Store`]. Clones share the store.
pub struct LogStore<C> {
    store: Store,
    _c: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), _c: PhantomData }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("store", &self.store).finish()
    }
}

impl<C> LogStore<C> {
    pub fn new(store: Store) -> Self {
        Self { store, _c: PhantomData }
    }

    /// The record-level store underneath (fetch path, monitoring, retention).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Give back the store, e.g. to [`Store::close`] it.
    pub fn into_store(self) -> Store {
        self.store
    }
}

/// openraft's log id for a [`LogPos`].
pub fn log_id(p: LogPos) -> LogId {
    LogId::new(LeaderId { term: p.term, node_id: p.leader }, p.index)
}

/// The [`LogPos`] of openraft's log id.
pub fn log_pos(id: &LogId) -> LogPos {
    LogPos::new(id.leader_id.term, id.leader_id.node_id, id.index)
}

fn io_err(e: Error) -> io::Error {
    e.to_io()
}

/// Encode one openraft entry as a record.
pub fn entry_to_record<D: EntryData>(entry: &KeelEntry<D>) -> Result<NewRecord, Error> {
    let mut payload = Vec::new();
    let (kind, timestamp_ms) = match &entry.payload {
        EntryPayload::Blank => (RecordKind::Blank, 0),
        EntryPayload::Normal(d) => {
            d.encode(&mut payload);
            (RecordKind::Normal, d.timestamp_ms())
        }
        EntryPayload::Membership(m) => {
            payload = codec::encode(m).map_err(|e| Error::Invalid(format!("encode membership: {e}")))?;
            (RecordKind::Membership, 0)
        }
    };
    let id = log_pos(&entry.log_id);
    Ok(NewRecord {
        meta: RecordMeta { kind, term: id.term, leader: id.leader, index: id.index, timestamp_ms },
        payload,
    })
}

/// Decode a record back into an openraft entry.
pub fn record_to_entry<D: EntryData>(r: Record) -> Result<KeelEntry<D>, Error> {
    let payload = match r.kind {
        RecordKind::Blank => EntryPayload::Blank,
        RecordKind::Normal => EntryPayload::Normal(
            D::decode(r.payload, r.timestamp_ms).map_err(|reason| Error::Decode { index: r.index, reason })?,
        ),
        RecordKind::Membership => EntryPayload::Membership(
            codec::decode(&r.payload).map_err(|e| Error::Decode { index: r.index, reason: e.to_string() })?,
        ),
    };
    Ok(Entry { log_id: log_id(LogPos::new(r.term, r.leader, r.index)), payload })
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: KeelTypes,
    C::D: EntryData,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (purged, _) = self.store.log_state();
        // Purged entries may still be on disk, but openraft must not see them.
        let floor = purged.map_or(0, |p| p.index + 1);
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(floor);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let records = self.store.read_range(start, end, usize::MAX).map_err(io_err)?;
        records.into_iter().map(record_to_entry::<C::D>).collect::<Result<_, _>>().map_err(io_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        // keel's votes always name a node (the advanced leader id).
        Ok(self.store.read_vote().map(|v| Vote {
            leader_id: LeaderId { term: v.term, node_id: v.voted_for.unwrap_or_default() },
            committed: v.committed,
        }))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: KeelTypes,
    C::D: EntryData,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let (purged, last) = self.store.log_state();
        let purged = purged.map(log_id);
        let last = match (last, purged) {
            (Some(l), p) if p.is_none_or(|p| l.index > p.index) => Some(log_id(l)),
            (_, p) => p,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Entries this node wrote (as leader, say) may still be unsynced;
        // once the vote moves on it may answer another leader's
        // AppendEntries, and a match it reports must mean fsynced whatever
        // openraft's own I/O tracking does with I/O of an older vote.
        self.store.sync().await.map_err(io_err)?;
        let v =
            MetaVote { term: vote.leader_id.term, voted_for: Some(vote.leader_id.node_id), committed: vote.committed };
        self.store.save_vote(v).await.map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.store.save_committed(committed.as_ref().map(log_pos)).await.map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.store.read_committed().map(log_id))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut messages = 0;
        let mut records = Vec::new();
        for e in entries {
            if let EntryPayload::Normal(d) = &e.payload {
                messages += d.messages();
            }
            records.push(entry_to_record(&e).map_err(io_err)?);
        }
        let done = Box::new(move |r: Result<(), Error>| callback.io_completed(r.map_err(|e| e.to_io())));
        self.store.append_messages(records, messages, done).await.map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.store.truncate(from).await.map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.store.purge(log_pos(&log_id)).await.map_err(io_err)
    }
}

/// A ready-made type config whose entries are timestamped bytes: used by the
/// crate's tests and by `keel bench storage`.
pub mod raw {
    use super::*;

    /// Opaque bytes with a leader-assigned timestamp.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct RawData {
        pub timestamp_ms: u64,
        pub bytes: Vec<u8>,
    }

    impl std::fmt::Display for RawData {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "RawData({} bytes @{})", self.bytes.len(), self.timestamp_ms)
        }
    }

    impl EntryData for RawData {
        fn timestamp_ms(&self) -> u64 {
            self.timestamp_ms
        }

        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.bytes);
        }

        fn decode(payload: Bytes, timestamp_ms: u64) -> Result<Self, String> {
            Ok(Self { timestamp_ms, bytes: payload.to_vec() })
        }
    }

    openraft::declare_raft_types!(
        /// Type config with [`RawData`] entries and unit responses.
        pub RawConfig: D = RawData, R = ()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A membership record's payload as keel on openraft 0.9.25 wrote it
    /// (`fuzz/seeds/record/4-raft-entry-0`, made by `make_seeds` before the
    /// move to 0.10, minus its kind byte): logs written by that version
    /// must still open, so the bincode layout of `Membership` must not
    /// change.
    const MEMBERSHIP_0_9: &[u8] = &[
        0x01, 0x02, 0x01, 0x02, 0x02, 0x01, 0x0e, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'9',
        b'0', b'9', b'1', 0x02, 0x0b, b'n', b'o', b'd', b'e', b'-', b'2', b':', b'9', b'0', b'9', b'1',
    ];

    #[test]
    fn membership_records_and_log_ids_written_by_the_openraft_0_9_build_decode_the_same() {
        let m: Membership = codec::decode(MEMBERSHIP_0_9).expect("a 0.9 membership record decodes");
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(m.get_node(&1).map(|n| n.addr.as_str()), Some("127.0.0.1:9091"));
        assert_eq!(m.get_node(&2).map(|n| n.addr.as_str()), Some("node-2:9091"));
        assert_eq!(codec::encode(&m).expect("encode"), MEMBERSHIP_0_9, "written back the same way");
        // 0.9's `LogId<u64>` was { leader_id: { term, node_id }, index }: the
        // node's checkpoints and snapshots hold it in that order.
        let id = log_id(LogPos::new(3, 1, 9));
        assert_eq!(codec::encode(&id).expect("encode"), [3, 1, 9]);
        assert_eq!(codec::decode::<LogId>(&[3, 1, 9]).expect("decode"), id);
    }
}
