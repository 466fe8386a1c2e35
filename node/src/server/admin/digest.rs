//! `GET /api/v1/storage/digest`: a SHA-256 over a range of committed
//! entries, so replicas can be compared without shipping their logs.
//!
//! Each entry is hashed as its term, its index and its payload length (each
//! 8 bytes, little endian), then its payload.

use keel_raft_log::Store;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Payload bytes read from the store per step.
const READ_BYTES: usize = 8 << 20;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Digest {
    pub from: u64,
    pub upto: u64,
    pub count: u64,
    pub sha256: String,
}

/// Why no digest: the message names the parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct RangeError(pub String);

/// The digest of the committed entries `from..=upto`; `None` picks the
/// first stored entry and the commit index.
pub fn digest(store: &Store, from: Option<u64>, upto: Option<u64>) -> Result<Digest, RangeError> {
    let committed = store.read_committed().map(|c| c.index);
    let first = store.first_present_index();
    let upto = match (upto, committed) {
        (Some(u), Some(c)) if u > c => {
            return Err(RangeError(format!(
                "upto={u} is past the commit index {c}; only committed entries are digested"
            )));
        }
        (Some(u), None) => return Err(RangeError(format!("upto={u}: nothing is committed on this node yet"))),
        (Some(u), Some(_)) => u,
        (None, Some(c)) => c,
        (None, None) => return Err(RangeError("nothing is committed on this node yet".into())),
    };
    let from = match (from, first) {
        (Some(f), Some(first)) if f < first => {
            return Err(RangeError(format!("from={f} is below the first entry this node still stores ({first})")));
        }
        (Some(f), _) => f,
        (None, Some(first)) => first,
        (None, None) => return Err(RangeError("this node stores no entries".into())),
    };
    if from > upto {
        return Err(RangeError(format!("from={from} is past upto={upto}")));
    }
    let mut hasher = Sha256::new();
    let mut next = from;
    while next <= upto {
        let records = store
            .read_range(next, upto + 1, READ_BYTES)
            .map_err(|e| RangeError(format!("reading entry {next}: {e}")))?;
        if records.is_empty() {
            return Err(RangeError(format!("entry {next} is not stored on this node")));
        }
        for r in records {
            if r.index != next {
                return Err(RangeError(format!(
                    "entry {next} is not stored on this node (the log resumes at {})",
                    r.index
                )));
            }
            hasher.update(r.term.to_le_bytes());
            hasher.update(r.index.to_le_bytes());
            hasher.update((r.payload.len() as u64).to_le_bytes());
            hasher.update(&r.payload);
            next += 1;
        }
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Digest { from, upto, count: upto - from + 1, sha256 })
}
