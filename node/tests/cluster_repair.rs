//! Protocol-aware repair against a real three-node cluster: a follower
//! whose sealed segments were damaged while it was down (a flipped payload
//! byte, a segment file gone) does not truncate its log or refuse to start;
//! before Raft starts it fetches the damaged ranges from a peer, rewrites
//! them, and then serves every acknowledged record. While no peer can
//! supply a range, it waits without starting.

mod common;

use std::time::Duration;

use common::http;
use common::{Cluster, eventually};
use keel_client::proto::TopicConfig;
use keel_client::{Client, Fetch, Record};
use keel_raft_log::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(60);
const TOPIC: &str = "repair";
/// 128 KiB segments: the writes below fill about a dozen.
const SEGMENT_BYTES: &str = "131072";
const BATCHES: u64 = 100;
const PER_BATCH: u64 = 4;
const RECORD_BYTES: usize = 3_000;

fn value(n: u64) -> Vec<u8> {
    let mut v = format!("m{n}-").into_bytes();
    v.resize(RECORD_BYTES, (n % 251) as u8 + 1);
    v
}

fn segment_path(cluster: &Cluster, id: u64, first: u64) -> std::path::PathBuf {
    cluster.dir(id).join(format!("{first:020}.log"))
}

/// Flip one byte in the payload of the first record of a segment.
fn flip_first_payload(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let at = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 7) as u64;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open a segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read a byte");
    b[0] ^= 0x20;
    f.write_all_at(&b, at).expect("write a byte");
}

fn status(cluster: &Cluster, id: u64) -> Value {
    let r = http::get(&cluster.admin(id), "/api/v1/status").unwrap_or_else(|e| panic!("node{id} status: {e}"));
    assert_eq!(r.status, 200, "node{id} status: {r:?}");
    r.json()
}

fn digest(cluster: &Cluster, id: u64, upto: u64) -> Value {
    let path = format!("/api/v1/storage/digest?from=0&upto={upto}");
    let r = http::get(&cluster.admin(id), &path).unwrap_or_else(|e| panic!("node{id} digest: {e}"));
    assert_eq!(r.status, 200, "node{id} digest: {r:?}");
    r.json()
}

/// Every record of the topic as node `id` serves it, values only.
async fn read_all(cluster: &Cluster, id: u64, min_index: u64) -> Vec<Vec<u8>> {
    let client = Client::connect(vec![cluster.grpc(id)]).expect("address");
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..10_000 {
        let fetch = Fetch::new(TOPIC, 0, offset).min_index(min_index).max_wait(Duration::from_secs(20));
        let f = client.fetch(fetch).await.unwrap_or_else(|e| panic!("node{id}: fetch at {offset}: {e}"));
        for r in f.records {
            assert_eq!(r.offset, out.len() as u64, "node{id}: offsets are dense");
            out.push(r.value.to_vec());
        }
        offset = f.next_offset;
        if offset >= f.end_offset {
            return out;
        }
    }
    panic!("node{id}: not read to the end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_with_damaged_sealed_segments_repairs_them_from_a_peer_and_serves_every_record() {
    let cluster = Cluster::start(3, &[("segment.bytes", SEGMENT_BYTES), ("max.message.bytes", "65536")]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes");
    let client = Client::connect(cluster.addrs()).expect("addresses");
    let config = TopicConfig { partitions: 1, retention_ms: -1, retention_bytes: -1, max_message_bytes: 0 };
    client.create_topic(TOPIC, config).await.expect("create the topic");
    let producer = client.producer();
    let mut last_index = 0;
    for b in 0..BATCHES {
        let records = (0..PER_BATCH).map(|i| Record::new(value(b * PER_BATCH + i))).collect();
        let ack = producer.produce(TOPIC, 0, records).await.expect("produce");
        last_index = last_index.max(ack.log_index);
    }
    let want: Vec<Vec<u8>> = (0..BATCHES * PER_BATCH).map(value).collect();
    assert_eq!(read_all(&cluster, follower, last_index).await, want);

    // Damage the follower's sealed segments while it is down: a flipped
    // payload byte in one, another one gone.
    cluster.stop(follower);
    let firsts = cluster.segments(follower);
    assert!(firsts.len() >= 6, "the writes fill several segments: {firsts:?}");
    flip_first_payload(&segment_path(&cluster, follower, firsts[2]));
    std::fs::remove_file(segment_path(&cluster, follower, firsts[4])).expect("remove a segment");

    cluster.restart(follower).await;
    let repairs = status(&cluster, follower)["repairs"].as_array().expect("repairs").clone();
    let ranges: Vec<(u64, u64)> =
        repairs.iter().map(|r| (r["from"].as_u64().unwrap(), r["to"].as_u64().unwrap())).collect();
    assert_eq!(ranges, [(firsts[2], firsts[2]), (firsts[4], firsts[5] - 1)], "{repairs:?}");
    assert!(repairs[0]["reason"].as_str().unwrap().contains("crc32c mismatch"), "{repairs:?}");
    assert!(repairs.iter().all(|r| r["source_node"].as_u64() != Some(follower)), "{repairs:?}");
    let metrics = http::get(&cluster.admin(follower), "/metrics").expect("metrics").text();
    assert!(metrics.contains("keel_log_repaired_ranges_total 2"), "{}", http::excerpt(&metrics, 2000));

    // The repaired log is the leader's, entry for entry, and serves every record.
    eventually(CATCH_UP, "the follower applies the last write", async || {
        status(&cluster, follower)["log"]["applied"].as_u64().is_some_and(|a| a >= last_index)
    })
    .await;
    let digests: Vec<Value> = cluster.ids().map(|id| digest(&cluster, id, last_index)).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ after the repair: {digests:?}");
    assert_eq!(read_all(&cluster, follower, last_index).await, want);

    // Damaged again while no peer is up: it waits and does not start.
    let others: Vec<u64> = cluster.ids().filter(|&id| id != follower).collect();
    cluster.stop(follower);
    for &id in &others {
        cluster.stop(id);
    }
    flip_first_payload(&segment_path(&cluster, follower, firsts[3]));
    let log_before = std::fs::metadata(cluster.log(follower)).map(|m| m.len()).unwrap_or(0);
    cluster.restart_in_background(follower);
    eventually(CATCH_UP, "the follower says it waits for a peer", async || {
        let log = std::fs::read(cluster.log(follower)).unwrap_or_default();
        String::from_utf8_lossy(&log[log_before as usize..]).contains("no peer can supply the damaged range yet")
    })
    .await;
    assert!(http::get(&cluster.admin(follower), "/api/v1/status").is_err(), "it must not serve before the repair");
    assert!(cluster.is_running(follower), "it waits rather than exit");
    for &id in &others {
        cluster.restart(id).await;
    }
    cluster.wait_until_answering(follower, CATCH_UP).await;
    let repairs = status(&cluster, follower)["repairs"].as_array().expect("repairs").clone();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert_eq!(repairs[0]["from"].as_u64(), Some(firsts[3]));
    cluster.wait_for_leader(ELECTION).await;
    assert_eq!(read_all(&cluster, follower, last_index).await, want);
}

/// Issue 16, item 3, the case repair exists for (FAST'18, "protocol-aware
/// recovery"): node C is down while records are acknowledged by A and B
/// alone. Then A loses the header of one of those records in its active
/// segment (a lost sector), and comes back with C while B is still down.
/// Recovery used to read the zero header as a torn tail and cut A's log
/// there: A and C, a majority, then elected a leader without those records
/// and they were gone for good. Now A knows they were committed (its meta
/// file says so, and later records witness them fsynced), waits until a
/// peer that holds them (B) is back, repairs, and then every acknowledged
/// record is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_header_in_the_active_segment_is_repaired_never_cut_even_where_a_majority_lacks_it() {
    use std::os::unix::fs::FileExt;
    let cluster = Cluster::start(3, &[("segment.bytes", "4194304")]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = Client::connect(cluster.addrs()).expect("addresses");
    let config = TopicConfig { partitions: 1, retention_ms: -1, retention_bytes: -1, max_message_bytes: 0 };
    client.create_topic(TOPIC, config).await.expect("create the topic");
    // Phase 1: C stops; A (the leader) and B acknowledge everything after.
    let a = leader;
    let (b, c) = {
        let mut others = cluster.ids().filter(|&id| id != a);
        (others.next().expect("b"), others.next().expect("c"))
    };
    cluster.stop(c);
    let producer = client.producer();
    let mut last_index = 0;
    for n in 0..60u64 {
        let ack = producer.produce(TOPIC, 0, vec![Record::new(value(n))]).await.expect("produce");
        last_index = last_index.max(ack.log_index);
        if n == 30 {
            // The meta file's committed id is written about once a second.
            tokio::time::sleep(Duration::from_millis(1_200)).await;
        }
    }
    let want: Vec<Vec<u8>> = (0..60).map(value).collect();
    cluster.stop(a);
    cluster.stop(b);

    // Phase 2: zero the header of a record A holds committed, in its
    // active segment, with records after it.
    let meta = keel_raft_log::read_meta(&cluster.dir(a)).expect("read meta").expect("a meta file");
    let committed = meta.committed.expect("a committed id").index;
    let firsts = cluster.segments(a);
    let active = *firsts.last().expect("segments");
    let path = segment_path(&cluster, a, active);
    let bytes = std::fs::read(&path).expect("read the active segment");
    let max = keel_raft_log::format::max_payload_in(bytes.len() as u64);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut records = Vec::new();
    while let Ok(h) = keel_raft_log::format::decode_header(&bytes[pos..], max) {
        records.push((h.index, pos));
        pos += h.record_bytes();
    }
    let &(damaged, at) = records
        .iter()
        .rev()
        .find(|&&(i, _)| i + 5 <= committed && i > last_index.saturating_sub(40))
        .unwrap_or_else(|| panic!("no committed record to damage (committed {committed}): {records:?}"));
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open the active segment");
    f.write_all_at(&[0u8; RECORD_HEADER_BYTES], at as u64).expect("zero a record header");
    drop(f);

    // Phase 3: A and C come back, B does not. A must not cut its log and
    // lead a majority that lacks the records: it waits for a peer that
    // holds them.
    let log_before = std::fs::metadata(cluster.log(a)).map(|m| m.len()).unwrap_or(0);
    cluster.restart_in_background(a);
    cluster.restart_in_background(c);
    eventually(CATCH_UP, "A says it waits for a peer", async || {
        let log = std::fs::read(cluster.log(a)).unwrap_or_default();
        String::from_utf8_lossy(&log[log_before as usize..]).contains("no peer can supply the damaged range yet")
    })
    .await;
    let log = std::fs::read(cluster.log(a)).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log_before as usize..]);
    assert!(!log.contains("cut a torn tail"), "A cut committed records as a torn tail: {log}");
    assert!(http::get(&cluster.admin(a), "/api/v1/status").is_err(), "A serves before its repair");

    // Phase 4: B is back: A repairs from it, and every acknowledged record is there.
    cluster.restart(b).await;
    cluster.wait_until_answering(a, CATCH_UP).await;
    let repairs = status(&cluster, a)["repairs"].as_array().expect("repairs").clone();
    assert!(
        repairs.iter().any(|r| r["from"].as_u64() <= Some(damaged) && r["to"].as_u64() >= Some(damaged)),
        "entry {damaged} not repaired: {repairs:?}"
    );
    assert!(repairs.iter().all(|r| r["source_node"].as_u64() == Some(b)), "only B holds them: {repairs:?}");
    cluster.wait_for_leader(ELECTION).await;
    for id in cluster.ids() {
        assert_eq!(read_all(&cluster, id, last_index).await, want, "node{id}");
    }
    eventually(CATCH_UP, "every node applies the last write", async || {
        cluster.ids().all(|id| status(&cluster, id)["log"]["applied"].as_u64().is_some_and(|x| x >= last_index))
    })
    .await;
    let digests: Vec<Value> = cluster.ids().map(|id| digest(&cluster, id, last_index)).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ after the repair: {digests:?}");
}
