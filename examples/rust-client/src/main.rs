//! Watches a Vista view with the published Rust client (`hyperstack-sdk`
//! 0.6.9) and prints the client's store whenever it changes.
//!
//! Run with: `cargo run -p example-rust-client -- ws://127.0.0.1:8877 Token/list`
//! (start the host first with `./scripts/demo.sh`).
//!
//! The SDK normally uses code-generated stack types; a hand-written `Stack`
//! with raw view names and untyped `serde_json::Value` entities is enough.

use std::collections::BTreeMap;
use std::time::Duration;

use hyperstack_sdk::{view::ViewBuilder, ConnectionState, HyperStack, Stack, Views};
use serde_json::Value;

/// Raw view names, untyped entities.
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
        "vista-example"
    }
    fn url() -> &'static str {
        "ws://127.0.0.1:8877"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| RawStack::url().to_owned());
    let view = args.next().unwrap_or_else(|| "Token/list".to_owned());
    let hs = HyperStack::<RawStack>::builder()
        .url(&url)
        .connect()
        .await?;
    let mut updates = hs.store().subscribe();
    hs.views
        .0
        .connection()
        .ensure_subscription(&view, None)
        .await;
    let mut last: Option<BTreeMap<String, Value>> = None;
    loop {
        tokio::select! {
            _ = updates.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if hs.connection_state().await == ConnectionState::Disconnected {
                    break;
                }
            }
        }
        let store: BTreeMap<String, Value> = hs.store().all_raw(&view).await.into_iter().collect();
        if last.as_ref() != Some(&store) {
            println!("{view}: {} entities", store.len());
            for (key, entity) in &store {
                println!("  {key}: {entity}");
            }
            last = Some(store);
        }
    }
    Ok(())
}
