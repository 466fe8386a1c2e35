//! The history checker: what the workload saw acknowledged, against what a
//! consumer reads back after the cluster healed, and the replicas' digests.
//!
//! - **lost**: an acknowledged message not at its acknowledged offset.
//! - **duplicated**: extra copies of a message (any message, acknowledged
//!   or not, may be stored at most once).
//! - **reordered**: within one producer session (one producer id, whose
//!   messages go one at a time to one partition), a later message stored at
//!   a lower offset than an earlier one, or acknowledged so.
//! - **phantom**: a message read back that no producer sent.
//! - **refused_present**: a message the cluster refused (so it must not be
//!   stored) read back.
//! - **divergent**: replicas whose digest over the range all of them hold
//!   committed differs from the majority's.
//! - **unknown**: sends whose outcome is unknown (informational; each may be
//!   stored at most once, which `duplicated` checks).
//! - **invisible**: an acknowledged message that a read-back right after a
//!   restart (before anything new was written) did not find, but the final
//!   read (after a write) did: to a consumer that reads to the end, as good
//!   as lost until someone writes. One absent from the final read too is
//!   `lost`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// What one send ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked {
        offset: u64,
        /// The log index of the entry that holds it (from the ack).
        log_index: u64,
    },
    /// Timeout or lost connection after the request may have been applied.
    Unknown,
    /// The cluster (or the client, before sending) said it was not stored.
    Refused(String),
}

/// One send of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// One producer id's messages: sent one at a time, to one partition.
    pub session: u64,
    pub seq: u64,
    pub partition: u32,
    pub payload: String,
    pub outcome: Outcome,
}

/// Everything read back: per partition, (offset, payload) in offset order.
pub type ReadLog = BTreeMap<u32, Vec<(u64, String)>>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub acked: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unknown: u64,
    pub unknown_stored: u64,
    pub refused: u64,
    pub refused_present: u64,
    pub phantom: u64,
    pub divergent: u64,
    pub invisible: u64,
    /// Read-backs made right after a restart, before any new write.
    pub read_backs: u32,
    /// The first few problems, for the report.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 20;

impl Verdict {
    fn example(&mut self, what: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what);
        }
    }

    /// Whether every check passed (`allow_loss`: ASYNC_FLUSH may lose
    /// acknowledged messages; that is reported, not failed).
    pub fn passed(&self, allow_loss: bool) -> bool {
        (allow_loss || self.lost == 0)
            && self.invisible == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.phantom == 0
            && self.refused_present == 0
            && self.divergent == 0
    }
}

/// The acknowledged messages of `ops` that `read` does not hold at their
/// acknowledged offsets.
pub fn unseen(ops: &[Op], read: &ReadLog) -> Vec<String> {
    let at: HashMap<(u32, u64), &str> = read
        .iter()
        .flat_map(|(&p, records)| records.iter().map(move |(o, payload)| ((p, *o), payload.as_str())))
        .collect();
    ops.iter()
        .filter_map(|op| match op.outcome {
            Outcome::Acked { offset, .. } if at.get(&(op.partition, offset)) != Some(&op.payload.as_str()) => {
                Some(op.payload.clone())
            }
            _ => None,
        })
        .collect()
}

impl Verdict {
    /// Count as invisible what a read-back after a restart missed (`unseen`,
    /// each with how many read-backs missed it) but the final `read` holds.
    pub fn note_unseen(&mut self, unseen: &BTreeMap<String, u32>, read: &ReadLog, read_backs: u32) {
        self.read_backs = read_backs;
        let finally: std::collections::HashSet<&str> =
            read.values().flat_map(|r| r.iter().map(|(_, p)| p.as_str())).collect();
        for (payload, times) in unseen {
            if finally.contains(payload.as_str()) {
                self.invisible += 1;
                self.example(format!(
                    "invisible: {payload} was acknowledged but {times} read-back(s) right after a restart did not \
                     find it; it showed only after a later write"
                ));
            }
        }
    }
}

/// Check the history `ops` against what was read back and the replicas'
/// digests (`(node, sha256)`, all over the same range).
pub fn check(ops: &[Op], read: &ReadLog, digests: &[(u64, String)]) -> Verdict {
    let mut v = Verdict::default();
    // Where each payload was read (partition, offset), every copy.
    let mut found: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    let mut at: HashMap<(u32, u64), &str> = HashMap::new();
    for (&partition, records) in read {
        for (offset, payload) in records {
            found.entry(payload.as_str()).or_default().push((partition, *offset));
            at.insert((partition, *offset), payload.as_str());
        }
    }
    let sent: HashMap<&str, &Op> = ops.iter().map(|op| (op.payload.as_str(), op)).collect();

    for op in ops {
        let copies = found.get(op.payload.as_str()).map_or(0, Vec::len) as u64;
        if copies > 1 {
            v.duplicated += copies - 1;
            v.example(format!("{} is stored {copies} times: {:?}", op.payload, found[op.payload.as_str()]));
        }
        match op.outcome {
            Outcome::Acked { offset, .. } => {
                v.acked += 1;
                if at.get(&(op.partition, offset)) != Some(&op.payload.as_str()) {
                    v.lost += 1;
                    let there = at.get(&(op.partition, offset)).copied().unwrap_or("nothing");
                    v.example(format!(
                        "lost: {} acknowledged at {}/{offset}, which holds {there}",
                        op.payload, op.partition
                    ));
                }
            }
            Outcome::Unknown => {
                v.unknown += 1;
                v.unknown_stored += u64::from(copies > 0);
            }
            Outcome::Refused(ref why) => {
                v.refused += 1;
                if copies > 0 {
                    v.refused_present += 1;
                    v.example(format!("{} was refused ({why}) but is stored", op.payload));
                }
            }
        }
    }
    for payload in found.keys() {
        if !sent.contains_key(payload) {
            v.phantom += 1;
            v.example(format!("phantom: {payload} was read but never sent"));
        }
    }

    // Per session, in send order: acknowledged offsets and stored offsets rise.
    let mut sessions: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        sessions.entry(op.session).or_default().push(op);
    }
    for (session, mut list) in sessions {
        list.sort_by_key(|op| op.seq);
        let mut last_acked: Option<u64> = None;
        let mut last_stored: Option<u64> = None;
        for op in list {
            if let Outcome::Acked { offset, .. } = op.outcome {
                if last_acked.is_some_and(|l| offset <= l) {
                    v.reordered += 1;
                    v.example(format!(
                        "session {session}: {} acknowledged at {offset}, after {last_acked:?}",
                        op.payload
                    ));
                }
                last_acked = Some(offset);
            }
            if let Some(&(_, offset)) = found.get(op.payload.as_str()).and_then(|c| c.first()) {
                if last_stored.is_some_and(|l| offset <= l) {
                    v.reordered += 1;
                    v.example(format!("session {session}: {} stored at {offset}, after {last_stored:?}", op.payload));
                }
                last_stored = Some(offset);
            }
        }
    }

    // Replicas: the digest most nodes agree on is the reference.
    let mut votes: HashMap<&str, usize> = HashMap::new();
    for (_, d) in digests {
        *votes.entry(d.as_str()).or_default() += 1;
    }
    if let Some((majority, _)) = votes.iter().max_by_key(|(d, n)| (**n, *d)) {
        for (node, d) in digests {
            if d != majority {
                v.divergent += 1;
                v.example(format!("node {node}'s committed log differs: {d} vs {majority}"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(session: u64, seq: u64, outcome: Outcome) -> Op {
        Op { session, seq, partition: 0, payload: format!("s{session}-{seq}"), outcome }
    }

    /// Three sessions' acknowledged messages interleaved on partition 0,
    /// plus one unknown that was stored and one that was not.
    fn history() -> (Vec<Op>, ReadLog) {
        let mut ops = Vec::new();
        let mut log = Vec::new();
        for i in 0..30u64 {
            let (session, seq) = (i % 3, i / 3);
            ops.push(op(session, seq, Outcome::Acked { offset: i, log_index: i + 1 }));
            log.push((i, format!("s{session}-{seq}")));
        }
        ops.push(op(7, 0, Outcome::Unknown));
        log.push((30, "s7-0".into()));
        ops.push(op(8, 0, Outcome::Unknown));
        ops.push(op(9, 0, Outcome::Refused("no".into())));
        (ops, BTreeMap::from([(0, log)]))
    }

    fn digests(ds: &[&str]) -> Vec<(u64, String)> {
        ds.iter().enumerate().map(|(i, d)| (i as u64 + 1, d.to_string())).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let (ops, read) = history();
        let v = check(&ops, &read, &digests(&["a", "a", "a"]));
        assert!(v.passed(false), "{v:#?}");
        assert_eq!((v.acked, v.unknown, v.unknown_stored, v.refused), (30, 2, 1, 1));
        assert!(v.examples.is_empty());
    }

    #[test]
    fn loss_is_flagged_unless_allowed() {
        let (ops, mut read) = history();
        read.get_mut(&0).expect("p0").retain(|(o, _)| *o != 12);
        let v = check(&ops, &read, &digests(&["a", "a", "a"]));
        assert_eq!(v.lost, 1, "{v:#?}");
        assert!(!v.passed(false));
        assert!(v.passed(true), "ASYNC_FLUSH loss is reported, not failed");
        // An offset that holds another message is a loss too.
        let (ops, mut read) = history();
        read.get_mut(&0).expect("p0")[5].1 = "s9-0".into();
        let v = check(&ops, &read, &[]);
        assert_eq!(v.lost, 1);
        assert_eq!(v.refused_present, 1, "{v:#?}");
    }

    #[test]
    fn a_message_missed_right_after_a_restart_but_read_later_is_invisible_and_fails_under_every_policy() {
        let (ops, read) = history();
        // The read-back before any new write ends early: offsets 20.. unseen.
        let mut early = read.clone();
        early.get_mut(&0).expect("p0").retain(|(o, _)| *o < 20);
        let missed = unseen(&ops, &early);
        assert_eq!(missed.len(), 10, "acknowledged 20..30: {missed:?}");
        assert!(unseen(&ops, &read).is_empty(), "a full read misses nothing");
        let unseen_map: BTreeMap<String, u32> = missed.into_iter().map(|m| (m, 1)).collect();
        let mut v = check(&ops, &read, &digests(&["a", "a", "a"]));
        v.note_unseen(&unseen_map, &read, 3);
        assert_eq!((v.invisible, v.lost, v.read_backs), (10, 0, 3), "{v:#?}");
        assert!(!v.passed(false) && !v.passed(true), "invisible fails even where loss is allowed");
        assert!(v.examples[0].contains("invisible"), "{:?}", v.examples);
        // Missed then and absent at the end: lost, not invisible.
        let mut v = check(&ops, &early, &digests(&["a", "a", "a"]));
        v.note_unseen(&unseen_map, &early, 3);
        assert_eq!((v.invisible, v.lost), (0, 10), "{v:#?}");
    }

    #[test]
    fn duplication_is_flagged() {
        let (ops, mut read) = history();
        read.get_mut(&0).expect("p0").push((31, "s1-4".into()));
        let v = check(&ops, &read, &[]);
        assert_eq!(v.duplicated, 1, "{v:#?}");
        assert!(!v.passed(true));
        // An unknown-outcome message may be stored once, not twice.
        let (ops, mut read) = history();
        read.get_mut(&0).expect("p0").push((31, "s7-0".into()));
        assert_eq!(check(&ops, &read, &[]).duplicated, 1);
    }

    #[test]
    fn reordering_is_flagged() {
        let (ops, mut read) = history();
        let log = read.get_mut(&0).expect("p0");
        // s0-1 (offset 3) and s0-2 (offset 6) swap places in the log.
        log[3].1 = "s0-2".into();
        log[6].1 = "s0-1".into();
        let v = check(&ops, &read, &[]);
        assert!(v.reordered >= 1, "{v:#?}");
        assert!(!v.passed(true));
        // Acknowledged out of order, stored in order.
        let (mut ops, read) = history();
        ops[3].outcome = Outcome::Acked { offset: 0, log_index: 1 };
        let v = check(&ops, &read, &[]);
        assert!(v.reordered >= 1, "{v:#?}");
    }

    #[test]
    fn phantoms_and_divergence_are_flagged() {
        let (ops, mut read) = history();
        read.get_mut(&0).expect("p0").push((31, "never-sent".into()));
        let v = check(&ops, &read, &digests(&["a", "b", "a"]));
        assert_eq!(v.phantom, 1, "{v:#?}");
        assert_eq!(v.divergent, 1, "{v:#?}");
        assert!(v.examples.iter().any(|e| e.contains("node 2")), "{:?}", v.examples);
        assert!(!v.passed(true));
    }
}
