//! The position index (`.idx`) and time index (`.tix`) of a sealed segment:
//! [`format::decode_index_file`] on arbitrary bytes, and a healthy store
//! whose index files of one segment are replaced by the input, then opened.
//!
//! Index files are not fsynced and are rebuilt when missing or damaged, so
//! whatever they hold the store must open and read back exactly the records
//! it was given (a read may fail on a forged index, never return another
//! record). With the checksums intact (no fix-up bit) the time lookups must
//! match too; with forged checksums only "no panic, no wrong record" holds.
//!
//! Input: `flags` (bit 0/1: build a checksummed .idx/.tix around the body;
//! bit 2/3: delete the .idx/.tix instead), the segment to hit, a u16 split,
//! then the .idx bytes and the .tix bytes.

#![no_main]

use std::sync::OnceLock;

use keel_fuzz::{ArchivedFile, KIND_INDEX, KIND_TIME_INDEX, archive_dir, build_store, runtime, scratch_dir, unpack};
use keel_raft_log::format::{self, INDEX_MAGIC, TIME_INDEX_MAGIC};
use keel_raft_log::{Record, Store, StoreConfig};
use libfuzzer_sys::fuzz_target;

const COUNT: u64 = 60;
const PAYLOAD: usize = 200;

struct Template {
    files: Vec<ArchivedFile>,
    /// First index of every sealed segment (those with index files).
    sealed: Vec<u64>,
    records: Vec<Record>,
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_bytes = format::MIN_SEGMENT_BYTES;
    c
}

/// A healthy store, built once; and what reading it gives.
fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch_dir();
        runtime().block_on(build_store(dir.path(), COUNT, PAYLOAD)).expect("build the template store");
        let files = archive_dir(dir.path());
        let sealed: Vec<u64> = files.iter().filter(|f| f.kind == KIND_INDEX).map(|f| f.first).collect();
        assert!(sealed.len() >= 2, "the template needs sealed segments: {sealed:?}");
        let copy = scratch_dir();
        unpack(&files, copy.path());
        let records = runtime().block_on(async {
            let store = Store::open(config(copy.path())).await.expect("open the template");
            let r = store.read_range(1, COUNT + 1, usize::MAX).expect("read the template");
            store.close().await.expect("close the template");
            r
        });
        assert_eq!(records.len() as u64, COUNT);
        Template { files, sealed, records }
    })
}

/// The first index whose record has `timestamp_ms >= ts`, the slow way.
fn first_at_or_after(records: &[Record], ts: u64) -> Option<u64> {
    records.iter().find(|r| r.timestamp_ms >= ts).map(|r| r.index)
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let first = t.sealed[usize::from(data[1]) % t.sealed.len()];
    let split = usize::from(u16::from_le_bytes([data[2], data[3]])).min(data.len() - 4);
    let (idx_in, tix_in) = data[4..].split_at(split);

    // The decoder alone, on the raw bytes, with either magic.
    for (bytes, magic, entry) in [(idx_in, INDEX_MAGIC, 4), (tix_in, TIME_INDEX_MAGIC, 16)] {
        if let Ok((count, body)) = format::decode_index_file(bytes, magic, first, entry) {
            assert_eq!(body.len() as u64, count * entry as u64, "entry count and length disagree");
        }
    }

    let built = |magic: &[u8; 8], body: &[u8], entry: usize| {
        let count = body.len() / entry;
        format::encode_index_file(magic, first, count as u64, &body[..count * entry])
    };
    let idx = if flags & 1 != 0 { built(INDEX_MAGIC, idx_in, 4) } else { idx_in.to_vec() };
    let tix = if flags & 2 != 0 { built(TIME_INDEX_MAGIC, tix_in, 16) } else { tix_in.to_vec() };
    let dir = scratch_dir();
    unpack(&t.files, dir.path());
    for (kind, bytes, drop, name) in [
        (KIND_INDEX, idx, flags & 4 != 0, format::index_file_name(first)),
        (KIND_TIME_INDEX, tix, flags & 8 != 0, format::time_index_file_name(first)),
    ] {
        if drop {
            std::fs::remove_file(dir.path().join(name)).expect("remove an index file");
        } else {
            unpack(&[ArchivedFile { kind, first, bytes }], dir.path());
        }
    }
    let forged = flags & 3 != 0;

    runtime().block_on(async {
        let store = Store::open(config(dir.path())).await.expect("a damaged index must never stop the store opening");
        for want in &t.records {
            if let Ok(got) = store.read_range(want.index, want.index + 1, 0) {
                assert_eq!(got.first(), Some(want), "index {} read back another record", want.index);
            } else {
                assert!(forged, "index {}: a checksummed index gave a wrong position", want.index);
            }
        }
        if !forged {
            let tss = [0, t.records[7].timestamp_ms, t.records[40].timestamp_ms + 1, u64::MAX];
            for ts in tss.into_iter().chain(data.get(4..12).map(|b| u64::from_le_bytes(b.try_into().expect("8")))) {
                let got = store.index_for_timestamp(ts).expect("index_for_timestamp on a healthy log");
                assert_eq!(got, first_at_or_after(&t.records, ts), "index_for_timestamp({ts})");
            }
        } else {
            let _ = store.index_for_timestamp(u64::from(data[1]) << 40);
        }
        store.close().await.expect("close");
    });
});
