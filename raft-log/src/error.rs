use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ConfigError;

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bytes on disk that cannot be what keel wrote: never silently dropped.
    #[error("corruption in {}: position {position}{}: {reason}", file.display(), index.map(|i| format!(", log index {i}")).unwrap_or_default())]
    Corruption { file: PathBuf, position: u64, index: Option<u64>, reason: String },

    /// An fsync or a write into allocated space failed earlier. The kernel may
    /// have dropped the dirty pages, so the store refuses every later write
    /// and never retries (fail-stop); restart to recover from durable state.
    #[error("log store failed and refuses writes (fail-stop): {0}")]
    Failed(Arc<str>),

    /// No space for a new segment. Not fatal: writes resume once space returns.
    #[error("no space left for a new segment in {}: {reason}", dir.display())]
    NoSpace { dir: PathBuf, reason: String },

    #[error("data directory {} is in use by another process (flock on {}): {reason}", dir.display(), dir.join("LOCK").display())]
    Locked { dir: PathBuf, reason: String },

    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(
        "entry {index} is {bytes} bytes; the largest a {segment_bytes}-byte segment holds is {max} (raise segment.bytes)"
    )]
    EntryTooLarge { index: u64, bytes: usize, max: usize, segment_bytes: u64 },

    #[error("invalid request: {0}")]
    Invalid(String),

    #[error("cannot decode entry {index}: {reason}")]
    Decode { index: u64, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("log store is shut down")]
    Closed,
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source: Arc::new(source) }
    }

    /// Is this the fail-stop state (as opposed to an error the caller may
    /// recover from)?
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Failed(_))
    }

    /// The error as `io::Error`, for openraft's flush callback.
    pub fn to_io(&self) -> io::Error {
        match self {
            Self::Io { source, .. } => io::Error::new(source.kind(), self.to_string()),
            Self::NoSpace { .. } => io::Error::new(io::ErrorKind::StorageFull, self.to_string()),
            _ => io::Error::other(self.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
