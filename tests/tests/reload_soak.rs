//! A short hot-reload soak in the test suite (the full 100-reload run is
//! `cargo run -p vista-tests --example reload_soak`): reloads
//! while ingesting and serving subscribed clients lose no event, double
//! none and disconnect nobody.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing_and_disconnect_nobody() {
    let report = vista_tests::soak::run(vista_tests::soak::SoakConfig {
        reloads: 12,
        clients: 20,
        games: 20,
    })
    .await;
    println!("{}", serde_json::to_string(&report).unwrap());
    assert!(
        report.events_accepted > 0,
        "ingest ran during the reloads: {report:?}"
    );
    assert_eq!(report.disconnects, 0, "{report:?}");
    assert_eq!(report.events_lost, 0, "{report:?}");
    assert_eq!(report.events_doubled, 0, "{report:?}");
    assert!(report.frames_received > 0, "{report:?}");
}
