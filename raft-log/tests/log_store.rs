//! `LogStore` through openraft's own traits: entries of every kind round-trip,
//! and readers running beside the writer only ever see whole, right records.

use std::collections::BTreeSet;
use std::time::Duration;

use keel_raft_log::raw::{RawConfig, RawData};
use keel_raft_log::{KeelEntry, LeaderId, LogId, LogStore, Membership, Store, StoreConfig};
use openraft::EntryPayload;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};

type Entry = KeelEntry<RawData>;

fn log_id(term: u64, leader: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: leader }, index)
}

fn normal(term: u64, index: u64, len: usize) -> Entry {
    let bytes = (0..len).map(|k| (index as usize * 7 + k) as u8).collect();
    Entry {
        log_id: log_id(term, 2, index),
        payload: EntryPayload::Normal(RawData { timestamp_ms: 1_000 + index, bytes }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_every_kind_round_trip_through_openraft_traits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.segment_bytes = 4096;
    let mut store = LogStore::<RawConfig>::new(Store::open(config.clone()).await.expect("open"));
    let members: BTreeSet<u64> = [1, 2, 3].into();
    let written = vec![
        Entry { log_id: log_id(1, 1, 0), payload: EntryPayload::Blank },
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Membership(Membership::new_with_defaults(vec![members], [])),
        },
        normal(2, 2, 0),
        normal(2, 3, 1500),
        normal(3, 4, 40),
    ];
    store.blocking_append(written.clone()).await.expect("append");
    let read = store.try_get_log_entries(0..10).await.expect("read");
    assert_eq!(read, written);
    // The record-level view carries the leader-assigned timestamps.
    let records = store.store().read_range(2, 5, usize::MAX).expect("read records");
    assert_eq!(records.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(), vec![1_002, 1_003, 1_004]);
    // And all of it survives a reopen, log state included.
    drop(store);
    let mut store = LogStore::<RawConfig>::new(Store::open(config).await.expect("reopen"));
    assert_eq!(store.try_get_log_entries(0..10).await.expect("read"), written);
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(3, 2, 4)));
    assert_eq!(state.last_purged_log_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_beside_the_writer_see_only_whole_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.segment_bytes = 8192;
    let mut store = LogStore::<RawConfig>::new(Store::open(config).await.expect("open"));
    let reader = store.store().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // A reader loops over everything present while segments roll and a
    // truncation replaces the tail; every record it gets must be one that
    // was written at that index (term 1 before the truncation point, or 2).
    let reads = tokio::spawn(async move {
        let mut seen = 0u64;
        for _ in 0..100_000 {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for r in reader.read_range(1, u64::MAX, usize::MAX).expect("read while writing") {
                let want = match normal(1, r.index, 300).payload {
                    EntryPayload::Normal(d) => d.bytes,
                    _ => unreachable!("normal() builds normal entries"),
                };
                let want2 = match normal(2, r.index, 300).payload {
                    EntryPayload::Normal(d) => d.bytes,
                    _ => unreachable!("normal() builds normal entries"),
                };
                assert!(r.payload.as_ref() == want.as_slice() || r.payload.as_ref() == want2.as_slice());
                assert!(r.term == 1 || (r.term == 2 && r.index >= 150), "entry {} term {}", r.index, r.term);
                seen += 1;
            }
            tokio::task::yield_now().await;
        }
        seen
    });
    for i in 1..=200u64 {
        store.blocking_append([normal(1, i, 300)]).await.expect("append");
    }
    store.truncate_after(Some(log_id(1, 2, 149))).await.expect("truncate");
    for i in 150..=220u64 {
        store.blocking_append([normal(2, i, 300)]).await.expect("append after truncate");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reads.await.expect("reader task");
    assert!(seen > 0, "the reader never read anything");
    let entries = store.try_get_log_entries(1..).await.expect("read");
    assert_eq!(entries.len(), 220);
    assert!(entries.iter().all(|e| e.log_id.leader_id.term == if e.log_id.index < 150 { 1 } else { 2 }));
}
