//! The plugin author's loop, end to end: `vista plugin new`, `cargo test`,
//! `cargo build`, drop the `.so` into a running host, see the views in
//! `GET /plugins`, edit the filter, rebuild, drop again, and watch a
//! subscribed client converge without reconnecting.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use vista_tests::{target_dir, vista_binary, Host, PluginFile};

fn cargo(crate_dir: &Path, args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(crate_dir)
        // Share the workspace's build cache: same dependencies, no rebuild.
        .env("CARGO_TARGET_DIR", target_dir())
        .args(args)
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn scaffold_build_drop_edit_rebuild_and_converge() {
    let workdir = tempfile::tempdir().unwrap();
    let output = Command::new(vista_binary())
        .args(["plugin", "new", "scaffolded-scores", "--dir"])
        .arg(workdir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crate_dir = workdir.path().join("scaffolded-scores");
    assert!(crate_dir.join("Cargo.toml").exists() && crate_dir.join("src/lib.rs").exists());

    let tests = cargo(&crate_dir, &["test", "--lib"]);
    assert!(
        tests.contains("test tests::set_then_remove ... ok"),
        "{tests}"
    );
    cargo(&crate_dir, &["build"]);
    let built = target_dir().join("debug/libscaffolded_scores.so");

    let host = Host::start(Vec::<PluginFile>::new(), &[]).await;
    std::fs::copy(&built, host.plugins_dir.join("scaffolded_scores.so")).unwrap();
    let plugins = host
        .wait_for_plugins("the scaffolded plugin", |p| p[0]["state"] == "loaded")
        .await;
    assert_eq!(plugins[0]["name"], "scaffolded-scores");
    assert_eq!(plugins[0]["streams"], json!(["scaffolded-scores"]));
    assert_eq!(
        plugins[0]["views"],
        json!([
            "ScaffoldedScores/list",
            "ScaffoldedScores/state",
            "ScaffoldedScores/append",
            "ScaffoldedScores/top"
        ])
    );

    let events: Vec<Value> = [("a", 150), ("b", 50), ("c", 120)]
        .iter()
        .map(|(id, value)| json!({"type": "set", "id": id, "value": value}))
        .collect();
    host.ingest_ok("scaffolded-scores", &events).await;
    let mut client = host.client().await;
    client
        .subscribe(json!({"type": "subscribe", "view": "ScaffoldedScores/top"}))
        .await;
    let keys: Vec<String> = client.snapshot_keys().await;
    assert_eq!(keys, ["a", "c"]);

    // Edit the filter, rebuild, drop the new build over the old one.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains(r#"ge("value", 100)"#));
    std::fs::write(
        &lib,
        source.replace(r#"ge("value", 100)"#, r#"ge("value", 10)"#),
    )
    .unwrap();
    cargo(&crate_dir, &["build"]);
    std::fs::copy(&built, host.plugins_dir.join("scaffolded_scores.so")).unwrap();

    let frame = client.recv_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["key"].as_str()),
        (Some("upsert"), Some("b")),
        "{frame}"
    );
    assert_eq!(frame["data"]["value"], 50);
    client
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
}
