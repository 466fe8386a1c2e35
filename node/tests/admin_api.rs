//! The admin HTTP API against a real three-node cluster (`keel node`
//! processes, `common::Cluster`): every answer matches the schema the node
//! serves at `/api/v1/openapi.json`, the indexes are consistent with each
//! other, replicas' digests agree, `/metrics` parses as Prometheus text and
//! its counters rise after producing, and mutations need the token, refuse
//! bad input naming the field, and change nothing when refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Cluster;
use common::http::{self, Response};
use keel_client::proto::TopicConfig;
use keel_client::{Client, ClientOptions, Producer, Record};
use prometheus_parse::{LineInfo, Scrape, Value as PromValue};
use serde_json::{Map, Value, json};

const TOKEN: &str = "s3cret-admin";
const SETTLE: Duration = Duration::from_secs(30);
/// Above the longest a membership change may take at the leader
/// (`keel_client::MEMBERSHIP_CHANGE_WAIT`).
const MUTATION: Duration = Duration::from_secs(120);
const RECORDS: u64 = 300;

/// Wait until every node's admin server answers (the harness waits for the
/// gRPC port only).
fn wait_serving(cluster: &Cluster) {
    let deadline = Instant::now() + SETTLE;
    for node in cluster.ids() {
        loop {
            match http::get(&cluster.admin(node), "/healthz") {
                Ok(r) if r.status == 200 => break,
                other => assert!(Instant::now() < deadline, "node {node}'s admin server: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn get(cluster: &Cluster, node: u64, path: &str) -> Response {
    http::get(&cluster.admin(node), path).unwrap_or_else(|e| panic!("node {node}: {e}"))
}

fn get_json(cluster: &Cluster, node: u64, path: &str) -> Value {
    let r = get(cluster, node, path);
    assert_eq!(r.status, 200, "GET {path} on node {node}: {r:?}");
    r.json()
}

fn send(cluster: &Cluster, node: u64, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http::request_with_timeout(&cluster.admin(node), method, path, &headers, Some(body.as_bytes()), MUTATION)
        .unwrap_or_else(|e| panic!("node {node}: {e}"))
}

/// A 4xx answer whose JSON error mentions `needle`.
fn assert_refused(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains(needle), "error {e:?} does not mention {needle:?}");
}

/// An OpenAPI 3.0 schema object as JSON Schema, for the jsonschema crate.
/// OpenAPI 3.0 extends draft 4 (where, as there, `1.0` is no integer), so
/// two things need translating:
/// - `nullable: true`, which JSON Schema lacks, becomes `anyOf` null or the
///   rest of the schema;
/// - an object schema with `properties` and no `additionalProperties` is
///   closed (`additionalProperties: false`): JSON Schema leaves it open, and
///   a field the code sends and the description omits must be caught too.
///
/// `$ref: #/components/schemas/X` needs no rewriting: the converted schemas
/// keep that path in the document the validator is built from.
fn json_schema(schema: &Value) -> Value {
    let Some(fields) = schema.as_object() else { return schema.clone() };
    let each = |list: &Value| list.as_array().map(|l| l.iter().map(json_schema).collect()).unwrap_or_default();
    let mut converted = Map::new();
    for (key, value) in fields {
        let value = match key.as_str() {
            "nullable" => continue,
            "properties" => Value::Object(
                value.as_object().into_iter().flatten().map(|(n, s)| (n.clone(), json_schema(s))).collect(),
            ),
            "items" | "additionalProperties" | "not" => json_schema(value),
            "allOf" | "anyOf" | "oneOf" => Value::Array(each(value)),
            _ => value.clone(),
        };
        converted.insert(key.clone(), value);
    }
    if schema["type"] == "object" && schema.get("properties").is_some() && schema.get("additionalProperties").is_none()
    {
        converted.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    if schema["nullable"] == json!(true) {
        return json!({ "anyOf": [{ "type": "null" }, converted] });
    }
    Value::Object(converted)
}

/// Every way `value` departs from the schema `components.schemas.<name>`
/// of the OpenAPI document `doc`, each with its path in `value`.
fn schema_errors(doc: &Value, name: &str, value: &Value) -> Vec<String> {
    let schemas: Map<String, Value> = doc["components"]["schemas"]
        .as_object()
        .expect("the OpenAPI document has components.schemas")
        .iter()
        .map(|(n, s)| (n.clone(), json_schema(s)))
        .collect();
    let root = json!({ "$ref": format!("#/components/schemas/{name}"), "components": { "schemas": schemas } });
    let validator = jsonschema::draft4::new(&root).unwrap_or_else(|e| panic!("the {name} schema: {e}"));
    validator.iter_errors(value).map(|e| format!("{name}{}: {e}", e.instance_path())).collect()
}

fn assert_matches_schema(doc: &Value, name: &str, value: &Value) {
    let errors = schema_errors(doc, name, value);
    assert!(errors.is_empty(), "the answer does not match the {name} schema:\n{}\n{value:#}", errors.join("\n"));
}

/// The conversion keeps the old checker's strictness: each departure below
/// is caught, through `$ref`, `allOf` and `nullable`, and a right answer
/// passes.
#[test]
fn the_schema_check_refuses_missing_mistyped_null_and_extra_fields() {
    let doc = json!({ "components": { "schemas": {
        "Node": {
            "type": "object",
            "required": ["id", "role", "disk", "labels"],
            "properties": {
                "id": { "type": "integer", "minimum": 0 },
                "role": { "type": "string", "enum": ["leader", "follower"], "nullable": true },
                "disk": { "allOf": [{ "$ref": "#/components/schemas/Disk" }], "nullable": true },
                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            },
        },
        "Disk": {
            "type": "object",
            "required": ["free"],
            "properties": { "free": { "type": "integer" } },
        },
    } } });
    let valid = json!({ "id": 1, "role": "leader", "disk": { "free": 5 }, "labels": { "zone": "a" } });
    assert_eq!(schema_errors(&doc, "Node", &valid), Vec::<String>::new());
    let nulls = json!({ "id": 1, "role": null, "disk": null, "labels": {} });
    assert_eq!(schema_errors(&doc, "Node", &nulls), Vec::<String>::new(), "nullable fields take null");

    let wrong = |change: &dyn Fn(&mut Value), at: &str| {
        let mut value = valid.clone();
        change(&mut value);
        let errors = schema_errors(&doc, "Node", &value);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("Node{at}: "))),
            "{value} passed or erred elsewhere: {errors:?}"
        );
    };
    wrong(&|v| _ = v.as_object_mut().expect("object").remove("id"), "");
    wrong(&|v| _ = v["disk"].as_object_mut().expect("object").remove("free"), "/disk");
    wrong(&|v| v["id"] = json!("1"), "/id");
    wrong(&|v| v["id"] = json!(1.0), "/id");
    wrong(&|v| v["id"] = json!(-1), "/id");
    wrong(&|v| v["role"] = json!("boss"), "/role");
    wrong(&|v| v["labels"]["zone"] = json!(7), "/labels/zone");
    wrong(&|v| v["id"] = Value::Null, "/id");
    // Inside a nullable field, its `anyOf` is what fails.
    wrong(&|v| v["disk"]["free"] = Value::Null, "/disk");
    wrong(&|v| v["extra"] = json!(true), "");
    wrong(&|v| v["disk"]["extra"] = json!(true), "/disk");
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a whole number"))
}

/// Prometheus text, read by prometheus-parse: every sample as
/// `name{labels}` (labels sorted by name) → value, a histogram's buckets as
/// `name_bucket{labels,le="bound"}`. prometheus-parse skips what it cannot
/// read, so every line is first checked to be one it reads (HELP, TYPE,
/// sample or blank), with a number for its value and a TYPE for its family:
/// panics otherwise. No summaries: their `_sum` and `_count` would have no
/// TYPE of their own.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Empty | LineInfo::Doc { .. } => {}
            // prometheus-parse files a histogram's TYPE under its `_bucket`
            // series, the family as the alias; `_sum` and `_count` are the
            // family's too.
            LineInfo::Type { metric_name, metric_alias, .. } => {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&line.rsplit(' ').next().unwrap_or_default()),
                    "unknown metric type in {line:?}"
                );
                typed.extend(metric_alias.iter().flat_map(|f| [format!("{f}_sum"), format!("{f}_count")]));
                typed.insert(metric_name);
            }
            LineInfo::Sample { metric_name, value, .. } => {
                assert!(value.parse::<f64>().is_ok(), "not a number in {line:?}");
                assert!(
                    metric_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad metric name in {line:?}"
                );
                assert!(typed.contains(metric_name), "{metric_name} has no # TYPE line");
            }
            LineInfo::Ignored => panic!("not a line of Prometheus text: {line:?}"),
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("reading a string cannot fail");
    let series = |name: &str, labels: &[String]| match labels.join(",") {
        labels if labels.is_empty() => name.to_owned(),
        labels => format!("{name}{{{labels}}}"),
    };
    let mut samples = BTreeMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.sort();
        match sample.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => {
                samples.insert(series(&sample.metric, &labels), v);
            }
            PromValue::Histogram(buckets) => {
                for bucket in buckets {
                    let le = if bucket.less_than == f64::INFINITY {
                        "+Inf".to_owned()
                    } else {
                        bucket.less_than.to_string()
                    };
                    let labels = [labels.clone(), vec![format!("le=\"{le}\"")]].concat();
                    samples.insert(series(&format!("{}_bucket", sample.metric), &labels), bucket.count);
                }
            }
            PromValue::Summary(_) => panic!("{} is a summary, whose _sum and _count have no TYPE", sample.metric),
        }
    }
    samples
}

/// What the tests read from /metrics comes out, and text the old parser
/// refused is still refused.
#[test]
fn the_metrics_parser_reads_exposition_text_and_refuses_anything_else() {
    let text = "# HELP keel_io_bytes_total Bytes.\n# TYPE keel_io_bytes_total counter\n\
                keel_io_bytes_total{op=\"write\"} 10\nkeel_io_bytes_total{op=\"read\"} 4\n\n\
                # TYPE keel_raft_term gauge\nkeel_raft_term 2\n\
                # TYPE keel_flush_duration_seconds histogram\n\
                keel_flush_duration_seconds_bucket{le=\"0.005\"} 1\n\
                keel_flush_duration_seconds_bucket{le=\"+Inf\"} 3\n\
                keel_flush_duration_seconds_sum 0.5\nkeel_flush_duration_seconds_count 3\n";
    let expected: BTreeMap<String, f64> = [
        ("keel_io_bytes_total{op=\"write\"}", 10.0),
        ("keel_io_bytes_total{op=\"read\"}", 4.0),
        ("keel_raft_term", 2.0),
        ("keel_flush_duration_seconds_bucket{le=\"0.005\"}", 1.0),
        ("keel_flush_duration_seconds_bucket{le=\"+Inf\"}", 3.0),
        ("keel_flush_duration_seconds_sum", 0.5),
        ("keel_flush_duration_seconds_count", 3.0),
    ]
    .into_iter()
    .map(|(series, value)| (series.to_owned(), value))
    .collect();
    assert_eq!(parse_metrics(text), expected);

    for bad in [
        "keel_untyped 1",
        "# TYPE keel_a counter\nkeel_a one",
        "# TYPE keel_a counter\nkeel_a{op=\"x\" 1",
        "# TYPE keel_a counters\nkeel_a 1",
        "# a comment that is neither HELP nor TYPE",
        "# TYPE keel_h histogram\nkeel_h_total 1",
        "# TYPE keel_a counter\nkeel_a=1",
    ] {
        assert!(std::panic::catch_unwind(|| parse_metrics(bad)).is_err(), "{bad:?} was read");
    }
}

fn metric(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} is missing from /metrics: {:?}", samples.keys()))
}

/// Wait until every node has applied what the leader has committed.
async fn settled(cluster: &Cluster, leader: u64) -> u64 {
    let deadline = Instant::now() + SETTLE;
    loop {
        let committed = get_json(cluster, leader, "/api/v1/status")["log"]["committed"].as_u64().unwrap_or(0);
        let applied: Vec<u64> = cluster
            .ids()
            .map(|n| get_json(cluster, n, "/api/v1/status")["log"]["applied"].as_u64().unwrap_or(0))
            .collect();
        if applied.iter().all(|&a| a >= committed) {
            return committed;
        }
        assert!(Instant::now() < deadline, "nodes applied {applied:?}, leader committed {committed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn produce(cluster: &Cluster, topic: &str, n: u64) {
    let client = Client::connect(cluster.addrs()).expect("addresses");
    let producer: Producer = client.producer();
    // A few batches per partition: several log entries, few round trips.
    for chunk in 0..n.div_ceil(30) {
        let partition = (chunk % 3) as u32;
        let records: Vec<Record> =
            (chunk * 30..((chunk + 1) * 30).min(n)).map(|i| Record::new(format!("record {i}"))).collect();
        producer.produce(topic, partition, records).await.unwrap_or_else(|e| panic!("produce chunk {chunk}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_cluster_topics_digest_and_metrics_agree_with_each_other() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    wait_serving(&cluster);
    let doc = get_json(&cluster, leader, "/api/v1/openapi.json");
    let before = parse_metrics(&get(&cluster, leader, "/metrics").text());

    let client = Client::connect(cluster.addrs()).expect("addresses");
    client.create_topic("audit", TopicConfig { partitions: 3, ..TopicConfig::default() }).await.expect("create");
    produce(&cluster, "audit", RECORDS).await;
    client.commit_offset("billing", "audit", 0, 40).await.expect("commit offset");
    let committed = settled(&cluster, leader).await;

    // Every node's status: schema, and indexes in order.
    for node in cluster.ids() {
        let s = get_json(&cluster, node, "/api/v1/status");
        assert_matches_schema(&doc, "NodeStatus", &s);
        assert_eq!(u(&s["node_id"]), node);
        assert_eq!(u(&s["leader_id"]), leader, "node {node} names another leader");
        assert_eq!(s["role"], if node == leader { "leader" } else { "follower" });
        assert_eq!(s["voters"], json!([1, 2, 3]));
        assert_eq!(s["leader_addr"], json!(cluster.grpc(leader)));
        let log = &s["log"];
        let (first, last, commit, applied) =
            (u(&log["first_index"]), u(&log["last_index"]), u(&log["committed"]), u(&log["applied"]));
        assert!(first <= applied && applied <= commit && commit <= last, "node {node}: {log}");
        assert!(u(&log["durable"]) <= commit, "node {node}: durable above commit: {log}");
        assert!(u(&log["fsynced"]) <= last, "node {node}: fsynced above the last entry: {log}");
        if node == leader {
            assert!(commit >= committed);
            let rows = s["replication"].as_array().expect("rows");
            let ids: Vec<u64> = rows.iter().map(|r| u(&r["node_id"])).collect();
            assert_eq!(ids.len(), 2, "the leader shows one row per follower: {rows:?}");
            assert!(!ids.contains(&leader));
            for r in rows {
                let matched = u(&r["matched"]);
                assert!(matched <= commit && commit <= last, "{r} vs {log}");
                assert_eq!(u(&r["lag_entries"]), last - matched, "{r} vs {log}");
                assert!(u(&r["last_ack_ms_ago"]) < 10_000, "a live follower acked long ago: {r}");
            }
        } else {
            assert_eq!(s["replication"], json!([]), "only the leader shows replication");
        }
        let flush = &s["flush"];
        assert_eq!(flush["policy"], "SYNC_FLUSH");
        for key in ["flush.disk.type", "flush.batch.size", "flush.interval.ms", "flush.commitlog.interval"] {
            assert!(flush["config"][key].is_string(), "flush.config lacks {key}: {flush}");
        }
        assert!(u(&flush["fsyncs"]) > 0 && u(&flush["written_bytes_total"]) > 0, "{flush}");
        let q = &flush["fsync_us"]["since_start"];
        assert!(u(&q["count"]) > 0 && u(&q["p50"]) <= u(&q["p99"]) && u(&q["p99"]) <= u(&q["max"]), "{q}");
        let storage = &s["storage"];
        let segments = storage["segments"].as_array().expect("segments");
        assert!(!segments.is_empty());
        assert_eq!(u(&storage["segment_bytes_total"]), segments.iter().map(|g| u(&g["bytes"])).sum::<u64>());
        assert_eq!(segments.iter().filter(|g| g["sealed"] == json!(false)).count(), 1, "one active segment");
        let ratio = storage["disk"]["used_ratio"].as_f64().expect("ratio");
        assert!((0.0..=1.0).contains(&ratio), "{storage}");
        let advice_rules: Vec<&Value> = s["advice"].as_array().expect("advice").iter().map(|a| &a["rule"]).collect();
        assert_eq!(advice_rules.contains(&&json!("disk_usage")), ratio > 0.8, "disk advice iff > 80%: {s}");
    }

    // One node answers for all.
    let follower = cluster.ids().find(|&n| n != leader).expect("a follower");
    let c = get_json(&cluster, follower, "/api/v1/cluster");
    assert_matches_schema(&doc, "Cluster", &c);
    assert_eq!(u(&c["asked_by"]), follower);
    assert_eq!(u(&c["leader_id"]), leader);
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.iter().map(|n| u(&n["node_id"])).collect::<Vec<_>>(), [1, 2, 3]);
    for n in nodes {
        assert_eq!(n["reachable"], json!(true), "{n}");
        assert_eq!(n["status"]["node_id"], n["node_id"], "a peer's own status comes back");
    }

    // Topics, with the group's lag.
    for node in cluster.ids() {
        let t = get_json(&cluster, node, "/api/v1/topics");
        assert_matches_schema(&doc, "Topics", &t);
        let audit = t["topics"].as_array().expect("topics").iter().find(|t| t["name"] == "audit").expect("audit");
        let parts = audit["partition_info"].as_array().expect("partitions");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(|p| u(&p["next_offset"]) - u(&p["first_offset"])).sum::<u64>(), RECORDS);
        let p0_next = u(&parts[0]["next_offset"]);
        assert_eq!(
            audit["groups"],
            json!([{ "group": "billing", "partition": 0, "committed": 40, "lag": p0_next - 40 }])
        );
    }

    // Replicas hold the same committed log.
    let path = format!("/api/v1/storage/digest?from=1&upto={committed}");
    let digests: Vec<Value> = cluster.ids().map(|n| get_json(&cluster, n, &path)).collect();
    assert_matches_schema(&doc, "Digest", &digests[0]);
    assert_eq!(u(&digests[0]["count"]), committed);
    assert!(digests.iter().all(|d| *d == digests[0]), "replicas differ: {digests:?}");
    let shorter = get_json(&cluster, leader, &format!("/api/v1/storage/digest?from=1&upto={}", committed - 1));
    assert_ne!(shorter["sha256"], digests[0]["sha256"], "the digest covers the last entry");
    assert_refused(&get(&cluster, leader, "/api/v1/storage/digest?from=abc"), 400, "from=");
    assert_refused(&get(&cluster, leader, "/api/v1/storage/digest?upto=99999999"), 400, "upto=99999999");
    assert_refused(&get(&cluster, leader, "/api/v1/storage/digest?from=5&upto=4"), 400, "from=5");
    assert_refused(&get(&cluster, leader, "/api/v1/storage/digest?form=1"), 400, "\"form\"");
    assert_refused(&get(&cluster, leader, "/api/v1/nope"), 404, "/api/v1/nope");

    // /metrics: valid text, levels right, counters risen.
    let after = parse_metrics(&get(&cluster, leader, "/metrics").text());
    assert_eq!(metric(&after, "keel_raft_is_leader"), 1.0);
    assert!(
        metric(&after, "keel_produce_messages_total") - metric(&before, "keel_produce_messages_total")
            >= RECORDS as f64
    );
    assert!(metric(&after, "keel_io_bytes_total{op=\"write\"}") > metric(&before, "keel_io_bytes_total{op=\"write\"}"));
    assert!(metric(&after, "keel_flush_duration_seconds_count") > metric(&before, "keel_flush_duration_seconds_count"));
    assert!(metric(&after, "keel_flush_duration_seconds_bucket{le=\"+Inf\"}") > 0.0);
    assert!(metric(&after, "keel_raft_commit_index") >= committed as f64);
    assert!(metric(&after, "keel_raft_applied_index") >= committed as f64);
    assert!(metric(&after, "keel_raft_term") >= 1.0);
    assert!(metric(&after, "keel_segments") >= 1.0);
    let ratio = metric(&after, "keel_disk_usage_ratio");
    assert!((0.0..=1.0).contains(&ratio));
    for peer in cluster.ids().filter(|&n| n != leader) {
        assert!(metric(&after, &format!("keel_replication_lag_entries{{peer=\"{peer}\"}}")) >= 0.0);
    }
    let f = parse_metrics(&get(&cluster, follower, "/metrics").text());
    assert_eq!(metric(&f, "keel_raft_is_leader"), 0.0);
    let fetched_before = metric(&f, "keel_fetch_messages_total");
    let reader = Client::connect(vec![cluster.grpc(follower)]).expect("address");
    let got = reader.fetch(keel_client::Fetch::new("audit", 0, 0)).await.expect("fetch");
    assert!(!got.records.is_empty());
    let f = parse_metrics(&get(&cluster, follower, "/metrics").text());
    assert!(metric(&f, "keel_fetch_messages_total") >= fetched_before + got.records.len() as f64);
    assert!(metric(&f, "keel_io_bytes_total{op=\"read\"}") > 0.0);

    for node in cluster.ids() {
        assert_eq!(get(&cluster, node, "/healthz").status, 200);
        let ready = get(&cluster, node, "/readyz");
        assert_eq!(ready.status, 200, "node {node}: {ready:?}");
    }
    let page = get(&cluster, follower, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{page:?}");
    assert!(page.text().contains("app.js"));
    assert_eq!(get(&cluster, follower, "/app.js").status, 200);
    assert_refused(&get(&cluster, follower, "/api/v1/snapshot"), 405, "GET is not allowed");

    // A peer that hangs (SIGSTOP) is listed as unreachable within the
    // one-second deadline, and the answer still comes.
    let paused = cluster.ids().find(|&n| n != leader && n != follower).expect("the other follower");
    cluster.pause(paused);
    let asked = Instant::now();
    let c = get_json(&cluster, leader, "/api/v1/cluster");
    let took = asked.elapsed();
    cluster.resume(paused);
    let row = c["nodes"].as_array().expect("nodes").iter().find(|n| u(&n["node_id"]) == paused).expect("row").clone();
    assert_eq!(row["reachable"], json!(false), "{row}");
    assert!(row["error"].as_str().is_some_and(|e| !e.is_empty()), "{row}");
    assert_eq!(row["status"], Value::Null);
    assert!(took < Duration::from_secs(5), "a hung peer held /api/v1/cluster for {took:?}");

    // Without a quorum the last node is alive but not ready.
    let last = follower;
    for n in cluster.ids().filter(|&n| n != last) {
        cluster.kill(n);
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = get(&cluster, last, "/readyz");
        if r.status == 503 {
            let reasons = r.json()["reasons"].to_string();
            assert!(reasons.contains("no leader"), "{reasons}");
            break;
        }
        assert!(Instant::now() < deadline, "node {last} stayed ready without a quorum: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&cluster, last, "/healthz").status, 200, "alive and its store open");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_need_the_token_refuse_bad_input_and_change_membership() {
    let cluster = Cluster::start(3, &[("admin.token", TOKEN)]).await;
    let leader = cluster.leader().await;
    wait_serving(&cluster);
    // Creating a topic over gRPC needs the token too (security.rs tests the refusals).
    let options = ClientOptions { token: Some(TOKEN.into()), ..ClientOptions::default() };
    let client = Client::with_options(cluster.addrs(), options).expect("addresses");
    client.create_topic("kept", TopicConfig { partitions: 3, ..TopicConfig::default() }).await.expect("create");
    produce(&cluster, "kept", 60).await;
    let committed = settled(&cluster, leader).await;
    let digest_path = format!("/api/v1/storage/digest?from=1&upto={committed}");
    let digest = get_json(&cluster, leader, &digest_path);
    let victim = cluster.ids().find(|&n| n != leader).expect("a follower");

    // Reads stay open; changes without the right token are refused and change nothing.
    assert_eq!(get(&cluster, victim, "/api/v1/status").status, 200);
    let add = r#"{"id": 9, "addr": "127.0.0.1:1"}"#;
    for token in [None, Some("wrong")] {
        let r = send(&cluster, leader, "POST", "/api/v1/snapshot", token, "");
        assert_refused(&r, 401, "admin.token");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{r:?}");
        assert_refused(&send(&cluster, leader, "POST", "/api/v1/members", token, add), 401, "admin.token");
        assert_refused(
            &send(&cluster, leader, "DELETE", &format!("/api/v1/members/{victim}"), token, ""),
            401,
            "admin.token",
        );
    }
    let s = get_json(&cluster, leader, "/api/v1/status");
    assert_eq!(s["voters"], json!([1, 2, 3]));
    assert_eq!(s["log"]["snapshot"], Value::Null, "a refused snapshot request built one");

    // Another site's page cannot make changes, token or not.
    let r = http::request(
        &cluster.admin(leader),
        "POST",
        "/api/v1/snapshot",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Origin", "http://evil.example")],
        None,
    )
    .expect("request");
    assert_refused(&r, 403, "evil.example");

    // Bad bodies and parameters name the field.
    let t = Some(TOKEN);
    assert_refused(&send(&cluster, leader, "POST", "/api/v1/members", t, r#"{"id": "x", "addr": "h:1"}"#), 400, "id:");
    assert_refused(&send(&cluster, leader, "POST", "/api/v1/members", t, r#"{"id": 4}"#), 400, "missing field `addr`");
    assert_refused(&send(&cluster, leader, "POST", "/api/v1/members", t, r#"{"id": 4, "addr": "nope"}"#), 400, "addr:");
    assert_refused(&send(&cluster, leader, "POST", "/api/v1/members", t, "{not json"), 400, "not valid JSON");
    assert_refused(&send(&cluster, leader, "DELETE", "/api/v1/members/abc", t, ""), 400, "id:");
    assert_refused(&send(&cluster, leader, "DELETE", "/api/v1/members/77", t, ""), 400, "77");
    assert_refused(
        &send(&cluster, leader, "POST", "/api/v1/snapshot", t, r#"{"now": true}"#),
        400,
        "unknown field `now`",
    );
    assert_eq!(get_json(&cluster, leader, "/api/v1/status")["voters"], json!([1, 2, 3]));

    // A snapshot on request.
    let r = send(&cluster, victim, "POST", "/api/v1/snapshot", t, "");
    assert_eq!(r.status, 200, "{r:?}");
    let snap = u(&r.json()["snapshot_index"]);
    assert!(snap >= committed, "snapshot at {snap}, applied was {committed}");
    assert_eq!(u(&get_json(&cluster, victim, "/api/v1/status")["log"]["snapshot"]), snap);

    // Remove a follower (asked of the other follower: it finds the leader;
    // two voters remain, so with force), then add it back as a voter.
    let asker = cluster.ids().find(|&n| n != leader && n != victim).expect("the other follower");
    let r = send(&cluster, asker, "DELETE", &format!("/api/v1/members/{victim}?force=true"), t, "");
    assert_eq!(r.status, 200, "{r:?}");
    let ids: Vec<u64> = r.json()["members"].as_array().expect("members").iter().map(|m| u(&m["id"])).collect();
    assert!(!ids.contains(&victim), "{ids:?}");
    let c = get_json(&cluster, leader, "/api/v1/cluster");
    assert_eq!(c["nodes"].as_array().expect("nodes").len(), 2, "{c}");

    let body = format!(r#"{{"id": {victim}, "addr": "{}"}}"#, cluster.grpc(victim));
    let r = send(&cluster, asker, "POST", "/api/v1/members", t, &body);
    assert_eq!(r.status, 200, "{r:?}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let c = get_json(&cluster, asker, "/api/v1/cluster");
        let nodes = c["nodes"].as_array().expect("nodes");
        let voters = nodes.iter().filter(|n| n["voter"] == json!(true)).count();
        let leaders = nodes.iter().filter(|n| n["status"]["role"] == json!("leader")).count();
        if voters == 3 && leaders == 1 && nodes.iter().all(|n| n["reachable"] == json!(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle with three voters: {c:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing stored changed.
    let leader = cluster.leader().await;
    let committed_now = settled(&cluster, leader).await;
    assert!(committed_now > committed);
    for node in cluster.ids() {
        assert_eq!(get_json(&cluster, node, &digest_path), digest, "node {node}'s log changed below {committed}");
    }
    let info = client.describe_topic("kept").await.expect("describe");
    assert_eq!(info.partition_info.iter().map(|p| p.end_offset).sum::<u64>(), 60);
}

/// Every node's view, which must be one cluster: the same members, the same
/// one leader (which itself says it leads), and equal digests over `digest_path`.
fn assert_one_cluster(cluster: &Cluster, members: &Value, digest_path: &str, digest: &Value) {
    let statuses: Vec<Value> = cluster.ids().map(|n| get_json(cluster, n, "/api/v1/status")).collect();
    let leaders: Vec<u64> =
        statuses.iter().filter(|s| s["role"] == json!("leader")).map(|s| u(&s["node_id"])).collect();
    assert_eq!(leaders.len(), 1, "leaders {leaders:?}; statuses: {statuses:#?}");
    for s in &statuses {
        let node = u(&s["node_id"]);
        assert_eq!(&s["members"], members, "node {node}'s members changed");
        assert_eq!(u(&s["leader_id"]), leaders[0], "node {node} names another leader");
        assert_eq!(&get_json(cluster, node, digest_path), digest, "node {node}'s log differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_changes_that_double_count_a_node_or_shrink_the_quorum_are_refused() {
    // As `keel dev` runs it: no admin.token.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    wait_serving(&cluster);
    let client = Client::connect(cluster.addrs()).expect("addresses");
    client.create_topic("kept", TopicConfig { partitions: 3, ..TopicConfig::default() }).await.expect("create");
    produce(&cluster, "kept", 60).await;
    let committed = settled(&cluster, leader).await;
    let digest_path = format!("/api/v1/storage/digest?from=1&upto={committed}");
    let digest = get_json(&cluster, leader, &digest_path);
    let members = get_json(&cluster, leader, "/api/v1/status")["members"].clone();
    let follower = cluster.ids().find(|&n| n != leader).expect("a follower");
    let other = cluster.ids().find(|&n| n != leader && n != follower).expect("the other follower");
    let port = cluster.grpc(follower).rsplit_once(':').map(|(_, p)| p.to_string()).expect("host:port");
    let add = |id: u64, addr: &str| {
        send(&cluster, other, "POST", "/api/v1/members", None, &format!(r#"{{"id": {id}, "addr": "{addr}"}}"#))
    };

    // Phase 1: the issue's reproduction, id 4 at a member's address, is
    // refused naming both nodes, as written and as another name for it.
    let same = cluster.grpc(follower);
    for addr in [same.clone(), format!("localhost:{port}")] {
        let r = add(4, &addr);
        assert_refused(&r, 400, &format!("node {follower}"));
        assert_refused(&r, 400, "node 4");
        assert_refused(&r, 400, &addr);
    }

    // Phase 2: an id that is already a member is refused with its address,
    // not silently re-added (also id 1 at another member's address).
    let r = add(follower, &same);
    assert_refused(&r, 400, "already");
    assert_refused(&r, 400, &same);
    let r = add(leader, &same);
    assert_refused(&r, 400, &format!("node {leader}"));
    assert_refused(&r, 400, &cluster.grpc(leader));

    // Phase 3: an address that does not resolve is refused naming it; one
    // where nothing listens is refused within the catch-up bound and leaves
    // no learner behind.
    assert_refused(&add(4, "no-such-host.invalid:9092"), 400, "no-such-host.invalid:9092");
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").to_string()
    };
    let started = Instant::now();
    assert_refused(&add(4, &nobody), 400, &nobody);
    assert!(started.elapsed() < Duration::from_secs(35), "took {:?}", started.elapsed());

    // Phase 4: removing a voter of three (a follower, or the leader) needs
    // force, and the refusal says how many voters would remain.
    for victim in [follower, leader] {
        let r = send(&cluster, other, "DELETE", &format!("/api/v1/members/{victim}"), None, "");
        assert_refused(&r, 400, "2 voters");
        assert_refused(&r, 400, "force");
    }
    for (query, needle) in [("force=yes", "force=\"yes\""), ("forc=true", "\"forc\"")] {
        let r = send(&cluster, other, "DELETE", &format!("/api/v1/members/{follower}?{query}"), None, "");
        assert_refused(&r, 400, needle);
    }

    // Phase 5: after all of that, nothing changed: same members, one
    // leader, equal logs.
    assert_one_cluster(&cluster, &members, &digest_path, &digest);

    // Phase 6: with force the follower goes; added back at its own address
    // (two voters growing to three needs no force) the cluster is whole.
    let r = send(&cluster, other, "DELETE", &format!("/api/v1/members/{follower}?force=true"), None, "");
    assert_eq!(r.status, 200, "{r:?}");
    let voters = r.json()["members"].as_array().expect("members").iter().filter(|m| m["voter"] == json!(true)).count();
    assert_eq!(voters, 2, "{r:?}");
    let r = add(follower, &same);
    assert_eq!(r.status, 200, "{r:?}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let leader = cluster.leader().await;
        let statuses: Vec<Value> = cluster.ids().map(|n| get_json(&cluster, n, "/api/v1/status")).collect();
        if statuses.iter().all(|s| s["members"] == members && u(&s["leader_id"]) == leader) {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not come back to {members}: {statuses:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = cluster.leader().await;
    settled(&cluster, leader).await;
    assert_one_cluster(&cluster, &members, &digest_path, &digest);
}
