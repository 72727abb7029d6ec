//! One WebSocket client: a reader loop that handles client messages and a
//! writer loop that drains the connection's [`Outbox`].
//!
//! The writer takes everything queued in one go, feeds it to the socket and
//! flushes once, so a burst of frames costs one flush. Snapshots are encoded
//! here, in batches of 50 then 100, off the engine lock, once per snapshot
//! however many subscribers share it. Both loops are
//! generic over `Sink`/`Stream` of tungstenite messages so they can be
//! driven without a socket.
//!
//! A read error the client caused closes it with a specific code and reason
//! (1009 `message-too-large:`, 1002 `protocol-error:`, 1007 `invalid-utf8:`;
//! see [`crate::hygiene::close_for_read_error`]). When the server closes, the
//! writer hands its sink back and the socket lingers: input is read and
//! discarded until the client's close frame, end of input or 2 s, so the
//! close frame is not lost to a reset ([`crate::hygiene::close_and_linger`]).

use std::sync::Arc;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper_tungstenite::tungstenite::{
    self,
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message, Utf8Bytes,
};

use crate::frame::{socket_issue, Frame};
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::{parse_client_message, ClientMessage};
use crate::views::ConnId;
use crate::Shared;

/// Serves one upgraded WebSocket until either side closes it.
pub async fn serve<S>(socket: S, conn: ConnId, shared: Arc<Shared>)
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + crate::hygiene::RawDrain
        + Unpin
        + Send
        + 'static,
{
    use crate::hygiene::Ended;
    let (sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(shared.config.outbox_bytes));
    shared.engine().connect(conn, outbox.clone());
    metrics::gauge!("vista_connections").increment(1.0);
    let mut writer = tokio::spawn(crate::hygiene::write_returning_sink(sink, outbox.clone()));
    let mut writer_finished = None;
    let ended;
    loop {
        tokio::select! {
            message = stream.next() => match message.inspect(|_| outbox.heard_from_client()) {
                Some(Ok(Message::Text(text))) => handle_text(&shared, conn, &outbox, text.as_str()),
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => handle_text(&shared, conn, &outbox, text),
                    Err(_) => reply_issue(&outbox, "invalid-message", "binary message is not UTF-8 JSON"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    ended = Ended::ByPeer;
                    break;
                }
                Some(Ok(_)) => {} // ping/pong: answered by tungstenite
                Some(Err(err)) => {
                    tracing::debug!(conn, %err, "websocket read error");
                    if let Some((code, reason)) = crate::hygiene::close_for_read_error(&err) {
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
        }
    }
    shared.engine().disconnect(conn);
    metrics::gauge!("vista_connections").decrement(1.0);
    crate::hygiene::close_and_linger(stream, writer, writer_finished, &outbox, ended).await;
}

fn reply_issue(outbox: &Outbox, code: &str, message: &str) {
    outbox.push_reply(Outgoing::Frame(socket_issue(code, message, false)));
}

fn handle_text(shared: &Shared, conn: ConnId, outbox: &Outbox, text: &str) {
    match parse_client_message(text) {
        Ok(ClientMessage::Subscribe(request)) => {
            shared.engine().subscribe(
                conn,
                &request,
                shared.config.max_subscriptions_per_connection,
            );
        }
        Ok(ClientMessage::Unsubscribe { view, key }) => {
            shared.engine().unsubscribe(conn, &view, key.as_deref());
        }
        Ok(ClientMessage::Ping) => {}
        Ok(ClientMessage::RefreshAuth) => {
            outbox.push_reply(Outgoing::Frame(Frame::text(
                &serde_json::json!({"success": true}),
            )));
        }
        Err(err) => {
            tracing::debug!(conn, %err, "invalid client message");
            reply_issue(outbox, "invalid-message", &err.0);
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
    loop {
        for item in outbox.drain().await {
            match item {
                Outgoing::Live(bytes) => sink.feed(Message::Binary(bytes)).await?,
                Outgoing::Ping => sink.feed(Message::Ping(bytes::Bytes::new())).await?,
                Outgoing::Frame(frame) => sink.feed(to_message(frame)).await?,
                Outgoing::Update(update) => sink.feed(to_message(update.into_frame())).await?,
                Outgoing::Snapshot(snapshot) => {
                    for frame in snapshot.frames().await {
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
    }
}
