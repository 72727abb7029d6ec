//! Slow clients next to fast ones: the fast client keeps receiving and
//! ingest never stalls; a slow list client is conflated and ends with
//! exactly the right state; a slow append client is closed with
//! `slow-consumer:`; host memory stays bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::{apply_frame, Host, PluginFile, Received, WsClient};

const MINTS: usize = 20;
const ROUNDS: usize = 600;

/// Random lowercase text (compresses only ~2x): keeps frames big.
fn noise(seed: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (b'a' + (*seed % 26) as u8) as char
        })
        .collect()
}

async fn subscribed_reader(client: &mut WsClient, view: &str) -> BTreeMap<String, Value> {
    client
        .subscribe(json!({"type": "subscribe", "view": view}))
        .await;
    let mut state = BTreeMap::new();
    for frame in client.snapshot_frames().await {
        apply_frame(&mut state, &frame);
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_conflated_or_closed_and_fast_ones_keep_up() {
    // In memory: the RSS bound below is about what slow clients make the
    // host hold; a durable host also holds the log's page cache (16 MiB).
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--outbox-bytes", "262144", "--in-memory"],
    )
    .await;
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let creations: Vec<Value> = (0..MINTS)
        .map(|m| json!({"type": "token_created", "mint": format!("m{m:02}"), "symbol": "S", "decimals": 0, "supply": 0}))
        .collect();
    host.ingest_ok("tokens", &creations).await;

    // The fast client reads continuously in its own task.
    let mut fast = host.client().await;
    let mut fast_state = subscribed_reader(&mut fast, "Token/list").await;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let fast_task = tokio::spawn(async move {
        let mut frames = 0usize;
        let mut done = done_rx;
        loop {
            tokio::select! {
                received = fast.recv_within(Duration::from_secs(30)) => match received {
                    Some(Received::Json { value, .. }) => { frames += 1; apply_frame(&mut fast_state, &value); }
                    other => panic!("fast client: {other:?}"),
                },
                _ = &mut done => return (fast_state, frames),
            }
        }
    });

    // Two clients that stop reading after their snapshot.
    let mut slow_list = WsClient::connect_slow_reader(&host.addr).await;
    let mut slow_state = subscribed_reader(&mut slow_list, "Token/list").await;
    let mut slow_append = WsClient::connect_slow_reader(&host.addr).await;
    slow_append
        .subscribe(json!({"type": "subscribe", "view": "Token/append"}))
        .await;

    let rss_before = host.rss_kib();
    let mut longest_ingest = Duration::ZERO;
    for round in 0..ROUNDS {
        let events: Vec<Value> = (0..MINTS)
            .map(|m| {
                json!({"type": "token_created", "mint": format!("m{m:02}"), "symbol": noise(&mut seed, 2048),
                       "decimals": 0, "supply": round})
            })
            .collect();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), host.ingest_ok("tokens", &events))
            .await
            .expect("ingest must never stall on slow clients");
        longest_ingest = longest_ingest.max(started.elapsed());
    }
    let rss_after = host.rss_kib();
    let ingested_bytes = ROUNDS * MINTS * 2048;

    // Server truth, from a fresh subscriber.
    let mut checker = host.client().await;
    let truth = subscribed_reader(&mut checker, "Token/list").await;

    // The fast client converges (it never stopped reading).
    tokio::time::sleep(Duration::from_millis(500)).await;
    done_tx.send(()).unwrap();
    let (fast_state, fast_frames) = fast_task.await.unwrap();
    assert_eq!(
        fast_state, truth,
        "the fast client holds the server's state"
    );
    assert!(
        fast_frames >= ROUNDS,
        "the fast client kept receiving ({fast_frames} frames)"
    );

    // The slow list client was conflated: reading now, it catches up exactly.
    let conflated = host.metric("vista_frames_conflated_total").await;
    assert!(conflated > 0.0, "conflation happened");
    loop {
        match slow_list.recv_within(Duration::from_secs(2)).await {
            Some(Received::Json { value, .. }) => apply_frame(&mut slow_state, &value),
            Some(Received::Close(close)) => {
                panic!("a slow list client must not be closed: {close:?}")
            }
            None => break,
        }
    }
    assert_eq!(
        slow_state, truth,
        "the conflated client ends with exactly the server's state"
    );

    // The slow append client could not be conflated: closed with slow-consumer.
    let close = loop {
        match slow_append.recv_within(Duration::from_secs(10)).await {
            Some(Received::Json { .. }) => continue,
            Some(Received::Close(close)) => break close,
            None => panic!("the slow append client was never closed"),
        }
    };
    let (code, reason) = close.expect("a close frame with a reason");
    assert_eq!(code, 1008);
    assert!(reason.starts_with("slow-consumer:"), "{reason}");
    assert_eq!(
        host.metric("vista_slow_consumer_disconnects_total").await,
        1.0
    );
    assert!(
        host.log().contains("slow consumer"),
        "the disconnect is logged"
    );

    // Bounded memory: the slow clients did not make the host keep what they missed.
    let growth_kib = rss_after.saturating_sub(rss_before);
    println!(
        "ingested {} MiB of symbols; host RSS {rss_before} -> {rss_after} KiB; conflated {conflated}; longest ingest {longest_ingest:?}",
        ingested_bytes >> 20
    );
    assert!(
        growth_kib < (ingested_bytes as u64 / 1024) / 2,
        "host RSS grew {growth_kib} KiB while {} KiB were ingested",
        ingested_bytes / 1024
    );
}
