//! The node's serde encoding: commands inside entries and state checkpoints
//! in snapshots. It is the log store's codec, so bincode stays in one module
//! across keel.

use serde::Serialize;

pub use keel_raft_log::codec::decode;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    keel_raft_log::codec::encode(value).expect("in-memory values of serde-derived types always encode")
}
