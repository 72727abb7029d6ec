//! Command-line clients of a running host: `vista ingest`, `vista tail` and
//! `vista plugins`. They talk to the host exactly as any client does (HTTP
//! ingest, the WebSocket protocol, `GET /plugins`), so they double as
//! working examples of the protocol.

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
        let response = request.send().await.context("posting to the host")?;
        if response.status() != 200 {
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            bar.abandon();
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

/// `vista tail`: subscribes to a view and prints what arrives: one JSON
/// frame per line with `--json`, otherwise the view's rows, redrawn in place
/// on a terminal after each frame.
pub async fn tail(
    url: &str,
    view: &str,
    key: Option<&str>,
    json_lines: bool,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let url = match token {
        Some(token) => format!("{url}/?hs_token={token}"),
        None => url.to_owned(),
    };
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut subscribe = json!({"type": "subscribe", "view": view});
    if let Some(key) = key {
        subscribe["key"] = json!(key);
    }
    socket.send(Message::text(subscribe.to_string())).await?;
    let mut rows: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    let mut out = std::io::stdout().lock();
    while let Some(message) = socket.next().await {
        let frame: Value = match message? {
            Message::Text(text) => serde_json::from_str(text.as_str())?,
            Message::Binary(bytes) => decode(&bytes)?,
            Message::Close(close) => {
                eprintln!("closed by the host: {close:?}");
                break;
            }
            _ => continue,
        };
        if json_lines {
            writeln!(out, "{frame}")?;
            out.flush()?;
            continue;
        }
        apply(&mut rows, &frame);
        // Clear the screen and redraw the table.
        writeln!(out, "\x1b[2J\x1b[H{view}: {} rows", rows.len())?;
        for (key, entity) in &rows {
            let seq = entity["_seq"].as_str().unwrap_or("");
            writeln!(out, "{seq}  {key}  {entity}")?;
        }
        if frame["type"] == "error" {
            writeln!(out, "issue: {frame}")?;
        }
        out.flush()?;
    }
    Ok(())
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

/// `vista plugins`: the plugin table.
pub async fn plugins(url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let mut request = reqwest::Client::new().get(format!("{url}/plugins"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.context("asking the host")?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /plugins: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let plugins: Vec<Value> = response.json().await?;
    println!(
        "{:<12} {:<22} {:<10} {:<40} last error",
        "name", "version", "state", "file"
    );
    for plugin in plugins {
        let text = |field: &str| plugin[field].as_str().unwrap_or("-").to_owned();
        println!(
            "{:<12} {:<22} {:<10} {:<40} {}",
            text("name"),
            text("version"),
            text("state"),
            text("file"),
            text("last_error")
        );
    }
    Ok(())
}

/// `vista dead-letters`: `GET /admin/dead-letters?format=ndjson`, printed
/// as it comes (or only each letter's `event`).
pub async fn dead_letters(url: &str, token: Option<&str>, events_only: bool) -> anyhow::Result<()> {
    let mut request = reqwest::Client::new().get(format!("{url}/admin/dead-letters?format=ndjson"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.context("asking the host")?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(status == 200, "GET /admin/dead-letters: {status} {text}");
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
