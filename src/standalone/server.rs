//! The standalone server's own accept loop: what a connection may cost when the bridge faces
//! the network itself, with no host or front end in between. `axum::serve` has no header-read
//! timeout, head-size cap, connection cap or write deadline; hyper's connection builder has the
//! first three, and [`StallGuard`] adds the last.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::handlers::App;

/// What one connection and one request may cost a standalone server (it faces the network
/// itself, with no host or front end in between).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one address may hold at once; more are closed as they arrive.
    pub max_connections_per_address: usize,
    /// A request's head (request line and headers) must arrive within this; a keep-alive
    /// connection idle this long is closed; a response the client takes none of for this long
    /// ends its connection.
    pub header_timeout: Duration,
    /// The request line and headers together, in bytes.
    pub max_head_bytes: usize,
    /// Header lines per request.
    pub max_headers: usize,
    /// The body must arrive within this (408 otherwise).
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_address: 16,
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            max_headers: 64,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the connections in hand
/// finish. Unlike `axum::serve`, every connection is bounded: at most
/// [`ServerLimits::max_connections`] at once and [`ServerLimits::max_connections_per_address`]
/// from one address, the head within a time and a size, an idle keep-alive connection closed,
/// and a response its client stops reading abandoned (`StallGuard`): a slow, idle or
/// non-reading client cannot hold the server's memory or its connections for ever. Every time
/// the cap is met is counted for status.
pub async fn serve(
    app: &App,
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_address = PerAddress::default();
    tokio::pin!(shutdown);
    loop {
        if open.available_permits() == 0 {
            app.webhook_counters().connection_cap_reached();
            tracing::warn!(max = limits.max_connections, "every connection is in use; new ones wait");
        }
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "a connection could not be accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(held) = per_address.take(peer.ip(), limits.max_connections_per_address) else {
            app.webhook_counters().connection_cap_reached();
            tracing::warn!(peer = %peer.ip(), max = limits.max_connections_per_address,
                "a connection was closed: its address holds the most connections one may");
            continue;
        };
        // The peer's address rides along, for the refusal counters (`TRUSTED_PROXY_HOPS`).
        let with_peer = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(with_peer);
        let io = TokioIo::new(StallGuard::new(stream, limits.header_timeout));
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
            drop((permit, held));
        });
    }
    drop(listener);
    // The connections in hand finish their requests; after a while, they are dropped.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("connections still open at shutdown were dropped"),
    }
    Ok(())
}

/// Connections held, by the address they came from.
#[derive(Clone, Default)]
struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`PerAddress`], given back when dropped.
struct Held {
    counts: PerAddress,
    address: IpAddr,
}

impl PerAddress {
    fn take(&self, address: IpAddr, max: usize) -> Option<Held> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_default();
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(Held { counts: self.clone(), address })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// A connection's stream with a deadline on writing: once a write, flush or shutdown has to
/// wait, the client has `limit` to take at least [`MIN_PROGRESS_BYTES`]; otherwise the write
/// fails and hyper closes the connection. hyper has a timeout for reading a head but none for
/// writing, so a client that sends requests and never reads the answers once held every
/// connection of the server; one that read a few kilobytes every few seconds, and so always
/// made *some* progress, held them as well (both found by the outside review). A response
/// small enough for the socket's buffer never waits, so ordinary clients never meet this.
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written since the deadline was armed.
    moved: usize,
    /// When the last write went through, and whether one has waited since: a deadline armed
    /// for an earlier response that was then taken in full must not cut a later one short.
    last_through: tokio::time::Instant,
    waiting_since_last: bool,
}

/// What a client must take of a waiting response, within the limit, to keep its connection.
pub const MIN_PROGRESS_BYTES: usize = 64 * 1024;

impl<T> StallGuard<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        let last_through = tokio::time::Instant::now();
        Self { inner, limit, stalled: None, moved: 0, last_through, waiting_since_last: false }
    }

    /// A deadline left armed by a response the client then took (nothing waiting since), with
    /// the connection quiet for the limit or longer, belongs to that response: a new one starts
    /// with none. A client that trickles is always waited on, so it never gets here.
    fn forget_an_old_deadline(&mut self) {
        if self.stalled.is_some() && !self.waiting_since_last && self.last_through.elapsed() >= self.limit {
            (self.stalled, self.moved) = (None, 0);
        }
    }

    /// After the inner stream said `Pending`: still waiting, or out of time.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let limit = self.limit;
        let deadline = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took none of the response for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `written` is how many bytes a ready write moved (none for flush and shutdown).
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
        written: impl Fn(&R) -> usize,
    ) -> Poll<std::io::Result<R>> {
        self.forget_an_old_deadline();
        match polled {
            Poll::Pending => {
                self.waiting_since_last = true;
                self.waiting(cx)
            }
            Poll::Ready(Ok(done)) => {
                (self.last_through, self.waiting_since_last) = (tokio::time::Instant::now(), false);
                if self.stalled.is_some() {
                    self.moved = self.moved.saturating_add(written(&done));
                    if self.moved >= MIN_PROGRESS_BYTES {
                        (self.stalled, self.moved) = (None, 0);
                    }
                }
                Poll::Ready(Ok(done))
            }
            failed => failed,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, polled, |n| *n)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled, |_| 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, polled, |_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes until the guard gives up or `total` bytes are through; answers how many went.
    async fn write_all(guard: &mut StallGuard<tokio::io::DuplexStream>, total: usize) -> std::io::Result<usize> {
        let chunk = vec![b'x'; 4096];
        let mut sent = 0;
        while sent < total {
            sent += guard.write(&chunk).await?;
        }
        Ok(sent)
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_cut_off() {
        let (server, _client) = tokio::io::duplex(4096);
        let mut guard = StallGuard::new(server, Duration::from_millis(300));
        let failed = write_all(&mut guard, 1 << 20).await.unwrap_err();
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
    }

    /// Found by the second outside review: a client reading a few kilobytes every few seconds
    /// made some progress each time, reset the deadline, and held its connection for ever.
    #[tokio::test]
    async fn a_client_that_takes_a_trickle_is_cut_off_too() {
        let (server, mut client) = tokio::io::duplex(4096);
        let trickle = tokio::spawn(async move {
            let mut buffer = [0u8; 1024];
            while client.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut guard = StallGuard::new(server, Duration::from_millis(500));
        let failed = write_all(&mut guard, 1 << 20).await.unwrap_err();
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        drop(guard);
        trickle.await.unwrap();
    }

    /// A response larger than the socket's buffer, taken slowly but in full, armed the deadline;
    /// the next response on the same connection, a while later, must not meet it already spent.
    #[tokio::test]
    async fn a_slow_reader_keeps_its_connection_for_the_next_response() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut guard = StallGuard::new(server, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            let mut total = 0;
            // The first response, 40 KiB: taken after a pause, in full.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while total < 40 * 1024 {
                total += client.read(&mut buffer).await.unwrap();
            }
            // The next one, after a quiet second: taken after a pause again.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            while total < 80 * 1024 {
                total += client.read(&mut buffer).await.unwrap();
            }
            total
        });
        assert_eq!(write_all(&mut guard, 40 * 1024).await.unwrap(), 40 * 1024);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(write_all(&mut guard, 40 * 1024).await.unwrap(), 40 * 1024, "the second response was cut off");
        assert_eq!(reader.await.unwrap(), 80 * 1024);
    }

    #[tokio::test]
    async fn a_client_that_reads_is_never_cut_off() {
        let (server, mut client) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let mut guard = StallGuard::new(server, Duration::from_millis(300));
        assert_eq!(write_all(&mut guard, 1 << 20).await.unwrap(), 1 << 20);
        guard.shutdown().await.unwrap();
        drop(guard);
        assert_eq!(reader.await.unwrap(), 1 << 20);
    }
}
