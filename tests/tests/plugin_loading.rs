//! Plugin files at start: bad ones are refused with a log line naming the
//! file and the reason, shown in `GET /plugins`, and the good one serves.

use serde_json::{json, Value};
use vista_tests::{Host, PluginFile};

fn report<'a>(plugins: &'a Value, file_suffix: &str) -> &'a Value {
    plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with(file_suffix))
        .unwrap_or_else(|| panic!("no report for {file_suffix} in {plugins}"))
}

#[tokio::test]
async fn bad_plugin_files_are_refused_clearly_and_the_good_one_serves() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let host = Host::start(
        vec![
            PluginFile::Bytes(garbage, "garbage.so"),
            PluginFile::Built("vista_fixture_bad_contract", "future.so"),
            PluginFile::Built("vista_fixture_foreign_cdylib", "foreign.so"),
            PluginFile::Built("vista_fixture_bad_filter", "bad-filter.so"),
            PluginFile::Built("vista_tokens", "tokens.so"),
            // Sorts after tokens.so, so `tokens` owns Token first.
            PluginFile::Built("vista_fixture_token_owner_clash", "zz-clash.so"),
        ],
        &[],
    )
    .await;

    let (status, plugins) = host.get_json("/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(plugins.as_array().unwrap().len(), 6, "{plugins}");

    let tokens = report(&plugins, "/tokens.so");
    assert_eq!(tokens["state"], "loaded");
    assert_eq!(tokens["name"], "tokens");
    assert_eq!(tokens["version"], "0.1.0");
    assert_eq!(tokens["entities"], json!(["Token", "Trade"]));
    assert_eq!(tokens["streams"], json!(["tokens"]));
    assert_eq!(
        tokens["views"],
        json!([
            "Token/list",
            "Token/state",
            "Token/append",
            "Trade/list",
            "Trade/state",
            "Trade/append"
        ])
    );
    assert_eq!(tokens["last_error"], Value::Null);

    let log = host.log();
    for (file, reason) in [
        ("garbage.so", "not a loadable shared library"),
        ("future.so", "plugin contract version 999, this host speaks versions 1 to 2"),
        ("foreign.so", "not a Vista plugin: it exports no abi_stable root module"),
        (
            "bad-filter.so",
            "manifest error: view \"Broken/cheap\": filter: lt on \"price\": literal true is not a number or string",
        ),
        ("zz-clash.so", "entity \"Token\" is already owned by plugin \"tokens\""),
    ] {
        let entry = report(&plugins, &format!("/{file}"));
        assert_eq!(entry["state"], "failed", "{entry}");
        let error = entry["last_error"].as_str().unwrap();
        assert!(error.contains(reason), "{file}: {error}");
        let line = log
            .lines()
            .find(|l| l.contains("plugin refused") && l.contains(file))
            .unwrap_or_else(|| panic!("no log line naming {file}:\n{log}"));
        assert!(line.contains(reason), "log line for {file} gives the reason: {line}");
    }

    // The good plugin serves.
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(client.snapshot().await.len(), 1);
}

#[tokio::test]
async fn an_empty_plugins_directory_serves_no_views() {
    let host = Host::start(Vec::new(), &[]).await;
    let (status, plugins) = host.get_json("/plugins").await;
    assert_eq!((status, plugins), (200, json!([])));
    let mut client = host.client().await;
    client
        .send(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(client.recv_json().await["error"], "view-not-found");
}
