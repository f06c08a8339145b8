//! The sync against the TrueContext simulator with 50 ms of latency per call, for 1,000 and
//! 10,000 new submissions: API calls ÷ the minimum (⌈N/100⌉ list pages + N documents), wall time
//! ÷ the bound 3 concurrent calls set (calls × latency ÷ 3), and the peak RSS of the
//! `tcbridge sync --once` process at 10,000 ÷ at 1,000 (the sync streams page by page; it must
//! not hold everything). Run with `cargo bench --bench sync_throughput` (a few minutes); the
//! numbers go in the README.
//!
//! The peak is the child's own high-water mark (`VmHWM`, read every 20 ms until it exits), not
//! `wait4`'s `ru_maxrss`: Rust spawns with vfork + exec, and Linux folds the *parent's* RSS at the
//! exec into the child's `ru_maxrss` (the bench process holds the simulator's 10,000 records),
//! which made the 10,000 run look 11 MiB larger than it ever was. Both are printed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use truecontext_bridge::simulator::{TrueContextSim, KEY_ID, KEY_SECRET};

const LATENCY: Duration = Duration::from_millis(50);

struct Run {
    submissions: usize,
    calls: usize,
    minimum: usize,
    wall: Duration,
    bound: Duration,
    /// The child's `VmHWM`.
    peak_rss_kib: i64,
    /// `wait4`'s `ru_maxrss`, which counts the parent's RSS at the exec (see above).
    ru_maxrss_kib: i64,
}

fn run(submissions: usize) -> Run {
    let sim = TrueContextSim::start();
    sim.latency(LATENCY);
    // Processed over the last days, one every few seconds.
    sim.add_spaced(submissions, "1001", Utc::now() - TimeDelta::hours(1), TimeDelta::seconds(10));
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Reaped by `wait_with_rusage` (wait4, for the child's own peak RSS), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_tcbridge"))
        .args(["sync", "--once", "--json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOCAL_STORE_PATH", dir.path().join("store"))
        .env("TRUECONTEXT_BASE_URL", sim.base_url())
        .env("TRUECONTEXT_AUTH", "basic")
        .env("TRUECONTEXT_API_KEY_ID", KEY_ID)
        .env("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET)
        .env("TRUECONTEXT_DAILY_CALL_BUDGET", "100000")
        .env("SYNC_BACKFILL_DAYS", "30")
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let sampler = std::thread::spawn(move || sample_rss(pid));
    let (status, ru_maxrss_kib) = wait_with_rusage(pid);
    let wall = started.elapsed();
    let (peak_rss_kib, at) = sampler.join().unwrap();
    eprintln!(
        "{submissions}: VmHWM last rose to {:.1} MiB, {:.1} s into a {:.1} s run; ru_maxrss {:.1} MiB",
        peak_rss_kib as f64 / 1024.0,
        at.as_secs_f64(),
        wall.as_secs_f64(),
        ru_maxrss_kib as f64 / 1024.0
    );
    assert!(status == 0, "the sync failed (wait status {status})");
    let calls = sim.calls().len();
    let minimum = submissions.div_ceil(100) + submissions;
    Run { submissions, calls, minimum, wall, bound: LATENCY * calls as u32 / 3, peak_rss_kib, ru_maxrss_kib }
}

/// The high-water RSS (VmHWM, KiB) every 20 ms while `pid` runs, and when it last rose.
fn sample_rss(pid: libc::pid_t) -> (i64, Duration) {
    let started = Instant::now();
    let mut peak = (0, Duration::ZERO);
    while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
        match rss {
            Some(rss) if rss > peak.0 => peak = (rss, started.elapsed()),
            Some(_) => {}
            None => break, // a zombie has no VmRSS line
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// Waits for `pid` and returns its wait status and peak resident set (KiB, as Linux reports).
fn wait_with_rusage(pid: libc::pid_t) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    (status, usage.ru_maxrss)
}

fn main() {
    truecontext_bridge::tls::install_crypto_provider();
    // BENCH_SIZES=1000,3000 for a quick look; the README's figures are the default.
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .map(|v| v.split(',').map(|n| n.trim().parse().expect("BENCH_SIZES: numbers")).collect())
        .unwrap_or_else(|_| vec![1_000, 10_000]);
    let runs: Vec<Run> = sizes.into_iter().map(run).collect();
    println!("| submissions | API calls | minimum | calls ÷ minimum | wall | bound (calls × 50 ms ÷ 3) | wall ÷ bound | peak RSS (VmHWM) | ru_maxrss |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.3} | {:.1} s | {:.1} s | {:.3} | {:.1} MiB | {:.1} MiB |",
            r.submissions,
            r.calls,
            r.minimum,
            r.calls as f64 / r.minimum as f64,
            r.wall.as_secs_f64(),
            r.bound.as_secs_f64(),
            r.wall.as_secs_f64() / r.bound.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            r.ru_maxrss_kib as f64 / 1024.0
        );
    }
    if let [first, .., last] = runs.as_slice() {
        let ratio = last.peak_rss_kib as f64 / first.peak_rss_kib as f64;
        println!("peak RSS at {} ÷ at {}: {ratio:.2}", last.submissions, first.submissions);
    }
}
