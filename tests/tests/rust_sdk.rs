//! The published Rust client (`hyperstack-sdk = "=0.6.9"`) against the real
//! host: subscribe to `Token/list`, ingest, and compare the client's own
//! store with the expected entities.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyperstack_sdk::{view::ViewBuilder, HyperStack, Stack, Views};
use serde_json::{json, Value};
use vista_tests::Host;

/// A hand-written "stack": raw view names and untyped entities, no codegen.
struct RawStack;

struct RawViews(ViewBuilder);

impl Views for RawViews {
    fn from_builder(builder: ViewBuilder) -> Self {
        RawViews(builder)
    }
}

impl Stack for RawStack {
    type Views = RawViews;
    fn name() -> &'static str {
        "vista-tests"
    }
    fn url() -> &'static str {
        "ws://127.0.0.1:8877" // replaced by `.url(..)` below
    }
}

/// The client's store for a view, without `_seq` (its value is the server's business).
/// The SDK connected to `url` and subscribed to `Token/list`.
async fn watch_token_list(url: &str) -> HyperStack<RawStack> {
    let hs = HyperStack::<RawStack>::builder()
        .url(url)
        .auto_reconnect(false)
        .connect()
        .await
        .expect("connect the SDK");
    hs.views
        .0
        .connection()
        .ensure_subscription("Token/list", None)
        .await;
    hs
}

async fn store_of(hs: &HyperStack<RawStack>, view: &str) -> BTreeMap<String, Value> {
    hs.store()
        .all_raw(view)
        .await
        .into_iter()
        .map(|(key, mut data)| {
            data.as_object_mut().map(|o| o.remove("_seq"));
            (key, data)
        })
        .collect()
}

async fn wait_for_store(hs: &HyperStack<RawStack>, view: &str, expected: &BTreeMap<String, Value>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let store = store_of(hs, view).await;
        if &store == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store of {view} did not converge:\n got      {}\n expected {}",
            json!(store),
            json!(expected)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rust_sdk_store_holds_exactly_the_expected_tokens() {
    let host = Host::with_tokens().await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "AAA", "decimals": 6, "supply": 100})],
    )
    .await;

    let hs = watch_token_list(&host.ws_url()).await;

    let mut expected = BTreeMap::new();
    expected.insert(
        "a".to_owned(),
        json!({"mint": "a", "symbol": "AAA", "decimals": 6, "supply": 100}),
    );
    wait_for_store(&hs, "Token/list", &expected).await;

    host.ingest_ok(
        "tokens",
        &[
            json!({"type": "token_created", "mint": "b", "symbol": "BBB", "decimals": 0, "supply": 7}),
            json!({"type": "token_created", "mint": "c", "symbol": "CCC", "decimals": 0, "supply": 1}),
            json!({"type": "supply_changed", "mint": "a", "delta": 23}),
            json!({"type": "trade", "id": "t1", "mint": "a", "price": 2.5, "amount": 4}),
            json!({"type": "trade", "id": "t2", "mint": "a", "price": 3.0, "amount": 1}),
            json!({"type": "token_closed", "mint": "c"}),
        ],
    )
    .await;
    expected.insert(
        "a".to_owned(),
        json!({"mint": "a", "symbol": "AAA", "decimals": 6, "supply": 123, "lastPrice": 3.0,
               "recentTrades": [{"id": "t1", "price": 2.5, "amount": 4}, {"id": "t2", "price": 3.0, "amount": 1}]}),
    );
    expected.insert(
        "b".to_owned(),
        json!({"mint": "b", "symbol": "BBB", "decimals": 0, "supply": 7}),
    );
    wait_for_store(&hs, "Token/list", &expected).await;
    assert!(hs.last_error().await.is_none(), "the SDK saw no error");
    hs.disconnect().await;
}

#[tokio::test]
async fn rust_sdk_connects_with_a_token_in_the_url() {
    let secret = "a-test-secret-of-some-length";
    let host = vista_tests::Host::start(
        vec![vista_tests::PluginFile::Built("vista_tokens", "tokens.so")],
        &[
            "--jwt-secret",
            secret,
            "--ingest-token",
            "feed-secret-1:tokens",
        ],
    )
    .await;
    let reply = reqwest::Client::new()
        .post(format!("{}/ingest/tokens", host.http_url()))
        .bearer_auth("feed-secret-1")
        .body(json!({"type": "token_created", "mint": "a", "symbol": "AAA", "decimals": 6, "supply": 100}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let token = vista_tests::mint_token(
        secret,
        &json!({"sub": "rust-sdk", "exp": vista_tests::unix_now() + 600, "views": ["Token/*"]}),
    );
    let hs = watch_token_list(&format!("{}/?hs_token={token}", host.ws_url())).await;
    let mut expected = BTreeMap::new();
    expected.insert(
        "a".to_owned(),
        json!({"mint": "a", "symbol": "AAA", "decimals": 6, "supply": 100}),
    );
    wait_for_store(&hs, "Token/list", &expected).await;
    assert!(hs.last_error().await.is_none(), "the SDK saw no error");
    hs.disconnect().await;
}
