//! Aggregates against the real host: a plugin that never reads state
//! (`tests/fixtures/aggregates`) gets `add`, `count`, `max`, `min`,
//! `set_once` and `unique_count` evaluated by the host; subscribers receive
//! ordinary frames with the results (never the hidden member set); and the
//! values, `unique_count`'s hidden set included, are the same after a
//! `kill -9` and restart (replayed from the log, or loaded from a
//! checkpoint) and after a reprojection.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{apply_frame, Host, PluginFile, WsClient};

fn play(player: &str, points: i64, opponent: &str) -> Value {
    json!({"type": "play", "player": player, "points": points, "opponent": opponent})
}

async fn scoreboard(extra: &[&str]) -> Host {
    Host::start(
        vec![PluginFile::Built(
            "vista_fixture_aggregates",
            "scoreboard.so",
        )],
        extra,
    )
    .await
}

/// The whole `Player/list` view as a fresh subscriber's snapshot holds it.
async fn players(host: &Host) -> BTreeMap<String, Value> {
    let mut client = WsClient::connect(&host.ws_url()).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Player/list"}))
        .await;
    client.snapshot().await.into_iter().collect()
}

fn without_seq(mut value: Value) -> Value {
    value.as_object_mut().unwrap().remove("_seq");
    value
}

/// Plays before the crash: ann meets bob twice and cy once.
async fn history(host: &Host) {
    host.ingest_ok(
        "plays",
        &[
            play("ann", 5, "bob"),
            play("ann", -2, "cy"),
            play("dan", 1, "ann"),
        ],
    )
    .await;
    host.ingest_ok("plays", &[play("ann", 9, "bob")]).await;
}

fn expected_ann() -> Value {
    json!({"name": "ann", "points": 12, "games": 3, "best": 9, "worst": -2,
           "firstOpponent": "bob", "opponents": 2})
}

/// After a restart, the next play must count only a new opponent: the
/// hidden set survived. Returns ann as a live subscriber saw it.
async fn continue_after_restart(host: &Host) {
    let mut live = WsClient::connect(&host.ws_url()).await;
    live.subscribe(json!({"type": "subscribe", "view": "Player/state", "key": "ann"}))
        .await;
    let mut seen = BTreeMap::new();
    for frame in live.snapshot_frames().await {
        apply_frame(&mut seen, &frame);
    }
    host.ingest_ok("plays", &[play("ann", 1, "bob"), play("ann", 1, "eve")])
        .await;
    // bob again: the count does not change, so it is left out of the frame.
    let frame = live.recv_json().await;
    assert_eq!(frame["op"], "patch", "{frame}");
    assert!(frame["data"].get("opponents").is_none(), "{frame}");
    assert_eq!(frame["data"]["games"], 4, "results, not operands: {frame}");
    apply_frame(&mut seen, &frame);
    let frame = live.recv_json().await;
    assert_eq!(frame["data"]["opponents"], 3, "eve is new: {frame}");
    apply_frame(&mut seen, &frame);
    let ann = without_seq(seen["ann"].clone());
    assert_eq!(
        ann["opponents"], 3,
        "bob was already counted, eve is new: {ann}"
    );
    assert_eq!(ann["games"], 5);
    assert_eq!(ann["points"], 14);
    assert_eq!(ann["firstOpponent"], "bob");
    assert_eq!(without_seq(players(host).await["ann"].clone()), ann);
}

#[tokio::test]
async fn aggregates_are_evaluated_by_the_host_and_sent_as_results() {
    let host = scoreboard(&["--in-memory"]).await;
    let mut client = WsClient::connect(&host.ws_url()).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Player/list"}))
        .await;
    assert!(client.snapshot_frames().await[0]["data"]
        .as_array()
        .unwrap()
        .is_empty());
    history(&host).await;
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        let frame = client.recv_json().await;
        assert!(
            !frame.to_string().contains("\"cy\"") || frame["key"] == "dan",
            "no opponent member ever reaches a client: {frame}"
        );
        apply_frame(&mut seen, &frame);
    }
    assert_eq!(without_seq(seen["ann"].clone()), expected_ann());
    assert_eq!(
        without_seq(players(&host).await["ann"].clone()),
        expected_ann()
    );
    // A u64 beyond 2^53 plus more stays exact (sent as a string).
    host.ingest_ok(
        "plays",
        &[play("big", i64::MAX, "x"), play("big", i64::MAX, "x")],
    )
    .await;
    assert_eq!(
        players(&host).await["big"]["points"],
        "18446744073709551614"
    );
    // A derived view over an aggregate: ann has met 2 distinct opponents.
    let mut regulars = WsClient::connect(&host.ws_url()).await;
    regulars
        .subscribe(json!({"type": "subscribe", "view": "Player/regulars"}))
        .await;
    assert_eq!(regulars.snapshot_keys().await, vec!["ann".to_owned()]);
    // A malformed aggregate is refused with what is wrong, nothing applied.
    let (status, body) = host
        .ingest("plays", r#"{"type":"bad","player":"ann"}"#)
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body.to_string();
    assert!(
        message
            .contains("aggregate add at \\\"points\\\": the operand \\\"lots\\\" is not a number"),
        "{message}"
    );
}

#[tokio::test]
async fn replay_after_kill_9_restores_aggregates_and_the_hidden_set() {
    let mut host = scoreboard(&[]).await;
    history(&host).await;
    let before = players(&host).await;
    assert_eq!(without_seq(before["ann"].clone()), expected_ann());
    host.kill9();
    host.restart().await;
    assert_eq!(players(&host).await, before, "replayed from the log");
    assert!(!host.log().contains("checkpoint loaded"), "{}", host.log());
    continue_after_restart(&host).await;
}

#[tokio::test]
async fn a_checkpoint_keeps_the_hidden_set() {
    let mut host = scoreboard(&["--checkpoint-every-events", "1"]).await;
    history(&host).await;
    let before = players(&host).await;
    // The checkpoint is written by the log writer after the request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    host.restart().await;
    assert!(host.log().contains("checkpoint loaded"), "{}", host.log());
    assert_eq!(players(&host).await, before, "loaded from the checkpoint");
    continue_after_restart(&host).await;
}

#[tokio::test]
async fn a_reprojection_rebuilds_the_same_aggregates() {
    let host = scoreboard(&[]).await;
    history(&host).await;
    host.ingest_ok(
        "plays",
        &[
            json!({"type": "quit", "player": "dan"}),
            play("dan", 4, "zed"),
        ],
    )
    .await;
    let before = players(&host).await;
    let response = reqwest::Client::new()
        .post(format!("{}/plugins/scoreboard/reproject", host.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let plugins = host
        .wait_for_plugins("the reprojection to finish", |plugins| {
            plugins
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["reprojection"]["state"] == "done")
        })
        .await;
    let report = &plugins.as_array().unwrap()[0]["reprojection"];
    assert_eq!(
        report["changed"], 0,
        "same build, same values and sets: {report}"
    );
    assert_eq!(players(&host).await, before);
    // dan's set restarted at his deletion: zed only.
    assert_eq!(before["dan"]["opponents"], 1);
    continue_after_restart(&host).await;
}
