//! What the numbers were measured on: CPU, cores, memory, the disk under
//! the scratch directory, kernel, OS, the load average (the machine may be
//! shared), and each system's version.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

use crate::procs::output;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub disk: String,
    pub filesystem: String,
    pub kernel: String,
    pub os: String,
    /// 1-, 5- and 15-minute load averages when the run started and ended.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub versions: BTreeMap<String, String>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn loadavg() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub async fn describe(scratch: &Path) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut findmnt = Command::new("findmnt");
    findmnt.args(["-no", "SOURCE,FSTYPE", "--target"]).arg(scratch);
    let mount = output(findmnt, "findmnt", Duration::from_secs(10)).await.unwrap_or_default();
    let mut parts = mount.split_whitespace();
    let source = parts.next().unwrap_or("unknown").to_string();
    let filesystem = parts.next().unwrap_or("unknown").to_string();
    let mut lsblk = Command::new("lsblk");
    lsblk.args(["-ndo", "SIZE,ROTA,MODEL"]).arg(&source);
    let disk = match output(lsblk, "lsblk", Duration::from_secs(10)).await {
        Ok(out) => {
            let fields: Vec<&str> = out.split_whitespace().collect();
            let size = fields.first().copied().unwrap_or("?");
            let kind = match fields.get(1).copied() {
                Some("0") => "non-rotational",
                Some("1") => "rotational",
                _ => "unknown kind",
            };
            let model = fields.get(2..).map(|m| m.join(" ")).filter(|m| !m.is_empty());
            match model {
                Some(m) => format!("{source}: {m}, {size}, {kind}"),
                None => format!("{source}: {size}, {kind} (virtual disk, no model)"),
            }
        }
        Err(_) => source,
    };
    Machine {
        cpu_model,
        cores,
        ram_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        disk,
        filesystem,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        os,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        versions: BTreeMap::new(),
    }
}
