//! No plugin file can crash the host, and the plugins directory is one set
//! of paths.
//!
//! Truncated copies of the real `tokens` plugin: cut anywhere inside its
//! loadable segments (1 KB, 100 KB), mapping it faults the mapping process
//! with SIGBUS (the loader touches pages past the end of the file); cut at
//! half its size, every loadable segment is intact (only debug info is
//! lost) and it is a working plugin. Random bytes are refused by the
//! dynamic loader. The host checks each file in a `vista plugin check`
//! child first, so it survives all of them, at start and on hot reload.
//!
//! A relative plugins directory (`plugins.d`, the default) is resolved at
//! start, so a deleted file unloads; a missing one is created and watched.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{plugin_artifact, vista_binary, Host, PluginFile, Received};

const SIGBUS: &str = "plugin check crashed with signal SIGBUS (7)";
const NOT_A_LIBRARY: &str = "not a loadable shared library";

fn tokens_bytes() -> Vec<u8> {
    std::fs::read(plugin_artifact("vista_tokens")).unwrap()
}

fn truncated(len: usize) -> Vec<u8> {
    let mut bytes = tokens_bytes();
    bytes.truncate(len);
    bytes
}

fn half() -> Vec<u8> {
    let bytes = tokens_bytes();
    bytes[..bytes.len() / 2].to_vec()
}

/// 64 KiB of deterministic pseudo-random bytes (xorshift).
fn random_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn report<'a>(plugins: &'a Value, file: &Path) -> Option<&'a Value> {
    let file = file.display().to_string();
    plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str() == Some(file.as_str()))
}

/// Runs `vista plugin check FILE`: (exit status, stdout).
fn plugin_check(file: &Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(vista_binary())
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .expect("run vista plugin check");
    (
        output.status,
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
    )
}

/// Polls the host's log until `needle` occurs `count` times; panics after 15 s.
async fn wait_for_log(host: &Host, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while host.log().matches(needle).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {count} x {needle:?} in the log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(mint: &str) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": "T", "decimals": 0, "supply": 1})
}

#[test]
fn plugin_check_prints_one_json_line_and_an_exit_code() {
    let dir = tempfile::tempdir().unwrap();

    let (status, out) = plugin_check(&plugin_artifact("vista_tokens"));
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let mut answer: Value = serde_json::from_str(&out).unwrap();
    // The whole manifest rides along: a host isolating its plugins learns
    // the build from it without mapping the file.
    let manifest = answer.as_object_mut().unwrap().remove("manifest").unwrap();
    assert_eq!(manifest["name"], "tokens");
    assert!(
        manifest["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "Token"),
        "{manifest}"
    );
    assert_eq!(
        answer,
        json!({"ok": true, "name": "tokens", "version": "0.1.0"})
    );

    let random = dir.path().join("random.so");
    std::fs::write(&random, random_bytes()).unwrap();
    let (status, out) = plugin_check(&random);
    assert_eq!(status.code(), Some(1), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with(NOT_A_LIBRARY) && error.contains("invalid ELF header"),
        "{error}"
    );
    assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");

    let contract = plugin_check(&plugin_artifact("vista_fixture_bad_contract"));
    assert_eq!(contract.0.code(), Some(1));
    assert!(
        contract.1.contains("plugin contract version 999"),
        "{}",
        contract.1
    );

    // What mapping a truncated build does to the process that maps it: this
    // is why the host maps nothing it has not checked in a child first.
    for (len, name) in [(1024, "1k"), (100 * 1024, "100k")] {
        let file = dir.path().join(format!("trunc-{name}.so"));
        std::fs::write(&file, truncated(len)).unwrap();
        let (status, out) = plugin_check(&file);
        assert_eq!(
            status.signal(),
            Some(7),
            "{name}: SIGBUS expected, got {status}: {out}"
        );
    }
    // Cut at half, every loadable segment is intact: a working plugin.
    let file = dir.path().join("trunc-half.so");
    std::fs::write(&file, half()).unwrap();
    let (status, out) = plugin_check(&file);
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["name"],
        "tokens"
    );
}

#[tokio::test]
async fn truncated_and_random_files_at_start_are_refused_and_the_good_plugin_serves() {
    let host = Host::start(
        vec![
            PluginFile::Built("vista_games", "games.so"),
            PluginFile::Bytes(truncated(1024), "trunc-1k.so"),
            PluginFile::Bytes(truncated(100 * 1024), "trunc-100k.so"),
            PluginFile::Bytes(half(), "trunc-half.so"),
            PluginFile::Bytes(random_bytes(), "random.so"),
        ],
        &[],
    )
    .await;
    let (status, plugins) = host.get_json("/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(plugins.as_array().unwrap().len(), 5, "{plugins}");
    let log = host.log();
    for (name, reason) in [
        ("trunc-1k.so", SIGBUS),
        ("trunc-100k.so", SIGBUS),
        ("random.so", NOT_A_LIBRARY),
    ] {
        let file = host.plugins_dir.join(name);
        let entry = report(&plugins, &file).unwrap_or_else(|| panic!("{name}: {plugins}"));
        assert_eq!(entry["state"], "failed", "{entry}");
        let error = entry["last_error"].as_str().unwrap();
        assert!(error.starts_with(reason), "{name}: {error}");
        assert!(!error.contains("/cache/"), "names the cache copy: {error}");
        let line = format!("plugin refused: {}: {reason}", file.display());
        assert!(log.contains(&line), "no line {line:?} in the log:\n{log}");
    }
    // The dynamic loader's message names the file in the plugins directory.
    let random = report(&plugins, &host.plugins_dir.join("random.so")).unwrap();
    assert!(
        random["last_error"].as_str().unwrap().contains(&format!(
            "{}: invalid ELF header",
            host.plugins_dir.join("random.so").display()
        )),
        "{random}"
    );
    assert!(
        !log.contains("/cache/"),
        "the log names a cache copy:\n{log}"
    );

    // Half a build still holds every loadable segment: it loads.
    let half = report(&plugins, &host.plugins_dir.join("trunc-half.so")).unwrap();
    assert_eq!(
        (&half["state"], &half["name"]),
        (&json!("loaded"), &json!("tokens"))
    );
    let games = report(&plugins, &host.plugins_dir.join("games.so")).unwrap();
    assert_eq!(games["state"], "loaded", "{games}");

    // The good plugin serves: ingest and a subscription.
    host.ingest_ok(
        "games",
        &[json!({"type": "game_started", "game": "g1", "players": ["ann"], "startedAt": 1})],
    )
    .await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Game/list"}))
        .await;
    assert_eq!(client.snapshot_keys().await, ["g1"]);
    host.ingest_ok("tokens", &[token("a")]).await;
}

#[tokio::test]
async fn bad_files_dropped_into_a_running_host_are_refused_and_the_old_build_serves() {
    let host = Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], &[]).await;
    host.ingest_ok("tokens", &[token("a")]).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(client.snapshot_keys().await, ["a"]);

    // Under new names.
    for (name, bytes, reason) in [
        ("trunc-1k.so", truncated(1024), SIGBUS),
        ("trunc-100k.so", truncated(100 * 1024), SIGBUS),
        ("random.so", random_bytes(), NOT_A_LIBRARY),
    ] {
        let file = host.plugins_dir.join(name);
        std::fs::write(&file, bytes).unwrap();
        let plugins = host
            .wait_for_plugins(name, |p| report(p, &file).is_some())
            .await;
        let entry = report(&plugins, &file).unwrap();
        assert_eq!(entry["state"], "failed", "{entry}");
        assert!(
            entry["last_error"].as_str().unwrap().starts_with(reason),
            "{entry}"
        );
        wait_for_log(
            &host,
            &format!("plugin refused: {}: {reason}", file.display()),
            1,
        )
        .await;
    }

    // Copied over the loaded plugin's file, as `cp` does.
    let tokens = host.plugins_dir.join("tokens.so");
    let mut refusals = [0, 0];
    for (i, (bytes, reason)) in [
        (truncated(1024), SIGBUS),
        (random_bytes(), NOT_A_LIBRARY),
        (truncated(100 * 1024), SIGBUS),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&tokens, bytes).unwrap();
        let which = usize::from(reason == NOT_A_LIBRARY);
        refusals[which] += 1;
        wait_for_log(
            &host,
            &format!("plugin refused: {}: {reason}", tokens.display()),
            refusals[which],
        )
        .await;
        let plugins = host
            .wait_for_plugins(reason, |p| {
                report(p, &tokens).is_some_and(|r| {
                    r["last_error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with(reason))
                })
            })
            .await;
        let entry = report(&plugins, &tokens).unwrap();
        assert_eq!(
            (&entry["state"], &entry["version"]),
            (&json!("loaded"), &json!("0.1.0")),
            "the previous build keeps serving: {entry}"
        );
        // Still up, still serving the same subscription.
        let mint = format!("m{i}");
        host.ingest_ok("tokens", &[token(&mint)]).await;
        let frame = client.recv_json().await;
        assert_eq!(
            (frame["op"].as_str(), frame["key"].as_str()),
            (Some("upsert"), Some(mint.as_str())),
            "{frame}"
        );
    }
    assert!(!host.log().contains("/cache/"), "{}", host.log());

    // Half a build over it is a complete image: it loads, and serves.
    std::fs::write(&tokens, half()).unwrap();
    wait_for_log(&host, "plugin build live", 1).await;
    let plugins = host
        .wait_for_plugins("the half build", |p| {
            report(p, &tokens).is_some_and(|r| r["last_error"].is_null())
        })
        .await;
    assert_eq!(report(&plugins, &tokens).unwrap()["state"], "loaded");
    host.ingest_ok("tokens", &[token("z")]).await;
    assert_eq!(client.recv_json().await["key"], "z");
}

#[tokio::test]
async fn a_relative_plugins_dir_is_resolved_so_a_deleted_file_unloads() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("plugins.d")).unwrap();
    std::fs::copy(
        plugin_artifact("vista_tokens"),
        cwd.path().join("plugins.d/tokens.so"),
    )
    .unwrap();
    let host = Host::start_in(cwd.path(), &["--plugins", "plugins.d"]).await;
    let absolute = std::fs::canonicalize(cwd.path())
        .unwrap()
        .join("plugins.d/tokens.so");
    let (_, plugins) = host.get_json("/plugins").await;
    assert_eq!(plugins.as_array().unwrap().len(), 1, "{plugins}");
    assert_eq!(
        plugins[0]["file"].as_str(),
        Some(absolute.to_str().unwrap()),
        "{plugins}"
    );
    assert_eq!(plugins[0]["state"], "loaded");

    host.ingest_ok("tokens", &[token("a")]).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    assert_eq!(client.snapshot_keys().await, ["a"]);

    std::fs::remove_file(host.plugins_dir.join("tokens.so")).unwrap();
    match client.recv().await {
        Received::Json { value, .. } => assert_eq!(value["error"], "view-removed", "{value}"),
        other => panic!("{other:?}"),
    }
    host.wait_for_plugins("tokens unloaded", |p| p.as_array().unwrap().is_empty())
        .await;
    let (status, reply) = host.ingest("tokens", token("b").to_string()).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (404, Some("unknown-stream"))
    );
}

#[tokio::test]
async fn a_missing_plugins_dir_is_created_and_watched() {
    let cwd = tempfile::tempdir().unwrap();
    let host = Host::start_in(cwd.path(), &["--plugins", "plugins.d"]).await;
    assert!(
        host.plugins_dir.is_dir(),
        "the plugins directory was created"
    );
    assert!(
        host.log().contains("created the plugins directory"),
        "{}",
        host.log()
    );
    let (_, plugins) = host.get_json("/plugins").await;
    assert_eq!(plugins, json!([]));

    std::fs::copy(
        plugin_artifact("vista_tokens"),
        host.plugins_dir.join("tokens.so"),
    )
    .unwrap();
    host.wait_for_plugins("tokens loaded", |p| {
        p.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "tokens" && r["state"] == "loaded")
    })
    .await;
    host.ingest_ok("tokens", &[token("a")]).await;
}
