//! keel's on-disk formats, byte by byte. Every integer is little-endian.
//! Every check made here on read has a test that breaks it (see the tests at
//! the bottom and `tests/` of the crate).
//!
//! # Files in the data directory (`store.path.commitlog`)
//!
//! | name | what |
//! |---|---|
//! | `LOCK` | empty; `flock`ed exclusively while a store has the directory open |
//! | `meta` | vote, committed log id, last purged log id, generation ([`Meta`]) |
//! | `{first:020}.log` | a segment: records with log indexes `first..` |
//! | `{first:020}.idx` | position index of a *sealed* segment |
//! | `{first:020}.tix` | sparse time index of a *sealed* segment |
//! | `prepared-{pid}-{store}-{n}.log` | a preallocated segment waiting to be rolled to (deleted on open) |
//! | `*.tmp` | half-written temp files (deleted on open) |
//!
//! # Segment file
//!
//! A segment is preallocated to `segment.bytes` (unwritten extents or
//! written zeros: either reads back as zeros where nothing was written). It starts
//! with a 32-byte header, then records back to back, then zeros.
//!
//! ```text
//! off len field
//!   0   8 magic            b"KEELSEG1"
//!   8   8 first_index      log index of the first record (= the file name)
//!  16   8 generation       bumped by install_range; older segments are stale
//!  24   4 salt             random per segment; seeds every record's crc32c,
//!                          so bytes copied from elsewhere (a payload that
//!                          embeds a keel record, another segment's record)
//!                          never validate here
//!  28   4 crc32c           over bytes 0..28
//! ```
//!
//! # Record (format version 1)
//!
//! ```text
//! off len field
//!   0   2 magic            b"KR"
//!   2   1 version          1
//!   3   1 flags            bits 0-1: kind (0 blank, 1 normal, 2 membership); bits 2-7: 0
//!   4   4 payload_len      u32, at most MAX_PAYLOAD_BYTES
//!   8   8 term
//!  16   8 leader_node      node id of the term's leader: openraft 0.9's log id
//!                          is (term, leader node id, index)
//!  24   8 index            log index
//!  32   8 timestamp_ms     leader-assigned, 0 when the entry has none
//!  40   8 synced_before    fsynced index of the store when this record was
//!                          written, plus one (0: none): everything below it
//!                          was durable before this record existed
//!  48   4 crc32c           over the segment's salt (4 bytes), bytes 0..48
//!                          and the payload
//!  52   n payload          opaque to the store
//! ```
//!
//! `synced_before` lets recovery tell a crash from corruption when a bad
//! record has valid records after it: if a later record says the bad one
//! was already durable when it was written, no crash can explain the damage.
//!
//! A record is never written across a segment boundary, and payload bytes
//! are never rewritten once written: truncation rolls to a new segment
//! (named by the truncation index) and zeroes only the header of the first
//! truncated record, so a segment's valid range ends where the next segment
//! begins, or at that zero header when it is the last one.
//!
//! # Position index (`.idx`) and time index (`.tix`)
//!
//! Written when a segment is sealed, through a temp file and a rename but
//! without fsync: they are rebuilt from the segment when missing or damaged.
//!
//! ```text
//! off len field
//!   0   8 magic            b"KEELIDX1" (.idx) or b"KEELTIX1" (.tix)
//!   8   8 first_index      of the segment
//!  16   8 count            number of entries that follow
//!  24   4 crc32c           over bytes 0..24 followed by the entries
//!  28   4 reserved         0
//!  32     entries          .idx: count × u32 record position in the segment
//!                          .tix: count × (u64 max timestamp_ms of the segment's
//!                                records up to and including index, u64 index)
//! ```
//!
//! # Meta file (`meta`)
//!
//! Replaced atomically: write `meta.tmp`, fdatasync, rename over `meta`,
//! fsync the directory. `save_vote` returns only after all four.
//!
//! ```text
//! off len field
//!   0   8 magic            b"KEELMETA"
//!   8   4 version          2 (version 1 files, 92 bytes, are read too)
//!  12   4 flags            bit 0 vote present, bit 1 vote committed,
//!                          bit 2 voted_for present, bit 3 committed present,
//!                          bit 4 purged present, bit 5 truncated_from present
//!  16   8 vote term
//!  24   8 vote voted_for   node id
//!  32   8 committed term
//!  40   8 committed leader node
//!  48   8 committed index
//!  56   8 purged term
//!  64   8 purged leader node
//!  72   8 purged index
//!  80   8 generation
//!  88   8 node id          the node this directory belongs to (0: not yet recorded)
//!  96   8 cluster id       the cluster it belongs to (0: not yet known)
//! 104   8 truncated_from   a truncation in progress cuts the log from here
//! 112   4 crc32c           over bytes 0..112
//! ```
//!
//! Version 1 ended with the crc32c at byte 88 (no identity, no
//! truncation mark); it decodes with those absent, and the next write
//! turns the file into version 2.
//!
//! `truncated_from` is written before a truncation changes any segment and
//! cleared after it: a crash in between leaves the last segment with a zero
//! header, or stale records, from that index on, and recovery must read
//! them as the end of the log, not as damage to durable records (which a
//! zero header followed by valid records otherwise is).

use bytes::Bytes;

pub const SEGMENT_MAGIC: &[u8; 8] = b"KEELSEG1";
pub const SEGMENT_HEADER_BYTES: usize = 32;

pub const RECORD_MAGIC: &[u8; 2] = b"KR";
pub const RECORD_VERSION: u8 = 1;
pub const RECORD_HEADER_BYTES: usize = 52;
const RECORD_CRC_AT: usize = 48;
const FLAGS_KIND_MASK: u8 = 0b11;

pub const INDEX_MAGIC: &[u8; 8] = b"KEELIDX1";
pub const TIME_INDEX_MAGIC: &[u8; 8] = b"KEELTIX1";
pub const INDEX_HEADER_BYTES: usize = 32;

pub const META_MAGIC: &[u8; 8] = b"KEELMETA";
pub const META_VERSION: u32 = 2;
pub const META_BYTES: usize = 116;
/// A version 1 meta file: the same fields up to the generation, then its crc.
pub const META_V1_BYTES: usize = 92;

/// Largest segment keel accepts: positions in `.idx` are u32.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Smallest segment: room for a header and a handful of records, so tests
/// can exercise rolling with tiny segments.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

const _: () = assert!(SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES < MIN_SEGMENT_BYTES as usize);
const _: () = assert!(MAX_SEGMENT_BYTES <= u32::MAX as u64);
const _: () = assert!(RECORD_CRC_AT + 4 == RECORD_HEADER_BYTES);
const _: () = assert!(META_BYTES == META_CRC_AT + 4);
const _: () = assert!(META_V1_BYTES == META_V1_CRC_AT + 4);
const META_CRC_AT: usize = 112;
const META_V1_CRC_AT: usize = 88;

/// What an entry is, as far as the store cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Blank = 0,
    Normal = 1,
    Membership = 2,
}

impl RecordKind {
    fn from_flags(flags: u8) -> Option<Self> {
        if flags & !FLAGS_KIND_MASK != 0 {
            return None;
        }
        match flags & FLAGS_KIND_MASK {
            0 => Some(Self::Blank),
            1 => Some(Self::Normal),
            2 => Some(Self::Membership),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub payload_len: u32,
    pub term: u64,
    pub leader: u64,
    pub index: u64,
    pub timestamp_ms: u64,
    /// One past the store's fsynced index when this record was written (0: none).
    pub synced_before: u64,
    pub crc: u32,
}

impl RecordHeader {
    pub fn record_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len as usize
    }
}

/// A record as handed to readers: the payload is a slice of the segment's
/// map where the I/O layer gives one (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub term: u64,
    /// Node id of the leader of `term` (part of openraft's log id).
    pub leader: u64,
    pub index: u64,
    pub timestamp_ms: u64,
    pub kind: RecordKind,
    pub payload: Bytes,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDefect {
    /// Fewer bytes than a header (or than the header's payload length) remain.
    Short,
    /// The header bytes are all zero: the preallocated region, or a write
    /// that never reached the disk.
    Zero,
    BadMagic,
    BadVersion,
    BadFlags,
    TooLong,
    BadChecksum,
}

impl std::fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Short => "record runs past the end of the segment",
            Self::Zero => "zero header",
            Self::BadMagic => "bad record magic",
            Self::BadVersion => "unknown record version",
            Self::BadFlags => "unknown record flags",
            Self::TooLong => "payload length larger than a segment",
            Self::BadChecksum => "crc32c mismatch",
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

/// A record's header fields, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub kind: RecordKind,
    pub term: u64,
    pub leader: u64,
    pub index: u64,
    pub timestamp_ms: u64,
}

/// Append one encoded record to `out`. The caller checked `payload.len()`
/// against the segment size.
pub fn encode_record(out: &mut Vec<u8>, r: &RecordMeta, synced_before: u64, salt: u32, payload: &[u8]) {
    debug_assert!(synced_before <= r.index, "a record cannot be durable before it is written");
    let payload_len = u32::try_from(payload.len()).expect("payload length checked against segment size");
    let start = out.len();
    out.extend_from_slice(RECORD_MAGIC);
    out.push(RECORD_VERSION);
    out.push(r.kind as u8);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&r.term.to_le_bytes());
    out.extend_from_slice(&r.leader.to_le_bytes());
    out.extend_from_slice(&r.index.to_le_bytes());
    out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&synced_before.to_le_bytes());
    let crc = record_crc(salt, &out[start..start + RECORD_CRC_AT], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len() - start, RECORD_HEADER_BYTES + payload.len());
}

fn record_crc(salt: u32, header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), header), payload)
}

/// A fresh random salt for a new segment.
pub fn new_salt() -> u32 {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one((n, std::time::SystemTime::now())) as u32
}

/// Decode and check a header (not the payload checksum: see [`check_record`]).
pub fn decode_header(b: &[u8], max_payload: usize) -> Result<RecordHeader, RecordDefect> {
    if b.len() < RECORD_HEADER_BYTES {
        return Err(if b.iter().all(|&x| x == 0) { RecordDefect::Zero } else { RecordDefect::Short });
    }
    let h = &b[..RECORD_HEADER_BYTES];
    if h.iter().all(|&x| x == 0) {
        return Err(RecordDefect::Zero);
    }
    if &h[0..2] != RECORD_MAGIC {
        return Err(RecordDefect::BadMagic);
    }
    if h[2] != RECORD_VERSION {
        return Err(RecordDefect::BadVersion);
    }
    let kind = RecordKind::from_flags(h[3]).ok_or(RecordDefect::BadFlags)?;
    let payload_len = u32_at(h, 4);
    if payload_len as usize > max_payload {
        return Err(RecordDefect::TooLong);
    }
    Ok(RecordHeader {
        kind,
        payload_len,
        term: u64_at(h, 8),
        leader: u64_at(h, 16),
        index: u64_at(h, 24),
        timestamp_ms: u64_at(h, 32),
        synced_before: u64_at(h, 40),
        crc: u32_at(h, RECORD_CRC_AT),
    })
}

/// Decode the record at the start of `b` and verify its checksum, seeded
/// with its segment's `salt`.
pub fn check_record(b: &[u8], max_payload: usize, salt: u32) -> Result<RecordHeader, RecordDefect> {
    let header = decode_header(b, max_payload)?;
    let end = header.record_bytes();
    if b.len() < end {
        return Err(RecordDefect::Short);
    }
    let crc = record_crc(salt, &b[..RECORD_CRC_AT], &b[RECORD_HEADER_BYTES..end]);
    if crc != header.crc {
        return Err(RecordDefect::BadChecksum);
    }
    Ok(header)
}

/// Does `region` (bytes of a bad record, starting at file position
/// `file_pos`) show what a crash leaves of an unsynced write? Segments are
/// preallocated (written zeros, or unwritten extents that read as zeros) and
/// never rewritten, so a write that did not reach the disk
/// reads back as zeros, lost in whole 512-byte sectors: an all-zero header,
/// an all-zero aligned sector, or an all-zero start up to the first sector
/// boundary (the rest of a sector whose older bytes were synced). A flipped
/// bit leaves none of these.
///
/// `suffix_may_tear`: nothing valid follows, so the write may also be torn
/// at any byte (the fault layer tears that way; real disks by sector): a
/// zero last byte counts too.
pub fn looks_torn(region: &[u8], file_pos: u64, suffix_may_tear: bool) -> bool {
    const SECTOR: u64 = 512;
    let end = file_pos + region.len() as u64;
    let zero = |lo: u64, hi: u64| region[(lo - file_pos) as usize..(hi - file_pos) as usize].iter().all(|&x| x == 0);
    if region.len() >= RECORD_HEADER_BYTES && region[..RECORD_HEADER_BYTES].iter().all(|&x| x == 0) {
        return true;
    }
    if suffix_may_tear && region.last().is_none_or(|&x| x == 0) {
        return true;
    }
    // The record magic is never zero, so a zero start can only be a lost sector.
    let boundary = file_pos.div_ceil(SECTOR) * SECTOR;
    if boundary > file_pos && boundary <= end && zero(file_pos, boundary) {
        return true;
    }
    let mut at = boundary;
    while at + SECTOR <= end {
        if zero(at, at + SECTOR) {
            return true;
        }
        at += SECTOR;
    }
    false
}

/// Find the next record after `from` in `b` that is fully valid: used to tell
/// a torn tail (nothing valid follows) from mid-log corruption.
pub fn find_valid_record(b: &[u8], from: usize, max_payload: usize, salt: u32) -> Option<(usize, RecordHeader)> {
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= b.len() {
        let rel = b[at..].windows(2).position(|w| w == RECORD_MAGIC)?;
        at += rel;
        if let Ok(h) = check_record(&b[at..], max_payload, salt) {
            return Some((at, h));
        }
        at += 1;
    }
    None
}

pub fn encode_segment_header(first_index: u64, generation: u64, salt: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&first_index.to_le_bytes());
    h[16..24].copy_from_slice(&generation.to_le_bytes());
    h[24..28].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeader {
    /// All zeros: a segment renamed into place whose header never reached the disk.
    Empty,
    Valid {
        first_index: u64,
        generation: u64,
        salt: u32,
    },
}

pub fn decode_segment_header(h: &[u8]) -> Result<SegmentHeader, &'static str> {
    if h.len() < SEGMENT_HEADER_BYTES {
        return Err("segment shorter than its header");
    }
    let h = &h[..SEGMENT_HEADER_BYTES];
    if h.iter().all(|&x| x == 0) {
        return Ok(SegmentHeader::Empty);
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if crc32c::crc32c(&h[..28]) != u32_at(h, 28) {
        return Err("segment header crc32c mismatch");
    }
    Ok(SegmentHeader::Valid { first_index: u64_at(h, 8), generation: u64_at(h, 16), salt: u32_at(h, 24) })
}

/// The largest payload a record can have in a segment of `capacity` bytes.
pub fn max_payload_in(capacity: u64) -> usize {
    usize::try_from(capacity).unwrap_or(usize::MAX).saturating_sub(SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES)
}

pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.log")
}

pub fn index_file_name(first_index: u64) -> String {
    format!("{first_index:020}.idx")
}

pub fn time_index_file_name(first_index: u64) -> String {
    format!("{first_index:020}.tix")
}

/// The first index a segment, index or time index file name stands for.
pub fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// Encode an `.idx` or `.tix` file.
pub fn encode_index_file(magic: &[u8; 8], first_index: u64, count: u64, entries: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&first_index.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..24]), entries);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(entries);
    out
}

/// Check an `.idx`/`.tix` file against what it must describe; returns its
/// entries region.
pub fn decode_index_file<'a>(
    b: &'a [u8],
    magic: &[u8; 8],
    first_index: u64,
    entry_bytes: usize,
) -> Result<(u64, &'a [u8]), &'static str> {
    if b.len() < INDEX_HEADER_BYTES {
        return Err("shorter than its header");
    }
    if &b[0..8] != magic {
        return Err("bad magic");
    }
    if u64_at(b, 8) != first_index {
        return Err("first index does not match the file name");
    }
    let count = u64_at(b, 16);
    let body = &b[INDEX_HEADER_BYTES..];
    if (body.len() as u64) != count.saturating_mul(entry_bytes as u64) {
        return Err("length does not match its entry count");
    }
    if crc32c::crc32c_append(crc32c::crc32c(&b[..24]), body) != u32_at(b, 24) {
        return Err("crc32c mismatch");
    }
    Ok((count, body))
}

/// The durable state that is not log entries. Log ids are (term, index):
/// openraft 0.9's committed leader id is the term alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub vote: Option<MetaVote>,
    pub committed: Option<LogPos>,
    pub purged: Option<LogPos>,
    pub generation: u64,
    /// Which node and cluster the directory belongs to.
    pub identity: Identity,
    /// Set while a truncation from this index is under way.
    pub truncated_from: Option<u64>,
}

/// The node and the cluster a data directory belongs to. Zero means not
/// recorded yet (a directory written before identities were kept, or a
/// node that has not yet learned its cluster's id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    pub cluster_id: u64,
}

/// A log id as openraft 0.9 has it: (term, leader node id, index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    pub term: u64,
    pub leader: u64,
    pub index: u64,
}

impl LogPos {
    pub fn new(term: u64, leader: u64, index: u64) -> Self {
        Self { term, leader, index }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaVote {
    pub term: u64,
    pub voted_for: Option<u64>,
    pub committed: bool,
}

impl Meta {
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut b = [0u8; META_BYTES];
        b[0..8].copy_from_slice(META_MAGIC);
        b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        let mut flags = 0u32;
        if let Some(v) = self.vote {
            flags |= 1;
            if v.committed {
                flags |= 2;
            }
            if let Some(n) = v.voted_for {
                flags |= 4;
                b[24..32].copy_from_slice(&n.to_le_bytes());
            }
            b[16..24].copy_from_slice(&v.term.to_le_bytes());
        }
        for (bit, at, pos) in [(8, 32, self.committed), (16, 56, self.purged)] {
            if let Some(p) = pos {
                flags |= bit;
                b[at..at + 8].copy_from_slice(&p.term.to_le_bytes());
                b[at + 8..at + 16].copy_from_slice(&p.leader.to_le_bytes());
                b[at + 16..at + 24].copy_from_slice(&p.index.to_le_bytes());
            }
        }
        if let Some(t) = self.truncated_from {
            flags |= 32;
            b[104..112].copy_from_slice(&t.to_le_bytes());
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[80..88].copy_from_slice(&self.generation.to_le_bytes());
        b[88..96].copy_from_slice(&self.identity.node_id.to_le_bytes());
        b[96..104].copy_from_slice(&self.identity.cluster_id.to_le_bytes());
        let crc = crc32c::crc32c(&b[..META_CRC_AT]);
        b[META_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < 12 || &b[0..8] != META_MAGIC {
            return Err("bad meta magic");
        }
        let (crc_at, known_flags) = match (u32_at(b, 8), b.len()) {
            (META_VERSION, META_BYTES) => (META_CRC_AT, 0b11_1111),
            (1, META_V1_BYTES) => (META_V1_CRC_AT, 0b1_1111),
            (1 | META_VERSION, _) => return Err("meta file has the wrong length"),
            _ => return Err("unknown meta version"),
        };
        if crc32c::crc32c(&b[..crc_at]) != u32_at(b, crc_at) {
            return Err("meta crc32c mismatch");
        }
        let flags = u32_at(b, 12);
        if flags & !known_flags != 0 {
            return Err("unknown meta flags");
        }
        let vote = (flags & 1 != 0).then(|| MetaVote {
            term: u64_at(b, 16),
            voted_for: (flags & 4 != 0).then(|| u64_at(b, 24)),
            committed: flags & 2 != 0,
        });
        let pos = |at| LogPos::new(u64_at(b, at), u64_at(b, at + 8), u64_at(b, at + 16));
        let committed = (flags & 8 != 0).then(|| pos(32));
        let purged = (flags & 16 != 0).then(|| pos(56));
        // The log continues after both (next index = index + 1), so no
        // store can have written either at the last u64 index: refuse it
        // here rather than overflow later (found by the `segment_recovery`
        // fuzz target).
        if committed.is_some_and(|p| p.index == u64::MAX) {
            return Err("committed log id at the last possible index");
        }
        if purged.is_some_and(|p| p.index == u64::MAX) {
            return Err("purged log id at the last possible index");
        }
        let v2 = crc_at == META_CRC_AT;
        let identity =
            if v2 { Identity { node_id: u64_at(b, 88), cluster_id: u64_at(b, 96) } } else { Identity::default() };
        let truncated_from = (flags & 32 != 0).then(|| u64_at(b, 104));
        Ok(Meta { vote, committed, purged, generation: u64_at(b, 80), identity, truncated_from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;
    const SALT: u32 = 0x5EED_0001;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let meta =
            RecordMeta { kind: RecordKind::Normal, term: 3, leader: 2, index: 42, timestamp_ms: 1_700_000_000_000 };
        encode_record(&mut out, &meta, 40, SALT, payload);
        out
    }

    #[test]
    fn record_round_trips() {
        let b = record(b"hello");
        let h = check_record(&b, MAX, SALT).expect("valid record");
        assert_eq!(
            (h.kind, h.term, h.leader, h.index, h.timestamp_ms, h.synced_before, h.payload_len),
            (RecordKind::Normal, 3, 2, 42, 1_700_000_000_000, 40, 5)
        );
        assert_eq!(&b[RECORD_HEADER_BYTES..], b"hello");
    }

    #[test]
    fn every_flipped_byte_of_a_record_is_detected() {
        let good = record(b"payload bytes");
        for at in 0..good.len() {
            let mut b = good.clone();
            b[at] ^= 0x40;
            assert!(check_record(&b, MAX, SALT).is_err(), "flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn a_record_checks_only_under_its_segment_salt() {
        let good = record(b"x");
        assert!(check_record(&good, MAX, SALT).is_ok());
        assert_eq!(check_record(&good, MAX, SALT ^ 1), Err(RecordDefect::BadChecksum));
        assert_ne!(new_salt(), new_salt());
    }

    #[test]
    fn each_header_check_names_its_defect() {
        let good = record(b"x");
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::BadMagic));
        let mut b = good.clone();
        b[2] = 9;
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::BadVersion));
        let mut b = good.clone();
        b[3] = 0b100;
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::BadFlags));
        let mut b = good.clone();
        b[3] = 3;
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::BadFlags));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::TooLong));
        let mut b = good.clone();
        b[RECORD_HEADER_BYTES] ^= 1;
        assert_eq!(check_record(&b, MAX, SALT), Err(RecordDefect::BadChecksum));
        assert_eq!(check_record(&good[..good.len() - 1], MAX, SALT), Err(RecordDefect::Short));
        assert_eq!(check_record(&[0u8; 64], MAX, SALT), Err(RecordDefect::Zero));
    }

    #[test]
    fn torn_writes_look_torn_and_bit_flips_do_not() {
        let good = record(&[7u8; 1500]);
        // Torn at any byte when nothing follows: zero suffix.
        for cut in [0, 1, RECORD_HEADER_BYTES - 1, RECORD_HEADER_BYTES, 700, good.len() - 1] {
            let mut b = good.clone();
            b[cut..].fill(0);
            assert!(looks_torn(&b, 32, true), "cut at {cut}");
        }
        // A lost aligned sector in the middle, with data after it.
        let mut b = good.clone();
        let sector_start = 512 - 32; // file position 512 when the record starts at 32
        b[sector_start..sector_start + 512].fill(0);
        assert!(looks_torn(&b, 32, false));
        // The record starts late in a sector whose older bytes were synced
        // and whose new ones were lost: zeros up to the boundary, data after.
        let mut b = good.clone();
        b[..20].fill(0);
        assert!(looks_torn(&b, 492, false), "lost leading partial sector");
        assert!(!looks_torn(&b, 480, false), "zeros short of a sector boundary are not a lost sector");
        // A flipped bit is not a crash.
        let mut b = good.clone();
        b[700] ^= 1;
        assert!(!looks_torn(&b, 32, true));
        assert!(!looks_torn(&b, 32, false));
        let mut b = good.clone();
        b[0] ^= 0x40;
        assert!(!looks_torn(&b, 492, false), "one bit cannot zero a whole partial sector");
    }

    #[test]
    fn find_valid_record_skips_garbage() {
        let mut b = vec![0u8; 100];
        b[10] = b'K';
        b[11] = b'R';
        let at = b.len();
        b.extend_from_slice(&record(b"later"));
        assert_eq!(find_valid_record(&b, 0, MAX, SALT).map(|(p, h)| (p, h.index)), Some((at, 42)));
        assert_eq!(find_valid_record(&b, at + 1, MAX, SALT), None);
    }

    #[test]
    fn segment_header_checks() {
        let h = encode_segment_header(77, 2, 9);
        assert_eq!(decode_segment_header(&h), Ok(SegmentHeader::Valid { first_index: 77, generation: 2, salt: 9 }));
        assert_eq!(decode_segment_header(&[0u8; 32]), Ok(SegmentHeader::Empty));
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut b = h;
            b[at] ^= 0x10;
            assert!(decode_segment_header(&b).is_err(), "flip at {at}");
        }
        assert!(decode_segment_header(&h[..10]).is_err());
    }

    #[test]
    fn index_file_checks() {
        let entries: Vec<u8> = [32u32, 80, 200].iter().flat_map(|p| p.to_le_bytes()).collect();
        let f = encode_index_file(INDEX_MAGIC, 10, 3, &entries);
        assert_eq!(decode_index_file(&f, INDEX_MAGIC, 10, 4).map(|(c, _)| c), Ok(3));
        assert!(decode_index_file(&f, TIME_INDEX_MAGIC, 10, 4).is_err());
        assert!(decode_index_file(&f, INDEX_MAGIC, 11, 4).is_err());
        assert!(decode_index_file(&f[..f.len() - 1], INDEX_MAGIC, 10, 4).is_err());
        assert!(decode_index_file(&f[..8], INDEX_MAGIC, 10, 4).is_err());
        for at in (0..28).chain(32..f.len()) {
            let mut b = f.clone();
            b[at] ^= 1;
            assert!(decode_index_file(&b, INDEX_MAGIC, 10, 4).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn meta_round_trips_and_checks() {
        let m = Meta {
            vote: Some(MetaVote { term: 5, voted_for: Some(3), committed: true }),
            committed: Some(LogPos::new(5, 3, 100)),
            purged: Some(LogPos::new(2, 1, 40)),
            generation: 1,
            identity: Identity { node_id: 3, cluster_id: 0xfeed_beef_0000_0001 },
            truncated_from: Some(77),
        };
        let b = m.encode();
        assert_eq!(Meta::decode(&b), Ok(m));
        assert_eq!(Meta::decode(&Meta::default().encode()), Ok(Meta::default()));
        for at in 0..META_BYTES {
            let mut x = b;
            x[at] ^= 0x20;
            assert!(Meta::decode(&x).is_err(), "flip at {at}");
        }
        assert!(Meta::decode(&b[..70]).is_err());
        assert!(Meta::decode(&[b.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn a_version_1_meta_file_still_decodes_without_identity() {
        // Bytes as keel wrote them before version 2 (vote, committed,
        // purged, generation): everything but the new fields is kept.
        let mut v1 = [0u8; META_V1_BYTES];
        v1[0..8].copy_from_slice(META_MAGIC);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[12..16].copy_from_slice(&(1u32 | 2 | 4 | 8).to_le_bytes());
        v1[16..24].copy_from_slice(&7u64.to_le_bytes());
        v1[24..32].copy_from_slice(&2u64.to_le_bytes());
        v1[32..40].copy_from_slice(&7u64.to_le_bytes());
        v1[40..48].copy_from_slice(&2u64.to_le_bytes());
        v1[48..56].copy_from_slice(&500u64.to_le_bytes());
        v1[80..88].copy_from_slice(&3u64.to_le_bytes());
        let crc = crc32c::crc32c(&v1[..META_V1_CRC_AT]);
        v1[META_V1_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        let m = Meta::decode(&v1).expect("a version 1 file decodes");
        assert_eq!(m.vote, Some(MetaVote { term: 7, voted_for: Some(2), committed: true }));
        assert_eq!(m.committed, Some(LogPos::new(7, 2, 500)));
        assert_eq!((m.purged, m.generation, m.identity, m.truncated_from), (None, 3, Identity::default(), None));
        // Version 1 knows no truncation flag, and its length is its own.
        let mut x = v1;
        x[12..16].copy_from_slice(&(1u32 | 32).to_le_bytes());
        let crc = crc32c::crc32c(&x[..META_V1_CRC_AT]);
        x[META_V1_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert!(Meta::decode(&x).is_err(), "a version 1 file with a version 2 flag");
        assert!(Meta::decode(&[v1.as_slice(), &[0; 24]].concat()).is_err(), "version 1 at version 2's length");
        // Written again, it is a version 2 file with the same fields.
        assert_eq!(Meta::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn a_meta_log_id_at_the_last_index_is_refused() {
        for (committed, purged) in
            [(Some(LogPos::new(1, 1, u64::MAX)), None), (None, Some(LogPos::new(1, 1, u64::MAX)))]
        {
            let m = Meta { committed, purged, ..Meta::default() };
            assert!(Meta::decode(&m.encode()).is_err(), "{m:?} decoded");
        }
        let m = Meta { purged: Some(LogPos::new(1, 1, u64::MAX - 1)), ..Meta::default() };
        assert_eq!(Meta::decode(&m.encode()), Ok(m), "one below the last index is a valid log id");
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_file_name(&segment_file_name(12)), Some((12, "log")));
        assert_eq!(parse_file_name(&index_file_name(u64::MAX)), Some((u64::MAX, "idx")));
        assert_eq!(parse_file_name("meta"), None);
        assert_eq!(parse_file_name("prepared-1.log"), None);
        assert_eq!(parse_file_name("0000000000000000001x.log"), None);
    }
}
