//! Scale-out: several real `vista` hosts sharing one real `nats-server -js`
//! (Debian's package; each test starts its own on a free port with a temp
//! store and stops it by PID).
//!
//! - ingest through each host in turn: raw clients on every host, and the
//!   published TypeScript client on one host fed through another, end with
//!   identical views equal to a model; `_seq` cursors work across hosts;
//! - `kill -9` of a host during ingest: it comes back from its checkpoint,
//!   catches up and equals the others; nothing acknowledged is lost;
//! - NATS stopped and restarted during ingest: 503 `log-unavailable` while
//!   it is down, nothing acknowledged lost, hosts resume without restart;
//! - a new build dropped on each host at different moments: every host
//!   switches at the marker's position (a host without the file pauses
//!   there, not ready), and all end equal to a model applying the old build
//!   before the marker and the new one after;
//! - reprojection (asked over HTTP, or by a build) happens at one log
//!   position on every host: all end with the whole history recomputed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::{
    apply_frame, ready_members, variant_artifact, view_of, view_once, view_once_equal,
    vista_binary, workspace_root, Host, NatsServer, PluginFile, Received,
};

/// Cluster tests start several hosts and a NATS server each: one at a time
/// keeps them within this machine's two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const READY: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

fn tokens() -> Vec<PluginFile> {
    vec![PluginFile::Built("vista_tokens", "tokens.so")]
}

fn games() -> Vec<PluginFile> {
    vec![PluginFile::Built("vista_games", "games.so")]
}

fn created(mint: &str, supply: i64) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": "S", "decimals": 0, "supply": supply})
}

/// A raw WebSocket client on one host, applying every frame of one view
/// to a map in the background.
struct Mirror {
    state: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Mirror {
    async fn start(host: &Host, view: &str) -> Mirror {
        let mut client = host.client().await;
        client
            .subscribe(json!({"type": "subscribe", "view": view}))
            .await;
        let state = Arc::new(Mutex::new(BTreeMap::new()));
        for frame in client.snapshot_frames().await {
            apply_frame(&mut state.lock().unwrap(), &frame);
        }
        let held = state.clone();
        tokio::spawn(async move {
            while let Some(received) = client.recv_within(Duration::from_secs(300)).await {
                if let Received::Json { value, .. } = received {
                    apply_frame(&mut held.lock().unwrap(), &value);
                }
            }
        });
        Mirror { state }
    }

    fn get(&self) -> BTreeMap<String, Value> {
        self.state.lock().unwrap().clone()
    }
}

/// One field of every entity.
fn field(state: &BTreeMap<String, Value>, name: &str) -> BTreeMap<String, i64> {
    state
        .iter()
        .map(|(k, v)| (k.clone(), v[name].as_i64().unwrap_or(i64::MIN)))
        .collect()
}

/// Waits until `done` holds; panics with `what` and the last value after
/// `limit`.
async fn wait_for<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> (bool, T),
) {
    let deadline = Instant::now() + limit;
    loop {
        let (done, seen) = probe();
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {what}; last seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops a build of `games` into a host's plugins directory as
/// `games-double.so` (a rename, so the watcher never sees half a file).
fn drop_games_build(host: &Host, build: &std::path::Path) {
    let staging = host.plugins_dir.join("games-double.tmp");
    std::fs::copy(build, &staging).unwrap();
    std::fs::rename(&staging, host.plugins_dir.join("games-double.so")).unwrap();
}

/// Every host's `Game/list`, each read once its scores equal `model` (or
/// after [`CONVERGE`], for the caller's assertion to show the difference).
async fn game_views_once_scored(
    hosts: &[Host],
    model: &BTreeMap<String, i64>,
) -> Vec<BTreeMap<String, Value>> {
    let mut views = Vec::new();
    for host in hosts {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let view = view_of(host, "Game/list").await;
            if field(&view, "score") == *model || Instant::now() >= deadline {
                views.push(view);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    views
}

/// Waits until `/readyz` answers 503 with this `status`; returns its body.
async fn wait_unready(host: &Host, status: &str) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (code, body) = host.get_json("/readyz").await;
        if code == 503 && body["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{} not {status}: {code} {body}\n{}",
            host.addr,
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream position of an ingest reply's `seq` (`_seq >> 24`).
fn position(reply: &Value) -> u64 {
    reply["seq"].as_str().unwrap().parse::<u64>().unwrap() >> 24
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_take_ingest_in_turn_and_serve_identical_views() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let hosts = ready_members(&nats, 3, tokens).await;
    let mut mirrors = Vec::new();
    for host in &hosts {
        mirrors.push(Mirror::start(host, "Token/list").await);
    }
    let mut model: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor = None;
    let mut changed_after_cursor = BTreeSet::new();
    for i in 0..36usize {
        let host = &hosts[i % 3];
        let events: Vec<Value> = if i < 12 {
            vec![created(&format!("m{i:02}"), 100 + i as i64)]
        } else if i == 14 {
            vec![json!({"type": "token_closed", "mint": "m03"})]
        } else {
            let mint = format!("m{:02}", [0, 1, 2, 4, 5, 6, 7][i % 7]);
            vec![
                json!({"type": "supply_changed", "mint": mint, "delta": i as i64 - 20}),
                json!({"type": "supply_changed", "mint": mint, "delta": 1}),
            ]
        };
        let reply = host.ingest_ok("tokens", &events).await;
        for event in &events {
            let mint = event["mint"].as_str().unwrap().to_owned();
            match event["type"].as_str().unwrap() {
                "token_created" => {
                    model.insert(mint.clone(), event["supply"].as_i64().unwrap());
                }
                "token_closed" => {
                    model.remove(&mint);
                }
                _ => *model.get_mut(&mint).unwrap() += event["delta"].as_i64().unwrap(),
            }
            if cursor.is_some() {
                changed_after_cursor.insert(mint);
            }
        }
        if i == 20 {
            cursor = Some(reply["seq"].as_str().unwrap().to_owned());
        }
        if i == 10 {
            // Refused by the projector: 422 on the host that took it; in
            // the log, refused identically (and counted) everywhere.
            let (status, reply) = hosts[1]
                .ingest(
                    "tokens",
                    json!({"type": "supply_changed", "mint": "ghost", "delta": 1}).to_string(),
                )
                .await;
            assert_eq!(
                (status, reply["error"].as_str()),
                (422, Some("projector-error")),
                "{reply}"
            );
        }
    }
    // An unknown stream is refused before it reaches the log.
    let (status, reply) = hosts[2].ingest("nope", "{}").await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (404, Some("unknown-stream")),
        "{reply}"
    );

    for (n, mirror) in mirrors.iter().enumerate() {
        wait_for(
            &format!("host {n}'s client equals the model"),
            CONVERGE,
            || {
                let seen = field(&mirror.get(), "supply");
                (seen == model, seen)
            },
        )
        .await;
    }
    let first = view_of(&hosts[0], "Token/list").await;
    assert_eq!(field(&first, "supply"), model);
    for host in &hosts[1..] {
        assert_eq!(
            view_of(host, "Token/list").await,
            first,
            "whole entities, `_seq` included, are equal on every host"
        );
    }
    for host in &hosts {
        // Every host applied the refused record by now (the views above
        // include later records): each refused it once.
        assert_eq!(host.metric("vista_cluster_refused_total").await, 1.0);
    }

    // A `_seq` cursor from one host resumes on another.
    let mut client = hosts[2].client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "after": cursor.unwrap()}))
        .await;
    let resumed: BTreeSet<String> = client.snapshot_keys().await.into_iter().collect();
    assert_eq!(resumed, changed_after_cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_typescript_client_on_one_host_follows_ingest_through_another() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let hosts = ready_members(&nats, 2, tokens).await;
    let (reader, writer) = (&hosts[0], &hosts[1]);
    // tokens.mjs subscribes through VISTA_WS_URL and ingests through
    // VISTA_HTTP_URL, then asserts its store holds exactly its model.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new("node")
            .arg("tokens.mjs")
            .current_dir(workspace_root().join("tests/ts-client"))
            .env("VISTA_WS_URL", reader.ws_url())
            .env("VISTA_HTTP_URL", writer.http_url())
            .output()
            .expect("run node")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tokens.mjs failed: {stdout}\n{}\nreader log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        reader.log()
    );
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        view_of(reader, "Token/list").await,
        view_of(writer, "Token/list").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_during_ingest_comes_back_and_catches_up_losing_nothing() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let steady = Host::cluster_member(&nats, tokens()).await;
    let mut crashing = Host::start(
        tokens(),
        &["--cluster", &nats.url(), "--checkpoint-every-events", "20"],
    )
    .await;
    steady.wait_ready(READY).await;
    crashing.wait_ready(READY).await;
    let mut acked = BTreeSet::new();
    for i in 0..60 {
        let host = if i % 2 == 0 { &steady } else { &crashing };
        let mint = format!("a{i:03}");
        host.ingest_ok("tokens", &[created(&mint, i)]).await;
        acked.insert(mint);
    }
    // Ingest keeps flowing through the steady host while the other dies.
    let writer = {
        let url = steady.http_url();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 60..160 {
                let mint = format!("a{i:03}");
                let reply = http
                    .post(format!("{url}/ingest/tokens"))
                    .body(created(&mint, i).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status().as_u16(), 200);
                acked.push(mint);
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    crashing.kill9();
    let during = writer.await.unwrap();
    acked.extend(during);
    crashing.restart().await;
    crashing.wait_ready(READY).await;
    let log = crashing.log();
    assert!(
        log.contains("cluster checkpoint loaded"),
        "the restart starts from its local checkpoint:\n{log}"
    );
    // Ready only once it applied the stream's head as of joining (logged
    // with both positions).
    let joined = log
        .lines()
        .rfind(|l| l.contains("joined the cluster stream"))
        .expect("a joined line");
    let head: u64 = joined
        .split("head=")
        .nth(1)
        .and_then(|h| h.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .expect("head=N in the joined line");
    let caught_up = log
        .lines()
        .rfind(|l| l.contains("caught up with the cluster stream"))
        .expect("a caught-up line");
    let applied: u64 = caught_up
        .split("applied=")
        .nth(1)
        .and_then(|h| h.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .expect("applied=N in the caught-up line");
    assert!(applied >= head && head > 60, "{joined}\n{caught_up}");
    for i in 160..180 {
        let host = if i % 2 == 0 { &steady } else { &crashing };
        let mint = format!("a{i:03}");
        host.ingest_ok("tokens", &[created(&mint, i)]).await;
        acked.insert(mint);
    }
    let expected: BTreeMap<String, i64> = acked
        .iter()
        .map(|m| (m.clone(), m[1..].parse().unwrap()))
        .collect();
    // The last request went to the other host: this one applies it from
    // the stream a little later.
    let steady_view = view_once(&steady, "Token/list", |seen| {
        field(seen, "supply") == expected
    })
    .await;
    assert_eq!(
        field(&steady_view, "supply"),
        expected,
        "every acknowledged event is there"
    );
    // Read-your-writes holds for the host that took each request; the
    // other catches up.
    let last = view_once_equal(&crashing, "Token/list", &steady_view).await;
    assert_eq!(
        last, steady_view,
        "the restarted host equals the other, `_seq`s included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_answers_503_and_hosts_resume_without_restart() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let hosts = ready_members(&nats, 2, tokens).await;
    let pids: Vec<u32> = hosts.iter().map(Host::pid).collect();
    let mut acked = BTreeSet::new();
    let mut next = 0;
    let ingest = |host: &Host, next: &mut i64| {
        let mint = format!("n{next:03}");
        *next += 1;
        let body = created(&mint, *next).to_string();
        let host_url = host.http_url();
        async move {
            let reply = reqwest::Client::new()
                .post(format!("{host_url}/ingest/tokens"))
                .body(body)
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let body: Value = reply.json().await.unwrap();
            (mint, status, body)
        }
    };
    for i in 0..30 {
        let (mint, status, body) = ingest(&hosts[i % 2], &mut next).await;
        assert_eq!(status, 200, "{body}");
        acked.insert(mint);
    }
    tokio::task::block_in_place(|| nats.stop());
    let mut unavailable = 0;
    for i in 0..10 {
        let (mint, status, body) = ingest(&hosts[i % 2], &mut next).await;
        match status {
            200 => {
                acked.insert(mint);
            }
            503 => {
                assert_eq!(body["error"], "log-unavailable", "{body}");
                unavailable += 1;
            }
            other => panic!("during the outage: {other} {body}"),
        }
    }
    assert_eq!(unavailable, 10, "every request while NATS is down gets 503");
    let (_, status) = hosts[0].get_json("/status").await;
    assert_eq!(status["storage"], "cluster", "{status}");
    assert_eq!(status["cluster"]["connected"], false, "{status}");
    assert_eq!(status["cluster"]["url"], nats.url(), "{status}");
    // Serving goes on from the last state meanwhile.
    assert_eq!(view_of(&hosts[0], "Token/list").await.len(), 30);
    tokio::task::block_in_place(|| nats.restart());
    // Hosts reconnect by themselves: ingest succeeds again on both.
    for (n, host) in hosts.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (mint, status, body) = ingest(host, &mut next).await;
            if status == 200 {
                acked.insert(mint);
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                Instant::now() < deadline,
                "host {n} did not resume: {body}\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for i in 0..20 {
        let (mint, status, body) = ingest(&hosts[i % 2], &mut next).await;
        assert_eq!(status, 200, "{body}");
        acked.insert(mint);
    }
    let (_, status) = hosts[0].get_json("/status").await;
    assert_eq!(status["cluster"]["connected"], true, "{status}");
    // Every record up to its own last request (the records before the
    // outage, the marker, and most of what followed).
    assert!(
        status["cluster"]["applied"].as_u64().unwrap() > 31,
        "{status}"
    );
    let first = view_of(&hosts[0], "Token/list").await;
    let keys: BTreeSet<String> = first.keys().cloned().collect();
    assert_eq!(keys, acked, "every acknowledged event and nothing refused");
    let second = view_once_equal(&hosts[1], "Token/list", &first).await;
    assert_eq!(second, first);
    assert_eq!(
        hosts.iter().map(Host::pid).collect::<Vec<_>>(),
        pids,
        "no host restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_switches_every_host_at_the_same_stream_position() {
    let _serial = SERIAL.lock().await;
    // Scores double from its marker on (no reprojection of history).
    let double = variant_artifact("vista-games", "vista_games", "double-score-forward");
    let nats = NatsServer::start();
    let hosts = ready_members(&nats, 3, games).await;
    let drop_build = |host: &Host| drop_games_build(host, &double);
    let games: Vec<String> = (0..6).map(|g| format!("g{g}")).collect();
    let starts: Vec<Value> = games
        .iter()
        .enumerate()
        .map(|(n, g)| json!({"type": "game_started", "game": g, "players": ["ann", "bob"], "startedAt": n}))
        .collect();
    hosts[0].ingest_ok("games", &starts).await;
    // (position of the request, game, damage) for every attack acknowledged.
    let mut attacks: Vec<(u64, String, i64)> = Vec::new();
    let mut round = 0i64;
    let attack_round = |host: &Host, round: &mut i64| {
        *round += 1;
        let events: Vec<Value> = games
            .iter()
            .enumerate()
            .map(|(n, g)| json!({"type": "attack", "game": g, "player": "ann", "damage": (*round + n as i64) % 5 + 1}))
            .collect();
        let url = host.http_url();
        async move {
            let body: String = events.iter().map(|e| format!("{e}\n")).collect();
            let reply: Value = reqwest::Client::new()
                .post(format!("{url}/ingest/games"))
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (reply, events)
        }
    };
    let record = |reply: Value, events: Vec<Value>, attacks: &mut Vec<(u64, String, i64)>| {
        assert!(reply["seq"].is_string(), "{reply}");
        for event in events {
            attacks.push((
                position(&reply),
                event["game"].as_str().unwrap().to_owned(),
                event["damage"].as_i64().unwrap(),
            ));
        }
    };
    for i in 0..5 {
        let (reply, events) = attack_round(&hosts[i % 2], &mut round).await;
        record(reply, events, &mut attacks);
    }
    // The new build reaches the first host: it publishes the marker.
    drop_build(&hosts[0]);
    let plugins = hosts[0]
        .wait_for_plugins("the double-score build running", |p| {
            p.as_array().unwrap().iter().any(|r| {
                r["file"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("games-double.so")
                    && r["state"] == "loaded"
            })
        })
        .await;
    let marker = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["file"]
                .as_str()
                .unwrap_or("")
                .ends_with("games-double.so")
        })
        .unwrap()["since"]
        .as_u64()
        .expect("the build reports its marker's position");
    let fingerprint = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["file"]
                .as_str()
                .unwrap_or("")
                .ends_with("games-double.so")
        })
        .unwrap()["fingerprint"]
        .clone();
    // Ingest goes on through the host that has the build: the others
    // stop at the marker (an ingest through them would wait for them).
    for _ in 0..5 {
        let (reply, events) = attack_round(&hosts[0], &mut round).await;
        record(reply, events, &mut attacks);
    }
    // The third host reached the marker without the file: paused, not
    // ready, the missing build named.
    let third = &hosts[2];
    wait_unready(third, "paused").await;
    let (_, plugins) = third.get_json("/plugins").await;
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["state"] == "missing" && r["fingerprint"] == fingerprint),
        "{plugins}"
    );
    // A paused host takes no ingest it could not apply: 503, nothing
    // published (so the model below is unaffected).
    let (status, reply) = third
        .ingest(
            "games",
            json!({"type": "attack", "game": "g0", "player": "ann", "damage": 100}).to_string(),
        )
        .await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (503, Some("host-paused")),
        "{reply}"
    );
    drop_build(&hosts[1]);
    hosts[1].wait_ready(READY).await;
    for i in 0..5 {
        let (reply, events) = attack_round(&hosts[i % 2], &mut round).await;
        record(reply, events, &mut attacks);
    }
    drop_build(third);
    third.wait_ready(READY).await;
    for i in 0..3 {
        let (reply, events) = attack_round(&hosts[i % 3], &mut round).await;
        record(reply, events, &mut attacks);
    }

    let mut model: BTreeMap<String, i64> = games.iter().map(|g| (g.clone(), 0)).collect();
    for (position, game, damage) in &attacks {
        let factor = if *position < marker { 1 } else { 2 };
        *model.get_mut(game).unwrap() += factor * damage;
    }
    assert!(
        attacks.iter().any(|a| a.0 < marker) && attacks.iter().any(|a| a.0 > marker),
        "attacks on both sides of the marker"
    );
    let views = game_views_once_scored(&hosts, &model).await;
    for (n, view) in views.iter().enumerate() {
        assert_eq!(field(view, "score"), model, "host {n} equals the model");
        assert_eq!(view, &views[0], "host {n} equals host 0, `_seq`s included");
    }
    for host in &hosts {
        let (_, plugins) = host.get_json("/plugins").await;
        let running = plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "loaded")
            .unwrap()
            .clone();
        assert_eq!(running["fingerprint"], fingerprint, "{plugins}");
        assert_eq!(
            running["since"], marker,
            "every host switched at the same position"
        );
    }

    // A host joining with only the old build: it warns that its build
    // differs from the cluster's, publishes no marker (the cluster stays on
    // the new build) and pauses at the marker, not ready.
    let late = Host::cluster_member(&nats, self::games()).await;
    wait_unready(&late, "paused").await;
    assert!(
        late.log().contains("differs from the cluster's"),
        "{}",
        late.log()
    );
    let (_, plugins) = hosts[0].get_json("/plugins").await;
    let running: Vec<&Value> = plugins
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "loaded")
        .collect();
    assert_eq!(running.len(), 1, "{plugins}");
    assert_eq!(
        running[0]["fingerprint"], fingerprint,
        "the cluster kept the new build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprojection_happens_at_one_log_position_on_every_host() {
    let _serial = SERIAL.lock().await;
    let double = variant_artifact("vista-games", "vista_games", "double-score");
    let nats = NatsServer::start();
    let hosts = ready_members(&nats, 2, games).await;
    let games: Vec<String> = (0..5).map(|g| format!("r{g}")).collect();
    let starts: Vec<Value> = games
        .iter()
        .enumerate()
        .map(
            |(n, g)| json!({"type": "game_started", "game": g, "players": ["ann"], "startedAt": n}),
        )
        .collect();
    hosts[0].ingest_ok("games", &starts).await;
    let mut damage: BTreeMap<String, i64> = games.iter().map(|g| (g.clone(), 0)).collect();
    let mut attack = |round: i64| -> Vec<Value> {
        games
            .iter()
            .enumerate()
            .map(|(n, g)| {
                let d = (round + n as i64) % 4 + 1;
                *damage.get_mut(g).unwrap() += d;
                json!({"type": "attack", "game": g, "player": "ann", "damage": d})
            })
            .collect()
    };
    for round in 0..6 {
        hosts[round % 2]
            .ingest_ok("games", &attack(round as i64))
            .await;
    }
    // Refused in the log (no such game): skipped by the rebuild everywhere.
    let (status, _) = hosts[1]
        .ingest(
            "games",
            json!({"type": "attack", "game": "nope", "player": "x", "damage": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 422);

    // Asked through one host: a marker, and both rebuild with the running
    // build (same code, so nothing changes) and go on.
    let reply = reqwest::Client::new()
        .post(format!("{}/plugins/games/reproject", hosts[1].http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    for host in &hosts {
        host.wait_for_plugins("the reprojection done", |p| {
            p.as_array().unwrap().iter().any(|r| {
                r["name"] == "games"
                    && r["reprojection"]["state"] == "done"
                    && r["reprojection"]["changed"] == 0
            })
        })
        .await;
    }

    // A build that scores double and asks for reprojection: at its marker
    // every host recomputes the whole history with it.
    let drop_build = |host: &Host| drop_games_build(host, &double);
    drop_build(&hosts[0]);
    for round in 6..9 {
        hosts[0].ingest_ok("games", &attack(round)).await;
    }
    drop_build(&hosts[1]);
    hosts[1].wait_ready(READY).await;
    for round in 9..12 {
        hosts[round as usize % 2]
            .ingest_ok("games", &attack(round))
            .await;
    }
    let model: BTreeMap<String, i64> = damage.iter().map(|(g, d)| (g.clone(), 2 * d)).collect();
    let views = game_views_once_scored(&hosts, &model).await;
    assert_eq!(
        field(&views[0], "score"),
        model,
        "the whole history scored double"
    );
    assert_eq!(views[1], views[0], "both hosts equal, `_seq`s included");
    for host in &hosts {
        let (_, plugins) = host.get_json("/plugins").await;
        let running = plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "loaded")
            .unwrap()
            .clone();
        assert_eq!(running["reprojection"]["state"], "done", "{plugins}");
        assert_eq!(
            running["reprojection"]["changed"], 10,
            "5 games deleted and replaced: {plugins}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lost_its_store_is_reported_not_consumed_in_silence() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let host = Host::cluster_member(&nats, tokens()).await;
    host.wait_ready(READY).await;
    for i in 0..3 {
        host.ingest_ok("tokens", &[created(&format!("s{i}"), i)])
            .await;
    }
    tokio::task::block_in_place(|| nats.restart_with_empty_store());
    let body = wait_unready(&host, "stream-behind").await;
    assert!(
        body["reason"].as_str().unwrap().contains("before position"),
        "{body}"
    );
    // Ingest is refused rather than published where this host would skip it.
    let (status, reply) = host.ingest("tokens", created("lost", 1).to_string()).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (503, Some("log-unavailable")),
        "{reply}"
    );
    assert!(
        host.log().contains("ends before what this host applied"),
        "{}",
        host.log()
    );
    // What it holds keeps being served.
    assert_eq!(view_of(&host, "Token/list").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_replicas_losing_a_nats_server_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let mut servers = NatsServer::start_cluster(3);
    // Each host talks to its own NATS server; the stream keeps 3 replicas.
    let mut hosts = Vec::new();
    for server in &servers[..2] {
        hosts.push(
            Host::start(
                tokens(),
                &["--cluster", &server.url(), "--cluster-replicas", "3"],
            )
            .await,
        );
    }
    for host in &hosts {
        host.wait_ready(Duration::from_secs(60)).await;
    }
    let http = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut retried = 0;
    for i in 0..60 {
        if i == 20 {
            // The first host's server dies: the host fails over to another
            // and the stream keeps a majority of its replicas.
            tokio::task::block_in_place(|| servers[0].kill9());
        }
        let host = &hosts[i % 2];
        let mint = format!("r{i:03}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = http
                .post(format!("{}/ingest/tokens", host.http_url()))
                .body(created(&mint, i as i64).to_string())
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let body: Value = reply.json().await.unwrap();
            if status == 200 {
                acked.insert(mint.clone());
                break;
            }
            if status == 202 {
                // In the log, not applied by this host within 30 s (its
                // consumer was on the dead server): acknowledged all the
                // same, so it must reach every host below.
                assert_eq!(body["applied"], false, "{body}");
                assert!(body["position"].as_u64().is_some(), "{body}");
                acked.insert(mint.clone());
                break;
            }
            // While the stream elects a new leader: 503, nothing stored.
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"], "log-unavailable", "{body}");
            retried += 1;
            assert!(
                Instant::now() < deadline,
                "no recovery: {body}\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("requests answered 503 during the failover: {retried}");
    let mut views = Vec::new();
    for host in &hosts {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let view = view_of(host, "Token/list").await;
            let keys: BTreeSet<String> = view.keys().cloned().collect();
            if keys.is_superset(&acked) || Instant::now() >= deadline {
                views.push(view);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let keys: BTreeSet<String> = views[0].keys().cloned().collect();
    // A 503 whose publish reached the stream before the answer was lost
    // may be applied too (its outcome was unknown); nothing acknowledged
    // is missing and nothing was invented.
    assert!(
        keys.is_superset(&acked),
        "every acknowledged event is there"
    );
    assert!(
        keys.iter().all(|k| k.starts_with('r')),
        "only posted events: {keys:?}"
    );
    assert_eq!(views[0], views[1], "both hosts equal, `_seq`s included");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_hosts_data_directory_is_refused_in_cluster_mode() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut single = Host::with_tokens().await;
    single.ingest_ok("tokens", &[created("kept", 1)]).await;
    single.terminate();
    single.wait_exit(Duration::from_secs(10)).expect("stopped");
    // Its log's record numbers would be read as stream positions: refused,
    // both named, before anything is served.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(vista_binary())
            .arg("serve")
            .arg("--plugins")
            .arg(&single.plugins_dir)
            .arg("--data")
            .arg(single.data_dir())
            .args(["--listen", "127.0.0.1:0", "--cluster", &nats.url()])
            .output()
            .expect("run vista")
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("a single host's event log")
            && stderr.contains("checkpoints of cluster stream \"VISTA\""),
        "{stderr}"
    );
}
