//! `--backend process`: three `keel node` child processes on loopback, each
//! with its own properties file and data directory under one temp dir, laid
//! out and started by `keel_node::launch` (the launcher of `keel dev` and
//! of the integration tests).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_node::launch;
use rustix::process::Signal;

use super::Backend;

const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// What the power-loss build logs at start (see keel-node's `power-loss` feature).
pub const POWER_LOSS_MARK: &str = "power-loss test build";

struct Node {
    id: u64,
    grpc: String,
    admin: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Process {
    keel: PathBuf,
    /// Each node in its own network namespace (partition).
    net: Option<Netns>,
    /// Each node's data on its own tmpfs of this many bytes (disk-full).
    volume_bytes: Option<u64>,
    root: tempfile::TempDir,
    keep: bool,
    nodes: Mutex<Vec<Node>>,
}

impl Process {
    /// Write three nodes' files (flush policy `flush`) and start them.
    /// With `volume_bytes`, each node's data lives on its own tmpfs of that
    /// size (mounted here; needs root), so one node's disk can be filled.
    /// With `netns`, each node runs in a network namespace of its own behind
    /// a bridge (needs root), so one node can be cut off from its peers.
    /// With `segment_bytes`, segments of that size (small ones roll often).
    /// With `flush_interval_ms`, that `flush.interval.ms`.
    pub fn start_cluster(
        keel: &Path,
        flush: &str,
        keep: bool,
        volume_bytes: Option<u64>,
        netns: bool,
        segment_bytes: Option<u64>,
        flush_interval_ms: Option<u64>,
    ) -> Result<Self> {
        if !keel.is_file() {
            bail!("no keel binary at {} (build it, or pass --keel-bin)", keel.display());
        }
        let root = tempfile::Builder::new().prefix("keel-chaos-").tempdir().context("temp dir")?;
        let mut nodes = Vec::new();
        let ports = launch::free_ports(6).context("pick free loopback ports")?;
        let net = if netns { Some(Netns::create()?) } else { None };
        // Loopback ports, or each namespace's own address with fixed ports.
        let host = |i: u64| net.as_ref().map_or_else(|| "127.0.0.1".to_string(), |n| n.ip(i));
        let grpc_port = |i: u64| if net.is_some() { 9091 } else { ports[i as usize - 1] };
        let admin_port = |i: u64| if net.is_some() { 9191 } else { ports[i as usize + 2] };
        let layouts: Vec<launch::NodeLayout> = (1..=3)
            .map(|id| launch::NodeLayout {
                id,
                grpc: format!("{}:{}", host(id), grpc_port(id)),
                admin: format!("{}:{}", host(id), admin_port(id)),
                data: root.path().join(format!("node{id}")).join("vol").join("data"),
            })
            .collect();
        let peers = launch::peers(&layouts);
        let mut extra = vec![("flush.disk.type".to_string(), flush.to_string())];
        if let Some(bytes) = segment_bytes {
            extra.push(("segment.bytes".into(), bytes.to_string()));
            extra.push(("max.message.bytes".into(), "65536".into()));
        }
        if let Some(ms) = flush_interval_ms {
            extra.push(("flush.interval.ms".into(), ms.to_string()));
        }
        for layout in &layouts {
            let dir = root.path().join(format!("node{}", layout.id));
            std::fs::create_dir_all(dir.join("vol"))?;
            if let Some(bytes) = volume_bytes {
                launch::mount_tmpfs(&dir.join("vol"), bytes).context("the disk-full scenario's volume")?;
            }
            let config = dir.join("node.properties");
            std::fs::write(&config, launch::properties(layout, &peers, layout.id == 1, &extra))?;
            nodes.push(Node {
                id: layout.id,
                grpc: layout.grpc.clone(),
                admin: layout.admin.clone(),
                config,
                log: dir.join("node.log"),
                child: None,
            });
        }
        let p = Self { keel: keel.to_path_buf(), net, volume_bytes, root, keep, nodes: Mutex::new(nodes) };
        for id in 1..=3 {
            p.start(id)?;
        }
        Ok(p)
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, node: u64, sig: Signal) -> Result<()> {
        let nodes = self.nodes();
        let n = &nodes[node as usize - 1];
        if let Some(c) = &n.child {
            // Not reaped yet (only `kill` and `stop` reap, under this lock).
            launch::signal(c.id(), sig).with_context(|| format!("signal node {node}"))?;
        }
        Ok(())
    }
}

impl Backend for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn nodes(&self) -> Vec<u64> {
        vec![1, 2, 3]
    }

    fn grpc_addrs(&self) -> Vec<String> {
        self.nodes().iter().map(|n| n.grpc.clone()).collect()
    }

    fn admin_addr(&self, node: u64) -> String {
        self.nodes()[node as usize - 1].admin.clone()
    }

    fn data_dir(&self, node: u64) -> Result<PathBuf> {
        Ok(self.root.path().join(format!("node{node}")).join("vol").join("data"))
    }

    fn kill(&self, node: u64) -> Result<()> {
        let mut nodes = self.nodes();
        let n = &mut nodes[node as usize - 1];
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    fn start(&self, node: u64) -> Result<()> {
        let mut nodes = self.nodes();
        let n = &mut nodes[node as usize - 1];
        if let Some(c) = &mut n.child
            && c.try_wait()?.is_none()
        {
            return Ok(());
        }
        let log = OpenOptions::new().create(true).append(true).open(&n.log)?;
        let mut announce = log.try_clone()?;
        let _ = writeln!(announce, "--- keel-chaos: starting node {}", n.id);
        let netns = self.net.as_ref().map(|net| net.ns(n.id));
        let child = launch::node_command(&self.keel, &n.config, netns.as_deref())
            // The file is the whole configuration: no KEEL_* variable of ours.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.keel.display()))?;
        n.child = Some(child);
        Ok(())
    }

    fn stop(&self, node: u64) -> Result<()> {
        self.signal(node, Signal::TERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            {
                let mut nodes = self.nodes();
                let n = &mut nodes[node as usize - 1];
                match &mut n.child {
                    None => return Ok(()),
                    Some(c) => {
                        if c.try_wait()?.is_some() {
                            n.child = None;
                            return Ok(());
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                self.kill(node)?;
                bail!("node {node} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pause(&self, node: u64) -> Result<()> {
        self.signal(node, Signal::STOP)
    }

    fn resume(&self, node: u64) -> Result<()> {
        self.signal(node, Signal::CONT)
    }

    fn isolate(&self, node: u64) -> Result<()> {
        let Some(net) = &self.net else {
            bail!("this cluster's nodes share loopback: start it for the partition scenario (network namespaces)")
        };
        net.isolate(node)
    }

    fn heal(&self, node: u64) -> Result<()> {
        match &self.net {
            Some(net) => net.heal(node),
            None => Ok(()),
        }
    }

    fn fill_disk(&self, node: u64) -> Result<()> {
        if self.volume_bytes.is_none() {
            bail!("this cluster's nodes have no volume of their own to fill");
        }
        let vol = self.root.path().join(format!("node{node}")).join("vol");
        // Take every free block, in shrinking steps (the node keeps writing
        // meanwhile): the next segment cannot be prepared.
        let filler = std::fs::OpenOptions::new().create(true).append(true).open(vol.join("filler"))?;
        let mut len = filler.metadata()?.len();
        for step in [16u64 << 20, 1 << 20, 64 << 10, 4 << 10] {
            loop {
                match rustix::fs::fallocate(&filler, rustix::fs::FallocateFlags::empty(), len, step) {
                    Ok(()) => len += step,
                    Err(rustix::io::Errno::NOSPC) => break,
                    Err(e) => return Err(std::io::Error::from(e)).context("fill the node's volume"),
                }
            }
        }
        Ok(())
    }

    fn free_disk(&self, node: u64) -> Result<()> {
        let filler = self.root.path().join(format!("node{node}")).join("vol").join("filler");
        match std::fs::remove_file(&filler) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn power_loss_capable(&self) -> Result<()> {
        // The build announces itself in its log at start.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs: Vec<PathBuf> = self.nodes().iter().map(|n| n.log.clone()).collect();
            if logs.iter().all(|l| std::fs::read_to_string(l).unwrap_or_default().contains(POWER_LOSS_MARK)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not a power-loss build: its nodes keep unsynced writes in the page cache, where SIGKILL \
                     does not lose them. Build one with `cargo build --release -p keel-node --features power-loss \
                     --target-dir target/power-loss` and pass --keel-bin target/power-loss/release/keel",
                    self.keel.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn shutdown(&self) {
        for id in 1..=3 {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(net) = self.net.take() {
            net.remove();
        }
        if self.volume_bytes.is_some() {
            for i in 1..=3 {
                let vol = self.root.path().join(format!("node{i}")).join("vol");
                let _ = Command::new("umount").arg("-l").arg(&vol).output();
            }
        }
        if self.keep {
            let root = std::mem::replace(&mut self.root, tempfile::TempDir::new().expect("temp dir"));
            eprintln!("keel-chaos: kept the cluster's files in {}", root.keep().display());
        }
    }
}

/// Three network namespaces behind a bridge: node i at `<subnet>.1i`, the
/// harness (the bridge) at `<subnet>.1`. A partition drops, inside the
/// node's namespace, traffic to and from the other nodes, not the harness's.
struct Netns {
    tag: String,
    subnet: String,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    fn create() -> Result<Self> {
        let id = std::process::id() % 10_000;
        let net = Self { tag: format!("kc{id}"), subnet: format!("10.214.{}", 20 + id % 200) };
        let br = net.bridge();
        let setup = || -> Result<()> {
            sh(&["ip", "link", "add", &br, "type", "bridge"])?;
            sh(&["ip", "addr", "add", &format!("{}.1/24", net.subnet), "dev", &br])?;
            sh(&["ip", "link", "set", &br, "up"])?;
            // Docker's FORWARD policy drops bridged traffic when
            // br_netfilter is loaded: let this bridge's own traffic through.
            let _ = sh(&["iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"]);
            for i in 1..=3u64 {
                let (ns, host_end, node_end) = (net.ns(i), format!("{}h{i}", net.tag), format!("{}n{i}", net.tag));
                sh(&["ip", "netns", "add", &ns])?;
                sh(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", &node_end])?;
                sh(&["ip", "link", "set", &node_end, "netns", &ns])?;
                sh(&["ip", "link", "set", &host_end, "master", &br, "up"])?;
                sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.ip(i)), "dev", &node_end])?;
                sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &node_end, "up"])?;
                sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            net.remove();
            return Err(e.context("set up network namespaces for the partition scenario (it needs root and iproute2)"));
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, node: u64) -> String {
        format!("{}-{node}", self.tag)
    }

    fn ip(&self, node: u64) -> String {
        format!("{}.1{node}", self.subnet)
    }

    fn isolate(&self, node: u64) -> Result<()> {
        let ns = self.ns(node);
        let (net, harness) = (format!("{}.0/24", self.subnet), format!("{}.1", self.subnet));
        let ipt = |rule: &[&str]| {
            let mut args = vec!["ip", "netns", "exec", &ns, "iptables", "-A"];
            args.extend_from_slice(rule);
            sh(&args)
        };
        ipt(&["INPUT", "-s", &harness, "-j", "ACCEPT"])?;
        ipt(&["INPUT", "-s", &net, "-j", "DROP"])?;
        ipt(&["OUTPUT", "-d", &harness, "-j", "ACCEPT"])?;
        ipt(&["OUTPUT", "-d", &net, "-j", "DROP"])
    }

    fn heal(&self, node: u64) -> Result<()> {
        sh(&["ip", "netns", "exec", &self.ns(node), "iptables", "-F"])
    }

    fn remove(&self) {
        for i in 1..=3 {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let br = self.bridge();
        let _ = sh(&["iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"]);
        let _ = sh(&["ip", "link", "del", &br]);
    }
}
