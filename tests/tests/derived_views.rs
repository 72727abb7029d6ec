//! Derived views from the real `games` plugin over a real socket: entering,
//! changing, leaving, push-out and pull-in at the window's edge, source
//! deletes, a filter on a missing field, ties, and `take`/`skip`.

use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{Host, WsClient};

const QUIET: Duration = Duration::from_millis(300);

fn started(game: &str, at: i64) -> Value {
    json!({"type": "game_started", "game": game, "players": ["ann", "bob"], "startedAt": at})
}

fn attack(game: &str, damage: i64) -> Value {
    json!({"type": "attack", "game": game, "player": "ann", "damage": damage})
}

fn ended(game: &str) -> Value {
    json!({"type": "game_ended", "game": game, "winner": "ann"})
}

fn removed(game: &str) -> Value {
    json!({"type": "game_removed", "game": game})
}

async fn subscribe(host: &Host, request: Value) -> (WsClient, Vec<String>) {
    let mut client = host.client().await;
    client.subscribe(request).await;
    let keys = client.snapshot_keys().await;
    (client, keys)
}

/// Reads `n` frames as (op, key).
async fn frames(client: &mut WsClient, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let f = client.recv_json().await;
        out.push((
            f["op"].as_str().unwrap().to_owned(),
            f["key"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

fn ops(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(o, k)| (o.to_string(), k.to_string()))
        .collect()
}

#[tokio::test]
async fn subscribed_carries_the_view_sort_and_the_snapshot_is_the_window_in_order() {
    let host = Host::with_games().await;
    let order = [7, 3, 12, 1, 9, 5, 11, 2, 8, 10, 4, 6];
    host.ingest_ok(
        "games",
        &order
            .iter()
            .map(|t| started(&format!("g{t:02}"), *t))
            .collect::<Vec<_>>(),
    )
    .await;
    host.ingest_ok("games", &[ended("g12")]).await;
    let mut client = host.client().await;
    let subscribed = client
        .subscribe(json!({"type": "subscribe", "view": "ActiveGame/latest"}))
        .await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "view": "ActiveGame/latest", "mode": "list", "sort": {"field": ["startedAt"], "order": "desc"}})
    );
    let keys: Vec<String> = client.snapshot_keys().await;
    let expected: Vec<String> = (2..=11).rev().map(|t| format!("g{t:02}")).collect();
    assert_eq!(keys, expected, "active games, newest first, 10 of them");
}

#[tokio::test]
async fn games_enter_change_inside_and_leave_the_view() {
    let host = Host::with_games().await;
    let (mut client, keys) = subscribe(
        &host,
        json!({"type": "subscribe", "view": "ActiveGame/latest"}),
    )
    .await;
    assert!(keys.is_empty());

    host.ingest_ok("games", &[started("g1", 100)]).await;
    let enter = client.recv_json().await;
    assert_eq!(
        (enter["op"].as_str(), enter["key"].as_str()),
        (Some("upsert"), Some("g1"))
    );
    assert_eq!(enter["entity"], "ActiveGame/latest");
    assert_eq!(enter["data"]["status"], "active");
    assert_eq!(enter["data"]["players"], json!(["ann", "bob"]));

    host.ingest_ok("games", &[attack("g1", 5), attack("g1", 2)])
        .await;
    let first = client.recv_json().await;
    let change = client.recv_json().await;
    assert_eq!(first["data"]["score"], 5);
    assert_eq!(
        (change["op"].as_str(), change["key"].as_str()),
        (Some("upsert"), Some("g1"))
    );
    assert_eq!(change["data"]["score"], 7, "upsert carries the full entity");
    assert_eq!(change["data"]["events"].as_array().unwrap().len(), 2);

    host.ingest_ok("games", &[ended("g1")]).await;
    let leave = client.recv_json().await;
    assert_eq!(
        (leave["op"].as_str(), leave["key"].as_str(), &leave["data"]),
        (Some("delete"), Some("g1"), &Value::Null)
    );
    // Changes to a game outside the view send nothing.
    host.ingest_ok("games", &[attack("g1", 1)]).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_newcomer_pushes_the_last_member_out_and_a_leaver_pulls_the_next_in() {
    let host = Host::with_games().await;
    host.ingest_ok(
        "games",
        &(1..=10)
            .map(|t| started(&format!("g{t:02}"), t))
            .collect::<Vec<_>>(),
    )
    .await;
    let (mut client, keys) = subscribe(
        &host,
        json!({"type": "subscribe", "view": "ActiveGame/latest"}),
    )
    .await;
    assert_eq!(keys.len(), 10);

    host.ingest_ok("games", &[started("g11", 11)]).await;
    assert_eq!(
        frames(&mut client, 2).await,
        ops(&[("delete", "g01"), ("upsert", "g11")])
    );
    // Older than every member: not in the window, nothing sent.
    host.ingest_ok("games", &[started("g00", 0)]).await;
    client.expect_silence(QUIET).await;

    host.ingest_ok("games", &[ended("g05")]).await;
    assert_eq!(
        frames(&mut client, 2).await,
        ops(&[("delete", "g05"), ("upsert", "g01")])
    );
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn deleting_the_source_entity_removes_it_from_every_derived_view() {
    let host = Host::with_games().await;
    host.ingest_ok("games", &[started("g1", 1), started("g2", 2), ended("g2")])
        .await;
    let (mut active, keys) = subscribe(
        &host,
        json!({"type": "subscribe", "view": "ActiveGame/latest"}),
    )
    .await;
    assert_eq!(keys, ["g1"]);
    let (mut top, keys) = subscribe(&host, json!({"type": "subscribe", "view": "Game/top"})).await;
    assert_eq!(keys, ["g1", "g2"]);
    let (mut decided, keys) =
        subscribe(&host, json!({"type": "subscribe", "view": "Game/decided"})).await;
    assert_eq!(keys, ["g2"]);

    host.ingest_ok("games", &[removed("g2")]).await;
    assert_eq!(frames(&mut top, 1).await, ops(&[("delete", "g2")]));
    assert_eq!(frames(&mut decided, 1).await, ops(&[("delete", "g2")]));
    active.expect_silence(QUIET).await;

    host.ingest_ok("games", &[removed("g1")]).await;
    assert_eq!(frames(&mut active, 1).await, ops(&[("delete", "g1")]));
    assert_eq!(frames(&mut top, 1).await, ops(&[("delete", "g1")]));
    decided.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_filter_on_a_missing_field_never_matches() {
    let host = Host::with_games().await;
    host.ingest_ok("games", &[started("g1", 1), started("g2", 2)])
        .await;
    // Game/decided filters on `winner != ""`: undecided games have no winner at all.
    let (mut client, keys) =
        subscribe(&host, json!({"type": "subscribe", "view": "Game/decided"})).await;
    assert!(keys.is_empty(), "{keys:?}");
    host.ingest_ok("games", &[ended("g2")]).await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("g2"))
    );
    assert_eq!(frame["data"]["winner"], "ann");
    host.ingest_ok("games", &[attack("g1", 3)]).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn ties_are_broken_by_key_ascending() {
    let host = Host::with_games().await;
    host.ingest_ok(
        "games",
        &[
            started("g3", 1),
            started("g1", 2),
            started("g2", 3),
            started("g4", 4),
        ],
    )
    .await;
    let (mut client, keys) =
        subscribe(&host, json!({"type": "subscribe", "view": "Game/top"})).await;
    assert_eq!(keys, ["g1", "g2", "g3"], "equal scores: key ascending");
    host.ingest_ok("games", &[attack("g4", 1)]).await;
    assert_eq!(
        frames(&mut client, 2).await,
        ops(&[("delete", "g3"), ("upsert", "g4")])
    );
    // g3 ties g4 at 1 and sorts before it: g3, g4, g1.
    host.ingest_ok("games", &[attack("g3", 1)]).await;
    assert_eq!(
        frames(&mut client, 2).await,
        ops(&[("delete", "g2"), ("upsert", "g3")])
    );
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn take_and_skip_window_a_derived_view_within_its_limit() {
    let host = Host::with_games().await;
    host.ingest_ok(
        "games",
        &(1..=12)
            .map(|t| started(&format!("g{t:02}"), t))
            .collect::<Vec<_>>(),
    )
    .await;
    // View order: g12 g11 g10 g09 g08 g07 g06 g05 g04 g03 | g02 g01 (limit 10).
    let (mut middle, keys) = subscribe(
        &host,
        json!({"type": "subscribe", "view": "ActiveGame/latest", "skip": 2, "take": 3}),
    )
    .await;
    assert_eq!(keys, ["g10", "g09", "g08"]);
    let (mut tail, keys) = subscribe(
        &host,
        json!({"type": "subscribe", "view": "ActiveGame/latest", "skip": 8, "take": 5}),
    )
    .await;
    assert_eq!(
        keys,
        ["g04", "g03"],
        "the view's own limit (10) caps the window"
    );

    host.ingest_ok("games", &[started("g13", 13)]).await;
    // g13 g12 g11 | g10 g09 g08 ... : g11 enters the middle window, g08 leaves.
    assert_eq!(
        frames(&mut middle, 2).await,
        ops(&[("delete", "g08"), ("upsert", "g11")])
    );
    // ... g05 g04 | g03 pushed beyond the limit.
    assert_eq!(
        frames(&mut tail, 2).await,
        ops(&[("delete", "g03"), ("upsert", "g05")])
    );
    middle.expect_silence(QUIET).await;
    tail.expect_silence(QUIET).await;
}
