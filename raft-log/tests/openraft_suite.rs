//! openraft's own storage test suite, run against keel's log store.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use keel_raft_log::raw::RawConfig;
use keel_raft_log::{LogId, LogStore, Store, StoreConfig};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageError, StoredMembership,
};

type Meta = SnapshotMeta<keel_raft_log::LeaderId, u64, BasicNode>;
type Stored = StoredMembership<keel_raft_log::LeaderId, u64, BasicNode>;

/// The smallest state machine the suite accepts: it remembers what was
/// applied and keeps its snapshot in memory. keel's real one lives in the node.
#[derive(Debug, Default, Clone)]
struct MemStateMachine {
    inner: Arc<Mutex<SmState>>,
}

#[derive(Debug, Default)]
struct SmState {
    applied: Option<LogId>,
    membership: Stored,
    snapshot: Option<(Meta, Vec<u8>)>,
}

fn io_other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl RaftSnapshotBuilder<RawConfig> for MemStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<Snapshot<keel_raft_log::LeaderId, u64, BasicNode, Vec<u8>>, io::Error> {
        let mut s = self.inner.lock().expect("lock");
        let meta = Meta { last_log_id: s.applied, last_membership: s.membership.clone() };
        let data = serde_json::to_vec(&(s.applied, &s.membership)).map_err(io_other)?;
        s.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<RawConfig> for MemStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Stored), io::Error> {
        let s = self.inner.lock().expect("lock");
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<RawConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((e, responder)) = entries.try_next().await? {
            {
                let mut s = self.inner.lock().expect("lock");
                s.applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = e.payload {
                    s.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            if let Some(r) = responder {
                r.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let (applied, membership): (Option<LogId>, Stored) = serde_json::from_slice(&snapshot).map_err(io_other)?;
        let mut s = self.inner.lock().expect("lock");
        s.applied = applied;
        s.membership = membership;
        s.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<keel_raft_log::LeaderId, u64, BasicNode, Vec<u8>>>, io::Error> {
        let s = self.inner.lock().expect("lock");
        Ok(s.snapshot.as_ref().map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: data.clone() }))
    }
}

struct Builder {
    segment_bytes: u64,
    policy: keel_raft_log::FlushPolicy,
}

impl StoreBuilder<RawConfig, LogStore<RawConfig>, MemStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<RawConfig>, MemStateMachine), StorageError<RawConfig>> {
        let io = |e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let dir = tempfile::tempdir().map_err(io)?;
        let mut config = StoreConfig::new(dir.path());
        config.segment_bytes = self.segment_bytes;
        config.flush.policy = self.policy;
        // BATCH_FLUSH completes appends with the batch: keep the suite quick.
        config.flush.interval_ms = 2;
        let store = Store::open(config).await.map_err(|e| io(e.to_io()))?;
        Ok((dir, LogStore::new(store), MemStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_default_segments() {
    let builder =
        Builder { segment_bytes: StoreConfig::DEFAULT_SEGMENT_BYTES, policy: keel_raft_log::FlushPolicy::SyncFlush };
    Suite::test_all(builder).await.expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_tiny_segments_that_roll_often() {
    // 4 KiB segments hold a few dozen entries: the suite's logs cross segments.
    let builder = Builder { segment_bytes: 4096, policy: keel_raft_log::FlushPolicy::SyncFlush };
    Suite::test_all(builder).await.expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_under_batch_and_async_flush() {
    // Appends complete after the batch's fsync (BATCH_FLUSH) or once written
    // (ASYNC_FLUSH): the suite's waits must still be answered.
    for policy in [keel_raft_log::FlushPolicy::BatchFlush, keel_raft_log::FlushPolicy::AsyncFlush] {
        Suite::test_all(Builder { segment_bytes: 4096, policy }).await.expect("openraft storage suite");
    }
}
