//! The WebSocket protocol for base views, over a real socket against the
//! real host and the real `tokens` plugin, with a raw WebSocket client.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vista_tests::{Host, Received, WsClient};

const QUIET: Duration = Duration::from_millis(300);

fn created(mint: &str, supply: u64) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": format!("S{mint}"), "decimals": 6, "supply": supply})
}

fn supply(mint: &str, delta: i64) -> Value {
    json!({"type": "supply_changed", "mint": mint, "delta": delta})
}

fn trade(id: &str, mint: &str, price: f64, amount: u64) -> Value {
    json!({"type": "trade", "id": id, "mint": mint, "price": price, "amount": amount})
}

fn entries(frames: &[Value]) -> Vec<(String, Value)> {
    frames
        .iter()
        .flat_map(|f| f["data"].as_array().unwrap().clone())
        .map(|e| (e["key"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect()
}

fn keys(entries: &[(String, Value)]) -> Vec<&str> {
    entries.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn list_subscription_sends_subscribed_snapshot_then_patches() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), created("b", 2)])
        .await;
    let mut client = host.client().await;
    let subscribed = client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "view": "Token/list", "mode": "list", "sort": {"field": ["_seq"], "order": "desc"}})
    );
    let frames = client.snapshot_frames().await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["mode"], "list");
    assert_eq!(frames[0]["entity"], "Token/list");
    let snapshot = entries(&frames);
    assert_eq!(keys(&snapshot), ["b", "a"], "newest _seq first");
    assert_eq!(snapshot[1].1["supply"], 1);
    let seq_b = snapshot[0].1["_seq"].as_str().unwrap().to_owned();
    assert_eq!(seq_b.len(), 16);

    host.ingest_ok("tokens", &[supply("a", 5)]).await;
    let patch = client.recv_json().await;
    assert_eq!(patch["op"], "patch");
    assert_eq!(patch["mode"], "list");
    assert_eq!(patch["entity"], "Token/list");
    assert_eq!(patch["key"], "a");
    assert_eq!(patch["data"]["supply"], 6);
    assert!(
        patch["data"]["_seq"].as_str().unwrap() > seq_b.as_str(),
        "_seq grows and sorts as text"
    );
    assert_eq!(patch["seq"], patch["data"]["_seq"]);
    assert!(
        patch.get("append").is_none(),
        "a patch with no append paths leaves `append` out (it is optional)"
    );
}

#[tokio::test]
async fn a_new_entity_is_sent_as_its_event_left_it_even_when_a_later_event_changed_it() {
    // One request creates `a` and changes its supply. The views run after
    // the answer, behind the store: when the creation reaches them the
    // store already holds the changed supply, yet the creation's upsert
    // must carry the entity as the creation left it, and the change follow
    // as its own patch.
    let host = Host::with_tokens().await;
    let mut list = host.client().await;
    list.subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert!(entries(&list.snapshot_frames().await).is_empty());
    let mut state = host.client().await;
    state
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    assert!(entries(&state.snapshot_frames().await).is_empty());
    host.ingest_ok("tokens", &[created("a", 1), supply("a", 5)])
        .await;
    for client in [&mut list, &mut state] {
        let first = client.recv_json().await;
        assert_eq!(first["key"], "a", "{first}");
        assert_eq!(first["data"]["supply"], 1, "{first}");
        assert_eq!(first["data"]["_seq"], "0000000000000001", "{first}");
        let second = client.recv_json().await;
        assert_eq!(second["op"], "patch", "{second}");
        assert_eq!(second["data"]["supply"], 6, "{second}");
        assert_eq!(second["data"]["_seq"], "0000000000000002", "{second}");
    }
}

#[tokio::test]
async fn state_mode_sends_one_entity_and_its_patches() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), created("b", 2)])
        .await;
    let mut client = host.client().await;
    let subscribed = client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "view": "Token/state", "mode": "state"})
    );
    let frames = client.snapshot_frames().await;
    assert_eq!(frames[0]["mode"], "state");
    assert_eq!(frames[0]["data"].as_array().unwrap().len(), 1);
    assert_eq!(frames[0]["data"][0]["key"], "a");

    host.ingest_ok("tokens", &[supply("b", 1)]).await;
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    let patch = client.recv_json().await;
    assert_eq!(
        (
            patch["op"].as_str(),
            patch["key"].as_str(),
            patch["mode"].as_str()
        ),
        (Some("patch"), Some("a"), Some("state"))
    );
    assert_eq!(patch["data"]["supply"], 2);
    client.expect_silence(QUIET).await;

    // A state subscription to a key that does not exist yet: empty snapshot, then the entity.
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "later"}))
        .await;
    let frames = client.snapshot_frames().await;
    assert_eq!(frames[0]["data"], json!([]));
    host.ingest_ok("tokens", &[created("later", 9)]).await;
    let patch = client.recv_json().await;
    assert_eq!(
        (patch["key"].as_str(), patch["data"]["supply"].as_u64()),
        (Some("later"), Some(9))
    );
}

#[tokio::test]
async fn append_mode_sends_no_snapshot_only_new_events() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), trade("t0", "a", 1.0, 1)])
        .await;
    let mut client = host.client().await;
    let subscribed = client
        .subscribe(json!({"type": "subscribe", "view": "Trade/append"}))
        .await;
    assert_eq!(
        subscribed,
        json!({"op": "subscribed", "view": "Trade/append", "mode": "append"})
    );
    client.expect_silence(QUIET).await;
    host.ingest_ok("tokens", &[trade("t1", "a", 2.5, 3)]).await;
    let frame = client.recv_json().await;
    assert_eq!(frame["op"], "patch");
    assert_eq!(frame["mode"], "append");
    assert_eq!(frame["entity"], "Trade/append");
    assert_eq!(frame["key"], "t1");
    assert_eq!(frame["data"]["price"], 2.5);
    assert_eq!(frame["data"]["mint"], "a");
}

#[tokio::test]
async fn documented_legacy_message_forms_work() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1)]).await;
    let mut client = host.client().await;
    let subscribed = client
        .subscribe(json!({"view": "Token/list", "key": "*"}))
        .await;
    assert_eq!(subscribed["mode"], "list");
    assert_eq!(client.snapshot_frames().await[0]["data"][0]["key"], "a");
    client.send(json!({"op": "ping"})).await;
    client.send(json!({"type": "ping"})).await;
    client.expect_silence(QUIET).await;
    client
        .send(json!({"op": "unsubscribe", "view": "Token/list"}))
        .await;
    client.sync().await;
    host.ingest_ok("tokens", &[created("b", 1)]).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn snapshots_are_batched_50_then_100() {
    let host = Host::with_tokens().await;
    let mut created_so_far = 0;
    for (total, expected) in [
        (0, vec![0]),
        (1, vec![1]),
        (50, vec![50]),
        (51, vec![50, 1]),
        (150, vec![50, 100]),
        (151, vec![50, 100, 1]),
        (250, vec![50, 100, 100]),
    ] {
        let events: Vec<Value> = (created_so_far..total)
            .map(|i| created(&format!("m{i:03}"), i as u64))
            .collect();
        if !events.is_empty() {
            host.ingest_ok("tokens", &events).await;
        }
        created_so_far = total;
        let mut client = host.client().await;
        client
            .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
            .await;
        let frames = client.snapshot_frames().await;
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| f["data"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, expected, "batches for {total} entities");
        let completes: Vec<bool> = frames.iter().map(|f| f["complete"] == true).collect();
        let mut expected_completes = vec![false; frames.len()];
        *expected_completes.last_mut().unwrap() = true;
        assert_eq!(completes, expected_completes);
        let all: Vec<String> = frames
            .iter()
            .flat_map(|f| {
                f["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["key"].as_str().unwrap().to_owned())
            })
            .collect();
        let mut expected_keys: Vec<String> = (0..total).map(|i| format!("m{i:03}")).collect();
        expected_keys.reverse();
        assert_eq!(all, expected_keys, "every entity once, newest first");
    }
}

#[tokio::test]
async fn large_snapshots_and_large_patches_are_gzipped() {
    let host = Host::with_tokens().await;
    let events: Vec<Value> = (0..120).map(|i| created(&format!("m{i:03}"), i)).collect();
    host.ingest_ok("tokens", &events).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let mut snapshot_entities = 0;
    for _ in 0..2 {
        match client.recv().await {
            Received::Json {
                value,
                gzipped,
                text,
            } => {
                assert!(
                    gzipped && !text,
                    "snapshot batch of 50+ tokens is >= 1 KiB: gzipped binary"
                );
                snapshot_entities += value["data"].as_array().unwrap().len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(snapshot_entities, 120);

    // Small patch: plain JSON. Large patch: gzip.
    host.ingest_ok("tokens", &[supply("m001", 1)]).await;
    match client.recv().await {
        Received::Json { gzipped, value, .. } => assert!(!gzipped && value["data"]["supply"] == 2),
        other => panic!("{other:?}"),
    }
    let long_symbol = "X".repeat(3000);
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "big", "symbol": long_symbol, "decimals": 1, "supply": 1})],
    )
    .await;
    match client.recv().await {
        Received::Json { gzipped, value, .. } => {
            assert!(gzipped, "a patch over 1 KiB is gzipped");
            assert_eq!(value["data"]["symbol"].as_str().unwrap().len(), 3000);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn patches_carry_append_paths() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), trade("t1", "a", 1.0, 1)])
        .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "key": "a"}))
        .await;
    let snapshot = client.snapshot_frames().await;
    let mut entity = snapshot[0]["data"][0]["data"].clone();
    assert_eq!(
        entity["recentTrades"],
        json!([{"id": "t1", "price": 1.0, "amount": 1}])
    );

    host.ingest_ok("tokens", &[trade("t2", "a", 2.0, 5)]).await;
    let patch = client.recv_json().await;
    assert_eq!(patch["append"], json!(["recentTrades"]));
    assert_eq!(
        patch["data"]["recentTrades"],
        json!([{"id": "t2", "price": 2.0, "amount": 5}]),
        "only the new item"
    );
    assert_eq!(patch["data"]["lastPrice"], 2.0);
    // Applying the patch as a client does gives the server's state.
    let items = patch["data"]["recentTrades"].as_array().unwrap().clone();
    entity["recentTrades"].as_array_mut().unwrap().extend(items);
    assert_eq!(entity["recentTrades"].as_array().unwrap().len(), 2);
    assert_eq!(entity["recentTrades"][1]["id"], "t2");
}

#[tokio::test]
async fn deleting_an_entity_sends_delete_to_list_and_state() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), created("b", 1)])
        .await;
    let mut list = host.client().await;
    list.subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    list.snapshot_frames().await;
    let mut state = host.client().await;
    state
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    state.snapshot_frames().await;

    host.ingest_ok("tokens", &[json!({"type": "token_closed", "mint": "a"})])
        .await;
    for (client, mode) in [(&mut list, "list"), (&mut state, "state")] {
        let frame = client.recv_json().await;
        assert_eq!(frame["op"], "delete");
        assert_eq!(frame["mode"], mode);
        assert_eq!(frame["key"], "a");
        assert_eq!(frame["data"], Value::Null);
        assert!(
            frame.as_object().unwrap().contains_key("data"),
            "data:null is present"
        );
    }
    let mut fresh = host.client().await;
    fresh
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let frames = fresh.snapshot_frames().await;
    assert_eq!(frames[0]["data"].as_array().unwrap().len(), 1);
    assert_eq!(frames[0]["data"][0]["key"], "b");
}

#[tokio::test]
async fn key_filter_limits_a_list_subscription_to_one_key() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), created("b", 1)])
        .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "key": "b"}))
        .await;
    let frames = client.snapshot_frames().await;
    assert_eq!(frames[0]["data"].as_array().unwrap().len(), 1);
    assert_eq!(frames[0]["data"][0]["key"], "b");
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    host.ingest_ok("tokens", &[supply("b", 7)]).await;
    let patch = client.recv_json().await;
    assert_eq!(
        (patch["key"].as_str(), patch["data"]["supply"].as_u64()),
        (Some("b"), Some(8))
    );
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn take_and_skip_window_a_list_view() {
    let host = Host::with_tokens().await;
    // Created in order t1..t5: newest first is t5, t4, t3, t2, t1.
    let events: Vec<Value> = (1..=5).map(|i| created(&format!("t{i}"), 1)).collect();
    host.ingest_ok("tokens", &events).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "take": 2, "skip": 1}))
        .await;
    let frames = client.snapshot_frames().await;
    let window: Vec<&str> = frames[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(window, ["t4", "t3"]);

    // t1 moves to the front: order t1 t5 t4 t3 t2, window [t5, t4]: t3 leaves, t5 enters.
    host.ingest_ok("tokens", &[supply("t1", 1)]).await;
    let first = client.recv_json().await;
    let second = client.recv_json().await;
    assert_eq!(
        (first["op"].as_str(), first["key"].as_str()),
        (Some("delete"), Some("t3"))
    );
    assert_eq!(
        (second["op"].as_str(), second["key"].as_str()),
        (Some("upsert"), Some("t5"))
    );
    assert_eq!(
        second["data"]["symbol"], "St5",
        "upsert carries the full entity"
    );
    client.expect_silence(QUIET).await;

    // A change to t2 (outside the window, stays outside): t2 t1 t5 t4 t3 -> window [t1, t5].
    host.ingest_ok("tokens", &[supply("t2", 1)]).await;
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let f = client.recv_json().await;
        got.push((
            f["op"].as_str().unwrap().into(),
            f["key"].as_str().unwrap().into(),
        ));
    }
    assert_eq!(
        got,
        [
            ("delete".into(), "t4".into()),
            ("upsert".into(), "t1".into())
        ]
    );
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resubscribing_to_the_same_view_and_key_restarts_it_once() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1)]).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot_frames().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let again = client.snapshot_frames().await;
    assert_eq!(
        again[0]["data"][0]["key"], "a",
        "fresh snapshot on resubscribe"
    );
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    let patch = client.recv_json().await;
    assert_eq!(patch["op"], "patch");
    client.expect_silence(QUIET).await; // exactly one copy, stream not killed
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    assert_eq!(
        client.recv_json().await["data"]["supply"],
        3,
        "still streaming"
    );
}

#[tokio::test]
async fn unsubscribe_stops_only_that_subscription() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1)]).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot_frames().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    client.snapshot_frames().await;
    client
        .send(json!({"type": "unsubscribe", "view": "Token/list"}))
        .await;
    client.sync().await;
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    let frame = client.recv_json().await;
    assert_eq!(frame["entity"], "Token/state");
    client.expect_silence(QUIET).await;
    client
        .send(json!({"type": "unsubscribe", "view": "Token/state", "key": "a"}))
        .await;
    client.sync().await;
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    client.expect_silence(QUIET).await;
}

async fn expect_issue(client: &mut WsClient, code: &str) -> Value {
    match client.recv().await {
        Received::Json { value, text, .. } => {
            assert!(text, "socket issues are text frames");
            assert_eq!(value["type"], "error");
            assert_eq!(value["error"], code);
            assert_eq!(value["code"], code);
            assert_eq!(value["fatal"], false);
            assert_eq!(value["retryable"], false);
            assert!(value["message"].is_string());
            value
        }
        other => panic!("expected a socket issue, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_views_and_malformed_messages_get_socket_issues_and_keep_the_connection() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1)]).await;
    let mut client = host.client().await;
    client
        .send(json!({"type": "subscribe", "view": "Nope/list"}))
        .await;
    let issue = expect_issue(&mut client, "view-not-found").await;
    assert!(issue["message"].as_str().unwrap().contains("Nope/list"));
    client.send_message(Message::text("{not json")).await;
    expect_issue(&mut client, "invalid-message").await;
    client.send(json!({"type": "subscribe"})).await;
    let issue = expect_issue(&mut client, "invalid-message").await;
    assert!(issue["message"].as_str().unwrap().contains("view"));
    client.send(json!({"type": "teleport"})).await;
    expect_issue(&mut client, "invalid-message").await;
    // Still serving this client.
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(client.snapshot_frames().await[0]["data"][0]["key"], "a");
}

#[tokio::test]
async fn a_malformed_after_cursor_is_reported_and_the_subscription_starts_from_the_beginning() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1), created("b", 1)])
        .await;
    host.ingest_ok("tokens", &[created("c", 1)]).await;
    let mut client = host.client().await;
    for (view, after) in [
        ("Token/list", json!("not-a-cursor")),
        ("Token/state", json!("")),
        ("Token/list", json!(-1)),
    ] {
        client
            .send(json!({"type": "subscribe", "view": view, "after": after}))
            .await;
        // First the issue, naming the cursor; the subscribe is still made.
        let issue = expect_issue(&mut client, "invalid-cursor").await;
        let message = issue["message"].as_str().unwrap();
        assert!(message.contains("after"), "{message}");
        let subscribed = client.recv_json().await;
        assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
        assert_eq!(subscribed["view"], view);
        // A full snapshot, as without a cursor.
        let mut keys = client.snapshot_keys().await;
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"], "{view} after {after}");
    }
    // And it is live.
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    assert_eq!(client.recv_json().await["op"], "patch");
}

#[tokio::test]
async fn binary_client_frames_are_accepted_as_json_or_refused_clearly() {
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[created("a", 1)]).await;
    let mut client = host.client().await;
    client
        .send_message(Message::binary(vec![0xff, 0xfe, 0x00]))
        .await;
    let issue = expect_issue(&mut client, "invalid-message").await;
    assert!(issue["message"].as_str().unwrap().contains("binary"));
    client
        .send_message(Message::binary(
            json!({"type": "subscribe", "view": "Token/list"})
                .to_string()
                .into_bytes(),
        ))
        .await;
    assert_eq!(client.recv_json().await["op"], "subscribed");
    assert_eq!(client.snapshot_frames().await[0]["data"][0]["key"], "a");
}

#[tokio::test]
async fn integers_beyond_2_pow_53_are_sent_as_strings() {
    let host = Host::with_tokens().await;
    host.ingest_ok(
        "tokens",
        &[
            created("big", u64::MAX),
            created("safe", 9_007_199_254_740_991),
        ],
    )
    .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let entries = entries(&client.snapshot_frames().await);
    let by_key = |k: &str| entries.iter().find(|(key, _)| key == k).unwrap().1.clone();
    assert_eq!(by_key("big")["supply"], json!("18446744073709551615"));
    assert_eq!(by_key("safe")["supply"], json!(9_007_199_254_740_991u64));
    // Arithmetic in the projector still uses the exact number.
    host.ingest_ok("tokens", &[supply("big", -15)]).await;
    assert_eq!(
        client.recv_json().await["data"]["supply"],
        json!("18446744073709551600")
    );
}

#[tokio::test]
async fn websocket_pings_are_answered() {
    let host = Host::with_tokens().await;
    let mut client = host.client().await;
    client
        .send_message(Message::Ping(b"hello".to_vec().into()))
        .await;
    // The raw client surfaces pongs through the stream; WsClient skips them,
    // so read the socket directly here.
    let pong = tokio::time::timeout(Duration::from_secs(5), client.next_raw())
        .await
        .expect("pong in time");
    assert_eq!(pong, Message::Pong(b"hello".to_vec().into()));
}

#[tokio::test]
async fn sdk_subscribe_options_with_snapshot_after_and_snapshot_limit() {
    let host = Host::with_tokens().await;
    let first = host
        .ingest_ok("tokens", &[created("a", 1), created("b", 1)])
        .await;
    host.ingest_ok("tokens", &[created("c", 1), created("d", 1)])
        .await;
    let mut client = host.client().await;

    // withSnapshot:false: subscribed, then only live frames.
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list", "withSnapshot": false}))
        .await;
    client.expect_silence(QUIET).await;
    host.ingest_ok("tokens", &[supply("a", 1)]).await;
    assert_eq!(client.recv_json().await["op"], "patch");

    // after: only entities changed after that `_seq` (a, changed just now; c, d).
    let after = first["seq"].as_str().unwrap();
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "after": after}))
        .await;
    let mut keys = client.snapshot_keys().await;
    keys.sort();
    assert_eq!(keys, ["a", "c", "d"]);

    // snapshotLimit: at most that many entities, in view order (newest first).
    client
        .subscribe(
            json!({"type": "subscribe", "view": "Token/list", "key": "*", "snapshotLimit": 2}),
        )
        .await;
    assert_eq!(client.snapshot_keys().await, ["a", "d"]);

    // refresh_auth is acknowledged (auth is not enabled) with a text reply.
    client
        .send(json!({"type": "refresh_auth", "token": "t"}))
        .await;
    match client.recv().await {
        Received::Json { value, text, .. } => {
            assert!(text);
            assert_eq!(value["success"], true);
        }
        other => panic!("{other:?}"),
    }
}

/// Subscribers that arrive while large requests commit (in chunks, their
/// frames sent after the answer) must each see every mutation exactly once:
/// in their snapshot or as a later frame. A frame for a mutation already in
/// the snapshot shows as a `seq` not above the entity's `_seq`; a missed
/// one as a final state unlike a fresh snapshot's.
#[tokio::test]
async fn subscribers_arriving_during_chunked_commits_see_every_mutation_once() {
    use std::collections::BTreeMap;
    let host = Host::with_tokens().await;
    let mints: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
    let creates: Vec<Value> = mints.iter().map(|m| created(m, 1000)).collect();
    host.ingest_ok("tokens", &creates).await;

    // 12 requests of 300 trades (600 mutations each: more than one commit
    // chunk), back to back.
    let poster = {
        let url = host.http_url();
        let mints = mints.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for request in 0..12 {
                let body: String = (0..300)
                    .map(|i| {
                        let n = request * 300 + i;
                        let mint = &mints[(n * 7) % mints.len()];
                        format!("{}\n", trade(&format!("t{n}"), mint, n as f64, 1))
                    })
                    .collect();
                let answer = http
                    .post(format!("{url}/ingest/tokens"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 200);
            }
        })
    };

    // The truth, once known: a fresh snapshot after the last answer.
    let (truth_tx, _) = tokio::sync::watch::channel(None::<BTreeMap<String, Value>>);
    let mut followers = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut client = host.client().await;
        client
            .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
            .await;
        let mut state: BTreeMap<String, Value> = client.snapshot().await.into_iter().collect();
        let truth = truth_tx.subscribe();
        followers.push(tokio::spawn(async move {
            let mut deadline = None;
            loop {
                if let Some(truth) = truth.borrow().as_ref() {
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_secs(20)
                    });
                    if *truth == state || tokio::time::Instant::now() > deadline {
                        return (state, truth.clone());
                    }
                }
                let Some(Received::Json { value: frame, .. }) =
                    client.recv_within(Duration::from_millis(50)).await
                else {
                    continue;
                };
                let key = frame["key"].as_str().unwrap().to_owned();
                if let (Some(seq), Some(held)) = (frame["seq"].as_str(), state.get(&key)) {
                    let held = held["_seq"].as_str().unwrap_or_default();
                    assert!(
                        seq > held,
                        "{key}: frame seq {seq} not after the held _seq {held}: delivered twice"
                    );
                }
                vista_tests::apply_frame(&mut state, &frame);
            }
        }));
    }
    poster.await.unwrap();

    let mut fresh = host.client().await;
    fresh
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let truth: BTreeMap<String, Value> = fresh.snapshot().await.into_iter().collect();
    assert_eq!(truth.len(), 50);
    truth_tx.send_replace(Some(truth));
    for follower in followers {
        let (state, truth) = follower.await.unwrap();
        assert_eq!(
            state, truth,
            "a follower's list differs from a fresh snapshot"
        );
    }
}
