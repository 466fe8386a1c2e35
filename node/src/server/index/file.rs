//! One index file: its kind and name, where its parts sit, its header and
//! seal, and its I/O: reads through a map taken once when the file is
//! opened (or `read_at` where the layer gives no map), writes with pwrite.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use keel_raft_log::{FileIo, FileSystem};

use super::IndexError;
use super::{CQ_ENTRY_BYTES, CqEntry};

pub(super) const HEADER_BYTES: u64 = 64;
pub(super) const CQ_BYTES: u64 = CQ_ENTRY_BYTES as u64;
pub(super) const SLOT_BYTES: u64 = 4;
pub(super) const KEY_ENTRY_BYTES: u64 = 16;
pub(super) const TIME_ENTRY_BYTES: u64 = 16;
const VERSION: u32 = 1;
/// Key entries link to each other by entry number + 1 in a u32 and store
/// their offset as a u32 delta from the set's first offset.
pub(super) const MAX_ENTRIES_PER_FILE: u64 = u32::MAX as u64;

const _: () = assert!(CQ_BYTES == 28, "the consume-queue entry is today's 28 bytes");
const _: () = assert!(HEADER_BYTES >= 44, "the header holds its fields, checksum and seal");

/// The three files of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Cq,
    Key,
    Time,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Cq, Kind::Key, Kind::Time];

    fn prefix(self) -> &'static str {
        match self {
            Kind::Cq => "cq-",
            Kind::Key => "key-",
            Kind::Time => "time-",
        }
    }

    fn magic(self) -> [u8; 8] {
        match self {
            Kind::Cq => *b"KEELCQIX",
            Kind::Key => *b"KEELKYIX",
            Kind::Time => *b"KEELTMIX",
        }
    }

    pub fn file_name(self, first: u64) -> String {
        format!("{}{first:020}.idx", self.prefix())
    }

    /// The kind and first offset an index file name carries.
    pub fn parse(name: &str) -> Option<(Kind, u64)> {
        Kind::ALL.into_iter().find_map(|kind| {
            let digits = name.strip_prefix(kind.prefix())?.strip_suffix(".idx")?;
            let valid = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
            Some((kind, digits.parse().ok().filter(|_| valid)?))
        })
    }
}

/// Where things sit in the files of every set, fixed by entries per file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub entries: u64,
    pub slots: u64,
}

impl Layout {
    pub fn new(dir: &Path, entries_per_file: u64) -> Result<Layout, IndexError> {
        if !(1..=MAX_ENTRIES_PER_FILE).contains(&entries_per_file) {
            return Err(IndexError::EntriesPerFile { dir: dir.to_path_buf(), entries_per_file });
        }
        // A quarter as many slots as entries: chains of about four when
        // every record has a key, as RocketMQ's IndexFile sizes its table.
        Ok(Layout { entries: entries_per_file, slots: (entries_per_file / 4).max(1) })
    }

    pub fn cq_pos(&self, n: u64) -> u64 {
        HEADER_BYTES + n * CQ_BYTES
    }

    pub fn slot_pos(&self, slot: u64) -> u64 {
        HEADER_BYTES + slot * SLOT_BYTES
    }

    pub fn key_pos(&self, n: u64) -> u64 {
        HEADER_BYTES + self.slots * SLOT_BYTES + n * KEY_ENTRY_BYTES
    }

    pub fn time_pos(&self, n: u64) -> u64 {
        HEADER_BYTES + n * TIME_ENTRY_BYTES
    }

    pub fn slot_of(&self, key_hash: u64) -> u64 {
        key_hash % self.slots
    }

    pub fn file_bytes(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Cq => self.cq_pos(self.entries),
            Kind::Key => self.key_pos(self.entries),
            Kind::Time => self.time_pos(self.entries),
        }
    }
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Append one consume-queue entry in its layout ([`CqEntry::encode`]).
pub(super) fn put_cq(buf: &mut Vec<u8>, log_index: u64, slot: u32, size: u32, timestamp_ms: u64, tag_hash: u32) {
    CqEntry { offset: 0, log_index, slot, size, timestamp_ms, tag_hash }.encode(buf);
}

/// A key entry: the key's hash, its offset less the set's first offset,
/// and the entry number + 1 of the previous entry of its slot (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyEntry {
    pub hash: u64,
    pub delta: u32,
    pub prev: u32,
}

impl KeyEntry {
    pub fn put(self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.hash.to_le_bytes());
        buf.extend_from_slice(&self.delta.to_le_bytes());
        buf.extend_from_slice(&self.prev.to_le_bytes());
    }

    pub fn from_bytes(b: &[u8]) -> KeyEntry {
        KeyEntry { hash: u64_at(b, 0), delta: u32_at(b, 8), prev: u32_at(b, 12) }
    }
}

/// A time entry: a new running maximum timestamp of the set, and the
/// offset of the record that reached it.
pub(super) fn put_time(buf: &mut Vec<u8>, timestamp_ms: u64, offset: u64) {
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
}

pub(super) fn time_entry(b: &[u8]) -> (u64, u64) {
    (u64_at(b, 0), u64_at(b, 8))
}

fn header(kind: Kind, layout: Layout, first: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&kind.magic());
    h[8..16].copy_from_slice(&first.to_le_bytes());
    h[16..24].copy_from_slice(&layout.entries.to_le_bytes());
    h[24..28].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn seal(count: u64) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&s[0..8]);
    s[8..12].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Check a header read back; returns the seal's entry count, if sealed.
fn check_header(path: &Path, h: &[u8], kind: Kind, layout: Layout, first: u64) -> Result<Option<u64>, IndexError> {
    let bad = |what: String| Err(IndexError::BadHeader { path: path.to_path_buf(), what });
    if h[0..8] != kind.magic() {
        return bad(format!(
            "magic {:?}, expected {:?}",
            String::from_utf8_lossy(&h[0..8]),
            String::from_utf8_lossy(&kind.magic())
        ));
    }
    let (stored, computed) = (u32_at(h, 28), crc32c::crc32c(&h[0..28]));
    if stored != computed {
        return bad(format!("checksum {stored:#010x}, computed {computed:#010x}"));
    }
    let version = u32_at(h, 24);
    if version != VERSION {
        return bad(format!("version {version}; this build reads version {VERSION}"));
    }
    if u64_at(h, 8) != first {
        return bad(format!("first offset {}, but the file is named for {first}", u64_at(h, 8)));
    }
    if u64_at(h, 16) != layout.entries {
        return bad(format!("{} entries per file, but the index is opened with {}", u64_at(h, 16), layout.entries));
    }
    Ok((seal(u64_at(h, 32)) == h[32..44]).then(|| u64_at(h, 32)))
}

pub(super) fn io_error(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> IndexError {
    let path = path.to_path_buf();
    move |source| IndexError::Io { path, op, source }
}

/// An open index file.
#[derive(Debug)]
pub(super) struct IndexFile {
    io: Arc<dyn FileIo>,
    /// Taken once: a shared map shows later pwrites without remapping.
    map: Option<Bytes>,
    /// Written since the last `sync`.
    dirty: bool,
}

impl IndexFile {
    /// Create `path` at its full length, sparse: only the header and one zero
    /// byte at the last position are written, so an empty set costs no more
    /// than its header blocks (no fallocate: many partitions sit empty).
    pub fn create(
        fs: &dyn FileSystem,
        path: &Path,
        kind: Kind,
        layout: Layout,
        first: u64,
    ) -> Result<IndexFile, IndexError> {
        let io = fs.create(path).map_err(io_error(path, "create"))?;
        io.write_at(0, &header(kind, layout, first)).map_err(io_error(path, "pwrite header"))?;
        io.write_at(layout.file_bytes(kind) - 1, &[0]).map_err(io_error(path, "pwrite last byte"))?;
        let map = io.map().map_err(io_error(path, "mmap"))?;
        Ok(IndexFile { io, map, dirty: true })
    }

    /// Open `path` and check its length and header; also returns its seal.
    pub fn open(
        fs: &dyn FileSystem,
        path: &Path,
        kind: Kind,
        layout: Layout,
        first: u64,
    ) -> Result<(IndexFile, Option<u64>), IndexError> {
        let io = match fs.open(path) {
            Ok(io) => io,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let what = format!("set {first} needs it");
                return Err(IndexError::Missing { path: path.to_path_buf(), what });
            }
            Err(e) => return Err(io_error(path, "open")(e)),
        };
        let (len, expected) = (io.len().map_err(io_error(path, "stat"))?, layout.file_bytes(kind));
        if len != expected {
            let entries_per_file = layout.entries;
            return Err(IndexError::Length { path: path.to_path_buf(), len, expected, entries_per_file });
        }
        let mut h = [0u8; HEADER_BYTES as usize];
        io.read_at(0, &mut h).map_err(io_error(path, "pread header"))?;
        let sealed = check_header(path, &h, kind, layout, first)?;
        let map = io.map().map_err(io_error(path, "mmap"))?;
        Ok((IndexFile { io, map, dirty: false }, sealed))
    }

    pub fn path(&self) -> &Path {
        self.io.path()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.io.path().to_path_buf()
    }

    pub fn read(&self, pos: u64, buf: &mut [u8]) -> Result<(), IndexError> {
        let Some(map) = &self.map else {
            return self.io.read_at(pos, buf).map_err(io_error(self.path(), "pread"));
        };
        let range = usize::try_from(pos).ok().and_then(|p| Some(p..p.checked_add(buf.len())?));
        match range.and_then(|r| map.get(r)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(IndexError::Corrupt {
                path: self.path_buf(),
                what: format!("a read of {} bytes at {pos} runs past the {}-byte file", buf.len(), map.len()),
            }),
        }
    }

    pub fn read_array<const N: usize>(&self, pos: u64) -> Result<[u8; N], IndexError> {
        let mut buf = [0u8; N];
        self.read(pos, &mut buf)?;
        Ok(buf)
    }

    pub fn write(&mut self, pos: u64, buf: &[u8]) -> Result<(), IndexError> {
        self.dirty = true;
        self.io.write_at(pos, buf).map_err(io_error(self.path(), "pwrite"))
    }

    /// Record how many entries the full set's file holds: a later `open`
    /// learns it from here instead of scanning.
    pub fn seal(&mut self, count: u64) -> Result<(), IndexError> {
        self.write(32, &seal(count))
    }

    /// fdatasync, if anything was written since the last one.
    pub fn sync(&mut self) -> Result<(), IndexError> {
        if self.dirty {
            self.io.sync_data().map_err(io_error(self.path(), "fdatasync"))?;
            self.dirty = false;
        }
        Ok(())
    }
}
