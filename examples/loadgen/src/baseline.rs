//! The baseline broadcaster: the practical upper bound for fan-out on this
//! machine, built on the same stack as the host (hyper + hyper-tungstenite).
//!
//! It keeps no state and runs no plugin: `POST /ingest/{stream}` wraps each
//! NDJSON line into a `patch` frame once, and the same bytes go to every
//! subscribed client through an unbounded channel; each client's writer
//! drains everything queued and flushes once, as the host's does. A
//! subscribe gets `subscribed` and an empty complete snapshot, so the load
//! generator drives both servers the same way.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_tungstenite::tungstenite::Message;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

type Clients = Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>;

/// Serves until killed; prints `baseline listening on ADDR` first.
pub async fn serve(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("baseline listening on {}", listener.local_addr()?);
    let clients: Clients = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let clients = clients.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| handle(request, clients.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    mut request: Request<Incoming>,
    clients: Clients,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if hyper_tungstenite::is_upgrade_request(&request) {
        let config = hyper_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .write_buffer_size(16 << 10);
        let Ok((response, websocket)) = hyper_tungstenite::upgrade(&mut request, Some(config))
        else {
            return Ok(Response::builder()
                .status(400)
                .body(Full::default())
                .unwrap());
        };
        tokio::spawn(async move {
            if let Ok(socket) = websocket.await {
                client(socket, clients).await;
            }
        });
        return Ok(response);
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut accepted = 0;
    {
        let mut clients = clients.lock().unwrap();
        clients.retain(|c| !c.is_closed());
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let mut frame = Vec::with_capacity(line.len() + 80);
            frame.extend_from_slice(
                br#"{"op":"patch","mode":"list","entity":"Token/list","key":"k","data":"#,
            );
            frame.extend_from_slice(line);
            frame.push(b'}');
            let frame = Bytes::from(frame);
            for client in clients.iter() {
                let _ = client.send(frame.clone());
            }
            accepted += 1;
        }
    }
    let reply = format!(r#"{{"accepted":{accepted},"seq":"0"}}"#);
    Ok(Response::new(Full::new(Bytes::from(reply))))
}

async fn client<S>(socket: S, clients: Clients)
where
    S: futures_util::Stream<Item = Result<Message, hyper_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = hyper_tungstenite::tungstenite::Error>
        + Send
        + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(Message::Binary(first)).await?;
            while let Ok(next) = rx.try_recv() {
                sink.feed(Message::Binary(next)).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, hyper_tungstenite::tungstenite::Error>(())
    });
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            if text.as_str().contains("subscribe") {
                let _ = tx.send(Bytes::from_static(
                    br#"{"op":"subscribed","view":"Token/list","mode":"list"}"#,
                ));
                let _ = tx.send(Bytes::from_static(
                    br#"{"op":"snapshot","mode":"list","entity":"Token/list","data":[],"complete":true}"#,
                ));
                clients.lock().unwrap().push(tx.clone());
            }
        }
    }
    writer.abort();
}
