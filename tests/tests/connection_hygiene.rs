//! Connection hygiene: stuck, idle, greedy and misbehaving peers are closed
//! or refused, with a reason the client can read, while everyone else keeps
//! being served.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::MaybeTlsStream;
use vista_tests::{Host, PluginFile, Received, WsClient};

async fn tokens_host(args: &[&str]) -> Host {
    Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], args).await
}

/// Reads until the peer closes the connection (EOF or reset); returns how
/// long that took, or `None` if it stays open for `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + wait).into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn half_sent_requests_and_silent_connections_are_closed_within_the_header_timeout() {
    let host = tokens_host(&["--header-timeout-secs", "1"]).await;
    let partials: [&[u8]; 4] = [
        b"GET /heal",
        b"GET /healthz HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
        b"POST /ingest/tokens HTTP/1.1\r\nHost: x\r\nContent-Le",
    ];
    let mut stuck = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(&host.addr).await.unwrap();
        stream
            .write_all(partials[i % partials.len()])
            .await
            .unwrap();
        stuck.push(stream);
    }
    let mut silent = TcpStream::connect(&host.addr).await.unwrap();

    // A normal client is served meanwhile, and its WebSocket outlives the
    // header timeout.
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    assert_eq!(client.recv_json().await["key"], "a");

    let wait = Duration::from_secs(5);
    for (i, stream) in stuck.iter_mut().enumerate() {
        assert!(
            closed_within(stream, wait).await.is_some(),
            "half-sent request {i} still open after {wait:?}"
        );
    }
    assert!(
        closed_within(&mut silent, wait).await.is_some(),
        "a connection that sent nothing is still open"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "b", "symbol": "B", "decimals": 0, "supply": 1})],
    )
    .await;
    assert_eq!(
        client.recv_json().await["key"],
        "b",
        "an upgraded connection is not subject to the header timeout"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let host = tokens_host(&["--header-timeout-secs", "1"]).await;
    let mut stream = TcpStream::connect(&host.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the idle keep-alive connection was closed")
        .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");
}

/// A WebSocket client whose socket is bound to `local` before connecting.
async fn client_from(local: &str, addr: &str) -> Result<WsClientStream, Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

type WsClientStream = tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>;

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let host = tokens_host(&["--max-connections-per-ip", "3"]).await;
    let mut first = host.client().await;
    let _second = host.client().await;
    let _third = host.client().await;
    match tokio_tungstenite::connect_async(host.ws_url()).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert_eq!(
                response.headers()["x-error-code"],
                "ip-connection-limit-exceeded"
            );
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "ip-connection-limit-exceeded");
            assert_eq!(body["code"], "ip-connection-limit-exceeded");
            assert_eq!(body["retryable"], true);
            assert!(body["message"].as_str().unwrap().contains('3'), "{body}");
        }
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    // Another address still gets in and is served.
    let mut other = client_from("127.0.0.2", &host.addr)
        .await
        .expect("a client from 127.0.0.2 is not limited by 127.0.0.1's connections");
    other
        .send(Message::text(
            json!({"type": "subscribe", "view": "Token/list"}).to_string(),
        ))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), other.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.to_text().unwrap().contains("subscribed"), "{reply:?}");
    // The open connections are unaffected, and closing one frees a slot.
    first
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    first.snapshot().await;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(host.ws_url()).await {
            Ok(_) => break,
            Err(err) => assert!(Instant::now() < deadline, "slot never freed: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(host
        .log()
        .contains("connection refused: per-IP limit reached"));
}

#[tokio::test]
async fn failed_accepts_are_logged_at_most_once_a_second() {
    let host = Host::start_wrapped(
        &["prlimit", "--nofile=48:48", "--"],
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &[],
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..60 {
        sockets.push(TcpStream::connect(&host.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.log().contains("accept failed") {
        assert!(Instant::now() < deadline, "no EMFILE seen:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let log = host.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(
        lines.len() <= 5,
        "{} accept-failed lines in ~3 s:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("suppressed=") && !l.contains("suppressed=0")),
        "a later line counts the failures not logged:\n{}",
        lines.join("\n")
    );
}

/// A raw TCP connection upgraded to a WebSocket by hand.
async fn raw_websocket(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// One client frame: `first` is the FIN/RSV/opcode byte; masked unless
/// `mask` is `None`.
fn client_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![
        first,
        payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
    ];
    match mask {
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// Reads server frames until a close frame; returns its code and reason.
async fn read_close(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut at = 0;
        while received.len() >= at + 2 {
            let opcode = received[at] & 0x0f;
            let (len, header) = match received[at + 1] & 0x7f {
                126 if received.len() >= at + 4 => (
                    u16::from_be_bytes([received[at + 2], received[at + 3]]) as usize,
                    4,
                ),
                126 | 127 => break,
                len => (len as usize, 2),
            };
            if received.len() < at + header + len {
                break;
            }
            let payload = &received[at + header..at + header + len];
            if opcode == 0x8 {
                assert!(payload.len() >= 2, "a close frame without a code");
                return (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8(payload[2..].to_vec()).expect("UTF-8 reason"),
                );
            }
            at += header + len;
        }
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer))
            .await
            .expect("no close frame within 10 s")
            .expect("read");
        assert!(
            read > 0,
            "connection ended without a close frame: {received:?}"
        );
        received.extend_from_slice(&buffer[..read]);
    }
}

const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

async fn close_after(host: &Host, bytes: &[u8]) -> (u16, String) {
    let mut stream = raw_websocket(&host.addr).await;
    stream.write_all(bytes).await.unwrap();
    read_close(&mut stream).await
}

#[tokio::test]
async fn protocol_violations_close_with_1002_or_1007_and_a_reason() {
    let host = tokens_host(&[]).await;
    let mut bystander = host.client().await;
    bystander
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    bystander.snapshot().await;

    let (code, reason) = close_after(&host, &client_frame(0x81, &[b'{', 0xff, 0xfe], MASK)).await;
    assert_eq!(code, 1007, "invalid UTF-8 in a text frame: {reason}");
    assert!(reason.starts_with("invalid-utf8:"), "{reason}");

    let cases: [(&str, Vec<u8>); 4] = [
        ("unmasked frame", client_frame(0x81, b"{}", None)),
        ("RSV1 set", client_frame(0xc1, b"{}", MASK)),
        ("RSV3 set", client_frame(0x91, b"{}", MASK)),
        ("orphan continuation", client_frame(0x80, b"{}", MASK)),
    ];
    for (what, bytes) in cases {
        let (code, reason) = close_after(&host, &bytes).await;
        assert_eq!(code, 1002, "{what}: {reason}");
        assert!(reason.starts_with("protocol-error: "), "{what}: {reason}");
        assert!(reason.len() > "protocol-error: ".len(), "{what}: {reason}");
    }

    // Fragmented text whose fragments are not UTF-8 together.
    let mut fragmented = client_frame(0x01, &[b'"', 0xe2, 0x82], MASK);
    fragmented.extend(client_frame(0x80, b"\"", MASK));
    let (code, reason) = close_after(&host, &fragmented).await;
    assert_eq!(code, 1007, "{reason}");

    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    assert_eq!(
        bystander.recv_json().await["key"],
        "a",
        "other clients keep being served"
    );
}

#[tokio::test]
async fn a_client_still_sending_always_receives_its_1009_close() {
    let host = tokens_host(&["--max-message-bytes", "65536"]).await;
    let big = "x".repeat(1 << 20);
    let mut failures = Vec::new();
    for run in 0..30 {
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            // A small send buffer: most of the message is still in the
            // client when the server closes, as over a real network.
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_send_buffer_size(16 << 10).unwrap();
            let stream = socket.connect(host.addr.parse().unwrap()).await.unwrap();
            let (mut ws, _) =
                tokio_tungstenite::client_async(host.ws_url(), MaybeTlsStream::Plain(stream))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
            ws.send(Message::text(big.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Ok((u16::from(frame.code), frame.reason.to_string()))
                    }
                    Some(Ok(Message::Close(None))) => return Err("close without a code".into()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    None => return Err("ended without a close frame".to_owned()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match outcome {
            Ok((1009, reason)) if reason.starts_with("message-too-large:") => {}
            other => failures.push(format!("run {run}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // And a well-behaved client is still served.
    let mut client: WsClient = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    match client.recv().await {
        Received::Json { value, .. } => assert_eq!(value["op"], "snapshot"),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}
