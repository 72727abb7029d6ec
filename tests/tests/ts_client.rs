//! The published TypeScript client (`hyperstack-typescript@0.6.9`, under
//! Node with `ws`) against the real host: `tests/ts-client/tokens.mjs`
//! subscribes to `Token/list`, `Token/state` and `Trade/append`, ingests a
//! scripted sequence and asserts the client's own store; `games.mjs` does
//! the same for the derived view `ActiveGame/latest`, order included;
//! `filters.mjs` watches `Token/list` with `{filters: {symbol: 'SOL'}}` and
//! checks its store holds exactly the matching tokens throughout.
//!
//! Needs `npm ci` in `tests/ts-client` (the README's test command does it).

use std::process::Command;

use vista_tests::{workspace_root, Host};

/// Runs one script of `tests/ts-client` against a host; panics with its
/// output unless it exits 0. Returns its stdout.
pub fn run_node_script(host: &Host, script: &str) -> String {
    let dir = workspace_root().join("tests/ts-client");
    assert!(
        dir.join("node_modules/hyperstack-typescript").exists(),
        "run `npm ci` in {} first (scripts/test.sh does)",
        dir.display()
    );
    let output = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("VISTA_WS_URL", host.ws_url())
        .env("VISTA_HTTP_URL", host.http_url())
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({}):\nstdout: {stdout}\nstderr: {}\nhost log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        host.log()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_store_holds_exactly_the_expected_tokens_and_trades() {
    let host = Host::with_tokens().await;
    let stdout = tokio::task::block_in_place(|| run_node_script(&host, "tokens.mjs"));
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_shows_exactly_the_active_games_in_order() {
    let host = Host::with_games().await;
    let stdout = tokio::task::block_in_place(|| run_node_script(&host, "games.mjs"));
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_watch_with_filters_holds_exactly_the_matching_tokens() {
    let host = Host::with_tokens().await;
    let stdout = tokio::task::block_in_place(|| run_node_script(&host, "filters.mjs"));
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["final"],
        serde_json::json!(["a", "b", "c"]),
        "{summary}"
    );
}
