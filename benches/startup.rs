//! Start-up and idle-memory benchmark for `tcbridge serve` as the Functions host runs it.
//!
//! For each run: start the release binary with `FUNCTIONS_CUSTOMHANDLER_PORT`, poll `GET /`
//! the way the host does (a fresh connection each try, here every 1 ms rather than the host's
//! 25 ms, to measure finer), and record the time from spawn to the first HTTP answer. Then,
//! on one instance left idle for two seconds after serving a status invocation, read VmRSS
//! and VmHWM from /proc. Run with `cargo bench --bench startup`; numbers go in the README.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 30;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(port: u16, store: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tcbridge"))
        .arg("serve")
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("LOCAL_STORE_PATH", store)
        .env("RUST_LOG", "warn")
        .current_dir(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tcbridge")
}

fn get_root(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.starts_with("HTTP/1.1").then_some(reply)
}

fn post(port: u16, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn time_to_ready(store: &std::path::Path) -> (Duration, Child, u16) {
    let port = free_port();
    let started = Instant::now();
    let mut child = spawn(port, store);
    loop {
        if get_root(port).is_some() {
            return (started.elapsed(), child, port);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tcbridge exited with {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not ready within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // Warm the file system cache and create the store once, as a deployed instance finds it.
    let (_, mut first, _) = time_to_ready(dir.path());
    first.kill().unwrap();
    first.wait().unwrap();

    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let (elapsed, mut child, _) = time_to_ready(dir.path());
        samples.push(elapsed);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start to first readiness answer over {RUNS} runs: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 9 / 10]),
        ms(samples[0]),
        ms(samples[RUNS - 1])
    );

    let (_, mut child, port) = time_to_ready(dir.path());
    let envelope = r#"{"Data":{"req":{"Url":"http://localhost/api/status","Method":"GET","Query":{},"Headers":{},"Params":{},"Identities":[]}},"Metadata":{}}"#;
    let reply = post(port, "/status", envelope);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.id();
    println!(
        "idle RSS after one status invocation: {:.1} MiB (peak {:.1} MiB)",
        proc_kib(pid, "VmRSS:") as f64 / 1024.0,
        proc_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
