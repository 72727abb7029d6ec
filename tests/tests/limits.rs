//! Connection, message-size and subscription limits: each refusal is
//! specific and explained, and everyone else keeps being served.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Error, Message};
use vista_tests::{Host, PluginFile, Received, WsClient};

async fn tokens_host(args: &[&str]) -> Host {
    Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], args).await
}

#[tokio::test]
async fn connections_over_the_limit_get_503_connection_limit_exceeded() {
    let host = tokens_host(&["--max-connections", "2"]).await;
    let mut first = host.client().await;
    let _second = host.client().await;
    match tokio_tungstenite::connect_async(host.ws_url()).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(
                response.headers()["x-error-code"],
                "connection-limit-exceeded"
            );
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "connection-limit-exceeded");
            assert_eq!(body["code"], "connection-limit-exceeded");
            assert_eq!(body["retryable"], true);
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    // The open connections are unaffected, and a closed one frees its slot.
    first
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    first.snapshot().await;
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(host.ws_url()).await {
            Ok(_) => break,
            Err(err) => assert!(
                std::time::Instant::now() < deadline,
                "slot never freed: {err}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(host.log().contains("connection refused: limit reached"));
}

#[tokio::test]
async fn an_oversized_client_message_closes_that_connection_with_1009() {
    let host = tokens_host(&["--max-message-bytes", "1024"]).await;
    let mut bystander = host.client().await;
    bystander
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    bystander.snapshot().await;

    let mut client = host.client().await;
    client
        .send_message(Message::text(format!(
            "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
            "x".repeat(2000)
        )))
        .await;
    match client.recv().await {
        Received::Close(Some((code, reason))) => {
            assert_eq!(code, 1009);
            assert!(reason.starts_with("message-too-large:"), "{reason}");
        }
        other => panic!("expected a 1009 close, got {other:?}"),
    }
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
async fn a_client_message_many_times_the_read_buffer_arrives_whole() {
    // Sockets read in 256-byte chunks; a 5,000-byte key must still make
    // one subscribe, to that exact key.
    let host = tokens_host(&[]).await;
    let mint = "m".repeat(5000);
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": mint}))
        .await;
    client.snapshot().await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": mint, "symbol": "M", "decimals": 0, "supply": 7})],
    )
    .await;
    let frame = client.recv_json().await;
    assert_eq!(frame["key"].as_str().map(str::len), Some(5000));
    assert_eq!(frame["data"]["supply"], 7);
}

#[tokio::test]
async fn subscriptions_over_the_limit_get_a_socket_issue() {
    let host = tokens_host(&["--max-subscriptions", "2"]).await;
    let mut client: WsClient = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Trade/append"}))
        .await;
    client
        .send(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    let issue = client.recv_json().await;
    assert_eq!(issue["error"], "subscription-limit-exceeded");
    assert_eq!(issue["fatal"], false);
    // Re-subscribing to a held (view, key) is a replacement, not a new one.
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await;
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    // A hard limit of 48 open files: the host cannot raise it.
    let host = Host::start_wrapped(
        &["prlimit", "--nofile=48:48", "--"],
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &[],
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..60 {
        sockets.push(
            tokio::net::TcpStream::connect(&host.addr)
                .await
                .expect("the kernel accepts into the backlog"),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !host.log().contains("accept failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "no EMFILE seen:\n{}",
            host.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Out of descriptors: backing off, not spinning.
    let before = host.cpu_ticks();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = host.cpu_ticks() - before;
    assert!(used < 30, "the accept loop spun: {used} ticks in 1 s");
    // Descriptors come back: the host serves again.
    drop(sockets);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio_tungstenite::connect_async(host.ws_url()),
        )
        .await
        {
            use futures_util::SinkExt;
            ws.send(Message::text(
                json!({"type": "subscribe", "view": "Token/list"}).to_string(),
            ))
            .await
            .unwrap();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host never recovered:\n{}",
            host.log()
        );
    }
    let (status, _) = host.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sigterm_closes_every_client_with_server_shutdown() {
    let host = tokens_host(&[]).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match client.recv().await {
        Received::Close(Some((code, reason))) => {
            assert_eq!(code, 1001);
            assert!(reason.starts_with("server-shutdown:"), "{reason}");
        }
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    assert!(host.log().contains("shutting down"));
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_and_responsive_ones_stay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = tokens_host(&["--idle-timeout-secs", "2"]).await;
    let mut responsive = host.client().await;
    // A client that completes the handshake and then reads nothing, so it
    // answers none of the server's pings: plain TCP, frames parsed by hand.
    let mut silent = tokio::net::TcpStream::connect(&host.addr).await.unwrap();
    silent
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();

    // Reading answers the server's pings (tungstenite replies with pongs).
    let mut pings = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < until {
        if let Ok(message) =
            tokio::time::timeout(std::time::Duration::from_millis(200), responsive.next_raw()).await
        {
            pings += matches!(message, Message::Ping(_)) as usize;
        }
    }
    assert!(pings >= 1, "a quiet client is pinged");
    responsive
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    responsive.snapshot().await;

    // Everything the silent client was sent: the 101, pings, then a close
    // frame (opcode 0x8) with code 1001 and an `idle-timeout:` reason.
    let mut received = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        silent.read_to_end(&mut received),
    )
    .await
    .expect("the server closed the silent connection")
    .unwrap();
    let at = received
        .windows(13)
        .position(|w| w == b"idle-timeout:")
        .expect("a close reason naming the idle timeout");
    assert_eq!(
        &received[at - 2..at],
        &1001u16.to_be_bytes(),
        "close code 1001"
    );
    assert_eq!(received[at - 4] & 0x0f, 0x8, "a close frame");
    assert!(received.starts_with(b"HTTP/1.1 101"));
    assert!(host.log().contains("closing a silent client"));
}
