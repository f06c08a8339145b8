//! The `status` function: the status report ([`report`]) as JSON, or as a page for a browser
//! ([`page`]). One way: this file uses both, the page reads the report, the report knows neither.

mod charts;
mod page;
mod report;

use axum::http::StatusCode;

pub use report::*;

use super::{App, HttpRequest, HttpResponse};

/// The report as JSON, or as a page for a browser (`Accept: text/html`); the same data and
/// status code either way.
pub async fn respond(app: &App, request: &HttpRequest) -> HttpResponse {
    match StatusReport::gather(app).await {
        Ok(report) if crate::handlers::pages::accepts_html(&request.headers) => page::render(&report),
        Ok(report) => {
            let status = StatusCode::from_u16(report.summary.status).unwrap_or(StatusCode::OK);
            HttpResponse::json(status, &report)
        }
        Err(e) => {
            tracing::error!(error = %e, "status could not read the store");
            HttpResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the store cannot be read: {e}"),
            )
        }
    }
}
