//! Browser tests' WebDriver: starts Debian's `chromedriver` on a free port
//! and drives a headless `chromium` through it with the `fantoccini` crate,
//! a maintained W3C WebDriver client, instead of commands of our own.
//! fantoccini runs without TLS (chromedriver speaks plain HTTP on
//! localhost), over hyper-util's plain connector.
//!
//! A missing `chromedriver` or `chromium` panics with the packages to install:
//! a browser test never skips itself silently. `.ci/run` installs them.
//!
//! chromedriver runs in its own process group, with the browsers it starts;
//! dropping the `Chromedriver` SIGKILLs that whole group, so no browser
//! outlives a test, a failed one included. A `Session` borrows its
//! `Chromedriver`, so it is dropped first.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use super::http;

/// How long chromedriver gets to answer `GET /status` with `ready: true`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bounds `Session::new`, which starts the browser.
const NEW_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds every other command; `goto` waits for the page's load event.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// A few tries, in case another process takes the free port we picked
/// before chromedriver binds it.
const START_ATTEMPTS: usize = 3;
const INSTALL_HINT: &str = "the browser tests need Debian's chromium and chromedriver: \
                            apt-get install chromium chromium-driver (.ci/run installs them)";

/// A running chromedriver on a free localhost port; killed, with its
/// browsers, on drop.
pub struct Chromedriver {
    child: Child,
    addr: String,
    chromium: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it says it is ready. Panics if
    /// chromedriver or chromium is not installed, or if chromedriver does
    /// not come up (with its output).
    pub fn start() -> Chromedriver {
        let chromedriver =
            find_in_path("chromedriver").unwrap_or_else(|| panic!("chromedriver is not on PATH: {INSTALL_HINT}"));
        let chromium = find_in_path("chromium").unwrap_or_else(|| panic!("chromium is not on PATH: {INSTALL_HINT}"));
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Chromedriver::try_start(&chromedriver, &chromium) {
                Ok(driver) => return driver,
                Err(error) => failures.push(error),
            }
        }
        panic!("chromedriver ({}) did not start:\n{}", chromedriver.display(), failures.join("\n"));
    }

    fn try_start(chromedriver: &Path, chromium: &Path) -> Result<Chromedriver, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("find a free port: {e}"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        // Its output goes to an unnamed file, shown only if it fails to start.
        let mut output = tempfile::tempfile().map_err(|e| format!("create a file for chromedriver's output: {e}"))?;
        let stderr = output.try_clone().map_err(|e| format!("clone a file handle: {e}"))?;
        let stdout = output.try_clone().map_err(|e| format!("clone a file handle: {e}"))?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own group, which the browsers it starts join, so Drop can
            // kill them all at once.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", chromedriver.display()))?;
        let mut driver = Chromedriver { child, addr, chromium: chromium.to_path_buf() };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                return Err(format!("chromedriver on port {port} exited with {status}: {}", read_all(&mut output)));
            }
            let last = match http::get(&driver.addr, "/status").and_then(|r| r.try_json()) {
                Ok(status) if status["value"]["ready"] == json!(true) => return Ok(driver),
                Ok(status) => format!("not ready: {status}"),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                // Drop kills it.
                return Err(format!(
                    "chromedriver on port {port} was not ready within {START_TIMEOUT:?} ({last}); its output: {}",
                    read_all(&mut output)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The child is not reaped yet, so its pid, which is also its
        // group's id, is still ours.
        if let Some(group) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One browser session (one headless chromium), a fantoccini client whose
/// every command is bounded by a timeout: fantoccini itself waits as long as
/// chromedriver takes. Dropping it lets fantoccini end the session
/// (`DELETE /session/{id}`) in the background; it borrows its `Chromedriver`,
/// whose drop kills whatever is left.
pub struct Session<'d> {
    client: Client,
    _driver: PhantomData<&'d Chromedriver>,
}

impl<'d> Session<'d> {
    /// Starts a headless chromium with a 1400×1000 window.
    pub async fn new(driver: &'d Chromedriver) -> Result<Session<'d>, String> {
        let options = json!({
            "binary": driver.chromium.display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
        });
        let capabilities = Capabilities::from_iter([
            ("browserName".to_owned(), json!("chrome")),
            ("goog:chromeOptions".to_owned(), options),
        ]);
        let url = format!("http://{}", driver.addr);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = bounded("new session", NEW_SESSION_TIMEOUT, builder.connect(&url)).await?;
        Ok(Session { client, _driver: PhantomData })
    }

    /// Navigates to `url` and waits for its load event.
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        bounded("goto", COMMAND_TIMEOUT, self.client.goto(url)).await
    }

    /// The current page's URL.
    pub async fn url(&self) -> Result<String, String> {
        bounded("url", COMMAND_TIMEOUT, self.client.current_url()).await.map(String::from)
    }

    /// Runs `script` as the body of a function called with `args` and returns
    /// what it returns (a JSON value; elements come back as references).
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        bounded("execute", COMMAND_TIMEOUT, self.client.execute(script, args)).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        bounded("screenshot", COMMAND_TIMEOUT, self.client.screenshot()).await
    }

    /// The current DOM serialized as HTML (after scripts changed it).
    pub async fn page_source(&self) -> Result<String, String> {
        bounded("source", COMMAND_TIMEOUT, self.client.source()).await
    }
}

/// `call`'s result, or an error naming `what` once `timeout` has passed.
async fn bounded<T, E: fmt::Display>(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from chromedriver within {timeout:?}")),
    }
}

/// `name`'s path in `PATH`, as `which` finds it.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

fn read_all(file: &mut File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    http::excerpt(&String::from_utf8_lossy(&bytes), 4000)
}
