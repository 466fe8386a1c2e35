//! The file-backed index against a naive model of today's in-memory consume
//! queue, key index and running-maximum time index (state.rs), on the real
//! file system and through the power-loss layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft_log::fault::FaultFs;
use keel_raft_log::{FileSystem, RealFs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

use super::*;

/// Key hashes chosen to collide: with 8 entries per file there are 2 slots
/// (2, 4 and `u64::MAX - 1` share slot 0; 7 and 9 share slot 1), with 4 or
/// fewer a single slot.
const KEYS: [u64; 5] = [2, 4, 7, 9, u64::MAX - 1];
/// A hash no record has, in a slot that records use.
const ABSENT_KEY: u64 = 6;

#[derive(Debug, Clone, Copy)]
struct Rec {
    ts: u64,
    key: Option<u64>,
    /// Seeds the other fields, so every entry differs from its neighbours.
    salt: u64,
}

impl Rec {
    fn entry(&self, offset: u64) -> CqEntry {
        CqEntry {
            offset,
            log_index: 1000 + self.salt,
            slot: (self.salt % 7) as u32,
            size: 100 + self.salt as u32,
            timestamp_ms: self.ts,
            tag_hash: (self.salt as u32).wrapping_mul(0x9e37_79b9) | 1,
        }
    }
}

/// Today's answers, computed the obvious way.
#[derive(Debug, Clone)]
struct Model {
    first: u64,
    start: u64,
    recs: Vec<Rec>,
}

impl Model {
    fn new(first: u64) -> Model {
        Model { first, start: first, recs: Vec::new() }
    }

    fn end(&self) -> u64 {
        self.first + self.recs.len() as u64
    }

    fn rec(&self, offset: u64) -> Rec {
        self.recs[(offset - self.first) as usize]
    }

    fn get(&self, offset: u64) -> Option<CqEntry> {
        (self.start..self.end()).contains(&offset).then(|| self.rec(offset).entry(offset))
    }

    fn keys(&self, hash: u64) -> Vec<u64> {
        (self.start..self.end()).filter(|&o| self.rec(o).key == Some(hash)).collect()
    }

    /// What today's running-maximum index answers with the maximum taken from `start`.
    fn first_at(&self, ts: u64) -> Option<u64> {
        (self.start..self.end()).find(|&o| self.rec(o).ts >= ts)
    }

    fn trim(&mut self, start: u64) {
        self.start = self.start.max(start.min(self.end()));
    }
}

fn append(index: &mut PartitionIndex, model: &mut Model, rec: Rec) {
    let e = rec.entry(model.end());
    let offset = index.append(e.log_index, e.slot, e.size, e.timestamp_ms, e.tag_hash, rec.key).expect("append");
    assert_eq!(offset, model.end(), "append returns the next offset");
    model.recs.push(rec);
}

fn random_rec(rng: &mut StdRng) -> Rec {
    let key = rng.random_bool(0.6).then(|| KEYS[rng.random_range(0..KEYS.len())]);
    Rec { ts: rng.random_range(0..40), key, salt: rng.random_range(0..1_000_000) }
}

/// Every answer of `index` equals the model's: each entry around the
/// retained range, each key (and one no record has), each timestamp.
#[track_caller]
fn assert_same(index: &PartitionIndex, model: &Model, why: &str) {
    assert_eq!((index.start(), index.end()), (model.start, model.end()), "{why}: start, end");
    for offset in model.first.saturating_sub(2)..model.end() + 2 {
        assert_eq!(index.try_get(offset).expect("read"), model.get(offset), "{why}: entry {offset}");
    }
    for hash in KEYS.into_iter().chain([ABSENT_KEY]) {
        assert_eq!(index.try_key_candidates(hash).expect("read"), model.keys(hash), "{why}: key {hash}");
    }
    for ts in 0..=41 {
        assert_eq!(index.try_offset_for_timestamp(ts).expect("read"), model.first_at(ts), "{why}: time {ts}");
    }
}

fn real() -> Arc<dyn FileSystem> {
    Arc::new(RealFs)
}

fn names(dir: &Path) -> Vec<String> {
    // The power-loss layer parks removed files under hidden names until the directory is synced.
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| !n.starts_with(".fault-hidden-"))
        .collect();
    names.sort();
    names
}

/// The sets present in `dir`, by first offset, each with all three files.
fn sets_in(dir: &Path) -> Vec<u64> {
    let names = names(dir);
    let firsts: Vec<u64> =
        names.iter().filter_map(|n| Kind::parse(n)).filter(|(k, _)| *k == Kind::Cq).map(|(_, f)| f).collect();
    assert_eq!(names.len(), 3 * firsts.len(), "every set has its three files: {names:?}");
    firsts
}

fn path_of(err: &IndexError) -> &Path {
    match err {
        IndexError::Io { path, .. }
        | IndexError::BadHeader { path, .. }
        | IndexError::Missing { path, .. }
        | IndexError::Length { path, .. }
        | IndexError::Checkpoint { path, .. }
        | IndexError::Corrupt { path, .. } => path,
        IndexError::NotEmpty { dir, .. } | IndexError::EntriesPerFile { dir, .. } => dir,
    }
}

/// `result` failed with an error of `kind` naming the file `name`, in its message too.
#[track_caller]
fn assert_names<T: std::fmt::Debug>(result: Result<T, IndexError>, kind: &str, name: &str) {
    let err = result.expect_err("an error");
    assert!(format!("{err:?}").starts_with(kind), "expected {kind}, got {err:?}");
    assert!(path_of(&err).ends_with(name), "{err:?} does not name {name}");
    assert!(err.to_string().contains(name), "the message does not name {name}: {err}");
}

#[test]
fn entries_read_back_across_sets_from_the_buffer_and_from_the_files() {
    // Phase: 50 records from offset 5, 8 per set: seven sets, read back while pending.
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("p0");
    let mut index = PartitionIndex::create(real(), dir.clone(), 8, 5).expect("create");
    let mut model = Model::new(5);
    for o in 5..55u64 {
        let key = (o % 3 == 0).then_some(KEYS[(o % 5) as usize]);
        append(&mut index, &mut model, Rec { ts: o * 10 % 37, key, salt: o });
    }
    assert_same(&index, &model, "pending");

    // Phase: flushed, the same answers come from the files; the durable
    // position counts the newest set's (53, 54) key and time entries.
    let durable = index.flush().expect("flush");
    assert_eq!(durable, Durable { start: 5, end: 55, key_entries: 1, time_entries: 2 });
    assert_same(&index, &model, "flushed");

    // Phase: seven sets of three full-length files; the consume queue holds
    // today's 28-byte entries at 64 + (o - first) * 28.
    assert_eq!(sets_in(&dir), vec![5, 13, 21, 29, 37, 45, 53]);
    let cq = std::fs::read(dir.join("cq-00000000000000000013.idx")).expect("read");
    assert_eq!(cq.len(), 64 + 8 * 28);
    let at = 64 + (17 - 13) * 28;
    let e = model.rec(17).entry(17);
    assert_eq!(cq[at..at + 8], e.log_index.to_le_bytes());
    assert_eq!(cq[at + 8..at + 12], e.slot.to_le_bytes());
    assert_eq!(cq[at + 12..at + 16], e.size.to_le_bytes());
    assert_eq!(cq[at + 16..at + 24], e.timestamp_ms.to_le_bytes());
    assert_eq!(cq[at + 24..at + 28], e.tag_hash.to_le_bytes());
    assert_eq!(std::fs::metadata(dir.join("key-00000000000000000013.idx")).expect("stat").len(), 64 + 2 * 4 + 8 * 16);
    assert_eq!(std::fs::metadata(dir.join("time-00000000000000000013.idx")).expect("stat").len(), 64 + 8 * 16);
}

#[test]
fn files_are_sparse_and_memory_is_bounded_by_what_is_pending() {
    use std::os::unix::fs::MetadataExt;
    // Phase: an empty index at the production size costs a few blocks, not
    // its 29 + 20 + 16 MiB of length.
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("p");
    let mut index = PartitionIndex::create(real(), dir.clone(), ENTRIES_PER_FILE, 0).expect("create");
    index.flush().expect("flush");
    let cq = std::fs::metadata(dir.join("cq-00000000000000000000.idx")).expect("stat");
    assert_eq!(cq.len(), 64 + ENTRIES_PER_FILE * 28);
    let allocated: u64 = names(&dir).iter().map(|n| std::fs::metadata(dir.join(n)).expect("stat").blocks() * 512).sum();
    assert!(allocated <= 64 << 10, "an empty index allocates {allocated} bytes");
    assert_eq!(index.disk_bytes(), 3 * 64);

    // Phase: 200 000 keyed records, about 9 MB in today's memory, never hold
    // more than the pending buffers here; flushed, hardly anything.
    let mut model = Model::new(0);
    for o in 0..200_000u64 {
        append(&mut index, &mut model, Rec { ts: o, key: Some(o.wrapping_mul(0x9e37_79b9_7f4a_7c15)), salt: o });
        if o % 10_000 == 0 {
            assert!(index.memory_bytes() < 3 * PENDING_WRITE_BYTES, "{} bytes at {o}", index.memory_bytes());
        }
    }
    index.flush().expect("flush");
    assert!(index.memory_bytes() < 4096, "{} bytes held after a flush", index.memory_bytes());
    let slots = ENTRIES_PER_FILE / 4;
    assert_eq!(index.disk_bytes(), 3 * 64 + 200_000 * 28 + slots * 4 + 200_000 * 16 + 200_000 * 16);
    for o in [0, 1, 65_535, 199_999] {
        assert_eq!(index.get(o), model.get(o), "entry {o}");
        assert_eq!(index.key_candidates(o.wrapping_mul(0x9e37_79b9_7f4a_7c15)), vec![o]);
    }
    assert_eq!(index.offset_for_timestamp(123_456), Some(123_456));
}

#[test]
fn key_candidates_walk_collisions_within_and_across_sets() {
    // Phase: 30 records, 8 per set (2 slots): hashes 2 and 4 share slot 0,
    // 7 and 9 slot 1, and hash 2 is also given to two different keys (a
    // full-hash collision the caller confirms away on the record).
    let tmp = TempDir::new().expect("tempdir");
    let mut index = PartitionIndex::create(real(), tmp.path().join("p"), 8, 0).expect("create");
    let mut model = Model::new(0);
    for o in 0..30u64 {
        let key = [Some(2), Some(4), Some(7), None, Some(9), Some(2)][(o % 6) as usize];
        append(&mut index, &mut model, Rec { ts: o, key, salt: o });
    }
    let twos: Vec<u64> = (0..30).filter(|o| o % 6 == 0 || o % 6 == 5).collect();
    assert_eq!(index.key_candidates(2), twos, "pending");
    assert_eq!(index.key_candidates(4), (1..30).step_by(6).collect::<Vec<_>>());
    assert_eq!(index.key_candidates(ABSENT_KEY), Vec::<u64>::new(), "a slot-0 hash no record has");
    assert_same(&index, &model, "pending");
    index.flush().expect("flush");
    assert_eq!(index.key_candidates(2), twos, "flushed");
    assert_same(&index, &model, "flushed");

    // Phase: trimmed mid-set and then past a whole set, candidates start at `start`.
    for start in [9, 17, 29, 30] {
        index.trim(start);
        model.trim(start);
        assert_eq!(index.key_candidates(2), twos.iter().copied().filter(|&o| o >= start).collect::<Vec<_>>());
        assert_same(&index, &model, &format!("trimmed to {start}"));
    }
}

/// Random appends, trims, flushes, purges and crashes against the model.
/// A crash drops the index without a flush (`power_loss`: and cuts the
/// power, tearing the newest unsynced write) and reopens it at the last
/// flushed `Durable`, which the model goes back to.
fn random_histories(seeds: std::ops::Range<u64>, power_loss: bool) {
    // How often the paths that matter were taken, so the test cannot pass by missing them.
    let (mut mid_set_trims, mut crashes, mut forgotten) = (0, 0, 0);
    for seed in seeds.clone() {
        let mut rng = StdRng::seed_from_u64(seed);
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path().join("p");
        let fault = FaultFs::new();
        let fs: Arc<dyn FileSystem> = if power_loss { Arc::new(fault.clone()) } else { real() };
        let e = [1, 2, 3, 4, 8][rng.random_range(0..5)];
        let first = rng.random_range(0..20);
        let mut index = PartitionIndex::create(Arc::clone(&fs), dir.clone(), e, first).expect("create");
        let mut model = Model::new(first);
        let mut saved: Option<(Durable, Model)> = None;
        for step in 0..rng.random_range(1..90) {
            let why = format!("seed {seed}, {e} per set, step {step}");
            match rng.random_range(0..24) {
                0 | 1 => {
                    let to = rng.random_range(model.start..=model.end() + 1);
                    index.trim(to);
                    model.trim(to);
                    mid_set_trims += usize::from(model.start < model.end() && !(model.start - first).is_multiple_of(e));
                }
                2 | 3 => {
                    let durable = index.flush().expect("flush");
                    assert_eq!((durable.start, durable.end), (model.start, model.end()), "{why}");
                    saved = Some((durable, model.clone()));
                    if rng.random_bool(0.5) {
                        index.purge_trimmed().expect("purge");
                    }
                }
                4 => {
                    let Some((durable, at)) = &saved else { continue };
                    forgotten += model.end() - durable.end;
                    crashes += 1;
                    drop(index);
                    if power_loss {
                        fault.power_loss(rng.random_bool(0.7).then(|| rng.random_range(0..64)));
                        fault.power_on();
                    }
                    index = PartitionIndex::open(Arc::clone(&fs), dir.clone(), e, *durable)
                        .unwrap_or_else(|err| panic!("{why}: open: {err}"));
                    model = at.clone();
                    let newest = sets_in(&dir).into_iter().max().expect("a set");
                    assert!(newest < model.end().max(first + 1), "{why}: set {newest} survived at end {}", model.end());
                }
                _ => append(&mut index, &mut model, random_rec(&mut rng)),
            }
            assert_same(&index, &model, &why);
        }
    }
    let runs = seeds.end - seeds.start;
    println!("{runs} runs: {mid_set_trims} mid-set trims, {crashes} crashes forgetting {forgotten} records");
    assert!(mid_set_trims as u64 > runs && crashes as u64 > runs / 2 && forgotten > runs, "too few paths taken");
}

#[test]
fn random_histories_on_the_real_file_system_answer_as_the_model() {
    random_histories(0..250, false);
}

#[test]
fn random_histories_through_power_loss_answer_as_the_model() {
    random_histories(1000..1150, true);
}

#[test]
fn a_reopened_index_answers_as_before_and_goes_on() {
    // Phase: 29 records over four sets, flushed; reopened, the same answers.
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("p");
    let mut rng = StdRng::seed_from_u64(7);
    let mut index = PartitionIndex::create(real(), dir.clone(), 8, 0).expect("create");
    let mut model = Model::new(0);
    for _ in 0..29 {
        append(&mut index, &mut model, random_rec(&mut rng));
    }
    index.trim(3);
    model.trim(3);
    let durable = index.flush().expect("flush");
    let disk_bytes = index.disk_bytes();
    drop(index);
    let mut index = PartitionIndex::open(real(), dir.clone(), 8, durable).expect("open");
    assert_same(&index, &model, "reopened");
    assert_eq!(index.disk_bytes(), disk_bytes, "the seals give back the older sets' entry counts");

    // Phase: it goes on, across the next set, and a second reopen agrees.
    for _ in 0..12 {
        append(&mut index, &mut model, random_rec(&mut rng));
    }
    assert_same(&index, &model, "appended after reopening");
    let durable = index.flush().expect("flush");
    drop(index);
    let index = PartitionIndex::open(real(), dir, 8, durable).expect("open");
    assert_same(&index, &model, "reopened again");
}

#[test]
fn reopening_at_an_older_checkpoint_forgets_what_came_after_and_appends_again() {
    // Phase: 20 records flushed (sets 0, 8, 16), then 20 more written out
    // (sets 24 and 32 created, set 16 sealed) but never flushed.
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("p");
    let mut index = PartitionIndex::create(real(), dir.clone(), 8, 0).expect("create");
    let mut model = Model::new(0);
    let key = |o: u64| Some(KEYS[(o % 3) as usize]);
    for o in 0..20 {
        append(&mut index, &mut model, Rec { ts: o % 9, key: key(o), salt: o });
    }
    let durable = index.flush().expect("flush");
    let kept = model.clone();
    for o in 20..40 {
        append(&mut index, &mut model, Rec { ts: 100 + o, key: key(o), salt: o });
    }
    assert_eq!(sets_in(&dir), vec![0, 8, 16, 24, 32]);
    drop(index);

    // Phase: reopened at the checkpoint, 20..40 are gone, sets 24 and 32 too,
    // and no chain reaches the stale key entries left in set 16.
    let mut index = PartitionIndex::open(real(), dir.clone(), 8, durable).expect("open");
    assert_eq!(sets_in(&dir), vec![0, 8, 16]);
    let mut model = kept;
    assert_same(&index, &model, "reopened at the older checkpoint");
    assert_eq!(index.offset_for_timestamp(100), None, "a forgotten timestamp");

    // Phase: other records take offsets 20..40; keys chain through the old
    // and the new ones only, and so does a second reopen.
    for o in 20..40 {
        append(&mut index, &mut model, Rec { ts: o % 11, key: key(o + 1), salt: 5000 + o });
    }
    assert_same(&index, &model, "appended again");
    let durable = index.flush().expect("flush");
    drop(index);
    let index = PartitionIndex::open(real(), dir, 8, durable).expect("open");
    assert_same(&index, &model, "reopened after appending again");
}

#[test]
fn power_loss_keeps_exactly_what_the_checkpoint_vouches_for() {
    for tear in [None, Some(0), Some(1), Some(13), Some(100)] {
        // Phase: 21 records flushed, 30 more written out by rolling into new
        // sets and partly pending, then the power goes (tearing the newest write).
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path().join("p");
        let fault = FaultFs::new();
        let fs: Arc<dyn FileSystem> = Arc::new(fault.clone());
        let mut index = PartitionIndex::create(Arc::clone(&fs), dir.clone(), 8, 0).expect("create");
        let mut model = Model::new(0);
        for o in 0..21 {
            append(&mut index, &mut model, Rec { ts: (o * 7) % 23, key: Some(KEYS[(o % 5) as usize]), salt: o });
        }
        let durable = index.flush().expect("flush");
        let kept = model.clone();
        for o in 21..51 {
            append(&mut index, &mut model, Rec { ts: 50 + o, key: Some(KEYS[(o % 2) as usize]), salt: o });
        }
        assert!(fault.unsynced_bytes() > 0, "writes are waiting for a sync");
        fault.power_loss(tear);
        fault.power_on();
        drop(index);

        // Phase: reopened at the checkpoint, exactly the first 21 answer;
        // the sets created after it are gone.
        let mut index = PartitionIndex::open(Arc::clone(&fs), dir.clone(), 8, durable).expect("open");
        let mut model = kept;
        assert_same(&index, &model, &format!("tear {tear:?}: after power loss"));
        assert_eq!(sets_in(&dir), vec![0, 8, 16], "tear {tear:?}");

        // Phase: it goes on; a flushed state survives the next power loss whole.
        for o in 21..35 {
            append(&mut index, &mut model, Rec { ts: o % 5, key: Some(KEYS[(o % 4) as usize]), salt: 900 + o });
        }
        let durable = index.flush().expect("flush");
        assert_eq!(fault.unsynced_bytes(), 0, "a flush leaves nothing unsynced");
        fault.power_loss(None);
        fault.power_on();
        drop(index);
        let index = PartitionIndex::open(fs, dir, 8, durable).expect("open");
        assert_same(&index, &model, &format!("tear {tear:?}: after the second power loss"));
    }
}

#[test]
fn trim_and_purge_remove_whole_sets_only() {
    // Phase: 30 records over sets 0, 8, 16 and 24; a trim to 13 kills set 0,
    // whose files stay until purge_trimmed.
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("p");
    let mut index = PartitionIndex::create(real(), dir.clone(), 8, 0).expect("create");
    let mut model = Model::new(0);
    for o in 0..30 {
        append(&mut index, &mut model, Rec { ts: 30 - o, key: Some(KEYS[(o % 5) as usize]), salt: o });
    }
    let before = index.disk_bytes();
    index.trim(13);
    model.trim(13);
    assert_eq!(sets_in(&dir), vec![0, 8, 16, 24], "trim removes nothing");
    let checkpoint = index.flush().expect("flush");
    index.purge_trimmed().expect("purge");
    assert_eq!(sets_in(&dir), vec![8, 16, 24], "set 8 holds 13..16 and stays");
    assert_eq!(index.disk_bytes(), before - (3 * 64 + 8 * 28 + 2 * 4 + 8 * 16 + 16), "set 0: one time entry");
    assert_same(&index, &model, "trimmed to 13");

    // Phase: trimmed to the end, the newest set stays (appends go there);
    // reopening at the checkpoint and appending go on from it.
    index.trim(30);
    model.trim(30);
    let durable = index.flush().expect("flush");
    index.purge_trimmed().expect("purge");
    assert_eq!(sets_in(&dir), vec![24]);
    assert_same(&index, &model, "trimmed to the end");
    drop(index);
    let mut index = PartitionIndex::open(real(), dir.clone(), 8, durable).expect("open");
    append(&mut index, &mut model, Rec { ts: 3, key: Some(2), salt: 77 });
    assert_same(&index, &model, "appended after trimming everything");

    // Phase: the older checkpoint needs the purged sets: an error naming one.
    drop(index);
    assert_names(PartitionIndex::open(real(), dir, 8, checkpoint), "Missing", "cq-00000000000000000008.idx");
}

/// An index of 20 records in sets 0, 8 and 16, flushed; its directory and checkpoint.
fn flushed_index(tmp: &TempDir) -> (PathBuf, Durable) {
    let dir = tmp.path().join("p");
    let mut index = PartitionIndex::create(real(), dir.clone(), 8, 0).expect("create");
    for o in 0..20u64 {
        let key = (o % 2 == 0).then_some(o);
        index.append(o + 1, 0, 1, o % 6, 0, key).expect("append");
    }
    let durable = index.flush().expect("flush");
    assert_eq!(durable, Durable { start: 0, end: 20, key_entries: 2, time_entries: 2 });
    (dir, durable)
}

#[test]
fn a_flipped_header_byte_is_a_bad_header_naming_the_file() {
    let tmp = TempDir::new().expect("tempdir");
    let (dir, durable) = flushed_index(&tmp);
    for name in ["cq-00000000000000000016.idx", "key-00000000000000000008.idx", "time-00000000000000000000.idx"] {
        let path = dir.join(name);
        let good = std::fs::read(&path).expect("read");
        for at in 0..32 {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).expect("write");
            assert_names(PartitionIndex::open(real(), dir.clone(), 8, durable), "BadHeader", name);
        }
        std::fs::write(&path, &good).expect("write");
    }
    let index = PartitionIndex::open(real(), dir.clone(), 8, durable).expect("the restored files open");
    assert_eq!(index.end(), 20);
    drop(index);
    // Phase: a set below the newest that lost its seal cannot be trusted.
    let path = dir.join("time-00000000000000000008.idx");
    let mut unsealed = std::fs::read(&path).expect("read");
    unsealed[32..44].fill(0);
    std::fs::write(&path, &unsealed).expect("write");
    assert_names(PartitionIndex::open(real(), dir, 8, durable), "Corrupt", "time-00000000000000000008.idx");
}

#[test]
fn corrupt_links_and_offsets_read_back_are_errors_naming_the_file() {
    use std::os::unix::fs::FileExt;
    let patch = |path: &Path, at: u64, bytes: &[u8]| {
        let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
        file.write_all_at(bytes, at).expect("pwrite");
    };
    let tmp = TempDir::new().expect("tempdir");
    let (dir, durable) = flushed_index(&tmp);
    let index = PartitionIndex::open(real(), dir.clone(), 8, durable).expect("open");
    assert_eq!(index.key_candidates(10), vec![10]);
    assert_eq!(index.offset_for_timestamp(0), Some(0));
    // Phase: set 8's slot 0 (keys 8, 10, 12, 14) points past its 4 entries.
    patch(&dir.join("key-00000000000000000008.idx"), 64, &99u32.to_le_bytes());
    assert_names(index.try_key_candidates(10), "Corrupt", "key-00000000000000000008.idx");
    assert_eq!(index.key_candidates(10), Vec::<u64>::new(), "logged, answered as nothing found");
    // Phase: set 0's first time entry names an offset outside the set.
    patch(&dir.join("time-00000000000000000000.idx"), 64 + 8, &1000u64.to_le_bytes());
    assert_names(index.try_offset_for_timestamp(0), "Corrupt", "time-00000000000000000000.idx");
    assert_eq!(index.offset_for_timestamp(0), None);
}

#[test]
fn a_checkpoint_the_files_do_not_hold_is_an_error_naming_the_file() {
    let tmp = TempDir::new().expect("tempdir");
    let (dir, durable) = flushed_index(&tmp);
    let open = |d: Durable| PartitionIndex::open(real(), dir.clone(), 8, d);
    // Phase: checkpoints past the files, each named by the file that fails it.
    assert_names(open(Durable { end: 25, ..durable }), "Missing", "cq-00000000000000000024.idx");
    assert_names(open(Durable { key_entries: 5, ..durable }), "Checkpoint", "key-00000000000000000016.idx");
    assert_names(open(Durable { time_entries: 0, ..durable }), "Checkpoint", "time-00000000000000000016.idx");
    // One more entry than were written: the zeros past them are not entries.
    assert_names(open(Durable { key_entries: 3, ..durable }), "Corrupt", "key-00000000000000000016.idx");
    assert_names(open(Durable { time_entries: 3, ..durable }), "Corrupt", "time-00000000000000000016.idx");
    assert_names(open(Durable { start: 21, ..durable }), "Checkpoint", "p");
    // Opened with another set size, set 8 is off the grid of sets every 16.
    assert_names(PartitionIndex::open(real(), dir.clone(), 16, durable), "Corrupt", "cq-00000000000000000008.idx");

    // Phase: a short file and a missing one.
    let cq = dir.join("cq-00000000000000000008.idx");
    let good = std::fs::read(&cq).expect("read");
    std::fs::write(&cq, &good[..good.len() - 1]).expect("write");
    assert_names(open(durable), "Length", "cq-00000000000000000008.idx");
    std::fs::write(&cq, &good).expect("write");
    let key = dir.join("key-00000000000000000016.idx");
    let good = std::fs::read(&key).expect("read");
    std::fs::remove_file(&key).expect("remove");
    assert_names(open(durable), "Missing", "key-00000000000000000016.idx");
    std::fs::write(&key, &good).expect("write");

    // Phase: none of the refusals removed or damaged anything.
    assert_eq!(sets_in(&dir), vec![0, 8, 16]);
    let index = open(durable).expect("open");
    assert_eq!(index.try_key_candidates(18).expect("read"), vec![18]);
    assert_eq!(index.try_offset_for_timestamp(5).expect("read"), Some(5));

    // Phase: an empty directory holds no index.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert_names(PartitionIndex::open(real(), empty, 8, Durable::default()), "Missing", "empty");
}

#[test]
fn create_refuses_a_directory_holding_an_index_and_a_bad_set_size() {
    let tmp = TempDir::new().expect("tempdir");
    let (dir, _) = flushed_index(&tmp);
    assert_names(PartitionIndex::create(real(), dir, 8, 0), "NotEmpty", "p");
    for bad in [0, u64::from(u32::MAX) + 1] {
        assert_names(PartitionIndex::create(real(), tmp.path().join("q"), bad, 0), "EntriesPerFile", "q");
    }
}
