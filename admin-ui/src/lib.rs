//! The admin web page: plain HTML, CSS and JS (no build step, no npm),
//! embedded in the `keel` binary and served by the node's admin HTTP server.
//!
//! The page reads one node's `/api/v1/cluster` and `/api/v1/topics` every
//! second, so one address shows the whole cluster.

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the page; `index.html` is served at `/`.
pub const ASSETS: &[Asset] = &[
    Asset { path: "index.html", content_type: "text/html; charset=utf-8", body: include_str!("../static/index.html") },
    Asset { path: "style.css", content_type: "text/css; charset=utf-8", body: include_str!("../static/style.css") },
    Asset { path: "app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../static/app.js") },
];

/// The asset at `path` (without the leading `/`; the empty path is `index.html`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path.is_empty() { "index.html" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_served_at_the_root_and_links_only_embedded_files() {
        let index = asset("").expect("index");
        assert_eq!(index.path, "index.html");
        for linked in ["style.css", "app.js"] {
            assert!(index.body.contains(linked), "index.html does not load {linked}");
            assert!(asset(linked).is_some(), "{linked} is not embedded");
        }
        assert!(asset("missing.js").is_none());
    }
}
