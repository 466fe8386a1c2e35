//! keel: `keel dev` (three `keel node` child processes) with
//! `flush.disk.type` set for every node. Under SYNC_FLUSH a produce is
//! acknowledged once its entry is fdatasynced on a majority (the ack says
//! QUORUM_FSYNCED, which the load generator checks on every message).
//!
//! keel is measured as two series, each on a cluster of its own
//! ([`Producing`]): one record per Produce request, as every peer sends one
//! message per request, and keel-client's batching `Batcher`.
//!
//! Ports: gRPC 19091–19093, admin HTTP 19191–19193 (`--base-port 19091`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use keel_client::proto::TopicConfig;
use keel_client::{BatchOptions, Batcher, Client, Durability, Error, ErrorCode, Producer};
use tokio::process::Command;

use super::{Fatal, Reset, Started, fresh_dir, wait_ready};
use crate::load::Target;
use crate::procs::{Procs, check_ports, clear_env_prefix};

const BASE_PORT: u16 = 19091;
/// `keel dev` puts each node's admin port this far above its gRPC port.
const ADMIN_PORT_OFFSET: u16 = 100;
const NODES: u16 = 3;
const TOPIC: &str = "bench";
/// `max.message.bytes` of the nodes and the topic: the default (1 MiB) is
/// exactly the largest point's value, so a key or header would not fit.
const MAX_MESSAGE_BYTES: u32 = 2 << 20;

/// The flush policies keel is measured under, strongest first.
pub const SYNC_FLUSH: &str = "SYNC_FLUSH";
pub const BATCH_FLUSH: &str = "BATCH_FLUSH";
pub const ASYNC_FLUSH: &str = "ASYNC_FLUSH";

/// How the load generator produces to keel: one series of results each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producing {
    /// `Producer::produce` of a single record, awaited before the worker
    /// sends the next: one message per request, like every peer's client.
    OneRecordPerRequest,
    /// keel-client's `Batcher`: records queued while a request is in flight
    /// go together in the next one (as Kafka's producer batches).
    Batcher,
}

impl Producing {
    /// In the order they run and appear in the results.
    pub const ALL: [Producing; 2] = [Producing::OneRecordPerRequest, Producing::Batcher];

    /// The series' name in the results.
    pub const fn series(self) -> &'static str {
        match self {
            Producing::OneRecordPerRequest => "keel (1 record/request)",
            Producing::Batcher => "keel (Batcher)",
        }
    }

    /// Tells apart the data directories and logs of the two series.
    fn tag(self) -> &'static str {
        match self {
            Producing::OneRecordPerRequest => "single",
            Producing::Batcher => "batcher",
        }
    }
}

pub async fn start(
    procs: &mut Procs,
    keel_bin: &Path,
    version: &str,
    scratch: &Path,
    flush: &'static str,
    producing: Producing,
) -> Result<Started> {
    let ports: Vec<(u16, String)> = (0..NODES)
        .flat_map(|i| {
            [
                (BASE_PORT + i, format!("node{} gRPC", i + 1)),
                (BASE_PORT + ADMIN_PORT_OFFSET + i, format!("node{} admin HTTP", i + 1)),
            ]
        })
        .collect();
    check_ports("keel", &ports).await?;
    let name = format!("keel-{}-{}", flush.to_lowercase(), producing.tag());
    let data_dir = scratch.join(&name);
    fresh_dir(&data_dir)?;
    let mut command = Command::new(keel_bin);
    command
        .arg("dev")
        .arg("--dir")
        .arg(&data_dir)
        .arg("--base-port")
        .arg(BASE_PORT.to_string())
        .arg("--nodes")
        .arg(NODES.to_string())
        .arg("--set")
        .arg(format!("flush.disk.type={flush}"))
        .arg("--set")
        .arg(format!("max.message.bytes={MAX_MESSAGE_BYTES}"));
    // KEEL_* variables override a node's file; the policy under test must
    // be the one named here.
    clear_env_prefix(&mut command, "KEEL_");
    procs.spawn("keel dev", command, &scratch.join(format!("{name}.log")))?;

    let addrs: Vec<String> = (0..NODES).map(|i| format!("127.0.0.1:{}", BASE_PORT + i)).collect();
    let client = Client::connect(addrs).context("keel client")?;
    let config = TopicConfig { partitions: 1, max_message_bytes: MAX_MESSAGE_BYTES, ..TopicConfig::default() };
    wait_ready(procs, "keel: create the topic", || {
        let client = client.clone();
        async move {
            match client.create_topic(TOPIC, config).await {
                Ok(_) => Ok(()),
                Err(Error::Server { code: ErrorCode::TopicExists, .. }) => Ok(()),
                // The client retries NOT_LEADER / NO_LEADER itself; a
                // server's refusal is final.
                Err(e @ Error::Server { .. }) => Err(Fatal(e.to_string()).into()),
                Err(e) => bail!("{e}"),
            }
        }
    })
    .await?;
    let expect = if flush == ASYNC_FLUSH { Durability::QuorumWritten } else { Durability::QuorumFsynced };
    let topic = Arc::from(TOPIC);
    let target = match producing {
        Producing::OneRecordPerRequest => Target::KeelProduce { producer: Producer::new(client), topic, expect },
        Producing::Batcher => {
            Target::Keel { batcher: Batcher::new(client.producer(), BatchOptions::default()), topic, expect }
        }
    };
    Ok(Started {
        system: "keel",
        series: producing.series(),
        version: version.to_string(),
        flush,
        target,
        reset: Reset::Nothing,
        data_dir,
    })
}
