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

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.payload);
    }

    fn decode(payload: Bytes, timestamp_ms: u64) -> Result<Self, String> {
        Ok(Self { timestamp_ms, payload })
    }
}

openraft::declare_raft_types!(
    /// keel's Raft types: entries are [`Request`]s, responses [`Applied`],
    /// snapshots are files (state checkpoint + the retained log range).
    pub TypeConfig:
        D = Request,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogStore = keel_raft_log::LogStore<TypeConfig>;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
