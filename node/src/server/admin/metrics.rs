//! `GET /metrics`: Prometheus text through `metrics` and
//! `metrics-exporter-prometheus`.
//!
//! Events are recorded where they happen (`server/metrics.rs`). Levels
//! (Raft indexes, disk usage, segments, lag) and the store's own counters
//! are read here just before each scrape, so they are never stale; a gauge
//! nobody set for `GAUGE_IDLE` (a follower's lag after this node lost the
//! lead) is dropped.

use metrics::{counter, gauge};

use super::Admin;
use crate::server::metrics::handle;

/// Set the levels from the node's current state.
pub fn refresh(admin: &Admin) {
    let s = admin.status();
    gauge!("keel_raft_term").set(s.term as f64);
    gauge!("keel_raft_commit_index").set(s.log.committed.unwrap_or(0) as f64);
    gauge!("keel_raft_applied_index").set(s.log.applied.unwrap_or(0) as f64);
    gauge!("keel_raft_last_log_index").set(s.log.last_index.unwrap_or(0) as f64);
    gauge!("keel_raft_durable_index").set(s.log.durable as f64);
    gauge!("keel_raft_is_leader").set(if s.role == super::status::Role::Leader { 1.0 } else { 0.0 });
    for r in &s.replication {
        gauge!("keel_replication_lag_entries", "peer" => r.node_id.to_string()).set(r.lag_entries as f64);
    }
    gauge!("keel_segments").set(s.storage.segments.len() as f64);
    gauge!("keel_flush_pending_bytes").set(s.flush.pending_bytes as f64);
    if let Some(d) = s.storage.disk {
        gauge!("keel_disk_usage_ratio").set(d.used_ratio);
        gauge!("keel_disk_free_bytes").set(d.free_bytes as f64);
    }
    counter!("keel_io_bytes_total", "op" => "write").absolute(s.flush.written_bytes_total);
    counter!("keel_fsyncs_total").absolute(s.flush.fsyncs);
}

pub fn render(admin: &Admin) -> String {
    let h = handle();
    refresh(admin);
    h.run_upkeep();
    h.render()
}
