//! The results: `latest.json` (the schema the issue fixes), `<date>.md`
//! (tables and the machine) and the plot (`plot.rs`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::cluster::keel::{ASYNC_FLUSH, BATCH_FLUSH, Producing, SYNC_FLUSH};
use crate::disk::Disk;
use crate::load::Measured;
use crate::machine::Machine;
use crate::plot;

/// keel's series, in the order of the tables' columns and the plot's legend.
pub const KEEL_SERIES: [&str; 2] = [Producing::OneRecordPerRequest.series(), Producing::Batcher.series()];
/// The peers, each one series named after its system.
pub const PEERS: [&str; 3] = ["etcd", "nats", "rabbitmq"];

/// Every series, keel's first.
pub fn all_series() -> impl Iterator<Item = &'static str> {
    KEEL_SERIES.into_iter().chain(PEERS)
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub date: String,
    pub quick: bool,
    pub machine: Machine,
    /// `None` (null) only when the run was told to skip the disk.
    pub disk: Option<Disk>,
    pub results: Vec<Row>,
    /// Systems that could not be (fully) measured, and why. Absent when
    /// everything ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_measured: Vec<Skipped>,
    #[serde(skip)]
    pub wall_s: f64,
    #[serde(skip)]
    pub warmup_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    /// The system, or for keel which of its series (`KEEL_SERIES`).
    pub series: String,
    pub version: String,
    pub flush: String,
    pub size: usize,
    pub inflight: usize,
    #[serde(flatten)]
    pub measured: Measured,
}

impl Row {
    pub fn new(cluster: &Cluster, size: usize, inflight: usize, m: &Measured) -> Self {
        Row {
            system: cluster.system.to_string(),
            series: cluster.series.to_string(),
            version: cluster.version.clone(),
            flush: cluster.flush.to_string(),
            size,
            inflight,
            measured: Measured {
                msgs_per_s: (m.msgs_per_s * 10.0).round() / 10.0,
                mib_per_s: (m.mib_per_s * 100.0).round() / 100.0,
                ..m.clone()
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub system: String,
    pub series: String,
    pub flush: String,
    pub reason: String,
}

pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// Microseconds as a short human figure: `850 µs`, `1.8 ms`, `1.20 s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `41230.4` → `41,230`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn guarantee(flush: &str) -> &'static str {
    match flush {
        SYNC_FLUSH => "acked after fsync on a majority",
        BATCH_FLUSH => {
            "acked after fsync on a majority, but every node's fsync waits for `flush.batch.size` \
             messages or `flush.interval.ms`: with fewer messages in flight the interval paces the acks"
        }
        ASYNC_FLUSH => {
            "acked once in the page cache of a majority (fsync every `flush.interval.ms`): a power loss \
             of a majority can lose acknowledged messages"
        }
        _ => "unknown",
    }
}

pub fn write(dir: &Path, report: &Report) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).context("serialize the report")?;
    let json_path = dir.join("latest.json");
    std::fs::write(&json_path, json + "\n").with_context(|| format!("write {}", json_path.display()))?;
    let svg = plot::render(report)?;
    for name in ["latest.svg".to_string(), format!("{}.svg", report.date)] {
        let path = dir.join(name);
        std::fs::write(&path, &svg).with_context(|| format!("write {}", path.display()))?;
    }
    let md_path = dir.join(format!("{}.md", report.date));
    std::fs::write(&md_path, markdown(report)).with_context(|| format!("write {}", md_path.display()))?;
    Ok(())
}

fn find<'a>(rows: &'a [Row], series: &str, flush: &str, size: usize, inflight: usize) -> Option<&'a Row> {
    rows.iter().find(|r| r.series == series && r.flush == flush && r.size == size && r.inflight == inflight)
}

/// The (size, in flight) points of the SYNC_FLUSH rows, in run order.
fn sync_points(rows: &[Row]) -> Vec<(usize, usize)> {
    let mut points = Vec::new();
    for r in rows.iter().filter(|r| r.flush == SYNC_FLUSH) {
        if !points.contains(&(r.size, r.inflight)) {
            points.push((r.size, r.inflight));
        }
    }
    points
}

/// The markdown tables of the SYNC_FLUSH results alone (for the README too):
/// a column per series, then each keel series ÷ the best peer at that point.
pub fn sync_tables(report: &Report) -> String {
    let rows = &report.results;
    let mut md = String::new();
    let present: Vec<&str> =
        all_series().filter(|s| rows.iter().any(|r| r.series == *s && r.flush == SYNC_FLUSH)).collect();
    let keels: Vec<&str> = present.iter().copied().filter(|s| KEEL_SERIES.contains(s)).collect();
    let ratios: Vec<String> = keels.iter().map(|k| format!(" {k} ÷ best peer |")).collect();
    let _ = writeln!(md, "| messages/s (p99 ack latency) | {} |{}", present.join(" | "), ratios.concat());
    let _ = writeln!(md, "|---|{}", "---:|".repeat(present.len() + keels.len()));
    for (size, inflight) in sync_points(rows) {
        let mut line = format!("| {} × {inflight} in flight |", size_label(size));
        for s in &present {
            match find(rows, s, SYNC_FLUSH, size, inflight) {
                Some(r) => {
                    let _ = write!(line, " {} ({}) |", thousands(r.measured.msgs_per_s), human_us(r.measured.p99_us));
                }
                None => line.push_str(" — |"),
            }
        }
        let best_peer = PEERS
            .iter()
            .filter_map(|s| find(rows, s, SYNC_FLUSH, size, inflight))
            .max_by(|a, b| a.measured.msgs_per_s.total_cmp(&b.measured.msgs_per_s));
        for keel in &keels {
            match (find(rows, keel, SYNC_FLUSH, size, inflight), best_peer) {
                (Some(k), Some(p)) if p.measured.msgs_per_s > 0.0 => {
                    let _ = write!(line, " {:.2}× ({}) |", k.measured.msgs_per_s / p.measured.msgs_per_s, p.series);
                }
                _ => line.push_str(" — |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    md
}

fn detail_table(md: &mut String, rows: &[&Row]) {
    let _ = writeln!(md, "| system | flush | size | in flight | msgs/s | MiB/s | p50 | p99 | p999 | errors |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            r.series,
            r.flush,
            size_label(r.size),
            r.inflight,
            thousands(r.measured.msgs_per_s),
            r.measured.mib_per_s,
            human_us(r.measured.p50_us),
            human_us(r.measured.p99_us),
            human_us(r.measured.p999_us),
            r.measured.errors
        );
    }
}

fn markdown(report: &Report) -> String {
    let m = &report.machine;
    let mut md = String::new();
    let kind = if report.quick { " (`--quick`)" } else { "" };
    let _ = writeln!(md, "# keel side by side with etcd, NATS JetStream and RabbitMQ — {}{kind}\n", report.date);
    let duration = report.results.first().map(|r| r.measured.duration_s).unwrap_or(0.0);
    let _ = writeln!(
        md,
        "`bench/compare{}`: one run, one machine, one load generator (`bench/`, keel-bench). Each system is a \
         three-node cluster on loopback with its data on the same disk; every point ran {:.0} s of warm-up, then \
         {:.0} s measured. \"In flight\" is the number of messages sent and not yet acknowledged, at all times. \
         Latency is per message, from send to ack. The run took {:.1} minutes. How each system is configured, and \
         why that matches keel's SYNC_FLUSH, is in [bench/README.md](../README.md).\n",
        if report.quick { " --quick" } else { "" },
        report.warmup_s,
        duration,
        report.wall_s / 60.0
    );

    let _ = writeln!(md, "## Acknowledged after fsync on a majority\n");
    let _ = writeln!(
        md,
        "keel under SYNC_FLUSH, one record per Produce request and through keel-client's `Batcher`; etcd (WAL \
         fsync before commit); NATS JetStream R3 file stream with `sync_interval: always`; RabbitMQ quorum queue \
         with publisher confirms.\n"
    );
    md.push_str(&sync_tables(report));
    let _ = writeln!(md, "\n![throughput and p99 against messages in flight, 1 KiB messages]({}.svg)\n", report.date);
    let sync: Vec<&Row> = report.results.iter().filter(|r| r.flush == SYNC_FLUSH).collect();
    detail_table(&mut md, &sync);

    let weak: Vec<&Row> = report.results.iter().filter(|r| r.flush != SYNC_FLUSH).collect();
    if !weak.is_empty() {
        let _ = writeln!(md, "\n## keel under weaker flush policies (not comparable with the table above)\n");
        for flush in [BATCH_FLUSH, ASYNC_FLUSH] {
            if weak.iter().any(|r| r.flush == flush) {
                let _ = writeln!(md, "- **{flush}**: {}.", guarantee(flush));
            }
        }
        md.push('\n');
        detail_table(&mut md, &weak);
    }

    if !report.not_measured.is_empty() || report.results.iter().any(|r| r.measured.errors > 0) {
        let _ = writeln!(md, "\n## What did not work\n");
        for s in &report.not_measured {
            let _ =
                writeln!(md, "- **{} ({})** not (fully) measured: {}", s.series, s.flush, s.reason.replace('\n', " "));
        }
        for r in report.results.iter().filter(|r| r.measured.errors > 0) {
            let _ = writeln!(
                md,
                "- {} {} {} × {}: {} errors; first: {}",
                r.series,
                r.flush,
                size_label(r.size),
                r.inflight,
                r.measured.errors,
                r.measured.first_error.as_deref().unwrap_or("?")
            );
        }
    }

    let _ = writeln!(md, "\n## The disk's own limits\n");
    match &report.disk {
        Some(d) => {
            let _ = writeln!(md, "| measurement | result |\n|---|---:|");
            let _ = writeln!(md, "| fio: 4 KiB write + fdatasync, one job | {} IOPS |", thousands(d.fio_fsync_4k_iops));
            let _ = writeln!(
                md,
                "| fio: its fdatasync latency, p99 | {} |",
                human_us(d.fio_fsync_4k_p99_us.round() as u64)
            );
            let _ = writeln!(
                md,
                "| fio: sequential 1 MiB writes, O_DIRECT, 8 in flight | {:.0} MiB/s |",
                d.fio_seq_1m_mib_per_s
            );
            let s = &d.keel_storage;
            let num = |k: &str| s[k].as_f64();
            let mut storage = |label: &str, value: Option<String>| {
                if let Some(v) = value {
                    let _ = writeln!(md, "| {label} | {v} |");
                }
            };
            let w = s["writers"].as_u64().unwrap_or(0);
            storage(
                &format!("`keel bench storage`: raw pwrite + fdatasync loop, {w} × 1 KiB per sync"),
                num("raw_appends_per_s").map(|v| format!("{} appends/s", thousands(v))),
            );
            storage(
                &format!("`keel bench storage`: log store, SYNC_FLUSH, {w} writers"),
                num("engine_appends_per_s").map(|v| format!("{} appends/s", thousands(v))),
            );
            storage("`keel bench storage`: store ÷ raw", num("ratio").map(|v| format!("{v:.2}")));
            storage(
                "`keel bench storage`: one writer, append p50 / p99",
                num("engine_append_p50_us")
                    .zip(num("engine_append_p99_us"))
                    .map(|(a, b)| format!("{} / {}", human_us(a as u64), human_us(b as u64))),
            );
            let _ = writeln!(md, "\nAll of `keel bench storage --json` is in `latest.json` under `disk.keel_storage`.");
        }
        None => {
            let _ = writeln!(md, "Not measured in this run (`--skip-disk`).");
        }
    }

    let _ = writeln!(md, "\n## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(md, "| cores | {} |", m.cores);
    let _ = writeln!(md, "| RAM | {} GiB |", m.ram_gib);
    let _ = writeln!(md, "| disk | {} ({}) |", m.disk, m.filesystem);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| OS | {} |", m.os);
    let _ = writeln!(md, "| load average at start / end | {} / {} |", m.loadavg_start, m.loadavg_end);
    for (name, v) in &m.versions {
        let _ = writeln!(md, "| {name} | {v} |");
    }
    let _ = writeln!(
        md,
        "| load generator | keel-bench: keel-client (`Producer::produce` of one record; `Batcher`), etcd-client 0.21, async-nats 0.51, lapin 4; tokio, \
         mimalloc, {} cores shared with the servers |",
        m.cores
    );
    md
}

/// Rows and reports for the tests of this module and `plot.rs`.
#[cfg(test)]
pub mod fixtures {
    use std::collections::BTreeMap;

    use super::*;

    pub fn row(series: &str, flush: &str, size: usize, inflight: usize, msgs_per_s: f64, p99_us: u64) -> Row {
        let system = if KEEL_SERIES.contains(&series) { "keel" } else { series };
        Row {
            system: system.into(),
            series: series.into(),
            version: "1".into(),
            flush: flush.into(),
            size,
            inflight,
            measured: Measured {
                duration_s: 1.0,
                msgs_per_s,
                mib_per_s: msgs_per_s * size as f64 / (1024.0 * 1024.0),
                p50_us: p99_us / 2,
                p99_us,
                p999_us: p99_us * 2,
                errors: 0,
                first_error: None,
            },
        }
    }

    pub fn report(results: Vec<Row>) -> Report {
        Report {
            schema: 2,
            date: "2026-11-26".into(),
            quick: false,
            machine: Machine {
                cpu_model: String::new(),
                cores: 2,
                ram_gib: 1.0,
                disk: String::new(),
                filesystem: String::new(),
                kernel: String::new(),
                os: String::new(),
                loadavg_start: String::new(),
                loadavg_end: String::new(),
                versions: BTreeMap::new(),
            },
            disk: None,
            results,
            not_measured: Vec::new(),
            wall_s: 0.0,
            warmup_s: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{report, row};
    use super::*;

    #[test]
    fn labels_read_well() {
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(65_536), "64 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(100), "100 B");
        assert_eq!(human_us(850), "850 µs");
        assert_eq!(human_us(1_800), "1.8 ms");
        assert_eq!(human_us(1_200_000), "1.20 s");
        assert_eq!(thousands(41_230.4), "41,230");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn the_sync_table_shows_both_keel_series_each_against_the_best_peer() {
        let [single, batcher] = KEEL_SERIES;
        let report = report(vec![
            row(single, SYNC_FLUSH, 1024, 1, 300.0, 9_000),
            row(single, SYNC_FLUSH, 1024, 64, 4_000.0, 30_000),
            row(batcher, SYNC_FLUSH, 1024, 1, 150.0, 15_000),
            row(batcher, SYNC_FLUSH, 1024, 64, 16_000.0, 15_000),
            row("etcd", SYNC_FLUSH, 1024, 1, 600.0, 9_000),
            row("etcd", SYNC_FLUSH, 1024, 64, 3_000.0, 40_000),
            row("nats", SYNC_FLUSH, 1024, 1, 500.0, 10_000),
            row("nats", SYNC_FLUSH, 1024, 64, 8_000.0, 43_000),
            row(batcher, ASYNC_FLUSH, 1024, 64, 23_000.0, 11_000),
        ]);
        let table = sync_tables(&report);
        let lines: Vec<&str> = table.lines().collect();

        // Phase: a column per series present (keel's first), then a ratio per keel series.
        assert_eq!(
            lines[0],
            "| messages/s (p99 ack latency) | keel (1 record/request) | keel (Batcher) | etcd | nats | \
             keel (1 record/request) ÷ best peer | keel (Batcher) ÷ best peer |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|---:|---:|");

        // Phase: each keel series divided by the same best peer of its point.
        assert_eq!(
            lines[2],
            "| 1 KiB × 1 in flight | 300 (9.0 ms) | 150 (15.0 ms) | 600 (9.0 ms) | 500 (10.0 ms) | 0.50× (etcd) | \
             0.25× (etcd) |"
        );
        assert_eq!(
            lines[3],
            "| 1 KiB × 64 in flight | 4,000 (30.0 ms) | 16,000 (15.0 ms) | 3,000 (40.0 ms) | 8,000 (43.0 ms) | \
             0.50× (nats) | 2.00× (nats) |"
        );
        assert_eq!(lines.len(), 4, "weaker policies stay out of this table");
    }

    #[test]
    fn the_markdown_lists_both_keel_series_under_every_weaker_policy() {
        let [single, batcher] = KEEL_SERIES;
        let mut rows = Vec::new();
        for flush in [SYNC_FLUSH, BATCH_FLUSH, ASYNC_FLUSH] {
            for series in KEEL_SERIES {
                rows.push(row(series, flush, 1024, 64, 1_000.0, 10_000));
            }
        }
        let md = markdown(&report(rows));
        let weak = &md[md.find("## keel under weaker flush policies").expect("the weaker policies' section")..];
        for flush in [BATCH_FLUSH, ASYNC_FLUSH] {
            for series in [single, batcher] {
                assert!(weak.contains(&format!("| {series} | {flush} | 1 KiB | 64 |")), "{series} {flush}");
            }
        }
    }
}
