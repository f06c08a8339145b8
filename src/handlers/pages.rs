//! The pages the admin sees: self-contained HTML with no third-party resources, every value
//! escaped, and headers that keep them out of caches, referrers and frames.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};

use super::HttpResponse;

/// Headers every sign-in page and redirect carries.
pub fn security_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; \
                 base-uri 'none'; frame-ancestors 'none'",
            ),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ]
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// One row of a page: a label and a value (both plain text; escaped here).
pub type Row = (&'static str, String);

/// Whether the client is a browser that wants a page (its `Accept` names `text/html`) rather
/// than a script that wants JSON.
pub fn accepts_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|item| item.trim().to_ascii_lowercase().starts_with("text/html")))
}

/// A page with a heading, paragraphs and an optional table of details. All text is escaped.
pub fn page(status: StatusCode, title: &str, paragraphs: &[String], rows: &[Row]) -> HttpResponse {
    let mut body = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>",
    );
    body.push_str(&escape(title));
    body.push_str(
        " — truecontext-bridge</title><style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;\
         padding:0 1rem;color:#1b1b1b}h1{font-size:1.4rem}table{border-collapse:collapse}td{padding:.3rem .8rem .3rem 0;\
         vertical-align:top}td:first-child{color:#555}</style></head><body><h1>",
    );
    body.push_str(&escape(title));
    body.push_str("</h1>");
    for paragraph in paragraphs {
        body.push_str("<p>");
        body.push_str(&escape(paragraph));
        body.push_str("</p>");
    }
    if !rows.is_empty() {
        body.push_str("<table>");
        for (label, value) in rows {
            body.push_str("<tr><td>");
            body.push_str(&escape(label));
            body.push_str("</td><td>");
            body.push_str(&escape(value));
            body.push_str("</td></tr>");
        }
        body.push_str("</table>");
    }
    body.push_str("</body></html>");
    let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))];
    headers.extend(security_headers());
    HttpResponse { status, headers, body }
}

/// A sign-in error page: what happened in plain words, what to do, and diagnostics.
pub fn error_page(status: StatusCode, what: &str, advice: &str, rows: &[Row]) -> HttpResponse {
    page(status, "The connection was not made", &[what.to_owned(), advice.to_owned()], rows)
}

/// A redirect (`302` to the authorization server, `303` after the callback) with the page
/// headers and a tiny body for clients that do not follow it.
pub fn redirect(status: StatusCode, location: &str) -> HttpResponse {
    let mut response = page(status, "Continue", &["Continue to the next step.".into()], &[]);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers.push((header::LOCATION, value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_everywhere() {
        let response = page(
            StatusCode::BAD_REQUEST,
            "<b>t</b>",
            &["<script>alert(1)</script>".into()],
            &[("x", "\"><img src=x onerror=alert(1)>".into())],
        );
        assert!(!response.body.contains("<script>"));
        assert!(!response.body.contains("<img"));
        assert!(response.body.contains("&lt;script&gt;"));
        let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
        for header in ["cache-control", "referrer-policy", "content-security-policy", "x-frame-options"] {
            assert!(names.contains(&header), "{header}");
        }
    }

    #[test]
    fn browsers_are_told_apart_from_scripts_by_accept() {
        let with = |accept: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            accepts_html(&headers)
        };
        assert!(with("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
        assert!(with("application/json, TEXT/HTML;q=0.5"));
        assert!(!with("application/json"));
        assert!(!with("*/*"));
        assert!(!accepts_html(&axum::http::HeaderMap::new()));
    }
}
