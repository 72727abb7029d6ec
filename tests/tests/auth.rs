//! Authentication and access control against the real host: subscriber
//! tokens at the handshake (each refusal with its code), scopes, in-band
//! refresh and expiry, ingest and admin credentials, origins, and the
//! refusal to serve a public address without authentication.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
use vista_tests::{
    mint_token, unix_now, unsigned_token, vista_binary, Host, PluginFile, Received, WsClient,
};

const SECRET: &str = "a-test-secret-of-some-length";

async fn secured_host(extra: &[&str]) -> Host {
    let mut args = vec!["--jwt-secret", SECRET, "--jwt-audience", "vista"];
    args.extend_from_slice(extra);
    Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], &args).await
}

fn claims(ttl_secs: i64) -> Value {
    json!({"sub": "tester", "aud": "vista", "exp": (unix_now() as i64 + ttl_secs)})
}

/// The HTTP refusal of a handshake: (status, `X-Error-Code`, body).
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(Error::Http(response)) => (
            response.status().as_u16(),
            response.headers()["x-error-code"]
                .to_str()
                .unwrap()
                .to_owned(),
            serde_json::from_slice(response.body().as_deref().unwrap()).unwrap(),
        ),
        Ok(_) => panic!("the handshake to {url} was accepted"),
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn with_token(host: &Host, token: &str) -> String {
    format!("{}/?hs_token={token}", host.ws_url())
}

#[tokio::test]
async fn every_bad_token_is_refused_at_the_handshake_with_its_code() {
    let host = secured_host(&[]).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("no token", host.ws_url(), "auth-required"),
        (
            "expired",
            with_token(&host, &mint_token(SECRET, &claims(-10))),
            "token-expired",
        ),
        (
            "not yet valid",
            with_token(
                &host,
                &mint_token(
                    SECRET,
                    &json!({"aud": "vista", "exp": unix_now() + 600, "nbf": unix_now() + 300}),
                ),
            ),
            "token-invalid",
        ),
        (
            "wrong key",
            with_token(&host, &mint_token("another-secret", &claims(60))),
            "token-invalid",
        ),
        (
            "alg none",
            with_token(&host, &unsigned_token(&claims(60))),
            "token-invalid",
        ),
        (
            "wrong audience",
            with_token(
                &host,
                &mint_token(
                    SECRET,
                    &json!({"aud": "someone-else", "exp": unix_now() + 60}),
                ),
            ),
            "token-invalid",
        ),
        ("garbage", with_token(&host, "not.a.jwt"), "token-invalid"),
    ];
    for (case, url, code) in cases {
        let (status, header, body) = refused(&url, &[]).await;
        assert_eq!((status, header.as_str()), (401, code), "{case}: {body}");
        assert_eq!(body["error"], code, "{case}");
    }
    // A tampered payload: a valid token with its claims swapped.
    let good = mint_token(SECRET, &claims(60));
    let forged = mint_token(
        SECRET,
        &json!({"aud": "vista", "exp": unix_now() + 60, "views": ["*"], "sub": "admin"}),
    );
    let parts: Vec<&str> = good.split('.').collect();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
    let (status, code, _) = refused(&with_token(&host, &tampered), &[]).await;
    assert_eq!((status, code.as_str()), (401, "token-invalid"));

    // The right token, as a query parameter or a bearer header, gets in.
    let mut client = WsClient::connect(&with_token(&host, &good)).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    let mut request = host.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect("bearer handshake");
    assert!(host.metric("vista_auth_refused_total").await >= 8.0);
}

#[tokio::test]
async fn scopes_refresh_and_expiry() {
    let host = secured_host(&["--ingest-token", "feed-secret-1:tokens"]).await;
    let scoped = json!({
        "aud": "vista", "exp": unix_now() + 3,
        "views": ["Token/*"], "keys": {"Token/state": ["a"]},
    });
    let mut client = WsClient::connect(&with_token(&host, &mint_token(SECRET, &scoped))).await;
    for (view, key) in [
        ("Trade/list", None),
        ("Token/state", Some("b")),
        ("Token/state", None),
    ] {
        let mut request = json!({"type": "subscribe", "view": view});
        if let Some(key) = key {
            request["key"] = json!(key);
        }
        client.send(request).await;
        let issue = client.recv_json().await;
        assert_eq!(issue["error"], "forbidden", "{view} {key:?}: {issue}");
        assert_eq!(issue["fatal"], false);
    }
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/state", "key": "a"}))
        .await;
    client.snapshot().await;

    // A bad refresh is answered, not obeyed; a good one extends the session.
    client
        .send(json!({"type": "refresh_auth", "token": mint_token("wrong", &claims(60))}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"success": false, "error": "token-invalid"})
    );
    let fresh = mint_token(
        SECRET,
        &json!({"aud": "vista", "exp": unix_now() + 30, "views": ["Token/*"]}),
    );
    client
        .send(json!({"type": "refresh_auth", "token": fresh}))
        .await;
    let answer = client.recv_json().await;
    assert_eq!(answer["success"], true, "{answer}");
    assert!(answer["expiresAt"].as_u64().unwrap() > unix_now() + 20);

    // Another client with the same short token and no refresh is closed.
    let mut short = WsClient::connect(&with_token(&host, &mint_token(SECRET, &scoped))).await;
    let mut expired_issue = false;
    let close = loop {
        match short.recv_within(Duration::from_secs(10)).await {
            Some(Received::Json { value, .. }) => {
                expired_issue |= value["error"] == "token-expired" && value["fatal"] == true
            }
            Some(Received::Close(close)) => break close,
            None => panic!("the expired client was not closed"),
        }
    };
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.starts_with("token-expired:"), "{reason}");
    assert!(expired_issue, "the client was told why");

    // The refreshed client outlived its first token and still streams.
    let reply = reqwest::Client::new()
        .post(format!("{}/ingest/tokens", host.http_url()))
        .bearer_auth("feed-secret-1")
        .body(json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let frame = client.recv_json().await;
    assert_eq!(frame["key"], "a", "{frame}");
}

#[tokio::test]
async fn ingest_and_admin_routes_need_their_credentials() {
    let host = secured_host(&[
        "--ingest-token",
        "feed-secret-1:tokens",
        "--admin-token",
        "admin-secret-1",
    ])
    .await;
    let http = reqwest::Client::new();
    let event =
        json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1})
            .to_string();
    let post = |stream: &str, bearer: Option<String>| {
        let mut request = http
            .post(format!("{}/ingest/{stream}", host.http_url()))
            .body(event.clone());
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    let cases = [
        ("tokens", None, 401, "auth-required"),
        (
            "tokens",
            Some("feed-secret-X".to_owned()),
            401,
            "token-invalid",
        ),
        ("games", Some("feed-secret-1".to_owned()), 403, "forbidden"),
        (
            "tokens",
            Some(mint_token(SECRET, &claims(60))),
            403,
            "forbidden",
        ),
    ];
    for (stream, bearer, status, code) in cases {
        let response = post(stream, bearer.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{stream} {bearer:?}");
        assert_eq!(response.headers()["x-error-code"], code);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code);
    }
    // Nothing was ingested by those.
    let (_, status) = {
        let response = http
            .get(format!("{}/status", host.http_url()))
            .bearer_auth("admin-secret-1")
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status["log"]["records"], 0, "{status}");

    let ok = post("tokens", Some("feed-secret-1".into())).await.unwrap();
    assert_eq!(ok.status(), 200);
    let streams = mint_token(
        SECRET,
        &json!({"aud": "vista", "exp": unix_now() + 60, "streams": ["tokens"]}),
    );
    assert_eq!(post("tokens", Some(streams)).await.unwrap().status(), 200);

    for path in ["/plugins", "/metrics", "/status"] {
        for (bearer, status) in [
            (None, 401),
            (Some("admin-secret-X"), 401),
            (Some("admin-secret-1"), 200),
        ] {
            let mut request = http.get(format!("{}{path}", host.http_url()));
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            assert_eq!(
                request.send().await.unwrap().status(),
                status,
                "{path} {bearer:?}"
            );
        }
    }
    let reproject = http
        .post(format!("{}/plugins/tokens/reproject", host.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reproject.status(), 401);
    // Health stays open to everyone.
    host.healthz_latency().await;
}

#[tokio::test]
async fn a_page_from_another_origin_or_host_name_is_refused() {
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &[
            "--allowed-origins",
            "https://app.example,*.example.org",
            "--allowed-hosts",
            "127.0.0.1,vista.example",
        ],
    )
    .await;
    let (status, code, _) = refused(&host.ws_url(), &[("host", "rebound.attacker.example")]).await;
    assert_eq!((status, code.as_str()), (403, "host-not-allowed"));
    let (status, code, _) = refused(&host.ws_url(), &[("origin", "https://evil.example")]).await;
    assert_eq!((status, code.as_str()), (403, "origin-not-allowed"));
    for origin in ["https://app.example", "https://live.example.org"] {
        let mut request = host.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        ws.close(None).await.ok();
    }
}

#[test]
fn a_public_address_without_authentication_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before anything is bound.
    let output = std::process::Command::new(vista_binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--in-memory", "--plugins"])
        .arg(dir.path().join("plugins"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
}

/// Runs `auth.mjs` with one strategy against `host`; returns its summary.
async fn typescript_client(host: &Host, strategy: &str) -> Value {
    let node = vista_tests::NodeScript::start(
        "auth.mjs",
        host,
        &[
            ("VISTA_JWT_SECRET", SECRET.into()),
            ("VISTA_JWT_AUDIENCE", "vista".into()),
            ("VISTA_AUTH_STRATEGY", strategy.into()),
            ("VISTA_PUBLISHABLE_KEY", "pk_test_12345678".into()),
            ("VISTA_TIMEOUT_MS", "20000".into()),
        ],
    );
    if strategy == "endpoint" {
        // Tokens of 62 s: the client refreshes from the endpoint about 2 s
        // in and hands the new token over in-band.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while host.metric("vista_auth_refreshes_total").await < 1.0 {
            assert!(std::time::Instant::now() < deadline, "no in-band refresh");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let feed = mint_token(
        SECRET,
        &json!({"aud": "vista", "exp": unix_now() + 60, "streams": ["tokens"]}),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/ingest/tokens", host.http_url()))
        .bearer_auth(feed)
        .body(json!({"type": "token_created", "mint": "b", "symbol": "B", "decimals": 0, "supply": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    node.finish("go")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_client_streams_with_each_auth_strategy_and_across_a_refresh() {
    for strategy in ["static", "getToken", "endpoint"] {
        let host = secured_host(&[
            "--publishable-key",
            "pk_test_12345678:Token/*",
            "--token-ttl-secs",
            "62",
        ])
        .await;
        let feed = mint_token(
            SECRET,
            &json!({"aud": "vista", "exp": unix_now() + 60, "streams": ["tokens"]}),
        );
        let response = reqwest::Client::new()
            .post(format!("{}/ingest/tokens", host.http_url()))
            .bearer_auth(feed)
            .body(json!({"type": "token_created", "mint": "a", "symbol": "A", "decimals": 0, "supply": 1}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let summary = typescript_client(&host, strategy).await;
        assert_eq!(summary["ok"], true, "{summary}");
        if strategy == "getToken" {
            assert!(summary["tokens"].as_u64().unwrap() >= 2, "{summary}");
            assert!(
                host.metric("vista_auth_refreshes_total").await >= 1.0,
                "the host accepted an in-band refresh"
            );
        }
    }
}

#[tokio::test]
async fn the_token_endpoint_exchanges_only_known_publishable_keys() {
    let host = secured_host(&["--publishable-key", "pk_test_12345678:Token/*"]).await;
    let http = reqwest::Client::new();
    let exchange = |key: Option<&str>| {
        let mut request = http
            .post(format!("{}/auth/token", host.http_url()))
            .json(&json!({"websocket_url": host.ws_url()}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    for (key, code) in [
        (None, "auth-required"),
        (Some("pk_test_XXXXXXXX"), "token-invalid"),
    ] {
        let response = exchange(key).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["x-error-code"], code);
    }
    let response = exchange(Some("pk_test_12345678")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["expiresAt"].as_u64().unwrap() > unix_now());
    // The issued token connects, within the key's scope only.
    let mut client = WsClient::connect(&with_token(&host, body["token"].as_str().unwrap())).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    client.snapshot().await;
    client
        .send(json!({"type": "subscribe", "view": "Trade/list"}))
        .await;
    assert_eq!(client.recv_json().await["error"], "forbidden");
}

#[tokio::test]
async fn a_configuration_file_sets_what_flags_and_environment_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vista.toml");
    std::fs::write(
        &file,
        format!(
            "jwt-secret = \"{SECRET}\"\njwt-audience = \"vista\"\nmax-connections = 1\ningest-token = [\"feed-secret-1:tokens\", \"feed-secret-2\"]\n"
        ),
    )
    .unwrap();
    // `config check`: the effective settings, secrets masked; the
    // environment beats the file.
    let check = std::process::Command::new(vista_binary())
        .args(["config", "check"])
        .arg(&file)
        .env("VISTA_MAX_CONNECTIONS", "77")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let settings: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(settings["max-connections"], "77");
    assert_eq!(settings["jwt-audience"], "vista");
    assert_eq!(settings["jwt-secret"], "a-***");
    assert_eq!(settings["ingest-token"], json!(["fe***", "fe***"]));
    assert!(!String::from_utf8_lossy(&check.stdout).contains(SECRET));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max-conections = 5\n").unwrap();
    let check = std::process::Command::new(vista_binary())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("unknown key \"max-conections\""));

    // `serve --config`: the file's secret is in force, and a flag beats the
    // file's connection limit of 1.
    let path = file.display().to_string();
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--config", &path, "--max-connections", "5"],
    )
    .await;
    let (status, code, _) = refused(&host.ws_url(), &[]).await;
    assert_eq!((status, code.as_str()), (401, "auth-required"));
    let token = mint_token(SECRET, &claims(60));
    let _first = WsClient::connect(&with_token(&host, &token)).await;
    let _second = WsClient::connect(&with_token(&host, &token)).await;
}

#[tokio::test]
async fn ingest_and_connections_over_their_rates_get_429_with_retry_after() {
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--ingest-rate", "5", "--connection-rate", "3"],
    )
    .await;
    let http = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    for n in 0..30 {
        let response = http
            .post(format!("{}/ingest/tokens", host.http_url()))
            .body(json!({"type": "token_created", "mint": format!("m{n}"), "symbol": "S", "decimals": 0, "supply": 1}).to_string())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(response.headers()["x-error-code"], "rate-limit-exceeded");
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        ok >= 10 && limited >= 10,
        "{ok} accepted, {limited} limited"
    );
    // What was refused was not ingested.
    assert_eq!(
        {
            let mut client = host.client().await;
            client
                .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
                .await;
            client.snapshot().await.len()
        },
        ok
    );
    let mut refused_connections = 0;
    for _ in 0..10 {
        if let Err(Error::Http(response)) = tokio_tungstenite::connect_async(host.ws_url()).await {
            assert_eq!(response.status(), 429);
            refused_connections += 1;
        }
    }
    assert!(
        refused_connections >= 3,
        "{refused_connections} connections refused"
    );
    host.healthz_latency().await;
}

#[tokio::test]
async fn an_eddsa_public_key_verifies_tokens_and_refuses_an_hs256_forgery_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("ed.pem");
    let public = dir.path().join("ed.pub.pem");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("run openssl");
        assert!(status.success());
    };
    openssl(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "ed25519".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    openssl(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    let public_path = public.display().to_string();
    let host = Host::start(
        vec![PluginFile::Built("vista_tokens", "tokens.so")],
        &["--jwt-public-key", &public_path],
    )
    .await;
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &json!({"sub": "ed", "exp": unix_now() + 60}),
        &jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    let mut client = WsClient::connect(&with_token(&host, &signed)).await;
    client
        .subscribe(json!({"type": "subscribe", "view": "Token/list"}))
        .await;
    // Algorithm confusion: an HS256 token "signed" with the public key's
    // text as the secret must not pass.
    let forged = mint_token(
        &std::fs::read_to_string(&public).unwrap(),
        &json!({"exp": unix_now() + 60}),
    );
    let (status, code, _) = refused(&with_token(&host, &forged), &[]).await;
    assert_eq!((status, code.as_str()), (401, "token-invalid"));
}
