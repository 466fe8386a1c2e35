//! openraft's own storage test suite, run against keel's log store.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use keel_raft_log::raw::RawConfig;
use keel_raft_log::{LogStore, Store, StoreConfig};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};

/// The smallest state machine the suite accepts: it remembers what was
/// applied and keeps its snapshot in memory. keel's real one lives in the node.
#[derive(Debug, Default, Clone)]
struct MemStateMachine {
    inner: Arc<Mutex<SmState>>,
}

#[derive(Debug, Default)]
struct SmState {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
}

impl RaftSnapshotBuilder<RawConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<RawConfig>, StorageError<u64>> {
        let mut s = self.inner.lock().expect("lock");
        let meta = SnapshotMeta {
            last_log_id: s.applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!("{:?}", s.applied),
        };
        let data = serde_json::to_vec(&(s.applied, &s.membership))
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        s.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<RawConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, openraft::BasicNode>), StorageError<u64>> {
        let s = self.inner.lock().expect("lock");
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<RawConfig>> + Send,
    {
        let mut s = self.inner.lock().expect("lock");
        let mut out = Vec::new();
        for e in entries {
            s.applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = e.payload {
                s.membership = StoredMembership::new(Some(e.log_id), m);
            }
            out.push(());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let (applied, membership): (Option<LogId<u64>>, StoredMembership<u64, openraft::BasicNode>) =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        let mut s = self.inner.lock().expect("lock");
        s.applied = applied;
        s.membership = membership;
        s.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<RawConfig>>, StorageError<u64>> {
        let s = self.inner.lock().expect("lock");
        Ok(s.snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(data.clone())) }))
    }
}

struct Builder {
    segment_bytes: u64,
    /// `LogStore::leader_acks_on_write` with this node id.
    leader_ahead: Option<u64>,
}

impl StoreBuilder<RawConfig, LogStore<RawConfig>, MemStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<RawConfig>, MemStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let mut config = StoreConfig::new(dir.path());
        config.segment_bytes = self.segment_bytes;
        let store = Store::open(config).await.map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let log_store = match self.leader_ahead {
            Some(id) => LogStore::new(store).leader_acks_on_write(id),
            None => LogStore::new(store),
        };
        Ok((dir, log_store, MemStateMachine::default()))
    }
}

#[test]
fn openraft_suite_passes_with_default_segments() {
    Suite::test_all(Builder { segment_bytes: StoreConfig::DEFAULT_SEGMENT_BYTES, leader_ahead: None })
        .expect("openraft storage suite");
}

#[test]
fn openraft_suite_passes_with_tiny_segments_that_roll_often() {
    // 4 KiB segments hold a few dozen entries: the suite's logs cross segments.
    Suite::test_all(Builder { segment_bytes: 4096, leader_ahead: None }).expect("openraft storage suite");
}

#[test]
fn openraft_suite_passes_with_the_nodes_sync_flush_setting() {
    // `leader_acks_on_write` as the node sets it under SYNC_FLUSH. The
    // suite's votes (for node 0) are never committed, so this covers the
    // sync a vote change now makes, not the early completion itself
    // (`raft::tests` and `tests::faults` cover that).
    Suite::test_all(Builder { segment_bytes: 4096, leader_ahead: Some(0) }).expect("openraft storage suite");
}
