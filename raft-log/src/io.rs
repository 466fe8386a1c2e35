//! The file I/O layer: every byte the store reads or writes goes through
//! [`FileSystem`] and [`FileIo`], so that tests can swap in
//! [`crate::fault::FaultFs`], which keeps unsynced bytes apart and can lose
//! them ("power loss"), fail an fsync with EIO or a write with ENOSPC.
//!
//! [`RealFs`] is the production layer: positional `pwrite`/`pread`,
//! `fdatasync`, `fallocate` with a zero-filling fallback, and read-only
//! `mmap` handed out as [`Bytes`] so payloads are sliced, never copied.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

/// How a new segment file gets its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocate {
    /// Write zeros over the whole file and fdatasync it. The later appends
    /// then overwrite allocated, written blocks, so each `fdatasync` is a pure
    /// data flush with no extent conversion to journal: the faster sync for
    /// a lone writer on ext4, but under sustained load the fill's dirty
    /// blocks join the journal commits of the appends' syncs (3× the
    /// produce p99; ARCHITECTURE.md, "Preallocation").
    Zero,
    /// `fallocate(2)`: reserves blocks as unwritten extents (the default).
    /// Falls back to [`Preallocate::Zero`] where the filesystem answers
    /// EOPNOTSUPP.
    Fallocate,
}

impl Preallocate {
    /// The value of `segment.preallocate` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Preallocate::Zero => "zero",
            Preallocate::Fallocate => "fallocate",
        }
    }
}

/// One open file. Offsets are absolute; the store never relies on a cursor.
pub trait FileIo: Send + Sync + Debug {
    /// The path the file was opened at, for errors that must name it.
    fn path(&self) -> &Path;
    /// Write all of `buf` at `pos`.
    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()>;
    /// Fill all of `buf` from `pos`; a short file is `UnexpectedEof`.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `fdatasync(2)`: make every write so far durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Current file length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// A read-only map of the whole file as it is now, if this layer can give
    /// one that always shows what `read_at` would. `None` makes the store read
    /// with `read_at` instead.
    fn map(&self) -> io::Result<Option<Bytes>>;
    /// Let the kernel take back the memory this file's cached pages hold:
    /// unmap `map`'s pages from this process and drop the clean pages from
    /// the page cache (dirty ones are only queued for writeback). Reads still
    /// see the same bytes, from disk. `map` must be a map this file gave.
    /// Advisory: a layer without a page cache does nothing.
    fn drop_cache(&self, map: Option<&Bytes>) -> io::Result<()> {
        let _ = map;
        Ok(())
    }
}

/// Directory-level operations.
pub trait FileSystem: Send + Sync + Debug + 'static {
    /// Open an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>>;
    /// Create (or truncate) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileIo>>;
    /// Create `path` with `len` bytes of space by `mode`, fdatasync it, and,
    /// when `preheat`, read it once so its pages are in the page cache.
    fn preallocate(&self, path: &Path, len: u64, mode: Preallocate, preheat: bool) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// fsync the directory, making renames, creations and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// Whether this build carries the test-only fault layers (cargo feature
/// `fault-injection`, or this crate's own tests).
pub const FAULT_INJECTION: bool = cfg!(any(test, feature = "fault-injection"));

/// `fs`, wrapped in an EIO failpoint when `spec` names one (the syntax is
/// [`crate::fault::EioFailpoint::parse`]'s). Only builds with the test-only
/// `fault-injection` feature carry failpoints; any other build refuses a
/// spec, so no failpoint can strike in a release build, and a test that
/// expects one learns it is not there instead of passing without it.
pub fn with_eio_failpoint(fs: Arc<dyn FileSystem>, spec: Option<&str>) -> Result<Arc<dyn FileSystem>, String> {
    let Some(spec) = spec else { return Ok(fs) };
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let point = crate::fault::EioFailpoint::parse(spec)?;
        tracing::warn!(failpoint = spec, "EIO failpoint armed: a test build that fails I/O on purpose");
        Ok(Arc::new(crate::fault::FailpointFs::new(fs, point)))
    }
    #[cfg(not(any(test, feature = "fault-injection")))]
    {
        drop(fs);
        Err(format!(
            "EIO failpoint {spec:?} requested, but this build has no fault injection (test builds only: cargo \
             feature fault-injection of keel-raft-log)"
        ))
    }
}

/// Write `bytes` to `path` atomically and durably: write a temp file,
/// fdatasync it, rename it over `path`, fsync the directory.
pub fn write_file_durably(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = fs.create(&tmp)?;
    // Each step's error names the operation and the file: a failure here is
    // fail-stop for the store, and the operator reads this message.
    file.write_at(0, bytes).map_err(with_path(&tmp, "pwrite"))?;
    file.sync_data().map_err(with_path(&tmp, "fdatasync"))?;
    drop(file);
    fs.rename(&tmp, &dir.join(name))?;
    fs.sync_dir(dir)
}

/// Write `bytes` to `path` through a temp file and rename, without any sync:
/// for files that are rebuilt when found damaged (segment indexes).
pub fn write_file_lazily(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = fs.create(&tmp)?;
    file.write_at(0, bytes)?;
    drop(file);
    fs.rename(&tmp, &dir.join(name))
}

/// Read a whole small file.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path)?;
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::new(ErrorKind::InvalidData, "file too large"))?;
    let mut buf = vec![0u8; len];
    file.read_at(0, &mut buf)?;
    Ok(buf)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    path: PathBuf,
}

impl FileIo for RealFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self) -> io::Result<Option<Bytes>> {
        if self.len()? == 0 {
            return Ok(Some(Bytes::new()));
        }
        // SAFETY: keel never shrinks a mapped file or rewrites payload bytes
        // it handed out (segments are append-only; truncation rolls to a new
        // file and only zeroes the header of the first truncated record), so
        // mapped payloads never change under a reader. Another process
        // could, but the data directory is flock'ed.
        let map = unsafe { memmap2::MmapOptions::new().map(&self.file) }
            .map_err(|e| io::Error::new(e.kind(), format!("mmap {}: {e}", self.path.display())))?;
        Ok(Some(Bytes::from_owner(map)))
    }

    fn drop_cache(&self, map: Option<&Bytes>) -> io::Result<()> {
        let unmapped = match map {
            Some(m) if !m.is_empty() => {
                // SAFETY: `m` is a read-only shared map of this file (from
                // `map`, so it starts on a page boundary). MADV_DONTNEED on a
                // shared file mapping only drops this process's page-table
                // entries: the next access faults the same file bytes back in,
                // so payload slices handed out stay valid and unchanged.
                let rc = unsafe { libc::madvise(m.as_ptr() as *mut libc::c_void, m.len(), libc::MADV_DONTNEED) };
                if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
            }
            _ => Ok(()),
        };
        // SAFETY: a valid open descriptor; the advice changes no file bytes.
        let rc = unsafe {
            libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&self.file), 0, 0, libc::POSIX_FADV_DONTNEED)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        unmapped
    }
}

fn open_options(create: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create {
        options.create(true).truncate(true);
    }
    options
}

fn with_path(path: &Path, verb: &str) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{verb} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // Small chunks, each sent to the device as soon as it is written; the
    // one before it is waited for first: at most two chunks of zeros are
    // ever queued in front of the flusher's fdatasync, and the fill paces
    // itself to the device instead of flooding it.
    const CHUNK: usize = 256 << 10;
    let zeros = vec![0u8; CHUNK];
    let fd = file.as_raw_fd();
    let mut pos = 0u64;
    let mut previous: Option<(u64, u64)> = None;
    while pos < len {
        let n = usize::try_from((len - pos).min(CHUNK as u64)).expect("chunk fits usize");
        file.write_all_at(&zeros[..n], pos)?;
        // SAFETY: plain syscalls on a descriptor we own. Advisory: the
        // fdatasync after the fill is what makes it durable.
        unsafe {
            libc::sync_file_range(fd, pos as libc::off64_t, n as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
            if let Some((at, bytes)) = previous {
                let flags =
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                libc::sync_file_range(fd, at as libc::off64_t, bytes as libc::off64_t, flags);
            }
        }
        previous = Some((pos, n as u64));
        pos += n as u64;
    }
    Ok(())
}

fn fallocate(file: &File, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)?)
}

fn preheat(file: &File, len: u64) -> io::Result<()> {
    // The article's 预热: touch every page once so the first appends find it
    // in the page cache instead of faulting it in under a producer's latency.
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from((len - pos).min(CHUNK as u64)).expect("chunk fits usize");
        file.read_exact_at(&mut buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

impl FileSystem for RealFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let file = open_options(false).open(path).map_err(with_path(path, "open"))?;
        Ok(Arc::new(RealFile { file, path: path.to_path_buf() }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let file = open_options(true).open(path).map_err(with_path(path, "create"))?;
        Ok(Arc::new(RealFile { file, path: path.to_path_buf() }))
    }

    fn preallocate(&self, path: &Path, len: u64, mode: Preallocate, heat: bool) -> io::Result<()> {
        let file = open_options(true).open(path).map_err(with_path(path, "create"))?;
        let zeroed = match mode {
            Preallocate::Zero => zero_fill(&file, len),
            Preallocate::Fallocate => match fallocate(&file, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(path = %path.display(), "fallocate unsupported here; zero-filling");
                    zero_fill(&file, len)
                }
                other => other,
            },
        };
        zeroed.map_err(with_path(path, "preallocate"))?;
        file.sync_data().map_err(with_path(path, "fdatasync"))?;
        if heat {
            preheat(&file, len).map_err(with_path(path, "preheat"))?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to).map_err(with_path(from, "rename"))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map_err(with_path(path, "remove")),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all()).map_err(with_path(dir, "fsync directory"))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(with_path(dir, "list"))? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}
