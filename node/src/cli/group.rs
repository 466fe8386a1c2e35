//! `keel group commit|show`: consumer-group offsets by hand.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::ClusterOpt;

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Set a group's committed offset of one partition (the next offset the
    /// group will read)
    Commit {
        /// Consumer group
        group: String,
        /// Topic
        topic: String,
        /// Partition
        #[arg(long, value_name = "P")]
        partition: u32,
        /// The next offset the group will read
        #[arg(long, value_name = "N")]
        offset: u64,
    },
    /// Show a group's committed offset and lag in each partition of a topic
    Show {
        /// Consumer group
        group: String,
        /// Topic
        topic: String,
    },
}

pub async fn group(args: GroupArgs) -> Result<()> {
    let client = args.cluster.client()?;
    match args.command {
        GroupCommand::Commit { group, topic, partition, offset } => {
            client
                .commit_offset(&group, &topic, partition, offset)
                .await
                .with_context(|| format!("commit offset {offset} of {topic}/{partition} for group {group}"))?;
            println!("group {group} committed {topic}/{partition} at offset {offset}");
        }
        GroupCommand::Show { group, topic } => {
            let info = client.describe_topic(&topic).await.with_context(|| format!("describe topic {topic}"))?;
            println!("group {group}, topic {topic}");
            println!("{:>9} {:>14} {:>14} {:>12}", "PARTITION", "COMMITTED", "END", "LAG");
            for p in 0..info.partitions {
                let end = info.partition_info.iter().find(|i| i.partition == p).map_or(0, |i| i.end_offset);
                let committed = client
                    .fetch_offset(&group, &topic, p)
                    .await
                    .with_context(|| format!("read group {group}'s offset of {topic}/{p}"))?;
                match committed {
                    Some(c) => println!("{p:>9} {c:>14} {end:>14} {:>12}", end.saturating_sub(c)),
                    None => println!("{p:>9} {:>14} {end:>14} {:>12}", "-", "-"),
                }
            }
        }
    }
    Ok(())
}
