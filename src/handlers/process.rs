//! `process`: the queue function. Its messages are work that must outlive the invocation that
//! asked for it (under the Functions host, a task left running after an answer may be frozen or
//! lost with the instance): each connection's sync (queued by the timer's fan-out, and the first
//! one after a consent), and every push the webhook stored.

use super::sync::{log_summary, pull, run_deadline};
use super::{App, InvocationError, QueueInput};
use crate::landing::Outcome;
use crate::sync::RunOutcome;
use crate::truecontext::Credentials;
use crate::webhook::counters::Counters;
use crate::webhook::{Documents, IncomingMessage, Processed, PushRef};

/// Queues the first sync of `connection`. A failure is logged, not returned: the next timer
/// tick syncs the connection anyway.
pub async fn queue_first_sync(app: &App, connection: &str) -> bool {
    let Ok(connection_id) = crate::naming::ConnectionId::parse(connection) else {
        tracing::warn!(connection, "the first sync was not queued: not a connection id");
        return false;
    };
    let body = IncomingMessage::Sync { connection: connection_id }.to_body();
    let queue = &app.settings.queues.incoming;
    match app.stores.queues.enqueue(queue, &body, std::time::Duration::ZERO).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(connection, error = %e, "the first sync could not be queued; the next timer run syncs it");
            false
        }
    }
}

pub async fn run(app: &App, input: QueueInput) -> Result<(), InvocationError> {
    let message =
        IncomingMessage::parse(&input.id, &input.body).map_err(|e| InvocationError::InvalidInput(e.to_string()))?;
    match message {
        IncomingMessage::Sync { connection } => sync(app, &connection).await,
        IncomingMessage::Push(push_ref) => push(app, &input, push_ref).await,
    }
}

/// Lands one stored push. A failure is returned, so the queue delivers it again (with backoff);
/// on its last allowed delivery it is recorded as poisoned and alerted once, and the front door
/// (or the host) moves it to `<queue>-poison`, where `tcbridge poison replay` finds it.
async fn push(app: &App, input: &QueueInput, push: PushRef) -> Result<(), InvocationError> {
    let settings = &app.settings;
    let counters = app.webhook_counters();
    let landing = app.landing();
    let tokens = app.tokens();
    let sources = app.sources().await?;
    // The push's connection signs in its own way (an added API key, its consent); one the
    // bridge does not read any more falls back to the configured credentials.
    let credentials = match sources.find(&push.connection) {
        Some(source) => Credentials::of_source(source, &settings.truecontext, &tokens).ok(),
        None => Credentials::from_settings(&settings.truecontext, &tokens),
    };
    let documents = Documents { client: app.truecontext(), credentials: credentials.as_ref() };
    let alert_webhook = settings.tokens.alert_webhook.as_ref();
    let processing =
        crate::webhook::process(&app.stores, &settings.landing.container, &landing, &documents, &push, alert_webhook);
    // A panic is this message's failure like any other: recorded, retried, then poisoned with
    // its row, counter and alert (before, it escaped past all three).
    let result = crate::telemetry::isolate(processing).await;
    let outcome = match result.map_err(|panicked| panicked.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(processed) => {
            match &processed {
                Processed::Landed(landed) => {
                    Counters::bump(&counters.processed);
                    if matches!(landed.outcome, Outcome::New | Outcome::Changed) {
                        counters.landed("push", &push.connection, std::slice::from_ref(&landed.id), 1);
                    }
                    tracing::info!(connection = %push.connection, identifier = %landed.id, outcome = ?landed.outcome, version = landed.version, "push processed");
                }
                Processed::AlreadyDone => {
                    tracing::info!(connection = %push.connection, key = %push.key, "push already processed")
                }
                Processed::Quarantined(kept) => {
                    Counters::bump(&counters.quarantined);
                    tracing::warn!(connection = %push.connection, key = %push.key, reason = %kept.row.reason, "push quarantined");
                }
                Processed::Gone => counters.gone(),
                Processed::Unknown => {
                    tracing::warn!(connection = %push.connection, key = %push.key, "no stored push for this message; nothing to do")
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    counters.flush_soon(&app.stores);
    let Err(error) = outcome else { return Ok(()) };
    let last = input.dequeue_count >= settings.queues.max_dequeue_count;
    if let Err(e) = crate::webhook::record_failure(&app.stores, &push, &error, last).await {
        tracing::warn!(error = %e, "the failure of a push could not be recorded");
    }
    if last {
        Counters::bump(&counters.poisoned);
        let reason = format!(
            "a pushed submission could not be processed after {} deliveries and was moved to {}-poison: {error}; \
             fix the cause, then `tcbridge poison replay --all`",
            input.dequeue_count, settings.queues.incoming
        );
        let alert = crate::alerts::Alert::new(
            crate::alerts::AlertKind::PushPoisoned,
            Some(&push.connection),
            "poisoned",
            &push.key,
            &reason,
        );
        if let Err(e) = crate::alerts::raise(&app.stores, settings.tokens.alert_webhook.as_ref(), alert).await {
            tracing::warn!(error = %e, "the poisoned-push alert could not be recorded");
        }
    } else {
        Counters::bump(&counters.retried);
    }
    Err(InvocationError::Unavailable(format!("the push {} of {} failed: {error}", push.key, push.connection)))
}

/// One connection's queued sync. It never fails the message, whatever stopped the run: the next
/// timer tick is its retry (it queues the connection again once this run is recorded), and
/// status says why runs stop. Failing it made the queue deliver it again beside the tick's
/// new one, and poison it within a minute under the host's 5 s retries.
async fn sync(app: &App, connection: &str) -> Result<(), InvocationError> {
    // Syncs take at most half of this process's places on the queue, so pushes behind them
    // are never held up for minutes; one that finds none free goes back on the queue for a few
    // seconds (its queued mark stays, so the tick does not queue it twice). Giving it back to
    // the next tick instead made 50 connections take seven ticks.
    let Some(_place) = app.sync_place() else {
        let later = std::time::Duration::from_millis(1_000 + u64::from(rand::random::<u16>() % 1_000));
        let again = crate::webhook::IncomingMessage::Sync {
            connection: crate::naming::ConnectionId::parse(connection)
                .map_err(|e| InvocationError::InvalidInput(e.to_string()))?,
        };
        if let Err(e) = app.stores.queues.enqueue(&app.settings.queues.incoming, &again.to_body(), later).await {
            tracing::warn!(connection, error = %e, "a waiting sync could not be queued again; the next tick queues it");
            crate::sync::clear_queued(&app.stores, connection).await?;
        }
        return Ok(());
    };
    // Inside the message's visibility too (a minute at least), so it is not handed out again
    // while it runs; a redelivery would find the lease held and end at once anyway.
    let visibility = app.settings.queues.visibility_timeout;
    let visible_again =
        visibility.saturating_sub(std::time::Duration::from_secs(30)).max(std::time::Duration::from_secs(60));
    let deadline = run_deadline(app).min(tokio::time::Instant::now() + visible_again);
    match pull(app, connection, None, deadline).await? {
        RunOutcome::Busy => {
            // Running elsewhere, or held by a run that died: either way the next tick queues it.
            crate::sync::clear_queued(&app.stores, connection).await?;
        }
        RunOutcome::Ran(summary) => {
            if summary.documents_landed > 0 {
                // For the status page's chart and latest list.
                let counters = app.webhook_counters();
                counters.landed("sync", connection, &summary.latest, u64::from(summary.documents_landed));
                counters.flush_soon(&app.stores);
            }
            log_summary(&summary);
        }
    }
    Ok(())
}
