//! Writes the committed seed corpora, `seeds/TARGET/`, from keel's own
//! encoders (real records, segments, stores, entries and config files) and,
//! for the targets whose input is `arbitrary`-structured, a few
//! deterministic pseudo-random inputs. Run from `fuzz/`:
//!
//! ```text
//! cargo run --example make_seeds
//! ```
//!
//! Deterministic except for segment salts (random per segment by design),
//! so rerunning changes the segment seeds' bytes, not what they cover.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_fuzz::{ArchivedFile, KIND_INDEX, KIND_TIME_INDEX, archive_dir, build_store, runtime, write_archive};
use keel_node::server::entry::{self, Command, GroupEncoder, NewRecord};
use keel_node::server::types::{Entry, Request};
use keel_raft_log::format::{self, LogPos, Meta, MetaVote, RecordKind, RecordMeta};
use keel_raft_log::{LeaderId, LogId, Membership, Store, StoreConfig, entry_to_record};
use openraft::{BasicNode, EntryPayload};

fn out(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// splitmix64, for the pseudo-random seeds.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

fn random_seeds(target: &str, count: u64) {
    let dir = out(target);
    for k in 0..count {
        write(&dir, &format!("random-{k:02}"), &random_bytes(k + 1, 16 + (k as usize * 53) % 700));
    }
}

fn rec(key: &str, value: &str, tag: &str) -> NewRecord {
    NewRecord {
        timestamp_ms: 1_700_000_000_123,
        key: Bytes::copy_from_slice(key.as_bytes()),
        tag: tag.to_string(),
        headers: vec![("trace".to_string(), Bytes::from_static(b"abc"))],
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn produce_group() -> Vec<u8> {
    let mut g = GroupEncoder::new();
    let mut b = Vec::new();
    entry::encode_batch(&mut b, "orders", 7, 1, 99, 5, &[rec("k1", "v1", "A"), rec("", "v2", "")]);
    g.push_encoded(&b);
    b.clear();
    entry::encode_batch(&mut b, "audit", 9, 0, 0, 0, &[rec("k3", "v3", "TagB")]);
    g.push_encoded(&b);
    g.finish()
}

fn commands() -> Vec<Command> {
    vec![
        Command::CreateTopic {
            name: "orders".into(),
            partitions: 3,
            retention_ms: -1,
            retention_bytes: 1 << 30,
            max_message_bytes: 1 << 20,
        },
        Command::DeleteTopic { name: "orders".into() },
        Command::CommitOffset { group: "g".into(), topic: "orders".into(), partition: 2, offset: 10 },
        Command::Trim { topic: "orders".into(), incarnation: 4, partition: 0, start_offset: 100 },
        Command::ExpireProducers { idle_before_ms: 1_700_000_000_000 },
    ]
}

fn record_seeds() {
    let dir = out("record");
    let salt = 0x5EED_0001u32;
    for (k, (kind, payload)) in [
        (RecordKind::Normal, produce_group()),
        (RecordKind::Normal, Vec::new()),
        (RecordKind::Blank, Vec::new()),
        (RecordKind::Normal, vec![0xAB; 300]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = vec![0u8];
        b.extend_from_slice(&salt.to_le_bytes());
        let meta = RecordMeta { kind, term: 3, leader: 2, index: 42 + k as u64, timestamp_ms: 1_700_000_000_000 };
        format::encode_record(&mut b, &meta, 40, salt, &payload);
        write(&dir, &format!("0-record-{k}"), &b);
    }
    let mut torn = std::fs::read(dir.join("0-record-3")).expect("written above");
    let n = torn.len();
    torn[n - 100..].fill(0);
    write(&dir, "0-record-torn", &torn);
    write(&dir, "1-segment-header", &[&[1u8][..], &format::encode_segment_header(17, 2, salt)].concat());
    write(&dir, "1-segment-header-empty", &[&[1u8][..], &[0u8; format::SEGMENT_HEADER_BYTES]].concat());
    let metas = [
        Meta::default(),
        Meta {
            vote: Some(MetaVote { term: 5, voted_for: Some(3), committed: true }),
            committed: Some(LogPos::new(5, 3, 100)),
            purged: Some(LogPos::new(2, 1, 40)),
            generation: 1,
        },
    ];
    for (k, m) in metas.iter().enumerate() {
        write(&dir, &format!("2-meta-{k}"), &[&[2u8][..], &m.encode()].concat());
    }
    write(&dir, "3-produce-group", &[&[3u8][..], &produce_group()].concat());
    for (k, c) in commands().iter().enumerate() {
        write(&dir, &format!("3-command-{k}"), &[&[3u8][..], &entry::encode_command(c)].concat());
    }
    let log_id = LogId::new(LeaderId { term: 3, node_id: 1 }, 9);
    let nodes = [(1u64, BasicNode { addr: "127.0.0.1:9091".into() }), (2, BasicNode { addr: "node-2:9091".into() })];
    let membership =
        Membership::new(vec![[1u64, 2].into()], nodes.into_iter().collect::<std::collections::BTreeMap<_, _>>())
            .expect("a valid membership");
    let entries: Vec<Entry> = vec![
        Entry { log_id, payload: EntryPayload::Membership(membership) },
        Entry { log_id, payload: EntryPayload::Normal(Request { timestamp_ms: 5, payload: produce_group().into() }) },
    ];
    for (k, e) in entries.iter().enumerate() {
        let r = entry_to_record(e).expect("encode an entry");
        write(&dir, &format!("4-raft-entry-{k}"), &[&[4u8][..], &r.payload].concat());
    }
}

/// Store directories as archives: healthy, purged, torn, damaged.
fn segment_recovery_seeds() {
    let dir = out("segment_recovery");
    for (name, count, payload) in [("one-segment", 5, 100), ("three-segments", 30, 200)] {
        let store_dir = keel_fuzz::scratch_dir();
        runtime().block_on(build_store(store_dir.path(), count, payload)).expect("build a store");
        let files = archive_dir(store_dir.path());
        write(&dir, name, &write_archive(0, &files));
        write(&dir, &format!("{name}-fix-checksums"), &write_archive(1, &files));
        // Without its index files: recovery rebuilds them.
        let bare: Vec<ArchivedFile> =
            files.iter().filter(|f| f.kind != KIND_INDEX && f.kind != KIND_TIME_INDEX).cloned().collect();
        write(&dir, &format!("{name}-no-indexes"), &write_archive(0, &bare));
        // A flipped payload byte in the first segment (found by repair).
        let mut flipped = files.clone();
        if let Some(seg) = flipped.iter_mut().find(|f| f.kind == keel_fuzz::KIND_SEGMENT) {
            let at = format::SEGMENT_HEADER_BYTES + format::RECORD_HEADER_BYTES + 3;
            seg.bytes[at] ^= 0x41;
        }
        write(&dir, &format!("{name}-flipped"), &write_archive(0, &flipped));
        // The last record torn.
        let mut torn = files.clone();
        if let Some(seg) = torn.iter_mut().rev().find(|f| f.kind == keel_fuzz::KIND_SEGMENT) {
            let end = seg.bytes.iter().rposition(|&b| b != 0).unwrap_or(0);
            let from = end.saturating_sub(40);
            seg.bytes[from..=end].fill(0);
        }
        write(&dir, &format!("{name}-torn-tail"), &write_archive(0, &torn));
    }
    // A store purged up to 20 (meta), and one after a range install.
    let store_dir = keel_fuzz::scratch_dir();
    runtime().block_on(async {
        build_store(store_dir.path(), 30, 200).await.expect("build a store");
        let mut c = StoreConfig::new(store_dir.path());
        c.segment_bytes = format::MIN_SEGMENT_BYTES;
        let store = Store::open(c).await.expect("reopen");
        store.purge(LogPos::new(1, 1, 20)).await.expect("purge");
        store.close().await.expect("close");
    });
    write(&dir, "purged", &write_archive(0, &archive_dir(store_dir.path())));
}

/// The template store's index files (the target builds the same store).
fn index_seeds() {
    let dir = out("index");
    let store_dir = keel_fuzz::scratch_dir();
    runtime().block_on(build_store(store_dir.path(), 60, 200)).expect("build a store");
    let files = archive_dir(store_dir.path());
    let sealed: Vec<u64> = files.iter().filter(|f| f.kind == KIND_INDEX).map(|f| f.first).collect();
    for (k, first) in sealed.iter().enumerate().take(3) {
        let get = |kind| files.iter().find(|f| f.kind == kind && f.first == *first).expect("index file").bytes.clone();
        let (idx, tix) = (get(KIND_INDEX), get(KIND_TIME_INDEX));
        let split = u16::try_from(idx.len()).expect("small index").to_le_bytes();
        let raw = [&[0u8, k as u8][..], &split, &idx, &tix].concat();
        write(&dir, &format!("raw-{k}"), &raw);
        // Bodies only, checksummed by the target (flags 3).
        let (ib, tb) = (&idx[format::INDEX_HEADER_BYTES..], &tix[format::INDEX_HEADER_BYTES..]);
        let split = u16::try_from(ib.len()).expect("small index").to_le_bytes();
        write(&dir, &format!("bodies-{k}"), &[&[3u8, k as u8][..], &split, ib, tb].concat());
        write(&dir, &format!("dropped-{k}"), &[12u8, k as u8, 0, 0]);
    }
}

fn config_seeds() {
    let dir = out("config");
    let files = [
        "node.id=1\ngrpc.listen=127.0.0.1:9091\nadmin.listen=127.0.0.1:9191\nstore.path.commitlog=/var/lib/keel\n",
        "# three nodes\nnode.id: 2\npeers = 1@node-1:9091, 2@node-2:9091 ,3@[::1]:9093\ngrpc.advertised=node-2:9091\ncluster.bootstrap=true\n",
        "flush.disk.type=BATCH_FLUSH\nflush.batch.size=64\nflush.interval.ms=5\nsegment.bytes=67108864\nsegment.preallocate=fallocate\nsegment.preheat=true\n",
        "flush.disk.type=ASYNC_FLUSH\nflush.commitlog.interval=1000\nflush.commitlog.timeout=3000\nsegment.cached.sealed=-1\n",
        "retention.ms=-1\nretention.bytes=1073741824\nmax.message.bytes=1048576\nproducer.id.expiry.ms=86400000\n",
        "admin.token=s3cret\nstore.reserve.bytes=0\n! a bang comment\n\n",
        "grpc.listen=[::1]:9091\nadmin.listen=[::1]:9191\n",
        "\u{feff}node.id=3\ngrpc.listen=0.0.0.0:9091\ngrpc.advertised=10.0.0.3:9091\npeers=3@10.0.0.3:9091\n",
    ];
    for (k, text) in files.iter().enumerate() {
        write(&dir, &format!("props-{k}"), text.as_bytes());
    }
}

fn main() {
    record_seeds();
    segment_recovery_seeds();
    index_seeds();
    config_seeds();
    random_seeds("consume_queue", 16);
    random_seeds("grpc_requests", 16);
    println!("seeds written under {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").display());
}
