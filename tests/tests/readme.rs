//! The README's newcomer's path, run as written: the shell block after
//! `<!-- newcomer-path -->` in README.md, with `vista` (this build) on the
//! `PATH`, a temporary `WORK` directory and a free `PORT`. If the README
//! drifts from what the binary does, this fails.

use std::process::Command;

use vista_tests::{target_dir, vista_binary, workspace_root};

/// The fenced block after the marker.
fn newcomer_block(readme: &str) -> String {
    let after = readme
        .split_once("<!-- newcomer-path -->")
        .expect("README.md marks the newcomer's path")
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a sh block follows the marker")
        .1;
    body.split_once("\n```")
        .expect("the block ends")
        .0
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_readme_newcomers_path_works_as_written() {
    vista_tests::ensure_built();
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let script = newcomer_block(&readme);
    let work = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(vista_binary(), bin.path().join("vista")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let port = free_port();
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("WORK", work.path())
        .env("PORT", port.to_string())
        // Share the workspace's build cache: same dependencies, no rebuild.
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("VISTA_URL")
        .env_remove("VISTA_TOKEN")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the README's block failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let plugins_row = stdout
        .lines()
        .find(|l| l.starts_with("my-scores"))
        .unwrap_or_else(|| panic!("no my-scores row in:\n{stdout}"));
    assert!(plugins_row.contains("loaded"), "{plugins_row}");
    // `vista tail --json | head -n 2`: the snapshot of MyScores/top holds
    // `a` (150), not `b` (50, under the filter).
    let snapshot = stdout
        .lines()
        .find(|l| l.contains("\"snapshot\""))
        .unwrap_or_else(|| panic!("no snapshot frame in:\n{stdout}"));
    let frame: serde_json::Value = serde_json::from_str(snapshot).unwrap();
    let keys: Vec<&str> = frame["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a"], "{snapshot}");
}
