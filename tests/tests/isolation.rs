//! Plugin isolation (issue 17): projectors run in child processes (the
//! default, `--isolation process`), so a plugin bug costs one request,
//! never the host, its other plugins' clients, or a cluster. Driven with
//! the `crashy` fixture (`tests/fixtures/crashy`), whose projector aborts,
//! overflows its stack, writes through null, allocates past the memory cap
//! or spins, on demand.
//!
//! - each fault: 422 `projector-crashed` naming line and signal (503
//!   `projector-timeout` for the spin), nothing of the request applied, the
//!   host and the other plugin's child untouched, a new child serving the
//!   next request; the published TypeScript client on `tokens` sees no
//!   disconnect and every token;
//! - three crashes within a minute: `crashed` in `GET /plugins`, 503
//!   `plugin-crashed`, until a new build is dropped in;
//! - a killed spinning projector leaves no CPU behind (from `/proc`);
//! - a request crashed or refused in one plugin is taken back out of
//!   another that projected it (`tally`, a second consumer of the stream),
//!   and a large request's mutations sent ahead in parts count only if it
//!   succeeds;
//! - dead letters (`GET /admin/dead-letters`, JSON and NDJSON);
//! - cluster: a poison record is refused, counted and listed on all three
//!   hosts, which stay up and equal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::{
    descendants, plugin_artifact, process_alive, process_cpu_ticks, ready_members, unix_now,
    view_of, view_once_equal, Host, NatsServer, NodeScript, PluginFile, CLUSTER_CONVERGE,
};

/// These tests crash and kill processes and measure CPU: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A second is enough for any good request of `crashy`; a child's address
/// space is capped well below the 4 GiB `alloc` asks for.
const ISOLATED: [&str; 4] = [
    "--projector-timeout-ms",
    "1000",
    "--plugin-memory-mb",
    "512",
];

/// Each fault of the fixture and the signals its child may die of (none:
/// it spins, and the request times out).
const FAULTS: [(&str, &[&str]); 5] = [
    ("abort", &["SIGABRT"]),
    // Rust's guard-page handler reports the overflow and aborts; a thread
    // without it dies of the SIGSEGV itself.
    ("overflow", &["SIGSEGV", "SIGABRT"]),
    ("null", &["SIGSEGV"]),
    // The allocation fails under the cap: `handle_alloc_error` aborts.
    ("alloc", &["SIGABRT"]),
    ("spin", &[]),
];

fn crashy() -> Vec<PluginFile> {
    vec![PluginFile::Built("vista_fixture_crashy", "crashy.so")]
}

fn crashy_and_tokens() -> Vec<PluginFile> {
    vec![
        PluginFile::Built("vista_tokens", "tokens.so"),
        PluginFile::Built("vista_fixture_crashy", "crashy.so"),
    ]
}

fn token(mint: &str) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": "S", "decimals": 0, "supply": 1})
}

fn note(id: &str) -> Value {
    json!({"type": "note", "id": id})
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// Asserts a 422 `projector-crashed` for `line`, with one of `signals`.
fn assert_crashed(status: u16, reply: &Value, line: u64, signals: &[&str]) {
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "projector-crashed", "{reply}");
    assert_eq!(reply["plugin"], "crashy", "{reply}");
    assert_eq!(reply["line"], line, "{reply}");
    assert!(reply["message"].is_string(), "{reply}");
    let signal = reply["signal"].as_str().unwrap_or_default();
    assert!(
        signals.contains(&signal),
        "signal {signal:?}, expected one of {signals:?}: {reply}"
    );
}

/// Asserts a 503 `projector-timeout` of `crashy` after `timeout_ms`.
fn assert_timed_out(status: u16, reply: &Value, timeout_ms: u64) {
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "projector-timeout", "{reply}");
    assert_eq!(reply["plugin"], "crashy", "{reply}");
    assert_eq!(reply["timeout_ms"], timeout_ms, "{reply}");
}

/// The `GET /plugins` entry of the build loaded from `file`.
async fn entry(host: &Host, file: &str) -> Value {
    let (status, plugins) = host.get_json("/plugins").await;
    assert_eq!(status, 200, "{plugins}");
    plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .cloned()
        .unwrap_or_else(|| panic!("no {file} in {plugins}"))
}

/// The PID of the projector child of the build loaded from `file`,
/// checked to be a live process descended from the host.
async fn projector_pid(host: &Host, file: &str) -> u32 {
    let entry = entry(host, file).await;
    assert_eq!(entry["state"], "loaded", "{entry}");
    let pid = entry["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {entry}")) as u32;
    assert!(process_alive(pid), "projector {pid} is not running");
    assert!(
        descendants(host.pid()).contains(&pid),
        "projector {pid} is not a child of host {}",
        host.pid()
    );
    pid
}

/// Waits up to 5 s for a process to be gone (reaped, or a zombie).
async fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "{what} ({pid}) still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys of `Crash/list`, from a fresh subscription.
async fn crash_keys(host: &Host) -> Vec<String> {
    view_of(host, "Crash/list").await.into_keys().collect()
}

/// How many builds went live from `crashy.so` so far (its history).
fn crashy_loads(plugins: &Value) -> usize {
    plugins
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file"].as_str().is_some_and(|f| f.ends_with("crashy.so")))
        .flat_map(|p| p["history"].as_array().cloned().unwrap_or_default())
        .filter(|event| event["event"] == "loaded")
        .count()
}

/// Drops a new build of `crashy` over `crashy.so` (the same bytes, moved
/// into place so the watcher never sees half a file) and waits until it
/// is loaded.
async fn reload_crashy(host: &Host) {
    let before = crashy_loads(&host.get_json("/plugins").await.1);
    let staging = host.plugins_dir.join("crashy.so.tmp");
    std::fs::copy(plugin_artifact("vista_fixture_crashy"), &staging).unwrap();
    std::fs::rename(&staging, host.plugins_dir.join("crashy.so")).unwrap();
    host.wait_for_plugins("a new build of crashy", |plugins| {
        crashy_loads(plugins) > before
            && plugins.as_array().unwrap().iter().any(|p| {
                p["file"].as_str().is_some_and(|f| f.ends_with("crashy.so"))
                    && p["state"] == "loaded"
            })
    })
    .await;
}

/// Ingests a token every 50 ms through its own client until `stop`;
/// returns the mints, each acknowledged with 200.
fn feed_tokens(host: &Host, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    let url = format!("{}/ingest/tokens", host.http_url());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut mints = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mint = format!("during-{:03}", mints.len());
            let response = http.post(&url).body(token(&mint).to_string()).send().await;
            let response = response.expect("ingest a token");
            let status = response.status().as_u16();
            assert_eq!(status, 200, "{}", response.text().await.unwrap());
            mints.push(mint);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mints
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_costs_one_request_and_another_plugins_typescript_client_sees_nothing() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(crashy_and_tokens(), &ISOLATED).await;
    let mut mints = vec!["before".to_owned()];
    host.ingest_ok("tokens", &[token("before")]).await;
    let node = NodeScript::start(
        "watch-tokens.mjs",
        &host,
        &[("VISTA_GO_TIMEOUT_MS", "180000".into())],
    );
    let tokens_pid = projector_pid(&host, "tokens.so").await;
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_tokens(&host, stop.clone());

    for (i, (fault, signals)) in FAULTS.into_iter().enumerate() {
        // Each fault against a new build: five crashes in a minute would
        // mark one build crashed (the next test).
        if i > 0 {
            reload_crashy(&host).await;
        }
        host.ingest_ok("crash", &[note(&format!("ready-{fault}"))])
            .await;
        let child = projector_pid(&host, "crashy.so").await;
        let (status, reply) = host
            .ingest(
                "crash",
                ndjson(&[
                    note(&format!("lost-{fault}")),
                    json!({"type": fault}),
                    note(&format!("never-{fault}")),
                ]),
            )
            .await;
        if signals.is_empty() {
            assert_timed_out(status, &reply, 1000);
        } else {
            assert_crashed(status, &reply, 2, signals);
        }
        assert!(
            process_alive(host.pid()),
            "the host died of {fault}:\n{}",
            host.log()
        );
        host.healthz_latency().await;
        let keys = crash_keys(&host).await;
        assert!(
            !keys.contains(&format!("lost-{fault}")) && !keys.contains(&format!("never-{fault}")),
            "{fault}: part of the refused request was applied: {keys:?}"
        );
        // The dead child is gone; a new one serves the next request.
        wait_gone(child, &format!("the projector child that hit {fault}")).await;
        let (status, reply) = host
            .ingest("crash", ndjson(&[note(&format!("after-{fault}"))]))
            .await;
        assert_eq!(status, 200, "the request after {fault}: {reply}");
        assert!(
            crash_keys(&host).await.contains(&format!("after-{fault}")),
            "the request after {fault} is visible"
        );
        let restarted = projector_pid(&host, "crashy.so").await;
        assert_ne!(restarted, child, "{fault}: a new child serves");
        assert_eq!(
            projector_pid(&host, "tokens.so").await,
            tokens_pid,
            "{fault}: the other plugin's child was untouched"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let during = feeder.await.unwrap();
    assert!(
        during.len() >= 20,
        "tokens kept coming during the faults: {during:?}"
    );
    mints.extend(during);
    for i in 0..3 {
        let mint = format!("after-{i}");
        host.ingest_ok("tokens", &[token(&mint)]).await;
        mints.push(mint);
    }
    mints.sort();
    let summary = node.finish(&serde_json::to_string(&mints).unwrap());
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["keys"], json!(mints), "{summary}");
    assert_eq!(summary["states"], json!(["connecting", "connected"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_crashes_within_a_minute_mark_the_build_crashed_until_a_new_build_loads() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(crashy(), &ISOLATED).await;
    host.ingest_ok("crash", &[note("first")]).await;
    for n in 1..=3 {
        let (status, reply) = host
            .ingest("crash", ndjson(&[json!({"type": "abort"})]))
            .await;
        assert_crashed(status, &reply, 1, &["SIGABRT"]);
        assert!(process_alive(host.pid()), "the host died of crash {n}");
    }
    let plugins = host
        .wait_for_plugins("crashy crashed", |plugins| {
            plugins
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "crashy" && p["state"] == "crashed")
        })
        .await;
    assert!(
        !plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "crashy" && p["state"] == "loaded"),
        "{plugins}"
    );
    let (status, reply) = host.ingest("crash", ndjson(&[note("refused")])).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "plugin-crashed", "{reply}");
    assert_eq!(reply["plugin"], "crashy", "{reply}");
    host.healthz_latency().await;
    assert_eq!(crash_keys(&host).await, vec!["first"]);

    // A new build serves again.
    let staging = host.plugins_dir.join("crashy.so.tmp");
    std::fs::copy(plugin_artifact("vista_fixture_crashy"), &staging).unwrap();
    std::fs::rename(&staging, host.plugins_dir.join("crashy.so")).unwrap();
    host.wait_for_plugins("crashy loaded again", |plugins| {
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "crashy" && p["state"] == "loaded")
    })
    .await;
    let (status, reply) = host.ingest("crash", ndjson(&[note("served")])).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(crash_keys(&host).await, vec!["first", "served"]);
    projector_pid(&host, "crashy.so").await;
}

/// `tally` counts the notes of `crashy`'s stream from its own state. A
/// request `crashy` crashes on or refuses must be taken back out of
/// `tally` too, although `tally` projected it without error: under process
/// isolation out of its child's mirror (the child keeps an undo for a
/// request another plugin projects too), on a thread by not applying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_another_plugin_fails_is_taken_back_out_of_every_plugin() {
    let _serial = SERIAL.lock().await;
    for isolation in ["process", "thread"] {
        let mut args = ISOLATED.to_vec();
        args.extend(["--isolation", isolation]);
        let host = Host::start(
            vec![
                PluginFile::Built("vista_fixture_crashy", "crashy.so"),
                PluginFile::Built("vista_fixture_tally", "tally.so"),
            ],
            &args,
        )
        .await;
        host.ingest_ok("crash", &[note("a")]).await;
        // On a thread an abort is the host's own: only a child contains it.
        if isolation == "process" {
            let (status, reply) = host
                .ingest("crash", ndjson(&[note("b"), json!({"type": "abort"})]))
                .await;
            assert_crashed(status, &reply, 2, &["SIGABRT"]);
        }
        let (status, reply) = host
            .ingest(
                "crash",
                ndjson(&[note("c"), json!({"type": "no-such-type"})]),
            )
            .await;
        assert_eq!(status, 422, "{isolation}: {reply}");
        assert_eq!(reply["error"], "projector-error", "{isolation}: {reply}");
        host.ingest_ok("crash", &[note("d"), note("e")]).await;

        assert_eq!(crash_keys(&host).await, vec!["a", "d", "e"], "{isolation}");
        let tally = view_of(&host, "Tally/list").await;
        assert_eq!(
            tally["notes"]["count"], 3,
            "{isolation}: tally counted the notes of refused requests: {tally:?}"
        );
    }
}

/// A projector process mirrors at most `--projector-mirror-entities` of
/// its plugin's entities and asks the host for the rest. `tally` counts
/// notes per id by reading its own state: with a mirror of 8 entries, 200
/// ids and four posters at once (so the host is still logging one request
/// while the plugin projects the next, and only the mirror has what that
/// one wrote), every count comes out exact; so does a count read back
/// after the child was killed and started afresh from the host's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_smaller_than_the_plugins_state_reads_the_rest_from_the_host_exactly() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(
        vec![PluginFile::Built("vista_fixture_tally", "tally.so")],
        &["--projector-mirror-entities", "8"],
    )
    .await;
    const POSTERS: usize = 4;
    const REQUESTS: usize = 30;
    const NOTES: usize = 10;
    let id = |poster: usize, request: usize, note: usize| {
        format!("k{}", (poster * 7 + request * 13 + note * 31) % 200)
    };
    let post = |poster: usize| {
        let host = &host;
        async move {
            for request in 0..REQUESTS {
                let notes: Vec<Value> = (0..NOTES).map(|n| note(&id(poster, request, n))).collect();
                host.ingest_ok("crash", &notes).await;
            }
        }
    };
    tokio::join!(post(0), post(1), post(2), post(3));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for poster in 0..POSTERS {
        for request in 0..REQUESTS {
            for n in 0..NOTES {
                *expected
                    .entry(format!("note:{}", id(poster, request, n)))
                    .or_default() += 1;
            }
        }
    }
    let tally = view_of(&host, "Tally/list").await;
    assert_eq!(tally["notes"]["count"], (POSTERS * REQUESTS * NOTES) as u64);
    for (key, count) in &expected {
        assert_eq!(tally[key]["count"], *count, "{key}");
    }

    // A fresh child starts from the host's keys, not its entities: a count
    // it no longer holds is read from the host and goes on from there.
    let pid = projector_pid(&host, "tally.so").await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_gone(pid, "the tally projector").await;
    let first = id(0, 0, 0);
    let (status, reply) = host.ingest("crash", ndjson(&[note(&first)])).await;
    assert_eq!(status, 200, "{reply}");
    *expected.get_mut(&format!("note:{first}")).unwrap() += 1;
    let tally = view_of(&host, "Tally/list").await;
    assert_eq!(
        tally["notes"]["count"],
        (POSTERS * REQUESTS * NOTES + 1) as u64
    );
    for (key, count) in &expected {
        assert_eq!(tally[key]["count"], *count, "after a restart: {key}");
    }
}

/// A request whose plugin reads nothing is not folded into the projector
/// process's mirror: its keys are forgotten there, and its text is kept
/// until the host has applied it. A later read must see it all the same,
/// even while the host is still logging it. Eight posters mix requests of
/// `set` events (no reads: forgotten) and `note` events (reads) over six
/// keys, with a mirror of 4 entries; the final counts equal a sequential
/// replay of the requests in the order the host logged them (their `seq`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_requests_that_read_nothing_see_them_in_log_order() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(
        vec![PluginFile::Built("vista_fixture_tally", "tally.so")],
        &["--projector-mirror-entities", "4"],
    )
    .await;
    const POSTERS: u64 = 8;
    const REQUESTS: u64 = 30;
    let requests_of = |poster: u64| {
        let mut state = poster * 2_654_435_761 + 1;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        (0..REQUESTS)
            .map(|request| {
                let sets = next() % 2 == 0;
                (0..1 + next() % 4)
                    .map(|_| {
                        let id = format!("k{}", next() % 6);
                        if sets {
                            json!({"type": "set", "id": id, "count": poster * 1000 + request})
                        } else {
                            note(&id)
                        }
                    })
                    .collect::<Vec<Value>>()
            })
            .collect::<Vec<_>>()
    };
    let post = |poster: u64| {
        let host = &host;
        async move {
            let mut logged = Vec::new();
            for events in requests_of(poster) {
                let reply = host.ingest_ok("crash", &events).await;
                let seq: u64 = reply["seq"].as_str().unwrap().parse().unwrap();
                logged.push((seq, events));
            }
            logged
        }
    };
    let mut logged: Vec<(u64, Vec<Value>)> = futures_util::future::join_all((0..POSTERS).map(post))
        .await
        .into_iter()
        .flatten()
        .collect();
    logged.sort_by_key(|(seq, _)| *seq);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for event in logged.iter().flat_map(|(_, events)| events) {
        let key = format!("note:{}", event["id"].as_str().unwrap());
        if event["type"] == "set" {
            expected.insert(key, event["count"].as_u64().unwrap());
        } else {
            *expected.entry(key).or_default() += 1;
            *expected.entry("notes".into()).or_default() += 1;
        }
    }
    assert!(expected["notes"] > 0, "no notes were posted");
    let tally = view_of(&host, "Tally/list").await;
    for (key, count) in &expected {
        assert_eq!(tally[key]["count"], *count, "{key}: {tally:?}");
    }
}

/// A large request's mutations reach the host in parts while the child
/// projects the rest. A crash or an error after parts were sent still
/// costs the whole request; a request that succeeds is applied whole and
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_after_mutations_were_sent_ahead_still_refuses_the_whole_request() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(crashy(), &ISOLATED).await;
    // 2,000 notes are about 100 KiB of mutations: a dozen parts.
    let notes = |prefix: &str| -> Vec<Value> {
        (0..2000)
            .map(|i| note(&format!("{prefix}-{i:04}")))
            .collect()
    };

    let mut crashing = notes("crashed");
    crashing.push(json!({"type": "abort"}));
    let (status, reply) = host.ingest("crash", ndjson(&crashing)).await;
    assert_crashed(status, &reply, 2001, &["SIGABRT"]);

    let mut refused = notes("refused");
    refused.push(json!({"type": "no-such-type"}));
    let (status, reply) = host.ingest("crash", ndjson(&refused)).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "projector-error", "{reply}");
    assert_eq!(reply["line"], 2001, "{reply}");
    assert!(
        crash_keys(&host).await.is_empty(),
        "part of a refused request was applied"
    );

    let applied = notes("applied");
    let (status, reply) = host.ingest("crash", ndjson(&applied)).await;
    assert_eq!(status, 200, "{reply}");
    let expected: Vec<String> = applied
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(crash_keys(&host).await, expected);
}

/// user+system ticks of every live descendant of `pid`.
fn descendant_ticks(pid: u32) -> BTreeMap<u32, u64> {
    descendants(pid)
        .into_iter()
        .map(|child| (child, process_cpu_ticks(child)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spinning_projector_leaves_no_cpu_behind() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(crashy(), &ISOLATED).await;
    host.ingest_ok("crash", &[note("first")]).await;
    let spinner = projector_pid(&host, "crashy.so").await;
    let (status, reply) = host
        .ingest("crash", ndjson(&[json!({"type": "spin"})]))
        .await;
    assert_timed_out(status, &reply, 1000);
    wait_gone(spinner, "the spinning projector child").await;
    // Restarted, not left stuck.
    host.ingest_ok("crash", &[note("second")]).await;
    assert_eq!(entry(&host, "crashy.so").await["state"], "loaded");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (host_before, children_before) = (host.cpu_ticks(), descendant_ticks(host.pid()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (host_after, children_after) = (host.cpu_ticks(), descendant_ticks(host.pid()));
    // 5% of a core over 5 s: 25 ticks of 1/100 s.
    let host_used = host_after - host_before;
    assert!(
        host_used < 25,
        "the idle host used {host_used} ticks over 5 s"
    );
    let children_used: u64 = children_after
        .iter()
        .map(|(pid, ticks)| ticks - children_before.get(pid).copied().unwrap_or(0).min(*ticks))
        .sum();
    assert!(
        children_used < 25,
        "the host's children used {children_used} ticks over 5 s: {children_before:?} -> {children_after:?}"
    );
}

/// The dead letters `host` lists.
async fn dead_letters(host: &Host) -> Vec<Value> {
    let (status, body) = host.get_json("/admin/dead-letters").await;
    assert_eq!(status, 200, "{body}");
    body["dead_letters"]
        .as_array()
        .unwrap_or_else(|| panic!("no dead_letters array: {body}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_and_refused_lines_are_listed_as_dead_letters() {
    let _serial = SERIAL.lock().await;
    let started_ms = unix_now() * 1000;
    let host = Host::start(crashy(), &ISOLATED).await;
    let (status, reply) = host
        .ingest(
            "crash",
            ndjson(&[note("d1"), json!({"type": "abort"}), note("d2")]),
        )
        .await;
    assert_crashed(status, &reply, 2, &["SIGABRT"]);
    let bogus = json!({"type": "bogus", "n": 7});
    let (status, reply) = host
        .ingest("crash", ndjson(&[note("d3"), bogus.clone()]))
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "projector-error", "{reply}");
    assert_eq!(reply["line"], 2, "{reply}");
    let fingerprint = entry(&host, "crashy.so").await["fingerprint"].clone();
    assert!(fingerprint.is_string(), "{fingerprint}");

    let letters = dead_letters(&host).await;
    let now_ms = (unix_now() + 1) * 1000;
    let find = |code: &str| {
        letters
            .iter()
            .find(|l| l["code"] == code)
            .unwrap_or_else(|| panic!("no {code} dead letter in {letters:?}"))
            .clone()
    };
    let crashed = find("projector-crashed");
    let refused = find("projector-error");
    for (letter, event) in [
        (&crashed, json!({"type": "abort"})),
        (&refused, bogus.clone()),
    ] {
        assert_eq!(letter["plugin"], "crashy", "{letter}");
        assert_eq!(letter["fingerprint"], fingerprint, "{letter}");
        assert_eq!(letter["stream"], "crash", "{letter}");
        assert_eq!(letter["line"], 2, "{letter}");
        assert!(
            letter["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{letter}"
        );
        assert!(letter["position"].is_null(), "single host: {letter}");
        let at = letter["at_ms"].as_u64().unwrap_or(0);
        assert!((started_ms..=now_ms).contains(&at), "at_ms: {letter}");
        assert_eq!(letter["event"], event, "{letter}");
    }
    assert_eq!(crashed["signal"], "SIGABRT", "{crashed}");
    assert!(refused["signal"].is_null(), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("unknown event type"),
        "{refused}"
    );

    // The same list, one JSON object a line.
    let (status, text) = host.get_text("/admin/dead-letters?format=ndjson").await;
    assert_eq!(status, 200, "{text}");
    let exported: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(exported.iter().all(Value::is_object), "{text}");
    assert_eq!(exported, letters);

    // `vista dead-letters --events`: the events alone, ready to re-ingest.
    let output = std::process::Command::new(vista_tests::vista_binary())
        .args(["dead-letters", "--events", "--url", &host.http_url()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Value> = letters.iter().map(|l| l["event"].clone()).collect();
    assert_eq!(events, expected);
    assert!(events.contains(&bogus), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_refused_on_every_host_which_stay_up_and_equal() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let hosts = ready_members(&nats, 3, crashy_and_tokens).await;
    let (status, reply) = hosts[0]
        .ingest("crash", ndjson(&[json!({"type": "abort"})]))
        .await;
    assert_crashed(status, &reply, 1, &["SIGABRT"]);

    // Every host refuses it once (after one retry in a fresh child) and
    // keeps it as a dead letter at its stream position.
    let mut positions = Vec::new();
    for (n, host) in hosts.iter().enumerate() {
        let deadline = Instant::now() + CLUSTER_CONVERGE;
        let letter = loop {
            let letters = dead_letters(host).await;
            let found = letters
                .iter()
                .find(|l| l["plugin"] == "crashy" && l["code"] == "projector-crashed")
                .cloned();
            if let Some(letter) = found {
                break letter;
            }
            assert!(
                Instant::now() < deadline,
                "host {n} lists no dead letter: {letters:?}\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(letter["stream"], "crash", "{letter}");
        assert_eq!(letter["signal"], "SIGABRT", "{letter}");
        assert_eq!(letter["event"], json!({"type": "abort"}), "{letter}");
        positions.push(
            letter["position"]
                .as_u64()
                .unwrap_or_else(|| panic!("host {n}: no position: {letter}")),
        );
        while host.metric("vista_cluster_refused_total").await != 1.0 {
            assert!(
                Instant::now() < deadline,
                "host {n} counts {} refused records",
                host.metric("vista_cluster_refused_total").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "{positions:?}"
    );

    // A good record through another host reaches all three.
    hosts[1].ingest_ok("crash", &[note("good")]).await;
    let deadline = Instant::now() + CLUSTER_CONVERGE;
    let expected = loop {
        let view = view_of(&hosts[1], "Crash/list").await;
        if view.contains_key("good") {
            break view;
        }
        assert!(Instant::now() < deadline, "host 1 never showed the note");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(expected.keys().collect::<Vec<_>>(), vec!["good"]);
    for (n, host) in hosts.iter().enumerate() {
        assert_eq!(
            view_once_equal(host, "Crash/list", &expected).await,
            expected,
            "host {n}"
        );
        assert!(process_alive(host.pid()), "host {n} died:\n{}", host.log());
        assert_eq!(host.get_json("/readyz").await.0, 200, "host {n}");
        assert_eq!(
            host.metric("vista_cluster_refused_total").await,
            1.0,
            "host {n}"
        );
        projector_pid(host, "crashy.so").await;
        assert_eq!(dead_letters(host).await.len(), 1, "host {n}");
    }
}

#[tokio::test]
async fn a_projector_process_starts_with_a_larger_malloc_cache_for_its_plugin() {
    // The plugin allocates with glibc's malloc in the projector process;
    // the host starts it with a larger per-thread cache of freed blocks.
    let host = Host::with_tokens().await;
    host.ingest_ok("tokens", &[token("a")]).await;
    let pid = projector_pid(&host, "tokens.so").await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let tunables: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|var| var.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect();
    assert_eq!(tunables.len(), 1, "{tunables:?}");
    // Any tunables the host was started with follow (and win).
    assert!(
        tunables[0].starts_with("glibc.malloc.tcache_count=256"),
        "{tunables:?}"
    );
}
