//! Randomized sequences of append / truncate / purge / delete / install /
//! reopen, checked after every step against an in-memory model.

use std::collections::BTreeMap;

use super::*;
use crate::LogPos;

#[derive(Default)]
struct Model {
    /// Every entry the store may still hold, purged ones included.
    entries: BTreeMap<u64, (u64, Vec<u8>, u64)>,
    purged: Option<LogPos>,
    term: u64,
}

impl Model {
    fn last(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    fn next_index(&self) -> u64 {
        let present = self.last();
        let purged = self.purged.map(|p| p.index);
        match (present, purged) {
            (Some(a), Some(b)) => a.max(b) + 1,
            (Some(a), None) => a + 1,
            (None, Some(b)) => b + 1,
            (None, None) => 1,
        }
    }
}

fn check(store: &Store, model: &mut Model, seed: u64, step: usize) {
    let ctx = format!("seed {seed} step {step}");
    let (purged, last) = store.log_state();
    assert_eq!(purged, model.purged, "{ctx}: purged");
    assert_eq!(last.map(|l| l.index), model.last(), "{ctx}: last index");
    // Entries the store dropped physically are gone from the model too.
    if let Some(first) = store.first_present_index() {
        model.entries.retain(|&i, _| i >= first);
    } else {
        model.entries.clear();
    }
    let floor = model.purged.map_or(0, |p| p.index + 1);
    let got = store.read_range(floor, u64::MAX, usize::MAX).expect("read above purge point");
    let want: Vec<_> = model.entries.range(floor..).collect();
    assert_eq!(got.len(), want.len(), "{ctx}: entry count above the purge point");
    for (r, (&i, (term, bytes, ts))) in got.iter().zip(want) {
        assert_eq!((r.index, r.term, r.timestamp_ms), (i, *term, *ts), "{ctx}: entry {i}");
        assert_eq!(r.payload.as_ref(), bytes.as_slice(), "{ctx}: payload of {i}");
    }
    // Purged entries still on disk read back unchanged.
    for r in store.read_range(0, floor, usize::MAX).expect("read below purge point") {
        let (term, bytes, _) = model.entries.get(&r.index).unwrap_or_else(|| panic!("{ctx}: stray entry {}", r.index));
        assert_eq!((r.term, r.payload.as_ref()), (*term, bytes.as_slice()), "{ctx}: purged entry {}", r.index);
    }
    // Lookup by time: the first entry on disk, in log order, at or after it.
    for ts in [0, 1_000, 5_000, 20_000] {
        let want = model.entries.iter().find(|(_, (_, _, t))| *t >= ts).map(|(&i, _)| i);
        assert_eq!(store.index_for_timestamp(ts).expect("time lookup"), want, "{ctx}: time lookup {ts}");
    }
}

async fn run(seed: u64, policy: FlushPolicy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), 4096, policy);
    let mut store = Store::open(c.clone()).await.expect("open");
    let mut model = Model { term: 1, ..Model::default() };
    let mut rng = Rng::new(seed);
    for step in 0..220 {
        match rng.below(100) {
            0..=54 => {
                let n = 1 + rng.below(8);
                let first = model.next_index();
                if rng.below(10) == 0 {
                    model.term += 1;
                }
                let batch: Vec<NewRecord> = (0..n)
                    .map(|k| {
                        let index = first + k;
                        let len = rng.below(400) as usize;
                        let ts = rng.below(20_000);
                        let mut r = record(model.term, index, len);
                        r.meta.timestamp_ms = ts;
                        model.entries.insert(index, (model.term, r.payload.clone(), ts));
                        r
                    })
                    .collect();
                append_flushed(&store, batch).await.unwrap_or_else(|e| panic!("seed {seed} step {step}: append: {e}"));
            }
            55..=66 => {
                let floor = model.purged.map_or(0, |p| p.index + 1);
                if let Some(last) = model.last().filter(|&l| l >= floor) {
                    let from = floor + rng.below(last - floor + 1);
                    store.truncate(from).await.unwrap_or_else(|e| panic!("seed {seed} step {step}: truncate: {e}"));
                    model.entries.retain(|&i, _| i < from);
                    model.term += 1;
                }
            }
            67..=76 => {
                if let Some(last) = model.last() {
                    let upto = model.purged.map_or(0, |p| p.index) + rng.below(last + 3);
                    let upto = upto.min(last + 2);
                    if model.purged.is_none_or(|p| upto > p.index) {
                        let term = model.entries.get(&upto).map_or(model.term, |e| e.0);
                        let pos = LogPos::new(term, 1, upto);
                        store.purge(pos).await.unwrap_or_else(|e| panic!("seed {seed} step {step}: purge: {e}"));
                        model.purged = Some(pos);
                    }
                }
            }
            77..=84 => {
                let below = rng.below(model.next_index() + 1);
                store.delete_below(below).await.unwrap_or_else(|e| panic!("seed {seed} step {step}: delete: {e}"));
            }
            85..=88 => {
                // Install a range, as a follower installing a snapshot would.
                let prev_index = model.next_index() + rng.below(5);
                let prev = LogPos::new(model.term, 1, prev_index);
                let records: Vec<_> = (1..=rng.below(30))
                    .map(|k| {
                        let r = record(model.term, prev_index + k, rng.below(300) as usize);
                        crate::Record {
                            term: r.meta.term,
                            leader: r.meta.leader,
                            index: r.meta.index,
                            timestamp_ms: r.meta.timestamp_ms,
                            kind: r.meta.kind,
                            payload: r.payload.into(),
                        }
                    })
                    .collect();
                model.entries.clear();
                for r in &records {
                    model.entries.insert(r.index, (r.term, r.payload.to_vec(), r.timestamp_ms));
                }
                model.purged = Some(prev);
                store
                    .install_range(prev, records)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: install: {e}"));
            }
            _ => {
                drop(store);
                store = Store::open(c.clone()).await.unwrap_or_else(|e| panic!("seed {seed} step {step}: reopen: {e}"));
            }
        }
        check(&store, &mut model, seed, step);
    }
    // And once more from disk alone.
    drop(store);
    let store = Store::open(c).await.unwrap_or_else(|e| panic!("seed {seed}: final reopen: {e}"));
    check(&store, &mut model, seed, usize::MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model_under_sync_flush() {
    for seed in seeds(&[1, 2, 3, 4, 5, 6]) {
        run(seed, FlushPolicy::SyncFlush).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model_under_async_flush() {
    for seed in seeds(&[11, 12, 13]) {
        run(seed, FlushPolicy::AsyncFlush).await;
    }
}
