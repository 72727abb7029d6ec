//! Accepting connections: the first stop of every request, and what keeps
//! idle, stuck or greedy peers from holding the host's connections and
//! descriptors. From here a request goes one way: to the route table
//! ([`crate::server::handle`]), which hands WebSocket upgrades to
//! [`crate::ws`]. Nothing here knows a route or a frame.
//!
//! - **Timeouts before a request is read.** Every TCP connection is served
//!   by hyper with a timer and `header_read_timeout` =
//!   `config.header_timeout`. In hyper 1.x that timer starts whenever the
//!   connection waits for a request head: right after accept (a peer that
//!   sends nothing), while a head arrives byte by byte (slowloris), and
//!   again after each response on a keep-alive connection. So the same
//!   value is the idle keep-alive timeout.
//! - **Per-IP cap.** Open TCP connections are counted per peer IP at
//!   accept ([`IpLimiter`]); the slot travels with the request as a
//!   [`ConnectionGuard`], so a WebSocket keeps its count until it closes. A
//!   connection over `config.max_connections_per_ip` is answered HTTP 429
//!   `ip-connection-limit-exceeded` (same JSON shape and `X-Error-Code`
//!   header as `connection-limit-exceeded`) and closed; at most
//!   [`MAX_REFUSING`] such answers are in flight, further ones are closed
//!   at once without a word.
//! - **Rate-limited accept errors** ([`AcceptErrors`]): at most one log line
//!   per second, with the number of failures not logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::codes::{CloseReason, HttpCode};
use crate::engine::Command;
use crate::http::{ConnectionGuard, HttpResponse, PeerAddr};
use crate::shared::Shared;

/// Over-the-per-IP-cap connections answered with a 429 at the same time;
/// beyond that they are closed without an answer.
pub const MAX_REFUSING: usize = 64;

/// Serves HTTP and WebSocket connections on `listener` until `shutdown`
/// completes, then shuts down in order: signal every task
/// ([`crate::shutdown`]), stop accepting (the listener is
/// closed, so new connections are refused), let writers flush what is
/// queued followed by close 1001 `server-shutdown:` for up to
/// `config.shutdown_grace`, then drop what is still queued so the close goes
/// out next, and wait a last moment for the writers.
///
/// Each accepted connection is served by [`serve_tcp`] (header
/// timeout, per-IP cap). A failed accept (typically EMFILE) backs off for
/// 100 ms and is logged at most once per second.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    if let Some(timeout) = shared.config.idle_timeout {
        // One sweeper for all connections: no per-connection timer.
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(timeout / 3);
            loop {
                tokio::select! {
                    _ = ticker.tick() => shared.engine.send(Command::SweepIdle { timeout }),
                    () = shared.shutdown.stopped() => break,
                }
            }
        });
    }
    crate::ws::start_writers(shared.config.writer_threads);
    let ips = IpLimiter::new(shared.config.max_connections_per_ip);
    let accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                accept_errors.failed(&err);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        accept_errors.succeeded();
        tokio::spawn(serve_tcp(stream, peer, shared.clone(), ips.clone()));
    }
    drop(listener);
    shared.shutdown.signal();
    let why = CloseReason::ServerShutdown;
    let reason = why.with("the server is restarting; reconnect");
    tracing::info!(
        clients = shared.open_connections(),
        grace_s = shared.config.shutdown_grace.as_secs_f64(),
        "stopped accepting; flushing clients"
    );
    shared.engine.send(Command::CloseAll {
        code: why.code(),
        reason: reason.clone(),
        discard_queued: false,
    });
    if !shared
        .shutdown
        .clients_done(shared.config.shutdown_grace)
        .await
    {
        let left = shared.open_connections();
        tracing::warn!(
            left,
            "grace period over; closing clients that are still behind"
        );
        shared.engine.send(Command::CloseAll {
            code: why.code(),
            reason,
            discard_queued: true,
        });
        shared.shutdown.clients_done(Duration::from_secs(1)).await;
    }
    // Requests still arriving now find no log and answer 503; the file is
    // closed cleanly so the next start needs no recovery.
    shared.engine.close_log().await;
}

/// Serves one accepted TCP connection (HTTP, possibly upgraded to a
/// WebSocket) with the header timeout and the per-IP cap applied.
pub async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ips: Arc<IpLimiter>,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout);
    match ips.reserve(peer.ip()) {
        Ok(slot) => {
            let slot = slot.map(Arc::new);
            let service = service_fn(move |mut request: Request<Incoming>| {
                if let Some(slot) = &slot {
                    request
                        .extensions_mut()
                        .insert(ConnectionGuard::new(slot.clone()));
                }
                request.extensions_mut().insert(PeerAddr(peer));
                crate::server::handle(request, shared.clone())
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(%err, "http connection ended with an error");
            }
        }
        Err(limit) => {
            crate::metrics::get().ip_connections_refused.inc();
            ips.refused_log.note(|suppressed| {
                tracing::warn!(
                    ip = %peer.ip(),
                    limit,
                    suppressed,
                    "connection refused: per-IP limit reached"
                )
            });
            let Some(_refusing) = ips.start_refusal() else {
                return; // flooded: close without an answer
            };
            builder.keep_alive(false);
            let service = service_fn(move |_request: Request<Incoming>| async move {
                Ok::<_, Infallible>(ip_limit_response(limit))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    }
}

fn ip_limit_response(limit: usize) -> HttpResponse {
    crate::http::coded_error(
        StatusCode::TOO_MANY_REQUESTS,
        HttpCode::IpConnectionLimitExceeded,
        &format!("this server accepts at most {limit} connections from one address"),
    )
}

/// Open TCP connections per peer IP.
pub struct IpLimiter {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    refusing: AtomicUsize,
    refused_log: RateLimitedLog,
}

impl IpLimiter {
    /// A limiter allowing `limit` connections per IP (0: unlimited).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
            refused_log: RateLimitedLog::new(Duration::from_secs(1)),
        })
    }

    /// A slot for one more connection from `ip` (`Ok(None)`: unlimited, not
    /// counted), or `Err(limit)` when `ip` already has `limit` open.
    pub fn reserve(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, usize> {
        if self.limit == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return Err(self.limit);
        }
        *count += 1;
        Ok(Some(IpSlot {
            limiter: self.clone(),
            ip,
        }))
    }

    fn start_refusal(self: &Arc<Self>) -> Option<Refusing> {
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Refusing(self.clone()))
    }
}

/// One counted connection from an IP; released on drop.
pub struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

struct Refusing(Arc<IpLimiter>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lets a log line through at most once per `every`, counting the ones
/// held back.
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// A limiter letting one line through per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the number of lines suppressed since the last one,
    /// if a line is due; otherwise counts this one as suppressed.
    pub fn note(&self, log: impl FnOnce(u64)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        log(suppressed);
    }

    /// Lines suppressed since the last one let through, resetting the count.
    pub fn take_suppressed(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.1)
    }
}

/// Failed accepts (typically EMFILE): logged at most once per second.
pub struct AcceptErrors(RateLimitedLog);

impl Default for AcceptErrors {
    fn default() -> Self {
        Self(RateLimitedLog::new(Duration::from_secs(1)))
    }
}

impl AcceptErrors {
    /// Records a failed accept, logging it if a line is due.
    pub fn failed(&self, err: &std::io::Error) {
        crate::metrics::get().accept_errors.inc();
        self.0.note(
            |suppressed| tracing::error!(%err, suppressed, "accept failed; retrying in 100ms"),
        );
    }

    /// Records a successful accept: reports failures not yet logged.
    pub fn succeeded(&self) {
        let suppressed = self.0.take_suppressed();
        if suppressed > 0 {
            tracing::warn!(suppressed, "accepting again after failed accepts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limited_log_counts_what_it_holds_back() {
        let log = RateLimitedLog::new(Duration::from_secs(60));
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.note(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, vec![0]);
        assert_eq!(log.take_suppressed(), 4);
    }

    #[test]
    fn ip_slots_are_counted_and_released() {
        let limiter = IpLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limiter.reserve(ip).unwrap();
        let _b = limiter.reserve(ip).unwrap();
        assert_eq!(limiter.reserve(ip).err(), Some(2));
        assert!(limiter.reserve("127.0.0.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(limiter.reserve(ip).is_ok());
        assert!(IpLimiter::new(0).reserve(ip).unwrap().is_none());
    }
}
