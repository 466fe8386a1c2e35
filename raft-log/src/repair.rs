//! Damage a node can repair from its peers instead of refusing to start.
//!
//! Recovery ([`crate::store`]) cuts only a torn tail, what a crash leaves of
//! unsynced writes. Anything else, a record whose checksum fails in the
//! middle of the log, a sealed segment cut short or missing, a segment
//! header gone bad, means bytes that were durable (and may have been
//! acknowledged) are gone here. Truncating there would lose them, so the
//! store refuses to open. [`find_damage`] lists those ranges instead, each
//! with an **anchor**: the log id of the intact entry right after it. A
//! peer whose log holds the same log id at that index holds exactly the
//! entries the damaged range held (Raft's log matching property), whether
//! or not they were committed. [`rewrite`] writes them back into the
//! segment, at the positions they had, durably, before the
//! store is opened again.
//!
//! Damage at the very end of the log (a bad last record with nothing valid
//! after it that does not look torn) has no anchor: no peer can be shown to
//! hold the same entries, and the node must not start (the error says so).
//!
//! Both functions take the directory's lock: they run while no store is
//! open, before the node starts Raft, so the node neither votes nor leads
//! while its log may lack entries it acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, LogPos, Meta, Record, RecordHeader, RecordMeta, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::io::{FileSystem, Preallocate};
use crate::preparer::PREPARED_PREFIX;
use crate::recovery::classify_stop;
use crate::segment::{self, ScanStop};
use crate::store::lock_dir;

/// A run of log indexes whose records are unreadable in this directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// First damaged index.
    pub from: u64,
    /// Last damaged index (inclusive).
    pub to: u64,
    /// The segment file that holds (or should hold) the range.
    pub file: PathBuf,
    /// What is wrong, for the operator.
    pub reason: String,
    /// The intact entry at `to + 1`: a source must hold this exact log id.
    /// `None` when nothing intact follows (the damage ends the log).
    pub anchor: Option<LogPos>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log indexes {}..={} in {}: {}", self.from, self.to, self.file.display(), self.reason)
    }
}

/// One segment file of the current generation, as found on disk.
struct Found {
    first: u64,
    path: PathBuf,
    bytes: bytes::Bytes,
    /// `(generation, salt)`, `None` when the header is damaged.
    header: Option<(u64, u32)>,
    /// Why the header is unusable.
    header_error: Option<&'static str>,
}

fn read_meta(fs: &dyn FileSystem, dir: &Path, names: &[String]) -> Result<Meta> {
    if !names.iter().any(|n| n == "meta") {
        return Ok(Meta::default());
    }
    let path = dir.join("meta");
    let bytes = crate::io::read_file(fs, &path).map_err(|e| Error::io("read meta", e))?;
    Meta::decode(&bytes).map_err(|reason| Error::Corruption {
        file: path,
        position: 0,
        index: None,
        reason: reason.into(),
    })
}

/// The current generation's segment files in index order (stale ones,
/// prepared ones and temp files are recovery's business and skipped here).
fn segments(fs: &dyn FileSystem, dir: &Path) -> Result<(Meta, Vec<Found>)> {
    let names = fs.list(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    let meta = read_meta(fs, dir, &names)?;
    let mut firsts: Vec<u64> = names
        .iter()
        .filter(|n| !n.starts_with(PREPARED_PREFIX))
        .filter_map(|n| match format::parse_file_name(n) {
            Some((first, "log")) => Some(first),
            _ => None,
        })
        // Segments a truncation cut short by a crash left behind hold
        // nothing of the log (recovery deletes them).
        .filter(|&first| meta.truncated_from.is_none_or(|t| first < t))
        .collect();
    firsts.sort_unstable();
    let mut out = Vec::new();
    for first in firsts {
        let path = dir.join(format::segment_file_name(first));
        let file = fs.open(&path).map_err(|e| Error::io("open segment", e))?;
        let bytes = segment::load(&*file).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let (header, header_error) = match format::decode_segment_header(&bytes) {
            Ok(SegmentHeader::Valid { generation, .. }) if generation < meta.generation => continue,
            Ok(SegmentHeader::Valid { first_index, generation, salt }) if first_index == first => {
                (Some((generation, salt)), None)
            }
            Ok(SegmentHeader::Valid { .. }) => (None, Some("header names another first index")),
            // A torn roll: only the last segment can have one, and recovery
            // checks that.
            Ok(SegmentHeader::Empty) => continue,
            Err(reason) => (None, Some(reason)),
        };
        out.push(Found { first, path, bytes, header, header_error });
    }
    Ok((meta, out))
}

/// Walks one segment's records, skipping over damaged runs.
struct Walk {
    /// `(index, position, header)` of every intact record, in order.
    intact: Vec<(u64, usize, RecordHeader)>,
    /// Damaged runs `(from, to, reason, anchor)`; `to` is `None` when the
    /// run reaches the end of the segment's range; `anchor` is set when it
    /// is not the intact record at `to + 1` (the committed id, below).
    damaged: Vec<(u64, Option<u64>, String, Option<LogPos>)>,
}

/// What the meta file says the last segment must hold.
#[derive(Clone, Copy, Default)]
struct Tail {
    /// The committed log id, if above the purge point: entries up to it
    /// were fsynced here (see `Store::save_committed`).
    committed: Option<LogPos>,
    /// A truncation cut short: the log ends before it.
    truncated_from: Option<u64>,
}

impl Tail {
    fn of(meta: &Meta) -> Self {
        Self {
            committed: crate::recovery::committed_to_hold(meta).and(meta.committed),
            truncated_from: meta.truncated_from,
        }
    }
}

/// Every record of `seg` up to `end` (exclusive; the next segment's first
/// index) or, for the last segment, up to the end of the log.
fn walk(seg: &Found, end: Option<u64>, tail: Tail) -> Walk {
    let mut w = Walk { intact: Vec::new(), damaged: Vec::new() };
    let committed = tail.committed.filter(|_| end.is_none());
    let Some((_, salt)) = seg.header else {
        let why = seg.header_error.unwrap_or("bad header");
        // The last segment's header: its committed entries are what a peer
        // can be shown to hold.
        let held = committed.filter(|c| c.index >= seg.first);
        let to = end.map(|e| e - 1).or(held.map(|c| c.index));
        w.damaged.push((seg.first, to, format!("segment header: {why}"), held));
        return w;
    };
    let bytes = &seg.bytes[..];
    let max_payload = format::max_payload_in(bytes.len() as u64);
    let (mut pos, mut index) = (SEGMENT_HEADER_BYTES, seg.first);
    let stop_before = end.or(tail.truncated_from);
    loop {
        let limit = stop_before.map(|e| usize::try_from(e.saturating_sub(index)).unwrap_or(usize::MAX));
        let s = segment::scan_from(bytes, pos, index, limit, max_payload, salt);
        for &p in &s.positions {
            let h = format::decode_header(&bytes[p as usize..], max_payload).expect("scanned");
            w.intact.push((index, p as usize, h));
            index += 1;
        }
        let Some((stop_at, why)) = s.stop else {
            if let Some(c) = committed.filter(|c| index <= c.index) {
                // The last segment is whole, yet the log ends below the
                // committed index: a later segment is gone.
                let reason = format!("the log ends before log index {index}, below the committed index {}", c.index);
                w.damaged.push((index, Some(c.index), reason, Some(c)));
            }
            return w;
        };
        let stop_at = stop_at as usize;
        // The next valid record that belongs to this segment's range.
        let next = |h: &RecordHeader| h.index > index && end.is_none_or(|e| h.index < e);
        let after = match end {
            Some(_) => format::find_valid_record(bytes, stop_at + 1, max_payload, salt).filter(|(_, h)| next(h)),
            None => {
                // The last segment: a torn tail is where the log ends.
                let (torn, after) =
                    classify_stop(bytes, stop_at, index, why, max_payload, salt, committed.map(|c| c.index));
                if torn {
                    return w;
                }
                after.filter(|(_, h)| next(h))
            }
        };
        let reason = match why {
            ScanStop::Defect(format::RecordDefect::Zero | format::RecordDefect::Short) if end.is_some() => {
                format!("records missing from position {stop_at} ({why}) in a sealed segment")
            }
            _ => format!("{why} at position {stop_at}"),
        };
        // Damage at or below the committed index whose next intact record
        // may not be committed (it lies past the committed index and
        // nothing shows it durable): a peer is only sure to hold the
        // committed entries, so they are what is repaired, anchored on the
        // committed id itself, and the log ends there.
        if let Some(c) = committed.filter(|c| index <= c.index)
            && after.is_none_or(|(_, h)| h.index > c.index + 1 && h.synced_before <= index)
        {
            w.damaged.push((index, Some(c.index), reason, Some(c)));
            return w;
        }
        match after {
            Some((q, h)) => {
                w.damaged.push((index, Some(h.index - 1), reason, None));
                pos = q;
                index = h.index;
            }
            None => {
                w.damaged.push((index, end.map(|e| e - 1), reason, None));
                return w;
            }
        }
    }
}

/// The damaged ranges of the log in `dir`, in index order, merged where
/// they touch. Empty for a healthy log. Reads every record (checksums
/// included), so it costs one read of the whole log.
pub fn find_damage(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<Damage>> {
    let _lock = lock_dir(dir)?;
    let (meta, segs) = segments(fs, dir)?;
    let purged = meta.purged.map(|p| p.index);
    let tail = Tail::of(&meta);
    let mut out: Vec<Damage> = Vec::new();
    // First intact entry of each segment, to anchor damage that ends a segment.
    let mut first_intact: BTreeMap<u64, LogPos> = BTreeMap::new();
    for (k, seg) in segs.iter().enumerate() {
        let end = segs.get(k + 1).map(|s| s.first);
        let w = walk(seg, end, tail);
        if let Some(&(i, _, h)) = w.intact.first() {
            first_intact.insert(i, LogPos::new(h.term, h.leader, i));
        }
        for (from, to, reason, anchor) in w.damaged {
            // Below the purge point nothing is needed.
            let from = purged.map_or(from, |p| from.max(p + 1));
            if to.is_some_and(|t| t < from) {
                continue;
            }
            let anchor = anchor.or_else(|| {
                to.and_then(|t| w.intact.iter().find(|&&(i, _, _)| i == t + 1))
                    .map(|&(i, _, h)| LogPos::new(h.term, h.leader, i))
            });
            out.push(Damage { from, to: to.unwrap_or(u64::MAX), file: seg.path.clone(), reason, anchor });
        }
    }
    // Entries between the purge point (or the start of the log) and the
    // first segment.
    // (A log never purged starts wherever its first append did, so only a
    // purge point tells what the first segment must begin with.)
    if let (Some(seg), Some(p)) = (segs.first(), purged) {
        let start = p + 1;
        if seg.first > start {
            let reason = format!("entries {start}..{} are missing: no segment holds them", seg.first);
            let file = seg.path.with_file_name(format::segment_file_name(start));
            out.insert(0, Damage { from: start, to: seg.first - 1, file, reason, anchor: None });
        }
    }
    // Merge runs that touch, then anchor those that end a segment on the
    // next segment's first intact entry.
    let mut merged: Vec<Damage> = Vec::new();
    for d in out {
        match merged.last_mut() {
            Some(m) if m.to != u64::MAX && m.to + 1 == d.from => {
                m.to = d.to;
                m.anchor = d.anchor;
                m.reason = format!("{}; {}", m.reason, d.reason);
            }
            _ => merged.push(d),
        }
    }
    for d in &mut merged {
        if d.anchor.is_none() && d.to != u64::MAX {
            d.anchor = first_intact.get(&(d.to + 1)).copied();
        }
    }
    Ok(merged)
}

/// Write `records` (the entries `damage.from..=damage.to`, from a peer,
/// already checked against the anchor) back into the log in `dir`: each
/// segment the range touches is rebuilt in a temp file from its intact
/// records and the new ones, fdatasynced, renamed over the old one, and the
/// directory fsynced. Indexes of rebuilt segments are removed (recovery
/// rebuilds them). A crash at any point leaves the old or the new segment.
pub fn rewrite(fs: &dyn FileSystem, dir: &Path, segment_bytes: u64, damage: &Damage, records: &[Record]) -> Result<()> {
    let _lock = lock_dir(dir)?;
    let expected = damage.to.checked_sub(damage.from).map(|n| n + 1);
    let contiguous = records.iter().enumerate().all(|(k, r)| r.index == damage.from + k as u64);
    if expected != Some(records.len() as u64) || !contiguous {
        return Err(Error::Invalid(format!(
            "repair of log indexes {}..={} needs exactly those entries, got {} starting at {:?}",
            damage.from,
            damage.to,
            records.len(),
            records.first().map(|r| r.index)
        )));
    }
    let (meta, segs) = segments(fs, dir)?;
    let tail = Tail::of(&meta);
    let new: BTreeMap<u64, &Record> = records.iter().map(|r| (r.index, r)).collect();
    // Split the range over the segments that hold it; entries before the
    // first segment get a segment of their own.
    let mut k = segs.partition_point(|s| s.first <= damage.from);
    if k == 0 {
        let upto = segs.first().map_or(damage.to + 1, |s| s.first).min(damage.to + 1);
        write_segment(fs, dir, segment_bytes, damage.from, meta.generation, None, upto, &new, tail)?;
        k = 1;
        if upto > damage.to {
            return sync_dir(fs, dir);
        }
    }
    for (j, seg) in segs.iter().enumerate().skip(k - 1) {
        if seg.first > damage.to {
            break;
        }
        let end = segs.get(j + 1).map(|s| s.first);
        let last_needed = end.map_or(u64::MAX, |e| e - 1);
        if last_needed < damage.from {
            continue;
        }
        let generation = seg.header.map_or(meta.generation, |(g, _)| g);
        write_segment(fs, dir, segment_bytes, seg.first, generation, Some(seg), end.unwrap_or(u64::MAX), &new, tail)?;
    }
    sync_dir(fs, dir)
}

fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// Rebuild the segment starting at `first` with its intact records (from
/// `old`) and `new` ones, for indexes below `end`.
#[allow(clippy::too_many_arguments)]
fn write_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    segment_bytes: u64,
    first: u64,
    generation: u64,
    old: Option<&Found>,
    end: u64,
    new: &BTreeMap<u64, &Record>,
    tail: Tail,
) -> Result<()> {
    let salt = old.and_then(|s| s.header).map_or_else(format::new_salt, |(_, salt)| salt);
    let walked = old.map(|s| walk(s, (end != u64::MAX).then_some(end), tail));
    let mut body = Vec::new();
    let mut synced_before = 0u64;
    let mut index = first;
    let intact: BTreeMap<u64, (usize, RecordHeader)> =
        walked.iter().flat_map(|w| w.intact.iter().map(|&(i, p, h)| (i, (p, h)))).collect();
    loop {
        if index >= end {
            break;
        }
        if let Some(r) = new.get(&index) {
            let meta = RecordMeta { kind: r.kind, term: r.term, leader: r.leader, index, timestamp_ms: r.timestamp_ms };
            // Repaired records witness nothing beyond what came before them.
            format::encode_record(&mut body, &meta, synced_before.min(index), salt, &r.payload);
        } else if let (Some(&(p, h)), Some(seg)) = (intact.get(&index), old) {
            synced_before = synced_before.max(h.synced_before);
            body.extend_from_slice(&seg.bytes[p..p + h.record_bytes()]);
        } else {
            break;
        }
        index += 1;
    }
    if end != u64::MAX && index < end {
        return Err(Error::Invalid(format!(
            "cannot rebuild the segment starting at {first}: log index {index} is neither intact nor supplied"
        )));
    }
    let needed = (SEGMENT_HEADER_BYTES + body.len()) as u64;
    let old_len = old.map_or(segment_bytes, |s| s.bytes.len() as u64);
    let capacity = old_len.max(needed.div_ceil(4096) * 4096);
    if capacity > format::MAX_SEGMENT_BYTES {
        return Err(Error::Invalid(format!("the rebuilt segment starting at {first} would need {capacity} bytes")));
    }
    let path = dir.join(format::segment_file_name(first));
    let tmp = dir.join(format!("{}.tmp", format::segment_file_name(first)));
    let io = |what: &str| {
        let what = format!("{what} {}", tmp.display());
        move |e| Error::io(what, e)
    };
    fs.preallocate(&tmp, capacity, Preallocate::Zero, false).map_err(io("preallocate"))?;
    let file = fs.open(&tmp).map_err(io("open"))?;
    file.write_at(0, &format::encode_segment_header(first, generation, salt)).map_err(io("write"))?;
    file.write_at(SEGMENT_HEADER_BYTES as u64, &body).map_err(io("write"))?;
    file.sync_data().map_err(io("fdatasync"))?;
    drop(file);
    fs.rename(&tmp, &path).map_err(|e| Error::io(format!("rename {} over {}", tmp.display(), path.display()), e))?;
    for name in [format::index_file_name(first), format::time_index_file_name(first)] {
        fs.remove(&dir.join(name)).map_err(|e| Error::io("remove indexes of a rebuilt segment", e))?;
    }
    tracing::info!(segment = %path.display(), records = index - first, "rebuilt segment");
    Ok(())
}
