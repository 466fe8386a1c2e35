//! A local cluster of `keel node` processes, laid out and started: the one
//! launcher behind `keel dev`, `keel bench scale`, the integration tests'
//! `Cluster` (`node/tests/common`) and keel-chaos' process backend.
//!
//! Each node is a directory holding its properties file and its data
//! directory; the file names the keys a cluster's nodes must agree on
//! (their ids and addresses, the peer list, who bootstraps, where the data
//! is: [`crate::config::keys::dev_managed`]) and then whatever else the
//! caller sets. A node runs as `keel node --config FILE`, with the
//! `KEEL_*` variables of those keys removed from its environment, since one
//! value for all nodes would break the agreement.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process, set_parent_process_death_signal};

use crate::config;

/// Where one node of a local cluster listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    pub id: u64,
    /// `grpc.listen`, and `grpc.advertised` (what the others dial).
    pub grpc: String,
    /// `admin.listen`.
    pub admin: String,
    /// `store.path.commitlog`.
    pub data: PathBuf,
}

/// `peers` for a cluster of `nodes`: `1@host:port,2@host:port,...`.
pub fn peers(nodes: &[NodeLayout]) -> String {
    nodes.iter().map(|n| format!("{}@{}", n.id, n.grpc)).collect::<Vec<_>>().join(",")
}

/// The properties file of `node`: the keys every node must agree on, then
/// `extra` in order (a key among the first replaces its value there, so the
/// file names each key once).
pub fn properties(node: &NodeLayout, peers: &str, bootstrap: bool, extra: &[(String, String)]) -> String {
    let mut keys: Vec<(String, String)> = vec![
        ("node.id".into(), node.id.to_string()),
        ("grpc.listen".into(), node.grpc.clone()),
        ("grpc.advertised".into(), node.grpc.clone()),
        ("admin.listen".into(), node.admin.clone()),
        ("peers".into(), peers.to_string()),
        ("cluster.bootstrap".into(), bootstrap.to_string()),
        ("store.path.commitlog".into(), node.data.display().to_string()),
    ];
    let managed = keys.len();
    for (key, value) in extra {
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.clone(),
            None => keys.push((key.clone(), value.clone())),
        }
    }
    let mut text = String::new();
    for (i, (key, value)) in keys.iter().enumerate() {
        if key == "cluster.bootstrap" {
            let _ = writeln!(text, "# Only acts on an empty store, so a restart keeps the existing cluster.");
        }
        if i == managed {
            let _ = writeln!(text, "# Set by whoever started the cluster:");
        }
        let _ = writeln!(text, "{key}={value}");
    }
    text
}

/// `count` distinct free loopback ports: all bound at once (so none is
/// handed out twice), then released for the nodes to bind. Another process
/// may take one in between; the node then fails to start, naming it.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

/// `keel node --config PROPERTIES`, from the node's directory, stdin
/// closed, without the `KEEL_*` variables of the keys the file owns. In
/// the network namespace `netns` when given (`ip netns exec`, which execs
/// keel in place: the child's pid is keel's).
pub fn node_command(keel: &Path, properties: &Path, netns: Option<&str>) -> Command {
    // Absolute: the command runs from the node's directory, where a
    // relative `target/release/keel` would name nothing.
    let keel = std::path::absolute(keel).unwrap_or_else(|_| keel.to_path_buf());
    let keel = keel.as_path();
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(keel);
            c
        }
        None => Command::new(keel),
    };
    command.args(node_args(properties)).stdin(Stdio::null());
    if let Some(dir) = properties.parent() {
        command.current_dir(dir);
    }
    for key in config::keys::dev_managed() {
        command.env_remove(config::env_var_name(key.name));
    }
    command
}

fn node_args(properties: &Path) -> [OsString; 3] {
    ["node".into(), "--config".into(), properties.as_os_str().to_owned()]
}

/// Have the kernel SIGKILL the node started by `command` when the thread
/// that starts it ends (`PR_SET_PDEATHSIG`), so no node outlives its
/// launcher holding its ports, whatever ended the launcher. Start it from a
/// thread that lives as long as the launcher (the main thread: `main`
/// polls the command's future there), not from a pool thread that may
/// exit while the node runs.
pub fn kill_with_parent(command: &mut Command) {
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; prctl is one (rustix makes the
    // raw syscall: no allocation, no lock) and touches no memory of ours.
    unsafe {
        command.pre_exec(|| set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from));
    }
}

/// Send `signal` to the child `pid`. The caller must not have reaped it
/// yet, so the pid cannot belong to another process.
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{pid} is not a process id")))?;
    Ok(kill_process(pid, signal)?)
}

/// Mount a tmpfs of `bytes` on `dir`, so one node's disk can be filled
/// without filling the machine's. Needs root, and says so.
pub fn mount_tmpfs(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .output()
        .with_context(|| format!("run mount for a tmpfs on {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "could not mount a {bytes}-byte tmpfs on {} (it needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeLayout {
        NodeLayout {
            id,
            grpc: format!("127.0.0.1:{}", 9090 + id),
            admin: format!("127.0.0.1:{}", 9190 + id),
            data: PathBuf::from(format!("/d/node{id}/data")),
        }
    }

    #[test]
    fn a_nodes_file_names_every_agreed_key_once_and_reads_back_as_that_node() {
        let nodes = [node(1), node(2), node(3)];
        let peers = peers(&nodes);
        assert_eq!(peers, "1@127.0.0.1:9091,2@127.0.0.1:9092,3@127.0.0.1:9093");
        let extra = [("flush.disk.type".to_string(), "BATCH_FLUSH".to_string()), ("node.id".into(), "2".into())];
        let text = properties(&nodes[1], &peers, false, &extra);
        let settings = config::parse_properties(&text, "node2.properties").expect("the file parses, keys once");
        let c = config::resolve(settings, Vec::new(), Vec::new()).expect("a valid node configuration");
        assert_eq!((c.node_id, c.grpc_advertised.as_str()), (2, "127.0.0.1:9092"));
        assert_eq!(c.peers.len(), 3);
        assert!(!c.cluster_bootstrap);
        assert_eq!(c.store.dir, PathBuf::from("/d/node2/data"));
        assert_eq!(c.store.flush.policy, keel_raft_log::FlushPolicy::BatchFlush);
        // Every key the launcher owns is one `keel dev` refuses in --set.
        for key in ["node.id", "grpc.listen", "grpc.advertised", "admin.listen", "peers", "cluster.bootstrap"] {
            assert!(config::keys::key(key).is_some_and(|k| k.dev_managed), "{key}");
        }
    }

    #[test]
    fn free_ports_are_distinct_and_a_command_runs_keel_node_on_its_file() {
        let ports = free_ports(6).expect("ports");
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 6, "{ports:?}");
        let c = node_command(Path::new("/bin/keel"), Path::new("/d/node1/node.properties"), Some("ns1"));
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(c.get_program(), "ip");
        assert_eq!(args, ["netns", "exec", "ns1", "/bin/keel", "node", "--config", "/d/node1/node.properties"]);
        assert_eq!(c.get_current_dir(), Some(Path::new("/d/node1")));
        let relative = node_command(Path::new("target/release/keel"), Path::new("/d/node1/node.properties"), None);
        assert!(Path::new(relative.get_program()).is_absolute(), "{:?} runs from the node's directory", relative);
        let removed: Vec<_> =
            c.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert!(removed.contains(&"KEEL_PEERS".to_string()) && removed.contains(&"KEEL_NODE_ID".to_string()));
    }
}
