//! The demo's TrueContext: seeded submissions on three forms, then new ones and edits arriving
//! on their own, each pushed to the bridge as an HTTP Data Destination would push it, except
//! those of a form whose destination is broken on purpose.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};

use super::records::{edit, insert_records};
use super::{SimRecord, TrueContextSim};

/// The forms the demo's submissions use.
pub const DEMO_FORMS: [&str; 3] = ["1001", "1002", "1003"];

/// An HTTP Data Destination: each new or edited submission's document is POSTed here with
/// Basic credentials, except those of `drop_form` (a destination that is broken for one form).
#[derive(Clone)]
pub struct PushTarget {
    pub url: String,
    pub username: String,
    pub password: String,
    pub drop_form: Option<String>,
}

/// Without the password.
impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget").field("url", &self.url).field("drop_form", &self.drop_form).finish()
    }
}

impl TrueContextSim {
    /// The demo: `seeded` submissions over the last three days on three forms, then a new one
    /// every `every` and an edit of an earlier one every fourth time, each pushed to the
    /// [`PushTarget`] once one is set ([`TrueContextSim::push_to`]).
    pub fn start_demo(seeded: usize, every: Duration) -> TrueContextSim {
        let mut sim = Self::start();
        let now = Utc::now();
        for (i, form) in DEMO_FORMS.iter().enumerate() {
            let count = seeded / DEMO_FORMS.len() + usize::from(i < seeded % DEMO_FORMS.len());
            let spacing = TimeDelta::minutes(3 * 24 * 60 / count.max(1) as i64);
            sim.add_spaced(count, form, now - TimeDelta::minutes(i as i64 + 5), spacing);
        }
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, shared) = (stopped.clone(), sim.shared.clone());
        let thread = std::thread::spawn(move || {
            let pusher = Pusher::new();
            let ticks_per_arrival = (every.as_millis() / 200).max(1) as usize;
            let mut tick = 0usize;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                tick += 1;
                if !tick.is_multiple_of(ticks_per_arrival) {
                    continue;
                }
                let mut world = shared.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let arrivals = tick / ticks_per_arrival;
                let mut changed = Vec::new();
                if arrivals.is_multiple_of(4) {
                    let ids: Vec<String> = world.records.keys().cloned().collect();
                    if let Some(id) = ids.get(arrivals * 7919 % ids.len().max(1)) {
                        edit(&mut world, id);
                        changed.push(id.clone());
                    }
                } else if let Some(form) = DEMO_FORMS.get(arrivals % DEMO_FORMS.len()) {
                    changed = insert_records(&mut world, 1, form, Utc::now(), TimeDelta::minutes(1), "");
                }
                let pushes: Vec<(PushTarget, SimRecord)> = match &world.push_target {
                    Some(target) => changed
                        .iter()
                        .filter_map(|id| world.records.get(id))
                        .filter(|r| target.drop_form.as_deref() != Some(r.form_id.as_str()))
                        .map(|r| (target.clone(), r.clone()))
                        .collect(),
                    None => Vec::new(),
                };
                drop(world);
                for (target, record) in pushes {
                    pusher.push(&target, &record.document);
                }
            }
        });
        sim.activity = Some((stopped, thread));
        sim
    }
}

/// Posts documents from the demo's activity thread (its own small runtime and client).
struct Pusher {
    runtime: Option<tokio::runtime::Runtime>,
    http: Option<reqwest::Client>,
}

impl Pusher {
    fn new() -> Pusher {
        crate::tls::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok();
        Pusher { runtime, http }
    }

    /// One delivery; a failure is not retried (the demo's sync catches the submission up).
    fn push(&self, target: &PushTarget, document: &[u8]) {
        let (Some(runtime), Some(http)) = (&self.runtime, &self.http) else { return };
        let request = http
            .post(&target.url)
            .basic_auth(&target.username, Some(&target.password))
            .header("content-type", "application/json")
            .body(document.to_vec());
        // `send` starts its timeout as it is called: inside the runtime, not before it.
        let _ = runtime.block_on(async move { request.send().await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pusher_posts_from_a_plain_thread() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/webhook", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            stream.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let target = PushTarget { url, username: "demo".into(), password: "pw".into(), drop_form: None };
        std::thread::spawn(move || Pusher::new().push(&target, b"{}")).join().unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /api/webhook") && request.contains("authorization: Basic"), "{request}");
    }
}
