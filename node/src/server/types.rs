//! openraft's type configuration for keel.

use bytes::Bytes;
use keel_raft_log::EntryData;
use serde::{Deserialize, Serialize};

use super::state::Applied;

/// A normal entry: the encoded payload ([`super::entry`]) and the leader's
/// clock when it proposed it (it becomes the record's `timestamp_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub timestamp_ms: u64,
    pub payload: Bytes,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({} bytes @{})", self.payload.len(), self.timestamp_ms)
    }
}

impl EntryData for Request {
    fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    fn messages(&self) -> u64 {
        super::entry::message_count(&self.payload)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.payload);
    }

    fn decode(payload: Bytes, timestamp_ms: u64) -> Result<Self, String> {
        Ok(Self { timestamp_ms, payload })
    }
}

openraft::declare_raft_types!(
    /// keel's Raft types: entries are [`Request`]s, responses [`Applied`],
    /// ids, votes and nodes as `keel_raft_log` stores them (the state
    /// machine's snapshots are files: state checkpoint + the retained log
    /// range).
    pub TypeConfig:
        D = Request,
        R = Applied,
);

pub use keel_raft_log::{LeaderId, LogId, Membership, Vote};

pub type LogStore = keel_raft_log::LogStore<TypeConfig>;
pub type Entry = keel_raft_log::KeelEntry<Request>;
pub type StoredMembership = openraft::StoredMembership<LeaderId, u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<LeaderId, u64, openraft::BasicNode>;
/// A snapshot as the state machine builds and installs it: an open file.
pub type Snapshot = openraft::storage::Snapshot<LeaderId, u64, openraft::BasicNode, tokio::fs::File>;
pub type Metrics = openraft::RaftMetrics<TypeConfig>;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// openraft's metrics watch.
pub type MetricsRx = openraft::alias::WatchReceiverOf<TypeConfig, Metrics>;

/// Wait until the metrics satisfy `f`, as tokio's `watch::Receiver::wait_for`
/// (openraft's runtime-neutral watch has no such call); the metrics that
/// did. Err: Raft stopped.
pub async fn wait_metrics(rx: &mut MetricsRx, mut f: impl FnMut(&Metrics) -> bool) -> Result<Metrics, ()> {
    use openraft::async_runtime::WatchReceiver;
    loop {
        {
            let m = rx.borrow_and_update();
            if f(&m) {
                return Ok(m.clone());
            }
        }
        rx.changed().await.map_err(|_| ())?;
    }
}
