//! One WebSocket client: a reader loop that handles client messages and a
//! writer loop that drains the connection's [`Outbox`].
//!
//! The reader turns client messages into engine commands; it never waits
//! for the engine. Subscribes are rate-limited per connection (a token
//! bucket: `--subscribe-rate` per second, bursts up to
//! `--subscribe-burst`); one over the limit gets a non-fatal
//! `rate-limit-exceeded` socket issue and is not registered.
//!
//! The writer takes everything queued in one go, feeds it to the socket and
//! flushes once, so a burst of frames costs one flush. Writers run on a
//! runtime of their own ([`writers`]), so a fan-out burst never queues
//! ahead of ingest answers and client reads. Snapshots are encoded
//! (JSON and gzip) on a blocking thread in batches of 50 then 100, once per
//! snapshot however many subscribers share it; async workers never
//! compress. Both loops are generic over `Sink`/`Stream` of tungstenite
//! messages so they can be driven without a socket.
//!
//! A read error the client caused closes it with a specific code and reason
//! (1009 `message-too-large:`, 1002 `protocol-error:`, 1007 `invalid-utf8:`;
//! see [`close::close_for_read_error`]). When the server closes, the
//! writer hands its sink back and the socket lingers: input is read and
//! discarded until the client's close frame, end of input or 2 s, so the
//! close frame is not lost to a reset ([`close::close_and_linger`]).

pub mod close;

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper_tungstenite::tungstenite::{
    self,
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message, Utf8Bytes,
};

use crate::auth::TokenBucket;
use crate::codes::{CloseReason, IssueCode};
use crate::engine::Command;
use crate::frame::{socket_issue, Frame};
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::{parse_client_message, ClientMessage};
use crate::shared::Shared;
use crate::vocab::ConnId;

/// Serves one upgraded WebSocket until either side closes it.
pub async fn serve<S>(
    socket: S,
    conn: ConnId,
    shared: Arc<Shared>,
    mut claims: Option<crate::auth::Claims>,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + close::RawDrain
        + Unpin
        + Send
        + 'static,
{
    use close::Ended;
    let (sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(conn, shared.config.outbox_bytes));
    shared.engine.send(Command::Connect {
        conn,
        outbox: outbox.clone(),
    });
    let mut limiter = TokenBucket::new(
        f64::from(shared.config.subscribe_rate),
        f64::from(shared.config.subscribe_burst),
    );
    crate::metrics::get().connections.inc();
    let mut writer = writers().spawn(close::write_returning_sink(sink, outbox.clone()));
    let mut writer_finished = None;
    let ended;
    loop {
        // A token ends at its `exp` unless a `refresh_auth` replaced it.
        let expires = claims.as_ref().map(|c| token_deadline(c.exp));
        tokio::select! {
            message = stream.next() => match message.inspect(|_| outbox.heard_from_client()) {
                Some(Ok(Message::Text(text))) => handle_text(&shared, conn, &outbox, &mut limiter, &mut claims, text.as_str()),
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => handle_text(&shared, conn, &outbox, &mut limiter, &mut claims, text),
                    Err(_) => reply_issue(&outbox, IssueCode::InvalidMessage, "binary message is not UTF-8 JSON"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    ended = Ended::ByPeer;
                    break;
                }
                Some(Ok(_)) => {} // ping/pong: answered by tungstenite
                Some(Err(err)) => {
                    tracing::debug!(conn, %err, "websocket read error");
                    if let Some((code, reason)) = close::close_for_read_error(&err) {
                        outbox.push_reply(Outgoing::Close { code, reason });
                    }
                    ended = Ended::ReadError;
                    break;
                }
            },
            finished = &mut writer => {
                writer_finished = Some(finished);
                ended = Ended::Writer;
                break;
            }
            () = tokio::time::sleep_until(expires.unwrap_or_else(far_future)), if expires.is_some() => {
                crate::metrics::get().token_expired_disconnects.inc();
                outbox.push_reply(Outgoing::Frame(socket_issue(IssueCode::TokenExpired,
                    "the token expired and no refresh_auth replaced it",
                    true,
                )));
                outbox.push_reply(Outgoing::close(
                    CloseReason::TokenExpired,
                    "the token expired; reconnect with a new one",
                ));
            }
        }
    }
    shared.engine.send(Command::Disconnect { conn });
    crate::metrics::get().connections.dec();
    // Boxed: the closing phase's state (timeouts, the writer's result)
    // would otherwise be part of every open connection's future.
    Box::pin(close::close_and_linger(
        stream,
        writer,
        writer_finished,
        &outbox,
        ended,
    ))
    .await;
}

/// When a token with this `exp` (seconds since the epoch) runs out.
fn token_deadline(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(exp).saturating_sub(now);
    tokio::time::Instant::now() + left
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

fn reply_issue(outbox: &Outbox, code: IssueCode, message: &str) {
    outbox.push_reply(Outgoing::Frame(socket_issue(code, message, false)));
}

fn handle_text(
    shared: &Shared,
    conn: ConnId,
    outbox: &Outbox,
    limiter: &mut TokenBucket,
    claims: &mut Option<crate::auth::Claims>,
    text: &str,
) {
    match parse_client_message(text) {
        Ok(ClientMessage::Subscribe(request, _))
            if claims
                .as_ref()
                .is_some_and(|c| !c.allows_view(&request.view, request.key.as_deref())) =>
        {
            crate::metrics::get().subscribes_forbidden.inc();
            reply_issue(
                outbox,
                IssueCode::Forbidden,
                &format!(
                    "the token does not allow {:?}{}",
                    request.view,
                    request
                        .key
                        .as_deref()
                        .map(|k| format!(" key {k:?}"))
                        .unwrap_or_default()
                ),
            );
        }
        Ok(ClientMessage::Subscribe(request, issue)) => {
            if limiter.take().is_err() {
                crate::metrics::get().subscribes_rate_limited.inc();
                reply_issue(
                    outbox,
                    IssueCode::RateLimitExceeded,
                    &format!(
                        "at most {} subscribes per second (bursts of {}); {:?} was not subscribed",
                        shared.config.subscribe_rate, shared.config.subscribe_burst, request.view
                    ),
                );
                return;
            }
            if let Some(issue) = issue {
                // A malformed `after`: said first, then served from the start.
                reply_issue(outbox, issue.code, &issue.message);
            }
            shared.engine.send(Command::Subscribe { conn, request });
        }
        Ok(ClientMessage::Unsubscribe { view, key }) => {
            shared.engine.send(Command::Unsubscribe { conn, view, key });
        }
        Ok(ClientMessage::Ping) => {}
        Ok(ClientMessage::RefreshAuth { token }) => {
            let answer = if shared.auth.jwt.is_none() {
                // Nothing to refresh: tokens are not checked.
                serde_json::json!({"success": true})
            } else {
                match shared.auth.subscriber(token.as_deref()) {
                    Ok(Some(fresh)) => {
                        crate::metrics::get().auth_refreshes.inc();
                        let expires_at = fresh.exp;
                        *claims = Some(fresh);
                        serde_json::json!({"success": true, "expiresAt": expires_at})
                    }
                    Ok(None) => serde_json::json!({"success": true}),
                    Err(err) => serde_json::json!({"success": false, "error": err.code().as_str()}),
                }
            };
            outbox.push_reply(Outgoing::Frame(Frame::text(&answer)));
        }
        Err(err) => {
            tracing::debug!(conn, %err, "invalid client message");
            reply_issue(outbox, err.code, &err.message);
        }
    }
}

fn to_message(frame: Frame) -> Message {
    if frame.text {
        Message::Text(Utf8Bytes::try_from(frame.bytes).expect("text frames are JSON, hence UTF-8"))
    } else {
        Message::Binary(frame.bytes)
    }
}

/// Drains the outbox into the sink until a close is written or the socket fails.
pub async fn write_loop<K>(mut sink: K, outbox: Arc<Outbox>) -> Result<(), tungstenite::Error>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut batch = VecDeque::new();
    loop {
        // Counted per drain, not per frame: one counter update per flush.
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut count = |len: usize| {
            frames += 1;
            bytes += len as u64;
        };
        if batch.capacity() > crate::outbox::SPARE_CAPACITY {
            batch = VecDeque::new();
        }
        outbox.drain_into(&mut batch).await;
        while let Some(item) = batch.pop_front() {
            match item {
                Outgoing::Live(data) => {
                    count(data.len());
                    sink.feed(Message::Binary(data)).await?
                }
                Outgoing::Ping => sink.feed(Message::Ping(bytes::Bytes::new())).await?,
                Outgoing::Frame(frame) => {
                    count(frame.bytes.len());
                    sink.feed(to_message(frame)).await?
                }
                Outgoing::Update(update) => {
                    // A slow client's merged update: encode (and gzip) it
                    // off the async workers.
                    let frame = tokio::task::spawn_blocking(move || (*update).into_frame())
                        .await
                        .expect("encoding does not panic");
                    count(frame.bytes.len());
                    sink.feed(to_message(frame)).await?
                }
                Outgoing::Snapshot(job) => {
                    for frame in job.snapshot.frames().await {
                        count(frame.bytes.len());
                        sink.feed(to_message(frame.clone())).await?;
                    }
                }
                Outgoing::Close { code, reason } => {
                    if code != 1000 {
                        tracing::info!(code, %reason, "closing client connection");
                    }
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    return Ok(());
                }
            }
        }
        sink.flush().await?;
        crate::metrics::get().frames_sent.inc_by(frames);
        crate::metrics::get().bytes_sent.inc_by(bytes);
    }
}

/// Threads the writers' runtime starts with (see [`start_writers`]).
static WRITER_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sizes the socket writers' runtime: `threads`, or half the cores (at
/// least one) for 0. Called once before serving; a runtime already started
/// keeps its size.
pub fn start_writers(threads: usize) {
    WRITER_THREADS.store(threads, std::sync::atomic::Ordering::Relaxed);
    writers();
}

/// The runtime socket writers run on: their own worker threads, apart from
/// the runtime that reads sockets and serves HTTP.
///
/// One ingest request wakes every subscriber's writer at once (1,000 tasks
/// for 1,000 subscribers). On a shared runtime the request's answer, the
/// next request's body and every client's subscribe wait in the same run
/// queues behind that burst, so a poster waits for the whole fan-out before
/// it can send again, and each writer finds one request's frames per wake:
/// one `send` per request per client, the largest part of fan-out CPU.
/// Apart, the other runtime stays responsive: the next request is projected
/// while the writers write, and a writer that runs later flushes several
/// requests' frames in one `send`.
///
/// Half the cores by default: writers are most of a fan-out's CPU, but the
/// engine, the projectors and the HTTP runtime need cores too, and fewer
/// writer threads than cores also means more frames per `send` (writers
/// fall a little behind and catch up in bulk) and no socket or reference
/// count bouncing between cores. On 2 cores one writer thread took the
/// fan-out from 0.68-0.83 to 0.48 µs of CPU per frame with the same
/// latency (BENCHMARKS.md, "Socket writers on their own runtime").
///
/// The runtime lives for the whole process (a runtime cannot be dropped
/// from async code), and sockets registered with the main runtime's I/O
/// driver can be written from it.
fn writers() -> &'static tokio::runtime::Handle {
    static WRITERS: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    WRITERS
        .get_or_init(|| {
            let threads = match WRITER_THREADS.load(std::sync::atomic::Ordering::Relaxed) {
                0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                n => n,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("vista-writer")
                .enable_all()
                .build()
                .expect("the socket writers' runtime starts")
        })
        .handle()
}
