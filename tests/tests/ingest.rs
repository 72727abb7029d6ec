//! `POST /ingest/{stream}`: success, all-or-nothing errors, limits, and a
//! host that keeps serving after every kind of bad request.

use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{Host, PluginFile};

fn created(mint: &str) -> String {
    json!({"type": "token_created", "mint": mint, "symbol": "S", "decimals": 0, "supply": 10})
        .to_string()
}

async fn token_keys(host: &Host) -> Vec<String> {
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let mut keys: Vec<String> = client.snapshot_keys().await;
    keys.sort();
    keys
}

#[tokio::test]
async fn ndjson_and_json_arrays_are_accepted_with_the_last_seq() {
    let host = Host::with_tokens().await;
    let (status, reply) = host
        .ingest("tokens", format!("{}\n\n{}\n", created("a"), created("b")))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 2);
    assert_eq!(reply["seq"], "0000000000000002");
    let (status, reply) = host
        .ingest("tokens", format!("[{}, {}]", created("c"), created("d")))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 2);
    assert_eq!(reply["seq"], "0000000000000004");
    // Visible to a new subscriber as soon as the reply arrived.
    assert_eq!(token_keys(&host).await, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn a_request_of_several_commit_chunks_answers_with_its_last_seq_once_whole() {
    // 2,500 events: three commit steps of at most 1,024 mutations, the
    // answer sent as the last one starts. A subscriber after the answer
    // must find every one of them, and the answer the last `_seq`.
    let host = Host::with_tokens().await;
    let body: String = (0..2500)
        .map(|i| created(&format!("m{i:04}")) + "\n")
        .collect();
    let (status, reply) = host.ingest("tokens", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 2500);
    assert_eq!(reply["seq"], "0000000000002500");
    let keys = token_keys(&host).await;
    assert_eq!(keys.len(), 2500);
    assert_eq!(keys.first().map(String::as_str), Some("m0000"));
    assert_eq!(keys.last().map(String::as_str), Some("m2499"));
    let (status, reply) = host.ingest("tokens", created("after")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["seq"], "0000000000002501");
}

#[tokio::test]
async fn a_malformed_line_fails_the_whole_request_naming_the_line() {
    let host = Host::with_tokens().await;
    let body = format!(
        "{}\n{}\n{{\"type\": \"token_created\",\n",
        created("a"),
        created("b")
    );
    let (status, reply) = host.ingest("tokens", body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["error"], "malformed-event");
    assert_eq!(reply["line"], 3);
    assert!(
        reply["message"].as_str().unwrap().starts_with("line 3:"),
        "{reply}"
    );
    let (status, reply) = host
        .ingest("tokens", format!("{}\n42\n", created("x")))
        .await;
    assert_eq!((status, reply["line"].as_u64()), (400, Some(2)), "{reply}");
    let (status, reply) = host.ingest("tokens", "").await;
    assert_eq!((status, reply["error"].as_str()), (400, Some("empty-body")));
    assert!(
        token_keys(&host).await.is_empty(),
        "nothing of a refused request is applied"
    );
}

#[tokio::test]
async fn a_projector_error_is_422_naming_the_plugin_and_nothing_is_applied() {
    let host = Host::with_tokens().await;
    let body = format!(
        "{}\n{}\n{}\n",
        created("a"),
        json!({"type": "supply_changed", "mint": "a", "delta": 5}),
        json!({"type": "supply_changed", "mint": "ghost", "delta": 1})
    );
    let (status, reply) = host.ingest("tokens", body).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "projector-error");
    assert_eq!(reply["plugin"], "tokens");
    assert_eq!(reply["line"], 3);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("unknown token ghost"),
        "{reply}"
    );
    assert!(
        token_keys(&host).await.is_empty(),
        "events 1 and 2 were not applied either"
    );
    assert!(host.log().contains("projector error"), "logged");
}

#[tokio::test]
async fn an_unknown_event_type_is_a_projector_error_not_a_silent_skip() {
    let host = Host::with_tokens().await;
    let (status, reply) = host
        .ingest("tokens", "{\"type\": \"token_renamed\", \"mint\": \"a\"}")
        .await;
    assert_eq!(status, 422);
    assert_eq!(reply["plugin"], "tokens");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `token_renamed`"),
        "{reply}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--max-body-bytes", "4096"],
    )
    .await;
    let line = created("a");
    let body: String = std::iter::repeat_n(format!("{line}\n"), 4096 / line.len() + 2).collect();
    let (status, reply) = host.ingest("tokens", body).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"], "body-too-large");
    assert_eq!(reply["limit"], 4096);
    let (status, _) = host.ingest("tokens", format!("{line}\n")).await;
    assert_eq!(status, 200, "a small body still goes through");
}

#[tokio::test]
async fn an_unknown_stream_is_404() {
    let host = Host::with_tokens().await;
    let (status, reply) = host.ingest("weather", created("a")).await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "unknown-stream");
    assert_eq!(reply["stream"], "weather");
}

#[tokio::test]
async fn a_panicking_projector_is_422_and_the_host_keeps_serving() {
    let host = Host::start(
        vec![
            PluginFile::Built("vista_tokens", "tokens.so"),
            PluginFile::Built("vista_fixture_panicky", "panicky.so"),
        ],
        &[],
    )
    .await;
    let mut watcher = host.client().await;
    watcher
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    watcher.snapshot_frames().await;

    let body = "{\"type\":\"note\",\"id\":\"n1\"}\n{\"type\":\"explode\"}\n";
    let (status, reply) = host.ingest("notes", body).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["plugin"], "panicky");
    assert_eq!(reply["line"], 2);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("panic: kaboom on purpose"),
        "{reply}"
    );

    // Same plugin, same host: still works, and n1 was not applied.
    let (status, _) = host
        .ingest("notes", "{\"type\":\"note\",\"id\":\"n2\"}")
        .await;
    assert_eq!(status, 200);
    let mut notes = host.client().await;
    notes
        .subscribe(json!({"type": "subscribe", "view": "Note/list"}))
        .await;
    let keys: Vec<String> = notes.snapshot_keys().await;
    assert_eq!(keys, ["n2"]);
    // Other plugins and connected clients unaffected.
    host.ingest_ok(
        "tokens",
        &[serde_json::from_str::<Value>(&created("a")).unwrap()],
    )
    .await;
    assert_eq!(watcher.recv_json().await["key"], "a");
    let (status, health) = host.get_json("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    watcher.expect_silence(Duration::from_millis(100)).await;
}
