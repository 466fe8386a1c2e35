//! The disk's own limit, with no engine: a tight `pwrite` + `fdatasync` loop.
//!
//! This is what the engine's group commit is compared against, so it does
//! what the engine does per sync and nothing more: buffered `pwrite` of the
//! batch at the next sequential position, then `fdatasync`. The file is
//! prepared the way a segment is (zero-filled and synced, or `fallocate`d
//! for the comparison), outside the timed loop.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Bound on iterations of any raw loop, whatever the duration: far above what
/// a disk can fsync in a bench run, there only so the loop has a count bound.
const MAX_ITERATIONS: u64 = 100_000_000;

/// What one timed loop did.
#[derive(Debug, Clone, Copy)]
pub struct LoopResult {
    pub iterations: u64,
    pub elapsed: Duration,
    /// The loop stopped because the file was used up (no-wrap loops only).
    pub exhausted: bool,
}

impl LoopResult {
    pub fn per_s(&self) -> f64 {
        self.iterations as f64 / self.elapsed.as_secs_f64()
    }
}

fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
}

/// A `len`-byte file of written zeros, synced: every later write lands on
/// allocated, written blocks, as in a zero-filled segment.
pub fn zero_filled(path: &Path, len: u64) -> Result<File> {
    const CHUNK: usize = 1 << 20;
    let file = create(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from((len - pos).min(CHUNK as u64)).expect("a chunk fits usize");
        file.write_all_at(&zeros[..n], pos).with_context(|| format!("zero-fill {}", path.display()))?;
        pos += n as u64;
    }
    file.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    Ok(file)
}

/// A `len`-byte file reserved with `fallocate(2)` (unwritten extents), synced.
/// `None` where the filesystem does not support it.
pub fn fallocated(path: &Path, len: u64) -> Result<Option<File>> {
    let file = create(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)).with_context(|| format!("fallocate {}", path.display())),
    }
    file.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    Ok(Some(file))
}

/// Recognizable, position-dependent bytes (never all zero).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

/// `pwrite` `chunk` bytes at the next sequential position, then
/// `fdatasync`, until `duration` passes. With `wrap` the position returns to
/// 0 at the end of the file; without, the loop stops there, so every write
/// meets never-written space (what the fallocate comparison needs). Each
/// iteration's latency goes into `hist` when given.
pub fn write_sync_loop(
    file: &File,
    file_bytes: u64,
    chunk: usize,
    duration: Duration,
    wrap: bool,
    mut hist: Option<&mut Histogram<u64>>,
) -> Result<LoopResult> {
    let slots = file_bytes / chunk as u64;
    assert!(slots >= 1, "the file holds at least one chunk");
    let buf = pattern(chunk);
    let max = if wrap { MAX_ITERATIONS } else { slots.min(MAX_ITERATIONS) };
    let start = Instant::now();
    let end = start + duration;
    let mut iterations = 0u64;
    while iterations < max {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let pos = (iterations % slots) * chunk as u64;
        file.write_all_at(&buf, pos).with_context(|| format!("pwrite {chunk} bytes at {pos}"))?;
        file.sync_data().context("fdatasync")?;
        if let Some(h) = hist.as_deref_mut() {
            h.saturating_record(super::micros(t0.elapsed()));
        }
        iterations += 1;
    }
    Ok(LoopResult { iterations, elapsed: start.elapsed(), exhausted: iterations == max && !wrap })
}
