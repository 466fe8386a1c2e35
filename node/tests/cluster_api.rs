//! The client API and the CLI against a real three-node cluster (`keel node`
//! processes, `common::Cluster`): what is produced reads back exactly, in
//! order, from every node; lookups by key and time and tag filters return
//! exactly the records they should; consumer-group offsets are kept; every
//! bad request is refused with an error that names what was wrong and
//! changes nothing; a deleted topic's records never come back; the CLI works
//! end to end; a follower that lags still sends writes to the leader; and a
//! bad configuration file stops a node before it starts. What a client
//! written from keel.proto alone meets holds too: a fetch ahead of its node
//! waits for `min_index` (then NOT_CAUGHT_UP, never OUT_OF_RANGE); a body
//! that does not decode is INVALID_ARGUMENT with `keel-error`; a producer's
//! sequence gap is refused; no answer outgrows gRPC's default 4 MiB. Kills
//! and restarts are `cluster_faults.rs`'s business; the one pause here only makes a
//! follower lag.
//!
//! The tests share nothing, so cargo runs them side by side; each one puts
//! many phases on one cluster, because starting a cluster is the slow part.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use common::Cluster;
use keel_client::proto::keel_client::KeelClient;
use keel_client::proto::{self, TopicConfig, TopicInfo};
use keel_client::{
    Client, ClientOptions, Durability, ERROR_CODE_KEY, Error, ErrorCode, Fetch, FetchedRecord, LEADER_ADDR_KEY,
    LEADER_ID_KEY, ProduceAck, Producer, Record, partition_for,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

const ELECTION: Duration = Duration::from_secs(30);
/// Bound of a read that must first wait for its node to apply a write
/// (`min_index`). A read whose records are there returns at once, so this
/// only matters on a slow machine, where it must be generous.
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long every node gets to apply what one node has applied.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one CLI command (its own retries stop after 30 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// 2023-11-14, the base of explicit record timestamps: far from the
/// leader's clock, so a stamped timestamp cannot pass for an explicit one.
/// Topics holding such records keep them forever (`retention_ms: -1`);
/// the default retention (7 days) would trim them within seconds.
const T0: u64 = 1_700_000_000_000;
/// Bounds every read loop: a partition here holds far fewer records.
const MAX_FETCHES: usize = 10_000;

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is past 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit a u64")
}

fn keep_forever(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, retention_ms: -1, ..TopicConfig::default() }
}

/// A client that knows all nodes: writes find the leader.
fn cluster_client(cluster: &Cluster) -> Client {
    Client::connect(cluster.addrs()).expect("harness addresses are valid")
}

/// A client that knows only node `id`, so that node serves its reads
/// (a write it refuses as a follower still reaches the leader it names).
fn node_client(cluster: &Cluster, id: u64) -> Client {
    Client::connect(vec![cluster.grpc(id)]).expect("a harness address is valid")
}

/// One client per node, for reading the same thing from each.
fn node_clients(cluster: &Cluster) -> Vec<(u64, Client)> {
    cluster.ids().map(|id| (id, node_client(cluster, id))).collect()
}

/// Node `id`'s applied log index, asking again until it answers.
async fn applied_index(cluster: &Cluster, id: u64, deadline: Instant) -> u64 {
    loop {
        match cluster.cluster_info(id).await {
            Ok(info) => return info.applied_index,
            Err(error) => {
                assert!(Instant::now() < deadline, "node{id} did not answer ClusterInfo: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until every node has applied all that any node has applied, and so
/// every write acknowledged before the call (the leader that acknowledged it
/// had applied it). Reads that have no `min_index` (lookups, group offsets,
/// topic descriptions) come after this when they go to followers.
async fn sync_all(cluster: &Cluster) {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut target = 0;
    for id in cluster.ids() {
        target = target.max(applied_index(cluster, id, deadline).await);
    }
    for id in cluster.ids() {
        loop {
            let applied = applied_index(cluster, id, deadline).await;
            if applied >= target {
                break;
            }
            assert!(Instant::now() < deadline, "node{id} applied up to {applied} of {target} within {SYNC_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What one node returned for a whole partition.
#[derive(Debug)]
struct Read {
    records: Vec<FetchedRecord>,
    start: u64,
    end: u64,
}

/// Every record of one partition that node `client` serves, from offset
/// `from` to the end offset, fetch after fetch. With `min_index` the node
/// first waits (up to `READ_WAIT`) until it has applied that log index; the
/// partition must then hold a record at `from`, or that first fetch also
/// waits `READ_WAIT` for one (a long poll).
async fn read_from(client: &Client, topic: &str, partition: u32, from: u64, min_index: u64) -> Read {
    let wait = if min_index > 0 { READ_WAIT } else { Duration::ZERO };
    let mut records = Vec::new();
    let mut offset = from;
    for _ in 0..MAX_FETCHES {
        let fetch = Fetch::new(topic, partition, offset).min_index(min_index).max_wait(wait);
        let fetched = client
            .fetch(fetch)
            .await
            .unwrap_or_else(|e| panic!("fetch {topic}/{partition} at {offset} from {:?}: {e}", client.addrs()));
        assert!(
            fetched.applied_index >= min_index,
            "{topic}/{partition}: the node answered at applied index {} below min_index {min_index}",
            fetched.applied_index
        );
        assert!(
            fetched.next_offset > offset || fetched.next_offset == fetched.end_offset,
            "{topic}/{partition}: a fetch at {offset} made no progress: {fetched:?}"
        );
        records.extend(fetched.records);
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            return Read { records, start: fetched.start_offset, end: fetched.end_offset };
        }
    }
    panic!("{topic}/{partition}: not at the end after {MAX_FETCHES} fetches");
}

/// A record as a partition must return it at `offset`.
fn stored(offset: u64, r: &Record, timestamp_ms: u64) -> FetchedRecord {
    FetchedRecord {
        offset,
        timestamp_ms,
        key: r.key.clone(),
        value: r.value.clone(),
        tag: r.tag.clone(),
        headers: r.headers.clone(),
    }
}

fn offsets(records: &[FetchedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

/// What one partition must hold: every record as it must read back, with,
/// for a record the leader stamped, the window its timestamp must fall in.
#[derive(Debug, Default)]
struct Expected {
    records: Vec<(FetchedRecord, Option<(u64, u64)>)>,
}

impl Expected {
    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    /// The records matching `keep`, exactly as they must read back (for
    /// partitions without stamped timestamps).
    fn filtered(&self, keep: impl Fn(&FetchedRecord) -> bool) -> Vec<FetchedRecord> {
        self.records.iter().map(|(r, _)| r).filter(|r| keep(r)).cloned().collect()
    }
}

/// Produces one batch and checks the acknowledgement: the batch starts where
/// the partition ended (offsets are dense), holds every record, and is
/// quorum-fsynced (the nodes run SYNC_FLUSH). Records go into `expected`.
async fn produce_checked(
    producer: &Producer,
    expected: &mut Expected,
    topic: &str,
    partition: u32,
    records: Vec<Record>,
) -> ProduceAck {
    let before = now_ms();
    let ack = producer
        .produce(topic, partition, records.clone())
        .await
        .unwrap_or_else(|e| panic!("produce {} records to {topic}/{partition}: {e}", records.len()));
    let after = now_ms();
    assert_eq!(ack.base_offset, expected.end(), "{topic}/{partition}: a batch starts where the partition ended");
    assert_eq!(ack.count as usize, records.len(), "{topic}/{partition}: every record of the batch is stored");
    assert_eq!(ack.durability, Durability::QuorumFsynced, "{topic}/{partition}: SYNC_FLUSH acknowledges fsynced");
    assert!(
        ack.durable_index >= ack.log_index,
        "{topic}/{partition}: acknowledged as durable up to {} before its own log index {}",
        ack.durable_index,
        ack.log_index
    );
    assert!(!ack.duplicate, "{topic}/{partition}: a first attempt is no duplicate");
    for (i, r) in records.iter().enumerate() {
        let window = r.timestamp_ms.is_none().then_some((before, after));
        expected.records.push((stored(ack.base_offset + i as u64, r, r.timestamp_ms.unwrap_or(0)), window));
    }
    ack
}

/// Asserts that `got` is exactly what `expected` holds, field by field.
#[track_caller]
fn assert_holds(what: &str, got: &[FetchedRecord], expected: &Expected) {
    assert_eq!(got.len(), expected.records.len(), "{what}: got offsets {:?}", offsets(got));
    for (got, (want, window)) in got.iter().zip(&expected.records) {
        let mut want = want.clone();
        if let Some((earliest, latest)) = *window {
            assert!(
                (earliest..=latest).contains(&got.timestamp_ms),
                "{what}: offset {} was stamped {}, outside its produce call ({earliest}..={latest})",
                got.offset,
                got.timestamp_ms
            );
            want.timestamp_ms = got.timestamp_ms;
        }
        assert_eq!(got, &want, "{what}: offset {}", want.offset);
    }
}

/// Asserts that `result` is a refusal with `code` whose message names each
/// of `needles`, and returns the message.
#[track_caller]
fn refused<T: Debug>(result: keel_client::Result<T>, code: ErrorCode, needles: &[&str]) -> String {
    match result {
        Err(Error::Server { code: got, message }) => {
            assert_eq!(got, code, "expected {code:?}, got {got:?}: {message}");
            for needle in needles {
                assert!(message.contains(needle), "the {code:?} message {message:?} does not name {needle:?}");
            }
            message
        }
        other => panic!("expected a {code:?} refusal naming {needles:?}, got {other:?}"),
    }
}

/// The same for a raw gRPC answer: the `keel-error` metadata and the message.
#[track_caller]
fn refused_raw<T: Debug>(result: Result<T, tonic::Status>, code: ErrorCode, needles: &[&str]) -> tonic::Status {
    let status = match result {
        Err(status) => status,
        Ok(answer) => panic!("expected a {code:?} refusal naming {needles:?}, got {answer:?}"),
    };
    let named = status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(code.as_str_name()), "the keel-error of {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the {code:?} message {:?} does not name {needle:?}",
            status.message()
        );
    }
    status
}

/// One node's view of every topic: its description and each partition's records.
type Snapshot = BTreeMap<String, (TopicInfo, Vec<Vec<FetchedRecord>>)>;

async fn snapshot(client: &Client) -> Snapshot {
    let mut out = BTreeMap::new();
    for topic in client.list_topics().await.expect("list topics") {
        let mut partitions = Vec::with_capacity(topic.partition_info.len());
        for p in &topic.partition_info {
            let records = if p.start_offset == p.end_offset {
                Vec::new()
            } else {
                read_from(client, &topic.name, p.partition, p.start_offset, 0).await.records
            };
            partitions.push(records);
        }
        out.insert(topic.name.clone(), (topic, partitions));
    }
    out
}

/// Deterministic bytes of every value 0..=255 (no RNG: a failure replays).
fn binary(len: usize, seed: u32) -> Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn produced_records_read_back_exactly_and_are_found_by_key_time_and_tag() {
    // Phase 1: a three-node cluster elects a leader; a topic of three
    // partitions is created.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    let created = client.create_topic("orders", keep_forever(3)).await.expect("create orders");
    assert_eq!((created.name.as_str(), created.partitions, created.partition_info.len()), ("orders", 3, 3));

    // Phase 2: batches with keys, tags, headers (repeated names, empty and
    // binary values), explicit timestamps, binary, empty and large values
    // are acknowledged at dense offsets, quorum-fsynced.
    let mut expected: Vec<Expected> = (0..3).map(|_| Expected::default()).collect();
    let mut acks = Vec::new();
    acks.push(
        produce_checked(
            &producer,
            &mut expected[0],
            "orders",
            0,
            vec![
                Record::new("order 1 placed")
                    .key("user-1")
                    .tag("created")
                    .header("trace", "t-1")
                    .header("bin", Bytes::from_static(&[0, 255, 1]))
                    .timestamp_ms(T0),
                Record::new(Bytes::from_static(&[0x00, 0xff, 0xfe, 0x80, 0x00]))
                    .key(Bytes::from_static(&[0x00, 0x01, 0xff]))
                    .tag("binary")
                    .timestamp_ms(T0 + 1),
                Record::new("no key, no tag, no header").timestamp_ms(T0 + 2),
            ],
        )
        .await,
    );
    acks.push(
        produce_checked(
            &producer,
            &mut expected[1],
            "orders",
            1,
            vec![
                Record::new("stamped by the leader").key("user-2").tag("créé").header("clé", "valeur"),
                Record::new("also stamped").header("empty", Bytes::new()),
            ],
        )
        .await,
    );
    let batch = vec![
        Record::new(binary(300_000, 7)).key("blob").tag("blob").timestamp_ms(T0 + 20),
        Record::new("after the blob").timestamp_ms(T0 + 21),
    ];
    acks.push(produce_checked(&producer, &mut expected[2], "orders", 2, batch).await);
    let many: Vec<Record> = (0..50u64)
        .map(|i| {
            let r = Record::new(format!("record {i}")).timestamp_ms(T0 + 100 + i);
            if i % 3 == 0 { r.tag("third") } else { r }
        })
        .collect();
    acks.push(produce_checked(&producer, &mut expected[2], "orders", 2, many).await);

    // Phase 3: a follower refuses a produce with NOT_LEADER naming the
    // leader (id and address); a client that knows only that follower
    // follows it there and stores the batch.
    let mut raw = cluster.client(follower).await;
    let not_leader = proto::ProduceRequest {
        topic: "orders".into(),
        partition: 0,
        records: vec![proto::Record { value: Bytes::from_static(b"must not be stored"), ..proto::Record::default() }],
        producer_id: 0,
        first_sequence: 0,
    };
    let status = refused_raw(raw.produce(not_leader).await, ErrorCode::NotLeader, &[]);
    let hint_id: u64 = status
        .metadata()
        .get(LEADER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("NOT_LEADER without a leader id: {status:?}"));
    assert_ne!(hint_id, follower, "a follower named itself as the leader");
    let hint_addr = status.metadata().get(LEADER_ADDR_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(hint_addr, Some(cluster.grpc(hint_id).as_str()), "the leader address of {status:?}");
    let via_follower = node_client(&cluster, follower).producer();
    acks.push(
        produce_checked(
            &via_follower,
            &mut expected[0],
            "orders",
            0,
            vec![
                Record::new("order 1 paid")
                    .key("user-1")
                    .tag("paid")
                    .header("trace", "t-2")
                    .header("trace", "t-2 again")
                    .timestamp_ms(T0 + 10),
                Record::new(Bytes::new()).key("user-1").timestamp_ms(T0 + 11),
            ],
        )
        .await,
    );

    // Phase 4: a batch sent again at the same producer sequence (a retry
    // after a lost answer) is answered with the first attempt's offsets,
    // marked duplicate, and stored once; the same sequence with another
    // record count is refused as OUT_OF_ORDER_SEQUENCE.
    let sequence = producer.reserve("orders", 1, 2).expect("reserve two sequences");
    let retried =
        vec![Record::new("sent twice").timestamp_ms(T0 + 30), Record::new("also twice").timestamp_ms(T0 + 31)];
    let first = producer.produce_at("orders", 1, sequence, retried.clone()).await.expect("first attempt");
    let again = producer.produce_at("orders", 1, sequence, retried.clone()).await.expect("retry");
    assert_eq!((first.base_offset, first.count, first.duplicate), (expected[1].end(), 2, false));
    assert_eq!((again.base_offset, again.count, again.duplicate), (first.base_offset, 2, true));
    assert_eq!(again.log_index, first.log_index, "the retry points at the first attempt's entry");
    for (i, r) in retried.iter().enumerate() {
        expected[1].records.push((stored(first.base_offset + i as u64, r, T0 + 30 + i as u64), None));
    }
    acks.push(first);
    refused(
        producer.produce_at("orders", 1, sequence, retried[..1].to_vec()).await,
        ErrorCode::OutOfOrderSequence,
        &["sequence"],
    );

    // Phase 5: every node, followers included (reading at the acks' log
    // index), returns every partition exactly: offsets, keys, values, tags,
    // headers and timestamps, in order; the leader's stamps lie within the
    // produce calls, and all nodes return the same bytes.
    let min_index = acks.iter().map(|a| a.log_index).max().expect("acks");
    let nodes = node_clients(&cluster);
    let mut first_view: Option<Vec<Vec<FetchedRecord>>> = None;
    for (id, node) in &nodes {
        let mut view = Vec::new();
        for (p, want) in expected.iter().enumerate() {
            let read = read_from(node, "orders", p as u32, 0, min_index).await;
            assert_holds(&format!("node{id} orders/{p}"), &read.records, want);
            assert_eq!((read.start, read.end), (0, want.end()), "node{id} orders/{p} start and end offsets");
            view.push(read.records);
        }
        match &first_view {
            None => first_view = Some(view),
            Some(first) => assert_eq!(&view, first, "node{id} differs from node1"),
        }
    }

    // Phase 6: every node describes the topic with each partition's start
    // (0) and end offset, the same incarnation, and lists it.
    let mut incarnations = Vec::new();
    for (id, node) in &nodes {
        let info = node.describe_topic("orders").await.expect("describe orders");
        assert_eq!(info.partitions, 3, "node{id}");
        assert_eq!(info.retention_ms, -1, "node{id}");
        let spans: Vec<(u32, u64, u64)> =
            info.partition_info.iter().map(|p| (p.partition, p.start_offset, p.end_offset)).collect();
        assert_eq!(spans, [(0, 0, 5), (1, 0, 4), (2, 0, 52)], "node{id} partition offsets");
        assert!(info.partition_info.iter().all(|p| p.bytes > 0), "node{id} counts no bytes: {info:?}");
        assert!(info.partition_info[2].bytes > 300_000, "node{id} does not count the large value's bytes");
        incarnations.push(info.incarnation);
        let listed = node.list_topics().await.expect("list topics");
        assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["orders"], "node{id}");
    }
    assert!(incarnations.iter().all(|&i| i == created.incarnation), "incarnations {incarnations:?}");
    let first_view = first_view.expect("three nodes were read");

    // Phase 7: lookups by key return exactly the records with that key,
    // oldest first, from every node: not those whose key extends it (k1x)
    // or is a prefix of it (k), nor those of another partition.
    let keyed: Vec<(Bytes, u64)> = vec![
        (Bytes::from_static(b"k1"), T0 + 1000),
        (Bytes::from_static(b"k2"), T0 + 3000),
        (Bytes::from_static(b"k1"), T0 + 2000),
        (Bytes::new(), T0 + 5000),
        (Bytes::from_static(b"k1"), T0 + 4000),
        (Bytes::from_static(b"k1x"), T0 + 6000),
        (Bytes::from_static(b"k"), T0 + 6000),
        (Bytes::from_static(&[0, 1, 0]), T0 + 7000),
    ];
    client.create_topic("keyed", keep_forever(2)).await.expect("create keyed");
    let mut keyed_expected = Expected::default();
    let records: Vec<Record> = keyed
        .iter()
        .enumerate()
        .map(|(i, (key, ts))| Record::new(format!("value {i}")).key(key.clone()).timestamp_ms(*ts))
        .collect();
    let (first, second) = records.split_at(3);
    produce_checked(&producer, &mut keyed_expected, "keyed", 0, first.to_vec()).await;
    let last = produce_checked(&producer, &mut keyed_expected, "keyed", 0, second.to_vec()).await;
    let other = produce_checked(
        &producer,
        &mut Expected::default(),
        "keyed",
        1,
        vec![Record::new("elsewhere").key("k2").timestamp_ms(T0)],
    )
    .await;
    let keys: [&[u8]; 6] = [b"k1", b"k2", b"k1x", b"k", &[0, 1, 0], b"absent"];
    for (id, node) in &nodes {
        let read = read_from(node, "keyed", 0, 0, last.log_index.max(other.log_index)).await;
        assert_holds(&format!("node{id} keyed/0"), &read.records, &keyed_expected);
        for key in keys {
            let found = node.lookup_by_key("keyed", 0, Bytes::copy_from_slice(key), 0).await.expect("lookup");
            let want = keyed_expected.filtered(|r| r.key == key);
            assert_eq!(found, want, "node{id}: records of keyed/0 with key {key:?}");
        }
        let in_other = node.lookup_by_key("keyed", 1, "k1", 0).await.expect("lookup in keyed/1");
        assert_eq!(in_other, [], "node{id}: k1 was never produced to keyed/1");
        let limited = node.lookup_by_key("keyed", 0, "k1", 2).await.expect("lookup with a limit");
        assert_eq!(limited.len(), 2, "node{id}: limit 2 of k1's 3 records: {limited:?}");
        assert!(limited.iter().all(|r| &r.key[..] == b"k1"), "node{id}: {limited:?}");
        assert!(limited.windows(2).all(|w| w[0].offset < w[1].offset), "node{id}: oldest first: {limited:?}");
    }

    // Phase 8: the offset for a timestamp T is the first offset whose
    // record's timestamp is at least T (timestamps here go back and forth,
    // so that is not the closest one); past every record it is not found
    // and the end offset.
    let stamps: Vec<u64> = keyed.iter().map(|(_, ts)| *ts).collect();
    let probes = [
        0,
        T0,
        T0 + 1000,
        T0 + 1001,
        T0 + 2000,
        T0 + 2500,
        T0 + 3000,
        T0 + 3001,
        T0 + 4500,
        T0 + 5000,
        T0 + 5001,
        T0 + 6000,
        T0 + 6001,
        T0 + 7000,
        T0 + 7001,
        u64::MAX,
    ];
    for (id, node) in &nodes {
        for t in probes {
            let got = node.offset_for_timestamp("keyed", 0, t).await.expect("offset for timestamp");
            let want = match stamps.iter().position(|&ts| ts >= t) {
                Some(o) => proto::OffsetForTimestampResponse { found: true, offset: o as u64, timestamp_ms: stamps[o] },
                None => {
                    proto::OffsetForTimestampResponse { found: false, offset: stamps.len() as u64, timestamp_ms: 0 }
                }
            };
            assert_eq!(got, want, "node{id}: keyed/0 at timestamp {t}");
        }
        // Timestamps the leader stamped are indexed the same way (orders/1
        // holds two, then two explicit ones from 2023).
        let orders1 = &first_view[1];
        for record in orders1 {
            let got = node.offset_for_timestamp("orders", 1, record.timestamp_ms).await.expect("offset for timestamp");
            let first = orders1.iter().find(|r| r.timestamp_ms >= record.timestamp_ms).expect("the record itself");
            let want = (true, first.offset, first.timestamp_ms);
            assert_eq!((got.found, got.offset, got.timestamp_ms), want, "node{id}: orders/1 at a stamped time");
        }
    }

    // Phase 9: a tag filter returns exactly the records with one of its
    // tags (no prefix, case or substring matches), paging by `max_bytes`
    // one record at a time gives the same; a tag no record has returns
    // nothing and moves next_offset to the end; no filter returns all.
    client.create_topic("tagged", keep_forever(1)).await.expect("create tagged");
    let tags = ["A", "B", "", "C", "A", "B", "AB", "a", "A", "B", "BA", "C"];
    let records: Vec<Record> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| Record::new(format!("m{i}")).tag(*tag).timestamp_ms(T0 + i as u64))
        .collect();
    let mut tagged = Expected::default();
    let ack = produce_checked(&producer, &mut tagged, "tagged", 0, records).await;
    let filters: [(&str, &[&str]); 6] = [
        ("A", &["A"]),
        ("A || B", &["A", "B"]),
        ("B||C", &["B", "C"]),
        ("  C  ||  A  ", &["A", "C"]),
        ("Z", &[]),
        ("", &["A", "B", "", "C", "AB", "a", "BA"]),
    ];
    for (id, node) in &nodes {
        // Read your writes: the node has applied the batch before the filters.
        read_from(node, "tagged", 0, 0, ack.log_index).await;
        for (filter, matching) in filters {
            let want = tagged.filtered(|r| matching.contains(&r.tag.as_str()));
            for max_bytes in [0, 1] {
                let mut got = Vec::new();
                let mut offset = 0;
                for _ in 0..MAX_FETCHES {
                    let fetch = Fetch::new("tagged", 0, offset).tags(filter).max_bytes(max_bytes);
                    let fetched = node.fetch(fetch).await.expect("filtered fetch");
                    assert!(
                        max_bytes == 0 || fetched.records.len() <= 1,
                        "node{id}: max_bytes 1 returned {} records",
                        fetched.records.len()
                    );
                    got.extend(fetched.records);
                    assert!(fetched.next_offset > offset, "node{id}: filter {filter:?} stuck at {offset}");
                    offset = fetched.next_offset;
                    if offset == fetched.end_offset {
                        break;
                    }
                }
                assert_eq!(offset, tagged.end(), "node{id}: filter {filter:?} ends at the end offset");
                assert_eq!(
                    got,
                    want,
                    "node{id}: filter {filter:?} (max_bytes {max_bytes}) returned {:?}",
                    offsets(&got)
                );
            }
        }
        // From the middle, a filter starts there.
        let fetched = node.fetch(Fetch::new("tagged", 0, 5).tags("A")).await.expect("filtered fetch from 5");
        assert_eq!(offsets(&fetched.records), [8], "node{id}: tag A from offset 5");
        // A tag nothing has: one fetch, nothing, and the next offset is the end.
        let fetched = node.fetch(Fetch::new("tagged", 0, 0).tags("Z")).await.expect("fetch of an unused tag");
        assert_eq!((fetched.records.len(), fetched.next_offset, fetched.end_offset), (0, 12, 12), "node{id}");
    }

    // Phase 10: a filtered fetch waiting at the end skips a record with
    // another tag produced meanwhile and returns the one that matches.
    let waiting = {
        let reader = node_client(&cluster, follower);
        tokio::spawn(async move { reader.fetch(Fetch::new("tagged", 0, 12).tags("C").max_wait(READ_WAIT)).await })
    };
    produce_checked(&producer, &mut tagged, "tagged", 0, vec![Record::new("m12").tag("B").timestamp_ms(T0 + 12)]).await;
    produce_checked(&producer, &mut tagged, "tagged", 0, vec![Record::new("m13").tag("C").timestamp_ms(T0 + 13)]).await;
    let fetched = waiting.await.expect("the waiting fetch task").expect("the waiting fetch");
    let want = tagged.filtered(|r| r.offset >= 12 && r.tag == "C");
    assert_eq!(fetched.records, want, "the long poll at 12 for tag C");
    assert_eq!(fetched.next_offset, 14, "the long poll moves past what it skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_bad_requests_and_recreated_topics_leave_stored_data_exact() {
    // Phase 1: a cluster with topics of every kind: two partitions kept
    // forever; a 100-byte message limit; a one-hour retention; and the
    // accepted limits: partitions 0 (one partition, as keel.proto says),
    // 1024 partitions, and a 249-character name.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    let nodes = node_clients(&cluster);
    client.create_topic("ledger", keep_forever(2)).await.expect("create ledger");
    let mut ledger = [Expected::default(), Expected::default()];
    let records =
        (0..5u64).map(|i| Record::new(format!("entry {i}")).key(format!("acct-{}", i % 2)).timestamp_ms(T0 + i));
    produce_checked(&producer, &mut ledger[0], "ledger", 0, records.collect()).await;
    let records = vec![Record::new("p1 first").timestamp_ms(T0), Record::new("p1 second").timestamp_ms(T0 + 1)];
    produce_checked(&producer, &mut ledger[1], "ledger", 1, records).await;

    let small = client
        .create_topic("small", TopicConfig { max_message_bytes: 100, ..TopicConfig::default() })
        .await
        .expect("create small");
    assert_eq!(small.max_message_bytes, 100);
    // Exactly at the limit: key 10 + value 80 + header name 2 and value 8.
    let at_limit = Record::new(vec![b'v'; 80]).key("0123456789").header("h1", "12345678");
    produce_checked(&producer, &mut Expected::default(), "small", 0, vec![at_limit]).await;

    let hour = TopicConfig { retention_ms: 3_600_000, ..TopicConfig::default() };
    client.create_topic("aged", hour).await.expect("create aged");
    let old = (0..3u64).map(|i| Record::new(format!("old {i}")).timestamp_ms(T0 + i));
    let mut aged = Expected::default();
    produce_checked(&producer, &mut aged, "aged", 0, old.collect()).await;
    let fresh = vec![Record::new("fresh 3"), Record::new("fresh 4")];
    produce_checked(&producer, &mut aged, "aged", 0, fresh).await;

    let defaulted = client.create_topic("defaulted", TopicConfig::default()).await.expect("create with partitions 0");
    assert_eq!((defaulted.partitions, defaulted.partition_info.len()), (1, 1), "partitions 0 means 1");
    let wide = client.create_topic("wide", keep_forever(1024)).await.expect("create 1024 partitions");
    assert_eq!((wide.partitions, wide.partition_info.len()), (1024, 1024));
    let long_name = "n".repeat(249);
    client.create_topic(&long_name, TopicConfig::default()).await.expect("create a 249-character name");

    // Phase 2: retention trims the three records older than an hour (the
    // leader checks every 2 s), so `aged` starts at offset 3.
    // Asked of the leader, which has applied both batches: a follower may
    // apply a trim proposed between them before the second one.
    let on_leader = node_client(&cluster, leader);
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let info = on_leader.describe_topic("aged").await.expect("describe aged");
        let p = &info.partition_info[0];
        if p.start_offset == 3 {
            assert_eq!(p.end_offset, 5, "retention moves the start, never the end");
            break;
        }
        assert_eq!(p.start_offset, 0, "retention trims all three old records at once: {p:?}");
        assert!(Instant::now() < deadline, "retention did not trim aged/0 within {SYNC_TIMEOUT:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Phase 3: a committed group offset reads back from every node; the end
    // offset itself can be committed; past the end is refused with
    // OFFSET_OUT_OF_RANGE naming the offset and the range, and the
    // committed offset stays; a group that never committed has none.
    client.commit_offset("billing", "ledger", 0, 3).await.expect("commit 3");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        assert_eq!(node.fetch_offset("billing", "ledger", 0).await.expect("fetch offset"), Some(3), "node{id}");
    }
    client.commit_offset("billing", "ledger", 0, 5).await.expect("commit the end offset");
    client.commit_offset("billing", "ledger", 1, 0).await.expect("commit the start offset");
    refused(
        client.commit_offset("billing", "ledger", 0, 6).await,
        ErrorCode::OffsetOutOfRange,
        &["offset 6", "ledger/0", "0..5"],
    );
    refused(client.commit_offset("billing", "missing", 0, 0).await, ErrorCode::UnknownTopic, &["missing"]);
    refused(
        client.commit_offset("billing", "ledger", 2, 0).await,
        ErrorCode::UnknownPartition,
        &["ledger", "partition 2"],
    );
    refused(client.commit_offset("bad group", "ledger", 0, 0).await, ErrorCode::InvalidArgument, &["bad group"]);
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        assert_eq!(node.fetch_offset("billing", "ledger", 0).await.expect("fetch offset"), Some(5), "node{id}");
        assert_eq!(node.fetch_offset("billing", "ledger", 1).await.expect("fetch offset"), Some(0), "node{id}");
        assert_eq!(node.fetch_offset("audit", "ledger", 0).await.expect("fetch offset"), None, "node{id}");
        refused(node.fetch_offset("billing", "missing", 0).await, ErrorCode::UnknownTopic, &["missing"]);
        let groups = node.describe_topic("ledger").await.expect("describe ledger").groups;
        let lags: Vec<(&str, u32, u64, u64)> =
            groups.iter().map(|g| (g.group.as_str(), g.partition, g.committed, g.lag)).collect();
        assert_eq!(lags, [("billing", 0, 5, 0), ("billing", 1, 0, 2)], "node{id}: committed offsets and lag");
    }

    // Phase 4: every node holds the same topics and records; this is what
    // the refused requests below must leave unchanged.
    sync_all(&cluster).await;
    let before = snapshot(&nodes[0].1).await;
    for (id, node) in &nodes[1..] {
        assert_eq!(snapshot(node).await, before, "node{id} differs from node1 before the bad requests");
    }
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(names, ["aged", "defaulted", "ledger", long_name.as_str(), "small", "wide"]);
    assert_holds("ledger/0", &before["ledger"].1[0], &ledger[0]);
    assert_holds("ledger/1", &before["ledger"].1[1], &ledger[1]);

    // Phase 5: an unknown topic is refused by name by every call, on a
    // follower too.
    let on_follower = node_client(&cluster, follower);
    let one = || vec![Record::new("x")];
    refused(producer.produce("missing", 0, one()).await, ErrorCode::UnknownTopic, &["missing"]);
    for reader in [&client, &on_follower] {
        refused(reader.fetch(Fetch::new("missing", 0, 0)).await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.describe_topic("missing").await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.lookup_by_key("missing", 0, "k", 0).await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.offset_for_timestamp("missing", 0, 0).await, ErrorCode::UnknownTopic, &["missing"]);
    }
    refused(client.delete_topic("missing").await, ErrorCode::UnknownTopic, &["missing"]);

    // Phase 6: a partition the topic does not have is refused naming it and
    // the partition count.
    let named = ["ledger", "partition 2", "2 partitions"];
    refused(producer.produce("ledger", 2, one()).await, ErrorCode::UnknownPartition, &named);
    for reader in [&client, &on_follower] {
        refused(reader.fetch(Fetch::new("ledger", 2, 0)).await, ErrorCode::UnknownPartition, &named);
        refused(reader.lookup_by_key("ledger", 2, "acct-0", 0).await, ErrorCode::UnknownPartition, &named);
        refused(reader.offset_for_timestamp("ledger", 2, 0).await, ErrorCode::UnknownPartition, &named);
    }

    // Phase 7: a record over the topic's max_message_bytes (key + value +
    // headers) is refused naming the record, its size and the limit, and
    // nothing of its batch is stored; so is one over the node's 1 MiB
    // default on an ordinary topic.
    let ok = Record::new("fits");
    let over = Record::new(vec![b'v'; 81]).key("0123456789").header("h1", "12345678");
    refused(
        producer.produce("small", 0, vec![ok.clone(), over]).await,
        ErrorCode::MessageTooLarge,
        &["record 1", "101 bytes", "100", "small"],
    );
    let headers_only = Record::new("").header("h", vec![b'h'; 200]);
    refused(
        producer.produce("small", 0, vec![headers_only]).await,
        ErrorCode::MessageTooLarge,
        &["record 0", "201 bytes", "100"],
    );
    refused(
        producer.produce("ledger", 0, vec![Record::new(vec![0u8; (1 << 20) + 1])]).await,
        ErrorCode::MessageTooLarge,
        &["record 0", "1048577 bytes", "1048576", "ledger"],
    );

    // Phase 8: invalid topic names and settings are refused naming them:
    // empty (the client refuses it before sending; the node does too),
    // a space, ".", "..", a non-ASCII letter, 250 characters; 5000
    // partitions; a max_message_bytes above the node's; retention -2.
    let empty = matches!(client.create_topic("", TopicConfig::default()).await, Err(Error::InvalidArgument(_)));
    assert!(empty, "keel-client sends a topic without a name");
    let mut raw = cluster.client(leader).await;
    let create = |name: &str| proto::CreateTopicRequest { name: name.to_string(), config: None };
    refused_raw(raw.create_topic(create("")).await, ErrorCode::InvalidArgument, &["1 to 249", "got 0"]);
    for (name, needles) in [
        ("a b", &["`a b`", "' '"][..]),
        (".", &["`.`"]),
        ("..", &["`..`"]),
        ("caf\u{e9}", &["caf\u{e9}"]),
        (&"n".repeat(250), &["1 to 249", "got 250"]),
    ] {
        refused(client.create_topic(name, TopicConfig::default()).await, ErrorCode::InvalidArgument, needles);
    }
    let config = TopicConfig { partitions: 5000, ..TopicConfig::default() };
    refused(client.create_topic("many", config).await, ErrorCode::InvalidArgument, &["5000", "1024"]);
    let config = TopicConfig { max_message_bytes: 2 << 20, ..TopicConfig::default() };
    refused(client.create_topic("huge", config).await, ErrorCode::InvalidArgument, &["2097152", "1048576"]);
    let config = TopicConfig { retention_ms: -2, ..TopicConfig::default() };
    refused(client.create_topic("negative", config).await, ErrorCode::InvalidArgument, &["retention_ms", "-2"]);

    // Phase 9: creating an existing topic again, with other settings, is
    // refused with TOPIC_EXISTS, and the topic keeps its own.
    refused(client.create_topic("ledger", keep_forever(7)).await, ErrorCode::TopicExists, &["ledger"]);

    // Phase 10: a fetch below the start (trimmed by retention) or past the
    // end is OFFSET_OUT_OF_RANGE naming the offset and the retained range,
    // on any node; at the end offset it is an empty answer.
    for reader in [&client, &on_follower] {
        refused(
            reader.fetch(Fetch::new("ledger", 0, 6)).await,
            ErrorCode::OffsetOutOfRange,
            &["offset 6", "ledger/0", "0..5"],
        );
        refused(
            reader.fetch(Fetch::new("ledger", 0, u64::MAX)).await,
            ErrorCode::OffsetOutOfRange,
            &[&u64::MAX.to_string(), "0..5"],
        );
        refused(
            reader.fetch(Fetch::new("aged", 0, 0)).await,
            ErrorCode::OffsetOutOfRange,
            &["offset 0", "aged/0", "3..5"],
        );
        let at_end = reader.fetch(Fetch::new("ledger", 0, 5)).await.expect("fetch at the end offset");
        assert_eq!((at_end.records.len(), at_end.next_offset, at_end.end_offset), (0, 5, 5));
        let kept = reader.fetch(Fetch::new("aged", 0, 3)).await.expect("fetch at the start offset");
        assert_holds("what retention kept of aged/0", &kept.records, &Expected { records: aged.records[3..].to_vec() });
        let first = reader.offset_for_timestamp("aged", 0, 0).await.expect("offset for timestamp 0");
        assert_eq!((first.found, first.offset), (true, 3), "the first retained record");
    }

    // Phase 11: malformed requests are refused saying what is wrong: an
    // empty batch, a tag containing `||`, a tag filter with an empty tag,
    // a lookup without a key.
    let empty_batch = proto::ProduceRequest { topic: "ledger".into(), ..proto::ProduceRequest::default() };
    refused_raw(raw.produce(empty_batch).await, ErrorCode::InvalidArgument, &["no records"]);
    refused(
        producer.produce("ledger", 0, vec![Record::new("x").tag("A||B")]).await,
        ErrorCode::InvalidArgument,
        &["record 0", "tag", "||"],
    );
    refused(
        client.fetch(Fetch::new("ledger", 0, 0).tags("A || ")).await,
        ErrorCode::InvalidArgument,
        &["A || ", "tag"],
    );
    refused(client.lookup_by_key("ledger", 0, Bytes::new(), 0).await, ErrorCode::InvalidArgument, &["key"]);

    // Phase 12: after all of that, every node holds exactly what it held
    // before: the same topics, settings, offsets, groups and records.
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        let after = snapshot(node).await;
        assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "node{id}: topics");
        for (name, (info, records)) in &before {
            assert_eq!(&after[name].0, info, "node{id}: topic {name} changed");
            assert_eq!(&after[name].1, records, "node{id}: the records of {name} changed");
        }
    }

    // Phase 13: a topic with records, a group offset and producer state is
    // deleted: every node forgets it.
    let first = client.create_topic("cycle", keep_forever(2)).await.expect("create cycle");
    let old = |i: u64| Record::new(format!("old {i}")).key("old-key").tag("old").timestamp_ms(T0 + i);
    produce_checked(&producer, &mut Expected::default(), "cycle", 0, (0..3).map(old).collect()).await;
    produce_checked(&producer, &mut Expected::default(), "cycle", 1, vec![old(3)]).await;
    client.commit_offset("cg", "cycle", 0, 2).await.expect("commit on cycle");
    client.delete_topic("cycle").await.expect("delete cycle");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        refused(node.describe_topic("cycle").await, ErrorCode::UnknownTopic, &["cycle"]);
        refused(node.fetch(Fetch::new("cycle", 0, 0)).await, ErrorCode::UnknownTopic, &["cycle"]);
        let listed = node.list_topics().await.expect("list topics");
        assert!(listed.iter().all(|t| t.name != "cycle"), "node{id} still lists cycle");
    }

    // Phase 14: created again with the same settings it is a new, empty
    // topic on every node: no records, no key or time index entries, no
    // group offset, offsets starting at 0 again.
    let second = client.create_topic("cycle", keep_forever(2)).await.expect("create cycle again");
    assert!(second.incarnation > first.incarnation, "{second:?} after {first:?}");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        let info = node.describe_topic("cycle").await.expect("describe cycle");
        assert_eq!(info.incarnation, second.incarnation, "node{id}");
        let spans: Vec<(u64, u64, u64)> =
            info.partition_info.iter().map(|p| (p.start_offset, p.end_offset, p.bytes)).collect();
        assert_eq!(spans, [(0, 0, 0), (0, 0, 0)], "node{id}: the re-created partitions");
        assert_eq!(info.groups, [], "node{id}: groups of the deleted topic");
        for p in 0..2 {
            let fetched = node.fetch(Fetch::new("cycle", p, 0)).await.expect("fetch the new cycle");
            assert_eq!((fetched.records.len(), fetched.end_offset), (0, 0), "node{id} cycle/{p}");
            let fetched = node.fetch(Fetch::new("cycle", p, 0).tags("old")).await.expect("fetch tag old");
            assert_eq!(fetched.records, [], "node{id} cycle/{p} tag old");
            refused(node.fetch(Fetch::new("cycle", p, 1)).await, ErrorCode::OffsetOutOfRange, &["offset 1", "0..0"]);
            assert_eq!(node.lookup_by_key("cycle", p, "old-key", 0).await.expect("lookup"), [], "node{id}");
            let at = node.offset_for_timestamp("cycle", p, 0).await.expect("offset for timestamp");
            assert_eq!((at.found, at.offset), (false, 0), "node{id} cycle/{p}");
        }
        assert_eq!(node.fetch_offset("cg", "cycle", 0).await.expect("fetch offset"), None, "node{id}");
    }

    // Phase 15: records produced to the new topic (by the same producer,
    // whose sequences go on) start at offset 0 and are all it returns.
    let mut cycle = Expected::default();
    let new = vec![Record::new("new 0").key("old-key").timestamp_ms(T0 + 50), Record::new("new 1")];
    let ack = produce_checked(&producer, &mut cycle, "cycle", 0, new).await;
    for (id, node) in &nodes {
        let read = read_from(node, "cycle", 0, 0, ack.log_index).await;
        assert_holds(&format!("node{id} cycle/0 re-created"), &read.records, &cycle);
        let keyed = node.lookup_by_key("cycle", 0, "old-key", 0).await.expect("lookup");
        assert_eq!(offsets(&keyed), [0], "node{id}: only the new record has old-key");
    }
}

/// Runs `keel ARGS` with `stdin`, bounded by `CLI_TIMEOUT`, without the
/// test run's `KEEL_*` variables (`KEEL_CLUSTER` would point it elsewhere)
/// and without backtraces (they would bury the message under test).
async fn keel(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("KEEL_") {
            command.env_remove(variable);
        }
    }
    command.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0").env("NO_COLOR", "1");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("start keel {args:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    // A command that fails early (an unknown topic) may exit before it
    // reads its input: a broken pipe is then no error of the test's.
    match input.write_all(stdin).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("write the stdin of keel {args:?}: {e}"),
    }
    drop(input);
    // On timeout the child is dropped, which kills it (kill_on_drop).
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("keel {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("wait for keel {args:?}: {e}"))
}

fn show(args: &[&str], output: &Output) -> String {
    format!(
        "keel {args:?} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command that must succeed and returns its stdout.
async fn keel_ok(args: &[&str], stdin: &[u8]) -> String {
    let output = keel(args, stdin).await;
    assert!(output.status.success(), "{}", show(args, &output));
    String::from_utf8(output.stdout.clone()).unwrap_or_else(|_| panic!("stdout is not UTF-8: {}", show(args, &output)))
}

/// Runs a command that must fail, and asserts its stderr names each of `needles`.
async fn keel_fails(args: &[&str], stdin: &[u8], needles: &[&str]) {
    let output = keel(args, stdin).await;
    assert!(!output.status.success(), "expected a failure: {}", show(args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not name {needle:?}: {}", show(args, &output));
    }
}

/// The CLI pointed at one cluster (`--cluster` appended to every command).
struct Cli {
    cluster: String,
}

impl Cli {
    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut argv = args.to_vec();
        argv.extend(["--cluster", self.cluster.as_str()]);
        argv
    }

    async fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        keel_ok(&self.argv(args), stdin).await
    }

    async fn fails(&self, args: &[&str], stdin: &[u8], needles: &[&str]) {
        keel_fails(&self.argv(args), stdin, needles).await;
    }
}

/// A `--format json` line without its `timestamp_ms`, which it must have.
#[track_caller]
fn json_record(line: &str) -> (Value, u64) {
    let mut record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
    let object = record.as_object_mut().unwrap_or_else(|| panic!("{line:?} is not a JSON object"));
    let stamped = object.remove("timestamp_ms").and_then(|t| t.as_u64());
    (record, stamped.unwrap_or_else(|| panic!("{line:?} has no timestamp_ms")))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_quickstart_runs_against_the_cluster() {
    // Phase 1: a cluster, and `keel topic create` makes a topic of one
    // partition.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let cli = Cli { cluster: cluster.addrs().join(",") };
    let out = cli.ok(&["topic", "create", "quickstart"], b"").await;
    assert!(out.starts_with("created topic quickstart\n"), "{out}");
    assert!(out.contains("partitions:        1\n"), "{out}");

    // Phase 2: three stdin lines become offsets 0..2, acknowledged
    // quorum-fsynced.
    let before = now_ms();
    let out = cli.ok(&["produce", "quickstart"], b"a\nb\nc\n").await;
    let after = now_ms();
    let durable_index = out
        .strip_prefix("quickstart/0 offsets 0..2 durability=QUORUM_FSYNCED durable_index=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|index| index.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("unexpected produce report: {out:?}"));
    assert!(durable_index > 0, "{out}");

    // Phase 3: `keel consume --from-beginning` prints exactly the lines.
    assert_eq!(cli.ok(&["consume", "quickstart", "--from-beginning"], b"").await, "a\nb\nc\n");

    // Phase 4: `--format json` prints one object per record: partition,
    // offset, the leader's timestamp, the value, and no key, tag or headers.
    let out = cli.ok(&["consume", "quickstart", "--from-beginning", "--format", "json"], b"").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, (line, value)) in lines.iter().zip(["a", "b", "c"]).enumerate() {
        let (record, stamped) = json_record(line);
        assert!((before..=after).contains(&stamped), "{line}: stamped outside {before}..={after}");
        let want = json!({"partition": 0, "offset": i, "key": null, "value": value, "tag": null, "headers": []});
        assert_eq!(record, want, "{line}");
    }

    // Phase 5: a record with a key, a tag and a header reads back through
    // a tag filter and a key lookup.
    let keyed = ["produce", "quickstart", "--key", "user-7", "--tag", "vip", "--header", "trace=abc"];
    let out = cli.ok(&keyed, b"d\n").await;
    assert!(out.starts_with("quickstart/0 offsets 3..3 durability=QUORUM_FSYNCED "), "{out}");
    let out = cli.ok(&["consume", "quickstart", "--from-beginning", "--tag", "vip", "--format", "json"], b"").await;
    let (record, _) = json_record(out.trim_end());
    let want = json!({"partition": 0, "offset": 3, "key": "user-7", "value": "d", "tag": "vip",
        "headers": [{"key": "trace", "value": "abc"}]});
    assert_eq!(record, want, "{out}");
    assert_eq!(cli.ok(&["lookup", "quickstart", "--key", "user-7"], b"").await, "d\n");

    // Phase 6: a consumer group commits what it printed, so consuming again
    // in the group prints nothing; `keel group show` names offset and lag.
    assert_eq!(cli.ok(&["consume", "quickstart", "--group", "readers"], b"").await, "a\nb\nc\nd\n");
    assert_eq!(cli.ok(&["consume", "quickstart", "--group", "readers"], b"").await, "", "all was read");
    let out = cli.ok(&["group", "show", "readers", "quickstart"], b"").await;
    let row: Vec<&str> = out.lines().last().unwrap_or_default().split_whitespace().collect();
    assert_eq!(row, ["0", "4", "4", "0"], "partition, committed, end, lag: {out}");
    let client = cluster_client(&cluster);
    assert_eq!(client.fetch_offset("readers", "quickstart", 0).await.expect("fetch offset"), Some(4));

    // Phase 7: `keel cluster status` exits 0 naming the leader and the
    // three voters, in text and in JSON.
    let out = cli.ok(&["cluster", "status"], b"").await;
    let named = format!("leader: node {leader} at {} ", cluster.grpc(leader));
    assert!(out.starts_with(&named), "expected {named:?} first: {out}");
    for id in cluster.ids() {
        let member = format!("node {id:<4} {:<24} voter", cluster.grpc(id));
        assert!(out.contains(&member), "expected {member:?}: {out}");
    }
    let out = cli.ok(&["cluster", "status", "--json"], b"").await;
    let status: Value = serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(status["leader_id"], json!(leader), "{out}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{out}");

    // Phase 8: refused commands exit non-zero with the node's own message
    // and code, and change nothing.
    let unknown = ["unknown topic `nosuch`", "UNKNOWN_TOPIC"];
    cli.fails(&["consume", "nosuch", "--from-beginning"], b"", &unknown).await;
    cli.fails(&["produce", "nosuch"], b"x\n", &unknown).await;
    let exists = ["topic `quickstart` already exists", "TOPIC_EXISTS"];
    cli.fails(&["topic", "create", "quickstart"], b"", &exists).await;
    let bad_name = ["topic name `a b` contains ' '", "INVALID_ARGUMENT"];
    cli.fails(&["topic", "create", "a b"], b"", &bad_name).await;
    let past_end = ["offset 99 is out of range for quickstart/0: retained offsets are 0..4", "OFFSET_OUT_OF_RANGE"];
    cli.fails(&["group", "commit", "readers", "quickstart", "--partition", "0", "--offset", "99"], b"", &past_end)
        .await;
    assert_eq!(cli.ok(&["consume", "quickstart", "--from-beginning"], b"").await, "a\nb\nc\nd\n");
    assert_eq!(client.fetch_offset("readers", "quickstart", 0).await.expect("fetch offset"), Some(4));
    let topics: Vec<String> = client.list_topics().await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(topics, ["quickstart"]);

    // Phase 9 (README quickstart from here on): keyed lines all go to the
    // key's partition, crc32c(key) mod 3, at offsets 0..2.
    cli.ok(&["topic", "create", "orders", "--partitions", "3"], b"").await;
    let keyed_to = partition_for(b"customer-42", 3);
    let before = now_ms();
    let out = cli.ok(&["produce", "orders", "--key", "customer-42"], b"first\nsecond\nthird\n").await;
    let report = format!("orders/{keyed_to} offsets 0..2 durability=QUORUM_FSYNCED durable_index=");
    assert!(out.starts_with(&report) && out.lines().count() == 1, "expected {report:?}: {out}");

    // Phase 10: generated records and tagged lines go round-robin; every
    // partition reports its offsets, which add up to the records sent.
    let out = cli.ok(&["produce", "orders", "--count", "1000", "--size", "100"], b"").await;
    assert_eq!(report_counts(&out).values().sum::<u64>(), 1000, "{out}");
    assert_eq!(report_counts(&out).len(), 3, "round-robin reaches every partition: {out}");
    let out = cli.ok(&["produce", "orders", "--tag", "paid"], b"p1\np2\n").await;
    let tagged = report_counts(&out);
    assert_eq!(tagged.values().sum::<u64>(), 2, "{out}");

    // Phase 11: `--count 5` prints five records; one partition in JSON
    // starts with the three keyed lines.
    let out = cli.ok(&["consume", "orders", "--from-beginning", "--count", "5"], b"").await;
    assert_eq!(out.lines().count(), 5, "{out}");
    let partition = keyed_to.to_string();
    let out = cli.ok(&["consume", "orders", "--partition", &partition, "--format", "json"], b"").await;
    for (i, (line, value)) in out.lines().zip(["first", "second", "third"]).enumerate() {
        let (record, _) = json_record(line);
        let want = json!({"partition": keyed_to, "offset": i, "key": "customer-42", "value": value, "tag": null,
            "headers": []});
        assert_eq!(record, want, "{line}");
    }
    let records = out.lines().count() as u64;
    assert!(records > 300, "partition {keyed_to} holds the keyed lines and a third of 1000: {records}");

    // Phase 12: a tag filter with a group prints exactly the tagged lines
    // and commits, per partition, the offset after the last one it printed
    // (the tagged lines were the last records of their partitions, so no
    // lag there); a partition it printed nothing of has no commit.
    let out = cli.ok(&["consume", "orders", "--tag", "paid || refunded", "--group", "billing"], b"").await;
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["p1", "p2"], "{out}");
    let out = cli.ok(&["group", "show", "billing", "orders"], b"").await;
    let rows: Vec<Vec<&str>> = out.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for row in &rows {
        let [partition, committed, end, lag] = row[..] else { panic!("a row of four cells: {out}") };
        let partition: u32 = partition.parse().unwrap_or_else(|_| panic!("a partition number: {out}"));
        if tagged.contains_key(&partition) {
            assert_eq!((committed, lag), (end, "0"), "partition {partition} was read to its end: {out}");
        } else {
            assert_eq!((committed, lag), ("-", "-"), "partition {partition} printed nothing: {out}");
        }
    }

    // Phase 13: lookups by key and by timestamp.
    assert_eq!(cli.ok(&["lookup", "orders", "--key", "customer-42"], b"").await, "first\nsecond\nthird\n");
    let at = before.to_string();
    let out = cli.ok(&["lookup", "orders", "--timestamp", &at], b"").await;
    assert_eq!(out.lines().count(), 3, "one line per partition: {out}");
    let keyed_line = format!("orders/{keyed_to} offset 0 timestamp_ms ");
    assert!(out.lines().any(|l| l.starts_with(&keyed_line)), "expected {keyed_line:?}: {out}");
    let later = (now_ms() + 3_600_000).to_string();
    let out = cli.ok(&["lookup", "orders", "--timestamp", &later, "--partition", &partition], b"").await;
    assert!(out.starts_with(&format!("orders/{keyed_to} offset {records} (end:")), "past every record: {out}");

    // Phase 14: `keel topic describe` shows every partition's offsets: all
    // 1005 records.
    let out = cli.ok(&["topic", "describe", "orders"], b"").await;
    assert!(out.starts_with("topic orders (incarnation "), "{out}");
    let ends: u64 = out
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells.len() == 5 && cells[0].parse::<u32>().is_ok()).then(|| cells[2].parse::<u64>().expect("END"))
        })
        .sum();
    assert_eq!(ends, 1005, "{out}");
}

/// Records per partition in `keel produce`'s report lines
/// (`T/P offsets A..B durability=...`).
#[track_caller]
fn report_counts(out: &str) -> BTreeMap<u32, u64> {
    out.lines()
        .map(|line| {
            let parse = || -> Option<(u32, u64)> {
                let (topic_partition, rest) = line.split_once(" offsets ")?;
                let partition = topic_partition.rsplit_once('/')?.1.parse().ok()?;
                let (first, last) = rest.split_once(' ')?.0.split_once("..")?;
                let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
                Some((partition, last - first + 1))
            };
            parse().unwrap_or_else(|| panic!("not a produce report line: {line:?}"))
        })
        .collect()
}

/// Writes a properties file in `dir`: a first line pointing the node's data
/// at `dir/data` (so no command can touch anything else), then `lines`.
fn properties(dir: &Path, name: &str, lines: &str) -> String {
    let path = dir.join(name);
    let text = format!("store.path.commitlog={}\n{lines}", dir.join("data").display());
    std::fs::write(&path, text).expect("write a properties file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_file_is_refused_naming_key_value_and_line() {
    let dir = tempfile::Builder::new().prefix("keel-config-").tempdir().expect("create a temp dir");

    // Phase 1: a good file passes `keel config check`, which prints the
    // effective configuration (so the failures below are the bad lines'
    // doing, not the files').
    let good = properties(dir.path(), "good.properties", "# a node\nnode.id=2\n");
    let out = keel_ok(&["config", "check", &good], b"").await;
    assert!(out.lines().any(|l| l == "node.id=2"), "{out}");
    assert!(out.lines().any(|l| l == "flush.disk.type=SYNC_FLUSH"), "{out}");

    // Phase 2: a bad value, of a store key or of a node key: `keel config
    // check` and `keel node --config` both exit non-zero naming the file
    // and line, the key and the value.
    let cases = [
        ("store.properties", "node.id=1\n\nflush.disk.type=FAST\n", 4, "`flush.disk.type`", "\"FAST\""),
        ("node.properties", "# comment\nnode.id=1\ncluster.bootstrap=yes\n", 4, "`cluster.bootstrap`", "\"yes\""),
        ("size.properties", "segment.bytes = 100\n", 2, "`segment.bytes`", "\"100\""),
    ];
    for (name, lines, line, key, value) in cases {
        let path = properties(dir.path(), name, lines);
        let at = format!("{path}:{line}:");
        keel_fails(&["config", "check", &path], b"", &[&at, key, value]).await;
        keel_fails(&["node", "--config", &path], b"", &[&at, key, value]).await;
    }

    // Phase 3: an unknown (misspelt) key is refused naming the file, line
    // and key; a line that is no `key=value` naming the file, line and text.
    let path = properties(dir.path(), "unknown.properties", "node.id=1\n# next: a typo\nflush.disk.typ=SYNC_FLUSH\n");
    let at = format!("{path}:4:");
    let needles = [at.as_str(), "unknown configuration key", "`flush.disk.typ`"];
    keel_fails(&["config", "check", &path], b"", &needles).await;
    keel_fails(&["node", "--config", &path], b"", &needles).await;
    let path = properties(dir.path(), "garbage.properties", "node.id=1\njust some words\n");
    let at = format!("{path}:3:");
    keel_fails(&["config", "check", &path], b"", &[&at, "just some words"]).await;
    keel_fails(&["node", "--config", &path], b"", &[&at, "just some words"]).await;

    // Phase 4: neither the check nor a refused node created the data
    // directory: a node stops on its configuration before touching disk.
    assert!(!dir.path().join("data").exists(), "a refused configuration created {}", dir.path().join("data").display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_lags_sends_writes_to_the_leader() {
    // Phase 1: a cluster with two topics that every node has applied.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    client.create_topic("settled", keep_forever(1)).await.expect("create settled");
    client.create_topic("reborn", keep_forever(1)).await.expect("create reborn");
    let mut settled = Expected::default();
    produce_checked(&producer, &mut settled, "settled", 0, vec![Record::new("s0").timestamp_ms(T0)]).await;
    sync_all(&cluster).await;

    // Phase 2: while one follower is paused, the other two nodes create two
    // topics, delete a third and append to the settled one; the follower
    // resumes, and at once four writes reach it from a client that knows
    // only it. Each is the leader's to judge (the topics exist or are gone,
    // the offset is the end), so the follower must send each on
    // (NOT_LEADER) rather than refuse it from its own state, which has not
    // caught up yet: all four succeed.
    cluster.pause(follower);
    client.create_topic("fresh", keep_forever(1)).await.expect("create fresh");
    client.create_topic("doomed", keep_forever(1)).await.expect("create doomed");
    client.delete_topic("reborn").await.expect("delete reborn");
    produce_checked(&producer, &mut settled, "settled", 0, vec![Record::new("s1").timestamp_ms(T0 + 1)]).await;
    cluster.resume(follower);
    let lagging = node_client(&cluster, follower);
    let via_lagging = lagging.producer();
    let (stored, committed, deleted, recreated) = tokio::join!(
        via_lagging.produce("fresh", 0, vec![Record::new("f0").timestamp_ms(T0)]),
        lagging.commit_offset("g", "settled", 0, 2),
        lagging.delete_topic("doomed"),
        lagging.create_topic("reborn", keep_forever(2)),
    );
    let mut failed = Vec::new();
    match stored {
        Ok(ack) => assert_eq!((ack.base_offset, ack.count), (0, 1), "the first record of fresh"),
        Err(e) => failed.push(format!("produce to fresh/0: {e}")),
    }
    if let Err(e) = committed {
        failed.push(format!("commit settled/0 at its end offset 2: {e}"));
    }
    if let Err(e) = deleted {
        failed.push(format!("delete doomed: {e}"));
    }
    if let Err(e) = recreated {
        failed.push(format!("create reborn again (deleted while node{follower} was paused): {e}"));
    }
    assert!(
        failed.is_empty(),
        "writes through node{follower} just after its pause were refused:\n{}",
        failed.join("\n")
    );

    // Phase 3: every node then holds what those writes did.
    sync_all(&cluster).await;
    for (id, node) in &node_clients(&cluster) {
        assert_eq!(node.fetch_offset("g", "settled", 0).await.expect("fetch offset"), Some(2), "node{id}");
        refused(node.describe_topic("doomed").await, ErrorCode::UnknownTopic, &["doomed"]);
        assert_eq!(node.describe_topic("reborn").await.expect("describe reborn").partitions, 2, "node{id}");
        let fresh = node.fetch(Fetch::new("fresh", 0, 0)).await.expect("fetch fresh");
        assert_eq!(fresh.records.iter().map(|r| &r.value[..]).collect::<Vec<_>>(), [b"f0"], "node{id}");
    }

    // Phase 4: reads of a topic a restarted follower has not applied yet are
    // sent to the leader too (NOT_LEADER), never refused as unknown: a
    // client that knows only that follower describes, fetches and looks up
    // the new topic as soon as the follower answers again.
    cluster.kill(follower);
    client.create_topic("newer", keep_forever(1)).await.expect("create newer");
    let ack = producer
        .produce("newer", 0, vec![Record::new("n0").key("k").timestamp_ms(T0)])
        .await
        .expect("produce to newer");
    cluster.restart(follower).await;
    let lagging = node_client(&cluster, follower);
    let (described, fetched, looked_up) = tokio::join!(
        lagging.describe_topic("newer"),
        lagging.fetch(Fetch::new("newer", 0, 0)),
        lagging.lookup_by_key("newer", 0, &b"k"[..], 10),
    );
    assert_eq!(described.expect("describe newer through the lagging follower").partitions, 1);
    let fetched = fetched.expect("fetch newer through the lagging follower");
    assert!(fetched.end_offset <= ack.base_offset + 1, "end offset {} past what was stored", fetched.end_offset);
    let looked_up = looked_up.expect("lookup in newer through the lagging follower");
    assert!(looked_up.iter().all(|r| &r.value[..] == b"n0"), "lookup returned another record");
}

// ---- What a client written from keel.proto alone meets (issue 16, item 5) ----

/// A raw client to node `id` with tonic's defaults, as a client generated
/// from keel.proto alone would have: no per-call timeout (so no
/// `grpc-timeout` header unless a request sets one) and the default 4 MiB
/// decoding limit.
async fn default_client(cluster: &Cluster, id: u64) -> KeelClient<Channel> {
    let addr = format!("http://{}", cluster.grpc(id));
    KeelClient::connect(addr.clone()).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A codec that sends and receives message bodies as they are, so a test
/// can send bytes no protobuf encoder would write, as a foreign client
/// might.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `method` of the Keel service on node `id` with `body` as the
/// request's bytes, and returns the answer's bytes.
async fn raw_call(cluster: &Cluster, id: u64, method: &str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let addr = format!("http://{}", cluster.grpc(id));
    let channel = Endpoint::from_shared(addr.clone())
        .expect("host:port makes a valid URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap_or_else(|e| panic!("channel to {addr} not ready: {e}"));
    let path = format!("/keel.client.v1.Keel/{method}");
    let path = PathAndQuery::try_from(path.as_str()).expect("a valid gRPC path");
    grpc.unary(tonic::Request::new(body), path, RawBytes).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_ahead_of_its_node_waits_for_min_index_then_answers_not_caught_up() {
    // Phase 1: a cluster with a topic holding one record, applied everywhere,
    // and a raw client to a follower.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    client.create_topic("reads", keep_forever(1)).await.expect("create reads");
    client.create_topic("other", keep_forever(1)).await.expect("create other");
    producer.produce("reads", 0, vec![Record::new("r0")]).await.expect("produce r0");
    sync_all(&cluster).await;
    let raw = default_client(&cluster, follower).await;

    // Phase 2: with the default max_wait_ms (0), a fetch whose min_index is
    // the next log index waits for it, instead of answering OUT_OF_RANGE (on
    // which a Kafka-style consumer resets its position); it answers once a
    // write lands 500 ms later, and the write then reads back from there.
    let applied = applied_index(&cluster, follower, Instant::now() + SYNC_TIMEOUT).await;
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 1,
        min_index: applied + 1,
        ..proto::FetchRequest::default()
    };
    let mut behind = raw.clone();
    let (fetched, ack) = tokio::join!(behind.fetch(fetch), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        producer.produce("reads", 0, vec![Record::new("r1")]).await.expect("produce r1")
    });
    let fetched = fetched
        .unwrap_or_else(|s| panic!("a fetch one write ahead of node{follower} (applied {applied}): {s:?}"))
        .into_inner();
    assert!(fetched.applied_index > applied, "answered below its min_index: {fetched:?}");
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 1,
        min_index: ack.log_index,
        ..proto::FetchRequest::default()
    };
    let fetched = raw.clone().fetch(fetch).await.expect("fetch r1 at its log index").into_inner();
    assert_eq!(fetched.records.iter().map(|r| &r.value[..]).collect::<Vec<_>>(), [b"r1"]);

    // Phase 3: a min_index no node will reach is answered UNAVAILABLE with
    // NOT_CAUGHT_UP naming min_index and the applied index, after the
    // bound: max_wait_ms (300 ms) when set; else the call's deadline less a
    // margin (grpc-timeout 1 s), so the answer beats the caller's timeout;
    // else 5 s.
    let far = fetched.applied_index + 1_000_000;
    let ahead = |max_wait_ms: u32| proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 0,
        max_wait_ms,
        min_index: far,
        ..proto::FetchRequest::default()
    };
    let timed = |request: tonic::Request<proto::FetchRequest>| {
        let mut raw = raw.clone();
        async move {
            let started = Instant::now();
            let answer = raw.fetch(request).await;
            (answer, started.elapsed())
        }
    };
    let mut with_deadline = tonic::Request::new(ahead(0));
    with_deadline.set_timeout(Duration::from_secs(1));
    let (max_wait, deadline, neither) = tokio::join!(
        timed(tonic::Request::new(ahead(300))),
        timed(with_deadline),
        timed(tonic::Request::new(ahead(0))),
    );
    let far_text = far.to_string();
    for (what, (answer, took), at_least, below) in [
        ("max_wait_ms 300", max_wait, Duration::from_millis(280), Duration::from_secs(3)),
        ("grpc-timeout 1 s", deadline, Duration::from_millis(500), Duration::from_secs(1)),
        ("neither", neither, Duration::from_millis(4_500), Duration::from_secs(10)),
    ] {
        let status = refused_raw(answer, ErrorCode::NotCaughtUp, &[&far_text, "applied"]);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{what}: {status:?}");
        assert!(
            took >= at_least && took < below,
            "{what}: answered after {took:?}, not within {at_least:?}..{below:?}"
        );
    }

    // Phase 4: keel-client retries NOT_CAUGHT_UP (on the other nodes) until
    // its deadline, and then reports Unavailable, not a final refusal.
    let options = ClientOptions { call_timeout: Duration::from_secs(2), ..ClientOptions::default() };
    let impatient = Client::with_options(cluster.addrs(), options).expect("valid options");
    let error = impatient.fetch(Fetch::new("reads", 0, 0).min_index(far)).await.expect_err("no node reaches it");
    assert!(matches!(error, Error::Unavailable { attempts, .. } if attempts >= 2), "{error}");

    // Phase 5: the time spent waiting for min_index counts against
    // max_wait_ms: a fetch at the end of `reads`, one write ahead of its
    // node with max_wait_ms 3000, whose min_index a write to `other`
    // reaches 600 ms later, long-polls only for the rest of the 3000 ms
    // (not 600 + 3000).
    let applied = applied_index(&cluster, follower, Instant::now() + SYNC_TIMEOUT).await;
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 2,
        max_wait_ms: 3000,
        min_index: applied + 1,
        ..proto::FetchRequest::default()
    };
    let started = Instant::now();
    let mut behind = raw.clone();
    let (fetched, _) = tokio::join!(behind.fetch(fetch), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        producer.produce("other", 0, vec![Record::new("o0")]).await.expect("produce o0")
    });
    let took = started.elapsed();
    let fetched = fetched.expect("a long poll at the end of reads").into_inner();
    assert_eq!((fetched.records.len(), fetched.next_offset), (0, 2), "{fetched:?}");
    assert!(
        took >= Duration::from_millis(2_700) && took < Duration::from_millis(3_500),
        "the long poll took {took:?}: max_wait_ms 3000 must count the wait for min_index"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_request_body_is_invalid_argument_naming_the_problem() {
    // Phase 1: a cluster with a topic holding one record.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic("bodies", keep_forever(1)).await.expect("create bodies");
    client.producer().produce("bodies", 0, vec![Record::new("b0")]).await.expect("produce b0");

    // Phase 2: bodies that are no protobuf of any request type (a truncated
    // varint, a length past the end, both in a field number no request
    // has, and wire type 7), sent as a foreign client would, are each
    // answered INVALID_ARGUMENT with `keel-error: INVALID_ARGUMENT`, naming
    // the request type and what did not decode, as keel.proto promises for
    // every error.
    let bodies: [(&str, &'static [u8]); 3] = [
        ("invalid varint", &[15 << 3, 0xff]),
        ("buffer underflow", &[(15 << 3) | 2, 0x05, b'a']),
        ("invalid wire type value: 7", &[(1 << 3) | 7]),
    ];
    for method in ["Produce", "Fetch", "CreateTopic"] {
        for (problem, body) in bodies {
            let answer = raw_call(&cluster, leader, method, Bytes::from_static(body)).await;
            let request_type = format!("keel.client.v1.{method}Request");
            let status = refused_raw(answer, ErrorCode::InvalidArgument, &[&request_type, problem]);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{method} with {body:?}: {status:?}");
        }
    }

    // Phase 3: the same route serves a body that decodes, and the bad ones
    // stored nothing.
    let fetch = proto::FetchRequest { topic: "bodies".into(), ..proto::FetchRequest::default() };
    let answer = raw_call(&cluster, leader, "Fetch", fetch.encode_to_vec().into()).await.expect("a valid body");
    let fetched = proto::FetchResponse::decode(answer).expect("a FetchResponse");
    assert_eq!(fetched.records.iter().map(|r| &r.value[..]).collect::<Vec<_>>(), [b"b0"]);
    assert_eq!(fetched.end_offset, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_sequence_gap_is_refused_naming_the_expected_sequence_and_stores_nothing() {
    // Phase 1: a cluster with an empty topic, and a raw client to the leader.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic("seq", keep_forever(1)).await.expect("create seq");
    let mut raw = cluster.client(leader).await;
    let batch = |producer_id: u64, first_sequence: u64, count: u64| proto::ProduceRequest {
        topic: "seq".into(),
        partition: 0,
        records: (first_sequence..first_sequence + count)
            .map(|s| proto::Record { value: format!("p{producer_id}/s{s}").into(), ..proto::Record::default() })
            .collect(),
        producer_id,
        first_sequence,
    };
    let end_offset = |raw: &mut KeelClient<Channel>| {
        let mut raw = raw.clone();
        async move {
            let info = raw.describe_topic(proto::DescribeTopicRequest { name: "seq".into() }).await;
            info.expect("describe seq").into_inner().partition_info[0].end_offset
        }
    };

    // Phase 2: producer 77 stores sequences 0..4; a batch at sequence 100
    // is refused OUT_OF_ORDER_SEQUENCE naming the expected (5) and the
    // received sequence, with `keel-expected-sequence: 5`, and stores
    // nothing.
    let stored = raw.produce(batch(77, 0, 5)).await.expect("sequences 0..4").into_inner();
    assert_eq!((stored.base_offset, stored.count, stored.duplicate), (0, 5, false));
    let status = refused_raw(raw.produce(batch(77, 100, 1)).await, ErrorCode::OutOfOrderSequence, &["5", "100"]);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let expected = status.metadata().get("keel-expected-sequence").and_then(|v| v.to_str().ok());
    assert_eq!(expected, Some("5"), "the expected sequence of {status:?}");
    assert_eq!(end_offset(&mut raw).await, 5, "the refused batch was stored");

    // Phase 3: an exact retry of the stored batch is a duplicate with its
    // offsets; an overlap (sequence 3) is refused; the expected sequence (5)
    // is stored at offset 5.
    let retry = raw.produce(batch(77, 0, 5)).await.expect("an exact retry").into_inner();
    assert_eq!((retry.base_offset, retry.count, retry.duplicate), (0, 5, true));
    refused_raw(raw.produce(batch(77, 3, 4)).await, ErrorCode::OutOfOrderSequence, &["5", "3"]);
    let next = raw.produce(batch(77, 5, 1)).await.expect("the expected sequence").into_inner();
    assert_eq!((next.base_offset, next.duplicate), (5, false));

    // Phase 4: a producer id the cluster does not know may start at any
    // sequence, and then goes on from there.
    let fresh = raw.produce(batch(78, 1000, 1)).await.expect("a new producer at 1000").into_inner();
    assert_eq!(fresh.base_offset, 6);
    refused_raw(raw.produce(batch(78, 1002, 1)).await, ErrorCode::OutOfOrderSequence, &["1001", "1002"]);

    // Phase 5: keel-client's Producer goes on after a definite refusal of
    // its last batch: the refused range is taken again by the next batch,
    // which is stored.
    let producer = client.producer();
    producer.produce("seq", 0, vec![Record::new("ok 1")]).await.expect("produce ok 1");
    refused(
        producer.produce("seq", 0, vec![Record::new(vec![0u8; (1 << 20) + 1])]).await,
        ErrorCode::MessageTooLarge,
        &["1048577"],
    );
    let ack = producer.produce("seq", 0, vec![Record::new("ok 2")]).await.expect("produce after a refusal");
    assert_eq!(ack.base_offset, 8);

    // Phase 6: 64 batches of one producer sent side by side to the
    // partition reach the leader in any order, yet all are stored, once,
    // in the order they took their sequences (the leader stores no other).
    let sends = (0..64).map(|i| {
        let producer = producer.clone();
        async move { producer.produce("seq", 0, vec![Record::new(format!("c{i}"))]).await }
    });
    let acks = futures::future::join_all(sends).await;
    let mut last_index = ack.log_index;
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = ack.unwrap_or_else(|e| panic!("concurrent batch {i}: {e}"));
        assert_eq!((ack.base_offset, ack.duplicate), (9 + i as u64, false), "concurrent batch {i}");
        last_index = last_index.max(ack.log_index);
    }

    // Phase 7: every node holds exactly what was acknowledged, once.
    let mut want: Vec<String> = (0..6).map(|s| format!("p77/s{s}")).collect();
    want.extend(["p78/s1000".to_string(), "ok 1".into(), "ok 2".into()]);
    want.extend((0..64).map(|i| format!("c{i}")));
    for (id, node) in &node_clients(&cluster) {
        let read = read_from(node, "seq", 0, 0, last_index).await;
        let values: Vec<String> = read.records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
        assert_eq!(values, want, "node{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_with_a_huge_max_bytes_fits_a_client_with_the_default_4_mib_limit() {
    // Phase 1: a partition holding 6 MiB: 96 records of 64 KiB, all with
    // the same key.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    let producer = client.producer();
    client.create_topic("big", keep_forever(1)).await.expect("create big");
    let value = |i: u64| binary(64 << 10, i as u32);
    for first in (0..96u64).step_by(16) {
        let records = (first..first + 16).map(|i| Record::new(value(i)).key("blob")).collect();
        producer.produce("big", 0, records).await.expect("produce 16 records of 64 KiB");
    }

    // Phase 2: a client with tonic's default 4 MiB decoding limit fetches
    // with max_bytes u32::MAX from offset 0, then from each next_offset:
    // every answer decodes and is under 4 MiB yet holds many records, and
    // together they return every record exactly once, in order.
    let mut raw = default_client(&cluster, leader).await;
    let mut offset = 0;
    let mut got = Vec::new();
    let mut fetches = 0;
    loop {
        let request =
            proto::FetchRequest { topic: "big".into(), offset, max_bytes: u32::MAX, ..proto::FetchRequest::default() };
        let fetched = raw
            .fetch(request)
            .await
            .unwrap_or_else(|s| panic!("fetch at {offset} with max_bytes u32::MAX: {s:?}"))
            .into_inner();
        fetches += 1;
        assert!(fetched.encoded_len() < 4 << 20, "a {}-byte answer", fetched.encoded_len());
        assert!(fetched.records.len() > 1, "an answer of {} record(s) at {offset}", fetched.records.len());
        assert_eq!(fetched.next_offset, fetched.records.last().map_or(offset, |r| r.offset + 1));
        got.extend(fetched.records);
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            break;
        }
        assert!(fetches < 10, "no end after {fetches} fetches");
    }
    assert!(fetches >= 2, "6 MiB came in one answer");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..96).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.value, value(r.offset), "offset {}", r.offset);
    }

    // Phase 3: a lookup matching all 6 MiB also fits, and keeps the newest
    // records (as its limit does), oldest first.
    let request =
        proto::LookupByKeyRequest { topic: "big".into(), key: Bytes::from_static(b"blob"), ..Default::default() };
    let found = raw.lookup_by_key(request).await.expect("a lookup matching 6 MiB").into_inner();
    assert!(found.encoded_len() < 4 << 20, "a {}-byte lookup answer", found.encoded_len());
    let offsets: Vec<u64> = found.records.iter().map(|r| r.offset).collect();
    assert!(offsets.len() > 1 && offsets.last() == Some(&95), "{offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
}

/// The members (id, address, voter) and leader every node reports, and the
/// digest of its log up to `upto` (admin HTTP): one value when the nodes
/// form one cluster.
async fn one_cluster(cluster: &Cluster, upto: u64) -> (Vec<(u64, String, bool)>, u64, String) {
    let mut views = Vec::new();
    for id in cluster.ids() {
        let info = cluster.cluster_info(id).await.unwrap_or_else(|e| panic!("node{id}: {e}"));
        let mut members: Vec<(u64, String, bool)> =
            info.members.iter().map(|m| (m.id, m.addr.clone(), m.voter)).collect();
        members.sort_unstable();
        let path = format!("/api/v1/storage/digest?from=1&upto={upto}");
        let digest = common::http::get(&cluster.admin(id), &path).unwrap_or_else(|e| panic!("node{id}: {e}"));
        assert_eq!(digest.status, 200, "node{id}: {digest:?}");
        let sha = digest.json()["sha256"].as_str().unwrap_or_default().to_string();
        views.push((members, info.leader_id, sha));
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "the nodes disagree: {views:#?}");
    assert_ne!(views[0].1, 0, "no leader");
    views.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_changes_that_double_count_a_node_or_shrink_the_quorum_are_refused_over_grpc_and_the_cli() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic("m", keep_forever(1)).await.expect("create topic");
    let records: Vec<Record> = (0..20).map(|i| Record::new(format!("r{i}"))).collect();
    let ack = client.producer().produce("m", 0, records).await.expect("produce");
    sync_all(&cluster).await;
    let before = one_cluster(&cluster, ack.log_index).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("a follower");
    let taken = cluster.grpc(follower);
    let port = taken.rsplit_once(':').map(|(_, p)| p.to_string()).expect("host:port");

    // Phase 1: the reproduction over gRPC: id 4 at a member's
    // address, as written and by another name, is refused naming both.
    for addr in [taken.clone(), format!("localhost:{port}")] {
        let who = format!("node {follower} at {taken}");
        refused(client.add_node(4, &addr, true).await, ErrorCode::InvalidArgument, &["node 4 at", &who, "twice"]);
    }

    // Phase 2: an id that is already a member is refused with its address;
    // so is an address that does not resolve, naming it.
    refused(client.add_node(follower, &taken, true).await, ErrorCode::InvalidArgument, &["already a member", &taken]);
    let one = cluster.grpc(1);
    refused(client.add_node(1, &taken, true).await, ErrorCode::InvalidArgument, &["node 1 is already a member", &one]);
    let nowhere = "no-such-host.invalid:9092";
    refused(client.add_node(4, nowhere, true).await, ErrorCode::InvalidArgument, &[nowhere]);

    // Phase 3: InitCluster with two members at one address is refused
    // naming both (checked before the "already initialised" refusal).
    let a = cluster.grpc(1);
    let members = vec![
        proto::Member { id: 1, addr: a.clone(), voter: true },
        proto::Member { id: 2, addr: a.clone(), voter: true },
    ];
    refused(client.init_cluster(members).await, ErrorCode::InvalidArgument, &["node 1 at", "node 2 at", &a]);

    // Phase 4: removing a voter of three, a follower or the leader, needs
    // force; the refusal says how many voters would remain. So says the CLI.
    for victim in [follower, leader] {
        refused(client.remove_node(victim, false).await, ErrorCode::InvalidArgument, &["2 voters", "force"]);
    }
    let cli = Cli { cluster: cluster.addrs().join(",") };
    cli.fails(&["cluster", "remove-node", &follower.to_string()], b"", &["2 voters", "force"]).await;
    let help = keel_ok(&["cluster", "remove-node", "--help"], b"").await;
    assert!(help.contains("--force") && help.contains("fewer than three voters"), "{help}");

    // Phase 5: a node that does not catch up (something listens, but no
    // keel node) fails within the 30 s bound, saying so, and leaves no
    // learner behind.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let silent_addr = silent.local_addr().expect("address").to_string();
    let started = Instant::now();
    refused(
        client.add_node(4, &silent_addr, true).await,
        ErrorCode::InvalidArgument,
        &["did not catch up", &silent_addr, "removed again"],
    );
    assert!(started.elapsed() < Duration::from_secs(45), "the refusal took {:?}", started.elapsed());
    drop(silent);

    // Phase 6: after all of that the cluster is unchanged.
    assert_eq!(one_cluster(&cluster, ack.log_index).await, before);

    // Phase 7: with force (the CLI's --force) the follower goes, and added
    // back at its own address it is a voter again without force.
    let out = cli.ok(&["cluster", "remove-node", &follower.to_string(), "--force"], b"").await;
    assert!(out.contains(&format!("node {follower} removed")), "{out}");
    let info = client.add_node(follower, &taken, true).await.expect("add the follower back");
    assert_eq!(info.members.iter().filter(|m| m.voter).count(), 3, "{info:?}");
    let deadline = Instant::now() + ELECTION;
    loop {
        let views: Vec<_> = futures::future::join_all(cluster.ids().map(|id| cluster.cluster_info(id))).await;
        if views.iter().all(|v| v.as_ref().is_ok_and(|i| i.members.len() == 3 && i.leader_id != 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle: {views:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sync_all(&cluster).await;
    let after = one_cluster(&cluster, ack.log_index).await;
    assert_eq!((&after.0, &after.2), (&before.0, &before.2), "members or log differ");
}
