//! Faults against a real three-node cluster (`keel node` processes): a
//! leader killed mid-stream, followers that were down (killed or stopped)
//! and catch up by log or by snapshot, consumer-group offsets across a
//! leader change, and an idempotent retry after OUTCOME_UNKNOWN.
//!
//! Every wait is bounded in time and every loop in count; no assertion is
//! about speed. Elections get 30 s, catching up 60 s: CI machines have two
//! noisy cores and run these clusters side by side.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, eventually};
use keel_client::proto::TopicConfig;
use keel_client::{Client, ClientOptions, Error, ErrorCode, Fetch, FetchedRecord, Producer, Record};
use keel_proto::client::ProduceRequest;

const ELECTION: Duration = Duration::from_secs(30);
/// How long a node that was down gets to apply what the leader applied.
const CATCH_UP: Duration = Duration::from_secs(60);
/// A fetch's long-poll, which also bounds its wait for `min_index`.
const FETCH_WAIT: Duration = Duration::from_secs(20);
/// Fetches to read one partition; each returns at least one record.
const MAX_FETCHES: usize = 10_000;

// ---- helpers ----

/// A client for every node: writes follow the leader.
fn cluster_client(cluster: &Cluster) -> Client {
    Client::connect(cluster.addrs()).expect("the harness's addresses are valid")
}

/// A client that knows node `id` only, so that node answers its reads.
fn node_client(cluster: &Cluster, id: u64) -> Client {
    Client::connect(vec![cluster.grpc(id)]).expect("the harness's addresses are valid")
}

fn topic_config(partitions: u32, retention_bytes: i64) -> TopicConfig {
    // retention.ms -1: records stamped now must never age out mid-test.
    TopicConfig { partitions, retention_ms: -1, retention_bytes, max_message_bytes: 0 }
}

async fn applied_index(cluster: &Cluster, id: u64) -> u64 {
    cluster.cluster_info(id).await.unwrap_or_else(|e| panic!("node{id} ClusterInfo: {e}")).applied_index
}

/// Waits until node `id` has applied log index `index`.
async fn wait_applied(cluster: &Cluster, id: u64, index: u64) {
    eventually(CATCH_UP, &format!("node{id} applies log index {index}"), async || {
        cluster.cluster_info(id).await.is_ok_and(|info| info.applied_index >= index)
    })
    .await;
}

/// Every record of `topic`/`partition` from `from` to the end, as node `id`
/// serves it once it has applied `min_index`. Offsets are checked dense.
async fn read_partition(
    cluster: &Cluster,
    id: u64,
    topic: &str,
    partition: u32,
    from: u64,
    min_index: u64,
) -> Vec<FetchedRecord> {
    let client = node_client(cluster, id);
    let mut records: Vec<FetchedRecord> = Vec::new();
    let mut offset = from;
    let mut end = None;
    for _ in 0..MAX_FETCHES {
        let fetch = Fetch::new(topic, partition, offset).min_index(min_index).max_wait(FETCH_WAIT);
        let fetched = client
            .fetch(fetch)
            .await
            .unwrap_or_else(|e| panic!("node{id}: fetch {topic}/{partition} at offset {offset}: {e}"));
        // Writes have stopped when a test reads, so the first answer's end is the end.
        let end = *end.get_or_insert(fetched.end_offset);
        for record in fetched.records {
            let expected = from + records.len() as u64;
            assert_eq!(record.offset, expected, "node{id}: {topic}/{partition} offsets are not dense");
            records.push(record);
        }
        assert!(fetched.next_offset >= offset, "node{id}: a fetch went backwards");
        offset = fetched.next_offset;
        if offset >= end {
            return records;
        }
    }
    panic!("node{id}: {topic}/{partition} not read to its end in {MAX_FETCHES} fetches");
}

/// Deterministic, position-dependent bytes, so a byte-for-byte comparison
/// catches a record served from the wrong place.
fn payload(partition: u32, n: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("p{partition}-m{n}-").into_bytes();
    let mut x = ((u64::from(partition) << 32) | n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    bytes
}

/// Makes node `wanted` the leader. There is no transfer RPC, so: pause the
/// third node, commit one write through the leader and `wanted` (now only
/// they hold it, so the third cannot win `wanted`'s vote), kill the leader
/// and resume the third. Only `wanted` can then be elected. Repeated a
/// bounded number of times in case an attempt is disturbed.
async fn make_leader(cluster: &Cluster, client: &Client, wanted: u64, topic: &str) {
    const ATTEMPTS: usize = 4;
    for _ in 0..ATTEMPTS {
        let leader = cluster.wait_for_leader(ELECTION).await;
        if leader == wanted {
            return;
        }
        let third = cluster.ids().find(|&id| id != leader && id != wanted).expect("three nodes");
        wait_applied(cluster, wanted, applied_index(cluster, leader).await).await;
        cluster.pause(third);
        // A commit is a Raft entry that neither adds records nor pins the log.
        client.commit_offset("leader-nudge", topic, 0, 0).await.expect("a commit with a quorum of two");
        cluster.kill(leader);
        cluster.resume(third);
        let elected = cluster.wait_for_leader(ELECTION).await;
        cluster.restart(leader).await;
        if elected == wanted && cluster.wait_for_leader(ELECTION).await == wanted {
            return;
        }
    }
    panic!("node{wanted} did not become leader in {ATTEMPTS} attempts");
}

// ---- 1. a leader killed mid-stream ----

const STREAM_TOPIC: &str = "stream";
const STREAM_PARTITIONS: u32 = 2;
const PRODUCERS: u32 = 2;
const MESSAGES_PER_PRODUCER: u64 = 150;
/// Bounds the whole stream (each produce is bounded by the client's 30 s).
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

struct Acked {
    partition: u32,
    offset: u64,
    payload: String,
    log_index: u64,
}

/// What one producer of the stream saw.
#[derive(Default)]
struct StreamLog {
    acked: Vec<Acked>,
    /// Payloads whose produce ended OutcomeUnknown: stored at most once.
    unknown: Vec<String>,
    /// Payloads whose produce ended Unavailable (never stored), with the error.
    unavailable: Vec<(String, String)>,
    /// Anything else: a node refused a valid produce.
    refused: Vec<String>,
    duplicate_acks: u32,
}

/// Sends `p{index}-{seq}` for seq 0..MESSAGES_PER_PRODUCER in batches of
/// 1 to 3 records, alternating partitions, one request at a time.
async fn stream(producer: Producer, index: u32, acked_records: Arc<AtomicU64>) -> StreamLog {
    let mut log = StreamLog::default();
    let mut seq = 0;
    let mut batch = 0u64;
    while seq < MESSAGES_PER_PRODUCER {
        let count = (1 + batch % 3).min(MESSAGES_PER_PRODUCER - seq);
        let partition = (batch % u64::from(STREAM_PARTITIONS)) as u32;
        let payloads: Vec<String> = (seq..seq + count).map(|s| format!("p{index}-{s}")).collect();
        let records = payloads.iter().map(|p| Record::new(p.clone())).collect();
        match producer.produce(STREAM_TOPIC, partition, records).await {
            Ok(ack) => {
                assert_eq!(u64::from(ack.count), count, "producer {index}: ack count of batch {batch}");
                assert_eq!(ack.partition, partition);
                log.duplicate_acks += u32::from(ack.duplicate);
                for (i, payload) in payloads.into_iter().enumerate() {
                    let offset = ack.base_offset + i as u64;
                    log.acked.push(Acked { partition, offset, payload, log_index: ack.log_index });
                }
                acked_records.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) if e.is_outcome_unknown() => log.unknown.extend(payloads),
            Err(e @ Error::Unavailable { .. }) => {
                log.unavailable.extend(payloads.into_iter().map(|p| (p, e.to_string())));
            }
            Err(e) => log.refused.push(format!("batch {batch} ({payloads:?}): {e}")),
        }
        seq += count;
        batch += 1;
    }
    log
}

fn parse_stream_payload(payload: &str) -> (u32, u64) {
    let parse = || {
        let (producer, seq) = payload.strip_prefix('p')?.split_once('-')?;
        Some((producer.parse().ok()?, seq.parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("{payload:?} is not a payload any producer sends"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_mid_stream_loses_no_acknowledged_record_and_stores_none_twice() {
    // Phase 1: a fresh cluster and a topic of two partitions.
    let cluster = Cluster::start(3, &[]).await;
    let first_leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic(STREAM_TOPIC, topic_config(STREAM_PARTITIONS, -1)).await.expect("create the topic");

    // Phase 2: producers stream unique payloads in the background.
    let acked_records = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> =
        (0..PRODUCERS).map(|index| tokio::spawn(stream(client.producer(), index, acked_records.clone()))).collect();

    // Phase 3: once a third of the stream is acknowledged, SIGKILL the leader.
    let total = u64::from(PRODUCERS) * MESSAGES_PER_PRODUCER;
    eventually(STREAM_TIMEOUT, "a third of the stream is acknowledged", async || {
        acked_records.load(Ordering::Relaxed) >= total / 3
    })
    .await;
    let acked_before_kill = acked_records.load(Ordering::Relaxed);
    cluster.kill(first_leader);

    // Phase 4: the producers carry on through the client's retries to the
    // end of the stream, and another node leads.
    let deadline = tokio::time::Instant::now() + STREAM_TIMEOUT;
    let mut logs = Vec::new();
    for task in tasks {
        let log = tokio::time::timeout_at(deadline, task).await.expect("the producers finish in bounded time");
        logs.push(log.expect("a producer task does not panic"));
    }
    let acked_after_kill = acked_records.load(Ordering::Relaxed) - acked_before_kill;
    assert!(acked_after_kill > 0, "nothing was acknowledged after the leader was killed");
    let refused: Vec<&String> = logs.iter().flat_map(|l| &l.refused).collect();
    assert!(refused.is_empty(), "valid produces were refused during the failover: {refused:#?}");
    let second_leader = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(second_leader, first_leader, "a killed node cannot still lead");
    let unknown: HashSet<&str> = logs.iter().flat_map(|l| &l.unknown).map(String::as_str).collect();
    let acked: Vec<&Acked> = logs.iter().flat_map(|l| &l.acked).collect();
    eprintln!(
        "stream: {} acknowledged ({acked_before_kill} before the kill), {} duplicate acks, {} unknown, {} unavailable",
        acked.len(),
        logs.iter().map(|l| l.duplicate_acks).sum::<u32>(),
        unknown.len(),
        logs.iter().map(|l| l.unavailable.len()).sum::<usize>(),
    );

    // Phase 5: the killed node restarts and rejoins.
    cluster.restart(first_leader).await;
    let leader = cluster.leader().await;
    let last_ack = acked.iter().map(|a| a.log_index).max().expect("records were acknowledged");
    let min_index = applied_index(&cluster, leader).await.max(last_ack);

    // Phase 6: on every node, every acknowledged record sits at its
    // acknowledged offset, no payload is stored twice, nothing is stored that
    // was not sent (or was refused for certain), each producer's records
    // keep their order, and all nodes hold the same partitions.
    let sent: HashSet<&str> = acked.iter().map(|a| a.payload.as_str()).chain(unknown.iter().copied()).collect();
    let mut first_copy: Option<Vec<Vec<(u64, Bytes)>>> = None;
    for id in cluster.ids() {
        let mut at: HashMap<String, (u32, u64)> = HashMap::new();
        let mut contents = Vec::new();
        for partition in 0..STREAM_PARTITIONS {
            let records = read_partition(&cluster, id, STREAM_TOPIC, partition, 0, min_index).await;
            let mut last_seq: HashMap<u32, u64> = HashMap::new();
            for r in &records {
                let text = String::from_utf8(r.value.to_vec()).expect("payloads are UTF-8");
                assert!(sent.contains(text.as_str()), "node{id}: {text:?} at {partition}/{} was never sent", r.offset);
                let (producer, seq) = parse_stream_payload(&text);
                if let Some(previous) = last_seq.insert(producer, seq) {
                    assert!(
                        previous < seq,
                        "node{id}: producer {producer}'s {seq} follows its {previous} on {partition}"
                    );
                }
                if let Some(first) = at.insert(text.clone(), (partition, r.offset)) {
                    panic!("node{id}: {text:?} is stored twice: at {first:?} and at ({partition}, {})", r.offset);
                }
            }
            contents.push(records.into_iter().map(|r| (r.offset, r.value)).collect::<Vec<_>>());
        }
        for a in &acked {
            assert_eq!(
                at.get(&a.payload),
                Some(&(a.partition, a.offset)),
                "node{id}: acknowledged {:?} is not at its acknowledged (partition, offset)",
                a.payload
            );
        }
        match &first_copy {
            None => first_copy = Some(contents),
            Some(first) => assert!(*first == contents, "node{id}'s partitions differ from node1's"),
        }
    }
}

// ---- 2. a follower catches up after a kill and after a clean stop ----

const CATCHUP_TOPIC: &str = "catchup";

/// Acknowledged records of a fresh topic: per partition, in offset order.
struct Written {
    records: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    last_log_index: u64,
}

impl Written {
    fn new(partitions: u32) -> Self {
        Self { records: (0..partitions).map(|_| Vec::new()).collect(), last_log_index: 0 }
    }

    /// Produces `batches` batches of two keyed records, partitions in turn;
    /// each ack must extend its partition exactly (nothing lost, nothing twice).
    async fn write(&mut self, producer: &Producer, topic: &str, batches: u64) {
        let partitions = self.records.len() as u32;
        for b in 0..batches {
            let partition = (b % u64::from(partitions)) as u32;
            let stored = &mut self.records[partition as usize];
            let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..2)
                .map(|i| {
                    let n = stored.len() as u64 + i;
                    (format!("key-{n}").into_bytes(), payload(partition, n, 200))
                })
                .collect();
            let records = batch.iter().map(|(k, v)| Record::new(v.clone()).key(k.clone())).collect();
            let ack = producer.produce(topic, partition, records).await.expect("produce with a quorum up");
            assert_eq!(ack.base_offset, stored.len() as u64, "{topic}/{partition}: offsets skip or repeat");
            assert_eq!(ack.count, 2);
            stored.extend(batch);
            self.last_log_index = self.last_log_index.max(ack.log_index);
        }
    }

    /// Node `id` serves exactly these records, byte for byte.
    async fn check(&self, cluster: &Cluster, id: u64, topic: &str) {
        for (partition, expected) in self.records.iter().enumerate() {
            let partition = partition as u32;
            let got = read_partition(cluster, id, topic, partition, 0, self.last_log_index).await;
            assert_eq!(got.len(), expected.len(), "node{id}: record count of {topic}/{partition}");
            for (r, (key, value)) in got.iter().zip(expected) {
                assert_eq!(&r.key[..], &key[..], "node{id}: key at {topic}/{partition}/{}", r.offset);
                assert!(r.value[..] == value[..], "node{id}: value at {topic}/{partition}/{} differs", r.offset);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_catches_up_after_a_kill_and_after_a_clean_stop() {
    // Phase 1: a cluster with data every node holds.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes");
    let client = cluster_client(&cluster);
    client.create_topic(CATCHUP_TOPIC, topic_config(2, -1)).await.expect("create the topic");
    let producer = client.producer();
    let mut written = Written::new(2);
    written.write(&producer, CATCHUP_TOPIC, 10).await;

    // Phase 2: with a follower SIGKILLed, the other two keep taking writes.
    cluster.kill(follower);
    written.write(&producer, CATCHUP_TOPIC, 40).await;

    // Phase 3: restarted, the follower serves everything, as the leader does.
    cluster.restart(follower).await;
    written.check(&cluster, follower, CATCHUP_TOPIC).await;
    written.check(&cluster, cluster.leader().await, CATCHUP_TOPIC).await;

    // Phase 4: the same after a clean stop (SIGTERM, exit 0) and restart.
    cluster.stop(follower);
    written.write(&producer, CATCHUP_TOPIC, 40).await;
    cluster.restart(follower).await;
    written.check(&cluster, follower, CATCHUP_TOPIC).await;

    // Phase 5: back in the cluster, it follows new writes live; all nodes agree.
    written.write(&producer, CATCHUP_TOPIC, 10).await;
    for id in cluster.ids() {
        written.check(&cluster, id, CATCHUP_TOPIC).await;
    }
}

// ---- 3. a follower behind the leader's deleted log catches up by snapshot ----

const RETAINED_TOPIC: &str = "retained";
const RETAINED_PARTITIONS: u32 = 2;
/// Per partition: about 13 of the 3 KB records below.
const RETENTION_BYTES: i64 = 40_000;
const RECORD_BYTES: usize = 3_000;
const RECORDS_PER_BATCH: u64 = 4;
/// About 1.2 MB in all: nine or so 128 KiB segments.
const RETAINED_BATCHES: u64 = 100;

/// Acknowledged (key, value) by (partition, offset).
type Acks = BTreeMap<(u32, u64), (Vec<u8>, Vec<u8>)>;

async fn write_retained(producer: &Producer, acks: &mut Acks, batches: std::ops::Range<u64>) -> u64 {
    let mut last_log_index = 0;
    for b in batches {
        let partition = (b % u64::from(RETAINED_PARTITIONS)) as u32;
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..RECORDS_PER_BATCH)
            .map(|i| {
                let n = b * RECORDS_PER_BATCH + i;
                (format!("k{n}").into_bytes(), payload(partition, n, RECORD_BYTES))
            })
            .collect();
        let records = batch.iter().map(|(k, v)| Record::new(v.clone()).key(k.clone())).collect();
        let ack = producer.produce(RETAINED_TOPIC, partition, records).await.expect("produce with a quorum up");
        assert_eq!(u64::from(ack.count), RECORDS_PER_BATCH);
        for (i, record) in batch.into_iter().enumerate() {
            let previous = acks.insert((partition, ack.base_offset + i as u64), record);
            assert!(previous.is_none(), "two acks for {partition}/{}", ack.base_offset + i as u64);
        }
        last_log_index = last_log_index.max(ack.log_index);
    }
    last_log_index
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_behind_deleted_segments_catches_up_by_snapshot_and_serves_all_it_retains() {
    // Phase 1: small segments and one topic (the log is shared: another
    // topic's records would keep segments alive) retaining ~40 KB per partition.
    let cluster = Cluster::start(3, &[("segment.bytes", "131072"), ("max.message.bytes", "65536")]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes");
    let client = cluster_client(&cluster);
    client
        .create_topic(RETAINED_TOPIC, topic_config(RETAINED_PARTITIONS, RETENTION_BYTES))
        .await
        .expect("create the topic");
    let producer = client.producer();
    let mut acks = Acks::new();
    write_retained(&producer, &mut acks, 0..4).await;

    // Phase 2: a follower stops cleanly; it holds at most what the leader
    // holds now.
    cluster.stop(follower);
    let follower_log_end = cluster.cluster_info(leader).await.expect("the leader answers").last_log_index;

    // Phase 3: the leader writes many segments' worth.
    write_retained(&producer, &mut acks, 4..RETAINED_BATCHES).await;

    // Phase 4: retention trims both partitions and deletes the segments
    // holding what the follower lacks, so only a snapshot can bring it up.
    eventually(CATCH_UP, "retention trims every partition", async || {
        client.describe_topic(RETAINED_TOPIC).await.is_ok_and(|t| t.partition_info.iter().all(|p| p.start_offset > 0))
    })
    .await;
    eventually(CATCH_UP, "the leader deletes the segments the follower needs", async || {
        cluster.segments(leader).first().is_some_and(|&first| first > follower_log_end + 1)
    })
    .await;
    let leader_applied = applied_index(&cluster, leader).await;

    // Phase 5: restarted, the follower catches up to the leader's applied index.
    cluster.restart(follower).await;
    wait_applied(&cluster, follower, leader_applied).await;

    // Phase 6: the follower becomes the leader.
    make_leader(&cluster, &client, follower, RETAINED_TOPIC).await;

    // Phase 7: it serves every retained record, byte for byte as acknowledged,
    // and retains up to the last acknowledged offset.
    let info = node_client(&cluster, follower).describe_topic(RETAINED_TOPIC).await.expect("describe the topic");
    for p in &info.partition_info {
        let acked = acks.keys().filter(|(partition, _)| *partition == p.partition).count() as u64;
        assert_eq!(p.end_offset, acked, "node{follower}: end of partition {}", p.partition);
        assert!(p.start_offset > 0 && p.start_offset < p.end_offset, "node{follower}: retained range {p:?}");
        let records = read_partition(&cluster, follower, RETAINED_TOPIC, p.partition, p.start_offset, 0).await;
        assert_eq!(records.len() as u64, p.end_offset - p.start_offset);
        for r in &records {
            let (key, value) = &acks[&(p.partition, r.offset)];
            assert_eq!(&r.key[..], &key[..], "node{follower}: key at {}/{}", p.partition, r.offset);
            assert!(r.value[..] == value[..], "node{follower}: value at {}/{} differs", p.partition, r.offset);
        }
    }

    // Phase 8: as leader it takes writes, and every node replicates them.
    let through_it = node_client(&cluster, follower);
    let new_batches = RETAINED_BATCHES..RETAINED_BATCHES + 2;
    let last = write_retained(&Producer::new(through_it.clone()), &mut acks, new_batches.clone()).await;
    assert_eq!(through_it.leader(), Some(cluster.grpc(follower)), "the writes were not served by node{follower}");
    for id in cluster.ids() {
        for partition in 0..RETAINED_PARTITIONS {
            let from = acks.keys().filter(|(p, _)| *p == partition).map(|&(_, o)| o).max().expect("acked");
            let records = read_partition(&cluster, id, RETAINED_TOPIC, partition, from, last).await;
            assert_eq!(records.len(), 1, "node{id}: {partition}/{from} is the last record");
            assert!(records[0].value[..] == acks[&(partition, from)].1[..], "node{id}: value at {partition}/{from}");
        }
    }
}

// ---- 4. consumer-group offsets across a leader change ----

const OFFSETS_TOPIC: &str = "offsets";

#[tokio::test(flavor = "multi_thread")]
async fn committed_group_offsets_survive_a_leader_change() {
    // Phase 1: a topic with records and offsets committed for two groups,
    // one of them moved twice (so a stale answer would show).
    let cluster = Cluster::start(3, &[]).await;
    let first_leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic(OFFSETS_TOPIC, topic_config(2, -1)).await.expect("create the topic");
    let producer = client.producer();
    for partition in 0..2 {
        let records = (0..10).map(|i| Record::new(format!("r{i}"))).collect();
        producer.produce(OFFSETS_TOPIC, partition, records).await.expect("produce");
    }
    let commits = [("billing", 0, 4), ("billing", 0, 7), ("billing", 1, 5), ("audit", 0, 2)];
    for (group, partition, offset) in commits {
        client.commit_offset(group, OFFSETS_TOPIC, partition, offset).await.expect("commit an offset");
    }
    let expected = [("billing", 0, Some(7)), ("billing", 1, Some(5)), ("audit", 0, Some(2)), ("audit", 1, None)];
    let committed_by = applied_index(&cluster, first_leader).await;

    // Phase 2: the leader is SIGKILLed and another takes over.
    cluster.kill(first_leader);
    let second_leader = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(second_leader, first_leader);

    // Phase 3: the new leader answers the committed offsets at once (a
    // consumer resumes from its answer), and so does every live node once it
    // has applied what the old leader had (followers apply a heartbeat late).
    let new_leader = node_client(&cluster, second_leader);
    for (group, partition, offset) in expected {
        let got = new_leader.fetch_offset(group, OFFSETS_TOPIC, partition).await.expect("fetch an offset");
        assert_eq!(got, offset, "new leader node{second_leader}: {group} on partition {partition}");
    }
    for id in cluster.ids().filter(|&id| id != first_leader) {
        wait_applied(&cluster, id, committed_by).await;
        let node = node_client(&cluster, id);
        for (group, partition, offset) in expected {
            let got = node.fetch_offset(group, OFFSETS_TOPIC, partition).await.expect("fetch an offset");
            assert_eq!(got, offset, "node{id}: {group} on partition {partition}");
        }
    }
    for (group, partition, offset) in expected {
        let got = client.fetch_offset(group, OFFSETS_TOPIC, partition).await.expect("fetch an offset");
        assert_eq!(got, offset, "the client's answer for {group} on partition {partition}");
    }

    // Phase 4: commits go on under the new leader, and the restarted node
    // learns them with the rest.
    client.commit_offset("billing", OFFSETS_TOPIC, 0, 10).await.expect("commit under the new leader");
    client.commit_offset("audit", OFFSETS_TOPIC, 1, 3).await.expect("commit under the new leader");
    let now_committed_by = applied_index(&cluster, cluster.leader().await).await;
    cluster.restart(first_leader).await;
    let expected = [("billing", 0, Some(10)), ("billing", 1, Some(5)), ("audit", 0, Some(2)), ("audit", 1, Some(3))];
    for id in cluster.ids() {
        wait_applied(&cluster, id, now_committed_by).await;
        let node = node_client(&cluster, id);
        for (group, partition, offset) in expected {
            let got = node.fetch_offset(group, OFFSETS_TOPIC, partition).await.expect("fetch an offset");
            assert_eq!(got, offset, "node{id} after the new commits: {group} on partition {partition}");
        }
    }
}

// ---- 5. an idempotent retry after OUTCOME_UNKNOWN ----

const RETRY_TOPIC: &str = "retry";
/// Fixed, so every attempt below is recognisably the same batch.
const RETRY_PRODUCER_ID: u64 = 0x6b65_656c_0000_0005;
const RETRY_SEQUENCE: u64 = 0;

fn retry_batch() -> Vec<Record> {
    vec![Record::new("retried-0").key("r"), Record::new("retried-1").key("r")]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_outcome_unknown_stores_the_batch_exactly_once() {
    // Phase 1: a cluster whose leader gives up on a quorum after 1.5 s, and a
    // topic holding one record of another producer.
    let cluster = Cluster::start(3, &[("flush.commitlog.timeout", "1500")]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic(RETRY_TOPIC, topic_config(1, -1)).await.expect("create the topic");
    client.producer().produce(RETRY_TOPIC, 0, vec![Record::new("before")]).await.expect("produce");
    let followers: Vec<u64> = cluster.ids().filter(|&id| id != leader).collect();

    // Phase 2: with both followers paused, the leader itself answers
    // OUTCOME_UNKNOWN for the batch (a raw request, to see its own status).
    for &id in &followers {
        cluster.pause(id);
    }
    let request = ProduceRequest {
        topic: RETRY_TOPIC.into(),
        partition: 0,
        records: retry_batch().into_iter().map(Into::into).collect(),
        producer_id: RETRY_PRODUCER_ID,
        first_sequence: RETRY_SEQUENCE,
    };
    let status = cluster.client(leader).await.produce(request).await.expect_err("no quorum, no ack");
    let code = status.metadata().get(keel_client::ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(code, Some(ErrorCode::OutcomeUnknown.as_str_name()), "the leader's answer: {status:?}");

    // Phase 3: the client, sending the same producer id and sequence with a
    // short deadline (to the leader only, so no attempt waits on a paused
    // node), gives up with OutcomeUnknown.
    let options = ClientOptions { call_timeout: Duration::from_secs(4), ..ClientOptions::default() };
    let impatient = Client::with_options(vec![cluster.grpc(leader)], options).expect("valid options");
    let producer = Producer::with_id(impatient, RETRY_PRODUCER_ID).expect("a non-zero id");
    let error = producer.produce_at(RETRY_TOPIC, 0, RETRY_SEQUENCE, retry_batch()).await.expect_err("no quorum");
    assert!(error.is_outcome_unknown(), "expected OutcomeUnknown, got {error}");

    // Phase 4: the followers resume; the same batch again is acknowledged,
    // as a duplicate of an attempt that was stored or as a fresh store.
    for &id in &followers {
        cluster.resume(id);
    }
    let producer = Producer::with_id(client.clone(), RETRY_PRODUCER_ID).expect("a non-zero id");
    let ack = producer.produce_at(RETRY_TOPIC, 0, RETRY_SEQUENCE, retry_batch()).await.expect("ack once resumed");
    assert_eq!(ack.count, 2);
    assert_eq!(ack.base_offset, 1, "the batch follows the one earlier record");
    eprintln!("retry: the first retry after resuming was answered with duplicate={}", ack.duplicate);

    // Phase 5: a second retry is a duplicate with the same offsets.
    let again = producer.produce_at(RETRY_TOPIC, 0, RETRY_SEQUENCE, retry_batch()).await.expect("ack of a retry");
    assert!(again.duplicate, "a retry of a stored batch must be answered as a duplicate: {again:?}");
    assert_eq!((again.base_offset, again.count, again.log_index), (ack.base_offset, ack.count, ack.log_index));

    // Phase 6: every node holds the batch exactly once, where it was acknowledged.
    let min_index = applied_index(&cluster, cluster.leader().await).await.max(again.log_index);
    for id in cluster.ids() {
        let records = read_partition(&cluster, id, RETRY_TOPIC, 0, 0, min_index).await;
        let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, [&b"before"[..], b"retried-0", b"retried-1"], "node{id}'s partition");
    }
}

// ---- 6. concurrent produces that together outgrow a segment ----

const PACKED_TOPIC: &str = "packed";
const PACKED_PRODUCERS: u32 = 8;
const PACKED_BATCHES: u64 = 3;
/// Each request alone is legal (below max.message.bytes and a segment),
/// but two already exceed what one 128 KiB segment holds.
const PACKED_RECORD_BYTES: usize = 60_000;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_produces_that_together_outgrow_a_segment_stop_no_node() {
    // Phase 1: small segments, and producers each sending legal ~60 KB
    // requests at the same time, so the leader packs several into one entry.
    let cluster = Cluster::start(3, &[("segment.bytes", "131072"), ("max.message.bytes", "65536")]).await;
    cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic(PACKED_TOPIC, topic_config(1, -1)).await.expect("create the topic");
    let tasks: Vec<_> = (0..PACKED_PRODUCERS)
        .map(|p| {
            let producer = client.producer();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..PACKED_BATCHES {
                    let value = payload(p, n, PACKED_RECORD_BYTES);
                    let ack = producer.produce(PACKED_TOPIC, 0, vec![Record::new(value.clone())]).await;
                    acked.push((ack.expect("a legal produce is acknowledged").base_offset, value));
                }
                acked
            })
        })
        .collect();
    let mut acked = BTreeMap::new();
    for task in tasks {
        let batches = tokio::time::timeout(STREAM_TIMEOUT, task).await.expect("the producers finish in bounded time");
        acked.extend(batches.expect("a producer task does not panic"));
    }

    // Phase 2: every node is still running: packing requests into an entry
    // must respect what a segment holds instead of failing the log append.
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node{id} stopped under concurrent legal produces (its log is below)");
    }

    // Phase 3: every node holds each acknowledged record once, at its offset.
    let leader = cluster.leader().await;
    let min_index = applied_index(&cluster, leader).await;
    for id in cluster.ids() {
        let records = read_partition(&cluster, id, PACKED_TOPIC, 0, 0, min_index).await;
        assert_eq!(records.len(), acked.len(), "node{id}: record count");
        for r in &records {
            assert!(r.value[..] == acked[&r.offset][..], "node{id}: value at offset {} differs", r.offset);
        }
    }
}

fn without_peers(properties: &str) -> String {
    properties.lines().filter(|l| !l.starts_with("peers")).map(|l| format!("{l}\n")).collect()
}

/// Issue 16, item 2: a node's data directory records its node id and its
/// cluster's id. A configuration that lost its node.id (a file a power cut
/// emptied, with the data path given elsewhere), or that names another
/// node, must not start over a member's data: the node exits at once
/// naming the directory and the node it belongs to, and the data is
/// untouched. With its right node.id it starts and serves as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_refuses_data_recorded_for_another_node_or_a_configuration_without_node_id() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster_client(&cluster);
    client.create_topic("ids", topic_config(1, -1)).await.expect("create topic");
    let ack = client.producer().produce("ids", 0, vec![Record::new("kept")]).await.expect("produce");
    let node = cluster.ids().find(|&id| id != leader).expect("a follower");
    wait_applied(&cluster, node, ack.log_index).await;
    cluster.stop(node);
    let meta = keel_raft_log::read_meta(&cluster.dir(node)).expect("read meta").expect("a meta file");
    assert_eq!(meta.identity.node_id, node, "the node id is recorded");
    assert_ne!(meta.identity.cluster_id, 0, "the cluster id is recorded (adopted from the leader)");
    let original = std::fs::read_to_string(cluster.properties(node)).expect("properties");
    let segments = cluster.segments(node);

    // Phase 1: no node.id (what a lost configuration leaves): refused by name.
    // (`peers` goes too: it must list this node, and without node.id that is node 1.)
    let without: String =
        without_peers(&original).lines().filter(|l| !l.starts_with("node.id")).map(|l| format!("{l}\n")).collect();
    for (text, expect) in [
        (without, "names no node.id".to_string()),
        // Another node's id (without `peers`, which must list this node).
        (
            without_peers(&original).replace(&format!("node.id={node}"), "node.id=9"),
            format!("holds the data of node {node}"),
        ),
    ] {
        std::fs::write(cluster.properties(node), &text).expect("edit properties");
        let log_before = std::fs::metadata(cluster.log(node)).map(|m| m.len()).unwrap_or(0);
        cluster.restart_in_background(node);
        let status = cluster.wait_for_exit(node, Duration::from_secs(30)).await;
        assert!(!status.success(), "node{node} started over its data with the wrong identity");
        let log = std::fs::read(cluster.log(node)).expect("log");
        let log = String::from_utf8_lossy(&log[log_before as usize..]);
        assert!(log.contains(&expect) && log.contains(&cluster.dir(node).display().to_string()), "{log}");
        assert_eq!(cluster.segments(node), segments, "the data was touched");
    }

    // Phase 2: with its own configuration back it starts and serves.
    std::fs::write(cluster.properties(node), &original).expect("restore properties");
    cluster.restart(node).await;
    let read = node_client(&cluster, node)
        .fetch(keel_client::Fetch::new("ids", 0, 0).min_index(ack.log_index).max_wait(Duration::from_secs(20)))
        .await
        .expect("fetch");
    assert_eq!(read.records.len(), 1);
    assert_eq!(&read.records[0].value[..], b"kept");
}

/// Issue 16, item 1: right after every node restarts, before anything new
/// is written, every node serves every acknowledged record. The committed
/// id a node keeps on disk lags (it is written about once a second), and a
/// new leader commits the entries of earlier terms only with its first own
/// entry; a node used to answer reads in between from the state it had
/// re-applied up to the stale committed id, so a consumer reading to the
/// end stopped short of acknowledged records (until the next write, as the
/// testers saw). Reads now wait until the node has applied an entry of the
/// current leader's term.
#[tokio::test(flavor = "multi_thread")]
async fn right_after_every_node_restarts_every_node_serves_every_acknowledged_record() {
    let cluster = Cluster::start(3, &[]).await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster_client(&cluster);
    client.create_topic("restart", topic_config(1, -1)).await.expect("create topic");
    let producer = client.producer();
    // Phase 1: a pause (the committed id on disk catches up), then a burst
    // of acknowledged records within a second, then every node is killed:
    // the committed id on disk names the burst's first entry at best.
    producer.produce("restart", 0, vec![Record::new("r0")]).await.expect("produce");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut acked = 1u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        producer.produce("restart", 0, vec![Record::new(format!("r{acked}"))]).await.expect("produce");
        acked += 1;
    }
    for id in cluster.ids() {
        cluster.kill(id);
    }
    // Phase 2: all back; read from each node as soon as it answers, before
    // any write: the end is past every acknowledged record, and they are all there.
    for id in cluster.ids() {
        cluster.restart_in_background(id);
    }
    for id in cluster.ids() {
        cluster.wait_until_answering(id, Duration::from_secs(30)).await;
    }
    for id in cluster.ids() {
        let first = node_client(&cluster, id).fetch(Fetch::new("restart", 0, 0)).await;
        let first = first.unwrap_or_else(|e| panic!("node{id}: fetch right after the restart: {e}"));
        assert!(
            first.end_offset >= acked,
            "node{id} right after the restart: end offset {} while {acked} records were acknowledged",
            first.end_offset
        );
        let records = read_partition(&cluster, id, "restart", 0, 0, 0).await;
        let values: Vec<Vec<u8>> = records.iter().map(|r| r.value.to_vec()).collect();
        let want: Vec<Vec<u8>> = (0..acked).map(|n| format!("r{n}").into_bytes()).collect();
        assert_eq!(&values[..acked as usize], &want[..], "node{id}: acknowledged records");
    }
}
