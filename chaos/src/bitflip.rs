//! The `bitflip` nemesis: flip a byte in random records of one node's
//! sealed segments (what a bad disk or a stray write does to data at rest),
//! zero a record header or a whole 512-byte sector of its active segment
//! (a lost sector), and afterwards check that the node repaired every one
//! of them.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use keel_raft_log::format::{self, SEGMENT_HEADER_BYTES};
use rand::Rng;
use rand::rngs::StdRng;

/// One damaged place: a flipped byte, a zeroed header or a zeroed sector.
#[derive(Debug, Clone, Copy)]
pub struct Flip {
    /// Log index of the (first) record it damaged.
    pub index: u64,
    /// Log index of the last record it damaged.
    pub last: u64,
    pub segment_first: u64,
    pub position: u64,
}

/// First indexes of the segment files in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut firsts: Vec<u64> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| match format::parse_file_name(&e.ok()?.file_name().into_string().ok()?) {
            Some((first, "log")) => Some(first),
            _ => None,
        })
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// `(index, position, length)` of the records of the segment starting at
/// `first` that lie below `next` (records past it are a truncated stale tail).
fn records(path: &Path, first: u64, next: u64) -> Result<Vec<(u64, u64, u64)>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let max = format::max_payload_in(bytes.len() as u64);
    let mut out = Vec::new();
    let (mut pos, mut index) = (SEGMENT_HEADER_BYTES, first);
    while index < next {
        let Ok(h) = format::decode_header(&bytes[pos.min(bytes.len())..], max) else { break };
        if h.index != index || pos + h.record_bytes() > bytes.len() {
            break;
        }
        out.push((index, pos as u64, h.record_bytes() as u64));
        pos += h.record_bytes();
        index += 1;
    }
    Ok(out)
}

/// Flip one byte (any byte: header, checksum or payload) in each of up to
/// `count` random records of the sealed segments in `dir`, in distinct
/// segments. Returns the flips (none when no segment is sealed yet).
pub fn flip_sealed(dir: &Path, rng: &mut StdRng, count: usize) -> Result<Vec<Flip>> {
    let firsts = segments(dir)?;
    // A segment followed by another is sealed.
    let mut sealed: Vec<(u64, u64)> = firsts.windows(2).map(|w| (w[0], w[1])).collect();
    let mut flips = Vec::new();
    while flips.len() < count && !sealed.is_empty() {
        let (first, next) = sealed.swap_remove(rng.random_range(0..sealed.len()));
        let path = dir.join(format::segment_file_name(first));
        let recs = records(&path, first, next)?;
        if recs.is_empty() {
            continue;
        }
        let (index, pos, len) = recs[rng.random_range(0..recs.len())];
        let at = pos + rng.random_range(0..len);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).context("open a segment")?;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).context("read a byte")?;
        b[0] ^= rng.random_range(1..=255u8);
        f.write_all_at(&b, at).context("flip a byte")?;
        flips.push(Flip { index, last: index, segment_first: first, position: at });
    }
    Ok(flips)
}

/// Bytes of a sector, the unit a disk loses.
const SECTOR: u64 = 512;

/// In the active (last) segment of the stopped node's log in `dir`, zero
/// either one record's 52-byte header or one whole, aligned 512-byte sector
/// (never the segment header's), among the records at or below the
/// committed index its meta file holds: entries this node had fsynced and
/// the cluster had made durable, which recovery must never take for a torn
/// tail. `None` when no such record lies in the active segment.
pub fn damage_active(dir: &Path, rng: &mut StdRng) -> Result<Option<Flip>> {
    let meta = keel_raft_log::read_meta(dir).with_context(|| format!("read the meta file in {}", dir.display()))?;
    let Some(committed) = meta.and_then(|m| m.committed.filter(|c| m.purged.is_none_or(|p| c.index > p.index))) else {
        return Ok(None);
    };
    let Some(&first) = segments(dir)?.last() else { return Ok(None) };
    let path = dir.join(format::segment_file_name(first));
    let recs = records(&path, first, committed.index + 1)?;
    // Records wholly past the first sector, so the segment header stays.
    let recs: Vec<(u64, u64, u64)> = recs.into_iter().filter(|&(_, pos, _)| pos >= SECTOR).collect();
    if recs.is_empty() {
        return Ok(None);
    }
    let (index, pos, len) = recs[rng.random_range(0..recs.len())];
    let (at, bytes) = if rng.random_bool(0.5) {
        (pos, format::RECORD_HEADER_BYTES as u64)
    } else {
        // A sector within the record, or the one it starts in.
        let sector = (pos + rng.random_range(0..len)) / SECTOR * SECTOR;
        (sector.max(SECTOR), SECTOR)
    };
    let end = at + bytes;
    // Every committed record the zeros touch.
    let touched: Vec<u64> = recs.iter().filter(|&&(_, p, l)| p < end && at < p + l).map(|&(i, _, _)| i).collect();
    let (Some(&lo), Some(&hi)) = (touched.first(), touched.last()) else { return Ok(None) };
    debug_assert!(lo <= index && index <= hi);
    let f = std::fs::OpenOptions::new().write(true).open(&path).context("open the active segment")?;
    f.write_all_at(&vec![0u8; bytes as usize], at).context("zero part of the active segment")?;
    Ok(Some(Flip { index: lo, last: hi, segment_first: first, position: at }))
}

/// Check that node's admin status (`repairs`, after its restart) covers
/// every flipped record; returns how many ranges it repaired.
pub fn check_repaired(status: &serde_json::Value, flips: &[Flip]) -> Result<u64> {
    let repairs = status["repairs"].as_array().context("the status has no `repairs`")?;
    let ranges: Vec<(u64, u64)> =
        repairs.iter().filter_map(|r| Some((r["from"].as_u64()?, r["to"].as_u64()?))).collect();
    for f in flips {
        for index in f.index..=f.last {
            if !ranges.iter().any(|&(from, to)| from <= index && index <= to) {
                bail!(
                    "the damage at position {} of segment {} (log index {index}) was not repaired; repairs: \
                     {ranges:?}",
                    f.position,
                    f.segment_first,
                );
            }
        }
    }
    Ok(ranges.len() as u64)
}
