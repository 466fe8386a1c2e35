//! The admin web page in a real browser (headless chromium driven through
//! chromedriver by fantoccini, `common::webdriver`) against a real
//! three-node cluster: it shows the three nodes with the one leader the
//! cluster agreed on, and when a node is killed the page marks that node
//! unreachable while the two others, and a leader among them, stay on it. Screenshots of both states
//! are saved under the target dir for a human to look at.
//!
//! The page's contract with this test: `<table id="nodes">` holds one
//! `<tr class="node" data-node-id="N" data-role="R">` per member, R one of
//! leader, follower, candidate, learner, shutdown, unreachable; an
//! unreachable node's row has a cell whose text is `unreachable`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them);
//! without them the test fails saying so, it never skips.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Cluster;
use common::http;
use common::webdriver::{Chromedriver, Session};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(30);
/// How long the page gets to show a state. It reads the API every second
/// and asks each peer with a one-second deadline, so this is generous.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long node 1's admin server gets to open once its gRPC port answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The node the test kills: not node 1, whose admin server serves the page.
const KILLED: u64 = 3;

/// One `#nodes tr.node` row as the page shows it.
#[derive(Debug)]
struct Row {
    id: Option<String>,
    role: Option<String>,
    text: String,
}

/// All rows read in one script, so a snapshot cannot mix two renderings
/// (the page rebuilds its rows every refresh, which would also make element
/// references go stale between WebDriver calls).
const READ_ROWS: &str = "return Array.from(document.querySelectorAll('#nodes tr.node')).map(row => ({
    id: row.getAttribute('data-node-id'),
    role: row.getAttribute('data-role'),
    text: row.innerText,
}));";

async fn read_rows(session: &Session<'_>) -> Result<Vec<Row>, String> {
    let value = session.execute(READ_ROWS, Vec::new()).await?;
    let rows = value.as_array().ok_or_else(|| format!("the row script returned no list: {value}"))?;
    Ok(rows
        .iter()
        .map(|row| Row {
            id: row["id"].as_str().map(str::to_owned),
            role: row["role"].as_str().map(str::to_owned),
            text: row["text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

fn row(rows: &[Row], id: u64) -> Option<&Row> {
    rows.iter().find(|row| row.id.as_deref() == Some(id.to_string().as_str()))
}

/// `Ok` when the page shows exactly the nodes `ids`, one `leader` among the
/// rows of `live`, that leader being `leader`, every live row reachable and
/// every other row unreachable (role and text).
fn check(rows: &[Row], ids: &[u64], live: &[u64], leader: u64) -> Result<(), String> {
    let mut shown: Vec<&str> = rows.iter().map(|row| row.id.as_deref().unwrap_or("(no data-node-id)")).collect();
    shown.sort_unstable();
    let mut expected: Vec<String> = ids.iter().map(u64::to_string).collect();
    expected.sort_unstable();
    if shown != expected {
        return Err(format!("rows for nodes {shown:?}, expected {expected:?}"));
    }
    let leaders: Vec<&str> =
        rows.iter().filter(|row| row.role.as_deref() == Some("leader")).filter_map(|row| row.id.as_deref()).collect();
    if leaders != [leader.to_string().as_str()] {
        return Err(format!("leader rows {leaders:?}, expected exactly node{leader}"));
    }
    for &id in ids {
        let row = row(rows, id).expect("every id has a row: checked above");
        let role = row.role.as_deref().unwrap_or("(no data-role)");
        let unreachable = role == "unreachable";
        if live.contains(&id) && unreachable {
            return Err(format!("node{id} is live but shown unreachable"));
        }
        if !live.contains(&id) {
            if !unreachable {
                return Err(format!("node{id} is dead but its role is {role:?}, not \"unreachable\""));
            }
            // innerText follows CSS text-transform, so ignore case.
            if !row.text.to_lowercase().contains("unreachable") {
                return Err(format!("node{id}'s row does not say unreachable: {:?}", row.text));
            }
        }
    }
    Ok(())
}

/// Polls the page until `check` holds; panics after `PAGE_TIMEOUT` with the
/// rows shown, the reason, and the `#nodes` part of the page source, after
/// saving a screenshot of the failure.
async fn wait_for_page(session: &Session<'_>, what: &str, check: impl Fn(&[Row]) -> Result<(), String>) -> Vec<Row> {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let (rows, reason) = match read_rows(session).await {
            Ok(rows) => match check(&rows) {
                Ok(()) => return rows,
                Err(reason) => (rows, reason),
            },
            Err(error) => (Vec::new(), format!("reading the rows failed: {error}")),
        };
        if Instant::now() >= deadline {
            let mut report = String::new();
            for row in &rows {
                let _ = writeln!(report, "  id {:?} role {:?} text {:?}", row.id, row.role, row.text);
            }
            if rows.is_empty() {
                report.push_str("  (no #nodes tr.node rows)\n");
            }
            let screenshot = save_screenshot(session, "admin-ui-failed.png").await;
            let source = match session.page_source().await {
                Ok(source) => source_excerpt(&source),
                Err(error) => format!("(no page source: {error})"),
            };
            let url = session.url().await.unwrap_or_else(|error| format!("(no url: {error})"));
            panic!(
                "the page at {url} did not show {what} within {PAGE_TIMEOUT:?}: {reason}\n\
                 rows:\n{report}screenshot: {screenshot}\npage source:\n{source}"
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The page source from the nodes table on (or from the start if there is
/// none), cut to a readable size.
fn source_excerpt(source: &str) -> String {
    let from = source.find("id=\"nodes\"").map_or(0, |at| source[..at].rfind('<').unwrap_or(at));
    http::excerpt(&source[from..], 4000)
}

/// Where screenshots go: the workspace's target dir.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node/ is in the workspace").join("target"),
    }
}

/// Saves a screenshot as `name` in the target dir; returns its path, or
/// why it could not (a screenshot is evidence, not what the test checks).
async fn save_screenshot(session: &Session<'_>, name: &str) -> String {
    let path = target_dir().join(name);
    let saved = session.screenshot_png().await.and_then(|png| {
        std::fs::create_dir_all(target_dir()).map_err(|e| format!("create {}: {e}", target_dir().display()))?;
        std::fs::write(&path, png).map_err(|e| format!("write {}: {e}", path.display()))
    });
    match saved {
        Ok(()) => path.display().to_string(),
        Err(error) => format!("(no screenshot: {error})"),
    }
}

/// `GET path` from an admin server, asking again while nothing listens:
/// the harness waits for the gRPC port only, and the admin one may open a
/// moment later.
async fn serving(admin: &str, path: &str) -> http::Response {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        match http::get(admin, path) {
            Ok(response) => return response,
            Err(error) if Instant::now() >= deadline => {
                panic!("the admin server at {admin} did not answer within {ADMIN_TIMEOUT:?}: {error}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_nodes_and_marks_a_killed_one_unreachable() {
    // Phase 1: a three-node cluster agrees on a leader, and node 1's admin
    // server serves the page and the cluster view it is drawn from.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let admin = cluster.admin(1);
    let page = serving(&admin, "/").await;
    assert_eq!(page.status, 200, "GET / from node1's admin server: {page:?}");
    let view = http::get(&admin, "/api/v1/cluster").unwrap_or_else(|error| panic!("node1's admin server: {error}"));
    assert_eq!(view.status, 200, "GET /api/v1/cluster from node1's admin server: {view:?}");
    assert!(view.json()["nodes"].is_array(), "GET /api/v1/cluster has no nodes list: {view:?}");

    // Phase 2: in a browser the page lists the three nodes, the agreed
    // leader as the one leader, none unreachable.
    let driver = Chromedriver::start();
    let session = Session::new(&driver).await.unwrap_or_else(|error| panic!("start a browser session: {error}"));
    let url = format!("http://{admin}/");
    session.goto(&url).await.unwrap_or_else(|error| panic!("open {url}: {error}"));
    let all = [1, 2, 3];
    let rows = wait_for_page(&session, &format!("three healthy nodes led by node{leader}"), |rows| {
        check(rows, &all, &all, leader)
    })
    .await;
    println!("healthy page: {rows:?}");
    println!("screenshot of the healthy page: {}", save_screenshot(&session, "admin-ui-healthy.png").await);

    // Phase 3: node 3 is killed; the page marks it unreachable, keeps the
    // other two, and shows the leader they agree on (another one if node 3
    // led).
    cluster.kill(KILLED);
    let leader = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(leader, KILLED, "a killed node cannot be the agreed leader");
    let live: Vec<u64> = all.into_iter().filter(|&id| id != KILLED).collect();
    let rows = wait_for_page(&session, &format!("node{KILLED} unreachable and node{leader} leading"), |rows| {
        check(rows, &all, &live, leader)
    })
    .await;
    let killed = row(&rows, KILLED).expect("checked");
    println!("node{KILLED}'s row once killed: {:?}", killed.text);
    println!("screenshot with node{KILLED} killed: {}", save_screenshot(&session, "admin-ui.png").await);

    // The page's own view agrees with the API it reads.
    let view = http::get(&admin, "/api/v1/cluster").unwrap_or_else(|error| panic!("node1's admin server: {error}"));
    let nodes = view.json()["nodes"].clone();
    let dead = nodes.as_array().and_then(|nodes| nodes.iter().find(|node| node["node_id"] == KILLED));
    assert_eq!(
        dead.map(|node| node["reachable"].clone()),
        Some(Value::Bool(false)),
        "node{KILLED} in /api/v1/cluster: {nodes}"
    );
}
