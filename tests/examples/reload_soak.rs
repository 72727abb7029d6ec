//! Hot-reload soak benchmark (figures in BENCHMARKS.md).
//!
//! Run with: `cargo run -p vista-tests --example reload_soak -- 100 100`
//! (arguments: reloads, subscribed clients). Prints a JSON report and exits
//! non-zero if any client was disconnected or any event lost or doubled.

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("numbers"));
    let reloads = args.next().unwrap_or(100);
    let clients = args.next().unwrap_or(100);
    let report = vista_tests::soak::run(vista_tests::soak::SoakConfig {
        reloads,
        clients,
        games: 50,
    })
    .await;
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let ok = report.disconnects == 0 && report.events_lost == 0 && report.events_doubled == 0;
    std::process::exit(if ok { 0 } else { 1 });
}
