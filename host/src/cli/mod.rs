//! Command-line clients of a running host: `vista ingest`, `vista tail` and
//! `vista plugins`. They talk to the host exactly as any client does (HTTP
//! ingest, the WebSocket protocol, `GET /plugins`), so they double as
//! working examples of the protocol.
//!
//! Their errors are one line each: the host's code, its message and the
//! fix ([`refusal`]), with tokens masked ([`crate::redact`]), because they
//! are read by someone at a terminal who needs to know what to do next,
//! and end up in scrollback and CI logs where a secret must not.
//!
//! The options of `vista serve` and what is made of them before a host
//! starts are in [`serve`], its configuration file in [`config`], so the
//! `vista` binary is little more than its command line and the dispatch.

pub mod config;
pub mod serve;
pub mod table;

use table::terminal_size;
pub use table::Table;

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// `vista ingest`: posts NDJSON lines in batches; each batch is all or
/// nothing, so a refused line stops the run with its line number and
/// nothing of its batch applied. Progress is counted in bytes of the input
/// (`total_bytes`, when it is a file), so a big file is read once and never
/// held in memory.
pub async fn ingest(
    url: &str,
    stream: &str,
    input: Box<dyn BufRead>,
    total_bytes: Option<u64>,
    batch: usize,
    token: Option<&str>,
) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let bar = match total_bytes {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} [{elapsed_precise}] {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let mut read = 0u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut lines = input.lines().enumerate();
    loop {
        // (line number in the input, text) of the next batch.
        let mut chunk: Vec<(usize, String)> = Vec::with_capacity(batch);
        for (index, line) in lines.by_ref() {
            let line = line.context("reading the input")?;
            read += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            chunk.push((index + 1, line));
            if chunk.len() == batch.max(1) {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let body: String = chunk.iter().map(|(_, l)| format!("{l}\n")).collect();
        let mut request = http.post(format!("{url}/ingest/{stream}")).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|err| unreachable_host(url, "VISTA_URL", &err))?;
        if response.status() != 200 {
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            bar.abandon();
            if matches!(status.as_u16(), 401 | 403) {
                anyhow::bail!(
                    "{}; nothing of lines {}-{} was applied, {sent} events before them were",
                    refusal(
                        status.as_u16(),
                        answer["error"].as_str(),
                        answer["message"].as_str(),
                        &Refused::Ingest(stream),
                    ),
                    chunk[0].0,
                    chunk[chunk.len() - 1].0,
                );
            }
            // The host numbers the non-blank lines of the body from 1.
            let line = answer["line"]
                .as_u64()
                .and_then(|n| chunk.get(n as usize - 1))
                .map(|(line, _)| *line);
            let message = answer["message"].as_str().unwrap_or("refused");
            match line {
                Some(line) => anyhow::bail!(
                    "line {line} refused ({status} {}): {message}; nothing of lines {}-{} was applied, {sent} events before them were",
                    answer["error"].as_str().unwrap_or(""),
                    chunk[0].0,
                    chunk[chunk.len() - 1].0,
                ),
                None => anyhow::bail!(
                    "lines {}-{} refused ({status} {}): {message}; {sent} events before them were applied",
                    chunk[0].0,
                    chunk[chunk.len() - 1].0,
                    answer["error"].as_str().unwrap_or(""),
                ),
            }
        }
        sent += chunk.len() as u64;
        bar.set_position(read);
        bar.set_message(format!("{sent} events"));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ingested {sent} events into {stream:?} in {seconds:.2} s ({:.0} events/s)",
        sent as f64 / seconds.max(1e-9)
    );
    Ok(sent)
}

/// What `vista tail` watches and how it draws it.
pub struct TailOptions {
    /// The host's WebSocket address.
    pub url: String,
    /// The view, e.g. `Token/list`.
    pub view: String,
    /// One key of it.
    pub key: Option<String>,
    /// One JSON frame per line instead of the table.
    pub json: bool,
    /// Subscriber token, sent as `Authorization: Bearer` (never in the URL,
    /// where it would end up in logs).
    pub token: Option<String>,
    /// The table's columns after the key (default: `_seq` and every
    /// top-level field).
    pub columns: Option<Vec<String>>,
}

/// Socket issues after which the subscription may still start (a plugin
/// providing the view later): `vista tail` keeps waiting on these and
/// ends, non-zero, on every other issue.
const PENDING_ISSUES: [&str; 2] = ["view-not-found", "view-removed"];

/// `vista tail`: subscribes to a view and prints what arrives: one JSON
/// frame per line with `--json`, otherwise the view's rows as a table in
/// the view's order (the `sort` of its `subscribed` frame), redrawn in
/// place on a terminal after each frame, or printed after the snapshot and
/// after each change when piped.
///
/// A refusal (HTTP 401/403 on the handshake, or a socket issue such as
/// `forbidden`) ends it with an error naming the code and the fix instead
/// of waiting for frames that will never come; a closed standard output
/// (`| head`) ends it quietly.
pub async fn tail(options: TailOptions) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let shown_url = crate::redact::redact(&options.url);
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|err| anyhow::anyhow!("--url {shown_url}: {err}"))?;
    if let Some(token) = &options.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("token-invalid: the token is not header-safe text; pass the token itself to --token"))?;
        request
            .headers_mut()
            .insert(reqwest::header::AUTHORIZATION, value);
    }
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let code = response
                .headers()
                .get("x-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            anyhow::bail!(refusal(
                response.status().as_u16(),
                code.as_deref().or(body["error"].as_str()),
                body["message"].as_str(),
                &Refused::Subscribe(&options.view),
            ))
        }
        Err(err) => anyhow::bail!(
            "cannot connect to {shown_url}: {err}; is `vista serve` running there? pass --url or set VISTA_WS_URL"
        ),
    };
    watch_stdout_closed();
    let mut subscribe = json!({"type": "subscribe", "view": options.view});
    if let Some(key) = &options.key {
        subscribe["key"] = json!(key);
    }
    socket.send(Message::text(subscribe.to_string())).await?;
    let mut table = Table::default();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut out = std::io::stdout().lock();
    while let Some(message) = socket.next().await {
        let frame: Value = match message? {
            Message::Text(text) => serde_json::from_str(text.as_str())?,
            Message::Binary(bytes) => decode(&bytes)?,
            Message::Close(close) => {
                let reason = close.map(|c| c.reason.to_string()).unwrap_or_default();
                anyhow::bail!("the host closed the connection: {reason}")
            }
            _ => continue,
        };
        if options.json {
            writeln!(out, "{frame}")?;
            out.flush()?;
        }
        if frame["type"] == "error" {
            let code = frame["error"].as_str().unwrap_or("error");
            let message = frame["message"].as_str().unwrap_or("");
            if PENDING_ISSUES.contains(&code) && frame["fatal"] != true {
                eprintln!("{code}: {message}; waiting for a plugin to provide it");
                continue;
            }
            anyhow::bail!(refusal(
                0,
                Some(code),
                Some(message),
                &Refused::Subscribe(&options.view),
            ));
        }
        if options.json {
            continue;
        }
        if frame["op"] == "subscribed" {
            table.sort = frame["sort"]["field"].as_array().map(|path| {
                let path: Vec<&str> = path.iter().filter_map(Value::as_str).collect();
                (path.join("."), frame["sort"]["order"] == "desc")
            });
            continue;
        }
        apply(&mut table.rows, &frame);
        if frame["op"] == "snapshot" && frame["complete"] != true {
            continue;
        }
        let (width, height) = terminal_size(terminal);
        let lines = table.render(
            &options.view,
            options.columns.as_deref(),
            width,
            height.map(|h| h.saturating_sub(1)),
        );
        if terminal {
            // Clear the screen and redraw in place.
            write!(out, "\x1b[2J\x1b[H")?;
        } else {
            writeln!(out)?;
        }
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    anyhow::bail!("the host ended the connection")
}

/// Ends the process quietly (exit 0) once standard output is a pipe whose
/// reader is gone: `vista tail | head -5` must end when `head` does, even
/// when no frame arrives to fail a write.
fn watch_stdout_closed() {
    std::thread::spawn(|| loop {
        let mut fd = libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        if ready > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            std::process::exit(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
}

/// What a refused request was for: it decides the fix an error suggests.
pub enum Refused<'a> {
    /// Subscribing to this view.
    Subscribe(&'a str),
    /// Ingesting into this stream.
    Ingest(&'a str),
    /// An admin route.
    Admin,
}

/// One line for a refusal: the server's code, its message and what to do
/// about it, e.g. `auth-required: this server needs a token; pass --token
/// or set VISTA_TOKEN`. `status` 0 means a socket issue.
pub fn refusal(
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
    what: &Refused<'_>,
) -> String {
    let code = code.unwrap_or(match status {
        401 => "auth-required",
        403 => "forbidden",
        _ => "refused",
    });
    // The host's messages often start with their code already.
    let message = message
        .map(|m| {
            m.strip_prefix(code)
                .map_or(m, |m| m.trim_start_matches(": "))
        })
        .filter(|m| !m.is_empty());
    let credential = match what {
        Refused::Admin => "the host's --admin-token or a JWT with \"admin\": true",
        Refused::Ingest(_) => "an --ingest-token of the host or a JWT with `streams`",
        Refused::Subscribe(_) => "a subscriber JWT",
    };
    let fix = match (code, what) {
        ("auth-required", _) => format!("pass --token ({credential}) or set VISTA_TOKEN"),
        ("token-invalid", _) => format!(
            "the token was not accepted: pass {credential} of this host (`vista token` mints one from its --jwt-secret)"
        ),
        ("token-expired", _) => {
            "mint a fresh token (`vista token`, or POST /auth/token with a publishable key)".into()
        }
        ("forbidden", Refused::Subscribe(view)) => format!(
            "the token's `views` (or `keys`) claim does not cover {view}: use a token minted with --views including it"
        ),
        ("forbidden", Refused::Ingest(stream)) => format!(
            "these credentials may not ingest into {stream:?}: use a token scoped to it"
        ),
        ("forbidden", Refused::Admin) => format!("pass {credential}"),
        ("origin-not-allowed" | "host-not-allowed", _) => {
            "the host's --allowed-origins / --allowed-hosts do not include this client; use a --url with an allowed host name".into()
        }
        ("rate-limit-exceeded" | "connection-limit-exceeded" | "ip-connection-limit-exceeded", _) => {
            "retry in a moment".into()
        }
        ("invalid-filter" | "invalid-message", _) => "check the command's arguments".into(),
        ("subscription-limit-exceeded", _) => "raise the host's --max-subscriptions".into(),
        _ => String::new(),
    };
    let mut line = code.to_owned();
    if let Some(message) = message {
        line.push_str(": ");
        line.push_str(message);
    }
    if !fix.is_empty() {
        line.push_str("; ");
        line.push_str(&fix);
    }
    crate::redact::redact(&line)
}

/// A frame's JSON, gunzipped when it is gzip.
fn decode(bytes: &[u8]) -> anyhow::Result<Value> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut text)?;
        Ok(serde_json::from_slice(&text)?)
    } else {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Applies a frame to the rows the way the published clients do.
fn apply(rows: &mut std::collections::BTreeMap<String, Value>, frame: &Value) {
    let key = frame["key"].as_str().unwrap_or_default().to_owned();
    match frame["op"].as_str().unwrap_or_default() {
        "snapshot" => {
            for entry in frame["data"].as_array().into_iter().flatten() {
                if let Some(key) = entry["key"].as_str() {
                    rows.insert(key.to_owned(), entry["data"].clone());
                }
            }
        }
        "upsert" => {
            rows.insert(key, frame["data"].clone());
        }
        "delete" => {
            rows.remove(&key);
        }
        "patch" => {
            let append: Vec<String> = frame["append"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(data) = frame["data"].as_object() {
                let entity = rows.entry(key).or_insert(json!({}));
                vista_plugin_api::merge_patch(entity, data, &append);
            }
        }
        _ => {}
    }
}

/// `GET path` of an admin route: the response, or the host's refusal as
/// one line with its code and the fix.
async fn admin_get(
    url: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = reqwest::Client::new().get(format!("{url}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|err| unreachable_host(url, "VISTA_URL", &err))?;
    let status = response.status().as_u16();
    if status != 200 {
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::bail!(refusal(
            status,
            answer["error"].as_str(),
            answer["message"].as_str(),
            &Refused::Admin,
        ));
    }
    Ok(response)
}

/// `vista plugins`: the plugin table.
pub async fn plugins(url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let plugins: Vec<Value> = admin_get(url, "/plugins", token).await?.json().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12} {:<22} {:<10} {:<40} {:<34} last error",
        "name", "version", "state", "file", "last event"
    )?;
    for plugin in plugins {
        let text = |field: &str| plugin[field].as_str().unwrap_or("-").to_owned();
        writeln!(
            out,
            "{:<12} {:<22} {:<10} {:<40} {:<34} {}",
            text("name"),
            text("version"),
            text("state"),
            text("file"),
            last_event(&plugin["history"]),
            text("last_error")
        )?;
    }
    Ok(())
}

/// A plugin file's latest history entry, one short phrase: `swapped
/// 1a2b3c4d -> 5e6f7a8b`, `reprojected`, `loaded 5e6f7a8b`, ...
fn last_event(history: &Value) -> String {
    let Some(last) = history.as_array().and_then(|h| h.last()) else {
        return "-".into();
    };
    let short = |field: &str| {
        last[field]
            .as_str()
            .map(|f| f.chars().take(8).collect::<String>())
    };
    let event = last["event"].as_str().unwrap_or("?");
    match (short("from"), short("fingerprint")) {
        (Some(from), Some(to)) => format!("{event} {from} -> {to}"),
        (None, Some(build)) => format!("{event} {build}"),
        _ => event.to_owned(),
    }
}

/// `vista dead-letters`: `GET /admin/dead-letters?format=ndjson`, printed
/// as it comes (or only each letter's `event`).
pub async fn dead_letters(url: &str, token: Option<&str>, events_only: bool) -> anyhow::Result<()> {
    let text = admin_get(url, "/admin/dead-letters?format=ndjson", token)
        .await?
        .text()
        .await?;
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let printed = if events_only {
            let letter: Value = serde_json::from_str(line)?;
            serde_json::to_string(&letter["event"])?
        } else {
            line.to_owned()
        };
        if writeln!(out, "{printed}").is_err() {
            break; // a closed pipe ends the listing
        }
    }
    Ok(())
}

/// The error for a host that could not be reached, its URL masked.
fn unreachable_host(url: &str, variable: &str, err: &reqwest::Error) -> anyhow::Error {
    // reqwest's own text names only the URL; the cause is in its sources.
    let mut causes = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let err = crate::redact::redact(&causes.join(": "));
    anyhow::anyhow!(
        "cannot reach {}: {err}; is `vista serve` running there? pass --url or set {variable}",
        crate::redact::redact(url)
    )
}
