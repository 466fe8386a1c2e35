//! A follower that lags still sends writes to the leader.

use super::*;

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
