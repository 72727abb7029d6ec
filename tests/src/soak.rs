//! The hot-reload soak: many reloads while events are ingested without
//! pause and many clients stay subscribed.
//!
//! Two real builds of the `games` plugin (default, and `--features
//! alt-views`, whose `Game/top` sorts by `startedAt` instead of `score`)
//! are copied alternately over `games.so`. A probe client subscribed to
//! `Game/top` sees a `subscribed` frame with the new sort each time a build
//! goes live: the time from the copy completing to that frame is the
//! reload latency. At the end every game's score and attack list must equal
//! the number of attacks accepted for it (nothing lost, nothing doubled),
//! no client may have been disconnected, and the host's resident memory
//! growth per reload is reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{plugin_artifact, variant_artifact, Host, Received};

/// Soak settings.
pub struct SoakConfig {
    /// Number of reloads.
    pub reloads: usize,
    /// Subscribed clients (besides the probe).
    pub clients: usize,
    /// Games receiving attacks.
    pub games: usize,
}

/// What the soak measured.
#[derive(Debug, serde::Serialize)]
pub struct SoakReport {
    /// Reloads performed.
    pub reloads: usize,
    /// Subscribed clients.
    pub clients: usize,
    /// Attack events accepted by the host during the soak.
    pub events_accepted: u64,
    /// Events not reflected in the final state.
    pub events_lost: u64,
    /// Events reflected more than once.
    pub events_doubled: u64,
    /// Clients that saw a close or error.
    pub disconnects: u64,
    /// Frames received by the subscribed clients.
    pub frames_received: u64,
    /// Reload latency (file copied -> new views live), milliseconds.
    pub latency_ms_median: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// Maximum.
    pub latency_ms_max: f64,
    /// Host VmRSS before the first reload, KiB.
    pub rss_kib_before: u64,
    /// Host VmRSS after the last reload, KiB.
    pub rss_kib_after: u64,
    /// (after - before) / reloads, KiB.
    pub rss_kib_per_reload: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the soak against a fresh host.
pub async fn run(config: SoakConfig) -> SoakReport {
    let builds = [
        variant_artifact("vista-games", "vista_games", "alt-views"),
        plugin_artifact("vista_games"),
    ];
    let host = Arc::new(Host::with_games().await);
    let games: Vec<String> = (0..config.games).map(|i| format!("g{i:03}")).collect();
    let start_events: Vec<Value> = games
        .iter()
        .enumerate()
        .map(|(i, g)| json!({"type": "game_started", "game": g, "players": ["p"], "startedAt": i}))
        .collect();
    host.ingest_ok("games", &start_events).await;

    // Subscribed clients, each read continuously by its own task.
    let disconnects = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..config.clients {
        let mut client = host.client().await;
        let view = ["ActiveGame/latest", "Game/top", "Game/list"][i % 3];
        client
            .subscribe(json!({"type": "subscribe", "view": view}))
            .await;
        let (disconnects, frames, stop) = (disconnects.clone(), frames.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.recv_within(Duration::from_millis(200)).await {
                    Some(Received::Json { .. }) => {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Received::Close(_)) => {
                        disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    None => {}
                }
            }
        }));
    }

    // The probe: reports each `subscribed` frame's sort field.
    let mut probe = host.client().await;
    probe
        .subscribe(json!({"type": "subscribe", "view": "Game/top"}))
        .await;
    let (sorts_tx, mut sorts_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
    let probe_stop = stop.clone();
    let probe_disconnects = disconnects.clone();
    let probe_task = tokio::spawn(async move {
        while !probe_stop.load(Ordering::Relaxed) {
            match probe.recv_within(Duration::from_millis(200)).await {
                Some(Received::Json { value, .. }) if value["op"] == "subscribed" => {
                    let field = value["sort"]["field"][0]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = sorts_tx.send((Instant::now(), field));
                }
                Some(Received::Close(_)) => {
                    probe_disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {}
            }
        }
    });

    // Continuous ingest: batches of attacks, counted per game when accepted.
    let accepted: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let ingest_task = {
        let (host, games, accepted, stop) =
            (host.clone(), games.clone(), accepted.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<&String> =
                    (0..20).map(|i| &games[(next + i) % games.len()]).collect();
                next += 20;
                let body: String = batch
                    .iter()
                    .map(|g| {
                        format!(
                            "{}\n",
                            json!({"type": "attack", "game": g, "player": "p", "damage": 1})
                        )
                    })
                    .collect();
                let (status, reply) = host.ingest("games", body).await;
                assert_eq!(status, 200, "ingest refused during the soak: {reply}");
                let mut counts = accepted.lock().unwrap();
                for g in batch {
                    *counts.entry(g.clone()).or_default() += 1;
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = host.rss_kib();
    let mut latencies = Vec::with_capacity(config.reloads);
    let target = host.plugins_dir.join("games.so");
    for i in 0..config.reloads {
        let build = &builds[i % 2];
        let expected_sort = if i % 2 == 0 { "startedAt" } else { "score" };
        std::fs::copy(build, &target).expect("copy build");
        let copied = Instant::now();
        loop {
            let (at, field) = tokio::time::timeout(Duration::from_secs(15), sorts_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("reload {i} never went live\n{}", host.log()))
                .expect("probe running");
            if field == expected_sort {
                latencies.push(at.duration_since(copied).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    let rss_after = host.rss_kib();

    stop.store(true, Ordering::Relaxed);
    ingest_task.await.expect("ingest task");
    probe_task.await.expect("probe task");
    for reader in readers {
        reader.await.expect("reader task");
    }

    // Every accepted attack reflected exactly once.
    let mut checker = host.client().await;
    checker
        .subscribe(json!({"type": "subscribe", "view": "Game/list"}))
        .await;
    let state: HashMap<String, Value> = checker.snapshot().await.into_iter().collect();
    let counts = accepted.lock().unwrap().clone();
    let (mut lost, mut doubled) = (0u64, 0u64);
    for game in &games {
        let expected = counts.get(game).copied().unwrap_or(0) as i64;
        let entity = &state[game];
        for seen in [
            entity["score"].as_i64().unwrap(),
            entity["events"].as_array().unwrap().len() as i64,
        ] {
            if seen < expected {
                lost += (expected - seen) as u64;
            } else {
                doubled += (seen - expected) as u64;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    SoakReport {
        reloads: config.reloads,
        clients: config.clients,
        events_accepted: counts.values().sum(),
        events_lost: lost,
        events_doubled: doubled,
        disconnects: disconnects.load(Ordering::Relaxed),
        frames_received: frames.load(Ordering::Relaxed),
        latency_ms_median: percentile(&latencies, 0.5),
        latency_ms_p99: percentile(&latencies, 0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(0.0),
        rss_kib_before: rss_before,
        rss_kib_after: rss_after,
        rss_kib_per_reload: (rss_after as f64 - rss_before as f64) / config.reloads as f64,
    }
}
