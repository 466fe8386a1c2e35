//! The store's own tests: a randomized model check, power loss under each
//! flush policy, torn tails, corruption, index rebuilds and fail-stop.
//! They live inside the crate so they can use the test-only [`crate::fault`] layer.

mod faults;
mod model;
mod page_cache;
mod recovery;
mod repair;

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::fault::FaultFs;
use crate::{Error, FileSystem, FlushPolicy, NewRecord, RecordKind, RecordMeta, Store, StoreConfig};

/// A small deterministic generator (splitmix64): a failing run prints its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Seeds to run: `KEEL_TEST_SEED` alone when set (to replay a failure).
pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("KEEL_TEST_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => default.to_vec(),
    }
}

pub fn config(dir: &Path, segment_bytes: u64, policy: FlushPolicy) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c.flush.policy = policy;
    c
}

/// ASYNC_FLUSH that never syncs on its own (no count or interval is ever
/// reached): what was written stays unsynced until a test says otherwise.
pub fn never_syncing(dir: &Path, segment_bytes: u64) -> StoreConfig {
    let mut c = config(dir, segment_bytes, FlushPolicy::AsyncFlush);
    c.flush.interval_ms = 3_600_000;
    c.flush.commitlog_interval = 1_000_000;
    c
}

/// Payload bytes that identify their entry, never ending in a zero byte (a
/// zero suffix is what a torn write looks like).
pub fn payload(index: u64, term: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((index * 31 + term * 7 + k as u64) % 251) as u8 + 1).collect()
}

pub fn record(term: u64, index: u64, len: usize) -> NewRecord {
    NewRecord {
        meta: RecordMeta { kind: RecordKind::Normal, term, leader: 1, index, timestamp_ms: 1_000 + index },
        payload: payload(index, term, len),
    }
}

/// Append and wait for the flush callback.
pub async fn append_flushed(store: &Store, records: Vec<NewRecord>) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.append(records, Box::new(move |r| drop(tx.send(r)))).await?;
    rx.await.map_err(|_| Error::Closed)?
}

/// Append without waiting; the result lands in `acked` when the callback fires.
pub async fn append_tracked(
    store: &Store,
    records: Vec<NewRecord>,
    acked: &Arc<Mutex<Vec<(u64, bool)>>>,
) -> Result<(), Error> {
    let last = records.last().map(|r| r.meta.index).expect("non-empty batch");
    let acked = acked.clone();
    store.append(records, Box::new(move |r| acked.lock().expect("lock").push((last, r.is_ok())))).await
}

pub async fn open_fault(fs: &FaultFs, c: StoreConfig) -> Result<Store, Error> {
    Store::open_with(c, Arc::new(fs.clone()) as Arc<dyn FileSystem>).await
}

/// Check that `index` holds what [`record`] wrote for it under `term`.
pub fn assert_entry(store: &Store, term: u64, index: u64, len: usize) {
    let got = store.read_range(index, index + 1, usize::MAX).expect("read");
    assert_eq!(got.len(), 1, "entry {index} missing");
    let r = &got[0];
    assert_eq!((r.index, r.term), (index, term), "entry {index}");
    assert_eq!(r.payload.as_ref(), payload(index, term, len).as_slice(), "payload of entry {index}");
}

/// Every entry `indexes` of term 1 and length `len`, as [`assert_entry`].
pub fn assert_entries(store: &Store, indexes: std::ops::RangeInclusive<u64>, len: usize) {
    for index in indexes {
        assert_entry(store, 1, index, len);
    }
}

/// Cut the power under `store` (every unsynced write lost), drop it, restore
/// power with no faults armed, and open the directory again.
pub async fn crash_and_reopen(fs: &FaultFs, store: Store, c: StoreConfig) -> Result<Store, Error> {
    fs.power_loss(None);
    drop(store);
    fs.power_on();
    fs.clear_faults();
    open_fault(fs, c).await
}
