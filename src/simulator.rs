//! A TrueContext (ProntoForms) REST API simulator, built from docs/truecontext-api.md: `data.json`
//! with its filters, ascending processed-date order and 0-based paging (`s` at most 100),
//! `data/{id}`, `data/{id}/document.json`, `formspaces` and their `forms`; Basic and Bearer
//! authentication; TrueContext's 3-concurrent limit (429 past it) and a daily call count (402
//! `CallCountExpended` past it), with the `X-ProntoForms-*` error headers; injected faults
//! (status, `Retry-After`, latency, a hang, malformed JSON); unknown fields in every answer; a
//! call log (a request the client gave up on is logged with status 0) and the ground truth.
//!
//! Bearer tokens are accepted when registered ([`TrueContextSim::allow_bearer`]) or when an
//! OpenID Connect userinfo endpoint accepts them ([`TrueContextSim::validate_bearer_at`]): the
//! token's issuer then decides validity, expiry and revocation, as TrueContext's own token
//! check would.
//!
//! It runs on a thread of its own (its own runtime), so a test that blocks does not stop it; it
//! stops when dropped. `tcbridge serve --standalone --demo` runs it seeded, with new
//! submissions and edits arriving on their own ([`TrueContextSim::start_demo`]). It is compiled
//! only with the `demo` feature (on by default; the deploy package leaves it off).
// Its refusals are whole HTTP responses returned early; boxing them buys a test server nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

mod demo;
mod records;
pub use demo::{PushTarget, DEMO_FORMS};
use records::{document, edit, insert_records, new_record};

pub const KEY_ID: &str = "sim-key-id";
pub const KEY_SECRET: &str = "sim-key-secret-0123456789";

/// One request the simulator answered.
#[derive(Debug, Clone)]
pub struct Call {
    /// The team whose key made it (`""`: the default key, or a bearer token).
    pub team: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub status: u16,
}

/// A fault for the next request(s) that reach a route.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status (with `X-ProntoForms-ErrorCode`), and `Retry-After` seconds if given.
    Status { status: u16, code: &'static str, retry_after: Option<u64> },
    /// A 200 whose body is not JSON.
    Malformed,
    /// No answer for this long (longer than the client's timeout: a hang), then the real one.
    Delay(Duration),
}

#[derive(Debug, Clone)]
pub struct SimRecord {
    pub id: String,
    pub form_id: String,
    pub formspace_id: String,
    pub processed: DateTime<Utc>,
    pub state: String,
    /// The document exactly as served (bytes are what `document.json` answers).
    pub document: Vec<u8>,
    /// The team that owns it: only that team's key lists and reads it (`""`: the default key's
    /// and the bearer tokens' team).
    pub team: String,
}

#[derive(Default)]
struct World {
    records: BTreeMap<String, SimRecord>,
    calls: Vec<Call>,
    faults: VecDeque<Fault>,
    bearer_tokens: Vec<String>,
    /// A userinfo URL that decides bearer tokens not in `bearer_tokens`.
    userinfo: Option<String>,
    /// Calls counted today, per team (TrueContext counts per team).
    calls_today: BTreeMap<String, u64>,
    /// The daily count of every team.
    daily_limit: Option<u64>,
    /// The other teams' API keys: key id to secret (the key id names the team).
    team_keys: BTreeMap<String, String>,
    latency: Duration,
    /// After this many answered list calls, re-process (edit) this record: its processed date
    /// becomes now and its document changes.
    reprocess: Vec<(usize, String)>,
    /// After this many answered list calls, this many new submissions of this form arrive.
    arrivals: Vec<(usize, usize, String)>,
    /// After this many answered list calls, every request answers this status (an outage).
    outage_after: Option<(usize, u16)>,
    outage: Option<u16>,
    list_calls: usize,
    /// Listed, but their documents answer 404 (retention expired between list and fetch).
    gone_documents: std::collections::HashSet<String>,
    /// Ids are numbers counted from here, never reused (a removed record's id stays gone).
    next_id: u64,
    /// Where the demo's new and edited submissions are pushed, as an HTTP Data Destination.
    push_target: Option<PushTarget>,
}

struct Shared {
    world: Mutex<World>,
    /// Requests in flight, and the most ever, per team (TrueContext allows 3 at once per team).
    in_flight: Mutex<BTreeMap<String, (u32, u32)>>,
    http: reqwest::Client,
}

pub struct TrueContextSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The demo's activity (new submissions, edits), stopped with the simulator.
    activity: Option<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl TrueContextSim {
    pub fn start() -> TrueContextSim {
        let shared = Arc::new(Shared {
            world: Mutex::default(),
            in_flight: Mutex::default(),
            http: {
                crate::tls::install_crypto_provider();
                reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a static client builds")
            },
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TrueContextSim { shared, addr, stop: Some(stop), thread: Some(thread), activity: None }
    }

    /// Pushes the demo's new and edited submissions to `target` from now on.
    pub fn push_to(&self, target: PushTarget) {
        self.world().push_target = Some(target);
    }

    /// The API base, as `TRUECONTEXT_BASE_URL` names it.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/1.1", self.addr)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap()
    }

    /// Adds `count` submissions of form `form` processed one minute apart, ending at `last`.
    pub fn add_records(&self, count: usize, form: &str, last: DateTime<Utc>) -> Vec<String> {
        self.add_spaced(count, form, last, TimeDelta::minutes(1))
    }

    /// Adds `count` submissions of form `form` processed `spacing` apart, ending at `last`.
    pub fn add_spaced(&self, count: usize, form: &str, last: DateTime<Utc>, spacing: TimeDelta) -> Vec<String> {
        insert_records(&mut self.world(), count, form, last, spacing, "")
    }

    /// One submission with exactly this identifier, processed at `processed`: lets a test list
    /// an id TrueContext should never send (`12/34`, `..`, 65 digits).
    pub fn add_with_id(&self, id: &str, form: &str, processed: DateTime<Utc>) {
        self.world().records.insert(id.to_owned(), new_record(id, form, processed, ""));
    }

    /// One submission whose document is exactly `document` (any bytes: a hostile document, one
    /// that is not JSON), listed with this id, form and processed date.
    pub fn add_document(&self, id: &str, form: &str, processed: DateTime<Utc>, document: Vec<u8>) {
        let record = SimRecord { document, ..new_record(id, form, processed, "") };
        self.world().records.insert(id.to_owned(), record);
    }

    /// A Standard-format document as this simulator serves it (a template for planted ones).
    pub fn standard_document(id: &str, form: &str, processed: DateTime<Utc>) -> serde_json::Value {
        serde_json::from_str(&document(id, form, processed)).unwrap_or_default()
    }

    pub fn record(&self, id: &str) -> Option<SimRecord> {
        self.world().records.get(id).cloned()
    }

    /// `id` stays listed but its document answers 404 `ObjectNotFound`.
    pub fn expire_document(&self, id: &str) {
        self.world().gone_documents.insert(id.to_owned());
    }

    pub fn remove(&self, id: &str) {
        self.world().records.remove(id);
    }

    pub fn fault(&self, fault: Fault) {
        self.world().faults.push_back(fault);
    }

    /// How many injected faults no call has taken yet.
    pub fn pending_faults(&self) -> usize {
        self.world().faults.len()
    }

    /// Drops the faults not used up; answers how many there were.
    pub fn clear_faults(&self) -> usize {
        self.world().faults.drain(..).count()
    }

    pub fn allow_bearer(&self, token: &str) {
        self.world().bearer_tokens.push(token.to_owned());
    }

    /// Accepts any bearer token that this OpenID Connect userinfo endpoint accepts.
    pub fn validate_bearer_at(&self, userinfo_url: &str) {
        self.world().userinfo = Some(userinfo_url.to_owned());
    }

    /// How many calls it answered, by status.
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for call in &self.world().calls {
            *out.entry(call.status).or_default() += 1;
        }
        out
    }

    /// The ids of every record, as the ground truth.
    pub fn ids(&self) -> Vec<String> {
        self.world().records.keys().cloned().collect()
    }

    /// TrueContext's daily call count: calls past it get 402 `CallCountExpended`.
    pub fn daily_limit(&self, limit: u64) {
        self.world().daily_limit = Some(limit);
    }

    /// Re-processes `id` right after the `after`-th list call is answered (mid-walk edits).
    pub fn reprocess_after_list_calls(&self, after: usize, id: &str) {
        self.world().reprocess.push((after, id.to_owned()));
    }

    /// From right after the `after`-th list call on, every request answers `status` with
    /// `Retry-After: 0` (TrueContext down, asking to be tried again at once).
    pub fn outage_after_list_calls(&self, after: usize, status: u16) {
        self.world().outage_after = Some((after, status));
    }

    /// `count` new submissions of `form` arrive right after the `after`-th list call is answered.
    pub fn arrive_after_list_calls(&self, after: usize, count: usize, form: &str) {
        self.world().arrivals.push((after, count, form.to_owned()));
    }

    /// Edits `id` now: a new processed date and a changed answer.
    pub fn edit(&self, id: &str) {
        edit(&mut self.world(), id);
    }

    pub fn latency(&self, latency: Duration) {
        self.world().latency = latency;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// The most requests of the default team it ever had in flight at once.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight_of("")
    }

    /// The most requests of `team` it ever had in flight at once.
    pub fn max_in_flight_of(&self, team: &str) -> u32 {
        self.shared.in_flight.lock().unwrap().get(team).map_or(0, |(_, max)| *max)
    }

    /// Another team, whose API key is `key_id`:`secret`: it sees only its own records, and has
    /// its own daily count and its own 3 simultaneous calls.
    pub fn add_team(&self, key_id: &str, secret: &str) {
        self.world().team_keys.insert(key_id.to_owned(), secret.to_owned());
    }

    /// Adds `count` submissions of `team` (see [`Self::add_team`]), one minute apart up to `last`.
    pub fn add_team_records(&self, team: &str, count: usize, form: &str, last: DateTime<Utc>) -> Vec<String> {
        insert_records(&mut self.world(), count, form, last, TimeDelta::minutes(1), team)
    }

    /// The ids of `team`'s records.
    pub fn team_ids(&self, team: &str) -> Vec<String> {
        self.world().records.values().filter(|r| r.team == team).map(|r| r.id.clone()).collect()
    }

    /// The calls `team` made today.
    pub fn calls_today_of(&self, team: &str) -> u64 {
        self.world().calls_today.get(team).copied().unwrap_or(0)
    }
}

impl Drop for TrueContextSim {
    fn drop(&mut self) {
        if let Some((stopped, thread)) = self.activity.take() {
            stopped.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/1.1/data.json", get(list))
        .route("/api/1.1/data/{id}", get(metadata))
        .route("/api/1.1/data/{id}/document.json", get(document_route))
        .route("/api/1.1/formspaces", get(formspaces))
        .route("/api/1.1/formspaces/{id}/forms", get(forms))
        .with_state(shared)
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), "").into_response();
    let headers = response.headers_mut();
    headers.insert("x-prontoforms-errorcode", HeaderValue::from_str(code).unwrap());
    headers.insert("x-prontoforms-errormessage", HeaderValue::from_str(message).unwrap());
    headers.insert("x-prontoforms-requestid", HeaderValue::from_static("sim-request"));
    response
}

/// The team the request's credentials belong to (`""`: the default key, or a bearer token).
async fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let encode = |id: &str, secret: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    };
    if authorization == encode(KEY_ID, KEY_SECRET) {
        return Some(String::new());
    }
    let team = shared
        .world
        .lock()
        .unwrap()
        .team_keys
        .iter()
        .find(|(id, secret)| authorization == encode(id, secret))
        .map(|(id, _)| id.clone());
    if team.is_some() {
        return team;
    }
    bearer_accepted(shared, &authorization).await.then(String::new)
}

/// The call count, an outage and injected faults, in that order; `Ok(latency)` when the route
/// may answer.
fn admit(shared: &Shared, team: &str) -> Result<Duration, Response> {
    let mut world = shared.world.lock().unwrap();
    let calls = world.calls_today.entry(team.to_owned()).or_default();
    *calls += 1;
    let calls = *calls;
    if let Some(status) = world.outage {
        let mut response = error(status, "ServiceUnavailable", "an outage");
        response.headers_mut().insert("retry-after", HeaderValue::from(0));
        return Err(response);
    }
    if world.daily_limit.is_some_and(|limit| calls > limit) {
        return Err(error(402, "CallCountExpended", "the daily call count is used up"));
    }
    match world.faults.pop_front() {
        Some(Fault::Status { status, code, retry_after }) => {
            let mut response = error(status, code, "injected");
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", HeaderValue::from(seconds));
            }
            Err(response)
        }
        Some(Fault::Malformed) => Err((StatusCode::OK, "{\"pageData\": [ {\"identifier\": ").into_response()),
        Some(Fault::Delay(delay)) => Ok(world.latency + delay),
        None => Ok(world.latency),
    }
}

async fn bearer_accepted(shared: &Shared, authorization: &str) -> bool {
    let Some(token) = authorization.strip_prefix("Bearer ") else { return false };
    let userinfo = {
        let world = shared.world.lock().unwrap();
        if world.bearer_tokens.iter().any(|t| t == token) {
            return true;
        }
        world.userinfo.clone()
    };
    let Some(url) = userinfo else { return false };
    match shared.http.get(url).bearer_auth(token).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// Runs `answer` as one request of the caller's team: authenticated (401), counted in flight
/// per team (429 past 3), logged, delayed by the latency. `answer` sees the caller's team.
async fn request(
    shared: Arc<Shared>,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    answer: impl FnOnce(&World, &str) -> Response,
) -> Response {
    let Some(team) = authenticate(&shared, &headers).await else {
        shared.world.lock().unwrap().calls.push(Call { team: String::new(), path, query, status: 401 });
        return error(401, "AuthenticationFailed", "authorization failed");
    };
    let in_flight = {
        let mut counts = shared.in_flight.lock().unwrap();
        let (now, max) = counts.entry(team.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
        *now
    };
    // A client that gives up (its timeout) drops this future mid-way: the guard still counts
    // the request out and logs it, with status 0.
    let mut guard =
        InFlight { shared: shared.clone(), call: Some(Call { team: team.clone(), path, query, status: 0 }) };
    let response = if in_flight > 3 {
        error(429, "TooManyRequests", "more than 3 concurrent requests")
    } else {
        match admit(&shared, &team) {
            Err(response) => response,
            Ok(latency) => {
                tokio::time::sleep(latency).await;
                answer(&shared.world.lock().unwrap(), &team)
            }
        }
    };
    if let Some(call) = guard.call.as_mut() {
        call.status = response.status().as_u16();
    }
    drop(guard);
    response
}

struct InFlight {
    shared: Arc<Shared>,
    call: Option<Call>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else { return };
        if let Some((now, _)) =
            self.shared.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_mut(&call.team)
        {
            *now = now.saturating_sub(1);
        }
        let mut world = self.shared.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if call.path == "data.json" && call.status == 200 {
            world.list_calls += 1;
            let list_calls = world.list_calls;
            let due: Vec<String> =
                world.reprocess.iter().filter(|(after, _)| *after == list_calls).map(|(_, id)| id.clone()).collect();
            for id in due {
                edit(&mut world, &id);
            }
            let arriving: Vec<(usize, String)> = world
                .arrivals
                .iter()
                .filter(|(after, ..)| *after == list_calls)
                .map(|(_, count, form)| (*count, form.clone()))
                .collect();
            for (count, form) in arriving {
                insert_records(&mut world, count, &form, Utc::now(), TimeDelta::milliseconds(1), "");
            }
            if let Some((_, status)) = world.outage_after.filter(|(after, _)| *after == list_calls) {
                world.outage = Some(status);
            }
        }
        world.calls.push(call);
    }
}

fn json_response(value: Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

fn page(items: Vec<Value>, query: &BTreeMap<String, String>) -> Result<Value, Response> {
    let p: usize =
        query.get("p").map_or(Ok(0), |v| v.parse()).map_err(|_| error(400, "InvalidRequestDataFormat", "p"))?;
    let s: usize =
        query.get("s").map_or(Ok(100), |v| v.parse()).map_err(|_| error(400, "InvalidRequestDataFormat", "s"))?;
    if s == 0 || s > 100 {
        return Err(error(400, "InvalidRequestDataFormat", "s must be 1-100"));
    }
    let total = items.len();
    let data: Vec<Value> = items.into_iter().skip(p * s).take(s).collect();
    Ok(json!({"totalNumberOfResults": total, "totalNumberOfPages": total.div_ceil(s), "zone": null,
              "simulatorNote": "unknown field", "pageData": data}))
}

fn time_param(query: &BTreeMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, Response> {
    query
        .get(name)
        .map(|v| v.parse::<DateTime<Utc>>().map_err(|_| error(400, "InvalidRequestDataFormat", name)))
        .transpose()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let q = query.clone();
    request(shared, "data.json".into(), query, headers, move |world, team| {
        let (stime, etime) = match (time_param(&q, "stime"), time_param(&q, "etime")) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let fids: Option<Vec<&str>> = q.get("fids").map(|v| v.split(',').collect());
        let mut selected: Vec<&SimRecord> = world
            .records
            .values()
            .filter(|r| r.team == team)
            .filter(|r| stime.is_none_or(|s| r.processed >= s) && etime.is_none_or(|e| r.processed <= e))
            .filter(|r| fids.as_ref().is_none_or(|f| f.contains(&r.form_id.as_str())))
            .collect();
        selected.sort_by(|a, b| (a.processed, &a.id).cmp(&(b.processed, &b.id)));
        let items = selected
            .into_iter()
            .map(|r| {
                json!({"identifier": r.id, "referenceNumber": format!("{}-{}", r.processed.format("%Y%m%d"), r.id),
                       "state": r.state, "dataState": "Processed", "actionState": null, "dataPersisted": true,
                       "serverReceiveDate": r.processed.to_rfc3339(), "formId": r.form_id, "formVersionId": "v3",
                       "userId": "118800321", "username": "inspector@example.com", "newField": 1})
            })
            .collect();
        match page(items, &q) {
            Ok(value) => json_response(value),
            Err(response) => response,
        }
    })
    .await
}

async fn metadata(State(shared): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    request(shared, format!("data/{id}"), BTreeMap::new(), headers, move |world, team| match world.records.get(&id) {
        Some(r) if r.team == team => json_response(json!({
            "identifier": r.id, "referenceNumber": format!("{}-{}", r.processed.format("%Y%m%d"), r.id),
            "state": r.state, "dataState": "Processed",
            "form": {"formSpaceId": r.formspace_id, "formId": r.form_id, "formVersionId": "v3"},
            "processedTimestamp": r.processed.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "processorExecutions": [],
        })),
        _ => error(404, "ObjectNotFound", "no such data record"),
    })
    .await
}

async fn document_route(State(shared): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    request(shared, format!("data/{id}/document.json"), BTreeMap::new(), headers, move |world, team| {
        match world.records.get(&id) {
            Some(r) if r.team == team && !world.gone_documents.contains(&id) => {
                ([("content-type", "application/json")], r.document.clone()).into_response()
            }
            _ => error(404, "ObjectNotFound", "no such data record"),
        }
    })
    .await
}

async fn formspaces(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let q = query.clone();
    request(shared, "formspaces".into(), query, headers, move |_, _| {
        let items = vec![json!({"identifier": "fs-1", "name": "Field service", "problemContactEmail": null})];
        match page(items, &q) {
            Ok(value) => json_response(value),
            Err(response) => response,
        }
    })
    .await
}

async fn forms(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let q = query.clone();
    request(shared, format!("formspaces/{id}/forms"), query, headers, move |world, team| {
        if id != "fs-1" {
            return error(404, "ObjectNotFound", "no such FormSpace");
        }
        let mut forms: Vec<&str> =
            world.records.values().filter(|r| r.team == team).map(|r| r.form_id.as_str()).collect();
        forms.sort_unstable();
        forms.dedup();
        let items = forms
            .into_iter()
            .map(|f| json!({"identifier": f, "name": format!("Form {f}"), "state": "Active", "locked": false}))
            .collect();
        match page(items, &q) {
            Ok(value) => json_response(value),
            Err(response) => response,
        }
    })
    .await
}
