//! Logging: `tracing` with JSON lines under the Functions host and readable lines on a
//! terminal, a scrubber in front of every output, and per-invocation capture for the host's
//! `Logs` array.
//!
//! Secrets are kept out of logs in two layers. The first is the type system: secret values
//! are [`SecretString`]s, which print as `[REDACTED]`. The second is [`redact`], applied to every
//! line on its way out (terminal, JSON, invocation `Logs`): it blanks the values of long-lived
//! secrets registered at start-up, bearer/basic credentials, JWTs, and the values of
//! sensitive parameters (`code=`, `client_secret=`, `sig=`, `AccountKey=` ...), so a value that
//! slipped into a message through some error text is still caught.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use regex::Regex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt::MakeWriter, EnvFilter, Layer};

use crate::config::LogFormat;
use crate::secret::SecretString;

const REDACTED: &str = "[REDACTED]";

static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds a secret's value to the scrubber, so it is blanked wherever it appears in output.
/// For long-lived secrets (settings); values shorter than 8 characters are ignored to avoid
/// blanking ordinary words.
pub fn register_secret(secret: &SecretString) {
    let value = secret.expose();
    if value.len() >= 8 {
        let mut registered = REGISTERED.write().unwrap_or_else(|p| p.into_inner());
        if !registered.iter().any(|v| v == value) {
            registered.push(value.to_owned());
        }
    }
}

fn patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let sensitive = "code|state|code_verifier|client_secret|client_assertion|assertion|refresh_token|access_token|\
                         id_token|token|password|passwd|secret|sig|x-functions-key|api[_-]?key|AccountKey|\
                         SharedAccessSignature|SharedAccessKey";
        vec![
            // JWTs (id tokens, access tokens, assertions).
            (Regex::new(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").unwrap(), REDACTED),
            // Authorization header values.
            (Regex::new(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9\-._~+/=%]{6,}").unwrap(), "$1 [REDACTED]"),
            // key=value in URLs, forms, connection strings and debug output; also "key": "value".
            (Regex::new(&format!(r#"(?i)\b({sensitive})(=|%3D)[^&\s"';,]+"#)).unwrap(), "$1$2[REDACTED]"),
            (Regex::new(&format!(r#"(?i)"({sensitive})"\s*:\s*"[^"]*""#)).unwrap(), "\"$1\":\"[REDACTED]\""),
        ]
    })
}

/// Blanks every secret this process knows of, and everything shaped like a credential.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (pattern, replacement) in patterns() {
        if pattern.is_match(&out) {
            out = Cow::Owned(pattern.replace_all(&out, *replacement).into_owned());
        }
    }
    let registered = REGISTERED.read().unwrap_or_else(|p| p.into_inner());
    for value in registered.iter() {
        if out.contains(value.as_str()) {
            out = Cow::Owned(out.replace(value.as_str(), REDACTED));
        }
    }
    out
}

/// A writer that scrubs each formatted event before it reaches the real output.
#[derive(Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

pub struct RedactingWriter(Output);

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer hands over one whole event per write.
        let text = String::from_utf8_lossy(buf);
        let clean = redact(&text);
        match self.0 {
            Output::Stdout => std::io::stdout().lock().write_all(clean.as_bytes())?,
            Output::Stderr => std::io::stderr().lock().write_all(clean.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0 {
            Output::Stdout => std::io::stdout().flush(),
            Output::Stderr => std::io::stderr().flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(*self)
    }
}

/// True when the Functions host started us: it sets these for its workers.
pub fn under_functions_host() -> bool {
    std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some() || std::env::var_os("WEBSITE_INSTANCE_ID").is_some()
}

/// Installs the global subscriber. `RUST_LOG` sets the filter (default `info`).
/// Servers log to stdout (the host records it as Information; stderr would be Error); the
/// CLI logs to stderr so its stdout stays clean for output.
pub fn init(format: LogFormat, output: Output) {
    install_panic_hook();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => under_functions_host(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(InvocationCapture);
    let result = if json {
        registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(output)).try_init()
    } else {
        let ansi = matches!(output, Output::Stderr) && std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(output)).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The lines one invocation logged, for the host's `Logs` array.
#[derive(Clone, Default)]
pub struct InvocationLogs(Arc<Mutex<Vec<String>>>);

const MAX_INVOCATION_LINES: usize = 200;

impl InvocationLogs {
    pub fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() < MAX_INVOCATION_LINES {
            lines.push(redact(&line).into_owned());
        } else if lines.len() == MAX_INVOCATION_LINES {
            lines.push("(further log lines of this invocation are on stdout only)".into());
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `fut` with every event it logs (on its own task) also captured here.
    pub async fn capture<F: std::future::Future>(&self, fut: F) -> F::Output {
        CURRENT_INVOCATION.scope(self.clone(), fut).await
    }
}

tokio::task_local! {
    static CURRENT_INVOCATION: InvocationLogs;
}

/// Copies events logged inside [`InvocationLogs::capture`] into that invocation's lines.
struct InvocationCapture;

impl<S: Subscriber> Layer<S> for InvocationCapture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let _ = CURRENT_INVOCATION.try_with(|logs| {
            let mut line = LineVisitor(String::new());
            event.record(&mut line);
            logs.push(format!("{} {}", event.metadata().level(), line.0.trim_start()));
        });
    }
}

struct LineVisitor(String);

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// A unit of work (a request, a queue message, one connection's sync run, one landing) that
/// panicked, with the panic's message (scrubbed, at most 300 characters). The unit fails
/// alone: its caller turns this into that unit's failure (a 500, a redelivery, a recorded
/// stop, a quarantined document) and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an internal error stopped it (a bug, logged): {0}")]
pub struct Panicked(pub String);

impl Panicked {
    /// From what `catch_unwind` or a panicked task's `JoinError::into_panic` hands back.
    pub fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        Panicked(panic_text(payload))
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    printable(&redact(text), 300)
}

/// Runs one unit of work so that a panic inside it becomes its own `Err`, never a stopped
/// worker or a dropped connection. Shared state stays usable: our locks recover from poisoning
/// (`unwrap_or_else(into_inner)`) and tokio's do not poison. The unit is boxed: isolated units
/// nest (a request, its sync run, its landings), and nested inline they made one future larger
/// than a worker thread's stack.
pub async fn isolate<F: std::future::Future>(unit: F) -> Result<F::Output, Panicked> {
    use futures::FutureExt;
    let unit = Box::pin(unit);
    std::panic::AssertUnwindSafe(unit).catch_unwind().await.map_err(|payload| Panicked::from_payload(payload.as_ref()))
}

/// [`isolate`] for synchronous work (parsing, normalising).
pub fn isolate_sync<T>(unit: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(unit))
        .map_err(|payload| Panicked::from_payload(payload.as_ref()))
}

/// Replaces the default panic message (raw text on stderr, past the scrubber) with one log
/// event through the scrubbed outputs: where, and what, never a backtrace of values.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map_or_else(|| "unknown".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
        let message = panic_text(info.payload());
        if tracing::dispatcher::has_been_set() {
            tracing::error!(location = %location, panic = %message, "a unit of work panicked; it fails alone");
        } else {
            eprintln!("error: internal error at {location}: {message}");
        }
    }));
}

/// Outside input fit for an error message: control characters dropped, at most `max_chars`
/// kept (then `…`), so an error names what was wrong without echoing a whole input.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max_chars).collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_credentials_of_every_shape() {
        let cases = [
            "Authorization: Bearer abcdef123456.xyz",
            "GET /api/callback?code=0.AAAA-secret-code&state=s3cr3tstate",
            "token response {\"refresh_token\": \"1.AXYZ-refresh\", \"access_token\":\"at-123\"}",
            "id_token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5PT0=;",
            "https://acct.blob.core.windows.net/c?sv=2022&sig=abc%2Bdef",
            "client_secret=very-secret&client_id=public-id",
        ];
        for case in cases {
            let out = redact(case);
            for secret in [
                "abcdef123456",
                "0.AAAA-secret-code",
                "s3cr3tstate",
                "1.AXYZ-refresh",
                "at-123",
                "c2lnbmF0dXJl",
                "c2VjcmV0a2V5PT0",
                "abc%2Bdef",
                "very-secret",
            ] {
                assert!(!out.contains(secret), "{secret} leaked from {case:?}: {out}");
            }
        }
        assert!(redact("client_secret=very-secret&client_id=public-id").contains("client_id=public-id"));
    }

    #[test]
    fn blanks_registered_secret_values_anywhere() {
        register_secret(&SecretString::new("registered-secret-value-42"));
        let out = redact("oops the key registered-secret-value-42 ended up in an error");
        assert!(!out.contains("registered-secret-value-42"));
        assert_eq!(redact("nothing to see"), "nothing to see");
    }
}
