//! Store and flush configuration under the article's keys.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `store.path.commitlog` | (required) | data directory |
//! | `segment.bytes` | 67108864 (64 MiB) | size each segment is preallocated to |
//! | `segment.preallocate` | `fallocate` | `fallocate` (reserve unwritten extents) or `zero` (write zeros) |
//! | `segment.preheat` | `false` | read each new segment once so its pages are cached (预热) |
//! | `segment.cached.sealed` | 2 | how many of the newest sealed segments keep their pages in the page cache; older ones give theirs back after each roll (reads then come from disk); -1 leaves it to the kernel |
//! | `flush.disk.type` | `SYNC_FLUSH` | `SYNC_FLUSH`, `BATCH_FLUSH` or `ASYNC_FLUSH` |
//! | `flush.batch.size` | 100 | BATCH_FLUSH: fsync after this many unsynced messages |
//! | `flush.interval.ms` | 100 | BATCH_FLUSH / ASYNC_FLUSH: fsync at least this often |
//! | `flush.commitlog.interval` | 1000 | ASYNC_FLUSH: fsync after this many unsynced entries |
//! | `flush.commitlog.timeout` | 5000 | ms a producer waits for durability before "outcome unknown" |

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
            other => {
                Err(ConfigError::invalid("flush.disk.type", other, "expected SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH"))
            }
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

/// A configuration value that keel cannot use; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    #[error("invalid value {value:?} for `{key}`: {reason}")]
    Invalid { key: String, value: String, reason: String },
}

impl ConfigError {
    fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        Self::Invalid { key: key.to_string(), value: value.to_string(), reason: reason.into() }
    }
}

/// The configuration keys this crate understands.
pub const KEYS: &[&str] = &[
    "store.path.commitlog",
    "segment.bytes",
    "segment.preallocate",
    "segment.preheat",
    "segment.cached.sealed",
    "flush.disk.type",
    "flush.batch.size",
    "flush.interval.ms",
    "flush.commitlog.interval",
    "flush.commitlog.timeout",
];

fn positive(key: &str, value: &str) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(0) => Err(ConfigError::invalid(key, value, "must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(ConfigError::invalid(key, value, "expected a positive whole number")),
    }
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

    /// Set one key from its text form (properties file, CLI flag or
    /// environment). Unknown keys are [`ConfigError::UnknownKey`] so a caller
    /// with keys of its own can try them next.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = value.trim();
        match key {
            "store.path.commitlog" => {
                if v.is_empty() {
                    return Err(ConfigError::invalid(key, value, "must not be empty"));
                }
                self.dir = PathBuf::from(v);
            }
            "segment.bytes" => {
                let n = positive(key, v)?;
                if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&n) {
                    return Err(ConfigError::invalid(
                        key,
                        value,
                        format!("must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"),
                    ));
                }
                self.segment_bytes = n;
            }
            "segment.preallocate" => {
                self.preallocate = match v {
                    "zero" => Preallocate::Zero,
                    "fallocate" => Preallocate::Fallocate,
                    _ => return Err(ConfigError::invalid(key, value, "expected zero or fallocate")),
                }
            }
            "segment.preheat" => {
                self.preheat = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ConfigError::invalid(key, value, "expected true or false")),
                }
            }
            "segment.cached.sealed" => {
                self.cached_sealed = match v.parse::<i64>() {
                    Ok(-1) => None,
                    Ok(n) if n >= 0 => Some(n as usize),
                    _ => {
                        return Err(ConfigError::invalid(
                            key,
                            value,
                            "expected a count ≥ 0, or -1 to keep every segment",
                        ));
                    }
                }
            }
            "flush.disk.type" => self.flush.policy = v.parse()?,
            "flush.batch.size" => self.flush.batch_size = positive(key, v)?,
            "flush.interval.ms" => self.flush.interval_ms = positive(key, v)?,
            "flush.commitlog.interval" => self.flush.commitlog_interval = positive(key, v)?,
            "flush.commitlog.timeout" => self.flush.commitlog_timeout_ms = positive(key, v)?,
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Check relations between values that `set` cannot see one at a time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bytes = self.segment_bytes.to_string();
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(ConfigError::invalid(
                "segment.bytes",
                &bytes,
                format!("must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"),
            ));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("store.path.commitlog", "", "must not be empty"));
        }
        for (key, v) in [
            ("flush.batch.size", self.flush.batch_size),
            ("flush.interval.ms", self.flush.interval_ms),
            ("flush.commitlog.interval", self.flush.commitlog_interval),
            ("flush.commitlog.timeout", self.flush.commitlog_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "0", "must be at least 1"));
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
    fn keys_parse_and_bad_values_name_the_key() {
        let mut c = StoreConfig::new("/tmp/x");
        c.set("flush.disk.type", "BATCH_FLUSH").expect("valid");
        c.set("flush.batch.size", "64").expect("valid");
        c.set("segment.bytes", "8192").expect("valid");
        c.set("segment.preallocate", "fallocate").expect("valid");
        assert_eq!(c.flush.policy, FlushPolicy::BatchFlush);
        assert_eq!(c.flush.batch_size, 64);
        assert_eq!(c.segment_bytes, 8192);
        assert_eq!(c.preallocate, Preallocate::Fallocate);
        for (k, v) in [
            ("flush.disk.type", "FAST"),
            ("flush.batch.size", "0"),
            ("flush.interval.ms", "-1"),
            ("segment.bytes", "100"),
            ("segment.preheat", "yes"),
        ] {
            let err = c.set(k, v).expect_err("invalid value accepted");
            assert!(err.to_string().contains(k), "{err} does not name {k}");
        }
        assert_eq!(c.set("flush.nope", "1"), Err(ConfigError::UnknownKey("flush.nope".into())));
        assert_eq!(c.flush.batch_size, 64, "a rejected value changed the config");
        c.validate().expect("valid config");
    }
}
