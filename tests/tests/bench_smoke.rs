//! The CI smoke run of issue 20's benchmark (`loadgen reference`): a few
//! seconds of fan-out, latency and ingest against debug builds of the host
//! with the `ticks` and `tokens` plugins, so the harness keeps working and
//! its figures show up in every CI log. Debug builds on a shared CI machine
//! say nothing about speed, so no timing is asserted; a lost frame fails.
//! The reference broadcaster is measured too when `VISTA_REFERENCE` names
//! its binary.

use std::process::Command;

use vista_tests::{ensure_built, target_dir, workspace_root};

#[test]
fn reference_benchmark_smoke_run_loses_no_frame() {
    ensure_built();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "example-loadgen",
            "-p",
            "vista-ticks",
        ])
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "building loadgen and the ticks plugin failed"
    );
    let output = Command::new(target_dir().join("debug").join("loadgen"))
        .args([
            "reference",
            "--seconds",
            "1",
            "--clients",
            "50",
            "--source-addrs",
            "5",
            "--latency-clients",
            "10",
            "--rate",
            "1000",
            "--ingest-events",
            "2000",
            "--ingest-batches",
            "100",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loadgen reference");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen reference failed:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("loadgen prints a JSON report");
    // The figures, for the CI log (not judged: debug build, shared machine).
    for line in stderr.lines().filter(|l| l.starts_with("  ")) {
        println!("{line}");
    }
    println!("medians: {}", report["result"]["medians"]);
    assert_eq!(report["result"]["lost_frames"], 0, "{stderr}");
    let fanout = report["result"]["runs"]["fanout"].as_array().unwrap();
    assert!(
        fanout
            .iter()
            .all(|r| r["delivered_frames"].as_u64() > Some(0)),
        "{stderr}"
    );
}
