//! The client gRPC handlers, in process: decoded requests with arbitrary
//! field values (topic names from a small set or arbitrary, offsets, sizes,
//! tags, keys, configs, sequences) sent to a real one-node cluster
//! ([`keel_node::server::in_process`]) on a scratch directory. Errors are
//! answers; a panic anywhere in the node (handler, proposer, state machine,
//! store, Raft) is a bug.
//!
//! Not sent: InitCluster and AddNode (they would make the node dial the
//! addresses they carry), and the peer (Raft) service. Long-polls are cut
//! to at most 20 ms so an input stays fast. Every [`RECYCLE_EVERY`] inputs
//! the node is shut down and a fresh one started, so its log and memory
//! stay small over a long run.

#![no_main]

use std::sync::Mutex;

use arbitrary::Arbitrary;
use bytes::Bytes;
use keel_fuzz::{runtime, scratch_dir};
use keel_node::server::{InProcess, in_process};
use keel_proto::client::{self as pb, keel_server::Keel as _};
use libfuzzer_sys::fuzz_target;
use tonic::Request;

const RECYCLE_EVERY: u64 = 5_000;
const NAMES: [&str; 3] = ["orders", "audit", "t.1"];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn get(self) -> String {
        match self {
            Self::Known(k) => NAMES[usize::from(k) % NAMES.len()].to_string(),
            Self::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    tag: String,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: u64,
}

#[derive(Arbitrary, Debug)]
enum Call {
    Produce {
        topic: Name,
        partition: u32,
        records: Vec<Rec>,
        producer_id: u64,
        first_sequence: u64,
    },
    Fetch {
        topic: Name,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        tag_filter: String,
        min_index: u64,
    },
    LookupByKey {
        topic: Name,
        partition: u32,
        key: Vec<u8>,
        limit: u32,
    },
    OffsetForTimestamp {
        topic: Name,
        partition: u32,
        timestamp_ms: u64,
    },
    CreateTopic {
        name: Name,
        config: Option<(u32, i64, i64, u32)>,
    },
    DeleteTopic {
        name: Name,
    },
    ListTopics,
    DescribeTopic {
        name: Name,
    },
    CommitOffset {
        group: Name,
        topic: Name,
        partition: u32,
        offset: u64,
    },
    FetchOffset {
        group: Name,
        topic: Name,
        partition: u32,
    },
    ClusterInfo,
    RemoveNode {
        id: u64,
        force: bool,
    },
}

struct Node {
    node: InProcess,
    _dir: tempfile::TempDir,
    inputs: u64,
}

fn node_slot() -> &'static Mutex<Option<Node>> {
    static NODE: Mutex<Option<Node>> = Mutex::new(None);
    &NODE
}

/// Small partitions mostly, so produce and fetch meet.
fn partition(p: u32) -> u32 {
    if p >= 1 << 31 { p } else { p % 3 }
}

async fn call(node: &InProcess, c: Call) {
    let s = node.client();
    match c {
        Call::Produce { topic, partition: p, records, producer_id, first_sequence } => {
            let n = records.len();
            let records = records
                .into_iter()
                .map(|r| pb::Record {
                    key: Bytes::from(r.key),
                    value: Bytes::from(r.value),
                    tag: r.tag,
                    headers: r.headers.into_iter().map(|(key, v)| pb::Header { key, value: Bytes::from(v) }).collect(),
                    timestamp_ms: r.timestamp_ms,
                })
                .collect();
            let req = pb::ProduceRequest {
                topic: topic.get(),
                partition: partition(p),
                records,
                producer_id,
                first_sequence,
            };
            if let Ok(r) = s.produce(Request::new(req)).await {
                assert_eq!(r.get_ref().count as usize, n, "produce stored another count");
            }
        }
        Call::Fetch { topic, partition: p, offset, max_bytes, max_wait_ms, tag_filter, min_index } => {
            let req = pb::FetchRequest {
                topic: topic.get(),
                partition: partition(p),
                offset: offset % 64,
                max_bytes,
                max_wait_ms: max_wait_ms % 21,
                tag_filter,
                min_index,
            };
            let from = req.offset;
            if let Ok(r) = s.fetch(Request::new(req)).await {
                let r = r.into_inner();
                assert!(r.start_offset <= r.end_offset, "{r:?}");
                assert!(r.next_offset >= from && r.next_offset <= r.end_offset, "next {} from {from}", r.next_offset);
                assert!(r.records.windows(2).all(|w| w[0].offset < w[1].offset), "records out of order");
                assert!(
                    r.records.iter().all(|x| x.offset >= from && x.offset < r.next_offset),
                    "record outside the read"
                );
            }
        }
        Call::LookupByKey { topic, partition: p, key, limit } => {
            let req = pb::LookupByKeyRequest {
                topic: topic.get(),
                partition: partition(p),
                key: Bytes::from(key.clone()),
                limit,
            };
            if let Ok(r) = s.lookup_by_key(Request::new(req)).await {
                assert!(r.get_ref().records.iter().all(|x| x.key[..] == key[..]), "lookup returned another key");
            }
        }
        Call::OffsetForTimestamp { topic, partition: p, timestamp_ms } => {
            let req = pb::OffsetForTimestampRequest { topic: topic.get(), partition: partition(p), timestamp_ms };
            if let Ok(r) = s.offset_for_timestamp(Request::new(req)).await
                && r.get_ref().found
            {
                assert!(r.get_ref().timestamp_ms >= timestamp_ms);
            }
        }
        Call::CreateTopic { name, config } => {
            let config = config.map(|(partitions, retention_ms, retention_bytes, max_message_bytes)| pb::TopicConfig {
                // Mostly small: a topic holds partitions in memory.
                partitions: if partitions % 16 == 0 { partitions } else { partitions % 8 },
                retention_ms,
                retention_bytes,
                max_message_bytes,
            });
            let _ = s.create_topic(Request::new(pb::CreateTopicRequest { name: name.get(), config })).await;
        }
        Call::DeleteTopic { name } => {
            let _ = s.delete_topic(Request::new(pb::DeleteTopicRequest { name: name.get() })).await;
        }
        Call::ListTopics => {
            let _ = s.list_topics(Request::new(pb::ListTopicsRequest {})).await;
        }
        Call::DescribeTopic { name } => {
            if let Ok(t) = s.describe_topic(Request::new(pb::DescribeTopicRequest { name: name.get() })).await {
                let t = t.into_inner();
                assert_eq!(t.partition_info.len() as u32, t.partitions);
            }
        }
        Call::CommitOffset { group, topic, partition: p, offset } => {
            let req =
                pb::CommitOffsetRequest { group: group.get(), topic: topic.get(), partition: partition(p), offset };
            let _ = s.commit_offset(Request::new(req)).await;
        }
        Call::FetchOffset { group, topic, partition: p } => {
            let req = pb::FetchOffsetRequest { group: group.get(), topic: topic.get(), partition: partition(p) };
            let _ = s.fetch_offset(Request::new(req)).await;
        }
        Call::ClusterInfo => {
            let r = s.cluster_info(Request::new(pb::ClusterInfoRequest {})).await.expect("cluster info always answers");
            assert_eq!(r.get_ref().leader_id, 1, "the one node leads");
        }
        Call::RemoveNode { id, force } => {
            let _ = s.remove_node(Request::new(pb::RemoveNodeRequest { id, force })).await;
        }
    }
}

fuzz_target!(|calls: Vec<Call>| {
    let mut slot = node_slot().lock().expect("the node's lock");
    runtime().block_on(async {
        if slot.as_ref().is_some_and(|n| n.inputs >= RECYCLE_EVERY) {
            let old = slot.take().expect("checked above");
            old.node.shutdown().await.expect("the node shuts down");
        }
        if slot.is_none() {
            let dir = scratch_dir();
            let node = in_process(dir.path()).await.expect("a one-node cluster starts");
            *slot = Some(Node { node, _dir: dir, inputs: 0 });
        }
        let n = slot.as_mut().expect("started above");
        n.inputs += 1;
        for c in calls.into_iter().take(16) {
            call(&n.node, c).await;
        }
    });
});
