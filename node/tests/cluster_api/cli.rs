//! The CLI end to end against the cluster, and a bad configuration file
//! refused before a node starts.

use super::*;

/// A `--format json` line without its `timestamp_ms`, which it must have.
#[track_caller]
fn json_record(line: &str) -> (Value, u64) {
    let mut record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
    let object = record.as_object_mut().unwrap_or_else(|| panic!("{line:?} is not a JSON object"));
    let stamped = object.remove("timestamp_ms").and_then(|t| t.as_u64());
    (record, stamped.unwrap_or_else(|| panic!("{line:?} has no timestamp_ms")))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_quickstart_runs_against_the_cluster() {
    // Phase 1: a cluster, and `keel topic create` makes a topic of one
    // partition.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let cli = Cli { cluster: cluster.addrs().join(",") };
    let out = cli.ok(&["topic", "create", "quickstart"], b"").await;
    assert!(out.starts_with("created topic quickstart\n"), "{out}");
    assert!(out.contains("partitions:        1\n"), "{out}");

    // Phase 2: three stdin lines become offsets 0..2, acknowledged
    // quorum-fsynced.
    let before = now_ms();
    let out = cli.ok(&["produce", "quickstart"], b"a\nb\nc\n").await;
    let after = now_ms();
    let durable_index = out
        .strip_prefix("quickstart/0 offsets 0..2 durability=QUORUM_FSYNCED durable_index=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|index| index.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("unexpected produce report: {out:?}"));
    assert!(durable_index > 0, "{out}");

    // Phase 3: `keel consume --from-beginning` prints exactly the lines.
    assert_eq!(cli.ok(&["consume", "quickstart", "--from-beginning"], b"").await, "a\nb\nc\n");

    // Phase 4: `--format json` prints one object per record: partition,
    // offset, the leader's timestamp, the value, and no key, tag or headers.
    let out = cli.ok(&["consume", "quickstart", "--from-beginning", "--format", "json"], b"").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, (line, value)) in lines.iter().zip(["a", "b", "c"]).enumerate() {
        let (record, stamped) = json_record(line);
        assert!((before..=after).contains(&stamped), "{line}: stamped outside {before}..={after}");
        let want = json!({"partition": 0, "offset": i, "key": null, "value": value, "tag": null, "headers": []});
        assert_eq!(record, want, "{line}");
    }

    // Phase 5: a record with a key, a tag and a header reads back through
    // a tag filter and a key lookup.
    let keyed = ["produce", "quickstart", "--key", "user-7", "--tag", "vip", "--header", "trace=abc"];
    let out = cli.ok(&keyed, b"d\n").await;
    assert!(out.starts_with("quickstart/0 offsets 3..3 durability=QUORUM_FSYNCED "), "{out}");
    let out = cli.ok(&["consume", "quickstart", "--from-beginning", "--tag", "vip", "--format", "json"], b"").await;
    let (record, _) = json_record(out.trim_end());
    let want = json!({"partition": 0, "offset": 3, "key": "user-7", "value": "d", "tag": "vip",
        "headers": [{"key": "trace", "value": "abc"}]});
    assert_eq!(record, want, "{out}");
    assert_eq!(cli.ok(&["lookup", "quickstart", "--key", "user-7"], b"").await, "d\n");

    // Phase 6: a consumer group commits what it printed, so consuming again
    // in the group prints nothing; `keel group show` names offset and lag.
    assert_eq!(cli.ok(&["consume", "quickstart", "--group", "readers"], b"").await, "a\nb\nc\nd\n");
    assert_eq!(cli.ok(&["consume", "quickstart", "--group", "readers"], b"").await, "", "all was read");
    let out = cli.ok(&["group", "show", "readers", "quickstart"], b"").await;
    let row: Vec<&str> = out.lines().last().unwrap_or_default().split_whitespace().collect();
    assert_eq!(row, ["0", "4", "4", "0"], "partition, committed, end, lag: {out}");
    let client = cluster_client(&cluster);
    assert_eq!(client.fetch_offset("readers", "quickstart", 0).await.expect("fetch offset"), Some(4));

    // Phase 7: `keel cluster status` exits 0 naming the leader and the
    // three voters, in text and in JSON.
    let out = cli.ok(&["cluster", "status"], b"").await;
    let named = format!("leader: node {leader} at {} ", cluster.grpc(leader));
    assert!(out.starts_with(&named), "expected {named:?} first: {out}");
    for id in cluster.ids() {
        let member = format!("node {id:<4} {:<24} voter", cluster.grpc(id));
        assert!(out.contains(&member), "expected {member:?}: {out}");
    }
    let out = cli.ok(&["cluster", "status", "--json"], b"").await;
    let status: Value = serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(status["leader_id"], json!(leader), "{out}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{out}");

    // Phase 8: refused commands exit non-zero with the node's own message
    // and code, and change nothing.
    let unknown = ["unknown topic `nosuch`", "UNKNOWN_TOPIC"];
    cli.fails(&["consume", "nosuch", "--from-beginning"], b"", &unknown).await;
    cli.fails(&["produce", "nosuch"], b"x\n", &unknown).await;
    let exists = ["topic `quickstart` already exists", "TOPIC_EXISTS"];
    cli.fails(&["topic", "create", "quickstart"], b"", &exists).await;
    let bad_name = ["topic name `a b` contains ' '", "INVALID_ARGUMENT"];
    cli.fails(&["topic", "create", "a b"], b"", &bad_name).await;
    let past_end = ["offset 99 is out of range for quickstart/0: retained offsets are 0..4", "OFFSET_OUT_OF_RANGE"];
    cli.fails(&["group", "commit", "readers", "quickstart", "--partition", "0", "--offset", "99"], b"", &past_end)
        .await;
    assert_eq!(cli.ok(&["consume", "quickstart", "--from-beginning"], b"").await, "a\nb\nc\nd\n");
    assert_eq!(client.fetch_offset("readers", "quickstart", 0).await.expect("fetch offset"), Some(4));
    let topics: Vec<String> = client.list_topics().await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(topics, ["quickstart"]);

    // Phase 9 (README quickstart from here on): keyed lines all go to the
    // key's partition, crc32c(key) mod 3, at offsets 0..2.
    cli.ok(&["topic", "create", "orders", "--partitions", "3"], b"").await;
    let keyed_to = partition_for(b"customer-42", 3);
    let before = now_ms();
    let out = cli.ok(&["produce", "orders", "--key", "customer-42"], b"first\nsecond\nthird\n").await;
    let report = format!("orders/{keyed_to} offsets 0..2 durability=QUORUM_FSYNCED durable_index=");
    assert!(out.starts_with(&report) && out.lines().count() == 1, "expected {report:?}: {out}");

    // Phase 10: generated records and tagged lines go round-robin; every
    // partition reports its offsets, which add up to the records sent.
    let out = cli.ok(&["produce", "orders", "--count", "1000", "--size", "100"], b"").await;
    assert_eq!(report_counts(&out).values().sum::<u64>(), 1000, "{out}");
    assert_eq!(report_counts(&out).len(), 3, "round-robin reaches every partition: {out}");
    let out = cli.ok(&["produce", "orders", "--tag", "paid"], b"p1\np2\n").await;
    let tagged = report_counts(&out);
    assert_eq!(tagged.values().sum::<u64>(), 2, "{out}");

    // Phase 11: `--count 5` prints five records; one partition in JSON
    // starts with the three keyed lines.
    let out = cli.ok(&["consume", "orders", "--from-beginning", "--count", "5"], b"").await;
    assert_eq!(out.lines().count(), 5, "{out}");
    let partition = keyed_to.to_string();
    let out = cli.ok(&["consume", "orders", "--partition", &partition, "--format", "json"], b"").await;
    for (i, (line, value)) in out.lines().zip(["first", "second", "third"]).enumerate() {
        let (record, _) = json_record(line);
        let want = json!({"partition": keyed_to, "offset": i, "key": "customer-42", "value": value, "tag": null,
            "headers": []});
        assert_eq!(record, want, "{line}");
    }
    let records = out.lines().count() as u64;
    assert!(records > 300, "partition {keyed_to} holds the keyed lines and a third of 1000: {records}");

    // Phase 12: a tag filter with a group prints exactly the tagged lines
    // and commits, per partition, the offset after the last one it printed
    // (the tagged lines were the last records of their partitions, so no
    // lag there); a partition it printed nothing of has no commit.
    let out = cli.ok(&["consume", "orders", "--tag", "paid || refunded", "--group", "billing"], b"").await;
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["p1", "p2"], "{out}");
    let out = cli.ok(&["group", "show", "billing", "orders"], b"").await;
    let rows: Vec<Vec<&str>> = out.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for row in &rows {
        let [partition, committed, end, lag] = row[..] else { panic!("a row of four cells: {out}") };
        let partition: u32 = partition.parse().unwrap_or_else(|_| panic!("a partition number: {out}"));
        if tagged.contains_key(&partition) {
            assert_eq!((committed, lag), (end, "0"), "partition {partition} was read to its end: {out}");
        } else {
            assert_eq!((committed, lag), ("-", "-"), "partition {partition} printed nothing: {out}");
        }
    }

    // Phase 13: lookups by key and by timestamp.
    assert_eq!(cli.ok(&["lookup", "orders", "--key", "customer-42"], b"").await, "first\nsecond\nthird\n");
    let at = before.to_string();
    let out = cli.ok(&["lookup", "orders", "--timestamp", &at], b"").await;
    assert_eq!(out.lines().count(), 3, "one line per partition: {out}");
    let keyed_line = format!("orders/{keyed_to} offset 0 timestamp_ms ");
    assert!(out.lines().any(|l| l.starts_with(&keyed_line)), "expected {keyed_line:?}: {out}");
    let later = (now_ms() + 3_600_000).to_string();
    let out = cli.ok(&["lookup", "orders", "--timestamp", &later, "--partition", &partition], b"").await;
    assert!(out.starts_with(&format!("orders/{keyed_to} offset {records} (end:")), "past every record: {out}");

    // Phase 14: `keel topic describe` shows every partition's offsets: all
    // 1005 records.
    let out = cli.ok(&["topic", "describe", "orders"], b"").await;
    assert!(out.starts_with("topic orders (incarnation "), "{out}");
    let ends: u64 = out
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells.len() == 5 && cells[0].parse::<u32>().is_ok()).then(|| cells[2].parse::<u64>().expect("END"))
        })
        .sum();
    assert_eq!(ends, 1005, "{out}");
}

/// Records per partition in `keel produce`'s report lines
/// (`T/P offsets A..B durability=...`).
#[track_caller]
fn report_counts(out: &str) -> BTreeMap<u32, u64> {
    out.lines()
        .map(|line| {
            let parse = || -> Option<(u32, u64)> {
                let (topic_partition, rest) = line.split_once(" offsets ")?;
                let partition = topic_partition.rsplit_once('/')?.1.parse().ok()?;
                let (first, last) = rest.split_once(' ')?.0.split_once("..")?;
                let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
                Some((partition, last - first + 1))
            };
            parse().unwrap_or_else(|| panic!("not a produce report line: {line:?}"))
        })
        .collect()
}

/// Writes a properties file in `dir`: a first line pointing the node's data
/// at `dir/data` (so no command can touch anything else), then `lines`.
fn properties(dir: &Path, name: &str, lines: &str) -> String {
    let path = dir.join(name);
    let text = format!("store.path.commitlog={}\n{lines}", dir.join("data").display());
    std::fs::write(&path, text).expect("write a properties file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_file_is_refused_naming_key_value_and_line() {
    let dir = tempfile::Builder::new().prefix("keel-config-").tempdir().expect("create a temp dir");

    // Phase 1: a good file passes `keel config check`, which prints the
    // effective configuration (so the failures below are the bad lines'
    // doing, not the files').
    let good = properties(dir.path(), "good.properties", "# a node\nnode.id=2\n");
    let out = keel_ok(&["config", "check", &good], b"").await;
    assert!(out.lines().any(|l| l == "node.id=2"), "{out}");
    assert!(out.lines().any(|l| l == "flush.disk.type=SYNC_FLUSH"), "{out}");

    // Phase 2: a bad value, of a store key or of a node key: `keel config
    // check` and `keel node --config` both exit non-zero naming the file
    // and line, the key and the value.
    let cases = [
        ("store.properties", "node.id=1\n\nflush.disk.type=FAST\n", 4, "`flush.disk.type`", "\"FAST\""),
        ("node.properties", "# comment\nnode.id=1\ncluster.bootstrap=yes\n", 4, "`cluster.bootstrap`", "\"yes\""),
        ("size.properties", "segment.bytes = 100\n", 2, "`segment.bytes`", "\"100\""),
    ];
    for (name, lines, line, key, value) in cases {
        let path = properties(dir.path(), name, lines);
        let at = format!("{path}:{line}:");
        keel_fails(&["config", "check", &path], b"", &[&at, key, value]).await;
        keel_fails(&["node", "--config", &path], b"", &[&at, key, value]).await;
    }

    // Phase 3: an unknown (misspelt) key is refused naming the file, line
    // and key; a line that is no `key=value` naming the file, line and text.
    let path = properties(dir.path(), "unknown.properties", "node.id=1\n# next: a typo\nflush.disk.typ=SYNC_FLUSH\n");
    let at = format!("{path}:4:");
    let needles = [at.as_str(), "unknown configuration key", "`flush.disk.typ`"];
    keel_fails(&["config", "check", &path], b"", &needles).await;
    keel_fails(&["node", "--config", &path], b"", &needles).await;
    let path = properties(dir.path(), "garbage.properties", "node.id=1\njust some words\n");
    let at = format!("{path}:3:");
    keel_fails(&["config", "check", &path], b"", &[&at, "just some words"]).await;
    keel_fails(&["node", "--config", &path], b"", &[&at, "just some words"]).await;

    // Phase 4: neither the check nor a refused node created the data
    // directory: a node stops on its configuration before touching disk.
    assert!(!dir.path().join("data").exists(), "a refused configuration created {}", dir.path().join("data").display());
}
