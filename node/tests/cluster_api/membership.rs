//! Membership changes that would double-count a node or shrink the quorum
//! are refused over gRPC and the CLI.

use super::*;

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
