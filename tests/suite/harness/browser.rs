//! Debian's Chromium driven by playwright-core (tests/peers/browser.mjs): open a URL, click through
//! the test provider's login and consent pages, stop on a final URL, report what the browser saw.
//! Blocking: call it from `tokio::task::spawn_blocking` when the servers run on the test's runtime.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// Chromium resolves every `*.localhost` name to loopback and treats it as a secure context, so an
/// app at `http://app.localhost:<port>` is another site than a provider at `http://127.0.0.1:<port>`.
pub const LOCALHOST_RULES: &str = "MAP *.localhost 127.0.0.1";

#[derive(Debug, Clone, Deserialize)]
pub struct BrowserResult {
    /// The page's URL when it matched the final pattern.
    pub url: String,
    /// The HTTP status of the last main-frame navigation.
    pub status: Option<u16>,
    /// `document.body.innerText` of the final page.
    pub text: String,
    /// Every cookie the browser holds, for every site.
    pub cookies: Vec<BrowserCookie>,
    /// Main-frame navigations in order (redirects included).
    pub navigations: Vec<Navigation>,
    pub elapsed_ms: u64,
    /// What the page logged (CSP violations show here).
    #[serde(default)]
    pub console: Vec<String>,
    /// Style sheets the page applied (a blocked one does not count).
    #[serde(default)]
    pub stylesheets: u32,
    /// Every `<meter>` as rendered: value and max.
    #[serde(default)]
    pub meters: Vec<Meter>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Meter {
    pub value: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Navigation {
    pub method: String,
    pub url: String,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct BrowserRun {
    pub start_url: String,
    /// A JavaScript regular expression for the URL to stop at.
    pub final_url_pattern: String,
    pub host_resolver_rules: Option<String>,
    pub timeout: Duration,
    /// Where to save a PNG of the final page.
    pub screenshot: Option<std::path::PathBuf>,
    /// Extra request headers for every request.
    pub headers: Vec<(String, String)>,
}

impl BrowserRun {
    pub fn new(start_url: &str, final_url_pattern: &str) -> BrowserRun {
        BrowserRun {
            start_url: start_url.to_string(),
            final_url_pattern: final_url_pattern.to_string(),
            host_resolver_rules: Some(LOCALHOST_RULES.to_string()),
            timeout: Duration::from_secs(60),
            screenshot: None,
            headers: Vec::new(),
        }
    }

    /// Runs the browser; `Err` holds the script's output when it timed out or failed.
    pub fn run(&self) -> Result<BrowserResult, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join("node_modules/playwright-core/package.json").exists(),
            "playwright-core is not installed: run `bash scripts/test.sh` (it runs `npm ci`)"
        );
        assert!(
            Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: run `bash scripts/test.sh` (it installs Debian's chromium)"
        );
        let input = json!({
            "start_url": self.start_url,
            "final_url_pattern": self.final_url_pattern,
            "host_resolver_rules": self.host_resolver_rules,
            "timeout_ms": self.timeout.as_millis() as u64,
            "screenshot": self.screenshot,
            "headers": self.headers.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
        });
        let output = Command::new("node")
            .arg(root.join("tests/peers/browser.mjs"))
            .arg(input.to_string())
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .expect("start node (tests/peers/browser.mjs)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("browser.mjs exited with {}:\n{stdout}\n{stderr}", output.status));
        }
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("browser.mjs printed no result ({e}):\n{stdout}\n{stderr}"))
    }
}

/// Opens `start_url` in Chromium (`*.localhost` mapped to 127.0.0.1), clicks through the provider's
/// pages and returns once the URL matches `final_url_pattern`; panics on timeout.
pub fn run_browser(start_url: &str, final_url_pattern: &str) -> BrowserResult {
    BrowserRun::new(start_url, final_url_pattern).run().unwrap_or_else(|e| panic!("{e}"))
}
