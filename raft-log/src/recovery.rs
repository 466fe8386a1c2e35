//! Open-time recovery: read the meta file, check every segment's header
//! and records, rebuild what an index needs, and cut a torn tail — but only
//! a tail a crash can explain (see `classify_stop`); damage to durable
//! bytes is corruption, refused, and repaired from a peer (`repair.rs`).
//! The order of the checks, and why, is in ARCHITECTURE.md, "Recovery on
//! open".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::format::{self, Meta, RECORD_HEADER_BYTES, SegmentHeader};
use crate::io::FileSystem;
use crate::preparer::PREPARED_PREFIX;
use crate::segment::{self, Scan, ScanStop, Segment};
use crate::store::{State, corruption, remove_segment_files};

/// A segment file found on open, header checked.
#[derive(Clone)]
struct Found {
    first: u64,
    path: PathBuf,
    file: Arc<dyn crate::io::FileIo>,
    /// The file's map, where the I/O layer gives one (shared with the page
    /// cache, so it shows later writes through `file`).
    map: Option<bytes::Bytes>,
    /// The whole file: the map, or one read of it.
    bytes: bytes::Bytes,
    /// `None` for a last segment whose header never reached the disk.
    salt: Option<u32>,
}

/// How the active segment's scan, stopped at `pos` (log index
/// `index_at_stop`) for `why`, ended: `true` for a torn tail that recovery
/// may cut (what a crash leaves of unsynced writes), `false` for damage to
/// bytes that were durable. Also the next fully valid record after `pos`.
///
/// `committed` is the committed index the meta file holds: the store writes
/// only one that this node had fsynced ([`Store::save_committed`]), so damage
/// at or below it is never a torn write, whatever it looks like. Nor is
/// damage that a later valid record witnesses as fsynced before it was
/// written (its `synced_before`). Only then does the damage's shape count:
/// a zero header, or zeros where a whole sector was lost, is what a crash
/// leaves of an unsynced write. (A zero header is also where a truncation
/// ends a stale tail, whose records may well witness; recovery reads the
/// meta file's `truncated_from` and never scans past it.)
pub(crate) fn classify_stop(
    bytes: &[u8],
    pos: usize,
    index_at_stop: u64,
    why: ScanStop,
    max_payload: usize,
    salt: u32,
    committed: Option<u64>,
) -> (bool, Option<(usize, format::RecordHeader)>) {
    let after = format::find_valid_record(bytes, pos + 1, max_payload, salt);
    if committed.is_some_and(|c| index_at_stop <= c) {
        return (false, after);
    }
    // A later record written after this one was durable proves that no
    // crash explains the damage.
    if after.is_some_and(|(_, h)| h.synced_before > index_at_stop) {
        return (false, after);
    }
    let torn = match why {
        ScanStop::Defect(format::RecordDefect::Zero) => true,
        ScanStop::Defect(_) => {
            let rec_len = format::decode_header(&bytes[pos..], usize::MAX)
                .map(|h| h.record_bytes())
                .unwrap_or(RECORD_HEADER_BYTES);
            let region_end = match after {
                Some((q, _)) => q,
                None => (pos + rec_len).min(bytes.len()),
            };
            format::looks_torn(&bytes[pos..region_end], pos as u64, after.is_none())
        }
        ScanStop::WrongIndex { .. } | ScanStop::TermBackwards { .. } => false,
    };
    (torn, after)
}

/// Open-time recovery: read meta, check every segment, rebuild missing or
/// damaged indexes, cut a torn tail. Blocking.
pub(crate) fn recover(fs: &dyn FileSystem, config: &StoreConfig) -> Result<State> {
    let dir = &config.dir;
    let meta_path = dir.join("meta");
    let names = fs.list(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    let meta = if names.iter().any(|n| n == "meta") {
        let bytes = crate::io::read_file(fs, &meta_path).map_err(|e| Error::io("read meta", e))?;
        Meta::decode(&bytes).map_err(|reason| corruption(&meta_path, 0, None, reason))?
    } else {
        Meta::default()
    };
    let mut firsts = Vec::new();
    for name in &names {
        if name.starts_with(PREPARED_PREFIX) || name.ends_with(".tmp") {
            fs.remove(&dir.join(name)).map_err(|e| Error::io("remove stale file", e))?;
        } else if let Some((first, "log")) = format::parse_file_name(name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let committed = committed_to_hold(&meta);
    // A truncation cut short by a crash: the log ends before
    // `truncated_from`. Segments from there on hold only truncated entries
    // (or are the empty segment the truncation made), and what the kept
    // segment holds from there on is a stale tail; both go, then the mark.
    if let Some(t) = meta.truncated_from {
        if committed.is_some_and(|c| t <= c) {
            return Err(corruption(
                &meta_path,
                0,
                Some(t),
                format!("a truncation from {t} is marked, at or below the committed index {committed:?}"),
            ));
        }
        for &first in firsts.iter().filter(|&&f| f >= t) {
            remove_segment_files(fs, dir, first).map_err(|e| Error::io("remove a truncated segment", e))?;
        }
        firsts.retain(|&f| f < t);
    }
    // Index files whose segment is gone.
    for name in &names {
        if let Some((first, "idx" | "tix")) = format::parse_file_name(name)
            && firsts.binary_search(&first).is_err()
        {
            fs.remove(&dir.join(name)).map_err(|e| Error::io("remove orphan index", e))?;
        }
    }
    let purged = meta.purged.map(|p| p.index);
    let mut segments = BTreeMap::new();
    let mut kept: Vec<Found> = Vec::new();
    for &first in &firsts {
        let path = dir.join(format::segment_file_name(first));
        let file = fs.open(&path).map_err(|e| Error::io("open segment", e))?;
        let len = file.len().map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if len > format::MAX_SEGMENT_BYTES {
            return Err(corruption(&path, 0, None, format!("{len} bytes, larger than any segment keel writes")));
        }
        let map = file.map().map_err(|e| Error::io(format!("map {}", path.display()), e))?;
        let bytes = match &map {
            Some(map) => map.clone(),
            None => segment::load(&*file).map_err(|e| Error::io(format!("read {}", path.display()), e))?,
        };
        match format::decode_segment_header(&bytes) {
            Ok(SegmentHeader::Valid { first_index, generation, salt }) => {
                if first_index != first {
                    return Err(corruption(&path, 0, None, format!("header says first index {first_index}")));
                }
                if generation < meta.generation {
                    // Left over from before a range install.
                    remove_segment_files(fs, dir, first).map_err(|e| Error::io("remove stale segment", e))?;
                    continue;
                }
                if generation > meta.generation {
                    return Err(corruption(
                        &path,
                        0,
                        None,
                        format!("generation {generation} is newer than the meta file's {}", meta.generation),
                    ));
                }
                kept.push(Found { first, path, file, map, bytes, salt: Some(salt) });
            }
            Ok(SegmentHeader::Empty) => kept.push(Found { first, path, file, map, bytes, salt: None }),
            Err(reason) => return Err(corruption(&path, 0, None, reason)),
        }
    }
    // A header that never reached the disk is a torn roll: only the last
    // segment (after stale generations are gone) can have one.
    if let Some(f) = kept.iter().rev().skip(1).find(|f| f.salt.is_none()) {
        return Err(corruption(&f.path, 0, None, "zero header in a segment followed by others"));
    }
    let n = kept.len();
    for k in 0..n {
        let next_first = kept.get(k + 1).map(|x| x.first);
        let Found { first, path, file, map, bytes, salt: found_salt } = kept[k].clone();
        let header_ok = found_salt.is_some();
        // A header lost in a torn roll gets a fresh salt when it is rewritten.
        let salt = found_salt.unwrap_or_else(format::new_salt);
        // The file's own size: segments made under another `segment.bytes` keep theirs.
        let seg_capacity = bytes.len() as u64;
        if let Some(next) = next_first {
            // Sealed: must hold exactly first..next, unless all of that is purged.
            let expected = next - first;
            let lenient = purged.is_some_and(|p| next - 1 <= p);
            let mut seg =
                Segment::from_scan(first, path.clone(), file.clone(), map.clone(), seg_capacity, salt, Scan::empty());
            seg.sealed = true;
            if seg.load_indexes(fs, dir, expected, lenient).is_none() {
                let limit = usize::try_from(expected).unwrap_or(usize::MAX);
                let s = segment::scan(&bytes, first, Some(limit), format::max_payload_in(seg_capacity), salt);
                if (s.positions.len() as u64) < expected && !lenient {
                    let (pos, why) = s.stop.expect("a short scan has a stop");
                    return Err(corruption(
                        &path,
                        pos,
                        Some(first + s.positions.len() as u64),
                        format!("{why} in a sealed segment"),
                    ));
                }
                seg = Segment::from_scan(first, path.clone(), file.clone(), map, seg_capacity, salt, s);
                seg.sealed = true;
                tracing::info!(segment = %path.display(), records = seg.len(), "rebuilt segment indexes");
                if let Err(e) = seg.write_indexes(fs, dir) {
                    tracing::warn!(error = %e, "could not write rebuilt indexes");
                }
            }
            segments.insert(first, seg);
            continue;
        }
        // The active segment: scan to the end (or to a truncation's mark)
        // and cut a torn tail.
        let max_payload = format::max_payload_in(seg_capacity);
        let limit = meta.truncated_from.map(|t| usize::try_from(t.saturating_sub(first)).unwrap_or(usize::MAX));
        let s = if header_ok { segment::scan(&bytes, first, limit, max_payload, salt) } else { Scan::empty() };
        let end = s.end as usize;
        let index_at_stop = first + s.positions.len() as u64;
        if let Some(c) = committed
            && index_at_stop <= c
            && s.stop.is_none()
        {
            // Every record the segment can hold is valid, yet the log ends
            // below the committed index: a later segment is gone.
            return Err(corruption(
                &path,
                s.end,
                Some(index_at_stop),
                format!("the log ends before log index {index_at_stop}, below the committed index {c}"),
            ));
        }
        if !header_ok && committed.is_some_and(|c| first <= c) {
            return Err(corruption(&path, 0, Some(first), "zero header in a segment holding committed entries"));
        }
        if let Some((pos, why)) = s.stop {
            let pos = pos as usize;
            let (torn, after) = classify_stop(&bytes, pos, index_at_stop, why, max_payload, salt, committed);
            if !torn {
                let follow = after
                    .map(|(q, h)| {
                        let proof =
                            if h.synced_before > index_at_stop { ", written after this one was fsynced" } else { "" };
                        format!("; a valid record (log index {}) follows at position {q}{proof}", h.index)
                    })
                    .unwrap_or_default();
                let held = match committed {
                    Some(c) if index_at_stop <= c => format!(", at or below the committed index {c}"),
                    _ => String::new(),
                };
                return Err(corruption(&path, pos as u64, Some(index_at_stop), format!("{why}{held}{follow}")));
            }
            if after.is_some() || bytes[pos..].iter().any(|&b| b != 0) {
                tracing::warn!(segment = %path.display(), position = pos, index = index_at_stop, "cut a torn tail ({why})");
            }
        }
        // Zero whatever lies after the last good record, durably, so stale
        // bytes can never line up behind records appended later.
        let last_nonzero = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let zero_from = if header_ok { end } else { 0 };
        if last_nonzero > zero_from {
            let zeros = vec![0u8; last_nonzero - zero_from];
            file.write_at(zero_from as u64, &zeros)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(format!("zero torn tail of {}", path.display()), e))?;
        }
        if !header_ok {
            file.write_at(0, &format::encode_segment_header(first, meta.generation, salt))
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(format!("write header of {}", path.display()), e))?;
        }
        // What recovery read may have been only in the page cache (the
        // process died, the machine did not): make it durable before the
        // store publishes it as fsynced, and the segment's rename with it.
        file.sync_data().map_err(|e| Error::io(format!("fdatasync {}", path.display()), e))?;
        for name in [format::index_file_name(first), format::time_index_file_name(first)] {
            fs.remove(&dir.join(name)).map_err(|e| Error::io("remove index of the active segment", e))?;
        }
        segments.insert(first, Segment::from_scan(first, path, file, map, seg_capacity, salt, s));
    }
    // A gap between the purge point and the first entry would be a hole.
    if let (Some(p), Some(seg)) = (purged, segments.values().find(|s| s.len() > 0))
        && seg.first > p + 1
    {
        return Err(corruption(&seg.path, 0, Some(p + 1), format!("entries {}..{} are missing", p + 1, seg.first)));
    }
    fs.sync_dir(dir).map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;
    let mut meta = meta;
    if meta.truncated_from.take().is_some() {
        // The stale tail is zeroed and synced above: the mark has done its work.
        crate::io::write_file_durably(fs, dir, "meta", &meta.encode())
            .map_err(|e| Error::io("clear the truncation mark in the meta file", e))?;
    }
    let committed_written = meta.committed;
    Ok(State { segments, meta, committed_saved_at: None, committed_written })
}

/// The committed index recovery must find in the log: the meta file's, if
/// above the purge point (entries at or below it are no longer needed).
pub(crate) fn committed_to_hold(meta: &Meta) -> Option<u64> {
    let c = meta.committed?.index;
    meta.purged.is_none_or(|p| c > p.index).then_some(c)
}
