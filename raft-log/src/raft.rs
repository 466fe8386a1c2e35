//! openraft 0.9's `RaftLogStorage` and `RaftLogReader` over [`Store`].
//!
//! Entries become records: blank and membership entries carry kind and (for
//! membership) a bincode-encoded [`openraft::Membership`]; normal entries
//! carry the application's own bytes, encoded by [`EntryData`], so the node
//! can read them back as raw [`Record`]s without going through openraft.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, OptionalSend, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};

use crate::codec;
use crate::error::Error;
use crate::format::{LogPos, MetaVote, Record, RecordKind, RecordMeta};
use crate::store::{NewRecord, Store};

/// How the application's entry type (`C::D`) is stored. The payload is
/// opaque to the store; `timestamp_ms` goes into the record header so the
/// time index can answer lookups by time.
pub trait EntryData: Sized {
    /// The leader-assigned time of the entry, or 0 if it has none.
    fn timestamp_ms(&self) -> u64;
    fn encode(&self, out: &mut Vec<u8>);
    /// Decode from the record's payload (a slice of the segment's map: keep
    /// it to stay zero-copy) and the header's timestamp.
    fn decode(payload: Bytes, timestamp_ms: u64) -> Result<Self, String>;
}

/// openraft's view of a [`Store`]. Clones share the store.
pub struct LogStore<C> {
    store: Store,
    /// Set by [`LogStore::leader_acks_on_write`]: this node's id.
    leader_ahead: Option<u64>,
    _c: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), leader_ahead: self.leader_ahead, _c: PhantomData }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("store", &self.store).finish()
    }
}

impl<C> LogStore<C> {
    pub fn new(store: Store) -> Self {
        Self { store, leader_ahead: None, _c: PhantomData }
    }

    /// Tell openraft that the leader's own entries are flushed once written
    /// (their fdatasync runs on: at once as a group commit under
    /// SYNC_FLUSH, on the batch's count or interval under BATCH_FLUSH), so
    /// openraft 0.9's core, which waits for each append's flush, is not
    /// held by the leader's sync. A follower's appends complete only after
    /// their fsync, under BATCH_FLUSH too ([`Store::append_synced`]), so a
    /// follower's answer to AppendEntries always means "fsynced". The
    /// commit index then means "on a majority, fsynced on every member of it
    /// but perhaps the leader"; an index is fsynced on a majority once it is
    /// committed **and** fsynced on a majority counting the leader's own
    /// fsynced index, and the node must wait for both before it
    /// acknowledges or applies (ARCHITECTURE.md, "The durability rule").
    /// `node_id` is this node's id.
    pub fn leader_acks_on_write(mut self, node_id: u64) -> Self {
        self.leader_ahead = Some(node_id);
        self
    }

    /// Whether `records` are this node's own entries of the leadership it
    /// holds now (its saved vote is a committed vote for itself in their
    /// term). openraft 0.9 saves the vote before it appends, and a leader
    /// never receives AppendEntries of its own term, so entries a follower
    /// takes from another leader never match, not even entries this node
    /// wrote in an earlier term and lost.
    fn own_leader_entries(&self, records: &[NewRecord]) -> bool {
        let (Some(me), Some(last)) = (self.leader_ahead, records.last()) else {
            return false;
        };
        self.store.read_vote().is_some_and(|v| {
            v.committed && v.voted_for == Some(me) && last.meta.leader == me && last.meta.term == v.term
        })
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
pub fn log_id(p: LogPos) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(p.term, p.leader), p.index)
}

fn log_pos(id: &LogId<u64>) -> LogPos {
    LogPos::new(id.leader_id.term, id.leader_id.node_id, id.index)
}

fn read_err(e: Error) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: Error) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Encode one openraft entry as a record.
pub fn entry_to_record<C>(entry: &Entry<C>) -> Result<NewRecord, Error>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::D: EntryData,
{
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
pub fn record_to_entry<C>(r: Record) -> Result<Entry<C>, Error>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::D: EntryData,
{
    let payload = match r.kind {
        RecordKind::Blank => EntryPayload::Blank,
        RecordKind::Normal => EntryPayload::Normal(
            C::D::decode(r.payload, r.timestamp_ms).map_err(|reason| Error::Decode { index: r.index, reason })?,
        ),
        RecordKind::Membership => EntryPayload::Membership(
            codec::decode(&r.payload).map_err(|e| Error::Decode { index: r.index, reason: e.to_string() })?,
        ),
    };
    Ok(Entry { log_id: log_id(LogPos::new(r.term, r.leader, r.index)), payload })
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>,
    C::D: EntryData,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
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
        let records = self.store.read_range(start, end, usize::MAX).map_err(read_err)?;
        records.into_iter().map(record_to_entry::<C>).collect::<Result<_, _>>().map_err(read_err)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>,
    C::D: EntryData,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
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

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        if self.leader_ahead.is_some() {
            // Entries this node wrote as leader may be unsynced; once the
            // vote moves on it may answer AppendEntries of another leader,
            // whose matches must mean "fsynced".
            self.store.sync().await.map_err(write_err)?;
        }
        let v =
            MetaVote { term: vote.leader_id.term, voted_for: Some(vote.leader_id.node_id), committed: vote.committed };
        self.store.save_vote(v).await.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        // openraft 0.9 (without `single-term-leader`) always names a node.
        Ok(self.store.read_vote().map(|v| Vote {
            leader_id: LeaderId::new(v.term, v.voted_for.unwrap_or_default()),
            committed: v.committed,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        self.store.save_committed(committed.as_ref().map(log_pos)).await.map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.store.read_committed().map(log_id))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<NewRecord> =
            entries.into_iter().map(|e| entry_to_record(&e)).collect::<Result<_, _>>().map_err(write_err)?;
        let done = Box::new(move |r: Result<(), Error>| callback.log_io_completed(r.map_err(|e| e.to_io())));
        if self.own_leader_entries(&records) {
            self.store.append_written(records, done).await.map_err(write_err)
        } else if self.leader_ahead.is_some() {
            self.store.append_synced(records, done).await.map_err(write_err)
        } else {
            self.store.append(records, done).await.map_err(write_err)
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.store.truncate(log_id.index).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.store.purge(log_pos(&log_id)).await.map_err(write_err)
    }
}

/// A ready-made type config whose entries are timestamped bytes: used by the
/// crate's tests and by `keel bench storage`.
pub mod raw {
    use super::*;
    use std::io::Cursor;

    /// Opaque bytes with a leader-assigned timestamp.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct RawData {
        pub timestamp_ms: u64,
        pub bytes: Vec<u8>,
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
    use super::raw::RawConfig;
    use super::*;
    use crate::FlushPolicy;
    use crate::tests::{config, record};

    fn with_leader(mut r: NewRecord, term: u64, leader: u64) -> NewRecord {
        r.meta.term = term;
        r.meta.leader = leader;
        r
    }

    #[tokio::test]
    async fn only_the_current_leaders_own_entries_complete_once_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(config(dir.path(), 1 << 20, FlushPolicy::SyncFlush)).await.expect("open");
        let plain = LogStore::<RawConfig>::new(store.clone());
        let ahead = LogStore::<RawConfig>::new(store.clone()).leader_acks_on_write(2);
        let own = |term| vec![with_leader(record(term, 1, 8), term, 2)];
        // No vote yet, then a vote for itself not yet granted by a majority.
        assert!(!ahead.own_leader_entries(&own(3)));
        store.save_vote(MetaVote { term: 3, voted_for: Some(2), committed: false }).await.expect("vote");
        assert!(!ahead.own_leader_entries(&own(3)), "a candidate is not a leader");
        store.save_vote(MetaVote { term: 3, voted_for: Some(2), committed: true }).await.expect("vote");
        assert!(ahead.own_leader_entries(&own(3)));
        assert!(!plain.own_leader_entries(&own(3)), "off unless asked for");
        assert!(!ahead.own_leader_entries(&own(2)), "its entries of an earlier term come back as a follower's");
        assert!(!ahead.own_leader_entries(&[with_leader(record(3, 1, 8), 3, 1)]), "another leader's entries");
        assert!(!ahead.own_leader_entries(&[]));
        // Another node leads term 4: nothing this node appends is its own.
        store.save_vote(MetaVote { term: 4, voted_for: Some(1), committed: true }).await.expect("vote");
        assert!(!ahead.own_leader_entries(&own(3)));
        assert!(!ahead.own_leader_entries(&own(4)));
    }
}
