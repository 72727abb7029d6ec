//! Supervision of the host's own threads and its storage: a panicked engine
//! or log writer turns `/healthz` 503 and exits non-zero without losing
//! anything acknowledged; a full disk refuses ingest with 503, reports it on
//! `/readyz` and `/status`, and heals by itself once space is back.

use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{Host, PluginFile};

fn crashy() -> Vec<PluginFile> {
    vec![PluginFile::Built("vista_fixture_crashy", "crashy.so")]
}

/// An NDJSON body of `count` notes `{prefix}-{i}`, each padded to about
/// `pad` bytes (the fixture stores the id, so the log grows by that much).
fn notes(prefix: &str, from: usize, count: usize, pad: usize) -> String {
    (from..from + count)
        .map(|i| {
            let id = format!("{prefix}-{i}-{}", "x".repeat(pad));
            format!("{}\n", json!({"type": "note", "id": id}))
        })
        .collect()
}

async fn get(host: &Host, path: &str) -> (u16, Value) {
    host.get_json(path).await
}

/// Waits until the process exits (at most 10 s) and returns its code.
fn exit_code(host: &mut Host) -> Option<i32> {
    host.wait_exit(Duration::from_secs(10))
        .expect("the host exits after a supervised thread panicked")
        .code()
}

#[tokio::test]
async fn a_panicking_engine_or_log_writer_fails_loudly_and_loses_nothing_acknowledged() {
    for (thread, stream_that_panics) in [("engine", "boom"), ("log-writer", "crash")] {
        let plan = format!("VISTA_FAULT_PANIC={thread}:{stream_that_panics}");
        // The log writer panics on any record of `crash`: acknowledge some
        // first on a host without the fault, then restart with it.
        // No backtrace: symbolizing one in a debug build takes seconds.
        let mut host =
            Host::start_wrapped(&["env", "RUST_BACKTRACE=0", &plan], crashy(), &[]).await;
        let acknowledged = if thread == "engine" {
            let (status, body) = host.ingest("crash", notes("a", 0, 20, 0)).await;
            assert_eq!(status, 200, "{body}");
            20
        } else {
            0
        };
        let (status, _) = get(&host, "/healthz").await;
        assert_eq!(status, 200);
        // The request that makes the thread panic (in flight: a dead log
        // writer never answers it) gets no success answer.
        let url = format!("{}/ingest/{stream_that_panics}", host.http_url());
        let request = tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .body(notes("b", 0, 1, 0))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map(|response| response.status().as_u16())
        });
        // Unhealthy at once, while the process is still there.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let body = loop {
            let (status, body) = get(&host, "/healthz").await;
            if status == 503 {
                break body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{thread}: /healthz stayed {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(body["error"], "host-failed", "{thread}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("injected fault"),
            "{body}"
        );
        let (status, _) = get(&host, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(exit_code(&mut host), Some(70), "{thread}: exit code");
        let answered = request.await.unwrap();
        assert!(
            answered.as_ref().map_or(true, |status| *status != 200),
            "{thread}: {answered:?}"
        );
        let log = host.log();
        assert!(
            log.contains(&format!("the {thread} thread panicked: injected fault")),
            "{thread}: the panic and its message are logged:\n{log}"
        );
        // Restarted (the fault only fires on that stream), everything
        // acknowledged is there.
        host.restart().await;
        let mut client = host.client().await;
        client.subscribe(json!({"view": "Crash/list"})).await;
        let keys = client.snapshot_keys().await;
        assert_eq!(keys.len(), acknowledged, "{thread}: {keys:?}");
        if thread == "engine" {
            // (The restarted log writer would panic again on `crash`.)
            let (status, body) = host.ingest("crash", notes("c", 0, 1, 0)).await;
            assert_eq!(status, 200, "{body}");
        }
    }
}

/// Mounts a small tmpfs at `dir`, if this process may (root in CI).
fn mount_small_filesystem(dir: &std::path::Path, megabytes: u32) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn a_full_disk_refuses_ingest_reports_it_and_heals_once_space_is_back() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = scratch.path().join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = mount_small_filesystem(&mount, 24);
    let flag = scratch.path().join("disk-full");
    let data = mount.join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let env = format!("VISTA_FAULT_LOG_UNWRITABLE={}", flag.display());
    // A real full disk where the test may mount one, else the injected fault.
    let wrapper: Vec<&str> = if mounted { vec![] } else { vec!["env", &env] };
    let mut host = Host::start_wrapped(
        &wrapper,
        crashy(),
        &[
            "--data",
            &data_arg,
            "--checkpoint-every-events",
            "100000000",
        ],
    )
    .await;
    let ballast = mount.join("ballast");
    if mounted {
        // Most of the filesystem, given back later.
        std::fs::write(&ballast, vec![0u8; 12 << 20]).unwrap();
    } else {
        eprintln!("no tmpfs could be mounted here: using VISTA_FAULT_LOG_UNWRITABLE");
    }
    let mut acknowledged = 0usize;
    let mut refused = None;
    for batch in 0..400 {
        if !mounted && batch == 3 {
            std::fs::write(&flag, b"").unwrap();
        }
        let (status, body) = host.ingest("crash", notes("n", batch * 50, 50, 1000)).await;
        match status {
            200 => acknowledged += 50,
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(refused["error"], "storage-unavailable", "{refused}");
    assert!(
        acknowledged > 0,
        "some batches were written before it filled"
    );
    let (status, body) = host.get_json("/readyz").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("storage-unavailable")),
        "{body}"
    );
    let (_, status_body) = host.get_json("/status").await;
    assert_eq!(status_body["storage"], "durable", "{status_body}");
    assert!(status_body["storage_fault"].is_string(), "{status_body}");
    // Serving goes on.
    assert_eq!(host.get_json("/healthz").await.0, 200);
    // Space comes back: the host heals by itself, no restart.
    if mounted {
        std::fs::remove_file(&ballast).unwrap();
    } else {
        std::fs::remove_file(&flag).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if host.get_json("/readyz").await.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready again:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = host.ingest("crash", notes("after", 0, 10, 10)).await;
    assert_eq!(status, 200, "{body}");
    acknowledged += 10;
    let (_, status_body) = host.get_json("/status").await;
    assert!(status_body["storage_fault"].is_null(), "{status_body}");
    // Nothing acknowledged was lost: a crash and a restart find all of it.
    host.kill9();
    host.restart().await;
    let mut client = host.client().await;
    client.subscribe(json!({"view": "Crash/list"})).await;
    let keys = client.snapshot_keys().await;
    assert_eq!(keys.len(), acknowledged);
    host.kill9();
    if mounted {
        let _ = std::process::Command::new("umount").arg(&mount).status();
    }
}
