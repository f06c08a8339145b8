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
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/azurite");
        assert!(bin.exists(), "Azurite is not installed: run `bash scripts/test.sh` (it runs `npm ci`)");
        let dir = tempfile::tempdir().unwrap();
        let (blob_port, queue_port, table_port) = (super::free_port(), super::free_port(), super::free_port());
        let child = Command::new(bin)
            .args(["--inMemoryPersistence", "--silent", "--skipApiVersionCheck", "--disableProductStyleUrl"])
            .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
            .args(["--queueHost", "127.0.0.1", "--queuePort", &queue_port.to_string()])
            .args(["--tableHost", "127.0.0.1", "--tablePort", &table_port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let azurite = Azurite { child, blob_port, queue_port, table_port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in [blob_port, queue_port, table_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "Azurite did not listen within 60 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        azurite
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

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
