//! The disk's own limits, measured in the scratch directory (the disk every
//! cluster writes to), before any cluster runs:
//!
//! - fio, one job, 4 KiB sequential writes each followed by fdatasync
//!   (`--fdatasync=1`), buffered, into a file fio lays out (writes, not
//!   allocates) first: the most acknowledged-durable appends per second one
//!   writer gets, and the fdatasync latency each of them waits for;
//! - fio, sequential 1 MiB writes with `O_DIRECT`, 8 in flight (libaio):
//!   the bandwidth the device takes;
//! - `keel bench storage --json` under SYNC_FLUSH: keel's log store alone,
//!   with no network and no Raft, next to a raw loop on the same disk.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::process::Command;

use crate::procs::output;

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub fio_fsync_4k_iops: f64,
    pub fio_fsync_4k_p99_us: f64,
    pub fio_seq_1m_mib_per_s: f64,
    pub keel_storage: Value,
}

pub struct DiskTimes {
    pub fio_runtime: Duration,
    pub storage_duration_s: f64,
}

pub async fn version_fio() -> Result<String> {
    let out = {
        let mut c = Command::new("fio");
        c.arg("--version");
        output(c, "fio --version", Duration::from_secs(10))
    }
    .await?;
    Ok(out.trim().trim_start_matches("fio-").to_string())
}

async fn fio(dir: &Path, name: &str, args: &[&str], runtime: Duration) -> Result<Value> {
    let mut command = Command::new("fio");
    command
        .arg(format!("--name={name}"))
        .arg(format!("--filename={}", dir.join(format!("fio-{name}")).display()))
        .arg("--time_based")
        .arg(format!("--runtime={}", runtime.as_secs()))
        .arg("--ramp_time=1")
        .arg("--output-format=json")
        .args(args);
    // Laying out the file and the ramp come on top of the runtime.
    let timeout = runtime + Duration::from_secs(120);
    let out = output(command, &format!("fio {name}"), timeout).await?;
    // fio may print notes before its JSON document.
    let start = out.find('{').with_context(|| format!("fio {name} printed no JSON: {out}"))?;
    serde_json::from_str(&out[start..]).with_context(|| format!("parse the JSON of fio {name}"))
}

pub async fn measure(dir: &Path, keel_bin: &Path, times: &DiskTimes) -> Result<Disk> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    eprintln!("disk: fio 4 KiB write + fdatasync, {} s", times.fio_runtime.as_secs());
    let fsync = fio(
        dir,
        "fsync4k",
        &["--rw=write", "--bs=4k", "--size=256M", "--ioengine=sync", "--fdatasync=1"],
        times.fio_runtime,
    )
    .await?;
    let job = &fsync["jobs"][0];
    let fio_fsync_4k_iops = job["write"]["iops"].as_f64().context("fio fsync4k: jobs[0].write.iops")?;
    let p99_ns = job["sync"]["lat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .context("fio fsync4k: jobs[0].sync.lat_ns.percentile[99]")?;
    eprintln!("disk: fio sequential 1 MiB writes (O_DIRECT, 8 in flight), {} s", times.fio_runtime.as_secs());
    let seq = fio(
        dir,
        "seq1m",
        &["--rw=write", "--bs=1M", "--size=2G", "--ioengine=libaio", "--direct=1", "--iodepth=8"],
        times.fio_runtime,
    )
    .await?;
    let bw_kib = seq["jobs"][0]["write"]["bw"].as_f64().context("fio seq1m: jobs[0].write.bw")?;
    for name in ["fsync4k", "seq1m"] {
        let _ = std::fs::remove_file(dir.join(format!("fio-{name}")));
    }

    eprintln!("disk: keel bench storage --duration {} --json", times.storage_duration_s);
    let mut command = Command::new(keel_bin);
    command
        .arg("bench")
        .arg("storage")
        .arg("--dir")
        .arg(dir)
        .arg("--duration")
        .arg(times.storage_duration_s.to_string())
        .arg("--json");
    let out = output(command, "keel bench storage", Duration::from_secs(600)).await?;
    let last =
        out.lines().rev().find(|l| l.trim_start().starts_with('{')).context("keel bench storage printed no JSON")?;
    let keel_storage: Value = serde_json::from_str(last).context("parse keel bench storage --json")?;
    Ok(Disk {
        fio_fsync_4k_iops,
        fio_fsync_4k_p99_us: p99_ns / 1000.0,
        fio_seq_1m_mib_per_s: bw_kib / 1024.0,
        keel_storage,
    })
}
