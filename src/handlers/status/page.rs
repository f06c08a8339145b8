//! The status report as a page for people: `GET /api/status` from a browser. The same
//! [`StatusReport`] the JSON carries, laid out for a glance: what needs attention first, then
//! each connection, TrueContext's calls against the budget, the pushes, the alerts with what to
//! do about each.
//!
//! The page is one self-contained document: no script at all, one style sheet allowed by its
//! hash (the policy has no `'unsafe-inline'`), bars drawn by `<meter>` and charts by inline
//! SVG with presentation attributes, so no inline style is needed; every value escaped.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, StatusCode};
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::report::StatusReport;
use crate::alerts::Alert;
use crate::handlers::pages::{escape, security_headers};
use crate::handlers::HttpResponse;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;\
color:#1b1b1b}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}th{color:#555;\
font-weight:600}.ok{color:#1a7f37}.bad{color:#b42318}.warn{color:#9a6700}.banner{padding:.8rem 1rem;\
border-radius:.4rem;margin:1rem 0}.banner.ok{background:#e9f7ee}.banner.bad{background:#fdecea}\
meter{width:12rem;height:1rem}.muted{color:#666}ul{padding-left:1.2rem}code{font-size:.9em}";

/// The policy: nothing may load or run but the one style sheet, identified by its hash.
fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; script-src 'none'; form-action 'none'; \
             base-uri 'none'; frame-ancestors 'none'"
        )
    })
}

/// The report as an HTML page with the status code the JSON would have.
pub fn render(report: &StatusReport) -> HttpResponse {
    let mut page = Page::default();
    page.head(report);
    page.attention(report);
    page.connections(report);
    page.truecontext(report);
    page.activity(report);
    page.pushes(report);
    page.alerts(report);
    page.footer(report);
    page.push("</body></html>");
    let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))];
    for (name, value) in security_headers() {
        if name != header::CONTENT_SECURITY_POLICY {
            headers.push((name, value));
        }
    }
    if let Ok(policy) = HeaderValue::from_str(content_security_policy()) {
        headers.push((header::CONTENT_SECURITY_POLICY, policy));
    }
    let status = StatusCode::from_u16(report.summary.status).unwrap_or(StatusCode::OK);
    HttpResponse { status, headers, body: page.html }
}

/// A connection's last sync run as one line: when, and how it ended.
fn last_sync(report: &StatusReport, connection: &str) -> String {
    let last = report.truecontext.iter().find(|t| t.connection == connection).and_then(|t| t.last_sync.as_ref());
    match last {
        Some(l) => format!(
            "{} — {}",
            time(l.finished_at),
            if l.completed { "completed".to_owned() } else { l.stopped_reason.clone().unwrap_or_default() }
        ),
        None => "never".to_owned(),
    }
}

/// What an operator does about an alert, by its name.
pub fn advice(alert: &str, connection: Option<&str>) -> String {
    match crate::alerts::AlertKind::from_name(alert) {
        Some(kind) => kind.advice(connection),
        None => "See the README's runbook for this alert.".to_owned(),
    }
}

#[derive(Default)]
struct Page {
    html: String,
}

impl Page {
    fn push(&mut self, raw: &str) {
        self.html.push_str(raw);
    }

    /// Text, escaped.
    fn text(&mut self, text: &str) {
        self.html.push_str(&escape(text));
    }

    fn element(&mut self, tag: &str, class: Option<&str>, text: &str) {
        match class {
            Some(class) => self.push(&format!("<{tag} class=\"{class}\">")),
            None => self.push(&format!("<{tag}>")),
        }
        self.text(text);
        self.push(&format!("</{tag}>"));
    }

    fn table_head(&mut self, columns: &[&str]) {
        self.push("<table><thead><tr>");
        for column in columns {
            self.element("th", None, column);
        }
        self.push("</tr></thead><tbody>");
    }

    fn head(&mut self, report: &StatusReport) {
        self.push(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Status — truecontext-bridge</title><style>",
        );
        self.push(STYLE);
        self.push("</style></head><body>");
        self.element("h1", None, "truecontext-bridge status");
        let mode = serde_json::to_value(report.mode).ok().and_then(|v| v.as_str().map(str::to_owned));
        let store = serde_json::to_value(report.store).ok().and_then(|v| v.as_str().map(str::to_owned));
        let line = format!(
            "version {} · mode {} · store {} · up {}",
            report.version,
            mode.unwrap_or_default(),
            store.unwrap_or_default(),
            duration(report.uptime_seconds)
        );
        self.element("p", Some("muted"), &line);
    }

    fn attention(&mut self, report: &StatusReport) {
        if report.summary.attention.is_empty() {
            self.push("<div class=\"banner ok\" id=\"summary\">");
            self.element("strong", None, "All well: nothing needs attention.");
            self.push("</div>");
            return;
        }
        self.push("<div class=\"banner bad\" id=\"summary\">");
        let count = report.summary.attention.len();
        self.element("strong", None, &format!("{count} thing(s) need attention"));
        self.push("<ul>");
        for item in &report.summary.attention {
            self.element("li", None, item);
        }
        self.push("</ul></div>");
        if !report.configuration_missing.is_empty() {
            let names = report.configuration_missing.join(", ");
            self.element("p", Some("warn"), &format!("Settings missing for a feature: {names} (`tcbridge check`)."));
        }
    }

    fn connections(&mut self, report: &StatusReport) {
        self.element("h2", None, "Connections");
        let keyed: Vec<_> =
            report.truecontext.iter().filter(|t| matches!(t.access, "api_key" | "configured_api_key")).collect();
        if report.connections.is_empty() && keyed.is_empty() {
            self.element("p", Some("muted"), "No connection yet: `tcbridge consent-url` prints the link to connect.");
            return;
        }
        self.table_head(&["Connection", "State", "Account", "Access token until", "Last sync", "Next sync"]);
        for c in &report.connections {
            let state = serde_json::to_value(c.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            let state = state.unwrap_or_default();
            let class = match state.as_str() {
                "active" if c.attention.is_none() => "ok",
                "active" => "warn",
                _ => "bad",
            };
            let next = if state == "active" { time(report.sync.next_run) } else { "— (not synced)".to_owned() };
            self.push(&format!("<tr id=\"connection-{}\">", escape(&c.id)));
            self.element("td", None, &c.id);
            self.push(&format!("<td class=\"{class} state\">"));
            self.text(&state);
            if let Some(attention) = &c.attention {
                self.push("<br><span class=\"muted\">");
                self.text(attention);
                self.push("</span>");
            }
            self.push("</td>");
            self.element("td", None, &c.account);
            self.element("td", None, &time(c.access_token_expires_at));
            self.element("td", None, &last_sync(report, &c.id));
            self.element("td", None, &next);
            self.push("</tr>");
        }
        // API-key connections: no consent and no token, always active while their key is set.
        for t in keyed {
            self.push(&format!("<tr id=\"connection-{}\">", escape(&t.connection)));
            self.element("td", None, &t.connection);
            self.element("td", Some("ok state"), "active");
            self.element("td", None, &format!("API key, team {}", t.team));
            self.element("td", None, "— (API key)");
            self.element("td", None, &last_sync(report, &t.connection));
            self.element("td", None, &time(report.sync.next_run));
            self.push("</tr>");
        }
        self.push("</tbody></table>");
    }

    fn truecontext(&mut self, report: &StatusReport) {
        self.element("h2", None, "TrueContext calls today (UTC)");
        if report.truecontext.is_empty() {
            self.element("p", Some("muted"), "No connection syncs yet.");
            return;
        }
        self.table_head(&[
            "Connection",
            "Team (sign-in)",
            "Team's calls against the budget",
            "Landed (all runs)",
            "Cursor",
        ]);
        for t in &report.truecontext {
            self.push(&format!("<tr id=\"calls-{}\">", escape(&t.connection)));
            self.element("td", None, &t.connection);
            self.element("td", Some("team"), &format!("{} ({})", t.team, t.access.replace('_', " ")));
            self.push("<td>");
            // `high` colours the bar once four fifths of the budget are spent.
            self.push(&format!(
                "<meter min=\"0\" max=\"{budget}\" low=\"{low}\" high=\"{high}\" optimum=\"0\" value=\"{calls}\"></meter> ",
                budget = t.budget.max(1),
                low = t.budget / 2,
                high = t.budget * 4 / 5,
                calls = t.calls_today.min(t.budget.max(1)),
            ));
            self.element("span", Some("calls"), &format!("{} of {}", t.calls_today, t.budget));
            if let Some(until) = t.budget_stopped_until {
                self.element("span", Some("bad"), &format!(" — stopped by TrueContext until {}", time(Some(until))));
            }
            self.push("</td>");
            self.element("td", Some("landed"), &t.landed_total.to_string());
            let cursor = time(t.cursor) + if t.walk_in_progress { " (a window is being walked)" } else { "" };
            self.element("td", None, &cursor);
            self.push("</tr>");
        }
        self.push("</tbody></table>");
    }

    /// Landings over the last day by road, each team's calls against its budget (inline SVG),
    /// and the latest landed submissions.
    fn activity(&mut self, report: &StatusReport) {
        self.element("h2", None, "Activity");
        let counters = &report.webhook.counters;
        self.element(
            "p",
            Some("muted"),
            "Submissions landed per hour, last 24 hours: pushed (blue) on synced (green).",
        );
        self.push(&super::charts::landings(&counters.landed_by_hour, Utc::now()));
        let mut teams: Vec<(String, u64, u64)> = Vec::new();
        for t in &report.truecontext {
            if !teams.iter().any(|(team, ..)| *team == t.team) {
                teams.push((t.team.clone(), t.calls_today, t.budget));
            }
        }
        if !teams.is_empty() {
            self.element("p", Some("muted"), "TrueContext calls today against each team's budget.");
            self.push(&super::charts::calls(&teams));
        }
        self.element("h2", None, "Latest landed submissions");
        if counters.latest_landed.is_empty() {
            self.element("p", Some("muted"), "None landed since the servers started.");
            return;
        }
        self.table_head(&["Landed", "Connection", "Submission", "Road"]);
        for note in &counters.latest_landed {
            self.push("<tr class=\"latest\">");
            self.element("td", None, &time(Some(note.at)));
            self.element("td", None, &note.connection);
            self.element("td", None, &note.id);
            self.element("td", None, &note.road);
            self.push("</tr>");
        }
        self.push("</tbody></table>");
    }

    fn pushes(&mut self, report: &StatusReport) {
        let w = &report.webhook;
        self.element("h2", None, "Pushes");
        let auth = match w.auth {
            Some(auth) => format!(
                "webhook verified by {}",
                serde_json::to_value(auth).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            ),
            None => "WEBHOOK_AUTH is not set: every push is refused".to_owned(),
        };
        self.element("p", Some("muted"), &auth);
        self.table_head(&[
            "Received",
            "Accepted",
            "Duplicates",
            "Processed",
            "Retried",
            "Poisoned",
            "Waiting",
            "Poison queue",
            "Missed (sync only)",
        ]);
        self.push("<tr id=\"pushes\">");
        let figures = [
            w.counters.received,
            w.counters.accepted,
            w.counters.duplicates,
            w.counters.processed,
            w.counters.retried,
            w.counters.poisoned,
            w.backlog.unprocessed as u64,
            w.poison_queue_depth as u64,
            w.missed_pushes_since_push,
        ];
        for (i, figure) in figures.iter().enumerate() {
            let class = if (i == 5 || i == 7) && *figure > 0 { "bad" } else { "" };
            self.push(&format!("<td class=\"{class}\">{figure}</td>"));
        }
        self.push("</tr></tbody></table>");
        let refused: u64 = w.counters.rejected.values().sum();
        if refused > 0 {
            let reasons: Vec<String> = w.counters.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            self.element("p", Some("warn"), &format!("{refused} refused: {}", reasons.join(", ")));
        }
    }

    fn alerts(&mut self, report: &StatusReport) {
        self.element("h2", None, "Open alerts");
        let mut open: Vec<(&str, Option<&str>)> = report.app_alerts.iter().map(|a| (a.alert.as_str(), None)).collect();
        for c in &report.connections {
            open.extend(c.alerts.iter().map(|a| (a.as_str(), Some(c.id.as_str()))));
        }
        // API-key connections have no consent record: their alerts come with their calls.
        for t in report.truecontext.iter().filter(|t| !report.connections.iter().any(|c| c.id == t.connection)) {
            open.extend(t.alerts.iter().map(|a| (a.as_str(), Some(t.connection.as_str()))));
        }
        if open.is_empty() {
            self.element("p", Some("ok"), "None.");
            return;
        }
        let reasons = |name: &str, connection: Option<&str>| -> Option<&Alert> {
            report.app_alerts.iter().find(|a| connection.is_none() && a.alert == name)
        };
        self.table_head(&["Alert", "Connection", "What to do"]);
        for (name, connection) in open {
            self.push("<tr class=\"alert\">");
            self.element("td", Some("bad"), name);
            self.element("td", None, connection.unwrap_or("app"));
            self.push("<td>");
            if let Some(alert) = reasons(name, connection) {
                self.element("span", Some("muted"), &alert.reason);
                self.push("<br>");
            }
            self.text(&advice(name, connection));
            self.push("</td></tr>");
        }
        self.push("</tbody></table>");
    }

    fn footer(&mut self, report: &StatusReport) {
        let last = match &report.sync.last_run {
            Some(run) => format!("last sync run {} ({})", time(Some(run.finished_at)), run.outcome),
            None => "no sync run yet".to_owned(),
        };
        let line = format!("schedule {} · {last} · next {}", report.sync.schedule, time(report.sync.next_run));
        self.element("p", Some("muted"), &line);
        self.element("p", Some("muted"), "The same data as JSON: this address without Accept: text/html.");
    }
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "—".to_owned())
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_page_style() {
        let policy = content_security_policy();
        assert!(!policy.contains("unsafe-inline"));
        assert!(policy.contains("script-src 'none'"));
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
        assert!(policy.contains(&format!("'sha256-{hash}'")));
    }

    #[test]
    fn every_alert_the_product_raises_has_its_own_advice() {
        let fallback = advice("something_new", None);
        for name in [
            "connection_needs_reauth",
            "reconsent_due",
            "token_refresh_rejected",
            "token_refresh_failing",
            "token_set_not_stored",
            "app_credentials_rejected",
            "sync_stalled",
            "push_poisoned",
            "submission_quarantined",
        ] {
            assert_ne!(advice(name, Some("x")), fallback, "{name}");
        }
    }
}
