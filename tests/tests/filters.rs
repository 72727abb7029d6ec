//! Per-subscription filters over raw WebSockets: the `filters` map of a
//! subscribe narrows a list or derived view to the matching entities (the
//! snapshot holds only them; entities moving in and out get `upsert` and
//! `delete`), subscriptions with equal filters share one filtered
//! sub-view, and malformed filters get a non-fatal `invalid-filter` issue.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{apply_frame, Host, WsClient};

fn created(mint: &str, symbol: &str, decimals: u8) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": symbol, "decimals": decimals, "supply": 1})
}

async fn expect_issue(client: &mut WsClient, code: &str) -> Value {
    let issue = client.recv_json().await;
    assert_eq!(issue["type"], "error", "{issue}");
    assert_eq!(issue["error"], code, "{issue}");
    assert_eq!(issue["fatal"], false, "{issue}");
    issue
}

#[tokio::test]
async fn a_filtered_list_holds_exactly_the_matching_entities() {
    let host = Host::with_tokens().await;
    host.ingest_ok(
        "tokens",
        &[
            created("a", "SOL", 9),
            created("b", "BONK", 5),
            created("c", "SOL", 6),
        ],
    )
    .await;
    let mut client = WsClient::connect(&host.ws_url()).await;
    let subscribed = client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "filters": {"symbol": "SOL"}}))
        .await;
    assert_eq!(subscribed["view"], "Token/list");
    let mut held: BTreeMap<String, Value> = client.snapshot().await.into_iter().collect();
    assert_eq!(
        held.keys().collect::<Vec<_>>(),
        ["a", "c"],
        "only SOL in the snapshot"
    );
    // A number filter in string form, on a nested-free numeric field.
    let mut nine = WsClient::connect(&host.ws_url()).await;
    nine.subscribe(json!({"type": "subscribe", "view": "Token/list", "filters": {"symbol": "SOL", "decimals": "9"}}))
        .await;
    assert_eq!(nine.snapshot_keys().await, ["a"]);

    // Enters by creation, leaves and returns by update, leaves by delete.
    host.ingest_ok("tokens", &[created("d", "SOL", 2)]).await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("d")),
        "{frame}"
    );
    apply_frame(&mut held, &frame);
    host.ingest_ok("tokens", &[created("b", "SOL", 5)]).await; // BONK -> SOL
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("b")),
        "{frame}"
    );
    apply_frame(&mut held, &frame);
    host.ingest_ok("tokens", &[created("a", "WIF", 9)]).await; // SOL -> WIF
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("delete"), Some("a")),
        "{frame}"
    );
    apply_frame(&mut held, &frame);
    let frame = nine.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("delete"), Some("a")),
        "{frame}"
    );
    // A change inside the filter is an ordinary patch of a base view.
    host.ingest_ok(
        "tokens",
        &[json!({"type": "supply_changed", "mint": "c", "delta": 4})],
    )
    .await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("patch"), Some("c")),
        "{frame}"
    );
    assert_eq!(frame["data"]["supply"], 5);
    apply_frame(&mut held, &frame);
    host.ingest_ok("tokens", &[json!({"type": "token_closed", "mint": "d"})])
        .await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("delete"), Some("d")),
        "{frame}"
    );
    apply_frame(&mut held, &frame);
    // Changes to non-matching entities send nothing.
    host.ingest_ok("tokens", &[created("e", "BONK", 1)]).await;
    client.expect_silence(Duration::from_millis(300)).await;
    nine.expect_silence(Duration::from_millis(10)).await;

    assert_eq!(held.keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(held["c"]["supply"], 5);
    // What a fresh filtered subscriber gets is what this one holds.
    let mut fresh = WsClient::connect(&host.ws_url()).await;
    fresh
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "filters": {"symbol": "SOL"}}))
        .await;
    let snapshot: BTreeMap<String, Value> = fresh.snapshot().await.into_iter().collect();
    assert_eq!(snapshot, held);
}

#[tokio::test]
async fn equal_filters_share_one_filtered_view_until_the_last_leaves() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", "SOL", 9)]).await;
    let mut one = WsClient::connect(&host.ws_url()).await;
    let mut two = WsClient::connect(&host.ws_url()).await;
    // Same filters, spelled in another order: one sub-view.
    one.subscribe(json!({"type": "subscribe", "view": "Token/list", "filters": {"symbol": "SOL", "decimals": 9}}))
        .await;
    assert_eq!(one.snapshot_keys().await, ["a"]);
    two.send_message(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"subscribe","view":"Token/list","filters":{"decimals":9,"symbol":"SOL"}}"#,
    ))
    .await;
    assert_eq!(two.recv_json().await["op"], "subscribed");
    assert_eq!(two.snapshot_keys().await, ["a"]);
    assert_eq!(host.metric("vista_filtered_views").await, 1.0);
    two.send(json!({"type": "subscribe", "view": "Token/list", "filters": {"symbol": "BONK"}}))
        .await;
    assert_eq!(two.recv_json().await["op"], "subscribed");
    assert!(two.snapshot_keys().await.is_empty());
    assert_eq!(
        host.metric("vista_filtered_views").await,
        2.0,
        "replaced: two sub-views"
    );
    one.send(json!({"type": "unsubscribe", "view": "Token/list"}))
        .await;
    one.sync().await;
    drop(two);
    let mut left = f64::NAN;
    for _ in 0..50 {
        left = host.metric("vista_filtered_views").await;
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0.0, "the last subscription took its sub-view with it");
}

#[tokio::test]
async fn filters_narrow_a_derived_view_before_its_limit() {
    let host = Host::with_games().await;
    let started = |g: &str, at: i64| json!({"type": "game_started", "game": g, "players": ["ann", "bob"], "startedAt": at});
    host.ingest_ok(
        "games",
        &[
            started("g1", 1),
            started("g2", 2),
            started("g3", 3),
            started("g4", 4),
        ],
    )
    .await;
    host.ingest_ok(
        "games",
        &[
            json!({"type": "attack", "game": "g1", "player": "ann", "damage": 9}),
            json!({"type": "attack", "game": "g2", "player": "ann", "damage": 8}),
            json!({"type": "attack", "game": "g3", "player": "ann", "damage": 7}),
            json!({"type": "attack", "game": "g4", "player": "ann", "damage": 1}),
            json!({"type": "game_ended", "game": "g2", "winner": "ann"}),
        ],
    )
    .await;
    // Game/top is the 3 best scores; with the filter, the 3 best active ones.
    let mut client = WsClient::connect(&host.ws_url()).await;
    client
        .subscribe(
            json!({"type": "subscribe", "view": "Game/top", "filters": {"status": "active"}}),
        )
        .await;
    assert_eq!(client.snapshot_keys().await, ["g1", "g3", "g4"]);
    host.ingest_ok(
        "games",
        &[json!({"type": "game_ended", "game": "g1", "winner": "bob"})],
    )
    .await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("delete"), Some("g1")),
        "{frame}"
    );
    client.expect_silence(Duration::from_millis(300)).await;
    host.ingest_ok("games", &[started("g5", 5)]).await;
    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("g5")),
        "{frame}"
    );
}

#[tokio::test]
async fn malformed_filters_get_a_non_fatal_invalid_filter_issue() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", "SOL", 9)]).await;
    let mut client = WsClient::connect(&host.ws_url()).await;
    for (filters, says) in [
        (json!(["symbol"]), "must be an object"),
        (
            json!({"symbol": {"in": ["SOL"]}}),
            "string, number or boolean",
        ),
        (json!({"meta..x": "1"}), "not a dot path"),
    ] {
        client
            .send(json!({"type": "subscribe", "view": "Token/list", "filters": filters}))
            .await;
        let issue = expect_issue(&mut client, "invalid-filter").await;
        assert!(issue["message"].as_str().unwrap().contains(says), "{issue}");
    }
    client
        .send(json!({"type": "subscribe", "view": "Token/state", "key": "a", "filters": {"symbol": "SOL"}}))
        .await;
    let issue = expect_issue(&mut client, "invalid-filter").await;
    assert!(
        issue["message"].as_str().unwrap().contains("list views"),
        "{issue}"
    );
    // Still serving this client; nothing was subscribed by the refused ones.
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "filters": {}}))
        .await;
    assert_eq!(client.snapshot_keys().await, ["a"], "{{}} is no filter");
    host.ingest_ok("tokens", &[created("b", "BONK", 1)]).await;
    assert_eq!(client.recv_json().await["key"], "b");
    client.expect_silence(Duration::from_millis(200)).await;
}
