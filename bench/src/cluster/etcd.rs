//! etcd: three members. etcd appends every proposal to its WAL and fsyncs
//! it before the entry counts as stored on that member; an entry commits
//! (and a put is answered) once a majority has it, so a put's answer means
//! "fsynced on a majority" by default. Nothing here turns that off: no
//! `--unsafe-no-fsync` (etcd 3.5+; Debian's 3.4 has no such flag), and every
//! `ETCD_*` variable of the caller's environment is removed, since etcd reads
//! its flags from those too.
//!
//! Changed from the defaults, none touching durability:
//! - `--max-request-bytes 4194304`: the default (1.5 MiB) refuses nothing of
//!   ours, but a 1 MiB value plus gRPC framing sits close to it; 4 MiB
//!   leaves room.
//! - `--quota-backend-bytes 8589934592` (8 GiB, the recommended maximum): the
//!   default 2 GiB would fill during the larger points and make etcd refuse
//!   writes (NOSPACE alarm).
//! - `--snapshot-count 10000` (default 100,000): etcd keeps the raft log in
//!   memory up to a snapshot; with 1 MiB values 100,000 entries per member
//!   would not fit this machine's memory.
//!
//! The load connects to the leader (found through each member's status), so
//! no put takes the extra hop a follower would add by forwarding it.
//! Ports: client 22371–22373, peer 22381–22383.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, CompactionOptions, ConnectOptions, KvClient};
use tokio::process::Command;

use super::{Reset, Started, fresh_dir, wait_ready};
use crate::load::Target;
use crate::procs::{Procs, check_ports, clear_env_prefix, output};

const CLIENT_PORT: u16 = 22371;
const PEER_PORT: u16 = 22381;
const MEMBERS: u16 = 3;
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
pub const QUOTA_BACKEND_BYTES: u64 = 8 << 30;
pub const SNAPSHOT_COUNT: u64 = 10_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn client_url(i: u16) -> String {
    format!("http://127.0.0.1:{}", CLIENT_PORT + i)
}

fn peer_url(i: u16) -> String {
    format!("http://127.0.0.1:{}", PEER_PORT + i)
}

pub async fn version() -> Result<String> {
    let out = {
        let mut c = Command::new("etcd");
        c.arg("--version");
        output(c, "etcd --version", Duration::from_secs(10))
    }
    .await?;
    let v = out.lines().next().and_then(|l| l.strip_prefix("etcd Version: ")).unwrap_or("unknown").trim();
    Ok(v.to_string())
}

/// The arguments of member `i`, checked: an fsync-disabling flag here
/// would make every etcd figure meaningless.
fn args(i: u16, data_dir: &Path) -> Vec<String> {
    let initial_cluster: Vec<String> = (0..MEMBERS).map(|j| format!("e{}={}", j + 1, peer_url(j))).collect();
    let args = vec![
        format!("--name=e{}", i + 1),
        format!("--data-dir={}", data_dir.join(format!("e{}", i + 1)).display()),
        format!("--listen-client-urls={}", client_url(i)),
        format!("--advertise-client-urls={}", client_url(i)),
        format!("--listen-peer-urls={}", peer_url(i)),
        format!("--initial-advertise-peer-urls={}", peer_url(i)),
        format!("--initial-cluster={}", initial_cluster.join(",")),
        "--initial-cluster-state=new".to_string(),
        "--initial-cluster-token=keel-bench".to_string(),
        format!("--max-request-bytes={MAX_REQUEST_BYTES}"),
        format!("--quota-backend-bytes={QUOTA_BACKEND_BYTES}"),
        format!("--snapshot-count={SNAPSHOT_COUNT}"),
        "--log-level=warn".to_string(),
    ];
    assert!(!args.iter().any(|a| a.contains("unsafe-no-fsync")), "etcd must fsync its WAL before it acks");
    args
}

pub async fn start(procs: &mut Procs, scratch: &Path) -> Result<Started> {
    let ports: Vec<(u16, String)> = (0..MEMBERS)
        .flat_map(|i| [(CLIENT_PORT + i, format!("e{} client", i + 1)), (PEER_PORT + i, format!("e{} peer", i + 1))])
        .collect();
    check_ports("etcd", &ports).await?;
    let version = version().await?;
    let data_dir = scratch.join("etcd");
    fresh_dir(&data_dir)?;
    for i in 0..MEMBERS {
        let mut command = Command::new("etcd");
        command.args(args(i, &data_dir));
        clear_env_prefix(&mut command, "ETCD_");
        procs.spawn(&format!("etcd e{}", i + 1), command, &scratch.join(format!("etcd-e{}.log", i + 1)))?;
    }
    let leader_endpoint = wait_ready(procs, "etcd: find the leader", find_leader).await?;
    let client = connect(&leader_endpoint).await?;
    let kv = client.kv_client();
    Ok(Started {
        system: "etcd",
        series: "etcd",
        version,
        flush: super::keel::SYNC_FLUSH,
        target: Target::Etcd { kv: kv.clone() },
        reset: Reset::EtcdCompact(Box::new(kv)),
        data_dir,
    })
}

async fn connect(endpoint: &str) -> Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT).with_timeout(CALL_TIMEOUT);
    Client::connect([endpoint], Some(options)).await.with_context(|| format!("connect to etcd at {endpoint}"))
}

/// The client URL of the member that leads, once every member answers and
/// agrees on a leader.
async fn find_leader() -> Result<String> {
    let mut leader = None;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let endpoint = client_url(i);
        let mut client = connect(&endpoint).await?;
        let status = client.status().await.with_context(|| format!("status of {endpoint}"))?;
        let member_id = status.header().map(|h| h.member_id()).context("a status answer has a header")?;
        if status.leader() == 0 {
            bail!("{endpoint} knows no leader yet");
        }
        leader = Some(status.leader());
        members.push((member_id, endpoint));
    }
    let leader = leader.context("three members answered")?;
    members
        .into_iter()
        .find(|(id, _)| *id == leader)
        .map(|(_, e)| e)
        .context("the leader the members name is not one of them (yet)")
}

/// Compacts every revision older than the current one and waits until the
/// space is reusable.
pub async fn compact(kv: &mut KvClient) -> Result<()> {
    let revision = kv
        .get("bench/compact-probe", None)
        .await
        .context("etcd: read the current revision")?
        .header()
        .map(|h| h.revision())
        .context("a get answer has a header")?;
    kv.compact(revision, Some(CompactionOptions::new().with_physical())).await.context("etcd: compact")?;
    Ok(())
}
