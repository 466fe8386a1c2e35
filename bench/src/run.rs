//! `keel-bench compare`: the order of a run, its points, and what happens
//! on Ctrl-C (the running point and cluster are dropped, which kills every
//! process group of the cluster; then the partial results are not written).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::CompareArgs;
use crate::cluster::keel::Producing;
use crate::cluster::{self, Cluster, Started};
use crate::disk::{self, DiskTimes};
use crate::load::{self, Point};
use crate::machine;
use crate::procs::Procs;
use crate::report::{self, Report, Row, Skipped};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The measured points: (size, in flight).
const SYNC_POINTS: [(usize, usize); 6] = [(KIB, 1), (KIB, 16), (KIB, 64), (KIB, 256), (64 * KIB, 16), (MIB, 4)];
/// keel under its weaker policies (both series): the headline point, and
/// the latency of a lone producer (skipped by --quick).
const WEAK_POINTS: [(usize, usize); 2] = [(KIB, 64), (KIB, 1)];
const WEAK_POINTS_QUICK: usize = 1;

struct Plan {
    warmup: Duration,
    duration: Duration,
    disk: DiskTimes,
    weak_points: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(3),
                disk: DiskTimes { fio_runtime: Duration::from_secs(3), storage_duration_s: 0.5 },
                weak_points: WEAK_POINTS_QUICK,
            }
        } else {
            Plan {
                warmup: Duration::from_secs(3),
                duration: Duration::from_secs(15),
                disk: DiskTimes { fio_runtime: Duration::from_secs(10), storage_duration_s: 3.0 },
                weak_points: WEAK_POINTS.len(),
            }
        }
    }
}

/// One cluster to start and the points to drive through it.
#[derive(Clone, Copy)]
enum System {
    /// keel under a flush policy, produced to one way (one series each).
    Keel(&'static str, Producing),
    Etcd,
    Nats,
    Rabbit,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Keel(..) => "keel",
            System::Etcd => "etcd",
            System::Nats => "nats",
            System::Rabbit => "rabbitmq",
        }
    }

    /// The name of its results: the system, or which keel series.
    fn series(self) -> &'static str {
        match self {
            System::Keel(_, producing) => producing.series(),
            other => other.name(),
        }
    }

    fn flush(self) -> &'static str {
        match self {
            System::Keel(f, _) => f,
            _ => cluster::keel::SYNC_FLUSH,
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn interrupted(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

pub async fn compare(args: CompareArgs) -> Result<()> {
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => eprintln!("SIGINT: stopping every cluster"),
            _ = sigterm.recv() => eprintln!("SIGTERM: stopping every cluster"),
        }
        let _ = stop_tx.send(true);
    });

    let plan = Plan::new(args.quick);
    let known = ["keel", "etcd", "nats", "rabbitmq"];
    for s in &args.only {
        if !known.contains(&s.as_str()) {
            bail!("--only: unknown system '{s}' (known: {})", known.join(", "));
        }
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|s| s == name);
    let keel = |flush| Producing::ALL.map(|p| System::Keel(flush, p));
    let systems: Vec<System> = [
        &keel(cluster::keel::SYNC_FLUSH)[..],
        &[System::Etcd, System::Nats, System::Rabbit],
        &keel(cluster::keel::BATCH_FLUSH),
        &keel(cluster::keel::ASYNC_FLUSH),
    ]
    .concat()
    .into_iter()
    .filter(|s| wanted(s.name()))
    .collect();
    let points_of = |s: System| -> Vec<(usize, usize)> {
        if s.flush() == cluster::keel::SYNC_FLUSH {
            SYNC_POINTS.to_vec()
        } else {
            WEAK_POINTS[..plan.weak_points].to_vec()
        }
    };
    let total: usize = systems.iter().map(|&s| points_of(s).len()).sum();

    let mut machine = machine::describe(&args.scratch).await;
    machine.versions.insert("keel".into(), args.keel_version.clone());
    let versions = [
        ("etcd", cluster::etcd::version().await),
        ("nats", cluster::nats::version(&args.nats_bin).await),
        ("rabbitmq", cluster::rabbitmq::version().await),
        ("fio", disk::version_fio().await),
    ];
    for (name, v) in versions {
        machine.versions.insert(name.into(), v.unwrap_or_else(|e| format!("unknown ({e:#})")));
    }
    eprintln!(
        "machine: {} ({} cores), {} GiB, {}, {} {}, load {}",
        machine.cpu_model,
        machine.cores,
        machine.ram_gib,
        machine.disk,
        machine.filesystem,
        machine.kernel,
        machine.loadavg_start
    );

    let disk = if args.skip_disk {
        None
    } else {
        let dir = args.scratch.join("disk");
        let measured = tokio::select! {
            d = disk::measure(&dir, &args.keel_bin, &plan.disk) => d?,
            _ = interrupted(stop_rx.clone()) => bail!("interrupted"),
        };
        eprintln!(
            "disk: fdatasync 4 KiB {:.0} IOPS, p99 {:.0} us; sequential 1 MiB {:.0} MiB/s",
            measured.fio_fsync_4k_iops, measured.fio_fsync_4k_p99_us, measured.fio_seq_1m_mib_per_s
        );
        Some(measured)
    };

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut done = 0;
    for system in systems {
        let points = points_of(system);
        eprintln!("{}: starting a three-node cluster ({})", system.series(), system.flush());
        let t0 = Instant::now();
        let mut procs = Procs::new(&args.scratch);
        let started = tokio::select! {
            s = start_cluster(system, &args, &mut procs) => s,
            _ = interrupted(stop_rx.clone()) => Err(anyhow::anyhow!("interrupted")),
        };
        let mut cluster = match started {
            Ok(s) => Cluster::new(s, procs),
            Err(e) => {
                procs.stop_all().await;
                if *stop_rx.borrow() {
                    bail!("interrupted");
                }
                let reason = format!("{e:#}");
                eprintln!("{}: NOT MEASURED: could not start the cluster: {reason}", system.series());
                skipped.push(Skipped {
                    system: system.name().into(),
                    series: system.series().into(),
                    flush: system.flush().into(),
                    reason,
                });
                done += points.len();
                continue;
            }
        };
        eprintln!("{}: ready in {:.1} s ({})", system.series(), t0.elapsed().as_secs_f64(), cluster.version);
        let driven = tokio::select! {
            r = drive(&mut cluster, &points, &plan, total, &mut done, &mut rows) => r,
            _ = interrupted(stop_rx.clone()) => Err(anyhow::anyhow!("interrupted")),
        };
        cluster.stop().await;
        if *stop_rx.borrow() {
            bail!("interrupted");
        }
        if let Err(e) = driven {
            let reason = format!("{e:#}");
            eprintln!("{}: stopped early: {reason}", system.series());
            skipped.push(Skipped {
                system: system.name().into(),
                series: system.series().into(),
                flush: system.flush().into(),
                reason,
            });
        }
    }
    machine.loadavg_end = machine::loadavg();

    let report = Report {
        schema: 2,
        date: args.date.clone(),
        quick: args.quick,
        machine,
        disk,
        results: rows,
        not_measured: skipped,
        wall_s: started.elapsed().as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
    };
    report::write(&args.results, &report)?;
    eprintln!("wrote {}", args.results.display());
    Ok(())
}

async fn start_cluster(system: System, args: &CompareArgs, procs: &mut Procs) -> Result<Started> {
    match system {
        System::Keel(flush, producing) => {
            cluster::keel::start(procs, &args.keel_bin, &args.keel_version, &args.scratch, flush, producing).await
        }
        System::Etcd => cluster::etcd::start(procs, &args.scratch).await,
        System::Nats => cluster::nats::start(procs, &args.nats_bin, &args.scratch).await,
        System::Rabbit => cluster::rabbitmq::start(procs, &args.scratch).await,
    }
}

async fn drive(
    cluster: &mut Cluster,
    points: &[(usize, usize)],
    plan: &Plan,
    total: usize,
    done: &mut usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    for &(size, inflight) in points {
        *done += 1;
        let point = Point { size, inflight, warmup: plan.warmup, duration: plan.duration };
        let m = load::run_point(&cluster.target, point).await;
        let label = format!("{} {} {} x {}", cluster.series, cluster.flush, report::size_label(size), inflight);
        eprintln!(
            "[{done:>2}/{total}] {label:<48} {:>9.0} msg/s {:>7.1} MiB/s  p50 {:>8}  p99 {:>8}  p999 {:>8}  errors {}{}",
            m.msgs_per_s,
            m.mib_per_s,
            report::human_us(m.p50_us),
            report::human_us(m.p99_us),
            report::human_us(m.p999_us),
            m.errors,
            m.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        );
        rows.push(Row::new(cluster, size, inflight, &m));
        cluster.check_running()?;
        cluster.reset().await?;
    }
    Ok(())
}
