//! One chaos run: start the cluster, load it, break it cycle by cycle,
//! heal, read everything back and check the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_client::proto::TopicConfig;
use keel_client::{Client, ClientOptions, Fetch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::checker::{self, ReadLog, Verdict};
use crate::scenario::{Scenario, Target};
use crate::workload::{TOPIC, Workload};

/// The topic the final probe write creates.
const PROBE_TOPIC: &str = "chaos-probe";

pub struct Options {
    pub scenario: Scenario,
    pub target: Target,
    pub flush: String,
    pub cycles: u32,
    pub duration: Duration,
    pub seed: u64,
    pub producers: u32,
    pub partitions: u32,
    pub json: bool,
    pub read_back_every: u32,
}

/// How long the cluster gets to elect a leader after a fault is healed.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the replicas get to agree at the end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a cycle waits for writes to flow again before its fault.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on sends per producer (the run is bounded in time as well).
const MAX_OPS_PER_PRODUCER: u64 = 1_000_000;

fn client(backend: &dyn Backend) -> Result<Client> {
    let options = ClientOptions { call_timeout: Duration::from_secs(10), ..Default::default() };
    Ok(Client::with_options(backend.grpc_addrs(), options)?)
}

/// The leader every reachable node agrees on, within `timeout`.
pub async fn wait_for_leader(backend: &dyn Backend, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        for node in backend.nodes() {
            if let Ok(s) = crate::http::get_json(&backend.admin_addr(node), "/api/v1/status") {
                leaders.push(s["leader_id"].as_u64());
            }
        }
        if let Some(Some(l)) = leaders.first()
            && leaders.len() >= 2
            && leaders.iter().all(|x| *x == Some(*l))
        {
            return Ok(*l);
        }
        if Instant::now() > deadline {
            bail!("no agreed leader within {timeout:?} (nodes say {leaders:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until every node runs, agrees on the leader and has applied the
/// same commit index; returns the common committed range (first, commit).
async fn settle(backend: &dyn Backend) -> Result<(u64, u64)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let statuses: Vec<Result<Value>> =
            backend.nodes().iter().map(|&n| crate::http::get_json(&backend.admin_addr(n), "/api/v1/status")).collect();
        let ok: Vec<&Value> = statuses.iter().filter_map(|s| s.as_ref().ok()).collect();
        if ok.len() == statuses.len() {
            let commits: Vec<u64> = ok.iter().map(|s| s["log"]["committed"].as_u64().unwrap_or(0)).collect();
            let applied: Vec<u64> = ok.iter().map(|s| s["log"]["applied"].as_u64().unwrap_or(0)).collect();
            let leaders: Vec<Option<u64>> = ok.iter().map(|s| s["leader_id"].as_u64()).collect();
            let first = ok.iter().map(|s| s["log"]["first_index"].as_u64().unwrap_or(0)).max().unwrap_or(0);
            if leaders[0].is_some()
                && leaders.iter().all(|l| *l == leaders[0])
                && commits.iter().all(|c| *c == commits[0])
                && applied.iter().all(|a| *a >= commits[0])
            {
                return Ok((first.max(1), commits[0]));
            }
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = statuses
                .iter()
                .map(|s| match s {
                    Ok(s) => format!(
                        "leader {} commit {} applied {}",
                        s["leader_id"], s["log"]["committed"], s["log"]["applied"]
                    ),
                    Err(e) => format!("{e:#}"),
                })
                .collect();
            bail!("the cluster did not settle within {SETTLE_TIMEOUT:?}: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each node's role, term and log indexes, for a report.
fn log_summary(backend: &dyn Backend) -> String {
    let nodes: Vec<String> = backend
        .nodes()
        .iter()
        .map(|&n| match crate::http::get_json(&backend.admin_addr(n), "/api/v1/status") {
            Ok(s) => format!(
                "node {n} {} term {} last {} committed {} applied {} durable {} fsynced {}",
                s["role"],
                s["term"],
                s["log"]["last_index"],
                s["log"]["committed"],
                s["log"]["applied"],
                s["log"]["durable"],
                s["log"]["fsynced"]
            ),
            Err(e) => format!("node {n}: {e:#}"),
        })
        .collect();
    nodes.join("; ")
}

/// Read every partition of the topic from its first offset.
async fn read_all(client: &Client, partitions: u32) -> Result<ReadLog> {
    let mut log = ReadLog::new();
    for p in 0..partitions {
        let mut records = Vec::new();
        let first = client.fetch(Fetch::new(TOPIC, p, 0)).await.with_context(|| format!("read {TOPIC}/{p}"))?;
        let end = first.end_offset;
        let mut offset = first.start_offset;
        while offset < end {
            let got = client
                .fetch(Fetch::new(TOPIC, p, offset))
                .await
                .with_context(|| format!("read {TOPIC}/{p} at {offset}"))?;
            if got.records.is_empty() {
                bail!("{TOPIC}/{p}: nothing at offset {offset} below the end {end}");
            }
            for r in &got.records {
                records.push((r.offset, String::from_utf8_lossy(&r.value).into_owned()));
            }
            offset = got.next_offset;
        }
        log.insert(p, records);
    }
    Ok(log)
}

/// Records per partition the final check looks up by key.
const KEY_SAMPLES: usize = 100;

/// Look records read back up by their key (the workload keys each by its
/// value): the newest of each partition, which a crash's replay wrote into
/// the key index last, and a random sample. Each must come back at its
/// offset; what does not is returned, named.
async fn key_misses(client: &Client, read: &ReadLog, rng: &mut StdRng) -> Result<Vec<String>> {
    let mut misses = Vec::new();
    for (&p, records) in read {
        let mut sample: Vec<&(u64, String)> = records.iter().rev().take(KEY_SAMPLES / 2).collect();
        for _ in 0..KEY_SAMPLES / 2 {
            if let Some(r) = records.get(rng.random_range(0..records.len().max(1))) {
                sample.push(r);
            }
        }
        for (offset, value) in sample {
            let found = client
                .lookup_by_key(TOPIC, p, value.clone(), 16)
                .await
                .with_context(|| format!("look up {TOPIC}/{p} key {value}"))?;
            if !found.iter().any(|r| r.offset == *offset && r.value == value.as_bytes()) {
                misses.push(format!("{TOPIC}/{p} offset {offset} key {value}"));
            }
        }
    }
    Ok(misses)
}

fn digests(backend: &dyn Backend, from: u64, upto: u64) -> Result<Vec<(u64, String)>> {
    backend
        .nodes()
        .iter()
        .map(|&n| {
            let d = crate::http::get_json(
                &backend.admin_addr(n),
                &format!("/api/v1/storage/digest?from={from}&upto={upto}"),
            )?;
            Ok((n, d["sha256"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

pub struct Report {
    pub json: Value,
    pub passed: bool,
}

pub async fn run(backend: Arc<dyn Backend>, o: &Options) -> Result<Report> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(o.seed);
    println!(
        "keel-chaos: scenario {} on {} under {}, {} cycles (at most {:?}), seed {}",
        o.scenario.name(),
        backend.name(),
        o.flush,
        o.cycles,
        o.duration,
        o.seed
    );
    if o.scenario.cuts_power() {
        backend.power_loss_capable()?;
    }
    let leader = wait_for_leader(&*backend, LEADER_TIMEOUT).await?;
    println!("cluster up: leader node {leader}");
    let client = client(&*backend)?;
    client
        .create_topic(TOPIC, TopicConfig { partitions: o.partitions, retention_ms: -1, ..TopicConfig::default() })
        .await
        .context("create the chaos topic")?;

    let workload = Workload::start(client.clone(), o.producers, o.partitions, o.seed, MAX_OPS_PER_PRODUCER);
    let mut timeline: Vec<Value> = Vec::new();
    let mut nemesis: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut throughput: Vec<Value> = Vec::new();
    let mut cycles_done = 0;
    let (mut flipped, mut zeroed, mut repaired) = (0u64, 0u64, 0u64);
    let mut last = (Instant::now(), 0u64);
    // Acknowledged messages a read-back right after a restart did not find,
    // and how many read-backs there were.
    let mut unseen: BTreeMap<String, u32> = BTreeMap::new();
    let mut read_backs = 0u32;
    let mut paused = false;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for cycle in 1..=o.cycles {
        if started.elapsed() > o.duration {
            println!("time is up after {} cycles", cycle - 1);
            break;
        }
        // The last cycle (by count or, near enough, by time) and every
        // Nth one read back before any new write.
        let last_cycle = cycle == o.cycles || started.elapsed() + o.duration / 10 > o.duration;
        let quiet = last_cycle || (o.read_back_every > 0 && cycle % o.read_back_every == 0);
        // Faults strike mid-write: wait until the producers are acknowledged
        // again after the last fault (bounded).
        let before = workload.acked.load(std::sync::atomic::Ordering::Relaxed);
        let want = before + u64::from(o.producers) * 5;
        let progress_deadline = Instant::now() + PROGRESS_TIMEOUT;
        while workload.acked.load(std::sync::atomic::Ordering::Relaxed) < want && Instant::now() < progress_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = started.elapsed().as_millis() as u64;
        let faults = o.scenario.cycle(&*backend, &mut rng, o.target, quiet.then_some(&workload)).await?;
        for f in &faults {
            *nemesis.entry(f.kind).or_default() += 1;
            flipped += f.flipped;
            zeroed += f.zeroed;
            repaired += f.repaired;
            let mut event = json!({ "t_ms": t, "cycle": cycle, "fault": f.kind, "node": f.node });
            if f.flipped > 0 {
                event["flipped"] = f.flipped.into();
                event["zeroed"] = f.zeroed.into();
                event["repaired"] = f.repaired.into();
            }
            timeline.push(event);
        }
        if quiet {
            // Nothing has been written since the fault: every message
            // acknowledged before it must be readable now, on its own.
            settle(&*backend).await.with_context(|| format!("settle after cycle {cycle}, before any new write"))?;
            let ops = workload.history();
            let read = read_all(&client, o.partitions).await?;
            let missing = checker::unseen(&ops, &read);
            if !missing.is_empty() {
                let first = ops.iter().find(|op| op.payload == missing[0]).map(|op| op.outcome.clone());
                let ends: Vec<String> =
                    (0..o.partitions).map(|p| format!("{p}: {}", read.get(&p).map_or(0, Vec::len))).collect();
                println!(
                    "cycle {cycle}: {} acknowledged messages not readable right after the restart, before any new \
                     write (e.g. {}, {first:?}); records read per partition {}; the nodes say: {}",
                    missing.len(),
                    missing[0],
                    ends.join(", "),
                    log_summary(&*backend)
                );
                // Still nothing written: is it a moment's lag or does it stay?
                tokio::time::sleep(Duration::from_secs(3)).await;
                let again = checker::unseen(&ops, &read_all(&client, o.partitions).await?);
                println!(
                    "cycle {cycle}: 3 s later, still before any write: {} of them still not readable; the nodes say: \
                     {}",
                    again.len(),
                    log_summary(&*backend)
                );
            }
            for m in missing {
                *unseen.entry(m).or_default() += 1;
            }
            read_backs += 1;
            if last_cycle {
                paused = true;
            } else {
                workload.resume();
            }
        }
        cycles_done = cycle;
        if paused {
            break;
        }
        // Load between faults.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        let acked = workload.acked.load(std::sync::atomic::Ordering::Relaxed);
        let rate = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
        last = (Instant::now(), acked);
        throughput
            .push(json!({ "t_ms": started.elapsed().as_millis() as u64, "acked": acked, "msgs_per_s": rate.round() }));
        let what: Vec<String> = faults
            .iter()
            .map(|f| match f.flipped {
                0 => format!("{} node {}", f.kind, f.node),
                n => format!(
                    "{} node {} ({n} places damaged, {} active-segment records zeroed, {} ranges repaired)",
                    f.kind, f.node, f.zeroed, f.repaired
                ),
            })
            .collect();
        println!(
            "cycle {cycle}/{}: {} · {acked} acked · {rate:.0} msg/s · {:.0} s",
            o.cycles,
            what.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    // Heal everything; unless the last cycle paused the load, let it run a
    // moment on the healed cluster, then stop it.
    for n in backend.nodes() {
        backend.resume(n)?;
        backend.heal(n)?;
        backend.start(n)?;
    }
    wait_for_leader(&*backend, LEADER_TIMEOUT).await?;
    if !paused {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ops = workload.stop(Duration::from_secs(30)).await;
    // One more write (a topic of its own) before the final read, so what a
    // read-back missed shows here as invisible (present after a write) or
    // lost (absent even then).
    client
        .create_topic(PROBE_TOPIC, TopicConfig { partitions: 1, retention_ms: -1, ..TopicConfig::default() })
        .await
        .context("write once more (create the probe topic) before the final read")?;
    let (first, commit) = settle(&*backend).await?;
    let read = read_all(&client, o.partitions).await?;
    let digests = digests(&*backend, first, commit)?;
    let mut verdict: Verdict = checker::check(&ops, &read, &digests);
    verdict.note_unseen(&unseen, &read, read_backs);
    let key_misses = key_misses(&client, &read, &mut rng).await?;
    let allow_loss = o.flush == "ASYNC_FLUSH";
    let passed = verdict.passed(allow_loss) && key_misses.is_empty();

    let read_count: usize = read.values().map(Vec::len).sum();
    println!(
        "\n{} after {cycles_done} cycles in {:.0} s: {} acked, {} lost, {} invisible after a restart ({} read-backs), \
         {} duplicated, {} reordered, {} divergent, {} phantom, {} unknown ({} of them stored), {} refused ({} \
         stored); {read_count} messages read back; replicas compared over log {first}..={commit}",
        if passed { "PASS" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        verdict.acked,
        verdict.lost,
        verdict.invisible,
        verdict.read_backs,
        verdict.duplicated,
        verdict.reordered,
        verdict.divergent,
        verdict.phantom,
        verdict.unknown,
        verdict.unknown_stored,
        verdict.refused,
        verdict.refused_present,
    );
    if o.scenario == Scenario::Bitflip {
        println!(
            "bitflip: {flipped} places damaged ({zeroed} active-segment records zeroed), {repaired} damaged ranges \
             repaired from a peer"
        );
    }
    if allow_loss && verdict.lost > 0 {
        println!(
            "ASYNC_FLUSH acknowledges before fsync: {} acknowledged messages were lost, which that policy allows",
            verdict.lost
        );
    }
    for e in &verdict.examples {
        println!("  {e}");
    }
    println!(
        "key index: {} of {KEY_SAMPLES} records per partition looked up by key were not found{}",
        key_misses.len(),
        key_misses.first().map_or(String::new(), |m| format!(" (e.g. {m})"))
    );
    let json = json!({
        "scenario": o.scenario.name(),
        "backend": backend.name(),
        "flush": o.flush,
        "seed": o.seed,
        "cycles": cycles_done,
        "duration_s": started.elapsed().as_secs_f64().round(),
        "acked": verdict.acked,
        "lost": verdict.lost,
        "invisible": verdict.invisible,
        "read_backs": verdict.read_backs,
        "duplicated": verdict.duplicated,
        "reordered": verdict.reordered,
        "divergent": verdict.divergent,
        "unknown": verdict.unknown,
        "unknown_stored": verdict.unknown_stored,
        "refused": verdict.refused,
        "refused_present": verdict.refused_present,
        "phantom": verdict.phantom,
        "key_misses": key_misses.len(),
        "flipped": flipped,
        "zeroed": zeroed,
        "repaired": repaired,
        "read": read_count,
        "nemesis": nemesis,
        "timeline": timeline,
        "throughput": throughput,
        "passed": passed,
    });
    Ok(Report { json, passed })
}
