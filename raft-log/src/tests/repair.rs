//! Damage found without opening the store, and rewritten from a source
//! holding the same entries (what a node does with a peer's copy).

use super::*;
use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, segment_file_name};
use crate::repair::{self, Damage};
use crate::{LogPos, RealFs, Record};

const LEN: usize = 200;
const SEGMENT: u64 = 4096;
const COUNT: u64 = 60;

fn record_pos(k: u64) -> u64 {
    SEGMENT_HEADER_BYTES as u64 + k * (RECORD_HEADER_BYTES + LEN) as u64
}

fn segment_path(dir: &Path, first: u64) -> std::path::PathBuf {
    dir.join(segment_file_name(first))
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    b[0] ^= 0x41;
    f.write_all_at(&b, at).expect("write byte");
}

/// A closed store holding `1..=COUNT` in segments starting at 1, 17, 33, 49.
async fn written(dir: &Path) {
    let store = Store::open(config(dir, SEGMENT, FlushPolicy::SyncFlush)).await.expect("open");
    for i in 1..=COUNT {
        append_flushed(&store, vec![record(1, i, LEN)]).await.expect("append");
    }
    let firsts: Vec<u64> = store.segments().iter().map(|s| s.first_index).collect();
    assert_eq!(firsts, [1, 17, 33, 49], "the layout these tests assume");
    store.close().await.expect("close");
}

/// The entries a healthy replica would send for `d`.
fn source(d: &Damage) -> Vec<Record> {
    (d.from..=d.to)
        .map(|i| {
            let r = record(1, i, LEN);
            Record {
                term: r.meta.term,
                leader: r.meta.leader,
                index: i,
                timestamp_ms: r.meta.timestamp_ms,
                kind: r.meta.kind,
                payload: r.payload.into(),
            }
        })
        .collect()
}

fn damage(dir: &Path) -> Vec<Damage> {
    repair::find_damage(&RealFs, dir).expect("find damage")
}

/// Repair every damaged range from [`source`], then check the store opens
/// with every entry intact.
async fn repair_and_check(dir: &Path) {
    for d in damage(dir) {
        repair::rewrite(&RealFs, dir, SEGMENT, &d, &source(&d)).expect("rewrite");
    }
    assert_eq!(damage(dir), [], "nothing left to repair");
    let store = Store::open(config(dir, SEGMENT, FlushPolicy::SyncFlush)).await.expect("open after repair");
    for i in 1..=COUNT {
        assert_entry(&store, 1, i, LEN);
    }
    // And the log goes on.
    append_flushed(&store, vec![record(2, COUNT + 1, LEN)]).await.expect("append after repair");
    store.close().await.expect("close");
    let store = Store::open(config(dir, SEGMENT, FlushPolicy::SyncFlush)).await.expect("reopen");
    assert_entry(&store, 2, COUNT + 1, LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_log_has_no_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    assert_eq!(damage(dir.path()), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_payload_byte_in_a_sealed_segment_is_found_and_rewritten_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    let path = segment_path(dir.path(), 17);
    let before = std::fs::read(&path).expect("read");
    // Entry 20 is the fourth record of the segment starting at 17.
    flip(&path, record_pos(3) + RECORD_HEADER_BYTES as u64 + 10);
    let found = damage(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0];
    assert_eq!((d.from, d.to), (20, 20));
    assert_eq!(d.anchor, Some(LogPos::new(1, 1, 21)));
    assert!(d.reason.contains("crc32c mismatch"), "{}", d.reason);
    repair::rewrite(&RealFs, dir.path(), SEGMENT, d, &source(d)).expect("rewrite");
    // As written, but for the repaired record's `synced_before` (taken from
    // the record before it: a repaired record witnesses nothing new) and so
    // its checksum.
    let after = std::fs::read(&path).expect("read");
    let at = record_pos(3) as usize;
    let (sb, crc) = (at + 40..at + 48, at + 48..at + 52);
    assert_eq!(after.len(), before.len());
    for (k, (a, b)) in after.iter().zip(&before).enumerate() {
        if !sb.contains(&k) && !crc.contains(&k) {
            assert_eq!(a, b, "byte {k} of the rebuilt segment");
        }
    }
    repair_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_length_field_loses_sync_and_the_scan_resumes_at_the_next_valid_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    // payload_len of entry 35 (third record of the segment at 33).
    flip(&segment_path(dir.path(), 33), record_pos(2) + 5);
    let found = damage(dir.path());
    assert_eq!(found.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), [(35, 35)], "{found:?}");
    repair_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sealed_segment_is_the_range_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    std::fs::remove_file(segment_path(dir.path(), 17)).expect("remove segment");
    let found = damage(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].from, found[0].to), (17, 32));
    assert_eq!(found[0].anchor, Some(LogPos::new(1, 1, 33)));
    repair_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_header_is_the_whole_segment_and_damage_that_touches_merges() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    flip(&segment_path(dir.path(), 17), 3);
    // And the first record of the next segment.
    flip(&segment_path(dir.path(), 33), record_pos(0) + RECORD_HEADER_BYTES as u64);
    let found = damage(dir.path());
    assert_eq!(found.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), [(17, 33)], "{found:?}");
    assert_eq!(found[0].anchor, Some(LogPos::new(1, 1, 34)));
    repair_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_active_segment_with_intact_records_after_it_is_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    // Entry 50 of the last segment (49..=60); 51 was written after 50 was
    // fsynced, so no crash explains it.
    flip(&segment_path(dir.path(), 49), record_pos(1) + RECORD_HEADER_BYTES as u64 + 1);
    let opened = Store::open(config(dir.path(), SEGMENT, FlushPolicy::SyncFlush)).await;
    assert!(matches!(opened, Err(Error::Corruption { .. })), "recovery refuses: {opened:?}");
    let found = damage(dir.path());
    assert_eq!(
        found.iter().map(|d| (d.from, d.to, d.anchor)).collect::<Vec<_>>(),
        [(50, 50, Some(LogPos::new(1, 1, 51)))]
    );
    repair_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_that_ends_the_log_has_no_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    flip(&segment_path(dir.path(), 49), record_pos(11) + RECORD_HEADER_BYTES as u64 + 1);
    let found = damage(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].from, found[0].anchor), (60, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_with_the_wrong_entries_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    let path = segment_path(dir.path(), 17);
    flip(&path, record_pos(3) + RECORD_HEADER_BYTES as u64 + 10);
    let damaged = std::fs::read(&path).expect("read");
    let d = damage(dir.path()).remove(0);
    let mut short = source(&d);
    short.clear();
    let err = repair::rewrite(&RealFs, dir.path(), SEGMENT, &d, &short).expect_err("no entries");
    assert!(err.to_string().contains("needs exactly those entries"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), damaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_damage_refuses_while_a_store_has_the_directory_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    let store = Store::open(config(dir.path(), SEGMENT, FlushPolicy::SyncFlush)).await.expect("open");
    assert!(matches!(repair::find_damage(&RealFs, dir.path()), Err(Error::Locked { .. })));
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_purged_through_the_last_index_is_corruption_not_a_panic() {
    // A meta file (checksum intact) whose purge point is u64::MAX: the
    // first index after it would overflow. Found by the segment_recovery
    // fuzz target.
    let dir = tempfile::tempdir().expect("tempdir");
    written(dir.path()).await;
    let meta = crate::format::Meta { purged: Some(LogPos::new(1, 1, u64::MAX)), ..Default::default() };
    std::fs::write(dir.path().join("meta"), meta.encode()).expect("write meta");
    let err = repair::find_damage(&RealFs, dir.path()).expect_err("accepted");
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    let err = Store::open(config(dir.path(), SEGMENT, FlushPolicy::SyncFlush)).await.expect_err("opened");
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
}
