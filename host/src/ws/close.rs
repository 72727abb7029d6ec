//! How a WebSocket ends, and how it starts: the upgrade's time limit, the
//! close code for a client that broke the protocol, and the lingering close
//! that makes sure the client reads the server's close frame.
//!
//! - **Upgrade timeout** ([`finish_upgrade`]): a WebSocket upgrade that does
//!   not complete within `config.header_timeout` is dropped.
//! - **Close codes** ([`close_for_read_error`]): a client breaking the
//!   protocol is closed with 1002 or 1007 and a reason saying what was
//!   wrong; an oversized message with 1009 `message-too-large:`.
//! - **Lingering close** ([`close_and_linger`]): after the server's close
//!   frame is written, the socket is read (and the input discarded) until
//!   the client's close frame, end of input or [`LINGER`], so the close
//!   frame is not lost to a TCP reset caused by unread input.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, Stream, StreamExt};
use hyper_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::{JoinError, JoinHandle};

use crate::codes::CloseReason;
use crate::config::Config;
use crate::outbox::{Outbox, Outgoing};

/// How long a closed connection is read (and discarded) while waiting for
/// the client's close frame.
pub const LINGER: Duration = Duration::from_secs(2);

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

/// The close code and reason for a read error the client caused, or `None`
/// when the connection is simply gone (reset, EOF, I/O error).
pub fn close_for_read_error(err: &tungstenite::Error) -> Option<(u16, String)> {
    let (code, reason) = match err {
        tungstenite::Error::Capacity(err) => (CloseReason::MessageTooLarge, err.to_string()),
        tungstenite::Error::Utf8(_) => (
            CloseReason::InvalidUtf8,
            "a text message is not valid UTF-8".to_owned(),
        ),
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::ReceivedAfterClosing
            | ProtocolError::SendAfterClosing,
        ) => return None,
        tungstenite::Error::Protocol(err) => (CloseReason::ProtocolError, err.to_string()),
        _ => return None,
    };
    Some((code.code(), truncate_reason(code.with(reason))))
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

/// Runs [`super::write_loop`] and hands the sink back, so the
/// socket can be reunited for [`close_and_linger`].
pub async fn write_returning_sink<K>(mut sink: K, outbox: Arc<Outbox>) -> WriterOutput<K>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let result = super::write_loop(&mut sink, outbox).await;
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
            outbox.push_reply(Outgoing::normal_close());
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
}
