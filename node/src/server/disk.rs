//! The volume holding the log: its size and free space, for the disk
//! reserve (`reserve.rs`) and the admin status and advice.

use std::path::Path;

use serde::Serialize;

/// A volume's size and free space.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Disk {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_ratio: f64,
}

/// The volume holding `dir`: `statvfs(3)`. Space reserved for root counts
/// as used, as `df` shows it.
pub fn disk_usage(dir: &Path) -> std::io::Result<Disk> {
    let st = rustix::fs::statvfs(dir)?;
    let frsize = st.f_frsize;
    let total = st.f_blocks * frsize;
    let free = st.f_bavail * frsize;
    let used = total.saturating_sub(st.f_bfree * frsize);
    // Of the space non-root users can have, the part in use (as `df`'s Use%).
    let usable = used + free;
    let used_ratio = if usable == 0 { 0.0 } else { used as f64 / usable as f64 };
    Ok(Disk { total_bytes: total, free_bytes: free, used_ratio })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_reads_the_volume_and_refuses_a_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = disk_usage(dir.path()).expect("statvfs");
        assert!(d.total_bytes > 0 && d.free_bytes <= d.total_bytes, "{d:?}");
        assert!((0.0..=1.0).contains(&d.used_ratio), "{d:?}");
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }
}
