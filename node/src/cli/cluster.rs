//! `keel cluster status|init|add-node|remove-node`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_client::NodeInfo;
use keel_client::proto::{ClusterInfoResponse, Member, MembershipResponse};
use serde_json::{Value, json};

use super::ClusterOpt;

/// How long `cluster status` waits for each node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Ask every node (those given with --cluster and every member they
    /// name): leader, term, members, and each node's last, commit, applied
    /// and durable log index and flush policy, one row per node. Exits 0
    /// only when a leader is known and every member answered with a role;
    /// otherwise non-zero, naming the members that did not
    Status {
        /// Print one JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Initialise a fresh cluster through the first --cluster node
    Init {
        /// A voter of the new cluster, as ID@HOST:PORT (repeat for each) [default: that node alone]
        #[arg(long = "member", value_name = "ID@HOST:PORT", value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Add a node: as a learner, then promoted to voter once it caught up.
    /// Refused: an id that is already a member (except a learner at the same
    /// address, which is promoted), an address another member has (as
    /// written or resolved), one that does not resolve or where nothing
    /// listens. A node that has not caught up within 30 s is removed again
    AddNode {
        /// Node id (not 0)
        id: u64,
        /// The node's client address (HOST:PORT)
        addr: String,
        /// Keep it a learner (no vote)
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster. Removing a voter that would leave
    /// fewer than three voters (any voter of a three-voter cluster, the
    /// leader included) needs --force: acknowledgements would then rest on
    /// fewer machines (two voters: the loss of either stops writes; one: a
    /// single disk holds every write). The last voter is never removed
    RemoveNode {
        /// Node id
        id: u64,
        /// Remove the voter even if fewer than three voters remain
        #[arg(long)]
        force: bool,
    },
}

fn parse_member(s: &str) -> Result<Member, String> {
    let (id, addr) = s.split_once('@').ok_or_else(|| format!("expected ID@HOST:PORT, got {s:?}"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("node id {id:?} is not a number"))?;
    if id == 0 {
        return Err("node id 0 is reserved".into());
    }
    let addr = addr.trim();
    if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        return Err(format!("{addr:?} is not HOST:PORT"));
    }
    Ok(Member { id, addr: addr.to_string(), voter: true })
}

pub async fn cluster(args: ClusterArgs) -> Result<()> {
    let client = args.cluster.client()?;
    match args.command {
        ClusterCommand::Status { json } => status(&client, json).await,
        ClusterCommand::Init { members } => {
            let r = client.init_cluster(members).await.context("initialise the cluster")?;
            println!("cluster initialised (log index {})", r.log_index);
            print_members(&r);
            Ok(())
        }
        ClusterCommand::AddNode { id, addr, learner } => {
            let r = client.add_node(id, &addr, !learner).await.with_context(|| format!("add node {id} at {addr}"))?;
            let role = if learner { "learner" } else { "voter" };
            println!("node {id} at {addr} added as {role} (log index {})", r.log_index);
            print_members(&r);
            Ok(())
        }
        ClusterCommand::RemoveNode { id, force } => {
            let r = client.remove_node(id, force).await.with_context(|| format!("remove node {id}"))?;
            println!("node {id} removed (log index {})", r.log_index);
            print_members(&r);
            Ok(())
        }
    }
}

fn print_members(r: &MembershipResponse) {
    let mut members = r.members.clone();
    members.sort_by_key(|m| m.id);
    for m in &members {
        println!("  node {:<4} {:<24} {}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
    }
}

/// The answer whose view counts: the highest term, preferring the node
/// that is itself the leader.
fn best_view(answers: &[NodeInfo]) -> Option<&ClusterInfoResponse> {
    answers
        .iter()
        .filter_map(|a| a.info.as_ref().ok())
        .max_by_key(|i| (i.term, i.leader_id != 0 && i.leader_id == i.node_id, i.leader_id != 0))
}

/// One row per node: a node that answered under two addresses (its
/// published and its internal one) shows once, under the first.
fn one_per_node(mut answers: Vec<NodeInfo>) -> Vec<NodeInfo> {
    let mut seen = Vec::new();
    answers.retain(|a| match &a.info {
        Ok(i) if seen.contains(&i.node_id) => false,
        Ok(i) => {
            seen.push(i.node_id);
            true
        }
        Err(_) => true,
    });
    answers
}

/// What keeps the cluster from being whole: members that did not answer,
/// or that answered without a role yet (term 0, not in a membership).
fn missing_members(answers: &[NodeInfo], view: &ClusterInfoResponse) -> Vec<String> {
    let mut members = view.members.clone();
    members.sort_by_key(|m| m.id);
    members
        .iter()
        .filter_map(|m| match answers.iter().filter_map(|a| a.info.as_ref().ok()).find(|i| i.node_id == m.id) {
            None => Some(format!("node {} at {} did not answer", m.id, m.addr)),
            Some(i) if i.term == 0 || role(i) == "none" => {
                Some(format!("node {} at {} has no role yet (term {})", m.id, m.addr, i.term))
            }
            Some(_) => None,
        })
        .collect()
}

async fn status(client: &keel_client::Client, json_out: bool) -> Result<()> {
    let answers = one_per_node(client.cluster_info_all(STATUS_TIMEOUT).await);
    let view = best_view(&answers);
    let leader = view.filter(|v| v.leader_id != 0);
    if json_out {
        let nodes: Vec<Value> = answers
            .iter()
            .map(|a| match &a.info {
                Ok(i) => json!({
                    "addr": a.addr,
                    "reachable": true,
                    "node_id": i.node_id,
                    "role": role(i),
                    "term": i.term,
                    "leader_id": i.leader_id,
                    "last_log_index": i.last_log_index,
                    "commit_index": i.commit_index,
                    "applied_index": i.applied_index,
                    "durable_index": i.durable_index,
                    "flush_policy": i.flush_policy,
                }),
                Err(e) => json!({ "addr": a.addr, "reachable": false, "error": e.to_string() }),
            })
            .collect();
        let members: Vec<Value> = view
            .map(|v| v.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect())
            .unwrap_or_default();
        let out = json!({
            "leader_id": leader.map(|l| l.leader_id),
            "leader_addr": leader.map(|l| l.leader_addr.clone()),
            "term": view.map(|v| v.term),
            "members": members,
            "nodes": nodes,
        });
        println!("{}", serde_json::to_string(&out).context("encode the status")?);
    } else {
        match leader {
            Some(l) => println!("leader: node {} at {} (term {})", l.leader_id, l.leader_addr, l.term),
            None => println!("leader: none known{}", view.map(|v| format!(" (term {})", v.term)).unwrap_or_default()),
        }
        if let Some(v) = view {
            println!("members:");
            let mut members = v.members.clone();
            members.sort_by_key(|m| m.id);
            for m in &members {
                println!("  node {:<4} {:<24} {}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
            }
        }
        println!("nodes:");
        println!(
            "  {:<24} {:>5} {:<9} {:>6} {:>10} {:>10} {:>10} {:>10}  FLUSH",
            "ADDRESS", "NODE", "ROLE", "TERM", "LAST", "COMMIT", "APPLIED", "DURABLE"
        );
        for a in &answers {
            match &a.info {
                Ok(i) => println!(
                    "  {:<24} {:>5} {:<9} {:>6} {:>10} {:>10} {:>10} {:>10}  {}",
                    a.addr,
                    i.node_id,
                    role(i),
                    i.term,
                    i.last_log_index,
                    i.commit_index,
                    i.applied_index,
                    i.durable_index,
                    i.flush_policy
                ),
                Err(e) => println!("  {:<24} unreachable: {e}", a.addr),
            }
        }
    }
    let Some(view) = leader else {
        bail!("no leader is known (no node answered, or an election is under way)");
    };
    let missing = missing_members(&answers, view);
    if !missing.is_empty() {
        bail!("the cluster is not whole: {}", missing.join("; "));
    }
    Ok(())
}

fn role(i: &ClusterInfoResponse) -> &'static str {
    if i.leader_id != 0 && i.leader_id == i.node_id {
        "leader"
    } else if i.members.iter().any(|m| m.id == i.node_id && !m.voter) {
        "learner"
    } else if i.members.iter().any(|m| m.id == i.node_id) {
        "follower"
    } else {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_as_id_at_address() {
        let m = parse_member("2@10.0.0.2:9092").expect("valid");
        assert_eq!((m.id, m.addr.as_str(), m.voter), (2, "10.0.0.2:9092", true));
        for bad in ["2", "x@a:1", "0@a:1", "2@a", "2@:1", "2@a:port"] {
            assert!(parse_member(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_leaders_own_answer_is_the_view() {
        let info = |node_id, leader_id, term| ClusterInfoResponse { node_id, leader_id, term, ..Default::default() };
        let answers = vec![
            NodeInfo { addr: "a:1".into(), info: Ok(info(1, 2, 5)) },
            NodeInfo { addr: "b:2".into(), info: Ok(info(2, 2, 5)) },
            NodeInfo { addr: "c:3".into(), info: Err(keel_client::Error::InvalidArgument("down".into())) },
            NodeInfo { addr: "d:4".into(), info: Ok(info(4, 0, 4)) },
        ];
        assert_eq!(best_view(&answers).map(|v| v.node_id), Some(2));
    }

    #[test]
    fn a_node_shows_once_and_a_member_without_a_role_or_answer_is_named() {
        let member = |id| Member { id, addr: format!("10.0.0.{id}:9091"), voter: true };
        let members = vec![member(1), member(2), member(3)];
        let info = |node_id, term| ClusterInfoResponse {
            node_id,
            leader_id: 1,
            term,
            members: if term == 0 { Vec::new() } else { members.clone() },
            ..Default::default()
        };
        let node = |addr: &str, info| NodeInfo { addr: addr.into(), info };
        // Phase: node 1 and 2 answered twice (published and internal address), node 3 is down.
        let answers = one_per_node(vec![
            node("127.0.0.1:9091", Ok(info(1, 5))),
            node("127.0.0.1:9092", Ok(info(2, 5))),
            node("127.0.0.1:9093", Err(keel_client::Error::InvalidArgument("down".into()))),
            node("10.0.0.1:9091", Ok(info(1, 5))),
            node("10.0.0.2:9091", Ok(info(2, 5))),
            node("10.0.0.3:9091", Err(keel_client::Error::InvalidArgument("down".into()))),
        ]);
        let addrs: Vec<&str> = answers.iter().map(|a| a.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093", "10.0.0.3:9091"]);
        let view = best_view(&answers).expect("a view").clone();
        assert_eq!(missing_members(&answers, &view), ["node 3 at 10.0.0.3:9091 did not answer"]);

        // Phase: node 3 answers but has no role yet (term 0).
        let answers = vec![
            node("a", Ok(info(1, 5))),
            node("b", Ok(info(2, 5))),
            node("c", Ok(ClusterInfoResponse { node_id: 3, ..Default::default() })),
        ];
        assert_eq!(missing_members(&answers, &view), ["node 3 at 10.0.0.3:9091 has no role yet (term 0)"]);

        // Phase: all three with a role: whole.
        let answers = vec![node("a", Ok(info(1, 5))), node("b", Ok(info(2, 5))), node("c", Ok(info(3, 5)))];
        assert!(missing_members(&answers, &view).is_empty());
    }
}
