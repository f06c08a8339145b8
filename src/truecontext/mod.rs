//! The TrueContext (ProntoForms) REST API client: the only code that speaks TrueContext's HTTP.
//!
//! Every call, in order: a reservation from the connection's daily budget (shared by every
//! instance through the store; none after a 402 until 00:00 UTC), a call slot (the cluster-wide
//! cap of `TRUECONTEXT_CONCURRENCY`), the credentials (the connection's access token, or the API
//! key), one GET without redirects and with a timeout, a body read under a size cap. 429, 503
//! and other 5xx answers, timeouts and transport failures are retried a few times, honouring
//! `Retry-After`; a 401 with an access token forces one refresh and one retry, never more.
//! The facts this relies on are in docs/truecontext-api.md.

mod budget;
mod error;
pub mod model;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use budget::{next_midnight, Budget, BudgetState};
pub use error::{StopClass, TrueContextError};
use model::{Form, FormSpace, Page, RecordHeader, RecordMetadata};

use crate::clock::{Clock, SystemClock};
use crate::config::TrueContextSettings;
use crate::connections::{Access as SourceAccess, Source};
use crate::secret::SecretString;
use crate::store::Stores;
use crate::tokens::Tokens;

/// Tries of one call (the first and the retries) on transient answers: enough to ride out a
/// burst of 429s that each ask for a second or two.
const MAX_ATTEMPTS: u32 = 8;
/// The first wait after a transient answer without `Retry-After`; doubles per try, up to
/// [`MAX_BACKOFF`] (so a dead endpoint fails a call in under a minute).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A `Retry-After` longer than this is not waited out inside a call: the call fails, saying when.
const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(60);
/// The list page size: TrueContext's maximum.
pub const PAGE_SIZE: u32 = 100;

/// How a call authenticates.
pub enum Access<'a> {
    /// The connection's OAuth access token; a 401 forces one refresh.
    Bearer(&'a Tokens<'a>),
    /// An API key (`TRUECONTEXT_AUTH=basic`, or a connection added with one).
    Basic { key_id: &'a str, secret: &'a SecretString },
}

/// How a call authenticates, and the team whose daily budget and call slots it draws on.
pub struct Credentials<'a> {
    pub access: Access<'a>,
    /// The declared team; `None`: the connection is a team of its own.
    pub team: Option<&'a str>,
}

/// Why there are no credentials: `TRUECONTEXT_AUTH=basic` without its API key.
pub const MISSING_API_KEY: &str = "TRUECONTEXT_AUTH=basic needs TRUECONTEXT_API_KEY_ID and TRUECONTEXT_API_KEY_SECRET";

impl<'a> Credentials<'a> {
    pub fn bearer(tokens: &'a Tokens<'a>) -> Self {
        Credentials { access: Access::Bearer(tokens), team: None }
    }

    pub fn basic(key_id: &'a str, secret: &'a SecretString) -> Self {
        Credentials { access: Access::Basic { key_id, secret }, team: None }
    }

    /// The same credentials, counted against `team`.
    pub fn in_team(self, team: &'a str) -> Self {
        Credentials { team: Some(team), ..self }
    }

    /// The team a call as `connection` is counted against.
    pub fn team<'c>(&'c self, connection: &'c str) -> &'c str {
        self.team.unwrap_or(connection)
    }

    /// The credentials `TRUECONTEXT_AUTH` names; `None` when its API key is not configured
    /// ([`MISSING_API_KEY`] says so). Processing falls back on them for a push whose connection
    /// the bridge no longer reads; everything else takes [`Credentials::of_source`].
    pub fn from_settings(tc: &'a crate::config::TrueContextSettings, tokens: &'a Tokens<'a>) -> Option<Self> {
        use crate::config::TrueContextAuth;
        match (tc.auth, &tc.api_key_id, &tc.api_key_secret) {
            (TrueContextAuth::Bearer, _, _) => Some(Credentials::bearer(tokens)),
            (TrueContextAuth::Basic, Some(key_id), Some(secret)) => Some(Credentials::basic(key_id, secret)),
            (TrueContextAuth::Basic, _, _) => None,
        }
    }

    /// The credentials of one source (`connections::sources`), in its team; the error says
    /// which setting is missing.
    pub fn of_source(
        source: &'a Source,
        tc: &'a crate::config::TrueContextSettings,
        tokens: &'a Tokens<'a>,
    ) -> Result<Self, String> {
        let credentials = match &source.access {
            SourceAccess::OAuth => Credentials::bearer(tokens),
            SourceAccess::ConfiguredKey => match (&tc.api_key_id, &tc.api_key_secret) {
                (Some(key_id), Some(secret)) => Credentials::basic(key_id, secret),
                _ => return Err(MISSING_API_KEY.to_owned()),
            },
            SourceAccess::ApiKey { key_id, secret_setting } => match tc.key_secrets.get(secret_setting) {
                Some(secret) => Credentials::basic(key_id, secret),
                None => {
                    return Err(format!(
                        "connection {} names {secret_setting} for its API key's secret, and that setting is not set",
                        source.id
                    ))
                }
            },
        };
        Ok(credentials.in_team(source.team.as_str()))
    }
}

/// See [`TrueContextClient::keep_slots`].
#[must_use = "the slots are given back when the guard is given back or dropped"]
pub struct KeptSlots<'a> {
    client: &'a TrueContextClient,
    given_back: bool,
}

impl KeptSlots<'_> {
    pub async fn give_back(mut self) {
        self.client.release_slots().await;
        self.given_back = true;
    }
}

impl Drop for KeptSlots<'_> {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        // Not given back in order: a task gives them back (a drop cannot wait), or, with no
        // runtime left, they free themselves when their leases lapse.
        let (pool, tables) = (self.client.kept_slots.clone(), self.client.stores.tables.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { pool.release_all(tables.as_ref()).await });
        }
    }
}

/// The filters of `data.json` (docs/truecontext-api.md, "Listing submissions"). Times are UTC.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// What `stime`/`etime` filter on: `DataRecordProcessedDate` (the default here),
    /// `ServerReceiveDate` or `DeviceEntryDate`.
    pub ftime: Option<String>,
    pub stime: Option<DateTime<Utc>>,
    pub etime: Option<DateTime<Utc>>,
    pub formspace_ids: Vec<String>,
    pub form_ids: Vec<String>,
    pub group_ids: Vec<String>,
    pub user_ids: Vec<String>,
    pub usernames: Vec<String>,
    pub data_state: Option<String>,
    pub execution_state: Option<String>,
    pub state: Option<String>,
}

impl ListQuery {
    fn params(&self, page: u32, size: u32) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("p", page.to_string()),
            ("s", size.clamp(1, PAGE_SIZE).to_string()),
            ("tz", "UTC".to_owned()),
            ("ftime", self.ftime.clone().unwrap_or_else(|| "DataRecordProcessedDate".into())),
        ];
        let times = [("stime", self.stime), ("etime", self.etime)];
        params.extend(times.into_iter().filter_map(|(k, t)| Some((k, model::format_time(t?)))));
        let lists = [
            ("fsids", &self.formspace_ids),
            ("fids", &self.form_ids),
            ("gids", &self.group_ids),
            ("uids", &self.user_ids),
            ("unames", &self.usernames),
        ];
        params.extend(lists.into_iter().filter(|(_, l)| !l.is_empty()).map(|(k, l)| (k, l.join(","))));
        let states =
            [("dataState", &self.data_state), ("executionState", &self.execution_state), ("state", &self.state)];
        params.extend(states.into_iter().filter_map(|(k, v)| Some((k, v.clone()?))));
        params
    }
}

/// Whose simultaneous calls TrueContext counts together: an API key's (however many
/// connections are configured with it), or one connection's token's.
fn slot_scope(credentials: &Credentials<'_>, connection: &str) -> String {
    match &credentials.access {
        Access::Basic { key_id, .. } => {
            use sha2::Digest;
            format!("key-{}", crate::naming::hex_prefix(&sha2::Sha256::digest(key_id.as_bytes()), 16))
        }
        Access::Bearer(_) => match credentials.team {
            Some(team) => format!("team-{team}"),
            None => format!("connection-{connection}"),
        },
    }
}

/// A submission's document exactly as TrueContext served it. It is not judged here: the
/// landing reads it, and keeps one it cannot read in quarantine, so one bad document never
/// stops a walk (a parse failure here used to stop the sync at its page on every run).
#[derive(Debug, Clone)]
pub struct Document {
    pub bytes: Vec<u8>,
}

impl Document {
    /// The document as JSON, for a caller that wants it parsed.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.bytes)
    }
}

/// The client, shared by every call of a process. Cheap to clone.
#[derive(Clone)]
pub struct TrueContextClient {
    http: reqwest::Client,
    settings: Arc<TrueContextSettings>,
    stores: Stores,
    holder: String,
    clock: Arc<dyn Clock>,
    /// This process's share of the call cap, taken before a cluster slot: local callers are
    /// handed a freed call at once instead of polling the slot leases, and never hold more
    /// leases than the cap.
    /// One per slot scope (team), so one team's calls never wait on another's.
    local_slots: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    /// Cluster slots kept between calls (see `slots`).
    kept_slots: Arc<slots::Pool>,
}

impl TrueContextClient {
    pub fn new(settings: &TrueContextSettings, stores: Stores) -> Self {
        Self::with_clock(settings, stores, Arc::new(SystemClock))
    }

    /// A client whose budget days follow `clock` (tests move past midnight without waiting).
    pub fn with_clock(settings: &TrueContextSettings, stores: Stores, clock: Arc<dyn Clock>) -> Self {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("truecontext-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a static client configuration builds");
        let holder = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>()));
        let local_slots = Arc::default();
        let kept_slots = Arc::default();
        Self { http, settings: Arc::new(settings.clone()), stores, holder, clock, local_slots, kept_slots }
    }

    /// This process's share of `scope`'s call cap.
    fn local_share(&self, scope: &str) -> Arc<tokio::sync::Semaphore> {
        let mut shares = self.local_slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cap = self.concurrency();
        shares.entry(scope.to_owned()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cap))).clone()
    }

    /// The cluster-wide cap on simultaneous calls per team (`TRUECONTEXT_CONCURRENCY`).
    pub fn concurrency(&self) -> usize {
        self.settings.concurrency.max(1) as usize
    }

    /// Gives the call slots this client kept back to the cluster, so other instances get their
    /// turn (the sync does after every page; a slot not given back frees itself after twice
    /// the call timeout).
    pub async fn release_slots(&self) {
        self.kept_slots.release_all(self.stores.tables.as_ref()).await;
    }

    /// A guard over the slots a piece of work keeps between its calls: they are given back when
    /// it ends, by [`KeptSlots::give_back`] or, when the work ends another way (an early
    /// return, a panic, a dropped future), by the guard's drop.
    pub fn keep_slots(&self) -> KeptSlots<'_> {
        KeptSlots { client: self, given_back: false }
    }

    /// `TRUECONTEXT_DAILY_CALL_BUDGET`: calls per team per UTC day.
    pub fn daily_budget(&self) -> u64 {
        self.settings.daily_call_budget
    }

    /// A team's budget (a connection with no team declared is a team of its own).
    pub fn budget<'a>(&'a self, team: &'a str) -> Budget<'a> {
        Budget::new(self.stores.tables.as_ref(), team, self.settings.daily_call_budget)
    }

    /// One page (0-based) of the submissions the query selects.
    pub async fn list(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        query: &ListQuery,
        page: u32,
    ) -> Result<Page<RecordHeader>, TrueContextError> {
        let call = format!("data.json page {page}");
        let body = self.get(credentials, connection, &call, "data.json", &query.params(page, PAGE_SIZE)).await?;
        parse(&call, &body)
    }

    /// One submission's metadata, with its processed date.
    pub async fn metadata(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        id: &str,
    ) -> Result<RecordMetadata, TrueContextError> {
        let call = format!("data/{id}");
        let body = self.get(credentials, connection, &call, &format!("data/{}", path_id(id)?), &[]).await?;
        parse(&call, &body)
    }

    /// One submission's full document (the Standard JSON format), exactly as served.
    pub async fn document(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        id: &str,
    ) -> Result<Document, TrueContextError> {
        let call = format!("data/{id}/document.json");
        let path = format!("data/{}/document.json", path_id(id)?);
        let bytes = self.get(credentials, connection, &call, &path, &[]).await?;
        Ok(Document { bytes })
    }

    /// One page of the FormSpaces the credentials can see.
    pub async fn formspaces(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        page: u32,
    ) -> Result<Page<FormSpace>, TrueContextError> {
        let call = format!("formspaces page {page}");
        let params = [("p", page.to_string()), ("s", PAGE_SIZE.to_string())];
        let body = self.get(credentials, connection, &call, "formspaces", &params).await?;
        parse(&call, &body)
    }

    /// One page of a FormSpace's forms.
    pub async fn forms(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        formspace: &str,
        page: u32,
    ) -> Result<Page<Form>, TrueContextError> {
        let call = format!("formspaces/{formspace}/forms page {page}");
        let path = format!("formspaces/{}/forms", path_id(formspace)?);
        let params = [("p", page.to_string()), ("s", PAGE_SIZE.to_string())];
        let body = self.get(credentials, connection, &call, &path, &params).await?;
        parse(&call, &body)
    }

    /// One API call with its budget, slot, credentials and retries; the 2xx body.
    async fn get(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        call: &str,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<u8>, TrueContextError> {
        let url = format!("{}/{path}", self.settings.base_url.as_str().trim_end_matches('/'));
        let budget = self.budget(credentials.team(connection));
        let scope = slot_scope(credentials, connection);
        let (mut refreshed, mut refresh_next) = (false, false);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let authorization = self.authorization(credentials, connection, std::mem::take(&mut refresh_next)).await?;
            let outcome = self.send_once(&budget, &scope, &url, params, &authorization).await?;
            let failure = match outcome {
                Sent::Answer { status, body, .. } if (200..300).contains(&status) => return Ok(body),
                Sent::Answer { status: 401, headers, .. } => {
                    if matches!(credentials.access, Access::Bearer(_)) && !refreshed {
                        // The token may have been revoked or rotated early: one refresh, one retry.
                        (refreshed, refresh_next) = (true, true);
                        attempt -= 1;
                        continue;
                    }
                    return Err(TrueContextError::Unauthorized { call: call.into(), message: message(&headers) });
                }
                Sent::Expended { until } => {
                    tracing::error!(connection, until = %until, "TrueContext's daily call count is used up; no call before the reset");
                    return Err(TrueContextError::CallCountExpended { until });
                }
                Sent::Answer { status, headers, .. } if status == 429 || status >= 500 => Transient {
                    reason: format!("HTTP {status} {}", code(&headers)),
                    retry_after: crate::oauth::token::retry_after(&headers),
                },
                Sent::Answer { status, headers, .. } => return Err(refusal(call, status, &headers)),
                Sent::NotReached(reason) => {
                    budget.refund(self.clock.utc()).await?;
                    Transient { reason, retry_after: None }
                }
                Sent::Lost(reason) => Transient { reason, retry_after: None },
            };
            let wait = failure.retry_after.unwrap_or((FIRST_BACKOFF * 2u32.pow(attempt - 1)).min(MAX_BACKOFF));
            if attempt >= MAX_ATTEMPTS || wait > MAX_IN_CALL_WAIT {
                return Err(TrueContextError::Unavailable {
                    call: call.into(),
                    reason: failure.reason,
                    retry_after: wait,
                });
            }
            tracing::warn!(connection, call, reason = %failure.reason, wait_ms = wait.as_millis() as u64,
                "TrueContext call failed; trying again shortly");
            tokio::time::sleep(wait).await;
        }
    }

    /// The `Authorization` header value; `force_refresh` after a 401.
    async fn authorization(
        &self,
        credentials: &Credentials<'_>,
        connection: &str,
        force_refresh: bool,
    ) -> Result<SecretString, TrueContextError> {
        match &credentials.access {
            Access::Basic { key_id, secret } => {
                use base64::Engine;
                let pair = zeroize::Zeroizing::new(format!("{key_id}:{}", secret.expose()));
                Ok(SecretString::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                )))
            }
            Access::Bearer(tokens) => {
                let token = if force_refresh {
                    tokens.refresh_now(connection).await
                } else {
                    tokens.access_token(connection).await
                };
                let token = token.map_err(|e| TrueContextError::Token(e.to_string()))?;
                Ok(SecretString::new(format!("Bearer {}", token.token.expose())))
            }
        }
    }

    /// Sends one request while holding a call slot of `scope`. The day's budget is reserved
    /// once the slot is held, right before the send: a call that waited for its slot while
    /// another met TrueContext's 402 sees the stop and never starts (it once reserved first and
    /// then went out anyway, after the 402).
    async fn send_once(
        &self,
        budget: &Budget<'_>,
        scope: &str,
        url: &str,
        params: &[(&str, String)],
        authorization: &SecretString,
    ) -> Result<Sent, TrueContextError> {
        let timeout = self.settings.timeout;
        let tables = self.stores.tables.as_ref();
        let local = self.local_share(scope);
        let Ok(_local) = local.acquire().await else {
            return Err(TrueContextError::Store(crate::store::StoreError::Backend("the call cap is closed".into())));
        };
        let (cap, holder) = (self.settings.concurrency, &self.holder);
        let slot = self.kept_slots.take(tables, scope, cap, holder, timeout * 2, timeout).await?;
        if let Err(refused) = budget.reserve(self.clock.utc()).await {
            self.kept_slots.put_back(slot);
            return Err(refused);
        }
        let request = self
            .http
            .get(url)
            .query(params)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::AUTHORIZATION, authorization.expose())
            .timeout(timeout);
        let sent = match request.send().await {
            Ok(response) => self.read(response).await,
            Err(e) if e.is_connect() => Sent::NotReached(format!("cannot connect: {}", e.without_url())),
            Err(e) if e.is_timeout() => Sent::Lost(format!("no answer within {}s", timeout.as_secs())),
            Err(e) => Sent::Lost(format!("the request failed: {}", e.without_url())),
        };
        // A 402 is recorded for every instance before the slot goes back: the next holder of the
        // slot must find the stop when it reserves.
        let sent = match sent {
            Sent::Answer { status: 402, .. } => match budget.stop_until_midnight(self.clock.utc()).await {
                Ok(until) => Sent::Expended { until },
                Err(e) => {
                    self.kept_slots.put_back(slot);
                    return Err(e);
                }
            },
            other => other,
        };
        self.kept_slots.put_back(slot);
        Ok(sent)
    }

    async fn read(&self, mut response: reqwest::Response) -> Sent {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let limit = self.settings.max_response_bytes;
        if response.content_length().is_some_and(|len| len > limit as u64) {
            return Sent::Lost(format!("the answer is larger than {limit} bytes (TRUECONTEXT_MAX_RESPONSE_BYTES)"));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                    return Sent::Lost(format!(
                        "the answer is larger than {limit} bytes (TRUECONTEXT_MAX_RESPONSE_BYTES)"
                    ))
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Sent::Answer { status, headers, body },
                Err(e) => return Sent::Lost(format!("the answer broke off: {}", e.without_url())),
            }
        }
    }
}

/// What one request came to.
enum Sent {
    Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    },
    /// TrueContext's 402 `CallCountExpended`, its stop already recorded.
    Expended {
        until: DateTime<Utc>,
    },
    /// It never reached TrueContext (connection refused): the budget gets the call back.
    NotReached(String),
    /// It may have reached TrueContext: it counts.
    Lost(String),
}

struct Transient {
    reason: String,
    retry_after: Option<Duration>,
}

fn parse<T: serde::de::DeserializeOwned>(call: &str, body: &[u8]) -> Result<T, TrueContextError> {
    serde_json::from_slice(body).map_err(|e| TrueContextError::Malformed {
        call: call.into(),
        reason: format!("not the JSON expected ({:?} error at line {} column {})", e.classify(), e.line(), e.column()),
    })
}

/// Ids go into paths: TrueContext's are digits; anything else is refused before a call.
fn path_id(id: &str) -> Result<&str, TrueContextError> {
    if crate::naming::is_record_id(id) {
        Ok(id)
    } else {
        Err(TrueContextError::Rejected {
            call: "building a request".into(),
            status: 0,
            code: "InvalidIdentifier".into(),
            message: Some(format!("{:?} is not a TrueContext identifier", id.chars().take(80).collect::<String>())),
        })
    }
}

fn header<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn code(headers: &reqwest::header::HeaderMap) -> String {
    header(headers, "x-prontoforms-errorcode").unwrap_or("no error code").chars().take(64).collect()
}

fn message(headers: &reqwest::header::HeaderMap) -> Option<String> {
    header(headers, "x-prontoforms-errormessage")
        .map(|m| crate::telemetry::redact(&m.chars().take(300).collect::<String>()).into_owned())
}

fn refusal(call: &str, status: u16, headers: &reqwest::header::HeaderMap) -> TrueContextError {
    let call = call.to_owned();
    match status {
        403 => TrueContextError::Forbidden { call, code: code(headers), message: message(headers) },
        404 => TrueContextError::NotFound { call, code: code(headers) },
        _ => TrueContextError::Rejected { call, status, code: code(headers), message: message(headers) },
    }
}
