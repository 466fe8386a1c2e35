//! The disk reserve (`store.reserve.bytes`) on a real three-node cluster,
//! each node's data on a small tmpfs of its own (needs root: the test fails
//! saying so otherwise, it never skips). A ballast file takes the leader's
//! volume below the reserve: produce and topic creation are refused with
//! RESOURCE_EXHAUSTED naming free bytes, the reserve and the key, the
//! advice says so, the CLI prints it, and what is stored stays as it was
//! and readable. Deleting the ballast lets writes through again, with no
//! restart. A follower below its reserve keeps replicating and says so in
//! its advice.
//!
//! Every wait is bounded in time and every loop in count; no assertion is
//! about speed.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, Setup, ballast, free_bytes, http};
use keel_client::proto::{ProduceRequest, Record as PbRecord, TopicConfig};
use keel_client::{Client, Error, ErrorCode, Fetch, Record};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(30);
const FETCH_WAIT: Duration = Duration::from_secs(20);
const MAX_FETCHES: usize = 1_000;
const VOLUME_BYTES: u64 = 48 << 20;
const RESERVE_BYTES: u64 = 16 << 20;
const TOPIC: &str = "full";
const STORED: u64 = 300;

fn status(cluster: &Cluster, id: u64) -> Value {
    let r = http::get(&cluster.admin(id), "/api/v1/status").unwrap_or_else(|e| panic!("node{id}: status: {e}"));
    assert_eq!(r.status, 200, "node{id}: status: {r:?}");
    r.json()
}

/// The `disk_reserve` advice of node `id`, if it gives one.
fn reserve_advice(cluster: &Cluster, id: u64) -> Option<Value> {
    let s = status(cluster, id);
    let advice = s["advice"].as_array().unwrap_or_else(|| panic!("node{id}: status without advice: {s}"));
    advice.iter().find(|a| a["rule"] == "disk_reserve").cloned()
}

/// Every record of the topic's partition 0 as node `id` serves it.
async fn read_all(cluster: &Cluster, id: u64, min_index: u64) -> Vec<(u64, Vec<u8>)> {
    let client = Client::connect(vec![cluster.grpc(id)]).expect("valid address");
    let (mut out, mut offset) = (Vec::new(), 0u64);
    for _ in 0..MAX_FETCHES {
        let fetch = Fetch::new(TOPIC, 0, offset).min_index(min_index).max_wait(FETCH_WAIT);
        let fetched = client.fetch(fetch).await.unwrap_or_else(|e| panic!("node{id}: fetch at {offset}: {e}"));
        out.extend(fetched.records.into_iter().map(|r| (r.offset, r.value.to_vec())));
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            return out;
        }
    }
    panic!("node{id}: not read to the end in {MAX_FETCHES} fetches");
}

fn digest(cluster: &Cluster, id: u64, upto: u64) -> Value {
    let path = format!("/api/v1/storage/digest?from=1&upto={upto}");
    let r = http::get(&cluster.admin(id), &path).unwrap_or_else(|e| panic!("node{id}: GET {path}: {e}"));
    assert_eq!(r.status, 200, "node{id}: GET {path}: {r:?}");
    r.json()
}

/// `keel produce TOPIC` with `input` on stdin, bounded in time by the
/// client's own deadline; returns (success, stdout, stderr).
fn cli_produce(cluster: &Cluster, input: &[u8]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.args(["produce", TOPIC, "--cluster", &cluster.addrs().join(",")]);
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("KEEL_") {
            command.env_remove(variable);
        }
    }
    command.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0").env("NO_COLOR", "1");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel produce");
    child.stdin.take().expect("piped").write_all(input).expect("write keel produce's stdin");
    let out = child.wait_with_output().expect("wait for keel produce");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_reserve_the_leader_refuses_writes_with_resource_exhausted_and_resumes_once_space_is_freed() {
    // Phase 1: three nodes on 48 MiB volumes with a 16 MiB reserve, a
    // topic, and records stored while there is room.
    let reserve = RESERVE_BYTES.to_string();
    let extra = [("segment.bytes", "1048576"), ("max.message.bytes", "65536"), ("store.reserve.bytes", &reserve)];
    let cluster = Cluster::start_with(3, &extra, Setup { tmpfs_bytes: Some(VOLUME_BYTES), ..Setup::default() }).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = Client::connect(cluster.addrs()).expect("valid addresses");
    let config = TopicConfig { partitions: 1, retention_ms: -1, retention_bytes: -1, max_message_bytes: 0 };
    client.create_topic(TOPIC, config).await.expect("create the topic");
    let producer = client.producer();
    let mut last_index = 0;
    for n in 0..STORED / 3 {
        let records = (0..3).map(|i| Record::new(format!("m{}", n * 3 + i))).collect();
        last_index = producer.produce(TOPIC, 0, records).await.expect("produce with room to spare").log_index;
    }
    let before = read_all(&cluster, leader, last_index).await;
    assert_eq!(before.len() as u64, STORED);
    assert!(reserve_advice(&cluster, leader).is_none(), "no reserve advice with room to spare");

    // Phase 2: a ballast takes the leader's volume to half the reserve.
    let data = cluster.dir(leader);
    let free = free_bytes(&data);
    assert!(free > RESERVE_BYTES, "the volume starts above the reserve: {free} free");
    let leader_ballast = ballast(&data, free - RESERVE_BYTES / 2);
    let free_now = free_bytes(&data);
    assert!(free_now < RESERVE_BYTES, "the ballast took the volume below the reserve: {free_now} free");

    // Phase 3: produce is refused, as a final error naming free bytes,
    // reserve and key; on the wire it is gRPC RESOURCE_EXHAUSTED.
    let err = producer.produce(TOPIC, 0, vec![Record::new("refused")]).await.expect_err("produce below the reserve");
    let Error::Server { code: ErrorCode::ResourceExhausted, message } = &err else {
        panic!("expected a RESOURCE_EXHAUSTED refusal, got {err:?}");
    };
    for part in ["bytes free", &format!("below the reserve of {RESERVE_BYTES} bytes"), "store.reserve.bytes"] {
        assert!(message.contains(part), "the refusal does not name {part:?}: {message}");
    }
    let mut raw = cluster.client(leader).await;
    let request = ProduceRequest {
        topic: TOPIC.into(),
        partition: 0,
        records: vec![PbRecord { value: b"raw".to_vec().into(), ..PbRecord::default() }],
        ..ProduceRequest::default()
    };
    let status = raw.produce(request).await.expect_err("a raw produce below the reserve");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let err = client.create_topic("another", config).await.expect_err("create topic below the reserve");
    assert_eq!(err.code(), Some(ErrorCode::ResourceExhausted), "{err}");

    // Phase 4: the CLI says why, and exits non-zero.
    let (ok, _, stderr) = cli_produce(&cluster, b"cli-refused\n");
    assert!(!ok, "keel produce succeeded below the reserve: {stderr}");
    for part in ["not stored", "RESOURCE_EXHAUSTED", "store.reserve.bytes"] {
        assert!(stderr.contains(part), "keel produce's stderr does not name {part:?}: {stderr}");
    }

    // Phase 5: the advice says the disk is below the reserve, and what to do.
    let advice = reserve_advice(&cluster, leader).expect("the leader advises on its reserve");
    assert_eq!(advice["severity"], "critical", "{advice}");
    assert_eq!(advice["threshold"].as_f64(), Some(RESERVE_BYTES as f64), "{advice}");
    assert!(advice["measured"].as_f64().is_some_and(|m| m < RESERVE_BYTES as f64), "{advice}");
    let text = advice["message"].as_str().expect("a message");
    for part in ["below the reserve", "store.reserve.bytes", "RESOURCE_EXHAUSTED", "retention"] {
        assert!(text.contains(part), "the advice does not name {part:?}: {text}");
    }

    // Phase 6: nothing refused was stored; what was stored is unchanged and
    // readable on every node, every node still runs, and the logs agree.
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node{id} stopped while the leader's disk was below the reserve");
        assert_eq!(read_all(&cluster, id, last_index).await, before, "node{id}'s records changed");
    }
    let committed = cluster.cluster_info(leader).await.expect("the leader answers").applied_index;
    let digests: Vec<Value> = cluster.ids().map(|id| digest(&cluster, id, committed)).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ: {digests:?}");

    // Phase 7: deleting the ballast lets writes through again, no restart.
    std::fs::remove_file(&leader_ballast).expect("delete the ballast");
    assert!(free_bytes(&data) > RESERVE_BYTES, "deleting the ballast freed the volume");
    let ack = producer.produce(TOPIC, 0, vec![Record::new("after")]).await.expect("produce once space is freed");
    assert_eq!(ack.base_offset, STORED, "the refused records took no offsets");
    let (ok, stdout, stderr) = cli_produce(&cluster, b"cli-after\n");
    assert!(ok, "keel produce after freeing space: {stderr}");
    assert!(stdout.contains(&format!("{TOPIC}/0 offsets {}..{}", STORED + 1, STORED + 1)), "{stdout}");
    client.create_topic("another", config).await.expect("create topic once space is freed");
    assert!(reserve_advice(&cluster, leader).is_none(), "the reserve advice is gone once space is freed");

    // Phase 8: a follower below its reserve keeps replicating (the
    // leader's disk decides) and says so in its advice.
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes");
    let fdata = cluster.dir(follower);
    let follower_ballast = ballast(&fdata, free_bytes(&fdata) - RESERVE_BYTES / 2);
    let ack = producer.produce(TOPIC, 0, vec![Record::new("follower-low")]).await.expect("the leader has room");
    let after = read_all(&cluster, follower, ack.log_index).await;
    assert_eq!(after.last().map(|r| r.1.as_slice()), Some(&b"follower-low"[..]), "the follower replicated");
    assert!(reserve_advice(&cluster, follower).is_some(), "the follower advises on its reserve");
    std::fs::remove_file(&follower_ballast).expect("delete the follower's ballast");
    eprintln!(
        "disk reserve: {STORED} stored before, refused at {free_now} free < {RESERVE_BYTES} reserve, resumed at \
         offset {STORED}"
    );
}
