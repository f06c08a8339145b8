//! Boots the real `tcbridge` binary per test, on a free loopback port, with its own store in a
//! temporary directory and only the settings the test gives (the runner's environment and
//! the repository's local.settings.json never leak in). The process is killed on drop.
#![allow(dead_code)]

pub mod azurite;
pub mod browser;
pub mod connected;
pub mod hook;
pub mod host;
pub mod identity;
pub mod issuer;
pub mod keyvault;
pub mod oidc;
pub mod tripwire;
pub mod truecontext;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TEST_FUNCTION_KEY: &str = "test-function-key-0123456789abcdef";

pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

/// A loopback port for a server the test starts. Not `bind(0)`: that draws from the kernel's
/// ephemeral range (32768–60999 here), where a parallel test's outgoing connection can take the
/// port before the server binds it (CI saw "Address already in use"). These come from below
/// that range, each handed out once per test process (from a start drawn from the pid, so two
/// suites at once rarely meet), and are probed before they are given.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % COUNT));
    for _ in 0..COUNT {
        let port = (FIRST + next.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tcbridge")
}

/// A command for the binary with a clean environment, run inside `dir`.
/// A TrueContext base URL nothing listens on (the discard port), for tests that sync nothing.
pub const UNREACHABLE_TRUECONTEXT: &str = "http://127.0.0.1:9/api/1.1";

pub fn command(dir: &Path, settings: &[(&str, &str)]) -> Command {
    command_for(Path::new(binary()), dir, settings)
}

/// [`command`] for another build of the binary (the packaged one).
pub fn command_for(program: &Path, dir: &Path, settings: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("LOCAL_STORE_PATH", dir.join("store"))
        // Never the real API: a closed loopback port unless a test points it at a simulator.
        .env("TRUECONTEXT_BASE_URL", UNREACHABLE_TRUECONTEXT)
        .current_dir(dir);
    for (k, v) in settings {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    /// `tcbridge serve` as the Functions host starts it.
    pub fn host(settings: &[(&str, &str)]) -> Server {
        let port = free_port();
        let port_text = port.to_string();
        let mut all = vec![("FUNCTIONS_CUSTOMHANDLER_PORT", port_text.as_str())];
        all.extend_from_slice(settings);
        Self::start(&["serve"], port, &all)
    }

    /// `tcbridge serve --standalone` with a known function key.
    pub fn standalone(settings: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut all = vec![("FUNCTION_KEY", TEST_FUNCTION_KEY)];
        all.extend_from_slice(settings);
        Self::start(&["serve", "--standalone", "--port", &port.to_string()], port, &all)
    }

    pub fn start(args: &[&str], port: u16, settings: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args, port, settings)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str], port: u16, settings: &[(&str, &str)]) -> Server {
        Self::start_program(Path::new(binary()), dir, args, port, settings)
    }

    /// `program` (a build of tcbridge) started in `dir`, as [`Server::start_in`] does.
    pub fn start_program(
        program: &Path,
        dir: tempfile::TempDir,
        args: &[&str],
        port: u16,
        settings: &[(&str, &str)],
    ) -> Server {
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = command_for(program, dir.path(), settings)
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tcbridge");
        let mut server = Server { child, port, dir, log_path };
        server.wait_ready(args.contains(&"--standalone"));
        server
    }

    /// Ready means the port accepts connections and, standalone, the start-up line (printed
    /// after the function key and after the bind) is in the log.
    fn wait_ready(&mut self, standalone: bool) {
        let (port, path) = (self.port, self.log_path.clone());
        self.wait_until("tcbridge to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && (!standalone
                    || std::fs::read_to_string(&path).unwrap_or_default().contains("truecontext-bridge listening on"))
        });
    }

    /// Waits (60 s at most, polling) until `done` holds; a process that exits meanwhile fails
    /// at once, with its log.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tcbridge exited with {status} while waiting for {what}:\n{}", self.log());
            }
            if done() {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle` and returns the log.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let path = self.log_path.clone();
        self.wait_until(&format!("{needle:?} in the log"), || {
            std::fs::read_to_string(&path).unwrap_or_default().contains(needle)
        });
        self.log()
    }

    /// The server process's id (its memory is read from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// `GET /api/status` of a standalone server with the test key: its HTTP status and report.
    pub async fn status(&self) -> (u16, serde_json::Value) {
        let response =
            client().get(self.url("/api/status")).header("x-functions-key", TEST_FUNCTION_KEY).send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `kill -9`: no clean-up of any kind. Returns the directory (store and log) for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let saved = self.dir.path().join(format!("server-{}.log", self.child.id()));
        let _ = std::fs::copy(&self.log_path, saved);
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// `kill -9`, then the same program started again in the same directory (store, log) on
    /// the same port, as a platform restarts a crashed instance.
    pub fn kill_and_restart(&mut self, args: &[&str], settings: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let saved = self.dir.path().join(format!("server-{}.log", self.child.id()));
        let _ = std::fs::copy(&self.log_path, saved);
        let log = std::fs::File::create(&self.log_path).unwrap();
        let mut last = String::new();
        for _ in 0..40 {
            match command(self.dir.path(), settings)
                .args(args)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log.try_clone().unwrap()))
                .spawn()
            {
                Ok(child) => {
                    self.child = child;
                    self.wait_ready(args.contains(&"--standalone"));
                    return;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tcbridge did not restart: {last}");
    }

    /// Every log this directory holds: the running process's and each killed one's.
    pub fn all_logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("server") && name.ends_with(".log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    /// True while the process is running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for talking to servers under test: no redirects, bounded time.
pub fn client() -> reqwest::Client {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    plain_client(builder.timeout(Duration::from_secs(30)))
}

/// Builds `builder` once the process has its TLS provider (reqwest is built without a default
/// one; see src/tls.rs). Every client a test makes goes through here.
pub fn plain_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    truecontext_bridge::tls::install_crypto_provider();
    builder.build().unwrap()
}
