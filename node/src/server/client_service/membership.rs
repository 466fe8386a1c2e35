//! The rules a membership change must pass before the leader proposes it,
//! and the bounded wait for a new node to catch up.
//!
//! Each member must be its own machine. Raft counts one acknowledgement per
//! voter id, so two ids whose addresses reach one process make that process
//! count twice toward every quorum (issue 16: id 4 added at node 2's
//! address, then node 2 answered the AppendEntries meant for node 4). An
//! address is compared with every other member's as written and as
//! resolved: any socket address the two share is a clash. A member whose
//! address no longer resolves (a node being replaced, whose host is gone) is
//! compared as written only, so that it can still be replaced.
//!
//! Fewer than three voters is allowed, but only on purpose: a removal that
//! leaves fewer needs `force` (acknowledgements would rest on fewer
//! machines). Adding never needs it, so a one-node cluster grows to three.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, Membership};

use super::super::state_machine::Raft;

/// How long the leader waits for a new node to hold the log up to the
/// entry that added it. A node that has not by then is removed again: it
/// would otherwise be a member nobody can reach, held in place by the one
/// membership change allowed at a time.
pub(super) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one membership entry (each half of a joint change) may take to
/// commit before the change is reported as of unknown outcome.
pub(super) const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long name resolution of one address may take (a hung resolver must
/// not hold the membership lock).
pub(super) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connection to a new node's address may take to open.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Below this many voters a removal needs `force`: three is the smallest
/// cluster that survives the loss of a machine.
pub(super) const SAFE_VOTERS: usize = 3;

/// Why a membership change is refused; the message names every node and
/// address involved, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("address {0:?} is not host:port")]
    NotHostPort(String),
    #[error("address {addr} did not resolve within {} s", RESOLVE_TIMEOUT.as_secs())]
    ResolveTimeout { addr: String },
    #[error("address {addr} does not resolve: {reason}")]
    Unresolved { addr: String, reason: String },
    #[error("address {0} resolves to no address")]
    NoAddress(String),
    #[error("address {addr} resolves to {any}, which is where a server listens, not an address to dial")]
    Unspecified { addr: String, any: SocketAddr },
    #[error(
        "node {} at {} and node {} at {} have {how}: one process would answer for both ids and count twice \
         toward every quorum; each member must be its own node",
        new.0, new.1, old.0, old.1
    )]
    Clash { new: (u64, String), old: (u64, String), how: String },
    #[error("node {id} is listed twice (at {first} and at {second})")]
    ListedTwice { id: u64, first: String, second: String },
    #[error("node {0} is the last voter; a cluster needs at least one")]
    LastVoter(u64),
    #[error("{}", too_few_voters(*id, left))]
    TooFewVoters { id: u64, left: Vec<u64> },
    #[error("nothing accepts connections at {addr}: {reason}; start the node first")]
    NotListening { addr: String, reason: String },
    #[error("no connection to {addr} within {} s; start the node first", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
}

fn too_few_voters(id: u64, left: &[u64]) -> String {
    let n = left.len();
    let (rest, loss) = if n == 1 {
        ("that one machine alone (a single disk)", "its loss stops writes and may lose acknowledged data")
    } else {
        ("both remaining machines (each must store every write)", "the loss of either stops writes")
    };
    format!(
        "removing voter {id} would leave {n} voter{} ({}): acknowledgements would then rest on fewer machines, \
         on {rest}, and {loss}; set force to remove it anyway",
        if n == 1 { "" } else { "s" },
        left.iter().map(|v| format!("node {v}")).collect::<Vec<_>>().join(", "),
    )
}

/// `host:port` with a non-empty host and a port from 1 to 65535.
pub(super) fn check_host_port(addr: &str) -> Result<(), Refusal> {
    let ok =
        addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok { Ok(()) } else { Err(Refusal::NotHostPort(addr.to_string())) }
}

/// Every socket address `addr` resolves to, within `RESOLVE_TIMEOUT`; an
/// error naming the address otherwise. An unspecified address (0.0.0.0,
/// [::]) is refused: it is where a server listens, not where one is dialled.
pub(super) async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, Refusal> {
    let found = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Err(_) => return Err(Refusal::ResolveTimeout { addr: addr.to_string() }),
        Ok(Err(e)) => return Err(Refusal::Unresolved { addr: addr.to_string(), reason: e.to_string() }),
        Ok(Ok(found)) => found,
    };
    let mut sockets: Vec<SocketAddr> = found.collect();
    sockets.sort_unstable();
    sockets.dedup();
    if sockets.is_empty() {
        return Err(Refusal::NoAddress(addr.to_string()));
    }
    if let Some(&any) = sockets.iter().find(|s| s.ip().is_unspecified()) {
        return Err(Refusal::Unspecified { addr: addr.to_string(), any });
    }
    Ok(sockets)
}

/// A node, or a candidate for membership: its id, its address as written,
/// and the socket addresses it resolved to (`None`: it did not resolve, so
/// only the written form can be compared).
#[derive(Debug, Clone)]
pub(super) struct Addressed {
    pub id: u64,
    pub addr: String,
    pub sockets: Option<Vec<SocketAddr>>,
}

/// Whether two addresses reach the same place: equal as written (the host
/// compared without case), or sharing a resolved socket address.
fn same_place(a: &Addressed, b: &Addressed) -> Option<String> {
    if a.addr.eq_ignore_ascii_case(&b.addr) {
        return Some("the same address".to_string());
    }
    let (Some(x), Some(y)) = (&a.sockets, &b.sockets) else { return None };
    x.iter().find(|s| y.contains(s)).map(|s| format!("addresses that both resolve to {s}"))
}

/// Refuses `new` when another of `members` (not `new.id` itself) is at the
/// same place, naming both.
pub(super) fn check_clash(new: &Addressed, members: &[Addressed]) -> Result<(), Refusal> {
    for m in members.iter().filter(|m| m.id != new.id) {
        if let Some(how) = same_place(new, m) {
            return Err(Refusal::Clash { new: (new.id, new.addr.clone()), old: (m.id, m.addr.clone()), how });
        }
    }
    Ok(())
}

/// Refuses a list in which two members share an id or a place (InitCluster).
pub(super) fn check_distinct(members: &[Addressed]) -> Result<(), Refusal> {
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            if a.id == b.id {
                return Err(Refusal::ListedTwice { id: a.id, first: a.addr.clone(), second: b.addr.clone() });
            }
            check_clash(a, std::slice::from_ref(b))?;
        }
    }
    Ok(())
}

/// Refuses the removal of voter `id` from `voters` when it would leave none,
/// or fewer than `SAFE_VOTERS` without `force`.
pub(super) fn check_removal(voters: &BTreeSet<u64>, id: u64, force: bool) -> Result<(), Refusal> {
    if !voters.contains(&id) {
        return Ok(());
    }
    let left: Vec<u64> = voters.iter().copied().filter(|&v| v != id).collect();
    if left.is_empty() {
        return Err(Refusal::LastVoter(id));
    }
    if left.len() < SAFE_VOTERS && !force {
        return Err(Refusal::TooFewVoters { id, left });
    }
    Ok(())
}

/// Whether `membership` shows `change` made: the ids it promotes are voters,
/// the ids it removes are gone. (Only the changes `Change` makes.)
pub(super) fn made(change: &ChangeMembers<u64, BasicNode>, membership: &Membership<u64, BasicNode>) -> bool {
    match change {
        ChangeMembers::AddVoterIds(ids) => ids.iter().all(|id| membership.voter_ids().any(|v| v == *id)),
        ChangeMembers::RemoveVoters(ids) | ChangeMembers::RemoveNodes(ids) => {
            ids.iter().all(|id| membership.get_node(id).is_none())
        }
        _ => false,
    }
}

/// Whether a TCP connection to `sockets` opens within `CONNECT_TIMEOUT`:
/// where nothing listens there is no point in adding a node and waiting
/// for it to catch up.
pub(super) async fn check_listening(addr: &str, sockets: &[SocketAddr]) -> Result<(), Refusal> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(sockets)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Refusal::NotListening { addr: addr.to_string(), reason: e.to_string() }),
        Err(_) => Err(Refusal::ConnectTimeout { addr: addr.to_string() }),
    }
}

/// How the wait for a new node ended, when not with it caught up.
#[derive(Debug)]
pub(super) enum NotCaughtUp {
    /// Still behind after `CATCH_UP_TIMEOUT`: what it had matched.
    Behind(Option<u64>),
    /// This node stopped leading meanwhile.
    LostLead,
    /// Raft stopped.
    Stopped,
}

/// Waits until `leader` (this node) has replicated to `id` up to `index`
/// (the entry that added it), for at most `CATCH_UP_TIMEOUT`. openraft's own
/// `add_learner(.., blocking)` waits with no bound and counts a node within
/// its lag threshold (5000 entries) as caught up, even one that holds nothing.
pub(super) async fn wait_caught_up(raft: &Raft, leader: u64, id: u64, index: u64) -> Result<(), NotCaughtUp> {
    let matched = |m: &crate::server::types::Metrics| {
        m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.as_ref()).map(|l| l.index)
    };
    let mut metrics = raft.metrics();
    let waited = tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        crate::server::types::wait_metrics(&mut metrics, |m| {
            m.current_leader != Some(leader) || matched(m).is_some_and(|i| i >= index)
        }),
    )
    .await;
    match waited {
        Err(_) => Err(NotCaughtUp::Behind(matched(&raft.metrics().borrow_watched()))),
        Ok(Err(_)) => Err(NotCaughtUp::Stopped),
        Ok(Ok(m)) if m.current_leader != Some(leader) => Err(NotCaughtUp::LostLead),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, addr: &str, sockets: &[&str]) -> Addressed {
        let sockets = sockets.iter().map(|s| s.parse().expect("a socket address")).collect();
        Addressed { id, addr: addr.to_string(), sockets: Some(sockets) }
    }

    #[test]
    fn an_address_is_a_clash_as_written_or_resolved_and_names_both_nodes() {
        let members =
            [node(1, "n1:9091", &["10.0.0.1:9091"]), node(2, "n2:9091", &["10.0.0.2:9091", "[fd00::2]:9091"])];
        // As written (host case aside), and as resolved (any one socket).
        for new in [node(4, "N2:9091", &["10.9.9.9:1"]), node(4, "other:9091", &["[fd00::2]:9091"])] {
            let e = check_clash(&new, &members).expect_err("a clash").to_string();
            assert!(e.contains("node 4 at") && e.contains("node 2 at n2:9091"), "{e}");
        }
        // A node's own entry is no clash (its promotion), nor another port.
        assert!(check_clash(&node(2, "n2:9091", &["10.0.0.2:9091"]), &members).is_ok());
        assert!(check_clash(&node(4, "n2:9092", &["10.0.0.2:9092"]), &members).is_ok());
        // A member that does not resolve is compared as written only.
        let gone = [Addressed { id: 3, addr: "n3:9091".into(), sockets: None }];
        assert!(check_clash(&node(4, "n4:9091", &["10.0.0.3:9091"]), &gone).is_ok());
        assert!(check_clash(&node(4, "n3:9091", &["10.0.0.3:9091"]), &gone).is_err());
    }

    #[test]
    fn an_init_list_needs_distinct_ids_and_places() {
        assert!(check_distinct(&[node(1, "a:1", &["10.0.0.1:1"]), node(2, "b:1", &["10.0.0.2:1"])]).is_ok());
        let e = check_distinct(&[node(1, "a:1", &["10.0.0.1:1"]), node(1, "b:1", &["10.0.0.2:1"])])
            .expect_err("id")
            .to_string();
        assert!(e.contains("node 1 is listed twice"), "{e}");
        let e = check_distinct(&[node(1, "a:1", &["10.0.0.1:1"]), node(2, "b:1", &["10.0.0.1:1"])])
            .expect_err("addr")
            .to_string();
        assert!(e.contains("node 1 at a:1") && e.contains("node 2 at b:1"), "{e}");
    }

    #[test]
    fn removals_below_three_voters_need_force_and_the_last_voter_stays() {
        let three = BTreeSet::from([1, 2, 3]);
        let e = check_removal(&three, 2, false).expect_err("2 of 3").to_string();
        assert!(e.contains("leave 2 voters (node 1, node 3)") && e.contains("force"), "{e}");
        assert!(check_removal(&three, 2, true).is_ok());
        assert!(check_removal(&three, 9, false).is_ok(), "a learner or non-member is not a voter removal");
        assert!(check_removal(&BTreeSet::from([1, 2, 3, 4]), 4, false).is_ok(), "four to three");
        let e = check_removal(&BTreeSet::from([1, 2]), 1, false).expect_err("2 to 1").to_string();
        assert!(e.contains("leave 1 voter (node 2)") && e.contains("fewer machines"), "{e}");
        let e = check_removal(&BTreeSet::from([1]), 1, true).expect_err("the last").to_string();
        assert!(e.contains("last voter"), "{e}");
    }

    #[test]
    fn a_change_is_made_when_the_membership_shows_it() {
        let nodes: std::collections::BTreeMap<u64, BasicNode> =
            [1, 2, 3].into_iter().map(|id| (id, BasicNode { addr: format!("n{id}:1") })).collect();
        let m = Membership::new(vec![BTreeSet::from([1, 2])], nodes).expect("a valid membership");
        assert!(made(&ChangeMembers::AddVoterIds(BTreeSet::from([2])), &m));
        assert!(!made(&ChangeMembers::AddVoterIds(BTreeSet::from([3])), &m), "3 is a learner");
        assert!(made(&ChangeMembers::RemoveVoters(BTreeSet::from([4])), &m));
        assert!(!made(&ChangeMembers::RemoveNodes(BTreeSet::from([3])), &m), "3 is still a member");
    }

    #[test]
    fn host_port_is_checked() {
        for ok in ["a:1", "127.0.0.1:65535", "[::1]:9091"] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", ":1", "a:0", "a:65536", "a:x"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unresolvable_and_unspecified_addresses_are_refused_naming_them() {
        let e = resolve("no-such-host.invalid:9091").await.expect_err("does not resolve").to_string();
        assert!(e.contains("no-such-host.invalid:9091"), "{e}");
        let e = resolve("0.0.0.0:9091").await.expect_err("unspecified").to_string();
        assert!(e.contains("0.0.0.0:9091"), "{e}");
        assert_eq!(resolve("127.0.0.1:9091").await, Ok(vec!["127.0.0.1:9091".parse().expect("socket")]));
    }
}
