//! RabbitMQ: three nodes (rabbit1..3@localhost) joined into one cluster,
//! one quorum queue (`x-queue-type=quorum`, three members), publishers on a
//! confirm channel. A quorum queue is a Raft group (Ra); its leader confirms
//! a publish once the message is committed, that is written to the Ra WAL
//! and fsynced (`wal_sync_method`, default `datasync`) on a majority of the
//! members: fsync-before-ack on a majority, as keel's SYNC_FLUSH.
//!
//! Three nodes on one host need distinct node names, AMQP and distribution
//! ports, data directories (`RABBITMQ_MNESIA_BASE`) and one Erlang cookie
//! (`$HOME/.erlang.cookie`, for the nodes and for rabbitmqctl). epmd runs as
//! our own child on a port of its own (`ERL_EPMD_PORT`), so no daemon
//! outlives the run and a system epmd is left alone. Scripts are run from
//! /usr/lib/rabbitmq/bin: Debian's /usr/sbin wrappers switch to the
//! `rabbitmq` user, whose home holds another cookie.
//!
//! Also set: `x-max-in-memory-length=0` (bodies live in the Ra log on disk,
//! not also in memory: unconsumed 1 MiB messages would otherwise grow the
//! heap of each node), `vm_memory_high_watermark.absolute = 3GB` (three
//! nodes sharing 24 GiB), `disk_free_limit.absolute = 2GB`; no plugins.
//! Ports: AMQP 25671–25673, distribution 25681–25683, epmd 24369.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::process::Command;

use super::{Reset, Started, fresh_dir, wait_ready};
use crate::load::Target;
use crate::procs::{Procs, check_ports, clear_env_prefix, output, write_file};

const AMQP_PORT: u16 = 25671;
const DIST_PORT: u16 = 25681;
const EPMD_PORT: u16 = 24369;
const NODES: u16 = 3;
const QUEUE: &str = "bench";
const BIN: &str = "/usr/lib/rabbitmq/bin";
const CTL_TIMEOUT: Duration = Duration::from_secs(120);
pub const MEMORY_HIGH_WATERMARK: &str = "3GB";
pub const DISK_FREE_LIMIT: &str = "2GB";

fn node_name(i: u16) -> String {
    format!("rabbit{}@localhost", i + 1)
}

struct Layout {
    root: PathBuf,
    home: PathBuf,
    env_file: PathBuf,
    plugins_file: PathBuf,
}

impl Layout {
    fn node_dir(&self, i: u16) -> PathBuf {
        self.root.join(format!("n{}", i + 1))
    }

    /// The environment every script (server and ctl) needs.
    fn apply(&self, command: &mut Command) {
        clear_env_prefix(command, "RABBITMQ_");
        command
            .env("HOME", &self.home)
            .env("ERL_EPMD_PORT", EPMD_PORT.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", &self.env_file)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &self.plugins_file);
    }

    fn ctl(&self, node: u16, args: &[&str]) -> Command {
        let mut command = Command::new(format!("{BIN}/rabbitmqctl"));
        self.apply(&mut command);
        command.arg("-n").arg(node_name(node)).args(args);
        command
    }
}

/// From the Debian packages: running rabbitmqctl for it would start an
/// epmd daemon on the default port, outside our control.
pub async fn version() -> Result<String> {
    let mut versions = Vec::new();
    for package in ["rabbitmq-server", "erlang-base"] {
        let mut command = Command::new("dpkg-query");
        command.args(["-W", "-f", "${Version}", package]);
        versions.push(output(command, &format!("dpkg-query {package}"), Duration::from_secs(10)).await?);
    }
    Ok(format!("{} (Debian erlang-base {})", versions[0].trim(), versions[1].trim()))
}

pub async fn start(procs: &mut Procs, scratch: &Path) -> Result<Started> {
    let mut ports = vec![(EPMD_PORT, "epmd".to_string())];
    for i in 0..NODES {
        ports.push((AMQP_PORT + i, format!("{} AMQP", node_name(i))));
        ports.push((DIST_PORT + i, format!("{} distribution", node_name(i))));
    }
    check_ports("rabbitmq", &ports).await?;
    let version = version().await?;
    let root = scratch.join("rabbitmq");
    let layout = Layout {
        home: root.join("home"),
        env_file: root.join("rabbitmq-env.conf"),
        plugins_file: root.join("enabled_plugins"),
        root,
    };
    fresh_dir(&layout.root)?;
    std::fs::create_dir_all(&layout.home).with_context(|| format!("create {}", layout.home.display()))?;
    let cookie = layout.home.join(".erlang.cookie");
    write_file(&cookie, &format!("KEELBENCH{}", std::process::id()))?;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
        .with_context(|| format!("chmod 400 {}", cookie.display()))?;
    write_file(&layout.env_file, "# written by keel-bench: no settings from /etc/rabbitmq\n")?;
    write_file(&layout.plugins_file, "[].\n")?;

    let mut epmd = Command::new("epmd");
    epmd.arg("-port").arg(EPMD_PORT.to_string()).arg("-address").arg("127.0.0.1");
    procs.spawn("epmd", epmd, &scratch.join("rabbitmq-epmd.log"))?;

    for i in 0..NODES {
        let dir = layout.node_dir(i);
        std::fs::create_dir_all(dir.join("log")).with_context(|| format!("create {}", dir.display()))?;
        let conf = dir.join("rabbitmq.conf");
        write_file(
            &conf,
            &format!(
                "# written by keel-bench\n\
                 listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 vm_memory_high_watermark.absolute = {MEMORY_HIGH_WATERMARK}\n\
                 disk_free_limit.absolute = {DISK_FREE_LIMIT}\n\
                 log.console = false\n\
                 log.file.level = warning\n",
                amqp = AMQP_PORT + i
            ),
        )?;
        let mut command = Command::new(format!("{BIN}/rabbitmq-server"));
        layout.apply(&mut command);
        command
            .env("RABBITMQ_NODENAME", node_name(i))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", (AMQP_PORT + i).to_string())
            .env("RABBITMQ_DIST_PORT", (DIST_PORT + i).to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"));
        procs.spawn(
            &format!("rabbitmq {}", node_name(i)),
            command,
            &scratch.join(format!("rabbitmq-n{}.log", i + 1)),
        )?;
    }
    for i in 0..NODES {
        let what = format!("rabbitmq: {} startup", node_name(i));
        wait_ready(procs, &what, || {
            let command = layout.ctl(i, &["await_startup", "--timeout", "5"]);
            let what = what.clone();
            async move { output(command, &what, Duration::from_secs(20)).await.map(|_| ()) }
        })
        .await?;
    }
    for i in 1..NODES {
        let first = node_name(0);
        for args in [&["stop_app"][..], &["join_cluster", &first], &["start_app"]] {
            let what = format!("rabbitmqctl -n {} {}", node_name(i), args.join(" "));
            output(layout.ctl(i, args), &what, CTL_TIMEOUT).await?;
        }
    }
    let status =
        output(layout.ctl(0, &["cluster_status", "--formatter", "json"]), "rabbitmq cluster_status", CTL_TIMEOUT)
            .await?;
    let status: serde_json::Value = serde_json::from_str(&status).context("parse cluster_status")?;
    let running = status["running_nodes"].as_array().map(Vec::len).unwrap_or(0);
    if running != NODES as usize {
        bail!("rabbitmq: {running} running nodes after joining, expected {NODES}: {status}");
    }

    let channel = wait_ready(procs, "rabbitmq: declare the quorum queue", || declare(AMQP_PORT)).await?;
    let members = output(
        layout.ctl(0, &["list_queues", "name", "type", "members", "--formatter", "json"]),
        "list_queues",
        CTL_TIMEOUT,
    )
    .await?;
    let members: serde_json::Value = serde_json::from_str(&members).context("parse list_queues")?;
    let queue = members.as_array().and_then(|qs| qs.iter().find(|q| q["name"] == QUEUE)).context("queue listed")?;
    let count = queue["members"].as_array().map(Vec::len).unwrap_or(0);
    if queue["type"] != "quorum" || count != NODES as usize {
        bail!("rabbitmq: queue {QUEUE} is not a quorum queue on {NODES} nodes: {queue}");
    }
    Ok(Started {
        system: "rabbitmq",
        series: "rabbitmq",
        version,
        flush: super::keel::SYNC_FLUSH,
        target: Target::Rabbit { channel: channel.clone(), queue: Arc::from(QUEUE) },
        reset: Reset::RabbitPurge(channel, QUEUE.to_string()),
        data_dir: layout.root,
    })
}

/// Connects to node 1 (the queue's leader is placed on the node that
/// declares it), opens a confirm channel and declares the queue.
async fn declare(port: u16) -> Result<Channel> {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {uri}"))?;
    let channel = connection.create_channel().await.context("open a channel")?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.context("confirm.select")?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(i32::from(NODES)));
    arguments.insert("x-max-in-memory-length".into(), AMQPValue::LongInt(0));
    channel
        .queue_declare(QUEUE.into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
        .await
        .context("declare the quorum queue")?;
    // The connection lives as long as a channel of it does.
    Ok(channel)
}

pub async fn purge(channel: &mut Channel, queue: &str) -> Result<()> {
    channel.queue_purge(queue.into(), QueuePurgeOptions::default()).await.context("rabbitmq: purge the queue")?;
    Ok(())
}
