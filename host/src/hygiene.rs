//! Connection hygiene: what keeps idle, stuck, greedy or misbehaving
//! peers from holding the host's connections and descriptors.
//!
//! - **Timeouts before a request is read.** Every TCP connection is served
//!   by hyper with a timer and `header_read_timeout` =
//!   `config.header_timeout`. In hyper 1.x that timer starts whenever the
//!   connection waits for a request head: right after accept (a peer that
//!   sends nothing), while a head arrives byte by byte (slowloris), and
//!   again after each response on a keep-alive connection. So the same
//!   value is the idle keep-alive timeout. A WebSocket upgrade that does not
//!   complete within the same time is dropped ([`finish_upgrade`]).
//! - **Per-IP cap.** Open TCP connections are counted per peer IP at
//!   accept ([`IpLimiter`]); a WebSocket keeps its count until it closes. A
//!   connection over `config.max_connections_per_ip` is answered HTTP 429
//!   `ip-connection-limit-exceeded` (same JSON shape and `X-Error-Code`
//!   header as `connection-limit-exceeded`) and closed; at most
//!   [`MAX_REFUSING`] such answers are in flight, further ones are closed
//!   at once without a word.
//! - **Rate-limited accept errors** ([`AcceptErrors`]): at most one log line
//!   per second, with the number of failures not logged.
//! - **Close codes** ([`close_for_read_error`]): a client breaking the
//!   protocol is closed with 1002 or 1007 and a reason saying what was
//!   wrong; an oversized message with 1009 `message-too-large:`.
//! - **Lingering close** ([`close_and_linger`]): after the server's close
//!   frame is written, the socket is read (and the input discarded) until
//!   the client's close frame, end of input or [`LINGER`], so the close
//!   frame is not lost to a TCP reset caused by unread input.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, Stream, StreamExt};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::task::{JoinError, JoinHandle};

use crate::outbox::{Outbox, Outgoing};
use crate::server::HttpResponse;
use crate::{Config, Shared};

/// How long a closed connection is read (and discarded) while waiting for
/// the client's close frame.
pub const LINGER: Duration = Duration::from_secs(2);

/// Over-the-per-IP-cap connections answered with a 429 at the same time;
/// beyond that they are closed without an answer.
pub const MAX_REFUSING: usize = 64;

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
                    request.extensions_mut().insert(slot.clone());
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
            metrics::counter!("vista_ip_connections_refused_total").increment(1);
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
    crate::server::coded_error(
        StatusCode::TOO_MANY_REQUESTS,
        "ip-connection-limit-exceeded",
        &format!("this server accepts at most {limit} connections from one address"),
    )
}

/// The client address of a request (set by [`serve_tcp`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Takes the per-IP slot [`serve_tcp`] attached to an upgrade request, so
/// the WebSocket task can hold it for the connection's lifetime.
pub fn take_ip_slot(request: &mut Request<Incoming>) -> Option<Arc<IpSlot>> {
    request.extensions_mut().remove::<Arc<IpSlot>>()
}

/// Awaits a WebSocket upgrade, giving up after `config.header_timeout`.
pub async fn finish_upgrade<F, T, E>(upgrade: F, config: &Config) -> Option<T>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let result = match config.header_timeout {
        Some(limit) => match tokio::time::timeout(limit, upgrade).await {
            Ok(result) => result,
            Err(_) => {
                tracing::debug!("websocket upgrade timed out");
                return None;
            }
        },
        None => upgrade.await,
    };
    result
        .map_err(|err| tracing::debug!(%err, "websocket handshake failed"))
        .ok()
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
        metrics::counter!("vista_accept_errors_total").increment(1);
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

/// The close code and reason for a read error the client caused, or `None`
/// when the connection is simply gone (reset, EOF, I/O error).
pub fn close_for_read_error(err: &tungstenite::Error) -> Option<(u16, String)> {
    let (code, reason) = match err {
        tungstenite::Error::Capacity(err) => (1009, format!("message-too-large: {err}")),
        tungstenite::Error::Utf8(_) => (
            1007,
            "invalid-utf8: a text message is not valid UTF-8".to_owned(),
        ),
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::ReceivedAfterClosing
            | ProtocolError::SendAfterClosing,
        ) => return None,
        tungstenite::Error::Protocol(err) => (1002, format!("protocol-error: {err}")),
        _ => return None,
    };
    Some((code, truncate_reason(reason)))
}

/// Close reasons are limited to 123 bytes of UTF-8.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Reads and discards the raw bytes under a WebSocket, for when the
/// WebSocket layer can no longer parse them.
pub trait RawDrain {
    /// Reads and discards until end of input, an error or `until`.
    fn drain_raw(&mut self, until: tokio::time::Instant) -> impl Future<Output = ()> + Send;
}

impl<T> RawDrain for hyper_tungstenite::WebSocketStream<T>
where
    T: AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn drain_raw(&mut self, until: tokio::time::Instant) {
        let io = self.get_mut();
        let mut buffer = vec![0u8; 16 << 10];
        while let Ok(Ok(read)) = tokio::time::timeout_at(until, io.read(&mut buffer)).await {
            if read == 0 {
                break;
            }
        }
    }
}

/// Why a connection's reader loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed (close frame or end of input).
    ByPeer,
    /// Reading failed; the WebSocket layer can no longer be trusted.
    ReadError,
    /// The writer finished (the server closed, or writing failed).
    Writer,
}

/// What the writer task returns: its sink back, and how writing went.
pub type WriterOutput<K> = (K, Result<(), tungstenite::Error>);

/// Runs [`crate::connection::write_loop`] and hands the sink back, so the
/// socket can be reunited for [`close_and_linger`].
pub async fn write_returning_sink<K>(mut sink: K, outbox: Arc<Outbox>) -> WriterOutput<K>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let result = crate::connection::write_loop(&mut sink, outbox).await;
    (sink, result)
}

/// Ends a connection: makes sure a close frame is written (1000 unless one
/// is queued already; the writer gets 5 s), then lingers: reads and discards
/// the client's input until its close frame, end of input or [`LINGER`].
pub async fn close_and_linger<S>(
    stream: SplitStream<S>,
    mut writer: JoinHandle<WriterOutput<SplitSink<S, Message>>>,
    finished: Option<Result<WriterOutput<SplitSink<S, Message>>, JoinError>>,
    outbox: &Outbox,
    ended: Ended,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + RawDrain
        + Unpin,
{
    let finished = match finished {
        Some(finished) => finished,
        None => {
            outbox.push_reply(Outgoing::Close {
                code: 1000,
                reason: String::new(),
            });
            match tokio::time::timeout(Duration::from_secs(5), &mut writer).await {
                Ok(finished) => finished,
                Err(_) => {
                    writer.abort();
                    return;
                }
            }
        }
    };
    let Ok((sink, Ok(()))) = finished else {
        return; // writing failed: the socket is gone
    };
    if ended == Ended::ByPeer {
        return;
    }
    linger(stream, sink, ended).await;
}

async fn linger<S>(mut stream: SplitStream<S>, sink: SplitSink<S, Message>, ended: Ended)
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + RawDrain
        + Unpin,
{
    let until = tokio::time::Instant::now() + LINGER;
    if ended != Ended::ReadError {
        loop {
            match tokio::time::timeout_at(until, stream.next()).await {
                Err(_) | Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return,
                Ok(Some(Ok(_))) => {} // discarded
                Ok(Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Io(_),
                ))) => return,
                Ok(Some(Err(_))) => break, // unparseable: drain raw bytes
            }
        }
    }
    if let Ok(mut socket) = stream.reunite(sink) {
        socket.drain_raw(until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_map_to_1002_and_utf8_to_1007() {
        let (code, reason) = close_for_read_error(&tungstenite::Error::Protocol(
            ProtocolError::NonZeroReservedBits,
        ))
        .unwrap();
        assert_eq!(code, 1002);
        assert!(reason.starts_with("protocol-error: "), "{reason}");
        let (code, _) = close_for_read_error(&tungstenite::Error::Utf8("x".into())).unwrap();
        assert_eq!(code, 1007);
        assert!(close_for_read_error(&tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
        ))
        .is_none());
        assert!(close_for_read_error(&tungstenite::Error::ConnectionClosed).is_none());
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        assert_eq!(truncate_reason("é".repeat(100)).len(), 122);
    }

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
