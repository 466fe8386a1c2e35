//! The node's metrics recorder and the events recorded where they happen:
//! each fsync's duration by the log store's flusher
//! (`keel_flush_duration_seconds`), produced and fetched messages and the
//! bytes fetches read by the client service. The levels read just before
//! each scrape, and the `/metrics` answer, are the admin API's
//! (`admin/metrics.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Buckets of `keel_flush_duration_seconds`: 50 µs to 2.5 s.
const FLUSH_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const GAUGE_IDLE: Duration = Duration::from_secs(30);

/// The process's recorder, installed on first use (one node per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("keel_flush_duration_seconds".into()), FLUSH_BUCKETS)
            .expect("non-empty bucket list")
            .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only keel's own");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!("keel_flush_duration_seconds", Unit::Seconds, "Duration of each fsync of the log");
    describe_counter!(
        "keel_io_bytes_total",
        Unit::Bytes,
        "Bytes of records written to the log (op=write), and of keys and values returned to fetches (op=read)"
    );
    describe_counter!("keel_fsyncs_total", "fsyncs of the log");
    describe_gauge!("keel_disk_usage_ratio", "Used fraction of the volume holding the log (0..1)");
    describe_gauge!("keel_disk_free_bytes", Unit::Bytes, "Free bytes on the volume holding the log");
    describe_gauge!("keel_raft_term", "Current Raft term");
    describe_gauge!("keel_raft_commit_index", "Raft commit index");
    describe_gauge!("keel_raft_applied_index", "Last log index applied to the state machine");
    describe_gauge!("keel_raft_last_log_index", "Last log index in this node's log");
    describe_gauge!("keel_raft_durable_index", "Highest index fsynced on a majority");
    describe_gauge!("keel_raft_is_leader", "1 on the leader, 0 elsewhere");
    describe_gauge!("keel_replication_lag_entries", "On the leader: entries a follower is behind");
    describe_gauge!("keel_segments", "Segment files of the log");
    describe_gauge!("keel_flush_pending_bytes", Unit::Bytes, "Bytes written, not yet fsynced");
    describe_counter!("keel_produce_messages_total", "Records acknowledged to producers");
    describe_counter!("keel_fetch_messages_total", "Records returned to fetches");
    describe_counter!("keel_log_repaired_ranges_total", "Damaged log ranges repaired from a peer at start-up");
    // Present from the start, so a rate over the first scrapes is defined.
    counter!("keel_produce_messages_total").increment(0);
    counter!("keel_fetch_messages_total").increment(0);
    counter!("keel_log_repaired_ranges_total").increment(0);
    counter!("keel_io_bytes_total", "op" => "read").increment(0);
}

/// Records returned to a fetch, and the bytes read for them.
pub fn fetched(records: u64, bytes: u64) {
    counter!("keel_fetch_messages_total").increment(records);
    counter!("keel_io_bytes_total", "op" => "read").increment(bytes);
}

/// Records acknowledged to a producer.
pub fn produced(records: u64) {
    counter!("keel_produce_messages_total").increment(records);
}
