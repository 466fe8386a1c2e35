//! The disk reserve (`store.reserve.bytes`): the free space the volume
//! holding the log must keep, so ENOSPC never strikes where it would be
//! fatal.
//!
//! Appends write into preallocated segments and cannot run out of space;
//! what can is the next segment's preallocation at a roll, a truncation's
//! roll, and the meta, index and checkpoint files. openraft treats any
//! failed append as fatal, so running out there stops the node. The leader
//! therefore refuses writes that grow the log (produce, create topic) with
//! RESOURCE_EXHAUSTED *before proposing* while free space is below the
//! reserve, and accepts them again as soon as space returns (retention
//! deleting segments, or an operator): the check reads `statvfs` again
//! when its last reading is older than `REMEASURE` (10 ms; a statfs per
//! produce request cost 2 % of the leader's CPU at one record per
//! request), so there is nothing to reset.
//!
//! Followers hold the same log, so the leader's refusal normally keeps
//! them within their reserve too. A follower whose volume fills for other
//! reasons keeps appending into its preallocated segment; at its next
//! write that needs new space (a roll without a prepared file: `NoSpace`;
//! or the meta file, rewritten about once a second through a temp file) it
//! fail-stops cleanly, nothing half-written: the node exits naming the
//! file, a majority still holds every acknowledged entry, and once space
//! is freed a restart catches it up (keel-chaos `disk-full` showed the meta
//! file to be the usual first). Its admin advice says it is below the
//! reserve meanwhile.
//!
//! Small commands (consumer offset commits, retention's trims, membership
//! changes) are not refused: trims are what frees space, and the reserve is
//! sized to absorb the rest.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::disk::disk_usage;

/// How old a free-space reading may be before a check reads `statvfs`
/// again. Writes admitted meanwhile grow the log by what 10 ms of produce
/// brings, far below any sensible reserve.
const REMEASURE: Duration = Duration::from_millis(10);

/// The reserve of one node's log volume.
#[derive(Debug, Clone)]
pub struct DiskReserve {
    dir: PathBuf,
    /// 0: no check.
    reserve_bytes: u64,
    /// The last reading of free bytes, and when it was taken.
    measured: Arc<Mutex<Option<(Instant, u64)>>>,
}

/// Free space below the reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowReserve {
    pub dir: PathBuf,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
}

impl fmt::Display for BelowReserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the volume holding the log ({}) has {} bytes free, below the reserve of {} bytes (store.reserve.bytes): \
             writes that grow the log are refused until space is freed (lower retention.ms or retention.bytes, \
             delete a topic, or free or add space on the volume); they resume by themselves",
            self.dir.display(),
            self.free_bytes,
            self.reserve_bytes
        )
    }
}

impl DiskReserve {
    /// `reserve_bytes` 0: no check.
    pub fn new(dir: PathBuf, reserve_bytes: u64) -> Self {
        DiskReserve { dir, reserve_bytes, measured: Arc::default() }
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// `Err` when the volume's free space (what non-root users may use, as
    /// `df` shows it) is below the reserve. A volume that cannot be
    /// measured is not refused: `statvfs` on the open data directory does
    /// not fail in practice, and refusing every write on a monitoring error
    /// would be an outage of its own.
    pub fn check(&self) -> Result<(), BelowReserve> {
        if self.reserve_bytes == 0 {
            return Ok(());
        }
        let mut measured = self.measured.lock().expect("no code panics while holding the reading");
        let free_bytes = match *measured {
            Some((at, free)) if at.elapsed() < REMEASURE => free,
            _ => match disk_usage(&self.dir) {
                Ok(d) => {
                    *measured = Some((Instant::now(), d.free_bytes));
                    d.free_bytes
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed; the disk reserve is not checked");
                    return Ok(());
                }
            },
        };
        if free_bytes < self.reserve_bytes {
            return Err(BelowReserve { dir: self.dir.clone(), free_bytes, reserve_bytes: self.reserve_bytes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_and_names_both_figures_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = disk_usage(dir.path()).expect("statvfs").free_bytes;
        let ok = DiskReserve::new(dir.path().to_path_buf(), 1);
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(DiskReserve::new(dir.path().to_path_buf(), 0).check(), Ok(()));
        let over = DiskReserve::new(dir.path().to_path_buf(), u64::MAX);
        let refused = over.check().expect_err("no volume has u64::MAX bytes free");
        assert_eq!(refused.reserve_bytes, u64::MAX);
        // Free space moves with other processes' writes; it is near `free`.
        assert!(refused.free_bytes > 0 && refused.free_bytes.abs_diff(free) < (1 << 30));
        let text = refused.to_string();
        assert!(text.contains("store.reserve.bytes") && text.contains(&u64::MAX.to_string()), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }
}
