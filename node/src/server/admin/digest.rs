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

/// `GET /api/v1/storage/digest`: the SHA-256 of the committed entries `from..=upto`.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Digest {
    pub from: u64,
    pub upto: u64,
    pub count: u64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
}

/// Why no digest.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestError {
    /// The range asked for is not one this node can digest; names the parameter.
    Range(String),
    /// An entry of the range is not stored (retention deleted it meanwhile).
    Gone(String),
    /// Reading the log failed.
    Read(String),
}

/// The digest of the committed entries `from..=upto`; `None` picks the
/// first stored entry and the commit index.
pub fn digest(store: &Store, from: Option<u64>, upto: Option<u64>) -> Result<Digest, DigestError> {
    let committed = store.read_committed().map(|c| c.index);
    let first = store.first_present_index();
    let upto = match (upto, committed) {
        (Some(u), Some(c)) if u > c => {
            return Err(DigestError::Range(format!(
                "upto={u} is past the commit index {c}; only committed entries are digested"
            )));
        }
        (Some(u), None) => return Err(DigestError::Range(format!("upto={u}: nothing is committed on this node yet"))),
        (Some(u), Some(_)) => u,
        (None, Some(c)) => c,
        (None, None) => return Err(DigestError::Range("nothing is committed on this node yet".into())),
    };
    let from = match (from, first) {
        (Some(f), Some(first)) if f < first => {
            return Err(DigestError::Range(format!(
                "from={f} is below the first entry this node still stores ({first})"
            )));
        }
        (Some(f), _) => f,
        (None, Some(first)) => first,
        (None, None) => return Err(DigestError::Range("this node stores no entries".into())),
    };
    if from > upto {
        return Err(DigestError::Range(format!("from={from} is past upto={upto}")));
    }
    let mut hasher = Sha256::new();
    let mut next = from;
    while next <= upto {
        let records = store
            .read_range(next, upto + 1, READ_BYTES)
            .map_err(|e| DigestError::Read(format!("reading entry {next}: {e}")))?;
        if records.is_empty() {
            return Err(DigestError::Gone(format!("entry {next} is not stored on this node (any more)")));
        }
        for r in records {
            if r.index != next {
                return Err(DigestError::Gone(format!(
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

#[cfg(test)]
mod tests {
    use keel_raft_log::{LogPos, NewRecord, RecordKind, RecordMeta, StoreConfig};

    use super::*;

    async fn store_with(dir: &std::path::Path, entries: u64, committed: u64) -> Store {
        let store = Store::open(StoreConfig::new(dir)).await.expect("open");
        let records = (1..=entries)
            .map(|index| NewRecord {
                meta: RecordMeta {
                    kind: RecordKind::Normal,
                    term: 1 + index / 4,
                    leader: 1,
                    index,
                    timestamp_ms: index,
                },
                payload: format!("entry {index}").repeat(index as usize % 5).into_bytes(),
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(records, Box::new(move |r| drop(tx.send(r)))).await.expect("append");
        rx.await.expect("flushed").expect("durable");
        store.save_committed(Some(LogPos::new(1 + committed / 4, 1, committed))).await.expect("commit");
        store
    }

    /// The digest as documented, computed here independently.
    fn expected(from: u64, upto: u64) -> String {
        let mut h = Sha256::new();
        for index in from..=upto {
            let payload = format!("entry {index}").repeat(index as usize % 5).into_bytes();
            h.update((1 + index / 4).to_le_bytes());
            h.update(index.to_le_bytes());
            h.update((payload.len() as u64).to_le_bytes());
            h.update(&payload);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tokio::test]
    async fn the_digest_covers_term_index_and_payload_of_committed_entries_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), 20, 15).await;

        let d = digest(&store, Some(3), Some(9)).expect("digest");
        assert_eq!(d, Digest { from: 3, upto: 9, count: 7, sha256: expected(3, 9) });
        assert_ne!(d.sha256, expected(3, 8));
        let all = digest(&store, None, None).expect("defaults");
        assert_eq!((all.from, all.upto, all.count), (1, 15, 15), "from the first entry to the commit index");
        assert_eq!(all.sha256, expected(1, 15));

        let refused = |from, upto| match digest(&store, from, upto) {
            Err(DigestError::Range(m)) => m,
            other => panic!("{from:?}..{upto:?}: {other:?}"),
        };
        assert!(refused(Some(1), Some(16)).contains("upto=16 is past the commit index 15"));
        assert!(refused(Some(0), Some(5)).contains("from=0 is below the first entry"));
        assert!(refused(Some(9), Some(3)).contains("from=9 is past upto=3"));
        store.close().await.expect("close");
    }
}
