//! `keel topic create|list|describe|delete`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use keel_client::proto::{TopicConfig, TopicInfo};

use super::ClusterOpt;

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic
    Create {
        /// Topic name
        name: String,
        /// Number of partitions (fixed for the topic's life)
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
        /// Keep records this many milliseconds (-1: forever) [default: the node's]
        #[arg(long, value_name = "MS", allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition (-1: unlimited) [default: the node's]
        #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        /// Largest record accepted, in bytes [default: the node's]
        #[arg(long, value_name = "BYTES")]
        max_message_bytes: Option<u32>,
    },
    /// List topics with their settings and sizes
    List,
    /// Show a topic: settings, each partition's start and end offsets and
    /// bytes, and each consumer group's committed offset and lag
    Describe {
        /// Topic name
        name: String,
    },
    /// Delete a topic and its records
    Delete {
        /// Topic name
        name: String,
    },
}

pub async fn topic(args: TopicArgs) -> Result<()> {
    let client = args.cluster.client()?;
    match args.command {
        TopicCommand::Create { name, partitions, retention_ms, retention_bytes, max_message_bytes } => {
            for (flag, value) in [("--retention-ms", retention_ms), ("--retention-bytes", retention_bytes)] {
                if let Some(v) = value {
                    anyhow::ensure!(v == -1 || v > 0, "{flag} must be positive, or -1 for no limit (got {v})");
                }
            }
            anyhow::ensure!(max_message_bytes != Some(0), "--max-message-bytes must be positive");
            let config = TopicConfig {
                partitions,
                retention_ms: retention_ms.unwrap_or(0),
                retention_bytes: retention_bytes.unwrap_or(0),
                max_message_bytes: max_message_bytes.unwrap_or(0),
            };
            let info = client.create_topic(&name, config).await.with_context(|| format!("create topic {name}"))?;
            println!("created topic {}", info.name);
            print_settings(&info);
        }
        TopicCommand::List => {
            let topics = client.list_topics().await.context("list topics")?;
            if topics.is_empty() {
                println!("no topics");
                return Ok(());
            }
            println!(
                "{:<24} {:>10} {:>14} {:>16} {:>12} {:>12} {:>14}",
                "TOPIC", "PARTITIONS", "RETENTION_MS", "RETENTION_BYTES", "MAX_MESSAGE", "RECORDS", "BYTES"
            );
            for t in &topics {
                let records: u64 = t.partition_info.iter().map(|p| p.end_offset.saturating_sub(p.start_offset)).sum();
                let bytes: u64 = t.partition_info.iter().map(|p| p.bytes).sum();
                println!(
                    "{:<24} {:>10} {:>14} {:>16} {:>12} {:>12} {:>14}",
                    t.name,
                    t.partitions,
                    limit(t.retention_ms),
                    limit(t.retention_bytes),
                    if t.max_message_bytes == 0 { "default".to_string() } else { t.max_message_bytes.to_string() },
                    records,
                    bytes
                );
            }
        }
        TopicCommand::Describe { name } => {
            let info = client.describe_topic(&name).await.with_context(|| format!("describe topic {name}"))?;
            println!("topic {} (incarnation {})", info.name, info.incarnation);
            print_settings(&info);
            println!();
            println!("{:>9} {:>14} {:>14} {:>12} {:>14}", "PARTITION", "START", "END", "RECORDS", "BYTES");
            let mut parts = info.partition_info.clone();
            parts.sort_by_key(|p| p.partition);
            for p in &parts {
                println!(
                    "{:>9} {:>14} {:>14} {:>12} {:>14}",
                    p.partition,
                    p.start_offset,
                    p.end_offset,
                    p.end_offset.saturating_sub(p.start_offset),
                    p.bytes
                );
            }
            println!();
            if info.groups.is_empty() {
                println!("no consumer group has committed an offset");
            } else {
                let mut groups = info.groups.clone();
                groups.sort_by(|a, b| (&a.group, a.partition).cmp(&(&b.group, b.partition)));
                println!("{:<24} {:>9} {:>14} {:>12}", "GROUP", "PARTITION", "COMMITTED", "LAG");
                for g in &groups {
                    println!("{:<24} {:>9} {:>14} {:>12}", g.group, g.partition, g.committed, g.lag);
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await.with_context(|| format!("delete topic {name}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn print_settings(info: &TopicInfo) {
    println!("  partitions:        {}", info.partitions);
    println!("  retention_ms:      {}", limit(info.retention_ms));
    println!("  retention_bytes:   {}", limit(info.retention_bytes));
    let max = if info.max_message_bytes == 0 { "node default".into() } else { info.max_message_bytes.to_string() };
    println!("  max_message_bytes: {max}");
}

/// A retention setting as the proto defines it: -1 none, 0 the node's.
fn limit(v: i64) -> String {
    match v {
        -1 => "unlimited".into(),
        0 => "default".into(),
        v => v.to_string(),
    }
}
