//! `keel consume TOPIC`: print records of one or all partitions.
//!
//! Each partition is read by its own task (fetches from any node) into one
//! bounded channel; the printing loop writes the records, counts them, and
//! remembers per partition the offset after the last record it printed:
//! that, and nothing fetched beyond it, is what a `--group` commits.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_client::{Client, Error, ErrorCode, Fetch, FetchedRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ClusterOpt, Format, check_partition, is_broken_pipe, write_record};

/// Long-poll wait of a fetch that is at the end of the partition.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);
/// A reader that gets no record and no progress for this long, before
/// reaching the end offset it was told, gives up.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How often a following consumer commits its group's offsets.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Fetched batches buffered between the readers and the printer.
const CHANNEL_BATCHES: usize = 16;
/// An OFFSET_OUT_OF_RANGE above the end (a node that has not applied as far
/// as another) is retried this many times, 200 ms apart.
const AHEAD_RETRIES: u32 = 50;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    /// Topic to read
    topic: String,
    /// Read only this partition [default: all partitions]
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
    /// Start at each partition's first retained record, even with --group
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in each partition read)
    #[arg(long, value_name = "N")]
    offset: Option<u64>,
    /// Consumer group: start at its committed offset (unless --offset or
    /// --from-beginning), and commit the offset after the last record printed
    /// (at the end, and every second while following)
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Only records with one of these tags, e.g. 'A||B'
    #[arg(long, value_name = "TAGS")]
    tag: Option<String>,
    /// Stop after printing N records
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end offset
    /// seen at start (stop with Ctrl-C)
    #[arg(long)]
    follow: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Records of one partition, and where its reader will fetch next.
struct Chunk {
    partition: u32,
    records: Vec<FetchedRecord>,
}

/// Where a partition's reader starts and (without `--follow`) stops.
#[derive(Debug, Clone, Copy)]
struct Span {
    partition: u32,
    start: u64,
    /// `None`: follow forever.
    stop: Option<u64>,
}

pub async fn consume(args: ConsumeArgs) -> Result<()> {
    let client = args.cluster.client()?;
    let topic = args.topic.clone();
    let info = client.describe_topic(&topic).await.with_context(|| format!("describe topic {topic}"))?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => {
            check_partition(&topic, p, info.partitions)?;
            vec![p]
        }
        None => (0..info.partitions).collect(),
    };
    let mut spans = Vec::new();
    for &p in &partitions {
        let part = info.partition_info.iter().find(|i| i.partition == p);
        let (first, end) = part.map_or((0, 0), |i| (i.start_offset, i.end_offset));
        let committed = match (&args.group, args.offset, args.from_beginning) {
            (Some(g), None, false) => {
                client.fetch_offset(g, &topic, p).await.with_context(|| format!("read group {g}'s offset"))?
            }
            _ => None,
        };
        let start = args.offset.or(committed).unwrap_or(first);
        if committed.is_some_and(|c| c < first) {
            eprintln!("{topic}/{p}: the committed offset {start} was removed by retention; starting at {first}");
        }
        let start = if args.offset.is_none() { start.max(first) } else { start };
        if let Some(o) = args.offset {
            anyhow::ensure!(o <= end, "{topic}/{p} ends at offset {end}; --offset {o} is past it");
        }
        spans.push(Span { partition: p, start, stop: (!args.follow).then_some(end) });
    }

    let (tx, mut rx) = mpsc::channel::<Result<Chunk>>(CHANNEL_BATCHES);
    let mut readers = Vec::new();
    for span in spans.iter().copied() {
        if span.stop.is_some_and(|stop| span.start >= stop) {
            continue;
        }
        let (client, topic, tags, tx) =
            (client.clone(), topic.clone(), args.tag.clone().unwrap_or_default(), tx.clone());
        readers.push(tokio::spawn(async move {
            if let Err(e) = read_partition(&client, &topic, span, &tags, &tx).await {
                // The printer may be gone already (count reached); nothing to tell then.
                let _ = tx.send(Err(e)).await;
            }
        }));
    }
    drop(tx);

    // Offsets after the last printed record, per partition: what a group commits.
    let mut printed_next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut printed: u64 = 0;
    let mut outcome: Result<()> = Ok(());
    let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
    commit_tick.tick().await;
    // Installed only when following (a future is inert until polled), so
    // without --follow Ctrl-C keeps its default effect.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    'print: loop {
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            _ = commit_tick.tick(), if args.group.is_some() && args.follow => {
                if let Err(e) = commit(&client, args.group.as_deref(), &topic, &printed_next, &mut committed).await {
                    outcome = Err(e);
                    break 'print;
                }
                continue;
            }
            _ = &mut ctrl_c, if args.follow => break 'print,
        };
        let Some(chunk) = chunk else { break };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        for r in &chunk.records {
            if args.count.is_some_and(|c| printed >= c) {
                break 'print;
            }
            if let Err(e) = write_record(&mut out, args.format, chunk.partition, r) {
                if !is_broken_pipe(&e) {
                    outcome = Err(e).context("write to stdout");
                }
                break 'print;
            }
            printed += 1;
            printed_next.insert(chunk.partition, r.offset + 1);
        }
        if let Err(e) = out.flush() {
            if !is_broken_pipe(&e) {
                outcome = Err(e).context("write to stdout");
            }
            break;
        }
        if args.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    let _ = out.flush();
    drop(out);
    for r in &readers {
        r.abort();
    }
    let committing = commit(&client, args.group.as_deref(), &topic, &printed_next, &mut committed).await;
    outcome.and(committing)
}

/// Commits the offsets that moved since the last commit.
async fn commit(
    client: &Client,
    group: Option<&str>,
    topic: &str,
    next: &BTreeMap<u32, u64>,
    committed: &mut BTreeMap<u32, u64>,
) -> Result<()> {
    let Some(group) = group else { return Ok(()) };
    for (&p, &offset) in next {
        if committed.get(&p) == Some(&offset) {
            continue;
        }
        client
            .commit_offset(group, topic, p, offset)
            .await
            .with_context(|| format!("commit offset {offset} of {topic}/{p} for group {group}"))?;
        committed.insert(p, offset);
    }
    Ok(())
}

/// Fetches one partition from `span.start` until `span.stop` (or forever),
/// handing each non-empty batch to the printer.
async fn read_partition(
    client: &Client,
    topic: &str,
    span: Span,
    tags: &str,
    tx: &mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let mut offset = span.start;
    let mut last_progress = Instant::now();
    let mut ahead_retries = 0;
    loop {
        if span.stop.is_some_and(|stop| offset >= stop) {
            return Ok(());
        }
        let fetch = Fetch::new(topic, span.partition, offset).max_wait(FOLLOW_WAIT).tags(tags);
        let fetched = match client.fetch(fetch).await {
            Ok(f) => f,
            Err(Error::Server { code: ErrorCode::OffsetOutOfRange, message }) => {
                let info = client.describe_topic(topic).await?;
                let Some(p) = info.partition_info.iter().find(|p| p.partition == span.partition) else {
                    bail!("{topic}/{}: {message}", span.partition);
                };
                if offset < p.start_offset {
                    eprintln!(
                        "{topic}/{}: offsets {offset}..{} were removed by retention; going on from {}",
                        span.partition, p.start_offset, p.start_offset
                    );
                    offset = p.start_offset;
                    continue;
                }
                ahead_retries += 1;
                if ahead_retries > AHEAD_RETRIES {
                    bail!("{topic}/{}: {message} (OFFSET_OUT_OF_RANGE)", span.partition);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("fetch {topic}/{} at offset {offset}", span.partition)),
        };
        ahead_retries = 0;
        let mut records = fetched.records;
        if let Some(stop) = span.stop {
            records.retain(|r| r.offset < stop);
        }
        let moved = fetched.next_offset > offset || !records.is_empty();
        if fetched.next_offset > offset {
            offset = fetched.next_offset;
        } else if let Some(last) = records.last() {
            offset = last.offset + 1;
        }
        if moved {
            last_progress = Instant::now();
        } else if span.stop.is_some() && last_progress.elapsed() > STALL_LIMIT {
            bail!(
                "{topic}/{}: no progress at offset {offset} for {} s although the end offset was {:?}",
                span.partition,
                STALL_LIMIT.as_secs(),
                span.stop
            );
        }
        if !records.is_empty() && tx.send(Ok(Chunk { partition: span.partition, records })).await.is_err() {
            return Ok(()); // the printer is done
        }
    }
}
