//! The retry and per-try timeout policies on the Key Vault client's pipeline.

use super::*;

/// azure_core's retry loop (it honours `Retry-After` on 429 and 503) with exponential
/// back-off, and with the server's requested delay capped at `max_retry_after`.
#[derive(Debug)]
pub(super) struct BoundedRetry {
    pub(super) max_retries: u32,
    pub(super) initial: Duration,
    pub(super) max_backoff: Duration,
    pub(super) max_retry_after: Duration,
    pub(super) max_elapsed: Duration,
    pub(super) headers: RetryHeaders,
}

impl BoundedRetry {
    pub(super) fn new(tuning: &KeyVaultTuning) -> Self {
        Self {
            max_retries: tuning.max_retries,
            initial: tuning.initial_backoff,
            max_backoff: tuning.max_backoff,
            max_retry_after: tuning.max_retry_after,
            max_elapsed: tuning.max_retry_elapsed,
            headers: RetryHeaders { retry_headers: vec![X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER] },
        }
    }

    pub(super) fn backoff(&self, retry_count: u32) -> Duration {
        let exponential = self.initial.saturating_mul(2u32.saturating_pow(retry_count.saturating_sub(1)));
        let jitter = Duration::from_millis(u64::from(rand::random::<u8>()));
        (exponential + jitter).min(self.max_backoff)
    }
}

#[async_trait]
impl RetryPolicy for BoundedRetry {
    fn is_expired(&self, duration_since_start: azure_core::time::Duration, retry_count: u32) -> bool {
        let elapsed = Duration::try_from(duration_since_start).unwrap_or_default();
        retry_count >= self.max_retries || elapsed >= self.max_elapsed
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        // Empty: the SDK's defaults, 408, 429, 500, 502, 503 and 504.
        &[]
    }

    fn sleep_duration(&self, retry_count: u32) -> azure_core::time::Duration {
        azure_core::time::Duration::try_from(self.backoff(retry_count)).unwrap_or(azure_core::time::Duration::ZERO)
    }

    async fn wait(&self, retry_count: u32, retry_after: Option<azure_core::time::Duration>) {
        let backoff = self.backoff(retry_count);
        let delay = match retry_after.and_then(|d| Duration::try_from(d).ok()) {
            Some(server) => server.min(self.max_retry_after).max(backoff.min(self.max_retry_after)),
            None => backoff,
        };
        tracing::debug!(retry = retry_count, delay_ms = delay.as_millis() as u64, "retrying a Key Vault request");
        tokio::time::sleep(delay).await;
    }
}

/// Bounds one exchange, body included, so a hung connection becomes an I/O error that the
/// retry policy retries (the default transport's own read timeout is 60 s).
#[derive(Debug)]
pub(super) struct TryTimeout(pub(super) Duration);

#[async_trait]
impl Policy for TryTimeout {
    // azure_core's pipeline always ends with its transport policy, so a policy's `next` is
    // never empty (our own pipeline, not outside input).
    #[allow(clippy::indexing_slicing)]
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let exchange = async {
            let response = next[0].send(ctx, request, &next[1..]).await?;
            let (status, headers, body) = response.deconstruct();
            let bytes = body.collect().await?;
            Ok(AsyncRawResponse::from_bytes(status, headers, bytes))
        };
        match tokio::time::timeout(self.0, exchange).await {
            Ok(result) => result,
            Err(_) => Err(azure_core::Error::with_message(
                ErrorKind::Io,
                format!("no complete answer from Key Vault within {:?}", self.0),
            )),
        }
    }
}
