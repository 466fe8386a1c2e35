//! Recovery of a log directory from arbitrary files: [`repair::find_damage`]
//! and [`Store::open`] on whatever the archive (see the crate docs) holds,
//! then reads of everything the store says it has. Any panic is a bug:
//! bytes on disk may be anything, and the answer is a value (an error, a
//! damage list, a store), never a crash.

#![no_main]

use keel_fuzz::{fix_checksums, parse_archive, runtime, scratch_dir, unpack};
use keel_raft_log::{RealFs, Store, StoreConfig, format, repair};
use libfuzzer_sys::fuzz_target;

/// Reads stop after this many records, so one input stays fast.
const MAX_READ_RECORDS: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let (flags, mut files) = parse_archive(data);
    if flags & 1 != 0 {
        files.iter_mut().for_each(fix_checksums);
    }
    let dir = scratch_dir();
    unpack(&files, dir.path());

    // Repair looks first (as the node does at start-up), without changing anything.
    let damage = repair::find_damage(&RealFs, dir.path());
    if let Ok(damage) = &damage {
        for d in damage {
            assert!(d.from <= d.to, "a damaged range runs backwards: {d:?}");
        }
    }

    let mut config = StoreConfig::new(dir.path());
    config.segment_bytes = format::MIN_SEGMENT_BYTES;
    runtime().block_on(async {
        let Ok(store) = Store::open(config).await else { return };
        let (purged, last) = store.log_state();
        let first = store.first_present_index().or(purged.map(|p| p.index.saturating_add(1)));
        if let (Some(first), Some(last)) = (first, last) {
            let end = last.index.saturating_add(1).min(first.saturating_add(MAX_READ_RECORDS));
            if let Ok(records) = store.read_range(first, end, usize::MAX) {
                // It may skip a gap below the purge point, never go back.
                assert!(records.windows(2).all(|w| w[0].index < w[1].index), "read_range reordered entries");
                assert!(records.iter().all(|r| (first..end).contains(&r.index)), "read_range left its range");
            }
        }
        for ts in [0, 1_700_000_000_000, u64::MAX] {
            let _ = store.index_for_timestamp(ts);
        }
        for s in store.segments() {
            assert!(s.used_bytes <= s.capacity_bytes, "{s:?}");
        }
        let _ = store.close().await;
    });
});
