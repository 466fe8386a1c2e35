//! Start-up repair of a damaged log from a peer (protocol-aware recovery).
//!
//! Before Raft starts, the node reads its whole log ([`repair::find_damage`]).
//! A record that fails its checksum in the middle of the log, a sealed
//! segment cut short or gone, or a bad segment header is not a torn tail:
//! those bytes were durable, perhaps acknowledged, and cutting the log there
//! could lose a write the cluster counted on this node for. So the node
//! neither truncates nor starts Raft (it cannot vote or lead without Raft);
//! it asks its peers (`peers`) for the damaged range plus the intact entry
//! after it (the anchor). A peer whose entry at the anchor's index has the
//! anchor's log id holds exactly the entries the range held (Raft's log
//! matching property). Every entry is checked: its end-to-end checksum,
//! contiguous indexes, terms that never go backwards and never pass the
//! anchor's. The range is then rewritten durably ([`repair::rewrite`]) and
//! the log read again. Until some peer can supply the range the node waits,
//! saying so; SIGTERM stops the wait.
//!
//! Damage that ends the log has no anchor and stops the node with an error
//! naming the range and what the operator can do.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use keel_raft_log::repair::{self, Damage};
use keel_raft_log::{LogPos, RealFs, Record};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use super::network::{PeerCallError, Peers};
use crate::config::NodeConfig;

/// Payload bytes asked for per ReadEntries call.
const PAGE_BYTES: usize = 8 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_MIN: Duration = Duration::from_millis(500);
const WAIT_MAX: Duration = Duration::from_secs(5);

/// A range this node repaired at start-up, as the admin status shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Repaired {
    /// First repaired log index.
    pub from: u64,
    /// Last repaired log index (inclusive).
    pub to: u64,
    /// The segment file that holds the range.
    pub file: String,
    /// What was wrong (checksum mismatch, records missing, bad segment header).
    pub reason: String,
    /// The peer the entries came from.
    pub source_node: u64,
    /// Entries rewritten.
    pub entries: u64,
    /// When the repair finished (Unix ms).
    pub repaired_at_ms: u64,
}

/// Find and repair every damaged range of the log in `config.store.dir`.
/// Returns what was repaired (empty for a healthy log).
pub async fn repair_log(config: &NodeConfig, peers: &Peers) -> Result<Vec<Repaired>> {
    let dir = config.store.dir.clone();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let mut done: Vec<Repaired> = Vec::new();
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    loop {
        let damage = find(&dir).await?;
        let Some(d) = damage.into_iter().next() else {
            if !done.is_empty() {
                tracing::info!(ranges = done.len(), took_ms = started.elapsed().as_millis() as u64, "log repaired");
            }
            return Ok(done);
        };
        if done.iter().any(|r| r.from == d.from && r.to >= d.from) {
            bail!("{d}: still damaged after it was rewritten from node {}", done.last().map_or(0, |r| r.source_node));
        }
        let Some(anchor) = d.anchor else {
            bail!(
                "{d}. The damage ends the log, so no peer can be shown to hold the entries it held. Copy this \
                 node's data directory from a healthy peer while both are stopped, or remove this node from the \
                 cluster (keel cluster remove-node), empty its data directory and add it back"
            );
        };
        tracing::warn!(
            from = d.from,
            to = d.to,
            file = %d.file.display(),
            reason = %d.reason,
            "damaged log range: repairing it from a peer before raft starts (this node neither votes nor leads \
             until then)"
        );
        let mut wait = WAIT_MIN;
        let (source_node, records) = loop {
            match fetch(config, peers, &d, anchor).await {
                Ok(found) => break found,
                Err(why) => tracing::warn!(
                    from = d.from,
                    to = d.to,
                    "no peer can supply the damaged range yet ({why}); retrying in {wait:?}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = sigterm.recv() => bail!("stopped while waiting to repair {d}"),
                _ = sigint.recv() => bail!("stopped while waiting to repair {d}"),
            }
            wait = (wait * 2).min(WAIT_MAX);
        };
        let entries = records.len() as u64;
        let (dir2, d2, segment_bytes) = (dir.clone(), d.clone(), config.store.segment_bytes);
        tokio::task::spawn_blocking(move || repair::rewrite(&RealFs, &dir2, segment_bytes, &d2, &records))
            .await
            .context("repair task")?
            .with_context(|| format!("rewrite {d}"))?;
        tracing::warn!(from = d.from, to = d.to, source_node, entries, "repaired a damaged log range");
        metrics::counter!("keel_log_repaired_ranges_total").increment(1);
        let repaired_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
        done.push(Repaired {
            from: d.from,
            to: d.to,
            file: d.file.display().to_string(),
            reason: d.reason,
            source_node,
            entries,
            repaired_at_ms,
        });
    }
}

async fn find(dir: &Path) -> Result<Vec<Damage>> {
    let dir = dir.to_path_buf();
    let what = format!("check every record of the log in {}", dir.display());
    tokio::task::spawn_blocking(move || repair::find_damage(&RealFs, &dir)).await.context("repair task")?.context(what)
}

/// The entries `d.from..=d.to` from the first peer that holds them under
/// `anchor`, with that peer's id; or why no peer did.
async fn fetch(
    config: &NodeConfig,
    peers: &Peers,
    d: &Damage,
    anchor: LogPos,
) -> Result<(u64, Vec<Record>), NoPeerHasIt> {
    let mut tried = Vec::new();
    for (&id, addr) in config.peers.iter().filter(|&(&id, _)| id != config.node_id) {
        match fetch_from(peers, addr, id, d, anchor).await {
            Ok(records) => return Ok((id, records)),
            Err(e) => tried.push((id, addr.clone(), e)),
        }
    }
    Err(NoPeerHasIt(tried))
}

/// Every peer asked for a damaged range, and why each could not supply it.
#[derive(Debug)]
struct NoPeerHasIt(Vec<(u64, String, FetchError)>);

impl std::fmt::Display for NoPeerHasIt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("`peers` lists no other node");
        }
        for (i, (id, addr, e)) in self.0.iter().enumerate() {
            write!(f, "{}node {id} at {addr}: {e}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
    }
}

impl std::error::Error for NoPeerHasIt {}

/// Why one peer could not supply a damaged range.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Call(#[from] PeerCallError),
    #[error("answered no entries from {0}")]
    Empty(u64),
    #[error("sent entry {got} where {want} was due")]
    WrongIndex { got: u64, want: u64 },
    #[error("entry {index} has term {term}, out of order")]
    TermOrder { index: u64, term: u64 },
    #[error(
        "holds entry {index} from term {term} (leader {leader}), not the intact one here from term {anchor_term} \
         (leader {anchor_leader}): its log differs from this node's there"
    )]
    Differs { index: u64, term: u64, leader: u64, anchor_term: u64, anchor_leader: u64 },
}

async fn fetch_from(peers: &Peers, addr: &str, id: u64, d: &Damage, anchor: LogPos) -> Result<Vec<Record>, FetchError> {
    let mut out: Vec<Record> = Vec::new();
    let mut next = d.from;
    while next <= anchor.index {
        let page = peers.read_entries(addr, id, next, anchor.index, PAGE_BYTES, CALL_TIMEOUT).await?;
        if page.is_empty() {
            return Err(FetchError::Empty(next));
        }
        for r in page {
            check(&r, next, out.last(), anchor)?;
            next += 1;
            out.push(r);
            if next > anchor.index {
                break;
            }
        }
    }
    // Only the damaged range is written: the anchor is intact here already,
    // or (damage at the end of the log, anchored on the committed id) it is
    // the range's last entry.
    out.truncate(usize::try_from(d.to - d.from + 1).unwrap_or(usize::MAX));
    Ok(out)
}

/// One entry of a repair: the index expected, terms in order, and the
/// anchor's log id at the anchor's index.
fn check(r: &Record, want: u64, previous: Option<&Record>, anchor: LogPos) -> Result<(), FetchError> {
    if r.index != want {
        return Err(FetchError::WrongIndex { got: r.index, want });
    }
    if previous.is_some_and(|p| r.term < p.term) || r.term > anchor.term {
        return Err(FetchError::TermOrder { index: r.index, term: r.term });
    }
    if r.index == anchor.index && (r.term, r.leader) != (anchor.term, anchor.leader) {
        return Err(FetchError::Differs {
            index: r.index,
            term: r.term,
            leader: r.leader,
            anchor_term: anchor.term,
            anchor_leader: anchor.leader,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use keel_raft_log::RecordKind;

    use super::*;

    fn rec(term: u64, index: u64) -> Record {
        Record { term, leader: 1, index, timestamp_ms: 0, kind: RecordKind::Normal, payload: Default::default() }
    }

    #[test]
    fn entries_must_be_contiguous_ordered_and_end_at_the_anchor() {
        let anchor = LogPos::new(3, 1, 10);
        assert!(check(&rec(2, 8), 8, None, anchor).is_ok());
        assert!(check(&rec(3, 10), 10, Some(&rec(2, 9)), anchor).is_ok());
        let gap = check(&rec(2, 9), 8, None, anchor).expect_err("gap");
        assert!(matches!(gap, FetchError::WrongIndex { got: 9, want: 8 }), "{gap:?}");
        assert!(gap.to_string().contains("where 8 was due"), "{gap}");
        let back = check(&rec(1, 9), 9, Some(&rec(2, 8)), anchor).expect_err("term backwards");
        assert!(back.to_string().contains("out of order"), "{back}");
        let past = check(&rec(4, 9), 9, None, anchor).expect_err("term past the anchor");
        assert!(matches!(past, FetchError::TermOrder { index: 9, term: 4 }), "{past:?}");
        let other = check(&Record { leader: 2, ..rec(3, 10) }, 10, None, anchor).expect_err("another leader");
        assert!(other.to_string().contains("its log differs"), "{other}");
    }
}
