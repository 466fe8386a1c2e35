//! `keel bench storage` end to end, through the built binary.

use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().expect("run the keel binary")
}

const REQUIRED_KEYS: &[&str] = &[
    "raw_appends_per_s",
    "engine_appends_per_s",
    "ratio",
    "raw_fsync_p50_us",
    "raw_fsync_p99_us",
    "fallocate_fsync_p99_us",
    "engine_append_p50_us",
    "engine_append_p99_us",
    "batch_appends_per_s",
    "async_appends_per_s",
    "read_mib_per_s",
    "writers",
    "size",
    "duration_s",
    "sync_flush_syncs",
    "sync_flush_entries_per_sync",
    "engine_batch_entries",
    "raw_at_engine_batch_appends_per_s",
    "ratio_at_engine_batch",
    "dir",
    "filesystem",
    "preallocate",
];

const THROUGHPUTS: &[&str] = &[
    "raw_appends_per_s",
    "engine_appends_per_s",
    "ratio",
    "batch_appends_per_s",
    "async_appends_per_s",
    "read_mib_per_s",
    "raw_at_engine_batch_appends_per_s",
    "ratio_at_engine_batch",
];

#[test]
fn a_short_run_reports_every_figure_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().to_str().expect("temp dir path is UTF-8");
    let out = keel(&[
        "bench",
        "storage",
        "--duration",
        "0.3",
        "--writers",
        "4",
        "--size",
        "256",
        "--preallocate",
        "zero",
        "--json",
        "--dir",
        path,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keel bench storage failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);

    // Phase 1: the last stdout line is one JSON object with every key.
    let last = stdout.lines().last().expect("stdout has a line");
    let report: serde_json::Value = serde_json::from_str(last).expect("the last stdout line is JSON");
    for key in REQUIRED_KEYS {
        assert!(report.get(key).is_some(), "key {key} missing from {last}");
    }

    // Phase 2: every throughput is a positive number, the settings echo back.
    for key in THROUGHPUTS {
        let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {last}"));
        assert!(v > 0.0, "{key} = {v}, expected > 0");
    }
    assert_eq!(report["writers"].as_u64(), Some(4));
    assert_eq!(report["size"].as_u64(), Some(256));
    assert_eq!(report["preallocate"].as_str(), Some("zero"), "--preallocate did not reach the stores: {last}");
    assert!(report["sync_flush_syncs"].as_u64().is_some_and(|n| n > 0), "no fdatasync counted: {last}");
    assert!(report["engine_append_p50_us"].as_u64().is_some_and(|n| n > 0));

    // Phase 3: the human table came first, and progress went to stderr.
    assert!(stdout.contains("ratio engine SYNC_FLUSH / raw"), "no table on stdout:\n{stdout}");
    assert!(stderr.contains("[9/9]"), "no progress on stderr:\n{stderr}");

    // Phase 4: the bench removed its own working directory.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list the temp dir")
        .map(|e| e.expect("read a directory entry").file_name())
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} in {path}");
}

#[test]
fn bad_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().to_str().expect("temp dir path is UTF-8");
    for (flag, value) in [
        ("--size", "0"),
        ("--writers", "0"),
        ("--duration", "0"),
        ("--size", "100000000"),
        ("--preallocate", "sometimes"),
    ] {
        let out = keel(&["bench", "storage", "--dir", path, flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(flag), "the error for {flag} {value} does not name it: {stderr}");
    }
    let left = std::fs::read_dir(dir.path()).expect("list the temp dir").count();
    assert_eq!(left, 0, "a refused run left files behind");
}
