//! A minimal W3C WebDriver client for browser tests: it starts Debian's
//! `chromedriver` and drives a headless `chromium` through it, over the
//! blocking client in `http.rs` (chromedriver speaks plain HTTP with JSON
//! bodies). Just the commands the tests use; see
//! <https://www.w3.org/TR/webdriver2/> for the rest.
//!
//! A missing `chromedriver` or `chromium` panics with the packages to install:
//! a browser test never skips itself silently. `.ci/run` installs them.
//!
//! chromedriver runs in its own process group, with the browsers it starts;
//! dropping the `Chromedriver` SIGKILLs that whole group, so no browser
//! outlives a test, a failed one included. Dropping a `Session` first ends
//! it politely (`DELETE /session/{id}`), and a `Session` borrows its
//! `Chromedriver`, so it is dropped first.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
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
/// The key under which W3C WebDriver wraps an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
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
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) touches no memory. The child is not reaped yet,
            // so its pid, which is also its group's id, is still ours.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A WebDriver element reference, valid while its element is in the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementId(pub String);

/// One browser session (one headless chromium); ended on drop.
pub struct Session<'d> {
    driver: &'d Chromedriver,
    id: String,
}

impl<'d> Session<'d> {
    /// Starts a headless chromium with a 1400×1000 window.
    pub fn new(driver: &'d Chromedriver) -> Result<Session<'d>, String> {
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": driver.chromium.display().to_string(),
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
                    },
                },
            },
        });
        let value = command(&driver.addr, "POST", "/session", Some(&capabilities), NEW_SESSION_TIMEOUT)?;
        let id = value["sessionId"].as_str().ok_or_else(|| format!("new session: no sessionId in {value}"))?;
        Ok(Session { driver, id: id.to_owned() })
    }

    /// Navigates to `url` and waits for its load event.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.post("/url", &json!({ "url": url })).map(drop)
    }

    /// The current page's URL.
    pub fn url(&self) -> Result<String, String> {
        string(self.get("/url")?, "url")
    }

    /// Every element matching the CSS selector, in document order (none is
    /// not an error).
    pub fn find_all(&self, css: &str) -> Result<Vec<ElementId>, String> {
        let value = self.post("/elements", &json!({ "using": "css selector", "value": css }))?;
        let elements = value.as_array().ok_or_else(|| format!("find {css:?}: not a list: {value}"))?;
        elements
            .iter()
            .map(|element| match element[ELEMENT_KEY].as_str() {
                Some(id) => Ok(ElementId(id.to_owned())),
                None => Err(format!("find {css:?}: not an element reference: {element}")),
            })
            .collect()
    }

    /// The element's attribute `name`, `None` if it has none.
    pub fn attribute(&self, element: &ElementId, name: &str) -> Result<Option<String>, String> {
        match self.get(&format!("/element/{}/attribute/{name}", element.0))? {
            Value::Null => Ok(None),
            Value::String(value) => Ok(Some(value)),
            other => Err(format!("attribute {name:?}: not a string: {other}")),
        }
    }

    /// The element's rendered text, as a user sees it.
    pub fn text(&self, element: &ElementId) -> Result<String, String> {
        string(self.get(&format!("/element/{}/text", element.0))?, "text")
    }

    /// Runs `script` as the body of a function called with `args` and returns
    /// what it returns (a JSON value; elements come back as references).
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.post("/execute/sync", &json!({ "script": script, "args": args }))
    }

    /// A PNG of the viewport.
    pub fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        let encoded = string(self.get("/screenshot")?, "screenshot")?;
        base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("screenshot: bad base64: {e}"))
    }

    /// The current DOM serialized as HTML (after scripts changed it).
    pub fn page_source(&self) -> Result<String, String> {
        string(self.get("/source")?, "source")
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        command(&self.driver.addr, "GET", &format!("/session/{}{path}", self.id), None, COMMAND_TIMEOUT)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        command(&self.driver.addr, "POST", &format!("/session/{}{path}", self.id), Some(body), COMMAND_TIMEOUT)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Quits the browser. A failure leaves it to the Chromedriver's drop,
        // which kills the browser with it.
        let path = format!("/session/{}", self.id);
        let _ = command(&self.driver.addr, "DELETE", &path, None, Duration::from_secs(10));
    }
}

/// One WebDriver command: its `value` on success, else WebDriver's error
/// and message.
fn command(addr: &str, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, String> {
    let body = body.map(Value::to_string);
    let headers: &[(&str, &str)] =
        if body.is_some() { &[("Content-Type", "application/json; charset=utf-8")] } else { &[] };
    let response =
        http::request_with_timeout(addr, method, path, headers, body.as_deref().map(str::as_bytes), timeout)?;
    let mut answer = response.try_json().map_err(|e| format!("{method} {path}: {e}"))?;
    let value = answer["value"].take();
    if response.status != 200 {
        let error = value["error"].as_str().unwrap_or("(no error code)");
        let message = value["message"].as_str().unwrap_or("(no message)");
        return Err(format!("{method} {path}: HTTP {}: {error}: {message}", response.status));
    }
    Ok(value)
}

fn string(value: Value, what: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("{what}: not a string: {}", http::excerpt(&other.to_string(), 500))),
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
