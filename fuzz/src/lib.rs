//! What keel's fuzz targets share: a tokio runtime, scratch directories on
//! tmpfs, and the *archive*, the byte format in which a target receives a
//! whole log directory (so seeds can be real stores and libFuzzer mutates
//! their files).
//!
//! # Archive
//!
//! ```text
//! byte 0       flags: bit 0 = repair checksums before writing (below)
//! then files, back to back, until the input ends:
//!   u8         kind: 0 meta, 1 segment (.log), 2 position index (.idx),
//!              3 time index (.tix); others skip the entry
//!   u64 LE     first index (names .log/.idx/.tix files)
//!   u16 LE     length n (cut short by the end of the input)
//!   n bytes    the file
//! ```
//!
//! With the checksum bit set, every crc32c the target can recompute is made
//! right again (segment header, each record it can walk to, index headers,
//! meta): a mutated length, index, term or timestamp then reaches the
//! checks behind the checksum instead of stopping at it.

use std::path::Path;
use std::sync::OnceLock;

use keel_raft_log::format;

/// One multi-threaded runtime for the whole process (the store's recovery
/// runs on its blocking pool).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
    })
}

/// A fresh directory on tmpfs where there is one: fsync is then nearly
/// free, and the targets fsync on every open.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("keel-fuzz-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::Builder::new().prefix("keel-fuzz-").tempdir().expect("a temp dir")
}

pub const KIND_META: u8 = 0;
pub const KIND_SEGMENT: u8 = 1;
pub const KIND_INDEX: u8 = 2;
pub const KIND_TIME_INDEX: u8 = 3;

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub kind: u8,
    pub first: u64,
    pub bytes: Vec<u8>,
}

impl ArchivedFile {
    pub fn name(&self) -> Option<String> {
        match self.kind {
            KIND_META => Some("meta".to_string()),
            KIND_SEGMENT => Some(format::segment_file_name(self.first)),
            KIND_INDEX => Some(format::index_file_name(self.first)),
            KIND_TIME_INDEX => Some(format::time_index_file_name(self.first)),
            _ => None,
        }
    }
}

/// Parse an archive into its flags and files (never fails: a short tail
/// makes a short file).
pub fn parse_archive(data: &[u8]) -> (u8, Vec<ArchivedFile>) {
    let Some((&flags, mut rest)) = data.split_first() else { return (0, Vec::new()) };
    let mut files = Vec::new();
    while rest.len() >= 11 {
        let kind = rest[0];
        let first = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let n = usize::from(u16::from_le_bytes([rest[9], rest[10]]));
        let end = (11 + n).min(rest.len());
        files.push(ArchivedFile { kind, first, bytes: rest[11..end].to_vec() });
        rest = &rest[end..];
    }
    (flags, files)
}

pub fn write_archive(flags: u8, files: &[ArchivedFile]) -> Vec<u8> {
    let mut out = vec![flags];
    for f in files {
        out.push(f.kind);
        out.extend_from_slice(&f.first.to_le_bytes());
        let n = u16::try_from(f.bytes.len()).expect("archived files are at most 64 KiB");
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&f.bytes);
    }
    out
}

/// Every file of a log directory (meta, segments, indexes), for seeds.
pub fn archive_dir(dir: &Path) -> Vec<ArchivedFile> {
    let mut files = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).expect("read a file");
        let (kind, first) = match format::parse_file_name(&name) {
            Some((first, "log")) => (KIND_SEGMENT, first),
            Some((first, "idx")) => (KIND_INDEX, first),
            Some((first, "tix")) => (KIND_TIME_INDEX, first),
            _ if name == "meta" => (KIND_META, 0),
            _ => continue,
        };
        files.push(ArchivedFile { kind, first, bytes });
    }
    files
}

/// Write the files into `dir`. The last file of a name wins.
pub fn unpack(files: &[ArchivedFile], dir: &Path) {
    for f in files {
        if let Some(name) = f.name() {
            std::fs::write(dir.join(name), &f.bytes).expect("write a file into the scratch directory");
        }
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Make a segment's header checksum and the checksum of every record that
/// can be walked to from it (by payload lengths) right again.
pub fn fix_segment_checksums(seg: &mut [u8]) {
    if seg.len() < format::SEGMENT_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&seg[..28]);
    put_u32(seg, 28, crc);
    let salt = u32_at(seg, 24);
    let mut pos = format::SEGMENT_HEADER_BYTES;
    while pos + format::RECORD_HEADER_BYTES <= seg.len() && &seg[pos..pos + 2] == format::RECORD_MAGIC {
        let len = u32_at(seg, pos + 4) as usize;
        let Some(end) = (pos + format::RECORD_HEADER_BYTES).checked_add(len).filter(|&e| e <= seg.len()) else {
            break;
        };
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &seg[pos..pos + 48]),
            &seg[pos + format::RECORD_HEADER_BYTES..end],
        );
        put_u32(seg, pos + 48, crc);
        pos = end;
    }
}

/// An `.idx`/`.tix` file's checksum (over bytes 0..24 and the entries).
pub fn fix_index_checksum(b: &mut [u8]) {
    if b.len() < format::INDEX_HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..24]), &b[format::INDEX_HEADER_BYTES..]);
    put_u32(b, 24, crc);
}

pub fn fix_meta_checksum(b: &mut [u8]) {
    // Version 2 (the crc at 112) and version 1 files (at 88).
    for (len, at) in [(format::META_BYTES, format::META_BYTES - 4), (format::META_V1_BYTES, format::META_V1_BYTES - 4)] {
        if b.len() == len {
            let crc = crc32c::crc32c(&b[..at]);
            put_u32(b, at, crc);
        }
    }
}

pub fn fix_checksums(f: &mut ArchivedFile) {
    match f.kind {
        KIND_META => fix_meta_checksum(&mut f.bytes),
        KIND_SEGMENT => fix_segment_checksums(&mut f.bytes),
        KIND_INDEX | KIND_TIME_INDEX => fix_index_checksum(&mut f.bytes),
        _ => {}
    }
}

/// A record for a store built by a target or a seed: deterministic fields,
/// so reads can be checked against what was written.
pub fn new_record(term: u64, index: u64, payload_len: usize) -> keel_raft_log::NewRecord {
    keel_raft_log::NewRecord {
        meta: keel_raft_log::RecordMeta {
            kind: keel_raft_log::RecordKind::Normal,
            term,
            leader: 1,
            index,
            // Not monotonic on purpose: the time index keeps running maxima.
            timestamp_ms: 1_700_000_000_000 + (index * 7919) % 1000,
        },
        payload: (0..payload_len).map(|k| (index as usize + k) as u8).collect(),
    }
}

/// Append `records` and wait until they are fsynced.
pub async fn append_synced(
    store: &keel_raft_log::Store,
    records: Vec<keel_raft_log::NewRecord>,
) -> keel_raft_log::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.append(records, Box::new(move |r| drop(tx.send(r)))).await?;
    rx.await.map_err(|_| keel_raft_log::Error::Closed)?
}

/// A closed store in `dir` holding `1..=count` (term 1 up to `count / 2`,
/// then term 2), in 4 KiB segments, so all but the last are sealed with
/// their `.idx` and `.tix`.
pub async fn build_store(dir: &Path, count: u64, payload_len: usize) -> keel_raft_log::Result<()> {
    let mut config = keel_raft_log::StoreConfig::new(dir);
    config.segment_bytes = format::MIN_SEGMENT_BYTES;
    let store = keel_raft_log::Store::open(config).await?;
    for i in 1..=count {
        let term = if i <= count / 2 { 1 } else { 2 };
        append_synced(&store, vec![new_record(term, i, payload_len)]).await?;
    }
    store.close().await
}
