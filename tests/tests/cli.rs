//! The command-line clients against the real host: `vista ingest` (batches,
//! progress, the first refused line named with nothing of its batch
//! applied), `vista tail --json` (live frames) and `vista plugins`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{vista_binary, Host};

fn token_line(n: usize) -> String {
    json!({"type": "token_created", "mint": format!("m{n:06}"), "symbol": "S", "decimals": 0, "supply": n})
        .to_string()
}

#[tokio::test]
async fn vista_ingest_posts_a_file_in_batches_and_names_a_refused_line() {
    let host = Host::with_tokens().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let body: String = (0..100_000).map(|n| token_line(n) + "\n").collect();
    std::fs::write(&file, body).unwrap();
    let output = Command::new(vista_binary())
        .args(["ingest", "tokens"])
        .arg(&file)
        .args(["--url", &host.http_url(), "--batch", "5000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("ingested 100000 events"), "{stderr}");
    assert_eq!(host.metric("vista_events_ingested_total").await, 100_000.0);

    // Line 26 is not JSON: its batch (lines 21-30) is refused whole.
    let bad = dir.path().join("bad.ndjson");
    let mut lines: Vec<String> = (200_000..200_040).map(token_line).collect();
    lines[25] = "{\"type\": \"token_created\", oops".into();
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let output = Command::new(vista_binary())
        .args(["ingest", "tokens"])
        .arg(&bad)
        .args(["--url", &host.http_url(), "--batch", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("line 26 refused"), "{stderr}");
    assert!(
        stderr.contains("nothing of lines 21-30 was applied"),
        "{stderr}"
    );
    assert_eq!(
        host.metric("vista_events_ingested_total").await,
        100_020.0,
        "the two batches before it, nothing of its own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vista_tail_json_prints_live_frames() {
    let host = Host::with_tokens().await;
    let mut tail = Command::new(vista_binary())
        .args(["tail", "Token/list", "--json", "--url", &host.ws_url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    async fn wait_for(
        lines: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
        what: impl Fn(&Value) -> bool,
    ) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), lines.recv())
                .await
                .expect("a frame from vista tail")
                .expect("vista tail is running");
            if what(&frame) {
                return frame;
            }
        }
    }
    wait_for(&mut lines, |f| {
        f["op"] == "snapshot" && f["complete"] == true
    })
    .await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    let created = wait_for(&mut lines, |f| f["key"] == "a").await;
    assert_eq!(created["data"]["supply"], 1, "{created}");
    host.ingest_ok("tokens", &[json!({"type": "token_closed", "mint": "a"})])
        .await;
    wait_for(&mut lines, |f| f["op"] == "delete" && f["key"] == "a").await;
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test]
async fn vista_plugins_prints_the_plugin_table() {
    let host = Host::with_tokens().await;
    let output = Command::new(vista_binary())
        .args(["plugins", "--url", &host.http_url()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("tokens"))
        .expect("a tokens row");
    assert!(
        row.contains("loaded") && row.contains("tokens.so"),
        "{table}"
    );
}
