//! The cluster harness against real `keel node` processes: a leader is
//! elected, survives the loss of a node, and a node comes back.

mod common;

use std::time::Duration;

use common::Cluster;
use keel_proto::client::ClusterInfoRequest;

const ELECTION: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_elect_a_leader_lose_it_and_take_it_back() {
    // Phase 1: a fresh three-node cluster elects one leader, and every node
    // lists all three members.
    let cluster = Cluster::start(3, &[("segment.bytes", "8388608")]).await;
    let first = cluster.wait_for_leader(ELECTION).await;
    for id in cluster.ids() {
        // A follower may hear of the leader (a heartbeat) a moment before
        // the membership entry reaches it over the replication stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let members = loop {
            let info = cluster.client(id).await.cluster_info(ClusterInfoRequest {}).await.expect("cluster info");
            let info = info.into_inner();
            assert_eq!(info.node_id, id);
            let mut members: Vec<u64> = info.members.iter().map(|m| m.id).collect();
            members.sort_unstable();
            if members == [1, 2, 3] || tokio::time::Instant::now() >= deadline {
                break members;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(members, [1, 2, 3], "node{id}'s view of the membership");
    }

    // Phase 2: killing the leader leaves two nodes that elect another one.
    cluster.kill(first);
    assert!(!cluster.is_running(first));
    let second = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(second, first);

    // Phase 3: the killed node restarts from its files, and all three agree
    // on a leader again.
    cluster.restart(first).await;
    let third = cluster.leader().await;

    // Phase 4: a paused follower does not stop the others; resumed, it agrees again.
    let follower = cluster.ids().find(|&id| id != third).expect("three nodes, one leader");
    cluster.pause(follower);
    assert_eq!(cluster.wait_for_leader(ELECTION).await, third);
    cluster.resume(follower);
    cluster.wait_for_leader(ELECTION).await;

    // Phase 5: SIGTERM stops a node cleanly.
    cluster.stop(follower);
    assert!(!cluster.is_running(follower));
}
