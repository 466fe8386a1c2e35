//! One segment file in memory: where its records are (position index), a
//! sparse time index, and how to read a record back (through the file's map
//! where the I/O layer gives one, else with `read_at`). Also the scan that
//! rebuilds both indexes from the segment's bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, INDEX_MAGIC, RECORD_HEADER_BYTES, Record, RecordDefect, RecordHeader, TIME_INDEX_MAGIC};
use crate::io::{FileIo, FileSystem};

/// A time index entry every this many bytes of records (and for the first
/// record of a segment): lookups by time scan at most this much.
pub const TIME_INDEX_INTERVAL_BYTES: u64 = 4096;

/// Where each record of a segment starts.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Built while appending or scanning.
    Memory(Vec<u32>),
    /// The body of a sealed segment's `.idx` file, mapped (u32 LE each).
    Mapped(Bytes),
}

impl Positions {
    pub fn len(&self) -> usize {
        match self {
            Self::Memory(v) => v.len(),
            Self::Mapped(b) => b.len() / 4,
        }
    }

    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            Self::Memory(v) => v.get(i).copied(),
            Self::Mapped(b) => b.get(i * 4..i * 4 + 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes"))),
        }
    }

    fn to_vec(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.get(i).expect("in range")).collect()
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Memory(v) => v.iter().flat_map(|p| p.to_le_bytes()).collect(),
            Self::Mapped(b) => b.to_vec(),
        }
    }
}

#[derive(Debug)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
    pub file: Arc<dyn FileIo>,
    /// The whole file, mapped, when the I/O layer gives a map.
    pub map: Option<Bytes>,
    pub capacity: u64,
    /// Seeds this segment's record checksums (from its header).
    pub salt: u32,
    pub positions: Positions,
    /// Sparse (max timestamp of records so far, log index).
    pub times: Vec<(u64, u64)>,
    pub max_ts: u64,
    /// End of the last record.
    pub end: u64,
    /// (term, leader) of the last record.
    pub last_term: Option<(u64, u64)>,
    pub sealed: bool,
    last_time_entry_at: u64,
}

/// Why a scan stopped before the end of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    Defect(RecordDefect),
    WrongIndex { found: u64 },
    TermBackwards { found: u64, previous: u64 },
}

impl std::fmt::Display for ScanStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Defect(d) => write!(f, "{d}"),
            Self::WrongIndex { found } => write!(f, "record carries log index {found}"),
            Self::TermBackwards { found, previous } => write!(f, "term {found} after term {previous}"),
        }
    }
}

/// What a scan of a segment's bytes found.
#[derive(Debug)]
pub struct Scan {
    pub positions: Vec<u32>,
    pub times: Vec<(u64, u64)>,
    pub max_ts: u64,
    pub end: u64,
    pub last_term: Option<(u64, u64)>,
    pub last_time_entry_at: u64,
    /// Where and why the scan stopped, unless it stopped at `limit` records.
    pub stop: Option<(u64, ScanStop)>,
}

impl Scan {
    /// No records: what a segment holds right after its header.
    pub fn empty() -> Self {
        Self {
            positions: Vec::new(),
            times: Vec::new(),
            max_ts: 0,
            end: format::SEGMENT_HEADER_BYTES as u64,
            last_term: None,
            last_time_entry_at: 0,
            stop: None,
        }
    }
}

/// Walk records from the segment header on, checking each one's checksum,
/// index and term, until `limit` records or the first bad one.
pub fn scan(bytes: &[u8], first: u64, limit: Option<usize>, max_payload: usize, salt: u32) -> Scan {
    scan_from(bytes, format::SEGMENT_HEADER_BYTES, first, limit, max_payload, salt)
}

/// [`scan`] from the record at position `start`, which should carry log
/// index `first` (repair resumes there after a damaged range).
pub fn scan_from(bytes: &[u8], start: usize, first: u64, limit: Option<usize>, max_payload: usize, salt: u32) -> Scan {
    let mut s = Scan::empty();
    let mut pos = start;
    s.end = start as u64;
    while limit.is_none_or(|l| s.positions.len() < l) {
        let index = first + s.positions.len() as u64;
        let header = match format::check_record(&bytes[pos.min(bytes.len())..], max_payload, salt) {
            Ok(h) => h,
            Err(d) => {
                s.stop = Some((pos as u64, ScanStop::Defect(d)));
                break;
            }
        };
        if header.index != index {
            s.stop = Some((pos as u64, ScanStop::WrongIndex { found: header.index }));
            break;
        }
        if let Some((previous, _)) = s.last_term.filter(|&(t, _)| header.term < t) {
            s.stop = Some((pos as u64, ScanStop::TermBackwards { found: header.term, previous }));
            break;
        }
        s.positions.push(u32::try_from(pos).expect("segment positions fit u32"));
        s.max_ts = s.max_ts.max(header.timestamp_ms);
        if s.times.is_empty() || pos as u64 - s.last_time_entry_at >= TIME_INDEX_INTERVAL_BYTES {
            s.times.push((s.max_ts, index));
            s.last_time_entry_at = pos as u64;
        }
        s.last_term = Some((header.term, header.leader));
        pos += header.record_bytes();
        s.end = pos as u64;
    }
    s
}

/// The whole file as bytes: its map, or one read.
pub fn load(file: &dyn FileIo) -> std::io::Result<Bytes> {
    if let Some(map) = file.map()? {
        return Ok(map);
    }
    let len = usize::try_from(file.len()?).map_err(|_| std::io::Error::other("file too large"))?;
    let mut buf = vec![0u8; len];
    file.read_at(0, &mut buf)?;
    Ok(Bytes::from(buf))
}

impl Segment {
    /// A freshly rolled segment with its header written at position 0.
    pub fn new_active(
        first: u64,
        path: PathBuf,
        file: Arc<dyn FileIo>,
        capacity: u64,
        salt: u32,
    ) -> std::io::Result<Self> {
        let map = file.map()?;
        Ok(Self::from_scan(first, path, file, map, capacity, salt, Scan::empty()))
    }

    /// A segment whose records were found by [`scan`].
    pub fn from_scan(
        first: u64,
        path: PathBuf,
        file: Arc<dyn FileIo>,
        map: Option<Bytes>,
        capacity: u64,
        salt: u32,
        s: Scan,
    ) -> Self {
        let last_time_entry_at = s.last_time_entry_at;
        Self {
            first,
            path,
            file,
            map,
            capacity,
            salt,
            positions: Positions::Memory(s.positions),
            times: s.times,
            max_ts: s.max_ts,
            end: s.end,
            last_term: s.last_term,
            sealed: false,
            last_time_entry_at,
        }
    }

    pub fn len(&self) -> u64 {
        self.positions.len() as u64
    }

    /// The largest payload a record in this segment can have: its own size
    /// decides, so segments written under another `segment.bytes` still read.
    pub fn max_payload(&self) -> usize {
        format::max_payload_in(self.capacity)
    }

    /// The index the next record appended here must carry.
    pub fn next_index(&self) -> u64 {
        self.first + self.len()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.len().checked_sub(1).map(|n| self.first + n)
    }

    pub fn contains(&self, index: u64) -> bool {
        index >= self.first && index < self.next_index()
    }

    /// Record that a record of `index` now sits at `pos` (it was written).
    pub fn push(&mut self, index: u64, pos: u64, record_bytes: u64, term: (u64, u64), timestamp_ms: u64) {
        assert_eq!(index, self.next_index(), "records are appended in index order");
        assert!(!self.sealed, "sealed segments take no appends");
        assert_eq!(pos, self.end, "records are contiguous");
        if let Positions::Mapped(_) = self.positions {
            self.positions = Positions::Memory(self.positions.to_vec());
        }
        let Positions::Memory(v) = &mut self.positions else { unreachable!("converted above") };
        v.push(u32::try_from(pos).expect("segment positions fit u32"));
        self.max_ts = self.max_ts.max(timestamp_ms);
        if self.times.is_empty() || pos - self.last_time_entry_at >= TIME_INDEX_INTERVAL_BYTES {
            self.times.push((self.max_ts, index));
            self.last_time_entry_at = pos;
        }
        self.last_term = Some(term);
        self.end = pos + record_bytes;
        debug_assert!(self.end <= self.capacity);
    }

    /// Keep only the first `count` records (truncation rolls to a new file;
    /// the bytes after stay on disk, beyond the next segment's first index).
    pub fn keep_first(&mut self, count: usize) -> Result<()> {
        let mut v = self.positions.to_vec();
        v.truncate(count);
        let last = match v.last() {
            Some(&p) => Some((p as u64, self.read_header_at(p as u64, self.first + count as u64 - 1)?)),
            None => None,
        };
        self.end = last.map_or(format::SEGMENT_HEADER_BYTES as u64, |(p, h)| p + h.record_bytes() as u64);
        self.last_term = last.map(|(_, h)| (h.term, h.leader));
        self.positions = Positions::Memory(v);
        let last = self.last_index();
        self.times.retain(|&(_, i)| last.is_some_and(|l| i <= l));
        // The sparse entries stop short of the last records: re-read those.
        self.max_ts = self.times.last().map_or(0, |&(ts, _)| ts);
        if let (Some(&(_, from)), Some(last)) = (self.times.last(), last) {
            for index in from + 1..=last {
                let p = self.positions.get((index - self.first) as usize).expect("in range") as u64;
                self.max_ts = self.max_ts.max(self.read_header_at(p, index)?.timestamp_ms);
            }
        }
        Ok(())
    }

    fn corruption(&self, position: u64, index: Option<u64>, reason: impl Into<String>) -> Error {
        Error::Corruption { file: self.path.clone(), position, index, reason: reason.into() }
    }

    fn read_header_at(&self, pos: u64, index: u64) -> Result<RecordHeader> {
        let max = self.max_payload();
        let mut buf = [0u8; RECORD_HEADER_BYTES];
        let header = match &self.map {
            Some(map) => map.get(pos as usize..).ok_or(RecordDefect::Short).and_then(|b| format::decode_header(b, max)),
            None => {
                self.file.read_at(pos, &mut buf).map_err(|e| Error::io(format!("read {}", self.path.display()), e))?;
                format::decode_header(&buf, max)
            }
        }
        .map_err(|d| self.corruption(pos, Some(index), d.to_string()))?;
        if header.index != index {
            return Err(self.corruption(pos, Some(index), format!("record carries log index {}", header.index)));
        }
        Ok(header)
    }

    /// Read and verify the record of `index`, which this segment contains.
    pub fn read(&self, index: u64) -> Result<Record> {
        let max_payload = self.max_payload();
        debug_assert!(self.contains(index));
        let i = usize::try_from(index - self.first).expect("segment record count fits usize");
        let pos =
            self.positions.get(i).ok_or_else(|| Error::Invalid(format!("log index {index} not in segment")))? as u64;
        let (header, payload) = match &self.map {
            Some(map) => {
                let b = map.get(pos as usize..).unwrap_or_default();
                let h = format::check_record(b, max_payload, self.salt)
                    .map_err(|d| self.corruption(pos, Some(index), d.to_string()))?;
                let start = pos as usize + RECORD_HEADER_BYTES;
                (h, map.slice(start..start + h.payload_len as usize))
            }
            None => {
                let h = self.read_header_at(pos, index)?;
                let mut buf = vec![0u8; h.record_bytes()];
                self.file.read_at(pos, &mut buf).map_err(|e| Error::io(format!("read {}", self.path.display()), e))?;
                format::check_record(&buf, max_payload, self.salt)
                    .map_err(|d| self.corruption(pos, Some(index), d.to_string()))?;
                (h, Bytes::from(buf).slice(RECORD_HEADER_BYTES..))
            }
        };
        if header.index != index {
            return Err(self.corruption(pos, Some(index), format!("record carries log index {}", header.index)));
        }
        Ok(Record {
            term: header.term,
            leader: header.leader,
            index,
            timestamp_ms: header.timestamp_ms,
            kind: header.kind,
            payload,
        })
    }

    /// The first index in this segment whose record has `timestamp_ms >= ts`.
    pub fn index_for_timestamp(&self, ts: u64) -> Result<Option<u64>> {
        if self.max_ts < ts || self.len() == 0 {
            return Ok(None);
        }
        // Entries hold the running maximum, so the first one at or past `ts`
        // bounds the answer from above; scan from the entry before it.
        let k = self.times.partition_point(|&(max, _)| max < ts);
        let from = if k == 0 { self.first } else { self.times[k - 1].1 + 1 };
        for index in from..self.next_index() {
            if self.read(index)?.timestamp_ms >= ts {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// Write this (sealed) segment's `.idx` and `.tix` files. Not synced:
    /// they are checked on open and rebuilt when missing or damaged.
    pub fn write_indexes(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let count = self.len();
        let idx = format::encode_index_file(INDEX_MAGIC, self.first, count, &self.positions.encode());
        // A closing entry for the last record makes the file's last entry the
        // segment's exact maximum timestamp.
        let mut entries = self.times.clone();
        if let Some(last) = self.last_index().filter(|&l| entries.last().is_none_or(|&(_, i)| i != l)) {
            entries.push((self.max_ts, last));
        }
        let times: Vec<u8> =
            entries.iter().flat_map(|&(ts, i)| ts.to_le_bytes().into_iter().chain(i.to_le_bytes())).collect();
        let tix = format::encode_index_file(TIME_INDEX_MAGIC, self.first, entries.len() as u64, &times);
        crate::io::write_file_lazily(fs, dir, &format::index_file_name(self.first), &idx)
            .and_then(|()| crate::io::write_file_lazily(fs, dir, &format::time_index_file_name(self.first), &tix))
            .map_err(|e| Error::io(format!("write indexes of {}", self.path.display()), e))
    }

    /// Load the `.idx` and `.tix` of a sealed segment that must hold `expected`
    /// records (or at most that many when `lenient`). `None` when they are
    /// missing, damaged or do not match the segment: rebuild then.
    pub fn load_indexes(&mut self, fs: &dyn FileSystem, dir: &Path, expected: u64, lenient: bool) -> Option<()> {
        let load = |name: String| -> Option<Bytes> {
            let file = fs.open(&dir.join(name)).ok()?;
            load(file.as_ref()).ok()
        };
        let idx = load(format::index_file_name(self.first))?;
        let (count, body) = format::decode_index_file(&idx, INDEX_MAGIC, self.first, 4).ok()?;
        if count > expected || (count < expected && !lenient) {
            return None;
        }
        let body_at = idx.len() - body.len();
        let positions = Positions::Mapped(idx.slice(body_at..));
        let tix = load(format::time_index_file_name(self.first))?;
        let (_, tbody) = format::decode_index_file(&tix, TIME_INDEX_MAGIC, self.first, 16).ok()?;
        let times: Vec<(u64, u64)> = tbody
            .chunks_exact(16)
            .map(|c| {
                let ts = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
                (ts, u64::from_le_bytes(c[8..].try_into().expect("8 bytes")))
            })
            .collect();
        let saved = std::mem::replace(&mut self.positions, positions);
        // The index must agree with the segment: its last record checks out.
        let last_ok = match self.last_index() {
            None => true,
            Some(last) => self.read(last).map(|r| self.last_term = Some((r.term, r.leader))).is_ok(),
        };
        // Sorted, inside the segment, and closed by an entry for the last
        // record (which carries the segment's exact maximum timestamp).
        let times_ok = times.iter().all(|&(_, i)| self.contains(i))
            && times.windows(2).all(|w| w[0] <= w[1])
            && times.last().map(|&(_, i)| i) == self.last_index();
        if !last_ok || !times_ok {
            self.positions = saved;
            return None;
        }
        if let Some(last) = self.last_index() {
            let p = self.positions.get((last - self.first) as usize).expect("in range") as u64;
            self.end = p + self.read_header_at(p, last).ok()?.record_bytes() as u64;
        }
        self.max_ts = times.last().map_or(0, |&(ts, _)| ts);
        self.times = times;
        Some(())
    }
}
