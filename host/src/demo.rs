//! The demo feed behind `vista serve --demo-feed`: a steady trickle of
//! `tokens` events (creations, supply changes, trades, the odd close) fed
//! through the same ingest path as `POST /ingest/tokens`, so a fresh
//! checkout has something live to watch.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::ingest::IngestBody;
use crate::shared::Shared;

/// A tiny deterministic xorshift generator; the demo needs variety, not
/// statistical quality, so it does not warrant a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SYMBOLS: [&str; 8] = ["SOL", "USDC", "BONK", "JUP", "WIF", "PYTH", "RAY", "ORCA"];

/// Feeds demo events every `interval` until the process ends.
pub async fn run(shared: Arc<Shared>, interval: Duration) {
    let stop = shared.shutdown.token();
    tokio::select! {
        () = feed(shared, interval) => {}
        () = stop.cancelled() => {}
    }
}

/// The feed's loop; it never ends by itself.
async fn feed(shared: Arc<Shared>, interval: Duration) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut open: Vec<String> = Vec::new();
    let mut next_token = 0u64;
    let mut next_trade = 0u64;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let roll = rng.next() % 100;
        let event = if open.len() < 3 || roll < 10 {
            next_token += 1;
            let mint = format!("mint{next_token:04}");
            open.push(mint.clone());
            let symbol = SYMBOLS[(next_token as usize) % SYMBOLS.len()];
            json!({"type": "token_created", "mint": mint, "symbol": symbol, "decimals": 6, "supply": 1_000_000 + rng.next() % 1_000_000})
        } else if roll < 14 && open.len() > 3 {
            let mint = open.remove((rng.next() as usize) % open.len());
            json!({"type": "token_closed", "mint": mint})
        } else if roll < 40 {
            let mint = &open[(rng.next() as usize) % open.len()];
            json!({"type": "supply_changed", "mint": mint, "delta": (rng.next() % 1000) as i64})
        } else {
            next_trade += 1;
            let mint = &open[(rng.next() as usize) % open.len()];
            let price = (rng.next() % 10_000) as f64 / 100.0;
            json!({"type": "trade", "id": format!("trade{next_trade}"), "mint": mint, "price": price, "amount": 1 + rng.next() % 50})
        };
        let text = event.to_string();
        let body = Arc::new(IngestBody::from_events([text.as_str()]));
        let result = shared.ingest("tokens", body).await;
        if let Err(err) = result {
            tracing::warn!(%err, "demo feed event refused");
        }
    }
}
