//! Azurite (the Azure Storage emulator, from the committed npm lockfile) on free loopback
//! ports, in memory, stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account key (public, documented by Microsoft).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub blob_port: u16,
    pub queue_port: u16,
    pub table_port: u16,
    /// Keeps its data in `_dir` (so a stop and a restart lose nothing) instead of in memory.
    on_disk: bool,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite; a start that fails (a port taken between our probe and its bind, or a
    /// crash) is retried on other ports, and the last failure says what Azurite printed.
    pub fn start() -> Azurite {
        Self::start_with(false)
    }

    /// Azurite keeping its data on disk, for tests that stop and restart it.
    pub fn start_on_disk() -> Azurite {
        Self::start_with(true)
    }

    fn start_with(on_disk: bool) -> Azurite {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(on_disk) {
                Ok(azurite) => return azurite,
                Err(why) => failures.push(why),
            }
        }
        panic!("Azurite did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(on_disk: bool) -> Result<Azurite, String> {
        let dir = tempfile::tempdir().unwrap();
        let [blob_port, queue_port, table_port] = distinct_free_ports();
        let child = spawn(dir.path(), [blob_port, queue_port, table_port], on_disk);
        let mut azurite = Azurite { child, blob_port, queue_port, table_port, on_disk, _dir: dir };
        azurite.wait_listening()?;
        Ok(azurite)
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let log_path = self._dir.path().join("azurite.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in [self.blob_port, self.queue_port, self.table_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                let printed = || std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Some(status) = self.child.try_wait().unwrap() {
                    return Err(format!("Azurite exited with {status}:\n{}", printed()));
                }
                if Instant::now() >= deadline {
                    return Err(format!("Azurite did not listen on {port} within 60 s:\n{}", printed()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Stops Azurite as a service outage (every storage call fails until [`Azurite::restart`]).
    /// SIGTERM, so it saves its data first: Azure Storage never loses an acknowledged write,
    /// and Azurite killed outright loses its last few seconds (its database is saved every few
    /// seconds), which would test Azurite rather than us.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports; on disk, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let ports = [self.blob_port, self.queue_port, self.table_port];
        let mut last = String::new();
        for _ in 0..20 {
            self.child = spawn(self._dir.path(), ports, self.on_disk);
            match self.wait_listening() {
                Ok(()) => return,
                // The old sockets may still be closing: try again shortly.
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("Azurite did not restart: {last}");
    }

    /// A connection string with explicit loopback endpoints, as `AzureWebJobsStorage`.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};\
             BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{}/devstoreaccount1;\
             TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            self.blob_port, self.queue_port, self.table_port
        )
    }
}

fn spawn(dir: &std::path::Path, [blob_port, queue_port, table_port]: [u16; 3], on_disk: bool) -> Child {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/azurite");
    assert!(bin.exists(), "Azurite is not installed: run `bash scripts/test.sh` (it runs `npm ci`)");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("azurite.log")).unwrap();
    let mut command = Command::new(bin);
    if on_disk {
        command.args(["--location", &dir.join("data").display().to_string()]);
    } else {
        command.arg("--inMemoryPersistence");
    }
    command
        .args(["--silent", "--skipApiVersionCheck", "--disableProductStyleUrl"])
        .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
        .args(["--queueHost", "127.0.0.1", "--queuePort", &queue_port.to_string()])
        .args(["--tableHost", "127.0.0.1", "--tablePort", &table_port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start azurite")
}

/// Three different free loopback ports ([`super::free_port`] never gives one twice).
fn distinct_free_ports() -> [u16; 3] {
    [super::free_port(), super::free_port(), super::free_port()]
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
