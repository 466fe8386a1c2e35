//! `segment.cached.sealed`: sealed segments past the newest N give their
//! pages back to the kernel after a roll, and still read back intact.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{append_flushed, assert_entry, config, record};
use crate::{FlushPolicy, Store};

const SEGMENT_BYTES: u64 = 256 << 10;
const PAYLOAD: usize = 8 << 10;
const ENTRIES: u64 = 200;

/// Pages of `path` in the page cache, by `mincore(2)` over a fresh map (for
/// a file mapping it reports the page cache, touched through this map or not).
fn resident_pages(path: &Path) -> usize {
    let file = std::fs::File::open(path).expect("open segment");
    // SAFETY: read-only map of a file nothing writes any more (sealed).
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("map segment");
    let page = 4096;
    let mut vec = vec![0u8; map.len().div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapped range.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// Segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".log") && !name.starts_with(crate::preparer::PREPARED_PREFIX)
        })
        .collect();
    out.sort();
    out
}

async fn fill(dir: &Path, keep: Option<usize>) -> Store {
    let mut c = config(dir, SEGMENT_BYTES, FlushPolicy::SyncFlush);
    c.cached_sealed = keep;
    let store = Store::open(c).await.expect("open");
    for index in 1..=ENTRIES {
        append_flushed(&store, vec![record(1, index, PAYLOAD)]).await.expect("append");
        // Read each entry back once, as a leader's replication does, so
        // its pages are mapped in this process too.
        assert_entry(&store, 1, index, PAYLOAD);
    }
    store
}

#[tokio::test]
async fn sealed_segments_past_the_window_leave_the_page_cache_and_read_back_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fill(dir.path(), Some(1)).await;
    let files = segments(dir.path());
    assert!(files.len() >= 6, "the test needs several rolls: {files:?}");
    // Dropped: every sealed segment but the newest one (the active one and
    // the newest sealed one stay). The preparer drops in the background.
    let dropped = &files[..files.len() - 3];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resident: Vec<usize> = dropped.iter().map(|f| resident_pages(f)).collect();
        if resident.iter().all(|&n| n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "old segments still cached: {resident:?} pages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newest_sealed = &files[files.len() - 2];
    assert!(resident_pages(newest_sealed) > 0, "the newest sealed segment was dropped too");
    for index in 1..=ENTRIES {
        assert_entry(&store, 1, index, PAYLOAD);
    }
    store.close().await.expect("close");
}

#[tokio::test]
async fn minus_one_leaves_the_page_cache_to_the_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fill(dir.path(), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let files = segments(dir.path());
    assert!(resident_pages(&files[0]) > 0, "with -1 nothing is dropped");
    store.close().await.expect("close");
}
