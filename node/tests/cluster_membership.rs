//! Membership changes against a real three-node cluster: remove a node,
//! bring it back empty as a learner, promote it, and lose another node.

mod common;

use std::time::Duration;

use common::Cluster;
use keel_client::proto::TopicConfig;
use keel_client::{Client, Fetch, Record};

const ELECTION: Duration = Duration::from_secs(30);

async fn member_ids(client: &Client) -> (Vec<u64>, Vec<u64>) {
    let info = client.cluster_info().await.expect("cluster info");
    let voters = info.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let learners = info.members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
    (voters, learners)
}

async fn read_all(cluster: &Cluster, node: u64, topic: &str, min_index: u64) -> Vec<Vec<u8>> {
    let client = Client::connect(vec![cluster.grpc(node)]).expect("client");
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..1000 {
        let f = Fetch::new(topic, 0, offset).max_wait(Duration::from_millis(200)).min_index(min_index);
        let fetched = client.fetch(f).await.expect("fetch");
        out.extend(fetched.records.iter().map(|r| r.value.to_vec()));
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_comes_back_as_a_learner_then_a_voter() {
    let cluster = Cluster::start(3, &[("segment.bytes", "8388608")]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = Client::connect(cluster.addrs()).expect("client");
    client.create_topic("m", TopicConfig { partitions: 1, ..Default::default() }).await.expect("create topic");
    let producer = client.producer();
    let values: Vec<Vec<u8>> = (0..50).map(|i| format!("before-{i}").into_bytes()).collect();
    producer.produce("m", 0, values.iter().cloned().map(Record::new).collect()).await.expect("produce");

    // Phase 1: removing a follower leaves two voters that keep serving.
    let gone = cluster.ids().find(|&id| id != leader).expect("a follower");
    client.remove_node(gone, true).await.expect("remove node");
    let (voters, learners) = member_ids(&client).await;
    assert!(!voters.contains(&gone) && !learners.contains(&gone), "node{gone} still a member: {voters:?} {learners:?}");
    let after: Vec<Vec<u8>> = (0..50).map(|i| format!("after-{i}").into_bytes()).collect();
    let ack = producer.produce("m", 0, after.iter().cloned().map(Record::new).collect()).await.expect("produce");
    assert_eq!(ack.base_offset, 50);

    // Phase 2: the removed node, wiped and restarted, joins as a learner and
    // copies the whole log; promoted, it is a voter.
    cluster.kill(gone);
    std::fs::remove_dir_all(cluster.dir(gone)).expect("wipe the removed node");
    std::fs::create_dir_all(cluster.dir(gone)).expect("recreate its data dir");
    cluster.restart(gone).await;
    client.add_node(gone, &cluster.grpc(gone), false).await.expect("add learner");
    let (_, learners) = member_ids(&client).await;
    assert_eq!(learners, vec![gone], "node{gone} is not the learner");
    let all: Vec<Vec<u8>> = values.iter().chain(after.iter()).cloned().collect();
    assert_eq!(read_all(&cluster, gone, "m", ack.log_index).await, all, "the learner's copy differs");
    client.add_node(gone, &cluster.grpc(gone), true).await.expect("promote");
    let (mut voters, learners) = member_ids(&client).await;
    voters.sort_unstable();
    assert_eq!(voters, vec![1, 2, 3]);
    assert!(learners.is_empty(), "learners left: {learners:?}");

    // Phase 3: with the old leader gone, the re-added node is part of the
    // quorum that elects a new leader and stores more.
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(new_leader, leader);
    let ack = producer.produce("m", 0, vec![Record::new(&b"last"[..])]).await.expect("produce after the loss");
    assert_eq!(ack.base_offset, 100);
    let mut expected = all;
    expected.push(b"last".to_vec());
    assert_eq!(read_all(&cluster, gone, "m", ack.log_index).await, expected);

    // Phase 4: bad membership requests are refused with a reason.
    let err = client.remove_node(42, true).await.expect_err("removed a node that is not a member");
    assert!(err.to_string().contains("node 42 is not a member"), "{err}");
    let err = client.add_node(0, "127.0.0.1:1", true).await.expect_err("added node 0");
    assert!(err.to_string().contains("id"), "{err}");
}
