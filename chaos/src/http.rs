//! GET of the nodes' admin API (status and digests), through ureq: the
//! same small blocking client as `keel health`.

use std::time::Duration;

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from `addr` (`host:port`): the JSON body of a 200 answer.
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false).build(),
    );
    let mut response =
        agent.get(&format!("http://{addr}{path}")).call().with_context(|| format!("GET {path} from {addr}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().with_context(|| format!("read GET {path} from {addr}"))?;
    if status != 200 {
        bail!("GET {path} from {addr}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path} from {addr}: not JSON: {body}"))
}
