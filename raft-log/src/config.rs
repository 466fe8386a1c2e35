//! Store and flush configuration, as typed values.
//!
//! The node maps the article's configuration keys (`flush.disk.type`,
//! `segment.bytes`, ...) onto these fields: its table of keys
//! (`node/src/config/keys.rs`) parses them and documents them. This crate
//! knows no key names; [`StoreConfig::validate`] checks the values it is
//! given and names the field.

use std::path::PathBuf;
use std::time::Duration;

use crate::format::{MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
use crate::io::Preallocate;

/// When an appended entry counts as flushed (the article's three policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// openraft's flush callback fires after the fdatasync that covers the
    /// entry; concurrent appends share one fdatasync (group commit).
    #[default]
    SyncFlush,
    /// The callback fires after the batch's fdatasync: the flusher syncs
    /// once `flush.batch.size` messages are unsynced or `flush.interval.ms`
    /// has passed since the oldest, whichever first. An ack still means
    /// fsynced on a majority; the batch trades latency for fewer syncs.
    BatchFlush,
    /// The callback fires once the entry is written; the flusher syncs every
    /// `flush.interval.ms` or `flush.commitlog.interval` entries. A power cut
    /// can lose acknowledged entries.
    AsyncFlush,
}

impl FlushPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SyncFlush => "SYNC_FLUSH",
            Self::BatchFlush => "BATCH_FLUSH",
            Self::AsyncFlush => "ASYNC_FLUSH",
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FlushPolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "SYNC_FLUSH" => Ok(Self::SyncFlush),
            "BATCH_FLUSH" => Ok(Self::BatchFlush),
            "ASYNC_FLUSH" => Ok(Self::AsyncFlush),
            other => Err(ConfigError::UnknownPolicy(other.to_string())),
        }
    }
}

/// The flush keys, as one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushConfig {
    /// `flush.disk.type`
    pub policy: FlushPolicy,
    /// `flush.batch.size`
    pub batch_size: u64,
    /// `flush.interval.ms`
    pub interval_ms: u64,
    /// `flush.commitlog.interval`
    pub commitlog_interval: u64,
    /// `flush.commitlog.timeout`, in milliseconds
    pub commitlog_timeout_ms: u64,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            policy: FlushPolicy::SyncFlush,
            batch_size: 100,
            interval_ms: 100,
            commitlog_interval: 1000,
            commitlog_timeout_ms: 5000,
        }
    }
}

impl FlushConfig {
    pub fn with_policy(policy: FlushPolicy) -> Self {
        Self { policy, ..Self::default() }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn commitlog_timeout(&self) -> Duration {
        Duration::from_millis(self.commitlog_timeout_ms)
    }

    /// Unsynced messages (BATCH_FLUSH) or entries (otherwise) that trigger a
    /// sync under this policy.
    pub fn sync_every_entries(&self) -> u64 {
        match self.policy {
            FlushPolicy::SyncFlush => 1,
            FlushPolicy::BatchFlush => self.batch_size,
            FlushPolicy::AsyncFlush => self.commitlog_interval,
        }
    }
}

/// Everything [`crate::LogStore::open`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `store.path.commitlog`
    pub dir: PathBuf,
    /// `segment.bytes`
    pub segment_bytes: u64,
    /// `segment.preallocate`
    pub preallocate: Preallocate,
    /// `segment.preheat`
    pub preheat: bool,
    /// `segment.cached.sealed`: how many of the newest sealed segments keep
    /// their pages in the page cache; `None` (-1) leaves it to the kernel.
    pub cached_sealed: Option<usize>,
    pub flush: FlushConfig,
}

/// A configuration value the store cannot use; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown flush policy {0:?}: expected SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH")]
    UnknownPolicy(String),
    #[error("segment_bytes {0} is not between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}")]
    SegmentBytes(u64),
    #[error("dir is empty: the store needs a data directory")]
    EmptyDir,
    #[error("flush.{0} is 0; it must be at least 1")]
    Zero(&'static str),
}

impl StoreConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            preallocate: Preallocate::Fallocate,
            preheat: false,
            cached_sealed: Some(2),
            flush: FlushConfig::default(),
        }
    }

    /// Check relations between values that `set` cannot see one at a time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(ConfigError::SegmentBytes(self.segment_bytes));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::EmptyDir);
        }
        for (field, v) in [
            ("batch_size", self.flush.batch_size),
            ("interval_ms", self.flush.interval_ms),
            ("commitlog_interval", self.flush.commitlog_interval),
            ("commitlog_timeout_ms", self.flush.commitlog_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(field));
            }
        }
        Ok(())
    }

    /// Largest payload one record can carry with this segment size.
    pub fn max_payload_bytes(&self) -> usize {
        // Segments are at most MAX_SEGMENT_BYTES, so this also fits a u32 length.
        crate::format::max_payload_in(self.segment_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_store_cannot_use_name_the_field() {
        let mut c = StoreConfig::new("/tmp/x");
        c.validate().expect("the defaults are valid");
        assert_eq!("BATCH_FLUSH".parse::<FlushPolicy>(), Ok(FlushPolicy::BatchFlush));
        let err = "FAST".parse::<FlushPolicy>().expect_err("unknown policy accepted");
        assert!(err.to_string().contains("\"FAST\""), "{err}");

        c.segment_bytes = 100;
        assert_eq!(c.validate(), Err(ConfigError::SegmentBytes(100)));
        c.segment_bytes = StoreConfig::DEFAULT_SEGMENT_BYTES;
        c.flush.batch_size = 0;
        let err = c.validate().expect_err("a zero batch accepted");
        assert!(err.to_string().contains("batch_size"), "{err}");
        c.flush.batch_size = 1;
        c.dir = PathBuf::new();
        assert_eq!(c.validate(), Err(ConfigError::EmptyDir));
    }
}
