//! What the node tells of its topics and members, in keel.proto's types:
//! the gRPC answers (DescribeTopic, ClusterInfo, membership changes) and
//! the admin API's status and topics panel show the same.

use std::collections::BTreeSet;

use keel_proto::client as pb;
use tonic::Status;

use super::grpc_status::reject_status;
use super::state::State;

/// A topic as DescribeTopic and the admin API show it.
pub fn topic_info(s: &State, name: &str) -> Result<pb::TopicInfo, Status> {
    let t = s.topic(name).map_err(reject_status)?;
    let partition_info = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| pb::PartitionInfo {
            partition: i as u32,
            start_offset: p.cq.start(),
            end_offset: p.cq.end(),
            bytes: p.bytes,
        })
        .collect();
    let groups = s
        .groups
        .iter()
        .filter(|((_, topic, _), _)| topic == name)
        .map(|((group, _, partition), &committed)| {
            let end = t.partitions.get(*partition as usize).map_or(0, |p| p.cq.end());
            pb::GroupLag { group: group.clone(), partition: *partition, committed, lag: end.saturating_sub(committed) }
        })
        .collect();
    Ok(pb::TopicInfo {
        name: t.name.clone(),
        incarnation: t.incarnation,
        partitions: t.config.partitions,
        retention_ms: t.config.retention_ms,
        retention_bytes: t.config.retention_bytes,
        max_message_bytes: t.config.max_message_bytes,
        partition_info,
        groups,
    })
}

/// Every member, voters marked (ClusterInfo, membership answers and the admin status).
pub fn members_of(membership: &keel_raft_log::Membership) -> Vec<pb::Member> {
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership.nodes().map(|(id, n)| pb::Member { id: *id, addr: n.addr.clone(), voter: voters.contains(id) }).collect()
}
