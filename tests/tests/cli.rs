//! The command-line clients against the real host: `vista ingest` (batches,
//! progress, the first refused line named with nothing of its batch
//! applied), `vista tail` (the table in the view's order, `--json` frames,
//! a closed pipe, refusals), `vista plugins`, `vista token`, the admin
//! surface's safe defaults, and `--version`, completions, the man page and
//! JSON logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::{unix_now, vista_binary, Host, PluginFile};

const SECRET: &str = "a-cli-test-secret-of-some-length";

/// Starts `vista` with these arguments and environment, stdout and stderr
/// piped.
fn spawn_vista(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(vista_binary());
    command
        .args(args)
        .env_remove("VISTA_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

/// Waits for `child` to exit within `limit` (killing it if not); returns
/// (success, stdout, stderr).
fn finish(mut child: Child, limit: Duration) -> (bool, String, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vista did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).unwrap();
    }
    (status.success(), stdout, stderr)
}

/// The lines `vista tail` prints, read on a thread.
fn tail_lines(args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = spawn_vista(args, &[("COLUMNS", "60")]);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The next table of `rows` rows `vista tail` draws: its title, header and
/// rows.
fn next_table(lines: &std::sync::mpsc::Receiver<String>, view: &str, rows: usize) -> Vec<String> {
    let title = format!("{view}: {rows} rows");
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no table of {rows} rows of {view}"));
        if line.starts_with(&title) {
            let mut table = vec![line];
            for _ in 0..=rows {
                table.push(lines.recv_timeout(Duration::from_secs(10)).unwrap());
            }
            return table;
        }
    }
}

/// The keys of a drawn table, in order.
fn keys(table: &[String]) -> Vec<&str> {
    table[2..]
        .iter()
        .map(|row| row.split_whitespace().next().unwrap())
        .collect()
}

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

/// The games entry of `GET /plugins` and its latest history event.
fn games_entry(plugins: &Value) -> Option<(Value, Value)> {
    let entry = plugins
        .as_array()?
        .iter()
        .find(|p| p["name"] == "games" && p["state"] == "loaded")?;
    let last = entry["history"].as_array()?.last()?.clone();
    Some((entry.clone(), last))
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_history_records_swaps_and_reprojections() {
    let host = Host::with_games().await;
    let (_, plugins) = host.get_json("/plugins").await;
    let (first, _) = games_entry(&plugins).expect("games loaded");
    let old = first["fingerprint"].as_str().unwrap().to_owned();
    // Another build of the same plugin over the same file: a swap.
    let variant = vista_tests::variant_artifact("vista-games", "vista_games", "alt-views");
    std::fs::copy(variant, host.plugins_dir.join("games.so")).unwrap();
    let plugins = host
        .wait_for_plugins("the swap in the history", |p| {
            games_entry(p).is_some_and(|(_, last)| last["event"] == "swapped")
        })
        .await;
    let (entry, swapped) = games_entry(&plugins).unwrap();
    let new = entry["fingerprint"].as_str().unwrap().to_owned();
    assert_ne!(old, new, "a different build");
    assert_eq!(swapped["from"], old.as_str(), "{swapped}");
    assert_eq!(swapped["fingerprint"], new.as_str(), "{swapped}");
    let table = |host: &Host| {
        let output = Command::new(vista_binary())
            .args(["plugins", "--url", &host.http_url()])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let shown = table(&host);
    assert!(
        shown.contains(&format!("swapped {} -> {}", &old[..8], &new[..8])),
        "{shown}"
    );
    // A reprojection is recorded too.
    let status = reqwest::Client::new()
        .post(format!("{}/plugins/games/reproject", host.http_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    host.wait_for_plugins("the reprojection in the history", |p| {
        games_entry(p).is_some_and(|(_, last)| last["event"] == "reprojected")
    })
    .await;
    assert!(table(&host).contains("reprojected"), "{}", table(&host));
}

#[tokio::test(flavor = "multi_thread")]
async fn vista_tail_draws_a_table_in_the_views_order_cut_to_the_width() {
    let host = Host::with_tokens_and_games().await;
    for n in 1..=3 {
        host.ingest_ok(
            "tokens",
            &[json!({"type": "token_created", "mint": format!("m{n}"),
                "symbol": format!("SYMBOL-{n}-{}", "x".repeat(80)), "decimals": n, "supply": n * 1000})],
        )
        .await;
    }
    // Token/list is `_seq` descending: the last created first, not by key.
    let (mut tail, lines) = tail_lines(&["tail", "Token/list", "--url", &host.ws_url()]);
    let table = next_table(&lines, "Token/list", 3);
    assert!(table[0].contains("by _seq descending"), "{table:#?}");
    assert_eq!(keys(&table), ["m3", "m2", "m1"], "{table:#?}");
    let header: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(
        header,
        ["key", "_seq", "decimals", "mint", "supply", "symbol"],
        "{table:#?}"
    );
    for line in &table {
        assert!(line.chars().count() <= 60, "wider than COLUMNS: {line:?}");
    }
    assert!(
        table[2].contains("SYMBOL-3-x") && table[2].ends_with('…'),
        "{table:#?}"
    );
    // A live change is drawn again in order.
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a0", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    let table = next_table(&lines, "Token/list", 4);
    assert_eq!(keys(&table), ["a0", "m3", "m2", "m1"], "{table:#?}");
    let _ = tail.kill();
    let _ = tail.wait();

    // Game/top is a derived view sorted by score descending; by `_seq` it
    // would be g1 g3 g2 and by key g1 g2 g3.
    for game in ["g1", "g2", "g3"] {
        host.ingest_ok(
            "games",
            &[json!({"type": "game_started", "game": game, "players": ["ann", "bob"], "startedAt": 100})],
        )
        .await;
    }
    for (game, damage) in [("g2", 30), ("g3", 10), ("g1", 5)] {
        host.ingest_ok(
            "games",
            &[json!({"type": "attack", "game": game, "player": "ann", "damage": damage})],
        )
        .await;
    }
    let (mut tail, lines) = tail_lines(&[
        "tail",
        "Game/top",
        "--url",
        &host.ws_url(),
        "--columns",
        "score,status",
    ]);
    let table = next_table(&lines, "Game/top", 3);
    assert!(table[0].contains("by score descending"), "{table:#?}");
    assert_eq!(keys(&table), ["g2", "g3", "g1"], "{table:#?}");
    let header: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(header, ["key", "score", "status"], "--columns chooses");
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn vista_tail_ends_quietly_when_its_reader_leaves() {
    let host = Host::with_tokens().await;
    let mut tail = spawn_vista(
        &["tail", "Token/list", "--json", "--url", &host.ws_url()],
        &[],
    );
    // Like `| head -2`: read two lines, then close the pipe.
    let mut stdout = BufReader::new(tail.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with('{'), "{line}");
    }
    drop(stdout);
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})],
    )
    .await;
    let (ok, _, stderr) = finish(tail, Duration::from_secs(10));
    assert!(ok, "exit 0 on a closed pipe: {stderr}");
    assert!(stderr.is_empty(), "quietly: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vista_tail_refusals_name_the_code_and_the_fix_and_never_the_token() {
    let host = Host::start(
        vec![
            PluginFile::Built("vista_tokens", "tokens.so"),
            PluginFile::Built("vista_games", "games.so"),
        ],
        &["--jwt-secret", SECRET],
    )
    .await;
    let run = |args: &[&str]| {
        let mut all = vec!["tail"];
        all.extend_from_slice(args);
        finish(spawn_vista(&all, &[]), Duration::from_secs(10))
    };
    let (ok, _, stderr) = run(&["Token/list", "--url", &host.ws_url()]);
    assert!(!ok);
    assert!(
        stderr.contains("auth-required")
            && stderr.contains("pass --token")
            && stderr.contains("VISTA_TOKEN"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let garbage = "garbage-secret-token-0123";
    for args in [
        vec!["Token/list", "--url", &host.ws_url(), "--token", garbage],
        vec![
            "Token/list",
            "--url",
            &format!("{}/?hs_token={garbage}", host.ws_url()),
        ],
    ] {
        let (ok, stdout, stderr) = run(&args);
        assert!(!ok);
        assert!(stderr.contains("token-invalid"), "{stderr}");
        assert!(
            !stderr.contains(garbage) && !stdout.contains(garbage),
            "the token is echoed: {stderr}"
        );
    }
    assert!(!host.log().contains(garbage), "the host logged the token");

    // A view outside the token's scope: the `forbidden` issue ends it.
    let token = vista_tests::mint_token(
        SECRET,
        &json!({"sub": "t", "exp": unix_now() + 60, "views": ["Token/*"]}),
    );
    let url = host.ws_url();
    for json_flag in [false, true] {
        let mut args = vec!["Game/list", "--url", &url, "--token", &token];
        if json_flag {
            args.push("--json");
        }
        let (ok, _, stderr) = run(&args);
        assert!(!ok, "forbidden exits non-zero");
        assert!(
            stderr.contains("forbidden") && stderr.contains("--views"),
            "{stderr}"
        );
        assert!(!stderr.contains(&token), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vista_token_mints_tokens_the_host_accepts_until_their_ttl() {
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--jwt-secret", SECRET, "--admin-jwt"],
    )
    .await;
    let mint = |args: &[&str]| {
        let mut all = vec!["token", "--secret-env", "CLI_TEST_SECRET"];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = finish(
            spawn_vista(&all, &[("CLI_TEST_SECRET", SECRET)]),
            Duration::from_secs(10),
        );
        assert!(ok, "{stderr}");
        stdout.trim().to_owned()
    };
    let token = mint(&["--views", "Token/*", "--ttl", "1h", "--sub", "alice"]);
    let mut client =
        vista_tests::WsClient::connect(&format!("{}/?hs_token={token}", host.ws_url())).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot_frames().await;
    client
        .send(json!({"type": "subscribe", "view": "Game/list"}))
        .await;
    let issue = client.recv_json().await;
    assert_eq!(issue["error"], "forbidden", "scoped to Token/*: {issue}");

    // Admin routes: only a token minted with --admin.
    let admin = mint(&["--admin", "--ttl", "60"]);
    let http = reqwest::Client::new();
    for (bearer, status) in [(Some(&admin), 200), (Some(&token), 401), (None, 401)] {
        let mut request = http.get(format!("{}/plugins", host.http_url()));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        assert_eq!(request.send().await.unwrap().status(), status);
    }

    let short = mint(&["--views", "Token/*", "--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match tokio_tungstenite::connect_async(format!("{}/?hs_token={short}", host.ws_url())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["x-error-code"], "token-expired");
        }
        other => panic!("an expired token was accepted: {:?}", other.map(|_| ())),
    }
    // Without the secret it says which variable to set.
    let (ok, _, stderr) = finish(
        spawn_vista(&["token", "--secret-env", "CLI_TEST_UNSET"], &[]),
        Duration::from_secs(10),
    );
    assert!(
        !ok && stderr.contains("CLI_TEST_UNSET is not set"),
        "{stderr}"
    );
}

#[test]
fn a_public_address_needs_admin_protection_or_says_which_flag_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--in-memory",
            "--plugins",
            plugins.to_str().unwrap(),
            "--jwt-secret",
            SECRET,
        ];
        args.extend_from_slice(extra);
        spawn_vista(&args, &[])
    };
    // Refused before anything is bound.
    let (ok, _, stderr) = finish(serve(&[]), Duration::from_secs(10));
    assert!(!ok);
    for flag in ["--admin-token", "--admin-jwt", "--allow-anonymous-admin"] {
        assert!(stderr.contains(flag), "names {flag}: {stderr}");
    }
    // With the explicit flag it starts; stopped at once, reached on loopback.
    let mut host = serve(&["--allow-anonymous-admin"]);
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    let health = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()));
    let _ = host.kill();
    let _ = host.wait();
    assert!(line.starts_with("vista listening on 0.0.0.0:"), "{line}");
    assert!(health.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_refuse_anonymous_requests_with_an_admin_token() {
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--admin-token", "admin-secret-1"],
    )
    .await;
    let http = reqwest::Client::new();
    for path in [
        "/plugins",
        "/status",
        "/metrics",
        "/admin/views",
        "/admin/figures",
    ] {
        let response = http
            .get(format!("{}{path}", host.http_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["x-error-code"], "auth-required");
    }
    let reproject = http
        .post(format!("{}/plugins/tokens/reproject", host.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reproject.status(), 401);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(host.get_json(path).await.0, 200, "{path} stays open");
    }
    // `vista plugins` says what to pass.
    let (ok, _, stderr) = finish(
        spawn_vista(&["plugins", "--url", &host.http_url()], &[]),
        Duration::from_secs(10),
    );
    assert!(!ok);
    assert!(
        stderr.contains("auth-required") && stderr.contains("--admin-token"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = finish(
        spawn_vista(
            &["plugins", "--url", &host.http_url()],
            &[("VISTA_TOKEN", "admin-secret-1")],
        ),
        Duration::from_secs(10),
    );
    assert!(ok && stdout.contains("tokens"), "{stderr}");
}

#[tokio::test]
async fn version_completions_man_page_and_json_logs() {
    let run = |args: &[&str]| finish(spawn_vista(args, &[]), Duration::from_secs(10));
    let (ok, version, _) = run(&["--version"]);
    assert!(ok);
    let version = version.trim();
    let commit = version
        .strip_prefix(concat!("vista ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    for (shell, marker) in [
        ("bash", "_vista()"),
        ("zsh", "#compdef vista"),
        ("fish", "complete -c vista"),
    ] {
        let (ok, script, stderr) = run(&["completions", shell]);
        assert!(ok && script.contains(marker), "{shell}: {stderr}");
        assert!(
            script.contains("tail") && script.contains("token"),
            "{shell}"
        );
    }
    let (ok, page, _) = run(&["man"]);
    assert!(
        ok && page.contains(".TH vista 1") && page.contains("tail"),
        "{page}"
    );

    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--log-format", "json"],
    )
    .await;
    host.healthz_latency().await;
    let log = host.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "loading plugins"),
        "{log}"
    );
}
