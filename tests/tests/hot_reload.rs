//! Hot reload with the real `games` plugin and a second real build of it
//! (`--features alt-views`): clients stay connected and converge; every way
//! a file arrives is handled; broken builds and deletions are safe.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{
    plugin_artifact, variant_artifact, Host, NodeScript, PluginFile, Received, WsClient,
};

const QUIET: Duration = Duration::from_millis(400);

fn alt_build() -> PathBuf {
    variant_artifact("vista-games", "vista_games", "alt-views")
}

fn games_version(plugins: &Value) -> Option<String> {
    plugins
        .as_array()?
        .iter()
        .find(|p| p["name"] == "games" && p["state"] == "loaded")
        .and_then(|p| p["version"].as_str().map(str::to_owned))
}

async fn wait_for_version(host: &Host, version: &str) -> Value {
    host.wait_for_plugins(&format!("games {version}"), |p| {
        games_version(p).as_deref() == Some(version)
    })
    .await
}

fn started(game: &str, at: i64) -> Value {
    json!({"type": "game_started", "game": game, "players": ["ann"], "startedAt": at})
}

fn attack(game: &str, damage: i64) -> Value {
    json!({"type": "attack", "game": game, "player": "ann", "damage": damage})
}

/// g01..g09 started at 1..9 with these scores; g05 ended.
async fn seed(host: &Host) {
    let scores = [0, 15, 5, 20, 0, 12, 30, 11, 50];
    let mut events: Vec<Value> = (1..=9).map(|i| started(&format!("g{i:02}"), i)).collect();
    for (i, score) in scores.iter().enumerate() {
        if *score > 0 {
            events.push(attack(&format!("g{:02}", i + 1), *score));
        }
    }
    events.push(json!({"type": "game_ended", "game": "g05", "winner": "ann"}));
    host.ingest_ok("games", &events).await;
}

/// Replaces a file the way `cp` does: truncate in place, write, close.
fn copy_over(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy plugin build");
}

/// Reads frames until `count` have arrived; fails on a close frame.
async fn collect(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < count {
        match client.recv().await {
            Received::Json { value, .. } => frames.push(value),
            Received::Close(close) => {
                panic!("the client was disconnected: {close:?} after {frames:?}")
            }
        }
    }
    frames
}

fn summary(frames: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by_view: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in frames {
        let (view, what) = if f["type"] == "error" {
            let view = f["message"]
                .as_str()
                .unwrap()
                .split('"')
                .nth(1)
                .unwrap()
                .to_owned();
            (view, format!("issue:{}", f["error"].as_str().unwrap()))
        } else if f["op"] == "subscribed" {
            (
                f["view"].as_str().unwrap().to_owned(),
                format!("subscribed:{}", f["sort"]),
            )
        } else if f["op"] == "snapshot" {
            let keys: Vec<&str> = f["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["key"].as_str().unwrap())
                .collect();
            (
                f["entity"].as_str().unwrap().to_owned(),
                format!("snapshot:{}", keys.join(",")),
            )
        } else {
            (
                f["entity"].as_str().unwrap().to_owned(),
                format!(
                    "{}:{}",
                    f["op"].as_str().unwrap(),
                    f["key"].as_str().unwrap()
                ),
            )
        };
        by_view.entry(view).or_default().push(what);
    }
    by_view
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_converges_raw_and_typescript_clients_without_reconnecting() {
    let alt = alt_build();
    let host = Host::with_games().await;
    seed(&host).await;

    let mut raw = host.client().await;
    let mut subscribed = Vec::new();
    // Game/list is not changed by the new build: it must get nothing.
    for view in ["ActiveGame/latest", "Game/top", "Game/decided", "Game/list"] {
        raw.subscribe(json!({"type": "subscribe", "view": view}))
            .await;
        subscribed.push(raw.snapshot_keys().await);
    }
    assert_eq!(
        subscribed[0],
        ["g09", "g08", "g07", "g06", "g04", "g03", "g02", "g01"]
    );
    assert_eq!(subscribed[1], ["g09", "g07", "g04"]);
    assert_eq!(subscribed[2], ["g05"]);
    raw.send(json!({"type": "subscribe", "view": "Game/ended"}))
        .await;
    assert_eq!(raw.recv_json().await["error"], "view-not-found");

    // The published TypeScript client on the same view, in its own process.
    let before = json!(["g09", "g08", "g07", "g06", "g04", "g03", "g02", "g01"]);
    let after = json!(["g09", "g08", "g07", "g06", "g04"]);
    let node = NodeScript::start(
        "reload.mjs",
        &host,
        &[
            ("EXPECT_BEFORE", before.to_string()),
            ("EXPECT_AFTER", after.to_string()),
        ],
    );

    copy_over(&alt, &host.plugins_dir.join("games.so"));
    wait_for_version(&host, "0.1.0+alt-views").await;

    // Filter and limit changed: exactly the deletes that turn the window
    // into the new one. Sort changed: delete/upsert diff, then `subscribed`
    // with the new sort. Removed view: `view-removed`. New view: the
    // pending subscription starts.
    let frames = collect(&mut raw, 3 + 7 + 1 + 2).await;
    let got = summary(&frames);
    assert_eq!(
        got["ActiveGame/latest"],
        strings(&["delete:g03", "delete:g02", "delete:g01"])
    );
    assert_eq!(
        got["Game/top"],
        strings(&[
            "delete:g09",
            "delete:g07",
            "delete:g04",
            "upsert:g01",
            "upsert:g02",
            "upsert:g03",
            r#"subscribed:{"field":["startedAt"],"order":"asc"}"#
        ])
    );
    assert_eq!(got["Game/decided"], strings(&["issue:view-removed"]));
    assert_eq!(
        got["Game/ended"],
        strings(&[
            r#"subscribed:{"field":["startedAt"],"order":"desc"}"#,
            "snapshot:g05"
        ])
    );
    assert!(
        !got.contains_key("Game/list"),
        "an unchanged view sends nothing: {got:?}"
    );
    raw.expect_silence(QUIET).await;

    // Same connection, still live, now served by the new build.
    host.ingest_ok("games", &[attack("g03", 10)]).await;
    let got = summary(&collect(&mut raw, 2).await);
    assert_eq!(got["Game/list"], strings(&["patch:g03"]));
    assert_eq!(got["Game/top"], strings(&["upsert:g03"]));
    // g03 now qualifies for ActiveGame/latest (score 15) but is 6th by
    // startedAt: outside the new limit of 5, so nothing there.
    raw.expect_silence(QUIET).await;

    // The TypeScript client converged on the same socket.
    let summary = node.finish("go");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["after"], after);
}

#[tokio::test]
async fn a_build_moved_into_place_is_loaded() {
    let alt = alt_build();
    let host = Host::with_games().await;
    let staging = host.plugins_dir.join("games.so.partial");
    std::fs::copy(&alt, &staging).unwrap();
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        games_version(&host.get_json("/plugins").await.1).as_deref(),
        Some("0.1.0"),
        "non-.so names are ignored"
    );
    std::fs::rename(&staging, host.plugins_dir.join("games.so")).unwrap();
    wait_for_version(&host, "0.1.0+alt-views").await;
    // And a rename away unloads it.
    std::fs::rename(
        host.plugins_dir.join("games.so"),
        host.plugins_dir.join("games.so.old"),
    )
    .unwrap();
    host.wait_for_plugins("games unloaded", |p| p.as_array().unwrap().is_empty())
        .await;
}

#[tokio::test]
async fn cargo_build_output_copied_in_under_a_new_name_replaces_the_running_build() {
    let alt = alt_build();
    let host = Host::with_games().await;
    seed(&host).await;
    copy_over(&alt, &host.plugins_dir.join("games-next.so"));
    let plugins = wait_for_version(&host, "0.1.0+alt-views").await;
    let old = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with("/games.so"))
        .unwrap();
    assert_eq!(old["state"], "superseded");
    // Entity state survived the swap.
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "ActiveGame/latest"}))
        .await;
    let keys: Vec<String> = client.snapshot_keys().await;
    assert_eq!(keys, ["g09", "g08", "g07", "g06", "g04"]);
}

#[tokio::test]
async fn a_slow_partial_copy_is_not_loaded_until_complete() {
    let alt = std::fs::read(alt_build()).unwrap();
    let host = Host::with_games().await;
    let target = host.plugins_dir.join("games.so");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&target)
        .unwrap();
    let half = alt.len() / 2;
    file.write_all(&alt[..half]).unwrap();
    file.flush().unwrap();
    for chunk in alt[half..].chunks(alt.len() / 8 + 1) {
        // Well beyond the watcher's debounce: a naive watcher would load now.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, plugins) = host.get_json("/plugins").await;
        assert_eq!(
            games_version(&plugins).as_deref(),
            Some("0.1.0"),
            "{plugins}"
        );
        assert_eq!(
            plugins[0]["last_error"],
            Value::Null,
            "a half-written file was loaded: {plugins}"
        );
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
    }
    drop(file);
    wait_for_version(&host, "0.1.0+alt-views").await;
    assert!(
        !host.log().contains("plugin refused"),
        "no partial load was attempted:\n{}",
        host.log()
    );
}

#[tokio::test]
async fn a_broken_build_keeps_the_old_version_serving() {
    let host = Host::with_games().await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "ActiveGame/latest"}))
        .await;
    client.snapshot().await;
    std::fs::write(
        host.plugins_dir.join("games.so"),
        b"\x7fELF but not really a library",
    )
    .unwrap();
    let plugins = host
        .wait_for_plugins("the refusal", |p| p[0]["last_error"].is_string())
        .await;
    assert_eq!(plugins[0]["state"], "loaded", "{plugins}");
    assert_eq!(plugins[0]["version"], "0.1.0");
    assert!(plugins[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("not a loadable shared library"));
    assert!(host
        .log()
        .lines()
        .any(|l| l.contains("plugin refused") && l.contains("games.so")));
    host.ingest_ok("games", &[started("g1", 1)]).await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("g1"))
    );

    // A build of another contract version dropped over it: refused too.
    std::fs::copy(
        plugin_artifact("vista_fixture_bad_contract"),
        host.plugins_dir.join("games.so"),
    )
    .unwrap();
    host.wait_for_plugins("the second refusal", |p| {
        p[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("contract version 999"))
    })
    .await;
    host.ingest_ok("games", &[attack("g1", 1)]).await;
    assert_eq!(client.recv_json().await["data"]["score"], 1);

    // A manifest error, then a build whose initialisation panics.
    for (fixture, reason) in [
        ("vista_fixture_bad_filter", "view \"Broken/cheap\": filter"),
        (
            "vista_fixture_manifest_panics",
            "panic: cannot initialise: configuration missing",
        ),
    ] {
        std::fs::copy(plugin_artifact(fixture), host.plugins_dir.join("games.so")).unwrap();
        host.wait_for_plugins(reason, |p| {
            p[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(reason))
        })
        .await;
        assert_eq!(
            games_version(&host.get_json("/plugins").await.1).as_deref(),
            Some("0.1.0")
        );
    }
    host.ingest_ok("games", &[attack("g1", 1)]).await;
    assert_eq!(
        client.recv_json().await["data"]["score"],
        2,
        "the first build still serves"
    );
}

#[tokio::test]
async fn deleting_the_file_unloads_the_views_and_keeps_the_entities() {
    let host = Host::with_games().await;
    host.ingest_ok("games", &[started("g1", 1), started("g2", 2)])
        .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "ActiveGame/latest"}))
        .await;
    assert_eq!(client.snapshot().await.len(), 2);

    std::fs::remove_file(host.plugins_dir.join("games.so")).unwrap();
    match client.recv().await {
        Received::Json { value, text, .. } => {
            assert!(text);
            assert_eq!(value["error"], "view-removed");
            assert_eq!(value["fatal"], false);
        }
        other => panic!("{other:?}"),
    }
    host.wait_for_plugins("games unloaded", |p| p.as_array().unwrap().is_empty())
        .await;
    let (status, reply) = host.ingest("games", started("g3", 3).to_string()).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (404, Some("unknown-stream")),
        "the projector stopped"
    );

    // The same build comes back: the pending subscription restarts with the kept entities.
    std::fs::copy(
        plugin_artifact("vista_games"),
        host.plugins_dir.join("games.so"),
    )
    .unwrap();
    assert_eq!(client.recv_json().await["op"], "subscribed");
    let keys: Vec<String> = client.snapshot_keys().await;
    assert_eq!(keys, ["g2", "g1"]);
}

#[tokio::test]
async fn a_pending_subscription_starts_when_a_plugin_provides_the_view() {
    let host = Host::start(Vec::<PluginFile>::new(), &[]).await;
    let mut client = host.client().await;
    client
        .send(json!({"type": "subscribe", "view": "ActiveGame/latest"}))
        .await;
    assert_eq!(client.recv_json().await["error"], "view-not-found");
    std::fs::copy(
        plugin_artifact("vista_games"),
        host.plugins_dir.join("games.so"),
    )
    .unwrap();
    let subscribed = client.recv_json().await;
    assert_eq!(subscribed["op"], "subscribed");
    assert_eq!(subscribed["view"], "ActiveGame/latest");
    assert_eq!(client.snapshot().await.len(), 0);
    host.ingest_ok("games", &[started("g1", 1)]).await;
    assert_eq!(client.recv_json().await["key"], "g1");
}
