//! `GET /api/v1/status`: what one node knows of itself, the document
//! `docs/admin-api.md` describes field by field.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_raft_log::{LatencySummary, Store};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use utoipa::ToSchema;

use super::Admin;
use crate::server::disk::{Disk, disk_usage};
use crate::server::types::now_ms;

/// The article's rule: a mean flush above this many milliseconds.
pub const SLOW_FLUSH_MS: f64 = 100.0;
/// The article's rule: a volume fuller than this.
pub const DISK_USAGE_LIMIT: f64 = 0.80;

/// One point of the flush history per this period.
pub const HISTORY_EVERY: Duration = Duration::from_secs(5);
/// Points kept: ten minutes.
pub const HISTORY_POINTS: usize = 120;

/// `GET /api/v1/status`: what this node knows of itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    pub node_id: u64,
    /// The cluster this node belongs to (16 hex digits), as its data directory records it; null while it has none
    /// (a new member before its first leader replicated to it, or a cluster initialised before keel kept cluster
    /// ids).
    #[schema(required = true, pattern = "^[0-9a-f]{16}$")]
    pub cluster_id: Option<String>,
    pub role: Role,
    pub term: u64,
    #[schema(required = true)]
    pub leader_id: Option<u64>,
    #[schema(required = true)]
    pub leader_addr: Option<String>,
    pub grpc_addr: String,
    pub uptime_ms: u64,
    pub members: Vec<Member>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub log: LogStatus,
    pub replication: Vec<Replication>,
    pub flush: FlushStatus,
    pub storage: StorageStatus,
    pub advice: Vec<Advice>,
    /// Damaged log ranges this node repaired from a peer when it started (empty for a healthy log).
    pub repairs: Vec<crate::server::repair::Repaired>,
}

/// This node's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A member of the cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogStatus {
    #[schema(required = true)]
    pub first_index: Option<u64>,
    #[schema(required = true)]
    pub last_index: Option<u64>,
    #[schema(required = true)]
    pub committed: Option<u64>,
    #[schema(required = true)]
    pub applied: Option<u64>,
    pub durable: u64,
    #[schema(required = true)]
    pub fsynced: Option<u64>,
    #[schema(required = true)]
    pub snapshot: Option<u64>,
    #[schema(required = true)]
    pub purged: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replication {
    pub node_id: u64,
    #[schema(required = true)]
    pub addr: Option<String>,
    #[schema(required = true)]
    pub matched: Option<u64>,
    pub lag_entries: u64,
    #[schema(required = true)]
    pub last_ack_ms_ago: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlushStatus {
    #[schema(schema_with = flush_policy_schema)]
    pub policy: &'static str,
    /// The `flush.*` keys and their effective values.
    #[schema(value_type = BTreeMap<String, String>)]
    pub config: BTreeMap<&'static str, String>,
    pub pending_bytes: u64,
    pub pending_entries: u64,
    pub fsyncs: u64,
    pub fsync_us: FsyncLatency,
    pub write_bytes_per_s: f64,
    pub written_bytes_total: u64,
    #[schema(required = true)]
    pub last_fsync_age_ms: Option<u64>,
    pub history: Vec<HistoryPoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FsyncLatency {
    pub last_minute: Quantiles,
    pub since_start: Quantiles,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Quantiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl From<LatencySummary> for Quantiles {
    fn from(s: LatencySummary) -> Self {
        Self { count: s.count, mean: (s.mean_us * 10.0).round() / 10.0, p50: s.p50_us, p99: s.p99_us, max: s.max_us }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct HistoryPoint {
    pub t_ms: u64,
    pub fsyncs: u64,
    /// null when no fsync ended in the period.
    #[schema(required = true)]
    pub fsync_p99_us: Option<u64>,
    pub write_bytes_per_s: f64,
    pub pending_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StorageStatus {
    pub dir: String,
    pub segments: Vec<Segment>,
    pub segment_bytes_total: u64,
    #[schema(required = true)]
    pub disk: Option<Disk>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Segment {
    pub file: String,
    pub first_index: u64,
    #[schema(required = true)]
    pub last_index: Option<u64>,
    pub bytes: u64,
    pub capacity_bytes: u64,
    pub sealed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Advice {
    pub rule: Rule,
    pub severity: Severity,
    pub measured: f64,
    pub threshold: f64,
    pub message: String,
}

/// Which rule an [`Advice`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    DiskReserve,
    SlowFlush,
    DiskUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// `flush.disk.type`'s values, as `FlushPolicy::as_str` names them.
fn flush_policy_schema() -> utoipa::openapi::Object {
    use keel_raft_log::FlushPolicy::{self, AsyncFlush, BatchFlush, SyncFlush};
    // A new policy fails this match, so the list below cannot miss it.
    let _every = |p: FlushPolicy| match p {
        SyncFlush | BatchFlush | AsyncFlush => (),
    };
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some([SyncFlush, BatchFlush, AsyncFlush].map(FlushPolicy::as_str)))
        .build()
}

/// The article's advice, with the value measured. `mean_flush` is the mean
/// fsync time in ms and the window it was measured over; `reserve_bytes` is
/// `store.reserve.bytes` (0: no reserve).
pub fn advice(mean_flush: Option<(f64, &str)>, disk: Option<Disk>, reserve_bytes: u64) -> Vec<Advice> {
    let mut out = Vec::new();
    if let Some(d) = disk.filter(|d| d.free_bytes < reserve_bytes) {
        out.push(Advice {
            rule: Rule::DiskReserve,
            severity: Severity::Critical,
            measured: d.free_bytes as f64,
            threshold: reserve_bytes as f64,
            message: format!(
                "only {} free on the volume holding the log, below the reserve of {} (store.reserve.bytes): this \
                 node, as leader, refuses produce and topic creation with RESOURCE_EXHAUSTED, and as follower \
                 stops if the volume fills; free space (lower retention.ms or \
                 retention.bytes, delete a topic, remove other files) or add storage, and writes resume by themselves",
                human_bytes(d.free_bytes),
                human_bytes(reserve_bytes)
            ),
        });
    }
    if let Some((ms, window)) = mean_flush.filter(|&(ms, _)| ms > SLOW_FLUSH_MS) {
        out.push(Advice {
            rule: Rule::SlowFlush,
            severity: Severity::Warning,
            measured: (ms * 10.0).round() / 10.0,
            threshold: SLOW_FLUSH_MS,
            message: format!(
                "fsync took {ms:.1} ms on average {window} (> {SLOW_FLUSH_MS} ms): check the disk's performance or \
                 change the flush policy (flush.disk.type)"
            ),
        });
    }
    if let Some(d) = disk.filter(|d| d.used_ratio > DISK_USAGE_LIMIT) {
        let percent = d.used_ratio * 100.0;
        out.push(Advice {
            rule: Rule::DiskUsage,
            severity: if d.used_ratio > 0.95 { Severity::Critical } else { Severity::Warning },
            measured: (percent * 10.0).round() / 10.0,
            threshold: DISK_USAGE_LIMIT * 100.0,
            message: format!(
                "the volume holding the log is {percent:.1}% full (> {:.0}%, {} free): delete old data (lower \
                 retention.ms or retention.bytes) or add storage",
                DISK_USAGE_LIMIT * 100.0,
                human_bytes(d.free_bytes)
            ),
        });
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Sampled once a second by the admin actor: the write rate and the flush
/// history for the page's chart.
#[derive(Debug, Default)]
pub struct Sampler {
    inner: Mutex<SamplerState>,
}

#[derive(Debug, Default)]
struct SamplerState {
    last: Option<(Instant, u64)>,
    write_bytes_per_s: f64,
    point_start: Option<(Instant, u64, u64)>,
    history: VecDeque<HistoryPoint>,
}

impl Sampler {
    fn state(&self) -> std::sync::MutexGuard<'_, SamplerState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one sample of `store`'s counters.
    pub fn sample(&self, store: &Store) {
        let now = Instant::now();
        let f = store.flush_stats();
        let mut s = self.state();
        if let Some((t, bytes)) = s.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                s.write_bytes_per_s = f.bytes_written.saturating_sub(bytes) as f64 / dt;
            }
        }
        s.last = Some((now, f.bytes_written));
        match s.point_start {
            None => {
                // Start the first period clean.
                let _ = store.take_sync_latency_interval();
                s.point_start = Some((now, f.bytes_written, f.syncs));
            }
            Some((t, bytes, syncs)) if now.duration_since(t) >= HISTORY_EVERY => {
                let dt = now.duration_since(t);
                let latency = store.take_sync_latency_interval();
                let point = HistoryPoint {
                    t_ms: now_ms(),
                    fsyncs: f.syncs.saturating_sub(syncs),
                    fsync_p99_us: (latency.count > 0).then_some(latency.p99_us),
                    write_bytes_per_s: f.bytes_written.saturating_sub(bytes) as f64 / dt.as_secs_f64(),
                    pending_bytes: f.unsynced_bytes,
                };
                if s.history.len() == HISTORY_POINTS {
                    s.history.pop_front();
                }
                s.history.push_back(point);
                s.point_start = Some((now, f.bytes_written, f.syncs));
            }
            Some(_) => {}
        }
    }

    fn write_bytes_per_s(&self) -> f64 {
        self.state().write_bytes_per_s
    }

    fn history(&self) -> Vec<HistoryPoint> {
        self.state().history.iter().copied().collect()
    }
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

pub fn members_of(membership: &keel_raft_log::Membership) -> Vec<Member> {
    crate::server::describe::members_of(membership)
        .into_iter()
        .map(|m| Member { id: m.id, addr: m.addr, voter: m.voter })
        .collect()
}

impl Admin {
    pub fn status(&self) -> NodeStatus {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let members = members_of(membership);
        let addr_of = |id: u64| membership.get_node(&id).map(|n| n.addr.clone());
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let last_index = m.last_log_index;

        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.node.node_id)
                    .map(|(&id, matched)| {
                        let matched = matched.map(|l| l.index);
                        let lag_entries = match (last_index, matched) {
                            (Some(last), Some(m)) => last.saturating_sub(m),
                            (Some(last), None) => last + 1,
                            (None, _) => 0,
                        };
                        Replication {
                            node_id: id,
                            addr: addr_of(id),
                            matched,
                            lag_entries,
                            last_ack_ms_ago: self.node.peers.last_ack(id).map(|t| t.elapsed().as_millis() as u64),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();

        let f = self.node.store.flush_stats();
        let latency = self.node.store.sync_latency();
        let mean_flush = if latency.last_minute.count > 0 {
            Some((latency.last_minute.mean_us / 1000.0, "over the last minute"))
        } else if latency.since_start.count > 0 {
            Some((latency.since_start.mean_us / 1000.0, "since start"))
        } else {
            None
        };
        let disk = disk_usage(&self.node.store.config().dir).ok();
        let segments: Vec<Segment> = self
            .node
            .store
            .segments()
            .into_iter()
            .map(|s| Segment {
                file: s.file.file_name().map_or_else(|| s.file.display().to_string(), |n| n.to_string_lossy().into()),
                first_index: s.first_index,
                last_index: s.last_index,
                bytes: s.used_bytes,
                capacity_bytes: s.capacity_bytes,
                sealed: s.sealed,
            })
            .collect();

        NodeStatus {
            node_id: self.node.node_id,
            cluster_id: match self.node.identity.cluster_id() {
                0 => None,
                id => Some(crate::server::identity::cluster_hex(id)),
            },
            role: role(m.state),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr: m.current_leader.and_then(addr_of),
            grpc_addr: self.settings.advertised.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            members,
            voters,
            learners,
            log: LogStatus {
                first_index: self.node.store.first_present_index(),
                last_index,
                committed: self.node.store.read_committed().map(|c| c.index),
                applied: m.last_applied.map(|l| l.index),
                durable: self.node.durable.durable_index(),
                fsynced: f.synced_index,
                snapshot: m.snapshot.map(|l| l.index),
                purged: m.purged.map(|l| l.index),
            },
            replication,
            flush: FlushStatus {
                policy: f.policy.as_str(),
                config: self.settings.flush_config.clone(),
                pending_bytes: f.unsynced_bytes,
                pending_entries: f.unsynced_entries,
                fsyncs: f.syncs,
                fsync_us: FsyncLatency {
                    last_minute: latency.last_minute.into(),
                    since_start: latency.since_start.into(),
                },
                write_bytes_per_s: self.sampler.write_bytes_per_s().round(),
                written_bytes_total: f.bytes_written,
                last_fsync_age_ms: latency.last_sync_age.map(|a| a.as_millis() as u64),
                history: self.sampler.history(),
            },
            storage: StorageStatus {
                dir: self.node.store.config().dir.display().to_string(),
                segment_bytes_total: segments.iter().map(|s| s.bytes).sum(),
                segments,
                disk,
            },
            advice: advice(mean_flush, disk, self.node.reserve.reserve_bytes()),
            repairs: self.repairs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(used_ratio: f64) -> Disk {
        Disk { total_bytes: 100 << 30, free_bytes: ((1.0 - used_ratio) * (100u64 << 30) as f64) as u64, used_ratio }
    }

    /// The enums serialize as the strings the page and the document name.
    #[test]
    fn roles_rules_and_severities_are_the_strings_they_were() {
        let names =
            |v: serde_json::Value| v.as_array().expect("array").iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let roles = [Role::Leader, Role::Follower, Role::Candidate, Role::Learner, Role::Shutdown];
        assert_eq!(
            names(serde_json::json!(roles)),
            ["\"leader\"", "\"follower\"", "\"candidate\"", "\"learner\"", "\"shutdown\""]
        );
        let rules = [Rule::DiskReserve, Rule::SlowFlush, Rule::DiskUsage];
        assert_eq!(names(serde_json::json!(rules)), ["\"disk_reserve\"", "\"slow_flush\"", "\"disk_usage\""]);
        let severities = [Severity::Warning, Severity::Critical];
        assert_eq!(names(serde_json::json!(severities)), ["\"warning\"", "\"critical\""]);
        assert_eq!(
            serde_json::to_value(flush_policy_schema()).expect("a schema")["enum"],
            serde_json::json!(["SYNC_FLUSH", "BATCH_FLUSH", "ASYNC_FLUSH"])
        );
    }

    #[test]
    fn advice_follows_the_article_rules_with_the_measured_value() {
        const MIN: &str = "over the last minute";
        assert!(advice(Some((99.9, MIN)), Some(disk(0.80)), 0).is_empty());
        assert!(advice(None, None, 1 << 30).is_empty());

        let a = advice(Some((140.25, MIN)), Some(disk(0.5)), 1 << 30);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule, Rule::SlowFlush);
        assert_eq!(a[0].measured, 140.3);
        assert!(a[0].message.contains("140.2 ms on average over the last minute"), "{}", a[0].message);
        assert!(a[0].message.contains("check the disk"), "{}", a[0].message);

        let a = advice(Some((1.0, MIN)), Some(disk(0.853)), 1 << 30);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule, Rule::DiskUsage);
        assert_eq!(a[0].measured, 85.3);
        assert_eq!(a[0].threshold, 80.0);
        assert!(a[0].message.contains("85.3% full"), "{}", a[0].message);
        assert!(a[0].message.contains("add storage"), "{}", a[0].message);

        let both = advice(Some((250.0, "since start")), Some(disk(0.99)), 1 << 30);
        assert_eq!(both.iter().map(|a| a.rule).collect::<Vec<_>>(), [Rule::SlowFlush, Rule::DiskUsage]);
        assert_eq!(both[1].severity, Severity::Critical);

        // 1 GiB free of 100 GiB: below a 2 GiB reserve, which comes first.
        let all = advice(Some((250.0, "since start")), Some(disk(0.99)), 2 << 30);
        assert_eq!(
            all.iter().map(|a| a.rule).collect::<Vec<_>>(),
            [Rule::DiskReserve, Rule::SlowFlush, Rule::DiskUsage]
        );
        let r = &all[0];
        assert_eq!((r.severity, r.threshold), (Severity::Critical, (2u64 << 30) as f64));
        assert!(r.measured < r.threshold);
        for part in ["below the reserve of 2.0 GiB", "store.reserve.bytes", "RESOURCE_EXHAUSTED", "resume"] {
            assert!(r.message.contains(part), "{part}: {}", r.message);
        }
    }
}
