//! keel's segmented, fsynced Raft log: the persistent message store.
//!
//! The Raft log *is* keel's message store: one log of records in segment
//! files, each preallocated and read back through mmap, with a position
//! index and a sparse time index beside every sealed segment. [`Store`] is
//! the record-level API (append, truncate, purge, physical deletion, range
//! install, reads); [`LogStore`] adapts it to openraft 0.10's
//! `RaftLogStorage`. Durability is owned by the flusher actor, which groups
//! concurrent appends into one `fdatasync` and fires openraft's callbacks
//! only after the sync that covers them (under SYNC_FLUSH).
//!
//! This crate knows nothing of topics, partitions or the network. The byte
//! layout of every file is in [`format`]; the durability order is in
//! [`store`].

pub mod codec;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod flusher;
pub mod format;
#[allow(clippy::len_without_is_empty)] // `FileIo::len` is a file length, not a collection's
pub mod io;
pub mod latency;
mod preparer;
mod raft;
mod recovery;
pub mod repair;
mod segment;
pub mod store;

pub use config::{ConfigError, FlushConfig, FlushPolicy, StoreConfig};
pub use error::{Error, Result};
pub use flusher::{Completion, FlushStats};
pub use format::{Identity, LogPos, Record, RecordKind, RecordMeta};
pub use io::{FileIo, FileSystem, Preallocate, RealFs};
pub use latency::{LatencySummary, SyncLatency};
pub use raft::{
    EntryData, KeelEntry, KeelTypes, LeaderId, LogId, LogStore, Membership, Vote, entry_to_record, log_id, log_pos,
    raw, record_to_entry,
};
pub use store::{NewRecord, SegmentInfo, Store, read_meta};

#[cfg(test)]
mod tests;
