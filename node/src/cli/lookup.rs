//! `keel lookup TOPIC --key K | --timestamp T`: the key and time indexes.

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use keel_client::partition_for;

use super::{ClusterOpt, Format, check_partition, is_broken_pipe, write_record};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("by").required(true).args(["key", "timestamp"])))]
pub struct LookupArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    /// Topic
    topic: String,
    /// Print the records with this key (oldest first)
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Print, per partition, the first offset whose record is at or after
    /// this time (milliseconds since the Unix epoch)
    #[arg(long, value_name = "MS")]
    timestamp: Option<u64>,
    /// Partition [default: crc32c(key) mod partitions for --key; every
    /// partition for --timestamp]
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
    /// Most records printed for --key
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: u32,
    /// Output format of --key's records
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn lookup(args: LookupArgs) -> Result<()> {
    let client = args.cluster.client()?;
    let topic = &args.topic;
    let partitions = client.partitions(topic).await.with_context(|| format!("look up topic {topic}"))?;
    if let Some(p) = args.partition {
        check_partition(topic, p, partitions)?;
    }
    if let Some(key) = &args.key {
        anyhow::ensure!(!key.is_empty(), "--key must not be empty");
        let p = args.partition.unwrap_or_else(|| partition_for(key.as_bytes(), partitions));
        let records = client
            .lookup_by_key(topic, p, key.clone().into_bytes(), args.limit)
            .await
            .with_context(|| format!("look up key {key:?} in {topic}/{p}"))?;
        if records.is_empty() {
            eprintln!("no record with key {key:?} in {topic}/{p}");
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for r in &records {
            if let Err(e) = write_record(&mut out, args.format, p, r) {
                if is_broken_pipe(&e) {
                    break;
                }
                return Err(e).context("write to stdout");
            }
        }
        return Ok(());
    }
    let timestamp = args.timestamp.context("--key or --timestamp is required")?;
    let which: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..partitions).collect(),
    };
    for p in which {
        let r = client
            .offset_for_timestamp(topic, p, timestamp)
            .await
            .with_context(|| format!("find timestamp {timestamp} in {topic}/{p}"))?;
        if r.found {
            println!("{topic}/{p} offset {} timestamp_ms {}", r.offset, r.timestamp_ms);
        } else {
            println!("{topic}/{p} offset {} (end: every record is older than {timestamp})", r.offset);
        }
    }
    Ok(())
}
