//! One partition's consume queue, key index and time index as files, in the
//! spirit of RocketMQ's ConsumeQueue and IndexFile: memory holds only what
//! is not yet written (O(pending)), and a restart reads one set, however many
//! records are retained.
//!
//! # Sets
//! A *set* covers `entries_per_file` consecutive offsets from its first
//! offset and is three files named by it in 20 digits: `cq-<first>.idx`,
//! `key-<first>.idx` and `time-<first>.idx`. The first set starts where the
//! index was created; each next one starts where the previous one ends, and
//! is created when the first offset past that end is appended. Every file is
//! created at its full length but sparse (one zero byte written at the last
//! position, no fallocate), so an empty partition costs three header blocks.
//!
//! # Header (64 bytes, at the start of every file)
//! ```text
//! bytes 0..8    magic: "KEELCQIX" (cq), "KEELKYIX" (key), "KEELTMIX" (time)
//! bytes 8..16   first offset of the set (u64 LE); the name must agree
//! bytes 16..24  entries per file (u64 LE)
//! bytes 24..28  version (u32 LE), 1
//! bytes 28..32  crc32c of bytes 0..28 (u32 LE)
//! bytes 32..40  seal: entries this file holds (u64 LE), written when the set
//!               is full and the next one is created
//! bytes 40..44  crc32c of bytes 32..40 (u32 LE); the zeros of a file never
//!               sealed do not match it
//! bytes 44..64  zero
//! ```
//! A bad magic, checksum, version, first offset or entries per file is
//! [`IndexError::BadHeader`]; a length other than the full one is
//! [`IndexError::Length`].
//!
//! # `cq-<first>.idx`
//! The entry of offset `o` at byte `64 + (o - first) * 28`, in today's
//! 28-byte layout (state.rs, "Consume queue"): log index u64, slot u32,
//! size u32, timestamp_ms u64, tag hash u32, all LE.
//!
//! # `key-<first>.idx`: an on-disk hash
//! ```text
//! bytes 64..64+4*S           slot table: S = max(entries_per_file / 4, 1) u32 LE
//!                            heads, the newest entry of the slot as its entry
//!                            number + 1; 0 = empty
//! then 16 bytes per entry n  key hash u64 | offset - first u32 | previous entry
//!   (at 64 + 4*S + 16*n)     of the same slot as entry number + 1 (0 = none) u32
//! ```
//! A key hash lives in slot `hash % S`. Entries are appended in offset
//! order, one per record with a key, so a chain runs newest to oldest and
//! each link points lower; a lookup walks the sets newest to oldest and stops
//! at the first offset below `start`.
//!
//! # `time-<first>.idx`
//! 16 bytes per entry n at `64 + 16*n`: a running maximum timestamp u64 and
//! the offset u64 of the record that reached it, appended when a record's
//! timestamp exceeds the running maximum *of its set*: each set starts its
//! own, so sets can be dropped without touching the next. The first record
//! of a set always makes an entry.
//!
//! # Durability
//! `append` buffers; past [`PENDING_WRITE_BYTES`] it pwrites. `flush` pwrites
//! what is pending, fdatasyncs every file written since the last flush,
//! fsyncs the directory when files were created (and its parent for a new
//! directory), and only then returns the [`Durable`] position. The caller
//! records that in its checkpoint; `open` trusts the files up to the
//! checkpoint's `Durable` and nothing past it (a power cut leaves garbage
//! there: torn, zeroed or stale bytes), and `purge_trimmed` removes trimmed
//! sets only once a checkpoint with the newer start is durable. A set is
//! sealed before its successor is created and the same flush syncs both, so
//! a checkpoint that reaches past a set always finds it sealed. An error
//! from `flush` or `append` is fail-stop for the index: reopen it from the
//! last checkpoint.
//!
//! # Costs
//! Memory: the pending buffers (at most [`PENDING_WRITE_BYTES`] and one
//! entry; given back by `flush`) plus one handle per live set. `open`: the
//! headers of the live sets (a few small reads each) and the entries of the
//! newest set, never the older ones. Each live set holds three descriptors
//! and three read-only maps (kernel VMAs, not memory).

mod file;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft_log::FileSystem;

use file::{
    CQ_BYTES, HEADER_BYTES, IndexFile, KEY_ENTRY_BYTES, KeyEntry, Kind, Layout, SLOT_BYTES, TIME_ENTRY_BYTES, io_error,
};

/// Offsets per set.
pub const ENTRIES_PER_FILE: u64 = 1 << 20;
/// Bytes of one consume-queue entry.
pub const CQ_ENTRY_BYTES: usize = 28;

/// One consume-queue entry, decoded: where the record of `offset` is in the
/// log, and what a fetch filters on without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub offset: u64,
    pub log_index: u64,
    pub slot: u32,
    pub size: u32,
    pub timestamp_ms: u64,
    pub tag_hash: u32,
}

impl CqEntry {
    /// Append in the consume queue's layout (its offset is where it sits).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.log_index.to_le_bytes());
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.tag_hash.to_le_bytes());
    }

    /// The entry of `offset` from its [`CQ_ENTRY_BYTES`] bytes.
    pub fn decode(offset: u64, raw: &[u8]) -> Self {
        debug_assert_eq!(raw.len(), CQ_ENTRY_BYTES);
        CqEntry {
            offset,
            log_index: file::u64_at(raw, 0),
            slot: file::u32_at(raw, 8),
            size: file::u32_at(raw, 12),
            timestamp_ms: file::u64_at(raw, 16),
            tag_hash: file::u32_at(raw, 24),
        }
    }
}
/// Pending bytes at which `append` writes them out before buffering more.
pub const PENDING_WRITE_BYTES: usize = 64 << 10;

const _: () = assert!(ENTRIES_PER_FILE <= file::MAX_ENTRIES_PER_FILE);

/// What a checkpoint records so a restart can trust the files up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Durable {
    /// Logical first retained offset.
    pub start: u64,
    /// One past the last durable offset.
    pub end: u64,
    /// Key entries of the newest set: the one holding `end - 1`, or the
    /// lowest set while nothing lies in it.
    pub key_entries: u64,
    /// Time entries of the newest set.
    pub time_entries: u64,
}

/// Why the index could not be created, opened, written or read. Every
/// variant names the file (or directory) and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Magic, checksum, version, first offset or entries per file are wrong.
    #[error("{} has a bad header: {what}", path.display())]
    BadHeader { path: PathBuf, what: String },
    /// A file (or set) the checkpoint needs is not there.
    #[error("{} is missing: {what}", path.display())]
    Missing { path: PathBuf, what: String },
    /// A file is not its set's full length: cut short, or of another size.
    #[error("{} is {len} bytes, but a set of {entries_per_file} entries needs {expected}", path.display())]
    Length { path: PathBuf, len: u64, expected: u64, entries_per_file: u64 },
    /// The checkpoint claims more than the file can hold.
    #[error("{} does not hold what checkpoint {durable:?} says: {what}", path.display())]
    Checkpoint { path: PathBuf, durable: Durable, what: String },
    /// Entries or seals that contradict each other or the checkpoint.
    #[error("{} is corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// `create` found an index already there.
    #[error("{} already holds index file {name}; a new index needs a directory without one", dir.display())]
    NotEmpty { dir: PathBuf, name: String },
    /// Entries per file must fit the key file's u32 links.
    #[error("{}: {entries_per_file} entries per file is outside 1..={}", dir.display(), file::MAX_ENTRIES_PER_FILE)]
    EntriesPerFile { dir: PathBuf, entries_per_file: u64 },
}

/// The three open files of one set.
#[derive(Debug)]
struct Set {
    first: u64,
    cq: IndexFile,
    key: IndexFile,
    time: IndexFile,
    /// Key and time entries; the newest set's count its pending ones too.
    key_entries: u64,
    time_entries: u64,
}

impl Set {
    fn create(fs: &dyn FileSystem, dir: &Path, layout: Layout, first: u64) -> Result<Set, IndexError> {
        let file = |kind: Kind| IndexFile::create(fs, &dir.join(kind.file_name(first)), kind, layout, first);
        let (cq, key, time) = (file(Kind::Cq)?, file(Kind::Key)?, file(Kind::Time)?);
        Ok(Set { first, cq, key, time, key_entries: 0, time_entries: 0 })
    }

    /// Open a set; `sealed` also requires its seals (a set below the newest)
    /// and takes its entry counts from them.
    fn open(fs: &dyn FileSystem, dir: &Path, layout: Layout, first: u64, sealed: bool) -> Result<Set, IndexError> {
        let file = |kind: Kind| IndexFile::open(fs, &dir.join(kind.file_name(first)), kind, layout, first);
        let ((cq, cq_seal), (key, key_seal), (time, time_seal)) =
            (file(Kind::Cq)?, file(Kind::Key)?, file(Kind::Time)?);
        let mut set = Set { first, cq, key, time, key_entries: 0, time_entries: 0 };
        if sealed {
            let e = layout.entries;
            let count = |file: &IndexFile, seal: Option<u64>, valid: std::ops::RangeInclusive<u64>| match seal {
                Some(n) if valid.contains(&n) => Ok(n),
                _ => Err(IndexError::Corrupt {
                    path: file.path_buf(),
                    what: format!("the set lies below the newest, but its seal is {seal:?}, not within {valid:?}"),
                }),
            };
            count(&set.cq, cq_seal, e..=e)?;
            set.key_entries = count(&set.key, key_seal, 0..=e)?;
            set.time_entries = count(&set.time, time_seal, 1..=e)?;
        }
        Ok(set)
    }

    fn files_mut(&mut self) -> [&mut IndexFile; 3] {
        [&mut self.cq, &mut self.key, &mut self.time]
    }
}

/// What `append` buffered for the newest set and has not written yet.
#[derive(Debug, Default)]
struct Pending {
    /// Offset of the first entry in `cq`.
    cq_from: u64,
    cq: Vec<u8>,
    /// Entry number of the first entry in `key`.
    key_from: u64,
    key: Vec<u8>,
    /// Slot → head (entry number + 1) changed since the last write: at most
    /// one per pending key entry, never the whole table.
    slots: BTreeMap<u64, u32>,
    /// Entry number of the first entry in `time`.
    time_from: u64,
    time: Vec<u8>,
}

impl Pending {
    fn at(cq_from: u64, key_from: u64, time_from: u64) -> Pending {
        Pending { cq_from, key_from, time_from, ..Pending::default() }
    }

    fn bytes(&self) -> usize {
        self.cq.len() + self.key.len() + self.time.len() + self.slots.len() * SLOT_BYTES as usize
    }
}

/// One partition's consume queue, key index and time index, as sets of
/// files in one directory (see the module documentation).
#[derive(Debug)]
pub struct PartitionIndex {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    layout: Layout,
    start: u64,
    end: u64,
    /// Live sets, oldest first; never empty. Appends go to the last, which
    /// stays even when trimmed whole, so there is always a set to open.
    sets: VecDeque<Set>,
    /// First offsets of sets wholly below `start`, whose files stay until
    /// `purge_trimmed`: a restart from the previous checkpoint needs them.
    dead: Vec<u64>,
    pending: Pending,
    /// The newest set's running maximum timestamp.
    running_max_ts: Option<u64>,
    /// Files were created since the last flush: the directory needs an fsync.
    created_files: bool,
    /// The directory itself was created: its parent needs an fsync.
    created_dir: bool,
}

impl PartitionIndex {
    /// Fresh, empty index in `dir` (created; must not hold index files) whose
    /// first offset is `start`. Nothing is durable before the first `flush`,
    /// which also fsyncs `dir`'s parent when `dir` was created here (the
    /// directories above that must already be durable).
    pub fn create(fs: Arc<dyn FileSystem>, dir: PathBuf, entries: u64, start: u64) -> Result<Self, IndexError> {
        let layout = Layout::new(&dir, entries)?;
        // The FileSystem trait has no mkdir (the fault layer models files,
        // not directories), so the real call; `flush` makes it durable.
        let created_dir = !dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir, "create directory"))?;
        let names = fs.list(&dir).map_err(io_error(&dir, "list"))?;
        if let Some(name) = names.into_iter().find(|n| Kind::parse(n).is_some()) {
            return Err(IndexError::NotEmpty { dir, name });
        }
        let set = Set::create(&*fs, &dir, layout, start)?;
        Ok(PartitionIndex {
            fs,
            dir,
            layout,
            start,
            end: start,
            sets: VecDeque::from([set]),
            dead: Vec::new(),
            pending: Pending::at(start, 0, 0),
            running_max_ts: None,
            created_files: true,
            created_dir,
        })
    }

    /// Reopen after a restart or crash, trusting the files only up to
    /// `durable` (from the last checkpoint): entries at or past `durable.end`
    /// are forgotten (log replay appends them again), sets whose first offset
    /// is at or past it are deleted (unless it is the lowest set), and the
    /// newest set keeps `durable.key_entries` key entries, with its slot table
    /// rebuilt from them, and `durable.time_entries` time entries. Reads the
    /// headers of the live sets and the entries of the newest set only.
    pub fn open(fs: Arc<dyn FileSystem>, dir: PathBuf, entries: u64, durable: Durable) -> Result<Self, IndexError> {
        let layout = Layout::new(&dir, entries)?;
        let e = layout.entries;
        let past = |path: PathBuf, what: String| IndexError::Checkpoint { path, durable, what };
        if durable.start > durable.end {
            return Err(past(dir, "its start lies past its end".into()));
        }
        let mut firsts = BTreeSet::new();
        for name in fs.list(&dir).map_err(io_error(&dir, "list"))? {
            firsts.extend(Kind::parse(&name).map(|(_, first)| first));
        }
        let Some(&lowest) = firsts.first() else {
            return Err(IndexError::Missing { path: dir, what: "the directory holds no index files".into() });
        };
        // The set holding the checkpoint's last offset; sets after it hold
        // nothing the checkpoint vouches for.
        let newest = firsts.range(..durable.end).next_back().copied().unwrap_or(lowest);
        let newest_end = newest.saturating_add(e);
        if durable.end > newest_end {
            let what = format!("the checkpoint ends at {}, past set {newest}", durable.end);
            return Err(IndexError::Missing { path: dir.join(Kind::Cq.file_name(newest_end)), what });
        }
        // The set holding the checkpoint's start; sets below it are dead,
        // left by a crash before `purge_trimmed`.
        let oldest = match newest.checked_sub(newest.saturating_sub(durable.start).div_ceil(e) * e) {
            Some(oldest) => oldest,
            None => {
                let what = format!("the checkpoint starts at {}, before the first possible set", durable.start);
                return Err(past(dir.join(Kind::Cq.file_name(lowest)), what));
            }
        };
        if let Some(&stray) = firsts.range(oldest..=newest).find(|&&f| !(f - oldest).is_multiple_of(e)) {
            let what = format!("set {stray} is not one of the sets from {oldest} every {e} offsets");
            return Err(IndexError::Corrupt { path: dir.join(Kind::Cq.file_name(stray)), what });
        }
        let mut sets = VecDeque::new();
        for first in (oldest..=newest).step_by(usize::try_from(e).expect("entries per file fit usize")) {
            sets.push_back(Set::open(&*fs, &dir, layout, first, first != newest)?);
        }
        let running_max_ts = restore_newest(sets.back_mut().expect("newest is opened"), layout, durable)?;
        // Only now that every check passed: a checkpoint that does not fit
        // must not cost the files it was wrong about.
        let above: Vec<u64> = firsts.range((Bound::Excluded(newest), Bound::Unbounded)).copied().collect();
        for &first in &above {
            for kind in Kind::ALL {
                let path = dir.join(kind.file_name(first));
                fs.remove(&path).map_err(io_error(&path, "remove"))?;
            }
        }
        if !above.is_empty() {
            fs.sync_dir(&dir).map_err(io_error(&dir, "fsync directory"))?;
        }
        Ok(PartitionIndex {
            fs,
            layout,
            start: durable.start,
            end: durable.end,
            sets,
            dead: firsts.range(..oldest).copied().collect(),
            pending: Pending::at(durable.end, durable.key_entries, durable.time_entries),
            running_max_ts,
            created_files: false,
            created_dir: false,
            dir,
        })
    }

    /// Logical first retained offset.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last appended offset.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Append the next offset's entry; returns its offset (the old `end`).
    /// `key_hash` None: a record without a key. On an error nothing was
    /// appended.
    pub fn append(
        &mut self,
        log_index: u64,
        slot: u32,
        size: u32,
        timestamp_ms: u64,
        tag_hash: u32,
        key_hash: Option<u64>,
    ) -> Result<u64, IndexError> {
        // Every fallible step comes before the first change.
        if self.pending.bytes() >= PENDING_WRITE_BYTES {
            self.write_pending()?;
        }
        let offset = self.end;
        if offset - self.newest().first == self.layout.entries {
            self.roll()?;
        }
        let newest = self.sets.len() - 1;
        let key = match key_hash {
            Some(hash) => {
                let slot = self.layout.slot_of(hash);
                let (head, set) = (self.slot_head(newest, slot)?, self.newest());
                if u64::from(head) > set.key_entries {
                    let what = format!("slot {slot} holds head {head}, past the set's {} key entries", set.key_entries);
                    return Err(IndexError::Corrupt { path: set.key.path_buf(), what });
                }
                Some((hash, slot, head))
            }
            None => None,
        };
        let set = self.sets.back_mut().expect("never empty");
        let delta = offset - set.first;
        assert!(delta < self.layout.entries, "offset {offset} lies in set {}", set.first);
        assert_eq!(self.pending.cq_from + (self.pending.cq.len() as u64 / CQ_BYTES), offset);
        file::put_cq(&mut self.pending.cq, log_index, slot, size, timestamp_ms, tag_hash);
        if let Some((hash, slot, head)) = key {
            let delta = u32::try_from(delta).expect("entries per file fit u32");
            KeyEntry { hash, delta, prev: head }.put(&mut self.pending.key);
            set.key_entries += 1;
            let head = u32::try_from(set.key_entries).expect("entries per file fit u32");
            self.pending.slots.insert(slot, head);
        }
        if self.running_max_ts.is_none_or(|max| timestamp_ms > max) {
            file::put_time(&mut self.pending.time, timestamp_ms, offset);
            set.time_entries += 1;
            self.running_max_ts = Some(timestamp_ms);
        }
        self.end = offset + 1;
        Ok(offset)
    }

    /// The entry of `offset` if `start <= offset < end`, pending ones included.
    /// A read error (only the fallback `read_at` path can have one) is logged
    /// and answered as absent; [`Self::try_get`] returns it.
    pub fn get(&self, offset: u64) -> Option<CqEntry> {
        self.try_get(offset).unwrap_or_else(|e| self.log_read_error(&e, None))
    }

    pub fn try_get(&self, offset: u64) -> Result<Option<CqEntry>, IndexError> {
        if offset < self.start || offset >= self.end {
            return Ok(None);
        }
        if offset >= self.pending.cq_from {
            let at = usize::try_from((offset - self.pending.cq_from) * CQ_BYTES).expect("pending is in memory");
            return Ok(Some(CqEntry::decode(offset, &self.pending.cq[at..at + CQ_BYTES as usize])));
        }
        let set = &self.sets[self.set_of(offset)];
        let bytes: [u8; CQ_BYTES as usize] = set.cq.read_array(self.layout.cq_pos(offset - set.first))?;
        Ok(Some(CqEntry::decode(offset, &bytes)))
    }

    /// Offsets `>= start` whose key hash equals `key_hash`, ascending.
    pub fn key_candidates(&self, key_hash: u64) -> Vec<u64> {
        self.try_key_candidates(key_hash).unwrap_or_else(|e| self.log_read_error(&e, Vec::new()))
    }

    pub fn try_key_candidates(&self, key_hash: u64) -> Result<Vec<u64>, IndexError> {
        let slot = self.layout.slot_of(key_hash);
        let mut found = Vec::new();
        'sets: for (i, set) in self.sets.iter().enumerate().rev() {
            let mut link = self.slot_head(i, slot)?;
            while link != 0 {
                if u64::from(link) > set.key_entries {
                    let what = format!(
                        "slot {slot} leads to entry {link} - 1, past the set's {} key entries",
                        set.key_entries
                    );
                    return Err(IndexError::Corrupt { path: set.key.path_buf(), what });
                }
                let entry = self.key_entry(i, u64::from(link) - 1)?;
                let offset = set.first + u64::from(entry.delta);
                if offset < self.start {
                    // Chains run down in offset, and older sets lie lower still.
                    break 'sets;
                }
                if entry.hash == key_hash {
                    found.push(offset);
                }
                // Checked, not assumed: a link that does not point lower
                // would loop forever.
                if entry.prev >= link {
                    let what = format!("key entry {} links to entry {} + 1, not lower", link - 1, entry.prev);
                    return Err(IndexError::Corrupt { path: set.key.path_buf(), what });
                }
                link = entry.prev;
            }
        }
        found.reverse();
        Ok(found)
    }

    /// The first offset `>= start` whose record timestamp is `>= ts`, or None.
    pub fn offset_for_timestamp(&self, ts: u64) -> Option<u64> {
        self.try_offset_for_timestamp(ts).unwrap_or_else(|e| self.log_read_error(&e, None))
    }

    pub fn try_offset_for_timestamp(&self, ts: u64) -> Result<Option<u64>, IndexError> {
        for (i, set) in self.sets.iter().enumerate() {
            let set_end = set.first.saturating_add(self.layout.entries).min(self.end);
            // Checked, not assumed: a garbage offset would send the scan
            // below far past the set.
            let entry = |k: u64| {
                let (max, offset) = self.time_entry(i, k)?;
                if !(set.first..set_end).contains(&offset) {
                    let what =
                        format!("time entry {k} names offset {offset}, outside the set's {}..{set_end}", set.first);
                    return Err(IndexError::Corrupt { path: set.time.path_buf(), what });
                }
                Ok((max, offset))
            };
            let n = set.time_entries;
            let reaching = first_where_not(0, n, |k| Ok(entry(k)?.0 < ts))?;
            if reaching == n {
                continue; // no record of this set reaches `ts`
            }
            let (_, reached) = entry(reaching)?;
            if reached >= self.start {
                return Ok(Some(reached));
            }
            // The set's running maximum reached `ts` below `start` (only the
            // first set can begin below it). The next time entry at or past
            // `start` is a record reaching `ts`; an earlier one may too:
            // scan up to it, at most one set.
            let next = first_where_not(reaching, n, |k| Ok(entry(k)?.1 < self.start))?;
            let bound = if next < n { entry(next)?.1 } else { set_end };
            for offset in self.start..bound {
                if self.try_get(offset)?.is_some_and(|e| e.timestamp_ms >= ts) {
                    return Ok(Some(offset));
                }
            }
            if next < n {
                return Ok(Some(bound));
            }
        }
        Ok(None)
    }

    /// Move the logical start to `start` (at most `end`; an earlier start
    /// changes nothing). Whole sets below it become dead, but their files
    /// stay until `purge_trimmed`: a crash before the next checkpoint must
    /// still find them. Their unsynced writes need no sync: a checkpoint from
    /// before the trim trusts only what an earlier flush synced.
    pub fn trim(&mut self, start: u64) {
        let start = start.min(self.end);
        if start <= self.start {
            return;
        }
        self.start = start;
        while self.sets.len() > 1 && self.sets[0].first + self.layout.entries <= start {
            let set = self.sets.pop_front().expect("more than one set");
            self.dead.push(set.first);
        }
    }

    /// Write what is pending, fdatasync every file written since the last
    /// flush, fsync the directory if files were created, and return what is
    /// now durable.
    pub fn flush(&mut self) -> Result<Durable, IndexError> {
        self.write_pending()?;
        for set in &mut self.sets {
            for file in set.files_mut() {
                file.sync()?;
            }
        }
        if self.created_files {
            self.fs.sync_dir(&self.dir).map_err(io_error(&self.dir, "fsync directory"))?;
            self.created_files = false;
        }
        if self.created_dir {
            let parent = self.dir.parent().unwrap_or(Path::new("/"));
            self.fs.sync_dir(parent).map_err(io_error(parent, "fsync directory"))?;
            self.created_dir = false;
        }
        // An idle partition keeps no buffers.
        for buf in [&mut self.pending.cq, &mut self.pending.key, &mut self.pending.time] {
            buf.shrink_to(0);
        }
        let newest = self.newest();
        Ok(Durable {
            start: self.start,
            end: self.end,
            key_entries: newest.key_entries,
            time_entries: newest.time_entries,
        })
    }

    /// Remove the files of dead sets (call once a checkpoint recording the
    /// newer start is durable).
    pub fn purge_trimmed(&mut self) -> Result<(), IndexError> {
        self.purge_below(u64::MAX)
    }

    /// Remove the files of dead sets that lie wholly below `start`: a
    /// checkpoint recording `start` is durable, and trims since may have
    /// killed sets it still names.
    pub fn purge_below(&mut self, start: u64) -> Result<(), IndexError> {
        let entries = self.layout.entries;
        let (gone, kept): (Vec<u64>, Vec<u64>) =
            self.dead.iter().partition(|&&first| first.saturating_add(entries) <= start);
        if gone.is_empty() {
            return Ok(());
        }
        for first in gone {
            for kind in Kind::ALL {
                let path = self.dir.join(kind.file_name(first));
                self.fs.remove(&path).map_err(io_error(&path, "remove"))?;
            }
        }
        self.dead = kept;
        self.fs.sync_dir(&self.dir).map_err(io_error(&self.dir, "fsync directory"))
    }

    /// Bytes the live sets' files take on disk, as written: headers, entries
    /// and (once a set has a key) its slot table; the sparse rest costs
    /// nothing. Dead sets awaiting `purge_trimmed` are not counted.
    pub fn disk_bytes(&self) -> u64 {
        let l = self.layout;
        let set_bytes = |s: &Set| {
            let records = s.first.saturating_add(l.entries).min(self.end) - s.first;
            let table = if s.key_entries > 0 { l.slots * SLOT_BYTES } else { 0 };
            3 * HEADER_BYTES
                + records * CQ_BYTES
                + table
                + s.key_entries * KEY_ENTRY_BYTES
                + s.time_entries * TIME_ENTRY_BYTES
        };
        self.sets.iter().map(set_bytes).sum()
    }

    /// Bytes held in memory: the pending buffers and the per-set handles.
    pub fn memory_bytes(&self) -> usize {
        let p = &self.pending;
        size_of::<Self>()
            + p.cq.capacity()
            + p.key.capacity()
            + p.time.capacity()
            + p.slots.len() * (size_of::<(u64, u32)>() + size_of::<usize>())
            + self.sets.capacity() * size_of::<Set>()
            + self.dead.capacity() * size_of::<u64>()
    }

    fn newest(&self) -> &Set {
        self.sets.back().expect("never empty")
    }

    /// The index in `sets` of the set holding `offset` (which is retained).
    fn set_of(&self, offset: u64) -> usize {
        usize::try_from((offset - self.sets[0].first) / self.layout.entries).expect("sets are in memory")
    }

    fn slot_head(&self, set: usize, slot: u64) -> Result<u32, IndexError> {
        if set == self.sets.len() - 1
            && let Some(&head) = self.pending.slots.get(&slot)
        {
            return Ok(head);
        }
        Ok(u32::from_le_bytes(self.sets[set].key.read_array(self.layout.slot_pos(slot))?))
    }

    fn key_entry(&self, set: usize, n: u64) -> Result<KeyEntry, IndexError> {
        let s = &self.sets[set];
        if set == self.sets.len() - 1 && n >= self.pending.key_from {
            let at = usize::try_from((n - self.pending.key_from) * KEY_ENTRY_BYTES).expect("pending is in memory");
            return Ok(KeyEntry::from_bytes(&self.pending.key[at..at + KEY_ENTRY_BYTES as usize]));
        }
        let bytes: [u8; KEY_ENTRY_BYTES as usize] = s.key.read_array(self.layout.key_pos(n))?;
        Ok(KeyEntry::from_bytes(&bytes))
    }

    fn time_entry(&self, set: usize, n: u64) -> Result<(u64, u64), IndexError> {
        if set == self.sets.len() - 1 && n >= self.pending.time_from {
            let at = usize::try_from((n - self.pending.time_from) * TIME_ENTRY_BYTES).expect("pending is in memory");
            return Ok(file::time_entry(&self.pending.time[at..at + TIME_ENTRY_BYTES as usize]));
        }
        let bytes: [u8; TIME_ENTRY_BYTES as usize] = self.sets[set].time.read_array(self.layout.time_pos(n))?;
        Ok(file::time_entry(&bytes))
    }

    /// pwrite what is pending into the newest set's files (no sync).
    /// Rewriting is harmless, so on an error everything stays pending.
    fn write_pending(&mut self) -> Result<(), IndexError> {
        let (p, l) = (&mut self.pending, self.layout);
        let set = self.sets.back_mut().expect("never empty");
        if !p.cq.is_empty() {
            set.cq.write(l.cq_pos(p.cq_from - set.first), &p.cq)?;
        }
        if !p.key.is_empty() {
            set.key.write(l.key_pos(p.key_from), &p.key)?;
        }
        for (&slot, head) in &p.slots {
            set.key.write(l.slot_pos(slot), &head.to_le_bytes())?;
        }
        if !p.time.is_empty() {
            set.time.write(l.time_pos(p.time_from), &p.time)?;
        }
        p.cq.clear();
        p.cq_from = self.end;
        p.key.clear();
        p.key_from = set.key_entries;
        p.slots.clear();
        p.time.clear();
        p.time_from = set.time_entries;
        Ok(())
    }

    /// The newest set is full: write it out, seal it and start the next.
    fn roll(&mut self) -> Result<(), IndexError> {
        self.write_pending()?;
        let e = self.layout.entries;
        let full = self.sets.back_mut().expect("never empty");
        full.cq.seal(e)?;
        full.key.seal(full.key_entries)?;
        full.time.seal(full.time_entries)?;
        let first = full.first + e;
        let set = Set::create(&*self.fs, &self.dir, self.layout, first)?;
        self.sets.push_back(set);
        self.pending = Pending::at(first, 0, 0);
        self.running_max_ts = None;
        self.created_files = true;
        Ok(())
    }

    fn log_read_error<T>(&self, e: &IndexError, answer: T) -> T {
        tracing::error!(dir = %self.dir.display(), error = %e, "index read failed; answering as if nothing matched");
        answer
    }
}

/// The first `n` in `lo..hi` for which `below(n)` is false, `below` being
/// true then false along the range (a fallible `partition_point`).
fn first_where_not(
    mut lo: u64,
    mut hi: u64,
    mut below: impl FnMut(u64) -> Result<bool, IndexError>,
) -> Result<u64, IndexError> {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Make the newest set hold exactly what `durable` says: check its kept
/// time and key entries, rebuild its slot table from the kept key entries
/// (writing only the slots that differ on disk: stale heads must not lead a
/// lookup past the checkpoint), and return its running maximum timestamp.
/// Reads at most one set's entries.
fn restore_newest(set: &mut Set, layout: Layout, durable: Durable) -> Result<Option<u64>, IndexError> {
    let kept = durable.end - set.first;
    let past = |file: &IndexFile, what: String| IndexError::Checkpoint { path: file.path_buf(), durable, what };
    if durable.key_entries > kept {
        return Err(past(&set.key, format!("{} key entries for {kept} records", durable.key_entries)));
    }
    if durable.time_entries > kept || (durable.time_entries == 0) != (kept == 0) {
        return Err(past(&set.time, format!("{} time entries for {kept} records", durable.time_entries)));
    }
    let corrupt = |file: &IndexFile, what: String| IndexError::Corrupt { path: file.path_buf(), what };

    let mut time = vec![0u8; usize::try_from(durable.time_entries * TIME_ENTRY_BYTES).expect("one set fits memory")];
    set.time.read(layout.time_pos(0), &mut time)?;
    let mut last: Option<(u64, u64)> = None;
    for (n, bytes) in time.chunks_exact(TIME_ENTRY_BYTES as usize).enumerate() {
        let (ts, offset) = file::time_entry(bytes);
        let in_order = match last {
            None => offset == set.first,
            Some((last_ts, last_offset)) => ts > last_ts && offset > last_offset,
        };
        if !in_order || offset >= durable.end {
            return Err(corrupt(&set.time, format!("time entry {n} ({ts} at offset {offset}) is out of order")));
        }
        let cq: [u8; CQ_BYTES as usize] = set.cq.read_array(layout.cq_pos(offset - set.first))?;
        let cq_ts = CqEntry::decode(offset, &cq).timestamp_ms;
        if cq_ts != ts {
            let what =
                format!("time entry {n} says offset {offset} has timestamp {ts}; its consume queue says {cq_ts}");
            return Err(corrupt(&set.time, what));
        }
        last = Some((ts, offset));
    }

    let mut keys = vec![0u8; usize::try_from(durable.key_entries * KEY_ENTRY_BYTES).expect("one set fits memory")];
    set.key.read(layout.key_pos(0), &mut keys)?;
    let mut heads = vec![0u32; usize::try_from(layout.slots).expect("one set fits memory")];
    let mut last_delta = None;
    for (n, bytes) in keys.chunks_exact(KEY_ENTRY_BYTES as usize).enumerate() {
        let entry = KeyEntry::from_bytes(bytes);
        if u64::from(entry.delta) >= kept || last_delta.is_some_and(|d| entry.delta <= d) {
            return Err(corrupt(&set.key, format!("key entry {n} (offset {}) is out of order", entry.delta)));
        }
        let head = &mut heads[usize::try_from(layout.slot_of(entry.hash)).expect("slot fits usize")];
        if entry.prev != *head {
            let what = format!("key entry {n} links to {}, but its slot's previous entry is {}", entry.prev, *head);
            return Err(corrupt(&set.key, what));
        }
        *head = u32::try_from(n + 1).expect("entries per file fit u32");
        last_delta = Some(entry.delta);
    }
    // A page of slots at a time: compare, and write the page only if it differs.
    const CHUNK_SLOTS: usize = 1024;
    let mut on_disk = vec![0u8; CHUNK_SLOTS * SLOT_BYTES as usize];
    for (c, chunk) in heads.chunks(CHUNK_SLOTS).enumerate() {
        let want: Vec<u8> = chunk.iter().flat_map(|h| h.to_le_bytes()).collect();
        let pos = layout.slot_pos((c * CHUNK_SLOTS) as u64);
        set.key.read(pos, &mut on_disk[..want.len()])?;
        if on_disk[..want.len()] != want[..] {
            set.key.write(pos, &want)?;
        }
    }
    set.key_entries = durable.key_entries;
    set.time_entries = durable.time_entries;
    Ok(last.map(|(ts, _)| ts))
}
