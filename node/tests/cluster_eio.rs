//! An I/O error on one node of a real three-node cluster: the `keel`
//! binary `cargo test` builds carries the EIO failpoint layer
//! (`KEEL_FAULT_EIO`, armed here with a trigger file per node). Under
//! produce load the failpoint strikes one node's fdatasync (the leader) or
//! pwrite (a follower); that node must exit non-zero with an error naming
//! the operation and the file, nothing acknowledged may be lost, the other
//! two keep serving, and once restarted without the fault it recovers from
//! its files and catches up to the same log.
//!
//! Every wait is bounded in time and every loop in count; no assertion is
//! about speed.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, Setup, eventually, http};
use keel_client::proto::TopicConfig;
use keel_client::{Client, Fetch, FetchedRecord, Producer, Record};

const ELECTION: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(60);
/// A failed node has this long to notice and exit.
const EXIT: Duration = Duration::from_secs(30);
const FETCH_WAIT: Duration = Duration::from_secs(20);
const MAX_FETCHES: usize = 10_000;
const TOPIC: &str = "eio";
/// Bounds of the load: each producer sends at most this many batches, and
/// stops early when told to.
const MAX_BATCHES: u64 = 3_000;
const PRODUCERS: u32 = 2;
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn trigger(node_dir: &Path) -> std::path::PathBuf {
    node_dir.join("eio-trigger")
}

/// Every node's failpoint: `op` fails with EIO while its trigger file exists.
async fn cluster_with_failpoints(op: &'static str) -> Cluster {
    let env =
        move |_: u64, dir: &Path| vec![("KEEL_FAULT_EIO".to_string(), format!("{op}:when={}", trigger(dir).display()))];
    // Small segments: the load rolls several, so the fault may strike a roll too.
    Cluster::start_with(
        3,
        &[("segment.bytes", "262144"), ("max.message.bytes", "65536")],
        Setup { env: Some(&env), ..Setup::default() },
    )
    .await
}

#[derive(Default)]
struct LoadLog {
    /// (partition, offset, payload, log index) of every acknowledged record.
    acked: Vec<(u32, u64, String, u64)>,
    /// Payloads with an unknown outcome: stored at most once.
    unknown: Vec<String>,
    /// Definite refusals of valid records (none expected).
    refused: Vec<String>,
}

/// Sends `p{index}-{n}` one batch of 1-3 records at a time to partition
/// `index` until `stop` or `MAX_BATCHES`.
async fn load(producer: Producer, index: u32, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> LoadLog {
    let mut log = LoadLog::default();
    let mut n = 0u64;
    for batch in 0..MAX_BATCHES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let count = 1 + batch % 3;
        let payloads: Vec<String> = (n..n + count).map(|s| format!("p{index}-{s}")).collect();
        n += count;
        let records = payloads.iter().map(|p| Record::new(p.clone())).collect();
        match producer.produce(TOPIC, index, records).await {
            Ok(ack) => {
                for (i, p) in payloads.into_iter().enumerate() {
                    log.acked.push((index, ack.base_offset + i as u64, p, ack.log_index));
                }
                acked.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) if e.is_outcome_unknown() => log.unknown.extend(payloads),
            Err(e) => log.refused.push(format!("{payloads:?}: {e}")),
        }
    }
    log
}

async fn read_partition(cluster: &Cluster, id: u64, partition: u32, min_index: u64) -> Vec<FetchedRecord> {
    let client = Client::connect(vec![cluster.grpc(id)]).expect("valid address");
    let (mut records, mut offset, mut end) = (Vec::new(), 0u64, None);
    for _ in 0..MAX_FETCHES {
        let fetch = Fetch::new(TOPIC, partition, offset).min_index(min_index).max_wait(FETCH_WAIT);
        let fetched = client.fetch(fetch).await.unwrap_or_else(|e| panic!("node{id}: fetch at {offset}: {e}"));
        let end = *end.get_or_insert(fetched.end_offset);
        records.extend(fetched.records);
        offset = fetched.next_offset;
        if offset >= end {
            return records;
        }
    }
    panic!("node{id}: partition {partition} not read to its end in {MAX_FETCHES} fetches");
}

fn digest(cluster: &Cluster, id: u64, upto: u64) -> serde_json::Value {
    let path = format!("/api/v1/storage/digest?from=1&upto={upto}");
    let r = http::get(&cluster.admin(id), &path).unwrap_or_else(|e| panic!("node{id}: GET {path}: {e}"));
    assert_eq!(r.status, 200, "node{id}: GET {path}: {r:?}");
    r.json()
}

/// The whole scenario for one victim (`leader` or a follower) and one
/// failing operation.
async fn eio_stops_the_node_and_loses_nothing(victim_is_leader: bool, op: &'static str, verb: &str) {
    // Phase 1: a cluster whose nodes all carry an (unarmed) failpoint, a topic.
    let cluster = cluster_with_failpoints(op).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let victim = if victim_is_leader { leader } else { cluster.ids().find(|&i| i != leader).expect("3 nodes") };
    let client = Client::connect(cluster.addrs()).expect("valid addresses");
    let config = TopicConfig { partitions: PRODUCERS, retention_ms: -1, retention_bytes: -1, max_message_bytes: 0 };
    client.create_topic(TOPIC, config).await.expect("create the topic");

    // Phase 2: producers load the cluster; once some records are acked, the
    // failpoint strikes the victim.
    let (stop, acked_count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> =
        (0..PRODUCERS).map(|i| tokio::spawn(load(client.producer(), i, stop.clone(), acked_count.clone()))).collect();
    eventually(LOAD_TIMEOUT, "100 records acknowledged", async || acked_count.load(Ordering::Relaxed) >= 100).await;
    std::fs::write(trigger(&cluster.node_dir(victim)), b"").expect("arm the failpoint");
    let acked_at_fault = acked_count.load(Ordering::Relaxed);

    // Phase 3: the victim exits non-zero, saying which operation on which file failed.
    let status = cluster.wait_for_exit(victim, EXIT).await;
    assert!(!status.success() && status.code().is_some(), "node{victim} must exit with an error code, got {status}");
    let log = std::fs::read_to_string(cluster.log(victim)).expect("read the victim's log");
    let stopped = log
        .lines()
        .find(|l| l.starts_with("Error: ") && l.contains("stopped"))
        .unwrap_or_else(|| panic!("node{victim}'s log has no final error line:\n{}", cluster.log_tail(victim)));
    for part in ["(fail-stop)", verb, &cluster.dir(victim).display().to_string(), "Input/output error"] {
        assert!(stopped.contains(part), "node{victim}'s final error does not name {part:?}: {stopped}");
    }
    eprintln!("node{victim} ({}) stopped: {stopped}", if victim_is_leader { "leader" } else { "follower" });

    // Phase 4: the other two keep serving: more records are acknowledged.
    eventually(LOAD_TIMEOUT, "200 more records acknowledged by the two survivors", async || {
        acked_count.load(Ordering::Relaxed) >= acked_at_fault + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in tasks {
        let log = tokio::time::timeout(LOAD_TIMEOUT, task).await.expect("the load ends in bounded time");
        logs.push(log.expect("a load task does not panic"));
    }
    let refused: Vec<&String> = logs.iter().flat_map(|l| &l.refused).collect();
    assert!(refused.is_empty(), "valid records were refused: {refused:#?}");
    let acked: Vec<&(u32, u64, String, u64)> = logs.iter().flat_map(|l| &l.acked).collect();
    let unknown: HashSet<&str> = logs.iter().flat_map(|l| &l.unknown).map(String::as_str).collect();
    let survivor_leader = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(survivor_leader, victim, "a stopped node cannot lead");

    // Phase 5: restarted without the fault, the victim recovers from its
    // files and catches up.
    std::fs::remove_file(trigger(&cluster.node_dir(victim))).expect("disarm the failpoint");
    cluster.clear_env(victim);
    cluster.restart(victim).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let last_ack = acked.iter().map(|a| a.3).max().expect("records were acknowledged");
    let committed = cluster.cluster_info(leader).await.expect("the leader answers").applied_index.max(last_ack);
    for id in cluster.ids() {
        eventually(CATCH_UP, &format!("node{id} applies {committed}"), async || {
            cluster.cluster_info(id).await.is_ok_and(|i| i.applied_index >= committed)
        })
        .await;
    }

    // Phase 6: on every node, each acknowledged record is at its offset,
    // nothing is stored twice or unsent, and the replicas' logs are equal.
    let sent: HashSet<&str> = acked.iter().map(|a| a.2.as_str()).chain(unknown.iter().copied()).collect();
    for id in cluster.ids() {
        let mut at: HashMap<String, (u32, u64)> = HashMap::new();
        for partition in 0..PRODUCERS {
            for r in read_partition(&cluster, id, partition, committed).await {
                let text = String::from_utf8(r.value.to_vec()).expect("UTF-8 payloads");
                assert!(sent.contains(text.as_str()), "node{id}: {text:?} was never sent");
                if let Some(first) = at.insert(text.clone(), (partition, r.offset)) {
                    panic!("node{id}: {text:?} stored twice, at {first:?} and ({partition}, {})", r.offset);
                }
            }
        }
        for (partition, offset, payload, _) in &acked {
            assert_eq!(
                at.get(payload),
                Some(&(*partition, *offset)),
                "node{id}: acknowledged {payload:?} lost or moved"
            );
        }
    }
    let digests: Vec<_> = cluster.ids().map(|id| digest(&cluster, id, committed)).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ after the restart: {digests:?}");
    eprintln!(
        "{op} EIO on node{victim}: {} acknowledged ({acked_at_fault} before the fault), {} unknown, digests equal \
         up to {committed}",
        acked.len(),
        unknown.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_eio_on_the_leader_stops_it_loses_no_ack_and_it_recovers_after_restart() {
    eio_stops_the_node_and_loses_nothing(true, "fsync", "fdatasync").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pwrite_eio_on_a_follower_stops_it_loses_no_ack_and_it_recovers_after_restart() {
    eio_stops_the_node_and_loses_nothing(false, "write", "pwrite").await;
}
