//! Power loss under each flush policy, fail-stop on EIO, ENOSPC, and the
//! flush policies' timing rules.

use std::time::Duration;

use super::*;
use crate::format::{LogPos, MetaVote};
use crate::io::{FileIo, Preallocate, RealFs};

const LEN: usize = 150;

/// A 4 KiB-segment store config in a temp dir over a fault layer, its
/// batches small and its interval short, so a power cut lands between syncs.
fn quick_flushing(policy: FlushPolicy) -> (tempfile::TempDir, FaultFs, StoreConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 4096, policy);
    c.flush.batch_size = 7;
    c.flush.commitlog_interval = 13;
    c.flush.interval_ms = 2;
    (dir, FaultFs::new(), c)
}

/// Phase 1: writers append while the flusher syncs; the power fails at a
/// random point, tearing the newest write. Phase 2: reopen and check that
/// everything at or below the fsynced index published before the cut (and,
/// under SYNC_FLUSH, every entry whose callback fired) is present and
/// intact, and that the vote survived. Entries above it may be gone: counted.
async fn power_loss_run(policy: FlushPolicy, seed: u64) -> (u64, u64) {
    let mut rng = Rng::new(seed);
    // `_dir` holds the temp dir until the run ends.
    let (_dir, fs, c) = quick_flushing(policy);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    let vote = MetaVote { term: 3, voted_for: Some(2), committed: true };
    store.save_vote(vote).await.expect("vote");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let cut_after = 20 + rng.below(60);
    let mut next = 1u64;
    for batch in 0..cut_after {
        let n = 1 + rng.below(5);
        let records = (next..next + n).map(|i| record(1, i, LEN)).collect();
        append_tracked(&store, records, &acked).await.expect("append");
        next += n;
        if batch % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let tear = rng.below(300) as usize;
    fs.power_loss(Some(tear));
    // Whatever callbacks still fire now report on syncs that ran before the
    // cut (every operation fails while the power is off).
    drop(store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let acked: Vec<(u64, bool)> = acked.lock().expect("lock").clone();
    fs.power_on();
    let synced_before = fs_synced_watermark(&acked, policy);
    let store =
        open_fault(&fs, c).await.unwrap_or_else(|e| panic!("{policy} seed {seed}: reopen after power loss: {e}"));
    let last = store.log_state().1.map_or(0, |p| p.index);
    assert_eq!(store.read_vote(), Some(vote), "{policy} seed {seed}: vote lost");
    assert!(last >= synced_before, "{policy} seed {seed}: durable entries lost: last {last} < {synced_before}");
    assert_entries(&store, 1..=last, LEN);
    (last, next - 1 - last)
}

/// The highest index the test may count on after the cut: under SYNC_FLUSH
/// and BATCH_FLUSH the last successful callback (both complete after the
/// covering fsync); under ASYNC_FLUSH the store's published fsynced index
/// is checked separately (see below), so here nothing.
fn fs_synced_watermark(acked: &[(u64, bool)], policy: FlushPolicy) -> u64 {
    match policy {
        FlushPolicy::SyncFlush | FlushPolicy::BatchFlush => {
            acked.iter().filter(|(_, ok)| *ok).map(|(i, _)| *i).max().unwrap_or(0)
        }
        FlushPolicy::AsyncFlush => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_sync_flush_keeps_every_acknowledged_entry() {
    for seed in seeds(&[1, 2, 3, 4, 5, 6, 7, 8]) {
        let (kept, lost) = power_loss_run(FlushPolicy::SyncFlush, seed).await;
        eprintln!("SYNC_FLUSH seed {seed}: {kept} entries survived, {lost} unacknowledged entries lost");
    }
}

/// BATCH_FLUSH completes an append only after the batch's fsync: every
/// completed append survives the cut, as under SYNC_FLUSH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_batch_flush_keeps_every_acknowledged_entry() {
    for seed in seeds(&[11, 12, 13, 14, 15, 16]) {
        let (kept, lost) = power_loss_run(FlushPolicy::BatchFlush, seed).await;
        eprintln!("BATCH_FLUSH seed {seed}: {kept} entries survived, {lost} unacknowledged entries lost");
    }
}

/// Under BATCH_FLUSH and ASYNC_FLUSH the guarantee is the published fsynced
/// index: every entry at or below it survives.
async fn power_loss_keeps_the_fsynced_index(policy: FlushPolicy, seed: u64) -> (u64, u64, u64) {
    let mut rng = Rng::new(seed);
    // `_dir` holds the temp dir until the run ends.
    let (_dir, fs, c) = quick_flushing(policy);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    let vote = MetaVote { term: 9, voted_for: Some(1), committed: false };
    store.save_vote(vote).await.expect("vote");
    let synced = store.subscribe_synced();
    let mut next = 1u64;
    for batch in 0..20 + rng.below(60) {
        let n = 1 + rng.below(5);
        append_flushed(&store, (next..next + n).map(|i| record(1, i, LEN)).collect()).await.expect("append");
        next += n;
        if batch % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        }
    }
    fs.power_loss(Some(rng.below(300) as usize));
    drop(store);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Only syncs that completed before the cut could publish.
    let durable = synced.borrow().unwrap_or(0);
    fs.power_on();
    let store = open_fault(&fs, c).await.unwrap_or_else(|e| panic!("{policy} seed {seed}: reopen: {e}"));
    let last = store.log_state().1.map_or(0, |p| p.index);
    assert_eq!(store.read_vote(), Some(vote), "{policy} seed {seed}: vote lost");
    assert!(last >= durable, "{policy} seed {seed}: fsynced entries lost: last {last} < fsynced {durable}");
    assert_entries(&store, 1..=last, LEN);
    (durable, last, next - 1 - last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_batch_flush_keeps_everything_at_or_below_the_fsynced_index() {
    for seed in seeds(&[21, 22, 23, 24, 25, 26]) {
        let (durable, kept, lost) = power_loss_keeps_the_fsynced_index(FlushPolicy::BatchFlush, seed).await;
        eprintln!("BATCH_FLUSH seed {seed}: fsynced {durable}, {kept} survived, {lost} written-but-unsynced lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_async_flush_keeps_everything_at_or_below_the_fsynced_index() {
    for seed in seeds(&[31, 32, 33, 34, 35, 36]) {
        let (durable, kept, lost) = power_loss_keeps_the_fsynced_index(FlushPolicy::AsyncFlush, seed).await;
        eprintln!("ASYNC_FLUSH seed {seed}: fsynced {durable}, {kept} survived, {lost} written-but-unsynced lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_eio_fail_stops_the_store_and_no_callback_reports_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = config(dir.path(), 4096, FlushPolicy::SyncFlush);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    append_flushed(&store, (1..=3).map(|i| record(1, i, LEN)).collect()).await.expect("append");
    // Phase 1: the next fdatasync fails with EIO.
    fs.fail_sync_with_eio(0);
    let acked = Arc::new(Mutex::new(Vec::new()));
    append_tracked(&store, vec![record(1, 4, LEN)], &acked).await.expect("the write itself succeeds");
    let err = store.sync().await.expect_err("sync after EIO succeeded");
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("Input/output error") || err.to_string().contains("os error 5"), "{err}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(acked.lock().expect("lock").as_slice(), &[(4, false)], "the callback must report the failure");
    // Phase 2: fail-stop: every later write is refused, never retried.
    let err = append_flushed(&store, vec![record(1, 5, LEN)]).await.expect_err("append after EIO");
    assert!(err.is_fatal(), "{err}");
    assert!(store.truncate(2).await.expect_err("truncate after EIO").is_fatal());
    assert!(store.save_vote(MetaVote { term: 1, voted_for: Some(1), committed: false }).await.is_err());
    assert_eq!(store.synced_index(), Some(3), "the fsynced index never moved past the failure");
    // Phase 3: restart (the crash drops what the failed sync did not write).
    drop(store);
    fs.clear_faults();
    fs.power_loss(None);
    fs.power_on();
    let store = open_fault(&fs, c).await.expect("reopen");
    assert_eq!(store.log_state().1.map(|p| p.index), Some(3));
    assert_entries(&store, 1..=3, LEN);
    append_flushed(&store, vec![record(2, 4, LEN)]).await.expect("writes resume after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_into_allocated_space_fail_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let store = open_fault(&fs, config(dir.path(), 4096, FlushPolicy::SyncFlush)).await.expect("open");
    append_flushed(&store, vec![record(1, 1, LEN)]).await.expect("append");
    fs.fail_writes_with_enospc(true);
    let err = append_flushed(&store, vec![record(1, 2, LEN)]).await.expect_err("write error hidden");
    assert!(err.is_fatal(), "{err}");
    fs.fail_writes_with_enospc(false);
    assert!(append_flushed(&store, vec![record(1, 2, LEN)]).await.expect_err("retried after failure").is_fatal());
    assert_eq!(store.read_range(1, 10, usize::MAX).expect("reads still work").len(), 1);
}

/// The failpoint layer a test build of `keel node` arms from
/// `KEEL_FAULT_EIO`, over the real file system: an EIO on pwrite or on
/// fdatasync puts the store in fail-stop, wakes `wait_failed` (the node
/// exits on it) with an error naming the operation and the file, refuses
/// every later write, and a reopen without the failpoint finds every entry
/// that was synced before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eio_failpoint_on_pwrite_or_fdatasync_fail_stops_naming_the_file_and_restart_recovers() {
    for op in ["write", "fsync"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let trigger = dir.path().join("trigger");
        let spec = format!("{op}:when={}", trigger.display());
        let fs = crate::io::with_eio_failpoint(Arc::new(crate::RealFs), Some(&spec)).expect("a test build arms it");
        let c = config(&data, 4096, FlushPolicy::SyncFlush);
        let store = Store::open_with(c.clone(), fs).await.expect("open");
        append_flushed(&store, (1..=3).map(|i| record(1, i, LEN)).collect()).await.expect("append");
        assert!(store.failure().is_none());
        // Phase 1: the failpoint strikes; the append's callback never reports success.
        std::fs::write(&trigger, b"").expect("arm the trigger");
        let err = append_flushed(&store, vec![record(1, 4, LEN)]).await.expect_err("append under EIO succeeded");
        assert!(err.is_fatal(), "{op}: {err}");
        let failed = tokio::time::timeout(Duration::from_secs(10), store.wait_failed())
            .await
            .expect("wait_failed resolves once the store failed");
        let (verb, file) = if op == "write" { ("pwrite", "00000000000000000001.log") } else { ("fdatasync", "") };
        let text = failed.to_string();
        assert!(text.contains(verb) && text.contains("injected") && text.contains("Input/output error"), "{text}");
        assert!(text.contains(&*data.to_string_lossy()) && text.contains(file), "{op}: names the file: {text}");
        // Phase 2: fail-stop even after the trigger is gone: no retry.
        std::fs::remove_file(&trigger).expect("disarm");
        assert!(append_flushed(&store, vec![record(1, 4, LEN)]).await.expect_err("retried").is_fatal());
        assert_eq!(store.synced_index(), Some(3), "{op}: the fsynced index never passed the failure");
        // Phase 3: restart on the plain file system recovers the synced entries.
        drop(store);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = Store::open(c).await.expect("reopen");
        let last = store.log_state().1.map(|p| p.index).expect("entries survive");
        assert!(last >= 3, "{op}: synced entries lost: last {last}");
        assert_entries(&store, 1..=3, LEN);
        append_flushed(&store, vec![record(2, last + 1, LEN)]).await.expect("writes resume after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_for_a_new_segment_is_a_distinct_error_and_writes_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    fs.fail_preallocate_with_enospc(true);
    let store = open_fault(&fs, config(dir.path(), 4096, FlushPolicy::SyncFlush)).await.expect("open");
    let err = append_flushed(&store, vec![record(1, 1, LEN)]).await.expect_err("no segment, yet appended");
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(!err.is_fatal());
    assert!(store.failure().is_none());
    assert_eq!(store.log_state().1, None, "nothing half-written");
    // Space returns (retention ran, or the operator freed some).
    fs.fail_preallocate_with_enospc(false);
    append_flushed(&store, (1..=40).map(|i| record(1, i, LEN)).collect()).await.expect("writes resume");
    assert!(store.segments().len() > 1, "and keep rolling");
    // Full again once the next segment is prepared in the background: the
    // next roll still uses that file; the one after finds no space.
    let prepared = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .any(|e| e.expect("entry").file_name().to_string_lossy().starts_with("prepared-"))
    };
    for _ in 0..1000 {
        if prepared() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(prepared(), "no segment prepared in the background within 10 s");
    fs.fail_preallocate_with_enospc(true);
    let rolled_at = store.segments().len() + 1;
    let mut next = 41;
    while store.segments().len() < rolled_at {
        assert!(next < 100, "never rolled");
        append_flushed(&store, vec![record(1, next, LEN)]).await.expect("append into the prepared segment");
        next += 1;
    }
    // A batch that would cross into another segment is refused whole.
    let before = store.log_state().1;
    let err =
        append_flushed(&store, (next..next + 30).map(|i| record(1, i, LEN)).collect()).await.expect_err("no space");
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(store.log_state().1, before, "part of a refused batch was appended");
    fs.fail_preallocate_with_enospc(false);
    append_flushed(&store, (next..next + 30).map(|i| record(1, i, LEN)).collect()).await.expect("writes resume again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_flush_syncs_on_its_interval_and_wait_synced_times_out_as_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1 << 20, FlushPolicy::AsyncFlush);
    c.flush.interval_ms = 20;
    c.flush.commitlog_interval = 1_000_000;
    let store = Store::open(c).await.expect("open");
    append_flushed(&store, vec![record(1, 1, 10)]).await.expect("append");
    // No count threshold is reached: only the interval can sync it.
    assert!(store.wait_synced(1).await.expect("wait"), "interval sync never came");
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1 << 20, FlushPolicy::AsyncFlush);
    c.flush.interval_ms = 3_600_000;
    c.flush.commitlog_interval = 1_000_000;
    c.flush.commitlog_timeout_ms = 30;
    let store = Store::open(c).await.expect("open");
    append_flushed(&store, vec![record(1, 1, 10)]).await.expect("append");
    assert!(!store.wait_synced(1).await.expect("a timeout is not an error"), "synced with no reason to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flush_merges_concurrent_appends_into_fewer_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), 1 << 20, FlushPolicy::SyncFlush)).await.expect("open");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let appends = 300u64;
    for i in 1..=appends {
        append_tracked(&store, vec![record(1, i, 64)], &acked).await.expect("append");
    }
    assert_eq!(store.sync().await.expect("sync"), Some(appends));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len() as u64, appends);
    assert!(acked.iter().all(|(_, ok)| *ok));
    let stats = store.flush_stats();
    eprintln!("{appends} appends, {} fdatasyncs", stats.syncs);
    assert!(stats.syncs < appends, "no group commit: {} syncs for {appends} appends", stats.syncs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_syncs_everything_stops_the_actors_and_releases_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = never_syncing(dir.path(), 4096);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    append_flushed(&store, (1..=30).map(|i| record(1, i, LEN)).collect()).await.expect("append");
    assert!(fs.unsynced_bytes() > 0, "ASYNC_FLUSH with a long interval leaves the tail unsynced");
    store.close().await.expect("close");
    let names = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect::<Vec<_>>();
    assert!(
        !names.iter().any(|n| n.to_string_lossy().starts_with("prepared-")),
        "close left a prepared segment: {names:?}"
    );
    // A power cut right after a clean close loses nothing.
    fs.power_loss(None);
    fs.power_on();
    let store = open_fault(&fs, c).await.expect("reopen at once: the lock was released");
    assert_entries(&store, 1..=30, LEN);
}

/// A restart without a reboot (the process died, the machine did not):
/// recovery reads records that may only be in the page cache, so it must
/// make them durable before publishing them as fsynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_reboot_makes_what_recovery_read_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = never_syncing(dir.path(), 4096);
    // Phase 1: 30 entries written, the newest segment's rename and records unsynced.
    let store = open_fault(&fs, c.clone()).await.expect("open");
    append_flushed(&store, (1..=30).map(|i| record(1, i, LEN)).collect()).await.expect("append");
    assert!(fs.unsynced_bytes() > 0);
    // The process dies: nothing is synced on the way out (fail-stop first).
    fs.fail_writes_with_enospc(true);
    assert!(append_flushed(&store, vec![record(1, 31, LEN)]).await.expect_err("fail-stop").is_fatal());
    drop(store);
    fs.clear_faults();
    // Phase 2: restart under SYNC_FLUSH; recovery sees all 30 and says so.
    let c = StoreConfig { flush: crate::FlushConfig::default(), ..c };
    let store = open_fault(&fs, c.clone()).await.expect("restart");
    assert_eq!(store.synced_index(), Some(30));
    append_flushed(&store, (31..=35).map(|i| record(1, i, LEN)).collect())
        .await
        .expect("acknowledged under SYNC_FLUSH");
    // Phase 3: now the power goes. Everything published as fsynced survives.
    let store = crash_and_reopen(&fs, store, c).await.expect("reopen after power loss");
    assert_eq!(store.log_state().1.map(|p| p.index), Some(35), "entries published as fsynced were lost");
    assert_entries(&store, 1..=35, LEN);
}

/// A crash in the middle of a truncation must not bring back the stale
/// records an earlier truncation left in the same segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_truncate_does_not_resurrect_earlier_truncated_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = config(dir.path(), 1 << 16, FlushPolicy::SyncFlush);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    append_flushed(&store, (1..=10).map(|i| record(5, i, 100)).collect()).await.expect("append");
    // Phase 1: truncate(6) leaves 6..=10 (term 5) as a stale tail of the first segment.
    store.truncate(6).await.expect("truncate 6");
    append_flushed(&store, (6..=8).map(|i| record(6, i, 100)).collect()).await.expect("append term 6");
    // Phase 2: truncate(4) removes segment 6 durably, then its next fsync
    // fails and the power goes before the new segment's rename is durable:
    // the first segment is last again.
    fs.fail_sync_with_eio(1);
    assert!(store.truncate(4).await.expect_err("truncate with a failing fsync").is_fatal());
    let store = crash_and_reopen(&fs, store, c).await.expect("reopen");
    let records = store.read_range(1, 100, usize::MAX).expect("read");
    let seen: Vec<(u64, u64)> = records.iter().map(|r| (r.index, r.term)).collect();
    assert_eq!(seen, vec![(1, 5), (2, 5), (3, 5)], "the log must end where truncate(4) cut it");
}

/// The cut-off entries were written and synced one batch at a time, so the
/// stale tail's records say each earlier one was durable. A crash after the
/// zero header is durable (before the new segment is): the meta file's
/// truncation mark ends the log there, and nothing after it is taken as a
/// witness of corruption (without the mark a zero header followed by
/// witnessing records is damage: `recovery.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_truncate_after_separately_synced_batches_opens_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = config(dir.path(), 1 << 16, FlushPolicy::SyncFlush);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    for i in 1..=10 {
        append_flushed(&store, vec![record(5, i, 100)]).await.expect("append");
    }
    // The truncation mark's and the zero header's fdatasyncs succeed; the
    // new segment's fails.
    fs.fail_sync_with_eio(2);
    assert!(store.truncate(6).await.expect_err("truncate with a failing fsync").is_fatal());
    let store = crash_and_reopen(&fs, store, c).await.expect("reopen after a crash inside truncate");
    assert_eq!(store.log_state().1.map(|p| p.index), Some(5));
    let meta = crate::format::Meta::decode(&std::fs::read(dir.path().join("meta")).expect("read meta")).expect("meta");
    assert_eq!(meta.truncated_from, None, "the mark is cleared once recovery has cut the tail");
    // A truncation that completes leaves no mark either.
    append_flushed(&store, (6..=9).map(|i| record(6, i, 100)).collect()).await.expect("append term 6");
    store.truncate(8).await.expect("truncate 8");
    let meta = crate::format::Meta::decode(&std::fs::read(dir.path().join("meta")).expect("read meta")).expect("meta");
    assert_eq!(meta.truncated_from, None, "a completed truncation clears its mark");
    assert_eq!(store.log_state().1.map(|p| p.index), Some(7));
}

/// A file system whose background fill is slower than a roll is patient.
#[derive(Debug)]
struct SlowFill;

impl FileSystem for SlowFill {
    fn open(&self, p: &Path) -> std::io::Result<Arc<dyn crate::FileIo>> {
        crate::RealFs.open(p)
    }
    fn create(&self, p: &Path) -> std::io::Result<Arc<dyn crate::FileIo>> {
        crate::RealFs.create(p)
    }
    fn preallocate(&self, p: &Path, len: u64, mode: crate::Preallocate, heat: bool) -> std::io::Result<()> {
        // The zero-fill takes 30 ms; the quick fallocate 60 ms (a busy disk).
        let ms = if mode == crate::Preallocate::Zero { 30 } else { 60 };
        std::thread::sleep(Duration::from_millis(ms));
        crate::RealFs.preallocate(p, len, mode, heat)
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        crate::RealFs.rename(a, b)
    }
    fn remove(&self, p: &Path) -> std::io::Result<()> {
        crate::RealFs.remove(p)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        crate::RealFs.sync_dir(p)
    }
    fn list(&self, p: &Path) -> std::io::Result<Vec<String>> {
        crate::RealFs.list(p)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolls_faster_than_the_fill_leave_no_prepared_file_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), 64 << 10, FlushPolicy::SyncFlush);
    let store = Store::open_with(c, Arc::new(SlowFill)).await.expect("open");
    for i in 1..=60u64 {
        append_flushed(&store, vec![record(1, i, 8 << 10)]).await.expect("append");
    }
    assert!(store.segments().len() > 5, "the test must roll often");
    store.close().await.expect("close");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("prepared-"))
        .collect();
    assert!(left.is_empty(), "prepared files left after close: {left:?}");
}

#[tokio::test]
async fn a_committed_id_past_what_survived_a_power_loss_is_cut_to_the_last_entry() {
    // Under BATCH_FLUSH and ASYNC_FLUSH a follower saves a committed id for
    // entries it has written but not fsynced; the power goes before the
    // fsync. Found by keel-chaos: openraft then refused to start, unable to
    // re-apply committed entries that were gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let c = never_syncing(dir.path(), 1 << 20);
    let store = open_fault(&fs, c.clone()).await.expect("open");
    append_flushed(&store, (1..=5).map(|i| record(1, i, LEN)).collect()).await.expect("append");
    store.sync().await.expect("sync");
    append_flushed(&store, (6..=10).map(|i| record(1, i, LEN)).collect()).await.expect("append");
    // The cluster says all ten are durable (fsynced on two other nodes).
    store.note_durable(10);
    store.save_committed(Some(LogPos::new(1, 1, 10))).await.expect("committed");
    assert_eq!(store.read_committed().map(|p| p.index), Some(10));
    let store = crash_and_reopen(&fs, store, c).await.expect("reopen");
    assert_eq!(store.log_state().1.map(|p| p.index), Some(5), "the unsynced entries are gone");
    assert_eq!(store.read_committed(), Some(LogPos::new(1, 1, 5)), "committed is cut to what the log holds");
    store.close().await.expect("close");
}

#[tokio::test]
async fn only_the_durable_part_of_the_committed_id_is_written() {
    // Whatever the policy, the store writes no committed id past the
    // durable index the node gives it (`Store::note_durable`).
    for policy in [FlushPolicy::BatchFlush, FlushPolicy::SyncFlush] {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path(), 1 << 20, policy);
        let store = Store::open(c.clone()).await.expect("open");
        append_flushed(&store, (1..=10).map(|i| record(1 + i / 4, i, LEN)).collect()).await.expect("append");
        store.sync().await.expect("sync");
        store.note_durable(6);
        store.save_committed(Some(LogPos::new(3, 1, 10))).await.expect("committed");
        assert_eq!(store.read_committed().map(|p| p.index), Some(10), "in memory, all of it");
        store.close().await.expect("close");
        let store = Store::open(c).await.expect("reopen");
        let on_disk = store.read_committed().expect("committed");
        assert_eq!(on_disk.index, 6, "{policy}");
        assert_eq!(on_disk.term, 1 + 6 / 4, "{policy}: the log id of the entry at that index");
        store.close().await.expect("close");
    }
}

/// BATCH_FLUSH completes an append only with the batch's fsync, on every
/// node (openraft's commit then means fsynced on a majority, issue 16 item
/// 4 and issue 17), and the batch counts messages, not entries: one Raft
/// entry may carry a whole client batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_flush_completes_appends_with_the_batchs_fsync_and_counts_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::new();
    let mut c = config(dir.path(), 1 << 16, FlushPolicy::BatchFlush);
    // A batch of 10 messages and an interval no test waits for.
    c.flush.batch_size = 10;
    c.flush.interval_ms = 3_600_000;
    let store = open_fault(&fs, c.clone()).await.expect("open");
    let acked = Arc::new(Mutex::new(Vec::new()));
    // Phase: four entries of one message each: written, readable, not acked.
    for i in 1..=4 {
        append_tracked(&store, vec![record(1, i, LEN)], &acked).await.expect("append");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.synced_index(), None, "BATCH_FLUSH synced before its count or interval");
    assert!(acked.lock().expect("lock").is_empty(), "completed before the batch's fsync");
    assert_entry(&store, 1, 4, LEN);
    // Phase: one entry carrying six messages fills the batch of ten.
    let five = acked.clone();
    store
        .append_messages(vec![record(1, 5, LEN)], 6, Box::new(move |r| five.lock().expect("lock").push((5, r.is_ok()))))
        .await
        .expect("append");
    assert!(store.wait_synced(5).await.expect("wait"), "a full batch of messages never synced");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked.lock().expect("lock").len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "callbacks covered by the sync never fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(acked.lock().expect("lock").iter().all(|(_, ok)| *ok));
    assert_eq!(store.flush_stats().unsynced_entries, 0);
    // Phase: the power goes now; every completed append survives.
    let store = crash_and_reopen(&fs, store, c).await.expect("reopen");
    assert_entries(&store, 1..=5, LEN);
}

/// A batch that never fills is synced, and its appends completed, once
/// `flush.interval.ms` has passed since the oldest unsynced one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_flush_syncs_a_batch_that_never_fills_on_its_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), 1 << 20, FlushPolicy::BatchFlush);
    c.flush.batch_size = 1_000_000;
    c.flush.interval_ms = 20;
    let store = Store::open(c).await.expect("open");
    tokio::time::timeout(Duration::from_secs(10), append_flushed(&store, vec![record(1, 1, 10)]))
        .await
        .expect("the interval never synced the batch")
        .expect("append");
    assert_eq!(store.synced_index(), Some(1), "completed before its fsync");
}

/// A file system whose meta temp file syncs slowly: the window in which a
/// meta write runs on after the future that started it was dropped.
#[derive(Debug)]
struct SlowMetaSync(Arc<dyn FileSystem>);

#[derive(Debug)]
struct SlowMetaFile(Arc<dyn FileIo>);

impl FileIo for SlowMetaFile {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(pos, buf)
    }
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(pos, buf)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.0.path().ends_with("meta.tmp") {
            std::thread::sleep(Duration::from_millis(300));
        }
        self.0.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn map(&self) -> std::io::Result<Option<bytes::Bytes>> {
        self.0.map()
    }
}

impl FileSystem for SlowMetaSync {
    fn open(&self, path: &std::path::Path) -> std::io::Result<Arc<dyn FileIo>> {
        Ok(Arc::new(SlowMetaFile(self.0.open(path)?)))
    }
    fn create(&self, path: &std::path::Path) -> std::io::Result<Arc<dyn FileIo>> {
        Ok(Arc::new(SlowMetaFile(self.0.create(path)?)))
    }
    fn preallocate(&self, path: &std::path::Path, len: u64, mode: Preallocate, preheat: bool) -> std::io::Result<()> {
        self.0.preallocate(path, len, mode, preheat)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.0.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.0.sync_dir(dir)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.0.list(dir)
    }
}

/// A vote (or committed id) write whose caller gave up on it (openraft
/// drops such futures) runs on in its blocking task. Found in an
/// integration test: the next write then shared `meta.tmp` with it, one
/// renamed the other's file away and the store stopped fail-stop ("rename
/// meta.tmp: No such file or directory"). Meta writes must serialize
/// whoever started them, and an older one must never land after a newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_write_whose_caller_gave_up_neither_breaks_nor_undoes_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn FileSystem> = Arc::new(SlowMetaSync(Arc::new(RealFs)));
    let store = Store::open_with(config(dir.path(), 4096, FlushPolicy::SyncFlush), fs.clone()).await.expect("open");
    let old = MetaVote { term: 3, voted_for: Some(2), committed: false };
    let new = MetaVote { term: 4, voted_for: Some(1), committed: false };
    // Phase: the first write is abandoned mid-sync; the second is awaited.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), store.save_vote(old)).await;
    assert!(gave_up.is_err(), "the slow write finished before the caller gave up: the test needs it running");
    store.save_vote(new).await.expect("the next vote write");
    // Phase: once the abandoned one is done too, the store still works and
    // the newer vote is what a restart reads.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(store.failure().is_none(), "fail-stop: {:?}", store.failure());
    store.save_vote(new).await.expect("a vote write after both");
    drop(store);
    let reopened = Store::open_with(config(dir.path(), 4096, FlushPolicy::SyncFlush), fs).await.expect("reopen");
    assert_eq!(reopened.read_vote(), Some(new));
}
