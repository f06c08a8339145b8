//! A stand-in for the App Service / Functions managed-identity endpoint, so the shipped binary
//! authenticates to the Key Vault simulator exactly as it does in Azure.
//!
//! The protocol, as Microsoft Learn's "Managed identities for App Service and Azure
//! Functions", REST endpoint reference, gives it (and as azure_identity 1.0's
//! `AppServiceManagedIdentityCredential` speaks it): Azure sets `IDENTITY_ENDPOINT` (a local
//! URL) and `IDENTITY_HEADER` (a secret); the app sends
//! `GET {IDENTITY_ENDPOINT}?resource=<resource>&api-version=2019-08-01[&client_id=<id>]` with
//! `X-IDENTITY-HEADER: <secret>`; the answer is `{"access_token", "expires_on" (Unix seconds,
//! as a string), "resource", "token_type": "Bearer", "client_id"}`. A missing or wrong header
//! is refused (401 here; the service's exact status is not documented); an identity not
//! assigned is 400, which the SDK reports as such.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub const API_VERSION: &str = "2019-08-01";

#[derive(Default)]
struct Shared {
    header: String,
    /// resource → the token to hand out for it.
    tokens: HashMap<String, String>,
    client_id: Option<String>,
    lifetime_secs: i64,
    /// The next requests get these statuses instead of a token.
    faults: Mutex<Vec<u16>>,
    served: AtomicUsize,
    refused: AtomicUsize,
}

pub struct IdentityEndpoint {
    /// `IDENTITY_ENDPOINT`.
    pub endpoint: String,
    /// `IDENTITY_HEADER`.
    pub header: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdentityEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentityEndpoint {
    /// Hands out `token` for `resource` (e.g. the Key Vault simulator's) to the user-assigned
    /// identity `client_id`, or to the system-assigned one when `None`.
    pub async fn start(resource: &str, token: &str, client_id: Option<&str>) -> IdentityEndpoint {
        let header = format!("identity-header-{:016x}", rand::random::<u64>());
        let shared = Arc::new(Shared {
            header: header.clone(),
            tokens: HashMap::from([(resource.trim_end_matches('/').to_owned(), token.to_owned())]),
            client_id: client_id.map(str::to_owned),
            lifetime_secs: 3600,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/msi/token", listener.local_addr().unwrap());
        let app = Router::new().route("/msi/token", get(token_request)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        IdentityEndpoint { endpoint, header, shared, task }
    }

    /// The settings Azure gives a function app with this identity.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![("IDENTITY_ENDPOINT", self.endpoint.clone()), ("IDENTITY_HEADER", self.header.clone())]
    }

    /// The next `times` requests are answered with `status`.
    pub fn fail(&self, status: u16, times: usize) {
        self.shared.faults.lock().unwrap().extend(std::iter::repeat_n(status, times));
    }

    /// How many injected faults no request has taken yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    /// Drops the faults not used up; answers how many there were.
    pub fn clear_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().drain(..).count()
    }

    /// Tokens handed out.
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Requests refused (wrong header, api-version, resource or identity).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

async fn token_request(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        (status, Json(json!({ "statusCode": status.as_u16(), "message": message }))).into_response()
    };
    if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(shared.header.as_str()) {
        return refuse(StatusCode::UNAUTHORIZED, "X-IDENTITY-HEADER is missing or wrong");
    }
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return refuse(StatusCode::BAD_REQUEST, "unsupported api-version");
    }
    if query.get("client_id") != shared.client_id.as_ref() {
        return refuse(StatusCode::BAD_REQUEST, "the requested identity has not been assigned to this resource");
    }
    let Some(resource) = query.get("resource").map(|r| r.trim_end_matches('/').to_owned()) else {
        return refuse(StatusCode::BAD_REQUEST, "resource is required");
    };
    let Some(token) = shared.tokens.get(&resource) else {
        return refuse(StatusCode::BAD_REQUEST, "no token for that resource");
    };
    let fault = {
        let mut faults = shared.faults.lock().unwrap();
        (!faults.is_empty()).then(|| faults.remove(0))
    };
    if let Some(status) = fault {
        let status = StatusCode::from_u16(status).unwrap();
        return (status, Json(json!({ "statusCode": status.as_u16(), "message": "injected" }))).into_response();
    }
    shared.served.fetch_add(1, Ordering::SeqCst);
    let expires_on = chrono::Utc::now().timestamp() + shared.lifetime_secs;
    Json(json!({
        "access_token": token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": shared.client_id.clone().unwrap_or_else(|| "system-assigned".into()),
    }))
    .into_response()
}
