//! Reprojection: a new build of `games` that scores twice the damage asks
//! the host to rebuild its entities from the event log. It loads while
//! events keep arriving; a raw client and the published TypeScript client,
//! connected throughout, end with exactly the recomputation of the whole log
//! through the new projector, without reconnecting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::{
    apply_frame, variant_artifact, Host, NodeScript, PluginFile, Received, WsClient,
};

const GAMES: usize = 20;

fn attack(game: usize, damage: i64) -> Value {
    json!({"type": "attack", "game": format!("g{game:02}"), "player": "ann", "damage": damage})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_projector_reprojects_history_while_events_arrive() {
    let double = variant_artifact("vista-games", "vista_games", "double-score");
    let host = Host::with_games().await;
    // History: games and attacks, all logged.
    let mut damage: BTreeMap<String, i64> = BTreeMap::new();
    let starts: Vec<Value> = (0..GAMES)
        .map(|g| json!({"type": "game_started", "game": format!("g{g:02}"), "players": ["ann", "bob"], "startedAt": g}))
        .collect();
    host.ingest_ok("games", &starts).await;
    for round in 0..10 {
        let events: Vec<Value> = (0..GAMES)
            .map(|g| attack(g, (round + g) as i64 % 7 + 1))
            .collect();
        host.ingest_ok("games", &events).await;
        for event in &events {
            *damage
                .entry(event["game"].as_str().unwrap().to_owned())
                .or_default() += event["damage"].as_i64().unwrap();
        }
    }

    // A raw client, applying every frame.
    let mut raw = host.client().await;
    raw.subscribe(json!({"type": "subscribe", "view": "Game/list"}))
        .await;
    let held = Arc::new(Mutex::new(BTreeMap::new()));
    for frame in raw.snapshot_frames().await {
        apply_frame(&mut held.lock().unwrap(), &frame);
    }
    let closed = Arc::new(Mutex::new(None));
    let reader = {
        let (held, closed) = (held.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                match raw.recv_within(Duration::from_secs(120)).await {
                    Some(Received::Json { value, .. }) => {
                        apply_frame(&mut held.lock().unwrap(), &value)
                    }
                    other => {
                        *closed.lock().unwrap() = Some(format!("{other:?}"));
                        return;
                    }
                }
            }
        })
    };

    // The published TypeScript client, in its own process.
    let node = NodeScript::start(
        "reproject.mjs",
        &host,
        &[("VISTA_TIMEOUT_MS", "60000".into())],
    );

    // Events keep arriving during the reprojection.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (url, stop) = (format!("{}/ingest/games", host.http_url()), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent: Vec<Value> = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let event = attack(n % GAMES, 1 + (n % 3) as i64);
                let response = http
                    .post(&url)
                    .body(event.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                sent.push(event);
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::copy(&double, host.plugins_dir.join("games.so")).unwrap();
    let plugins = host
        .wait_for_plugins("the reprojection to finish", |plugins| {
            plugins.as_array().unwrap().iter().any(|p| {
                p["version"] == "0.1.0+double-score" && p["reprojection"]["state"] == "done"
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for event in feeder.await.unwrap() {
        *damage
            .entry(event["game"].as_str().unwrap().to_owned())
            .or_default() += event["damage"].as_i64().unwrap();
    }
    let report = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["version"] == "0.1.0+double-score")
        .unwrap()["reprojection"]
        .clone();
    assert!(
        report["events"].as_u64().unwrap() >= (GAMES * 11) as u64,
        "{report}"
    );
    assert!(
        report["events_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(
        report["changed"].as_u64().unwrap(),
        2 * GAMES as u64,
        "{report}"
    );

    // The recomputation of the whole log through the new projector.
    let expected: BTreeMap<String, i64> = damage.iter().map(|(g, d)| (g.clone(), 2 * d)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scores: BTreeMap<String, i64> = held
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["score"].as_i64().unwrap_or(-1)))
            .collect();
        if scores == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the raw client holds {scores:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed.lock().unwrap().is_none(),
        "the raw client was disconnected"
    );
    let mut fresh = WsClient::connect(&host.ws_url()).await;
    fresh
        .subscribe(json!({"type": "subscribe", "view": "Game/list"}))
        .await;
    let server: BTreeMap<String, i64> = fresh
        .snapshot()
        .await
        .into_iter()
        .map(|(k, v)| (k, v["score"].as_i64().unwrap()))
        .collect();
    assert_eq!(server, expected, "the host's state is the recomputation");

    // The TypeScript client converges too, without reconnecting.
    let summary = node.finish(&serde_json::to_string(&expected).unwrap());
    assert_eq!(summary["ok"], true);
    reader.abort();
}

#[tokio::test]
async fn reprojection_is_refused_without_the_whole_log() {
    let host = Host::start(
        vec![PluginFile::Built("vista_games", "games.so")],
        &["--retain", "records:2", "--checkpoint-every-events", "1"],
    )
    .await;
    for g in 0..10 {
        host.ingest_ok(
            "games",
            &[json!({"type": "game_started", "game": format!("g{g}"), "players": [], "startedAt": g})],
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.get_json("/status").await.1["log"]["first_rec"] == 1 {
        assert!(Instant::now() < deadline, "nothing was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = reqwest::Client::new()
        .post(format!("{}/plugins/games/reproject", host.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "log-incomplete", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("first event"),
        "{body}"
    );

    let memory = Host::start(
        vec![PluginFile::Built("vista_games", "games.so")],
        &["--in-memory"],
    )
    .await;
    let response = reqwest::Client::new()
        .post(format!("{}/plugins/games/reproject", memory.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let response = reqwest::Client::new()
        .post(format!("{}/plugins/nope/reproject", memory.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
