//! Durable state against the real host: acknowledged requests survive
//! `kill -9`, every request is wholly present or wholly absent after a
//! crash, `_seq` never repeats or goes backwards across restarts, a full
//! disk is a 503 with nothing lost, and a damaged data file stops the host
//! with the file named.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use vista_tests::{vista_binary, Host, PluginFile, WsClient};

/// The whole `Token/list` view: mint -> entity.
async fn tokens(host: &Host) -> BTreeMap<String, Value> {
    let mut client = WsClient::connect(&host.ws_url()).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await.into_iter().collect()
}

fn seq_of(entity: &Value) -> u64 {
    entity["_seq"].as_str().unwrap().parse().unwrap()
}

async fn durable_tokens_host() -> Host {
    Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], &[]).await
}

#[tokio::test]
async fn acknowledged_requests_survive_kill_9_and_seq_continues() {
    let mut host = durable_tokens_host().await;
    let reply = host
        .ingest_ok(
            "tokens",
            &[
                json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 10}),
                json!({"type": "supply_changed", "mint": "a", "delta": 5}),
                json!({"type": "token_created", "mint": "b", "symbol": "B", "decimals": 0, "supply": 1}),
            ],
        )
        .await;
    host.ingest_ok("tokens", &[json!({"type": "token_closed", "mint": "b"})])
        .await;
    let before = tokens(&host).await;
    let last_seq: u64 = reply["seq"].as_str().unwrap().parse().unwrap();

    host.kill9();
    host.restart().await;
    let after = tokens(&host).await;
    assert_eq!(
        after, before,
        "the state after a crash equals the state before"
    );
    assert_eq!(after["a"]["supply"], 15);
    assert!(!after.contains_key("b"), "the delete survived too");
    // A state-reading event on a restored entity works, and `_seq` goes on.
    let reply = host
        .ingest_ok(
            "tokens",
            &[json!({"type": "supply_changed", "mint": "a", "delta": 1})],
        )
        .await;
    let next: u64 = reply["seq"].as_str().unwrap().parse().unwrap();
    assert!(next > last_seq + 1, "{next} after {last_seq}");
    let (_, status) = host.get_json("/status").await;
    assert_eq!(status["storage"], "durable");
    assert!(status["log"]["records"].as_u64().unwrap() >= 3, "{status}");
    assert!(host.log().contains("state recovered"), "{}", host.log());
}

#[tokio::test]
async fn in_memory_seq_never_goes_backwards_across_restarts() {
    let mut host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--in-memory"],
    )
    .await;
    let first = host
        .ingest_ok("tokens", &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})])
        .await;
    host.kill9();
    host.restart().await;
    assert!(tokens(&host).await.is_empty(), "in memory: nothing kept");
    let second = host
        .ingest_ok("tokens", &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})])
        .await;
    let (first, second) = (
        first["seq"].as_str().unwrap(),
        second["seq"].as_str().unwrap(),
    );
    assert_eq!(second.len(), 16);
    assert!(second > first, "{second} after {first}");
    let (_, status) = host.get_json("/status").await;
    assert_eq!(status["storage"], "in-memory");
}

/// What the crash soak's posters learned about each request.
#[derive(Default)]
struct Ledger {
    /// Requests answered 200.
    acked: BTreeSet<String>,
    /// Requests sent whose answer never came (the host died meanwhile).
    unknown: BTreeSet<String>,
}

/// One request: three new tokens named after it, and +1 on the shared
/// `counter` token (a state-reading event).
fn request_body(id: &str) -> String {
    let mut body = String::new();
    for i in 0..3 {
        body.push_str(&format!(
            "{}\n",
            json!({"type": "token_created", "mint": format!("{id}-{i}"), "symbol": "S", "decimals": 0, "supply": 1})
        ));
    }
    body.push_str(&format!(
        "{}\n",
        json!({"type": "supply_changed", "mint": "counter", "delta": 1})
    ));
    body
}

#[tokio::test]
async fn crash_soak_every_acknowledged_request_survives_and_none_is_torn() {
    const KILLS: usize = 20;
    const POSTERS: usize = 4;
    // Frequent checkpoints: restarts load one and replay the log after it.
    let mut host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--checkpoint-every-events", "200"],
    )
    .await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "counter", "symbol": "C", "decimals": 0, "supply": 0})],
    )
    .await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut max_seq_seen = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..KILLS {
        let url = format!("{}/ingest/tokens", host.http_url());
        let posters: Vec<_> = (0..POSTERS)
            .map(|poster| {
                let (url, ledger) = (url.clone(), ledger.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    for n in 0.. {
                        let id = format!("r{round}p{poster}n{n}");
                        let sent = http.post(&url).body(request_body(&id)).send().await;
                        let mut ledger = ledger.lock().unwrap();
                        match sent {
                            Ok(response) if response.status() == 200 => {
                                ledger.acked.insert(id);
                            }
                            Ok(response) => panic!("request {id} refused: {}", response.status()),
                            Err(_) => {
                                // The host died under it: applied or not.
                                ledger.unknown.insert(id);
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + next() % 250)).await;
        host.kill9();
        for poster in posters {
            poster.await.unwrap();
        }
        host.restart().await;

        let state = tokens(&host).await;
        let ledger = ledger.lock().unwrap();
        let mut applied = 0;
        for id in ledger.acked.iter().chain(&ledger.unknown) {
            let present = (0..3)
                .filter(|i| state.contains_key(&format!("{id}-{i}")))
                .count();
            assert!(
                present == 0 || present == 3,
                "round {round}: request {id} is torn ({present} of 3 tokens)"
            );
            if ledger.acked.contains(id) {
                assert_eq!(
                    present, 3,
                    "round {round}: acknowledged request {id} was lost"
                );
            }
            applied += usize::from(present == 3);
        }
        assert_eq!(
            state["counter"]["supply"].as_u64().unwrap() as usize,
            applied,
            "round {round}: the counter saw exactly the applied requests"
        );
        let seqs: BTreeSet<u64> = state.values().map(seq_of).collect();
        assert_eq!(seqs.len(), state.len(), "round {round}: a _seq repeats");
        let max = *seqs.last().unwrap();
        assert!(max >= max_seq_seen, "round {round}: _seq went back");
        max_seq_seen = max;
    }
    // After the last restart new mutations get new, higher `_seq`s.
    let reply = host.ingest("tokens", request_body("after")).await.1;
    let seq: u64 = reply["seq"].as_str().unwrap().parse().unwrap();
    assert!(seq > max_seq_seen);
    let ledger = ledger.lock().unwrap();
    println!(
        "crash soak: {KILLS} kills, {} acknowledged requests, {} in flight at a kill",
        ledger.acked.len(),
        ledger.unknown.len()
    );
    assert!(
        ledger.acked.len() > KILLS,
        "the soak ingested too little to mean anything"
    );
    assert!(
        host.log().contains("checkpoint loaded"),
        "no restart started from a checkpoint"
    );
}

#[tokio::test]
async fn a_full_disk_is_503_storage_unavailable_and_loses_nothing_acknowledged() {
    // The host may write at most 24 MB to any file (the plugin's debug
    // build, copied into the cache, is ~15 MB): the log fills up.
    let mut host = Host::start_wrapped(
        &["prlimit", "--fsize=24000000", "--"],
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &[],
    )
    .await;
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..1000 {
        let body: String = (0..200)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"type": "token_created", "mint": format!("m{n}-{i}"), "symbol": "x".repeat(400), "decimals": 0, "supply": 1})
                )
            })
            .collect();
        let (status, reply) = host.ingest("tokens", body).await;
        match status {
            200 => acked.push(n),
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {reply}"),
        }
    }
    let reply = refused.expect("the log never filled up");
    assert_eq!(reply["error"], "storage-unavailable", "{reply}");
    assert!(!acked.is_empty());
    // Still serving: health, subscriptions, and every acknowledged token.
    host.healthz_latency().await;
    let state = tokens(&host).await;
    for n in &acked {
        assert!(
            state.contains_key(&format!("m{n}-0")),
            "acknowledged request {n} lost"
        );
    }
    assert!(
        host.log().contains("cannot write the event log"),
        "{}",
        host.log()
    );
    // And after a restart (space is still short, reading needs none).
    host.kill9();
    host.restart().await;
    let state = tokens(&host).await;
    for n in &acked {
        assert!(
            state.contains_key(&format!("m{n}-199")),
            "request {n} lost across restart"
        );
    }
}

#[tokio::test]
async fn a_damaged_data_file_stops_the_host_naming_it_and_data_check_finds_it() {
    let mut host = durable_tokens_host().await;
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    host.kill9();
    let data = host.data_dir();
    let file = data.join("vista.redb");
    let check = std::process::Command::new(vista_binary())
        .args(["data", "check"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let answer: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(answer["log"]["records"], 1, "{answer}");

    // Overwrite the file's header.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..64].fill(0x5a);
    std::fs::write(&file, bytes).unwrap();
    let serve = std::process::Command::new(vista_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(&host.plugins_dir)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        !serve.status.success(),
        "the host started on a damaged file"
    );
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    let check = std::process::Command::new(vista_binary())
        .args(["data", "check"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"].as_str().unwrap().contains("vista.redb"),
        "{answer}"
    );
}

/// Waits (up to 10 s) for a checkpoint covering the last record.
async fn checkpointed(host: &Host) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = host.get_json("/status").await;
        if status["log"]["checkpoint_rec"] == status["log"]["last_rec"] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(mint: &str, supply: u64) -> Value {
    json!({"type": "token_created", "mint": mint, "symbol": "S", "decimals": 0, "supply": supply})
}

/// Everything a resuming client receives up to the end of its snapshot:
/// (deleted keys, snapshot entries).
async fn resume(host: &Host, request: Value) -> (Vec<String>, BTreeMap<String, Value>) {
    let mut client = WsClient::connect(&host.ws_url()).await;
    client.subscribe(request).await;
    let mut deleted = Vec::new();
    loop {
        let frame = client.recv_json().await;
        match frame["op"].as_str() {
            Some("delete") => deleted.push(frame["key"].as_str().unwrap().to_owned()),
            Some("snapshot") => {
                let mut entries: BTreeMap<String, Value> = BTreeMap::new();
                let mut frame = frame;
                loop {
                    for entry in frame["data"].as_array().unwrap() {
                        entries.insert(
                            entry["key"].as_str().unwrap().to_owned(),
                            entry["data"].clone(),
                        );
                    }
                    if frame["complete"] == true {
                        return (deleted, entries);
                    }
                    frame = client.recv_json().await;
                }
            }
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
}

#[tokio::test]
async fn a_client_resuming_with_after_gets_exactly_the_missed_changes() {
    let mut host = durable_tokens_host().await;
    host.ingest_ok(
        "tokens",
        &[
            token("a", 1),
            token("b", 1),
            token("c", 1),
            token("keep", 1),
        ],
    )
    .await;
    let before = tokens(&host).await;
    let cursor = before.values().map(seq_of).max().unwrap();

    // While the client is away: a changes, b goes, d arrives, c comes and goes.
    host.ingest_ok(
        "tokens",
        &[
            json!({"type": "supply_changed", "mint": "a", "delta": 5}),
            json!({"type": "token_closed", "mint": "b"}),
            token("d", 7),
            json!({"type": "token_closed", "mint": "c"}),
        ],
    )
    .await;
    // Also across a crash: the log rebuilds what was deleted.
    host.kill9();
    host.restart().await;

    let cursor_text = format!("{cursor:016}");
    let (deleted, changed) = resume(
        &host,
        json!({"type": "subscribe", "view": "Token/list", "after": cursor_text}),
    )
    .await;
    let deleted: BTreeSet<String> = deleted.into_iter().collect();
    assert_eq!(deleted, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert_eq!(changed.keys().cloned().collect::<Vec<_>>(), vec!["a", "d"]);
    assert_eq!(changed["a"]["supply"], 6);
    // The client's old state plus what it got equals the host's state.
    let mut rebuilt = before.clone();
    for key in &deleted {
        rebuilt.remove(key);
    }
    rebuilt.extend(changed);
    assert_eq!(rebuilt, tokens(&host).await);

    // One key resumes the same way.
    let (deleted, changed) = resume(
        &host,
        json!({"type": "subscribe", "view": "Token/state", "key": "b", "after": cursor_text}),
    )
    .await;
    assert_eq!((deleted, changed.len()), (vec!["b".to_owned()], 0));
}

#[tokio::test]
async fn a_cursor_older_than_the_known_deletes_gets_a_full_snapshot() {
    let mut host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--checkpoint-every-events", "1"],
    )
    .await;
    host.ingest_ok("tokens", &[token("a", 1), token("b", 1)])
        .await;
    let cursor = tokens(&host).await.values().map(seq_of).max().unwrap();
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_closed", "mint": "b"}), token("c", 1)],
    )
    .await;
    // Wait for the checkpoint covering the last request, then crash: the
    // restarted host starts from it and does not know the delete of b.
    checkpointed(&host).await;
    host.kill9();
    host.restart().await;
    assert!(host.log().contains("checkpoint loaded"), "{}", host.log());
    let (deleted, snapshot) = resume(
        &host,
        json!({"type": "subscribe", "view": "Token/list", "after": format!("{cursor:016}")}),
    )
    .await;
    assert!(deleted.is_empty());
    assert_eq!(
        snapshot.keys().cloned().collect::<Vec<_>>(),
        vec!["a", "c"],
        "the full view, not just what changed"
    );
}

#[tokio::test]
async fn retention_drops_checkpointed_records_and_the_state_survives() {
    let mut host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--retain", "records:10", "--checkpoint-every-events", "5"],
    )
    .await;
    for n in 0..60 {
        host.ingest_ok("tokens", &[token(&format!("m{n:02}"), n)])
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (_, status) = host.get_json("/status").await;
        if status["log"]["first_rec"].as_u64().unwrap() > 40 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing dropped: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = &status["log"];
    assert_eq!(log["last_rec"], 60);
    assert!(log["records"].as_u64().unwrap() <= 15, "{status}");
    assert!(
        log["checkpoint_rec"].as_u64().unwrap() >= log["first_rec"].as_u64().unwrap() - 1,
        "nothing after the checkpoint was dropped: {status}"
    );
    assert!(host.metric("vista_log_retained_records").await <= 15.0);
    let before = tokens(&host).await;
    assert_eq!(before.len(), 60);
    host.kill9();
    host.restart().await;
    assert_eq!(
        tokens(&host).await,
        before,
        "checkpoint + retained log = the state"
    );
}

#[tokio::test]
async fn a_graceful_stop_closes_the_log_and_a_crash_is_recovered_with_a_log_line() {
    let mut host = durable_tokens_host().await;
    host.ingest_ok("tokens", &[token("a", 1)]).await;
    host.terminate();
    assert!(host.wait_exit(Duration::from_secs(10)).is_some());
    assert!(host.log().contains("event log closed"), "{}", host.log());
    host.restart().await;
    let unclean = "not closed cleanly";
    assert!(!host.log().contains(unclean), "{}", host.log());
    assert_eq!(tokens(&host).await.len(), 1);
    host.kill9();
    host.restart().await;
    assert!(
        host.log().contains(unclean),
        "a crash is recovered with a log line: {}",
        host.log()
    );
    assert_eq!(tokens(&host).await.len(), 1);
}

/// The whole `Token/list` view in view order.
async fn token_list(host: &Host) -> Vec<(String, Value)> {
    let mut client = WsClient::connect(&host.ws_url()).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await
}

/// A token created and never written again is held as its JSON text, in
/// the store and in the checkpoint, and a restart keeps it so: the list
/// comes back in the same order with the same data (an integer beyond
/// 2^53 still sent as a string), and a token patched after the restart
/// moves to the front with its new supply.
#[tokio::test]
async fn entities_held_as_text_survive_a_checkpointed_restart_in_order_and_take_patches() {
    let mut host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--checkpoint-every-events", "5"],
    )
    .await;
    // 29 tokens and one patch: 30 records, the last one checkpointed.
    for n in 0..29u64 {
        let supply = if n == 7 { u64::MAX } else { n };
        host.ingest_ok("tokens", &[token(&format!("m{n:02}"), supply)])
            .await;
    }
    // One written again: a tree in the store, its supply added by the host.
    host.ingest_ok(
        "tokens",
        &[json!({"type": "supply_changed", "mint": "m03", "delta": 5})],
    )
    .await;
    checkpointed(&host).await;
    let before = token_list(&host).await;
    assert_eq!(before.len(), 29);
    assert_eq!(before[0].0, "m03", "the token written last leads");
    let big = &before.iter().find(|(k, _)| k == "m07").unwrap().1;
    assert_eq!(big["supply"], u64::MAX.to_string(), "sent as a string");

    host.kill9();
    host.restart().await;
    assert!(
        host.log().contains("state recovered records=0"),
        "restored from the checkpoint alone"
    );
    assert_eq!(token_list(&host).await, before);

    host.ingest_ok(
        "tokens",
        &[json!({"type": "supply_changed", "mint": "m10", "delta": 32})],
    )
    .await;
    let after = token_list(&host).await;
    assert_eq!(after[0].0, "m10");
    assert_eq!(after[0].1["supply"], 42);
    assert_eq!(after[0].1["symbol"], "S");
    assert!(seq_of(&after[0].1) > seq_of(&before[0].1));
    assert_eq!(after.len(), 29);
}
