//! `loadgen reference`: issue 20's workload against vista and the
//! reference broadcaster, alternated in one run.
//!
//! The reference broadcaster is a separate program built from its own
//! source (path from `--reference` or `VISTA_REFERENCE`): the smallest fast
//! server that encodes each event once as
//! `{"op":"patch","mode":"list","entity":"Tick/list","key":ID,"data":EVENT}`
//! and sends the same bytes to every subscriber. It has no state, no log
//! and no views, so it is the practical upper bound the issue's goals are
//! ratios of. Vista runs the `ticks` example plugin (`libvista_ticks.so`),
//! whose `Tick/list` frames are the reference's plus `_seq`.
//!
//! Parts (each target started fresh, targets alternated rep by rep so the
//! machine's drift hits all of them):
//!
//! - `fanout`: `--clients` subscribers; events
//!   `{"id":"k<i mod 1000>","t":<send µs>,"v":i}` posted `--batch` per
//!   request, one request in flight, back to back for `--seconds`; frames/s
//!   delivered, host CPU per frame (user+sys of the server and its
//!   children from `/proc`, over the run, divided by frames delivered),
//!   lost frames, RSS per subscribed connection.
//! - `latency`: `--latency-clients` subscribers, `--rate` events/s in
//!   requests of `--batch`: ingest-to-client latency percentiles.
//! - `ingest`: one subscriber, one request in flight, batch 100 and 1,000:
//!   events/s accepted, with ticks and (vista only) the tokens plugin's
//!   `token_created` events.
//! - `memory` (not run unless asked): host and projector-child RSS per
//!   entity with `--entities` tokens held in memory.
//!
//! Vista runs `--in-memory` and durable (`--fsync always`, the default).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    connect, cpu_seconds, now_micros, read_live, rss_kib, subscribe, token_events, Common, Latency,
    Server, Socket, Tally, Target,
};

/// Flags of `loadgen reference`.
#[derive(clap::Args, Clone)]
pub struct ReferenceArgs {
    /// The reference broadcaster's binary (`ideal --bind ADDR`); without
    /// it only vista is measured.
    #[arg(long, env = "VISTA_REFERENCE")]
    reference: Option<PathBuf>,
    /// The vista binary [default: next to this one].
    #[arg(long)]
    vista: Option<PathBuf>,
    /// The ticks plugin [default: libvista_ticks.so next to this binary].
    #[arg(long)]
    ticks_plugin: Option<PathBuf>,
    /// The tokens plugin [default: libvista_tokens.so next to this binary].
    #[arg(long)]
    tokens_plugin: Option<PathBuf>,
    /// `vista serve --isolation`.
    #[arg(long, default_value = "process")]
    isolation: String,
    /// Which parts to run, comma-separated: fanout, latency, ingest, memory.
    #[arg(long, default_value = "fanout,latency,ingest")]
    parts: String,
    /// Which targets, comma-separated: memory, durable, reference.
    #[arg(long, default_value = "memory,durable,reference")]
    targets: String,
    /// Repetitions (targets alternated).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Fan-out subscribers.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds of back-to-back ingest (fan-out) or of paced ingest (latency).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Events per request in fan-out and latency.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Latency subscribers.
    #[arg(long, default_value_t = 100)]
    latency_clients: usize,
    /// Latency: events per second.
    #[arg(long, default_value_t = 2000)]
    rate: usize,
    /// Ingest: events per measurement (after 1,000 warm-up events).
    #[arg(long, default_value_t = 200_000)]
    ingest_events: usize,
    /// Ingest: request sizes, comma-separated.
    #[arg(long, default_value = "100,1000")]
    ingest_batches: String,
    /// Memory: `token_created` entities (distinct mints) to hold.
    #[arg(long, default_value_t = 1_000_000)]
    entities: usize,
    /// Loopback source addresses to spread clients over.
    #[arg(long, default_value_t = 50)]
    source_addrs: usize,
}

/// A server the workload runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Memory,
    Durable,
    Reference,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "vista_memory",
            Kind::Durable => "vista_durable",
            Kind::Reference => "reference",
        }
    }
}

/// Which plugin's events an ingest run posts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Events {
    Ticks,
    Tokens,
}

fn start(args: &ReferenceArgs, kind: Kind, events: Events) -> anyhow::Result<Server> {
    if kind == Kind::Reference {
        let program = args
            .reference
            .clone()
            .context("--reference (or VISTA_REFERENCE) is not set")?;
        return start_reference(program);
    }
    let here = std::env::current_exe()?;
    let bin_dir = here.parent().context("binary directory")?.to_owned();
    let plugin = match events {
        Events::Ticks => args
            .ticks_plugin
            .clone()
            .unwrap_or_else(|| bin_dir.join("libvista_ticks.so")),
        Events::Tokens => args
            .tokens_plugin
            .clone()
            .unwrap_or_else(|| bin_dir.join("libvista_tokens.so")),
    };
    let common = Common {
        clients: 0,
        source_addrs: args.source_addrs,
        batch: args.batch,
        no_baseline: true,
        auth: false,
        vista: args.vista.clone(),
        plugin: Some(plugin),
        isolation: args.isolation.clone(),
    };
    let extra: &[&str] = match kind {
        Kind::Memory => &["--in-memory"],
        _ => &["--fsync", "always"],
    };
    Server::start_with(Target::Vista, &common, extra)
}

/// Starts the reference broadcaster on a free port and waits until it accepts.
fn start_reference(program: PathBuf) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let args: Vec<std::ffi::OsString> = vec!["--bind".into(), addr.clone().into()];
    let started = Instant::now();
    let child = Command::new(&program)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let server = Server {
        child,
        addr: addr.clone(),
        program,
        args,
        start_time: Duration::ZERO,
        data_dir: None,
        _dir: tempfile::tempdir()?,
    };
    while std::net::TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the reference broadcaster did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Subscribes to `Tick/list` (or `Token/list`): vista answers with a
/// snapshot ending `complete:true`, the reference with `subscribed` only.
async fn subscribe_to(ws: &mut Socket, kind: Kind, view: &str) -> anyhow::Result<()> {
    if kind != Kind::Reference {
        subscribe(ws, view).await?;
        return Ok(());
    }
    ws.send(Message::text(
        json!({"type": "subscribe", "view": view}).to_string(),
    ))
    .await?;
    while let Some(message) = ws.next().await {
        let text = match message? {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        };
        if text.contains(r#""op":"subscribed""#) {
            return Ok(());
        }
    }
    anyhow::bail!("connection closed before `subscribed`")
}

async fn open(
    server: &Server,
    kind: Kind,
    n: usize,
    view: &str,
    source_addrs: usize,
) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(n);
    let mut index = 0;
    while index < n {
        let chunk = (n - index).min(256);
        let tasks: Vec<_> = (index..index + chunk)
            .map(|i| {
                let (addr, view) = (server.addr.clone(), view.to_owned());
                tokio::spawn(async move {
                    let mut ws = connect(&addr, i, source_addrs).await?;
                    subscribe_to(&mut ws, kind, &view).await?;
                    anyhow::Ok(ws)
                })
            })
            .collect();
        for task in tasks {
            sockets.push(task.await??);
        }
        index += chunk;
    }
    // The reference registers a client just after its `subscribed` frame.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(sockets)
}

/// `count` ticks from `from` as NDJSON, stamped with the time now.
fn ticks(from: usize, count: usize) -> String {
    let sent = now_micros();
    let mut body = String::with_capacity(count * 40);
    for i in from..from + count {
        body.push_str(&format!(
            "{{\"id\":\"k{}\",\"t\":{sent},\"v\":{i}}}\n",
            i % 1000
        ));
    }
    body
}

async fn post(
    http: &reqwest::Client,
    addr: &str,
    stream: &str,
    body: String,
) -> anyhow::Result<()> {
    let response = http
        .post(format!("http://{addr}/ingest/{stream}"))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "ingest failed: {}",
        response.text().await?
    );
    Ok(())
}

/// Waits until `expected` frames arrived or none arrived for 3 s.
async fn drain(tally: &Tally, expected: u64) {
    let mut last = (tally.frames.load(Ordering::Relaxed), Instant::now());
    while tally.frames.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = tally.frames.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
}

/// Fan-out (`rate: None`, back to back) or latency (`rate`) run.
async fn stream_run(
    args: &ReferenceArgs,
    kind: Kind,
    clients: usize,
    rate: Option<usize>,
) -> anyhow::Result<Value> {
    let server = start(args, kind, Events::Ticks)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_start = rss_kib(server.pid());
    let sockets = open(&server, kind, clients, "Tick/list", args.source_addrs).await?;
    let rss_connected = rss_kib(server.pid());
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let samplers = if rate.is_some() { usize::MAX } else { 10 };
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(read_live(ws, tally.clone(), i < samplers, stop_rx.clone())))
        .collect();
    let http = reqwest::Client::new();
    let run_for = Duration::from_secs_f64(args.seconds);
    let mut ticker = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(args.batch as f64 / r as f64));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < run_for {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        post(&http, &server.addr, "ticks", ticks(sent, args.batch)).await?;
        sent += args.batch;
    }
    let ingest_time = started.elapsed();
    let expected = (sent * clients) as u64;
    drain(&tally, expected).await;
    let deliver_time = started.elapsed();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    stop_tx.send(true)?;
    let mut samples = Vec::new();
    for reader in readers {
        samples.extend(reader.await?);
    }
    let delivered = tally.frames.load(Ordering::Relaxed);
    let latency = Latency::of(samples);
    let report = json!({
        "target": kind.name(),
        "clients": clients,
        "rate": rate,
        "events": sent,
        "ingest_seconds": ingest_time.as_secs_f64(),
        "ingest_events_per_second": sent as f64 / ingest_time.as_secs_f64(),
        "deliver_seconds": deliver_time.as_secs_f64(),
        "expected_frames": expected,
        "delivered_frames": delivered,
        "lost_frames": expected.saturating_sub(delivered),
        "frames_per_second": delivered as f64 / deliver_time.as_secs_f64(),
        "bytes": tally.bytes.load(Ordering::Relaxed),
        "host_cpu_seconds": cpu,
        "host_cpu_us_per_frame": cpu * 1e6 / delivered.max(1) as f64,
        "rss_kib_start": rss_start,
        "rss_kib_connected": rss_connected,
        "rss_kib_per_connection": (rss_connected as f64 - rss_start as f64) / clients.max(1) as f64,
        "disconnects": tally.disconnects.load(Ordering::Relaxed),
        "errors": tally.errors.load(Ordering::Relaxed),
        "latency": latency,
    });
    eprintln!(
        "  {} {}: {} clients, {} events: {:.0} frames/s, {:.3} µs CPU/frame, lost {}, p50 {:.2} p99 {:.2} ms, {:.2} KiB/connection",
        if rate.is_some() { "latency" } else { "fanout" },
        kind.name(),
        clients,
        sent,
        report["frames_per_second"].as_f64().unwrap_or(0.0),
        report["host_cpu_us_per_frame"].as_f64().unwrap_or(0.0),
        report["lost_frames"],
        latency.p50_ms,
        latency.p99_ms,
        report["rss_kib_per_connection"].as_f64().unwrap_or(0.0),
    );
    Ok(report)
}

/// One subscriber, one request of `batch` in flight: events/s accepted.
async fn ingest_run(
    args: &ReferenceArgs,
    kind: Kind,
    events: Events,
    batch: usize,
) -> anyhow::Result<Value> {
    let server = start(args, kind, events)?;
    let (stream, view) = match events {
        Events::Ticks => ("ticks", "Tick/list"),
        Events::Tokens => ("tokens", "Token/list"),
    };
    let body = |from: usize, count: usize| match events {
        Events::Ticks => ticks(from, count),
        Events::Tokens => token_events(from, count, 1000, false),
    };
    let sockets = open(&server, kind, 1, view, 1).await?;
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(read_live(ws, tally.clone(), false, stop_rx.clone())))
        .collect();
    let http = reqwest::Client::new();
    // Warm-up, not measured: the 1,000 keys are created.
    let warmup = 1000;
    for from in (0..warmup).step_by(batch.min(warmup)) {
        post(
            &http,
            &server.addr,
            stream,
            body(from, batch.min(warmup - from)),
        )
        .await?;
    }
    let bodies: Vec<String> = (warmup..warmup + args.ingest_events)
        .step_by(batch)
        .map(|from| body(from, batch.min(warmup + args.ingest_events - from)))
        .collect();
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    for b in bodies {
        post(&http, &server.addr, stream, b).await?;
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    let expected = (warmup + args.ingest_events) as u64;
    drain(&tally, expected).await;
    stop_tx.send(true)?;
    for reader in readers {
        reader.await?;
    }
    let delivered = tally.frames.load(Ordering::Relaxed);
    let rate = args.ingest_events as f64 / wall.as_secs_f64();
    let name = match events {
        Events::Ticks => "ticks",
        Events::Tokens => "token_created",
    };
    eprintln!(
        "  ingest {} {name} batch {batch}: {rate:.0} events/s, {:.2} µs CPU/event, lost {}",
        kind.name(),
        cpu * 1e6 / args.ingest_events as f64,
        expected.saturating_sub(delivered)
    );
    Ok(json!({
        "target": kind.name(),
        "events_kind": name,
        "batch": batch,
        "events": args.ingest_events,
        "seconds": wall.as_secs_f64(),
        "events_per_second": rate,
        "host_cpu_us_per_event": cpu * 1e6 / args.ingest_events as f64,
        "expected_frames": expected,
        "delivered_frames": delivered,
        "lost_frames": expected.saturating_sub(delivered),
    }))
}

/// Resident memory of the children of `pid` (projector processes), KiB.
fn children_rss_kib(pid: u32) -> u64 {
    let mut sum = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(child) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(1);
        if ppid == Some(pid.to_string().as_str()) {
            sum += rss_kib(child.parse().unwrap_or(0));
        }
    }
    sum
}

/// Memory per entity: vista in memory holding `--entities` tokens (one
/// `token_created` each, distinct mints), no subscriber; RSS of the host
/// and of its projector children before and after, per entity.
async fn memory_run(args: &ReferenceArgs) -> anyhow::Result<Value> {
    let server = start(args, Kind::Memory, Events::Tokens)?;
    let http = reqwest::Client::new();
    // One small request first, so the plugin's projector is running.
    post(
        &http,
        &server.addr,
        "tokens",
        token_events(0, 1, usize::MAX, false),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (host0, children0) = (rss_kib(server.pid()), children_rss_kib(server.pid()));
    let mut from = 1;
    while from <= args.entities {
        let count = 10_000.min(args.entities + 1 - from);
        post(
            &http,
            &server.addr,
            "tokens",
            token_events(from, count, usize::MAX, false),
        )
        .await?;
        from += count;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (host1, children1) = (rss_kib(server.pid()), children_rss_kib(server.pid()));
    let per =
        |before: u64, after: u64| (after as f64 - before as f64) * 1024.0 / args.entities as f64;
    let report = json!({
        "entities": args.entities,
        "host_rss_kib_before": host0, "host_rss_kib_after": host1,
        "children_rss_kib_before": children0, "children_rss_kib_after": children1,
        "host_bytes_per_entity": per(host0, host1),
        "children_bytes_per_entity": per(children0, children1),
    });
    eprintln!(
        "  memory vista_memory: {} token entities: host {:.0} B/entity, projector children {:.0} B/entity",
        args.entities, report["host_bytes_per_entity"].as_f64().unwrap_or(0.0),
        report["children_bytes_per_entity"].as_f64().unwrap_or(0.0)
    );
    Ok(report)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `field` (a JSON pointer) over `runs` of `target` matching `pick`.
fn median_of(runs: &[Value], target: &str, field: &str, pick: impl Fn(&Value) -> bool) -> f64 {
    median(
        runs.iter()
            .filter(|r| r["target"] == target && pick(r))
            .filter_map(|r| r.pointer(field)?.as_f64())
            .collect(),
    )
}

/// Runs the parts, alternating targets rep by rep; returns every run, the
/// medians, the ratios to the reference and the goals.
pub async fn run(args: &ReferenceArgs) -> anyhow::Result<Value> {
    let mut kinds = Vec::new();
    for name in args.targets.split(',') {
        kinds.push(match name.trim() {
            "memory" => Kind::Memory,
            "durable" => Kind::Durable,
            "reference" if args.reference.is_some() => Kind::Reference,
            "reference" => {
                eprintln!("no --reference / VISTA_REFERENCE: vista only");
                continue;
            }
            other => anyhow::bail!("unknown target {other}"),
        });
    }
    let parts: Vec<&str> = args.parts.split(',').map(str::trim).collect();
    let batches: Vec<usize> = args
        .ingest_batches
        .split(',')
        .map(|b| b.trim().parse())
        .collect::<Result<_, _>>()?;
    let (mut fanout, mut latency, mut ingest) = (Vec::new(), Vec::new(), Vec::new());
    let mut memory = Vec::new();
    if parts.contains(&"memory") {
        for _ in 0..args.reps {
            memory.push(memory_run(args).await?);
        }
    }
    for rep in 0..args.reps {
        let mut order = kinds.clone();
        if rep % 2 == 1 {
            order.reverse();
        }
        eprintln!("rep {}: {:?}", rep + 1, order);
        for &kind in &order {
            if parts.contains(&"fanout") {
                fanout.push(stream_run(args, kind, args.clients, None).await?);
            }
            if parts.contains(&"latency") {
                latency.push(stream_run(args, kind, args.latency_clients, Some(args.rate)).await?);
            }
            if parts.contains(&"ingest") {
                for &batch in &batches {
                    ingest.push(ingest_run(args, kind, Events::Ticks, batch).await?);
                    if kind != Kind::Reference {
                        ingest.push(ingest_run(args, kind, Events::Tokens, batch).await?);
                    }
                }
            }
        }
    }
    let all = |_: &Value| true;
    let mut medians = serde_json::Map::new();
    for kind in &kinds {
        let t = kind.name();
        let mut m = json!({
            "fanout_frames_per_second": median_of(&fanout, t, "/frames_per_second", all),
            "fanout_host_cpu_us_per_frame": median_of(&fanout, t, "/host_cpu_us_per_frame", all),
            "fanout_rss_kib_per_connection": median_of(&fanout, t, "/rss_kib_per_connection", all),
            "latency_p50_ms": median_of(&latency, t, "/latency/p50_ms", all),
            "latency_p99_ms": median_of(&latency, t, "/latency/p99_ms", all),
        });
        for &batch in &batches {
            for events in ["ticks", "token_created"] {
                m[format!("ingest_{events}_batch_{batch}_events_per_second")] =
                    json!(median_of(&ingest, t, "/events_per_second", |r| r["batch"]
                        == batch
                        && r["events_kind"] == events));
            }
        }
        medians.insert(t.to_owned(), m);
    }
    let lost: u64 = fanout
        .iter()
        .chain(&latency)
        .chain(&ingest)
        .filter_map(|r| r["lost_frames"].as_u64())
        .sum();
    let mut ratios = serde_json::Map::new();
    let mut goals = serde_json::Map::new();
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for vista in ["vista_memory", "vista_durable"] {
        let (Some(v), Some(r)) = (medians.get(vista), medians.get("reference")) else {
            continue;
        };
        let ratio = |f: &str| num(&v[f]) / num(&r[f]);
        let cpu = ratio("fanout_host_cpu_us_per_frame");
        let fps = ratio("fanout_frames_per_second");
        let p99 = ratio("latency_p99_ms");
        ratios.insert(
            vista.to_owned(),
            json!({"fanout_host_cpu_per_frame": cpu, "fanout_frames_per_second": fps, "latency_p99": p99}),
        );
        eprintln!("{vista}/reference: CPU/frame {cpu:.2}x (goal <= 1.15), frames/s {fps:.2}x (goal >= 0.85), p99 {p99:.2}x (goal <= 1.3)");
        goals.insert(
            vista.to_owned(),
            json!({
                "fanout_cpu_per_frame_le_1_15x": cpu <= 1.15,
                "fanout_frames_per_second_ge_0_85x": fps >= 0.85,
                "latency_p99_le_1_3x": p99 <= 1.3,
            }),
        );
    }
    for (vista, needs) in [
        ("vista_memory", [(1000, 500e3), (100, 300e3)]),
        ("vista_durable", [(1000, 400e3), (0, 0.0)]),
    ] {
        let Some(v) = medians.get(vista) else {
            continue;
        };
        for (batch, goal) in needs.into_iter().filter(|(b, _)| batches.contains(b)) {
            let got = num(&v[format!("ingest_ticks_batch_{batch}_events_per_second")]);
            let tokens = num(&v[format!("ingest_token_created_batch_{batch}_events_per_second")]);
            eprintln!("{vista} ingest batch {batch}: ticks {got:.0}, token_created {tokens:.0} events/s (goal >= {goal:.0})");
            goals.entry(vista.to_owned()).or_insert_with(|| json!({}))
                [format!("ingest_batch_{batch}_ge_{goal}")] = json!(got >= goal && tokens >= goal);
        }
    }
    for (target, m) in &medians {
        eprintln!(
            "median {target}: {}",
            Value::Object(m.as_object().cloned().unwrap_or_default())
        );
    }
    eprintln!("frames lost over every run: {lost}");
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split(':').nth(1)?.trim().to_owned())
        })
        .unwrap_or_default();
    Ok(json!({
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu": cpu_model,
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        },
        "settings": {
            "clients": args.clients, "seconds": args.seconds, "batch": args.batch,
            "latency_clients": args.latency_clients, "rate": args.rate,
            "ingest_events": args.ingest_events, "ingest_batches": batches,
            "isolation": args.isolation, "reps": args.reps,
        },
        "lost_frames": lost,
        "medians": medians,
        "ratios_to_reference": ratios,
        "goals": goals,
        "runs": {"fanout": fanout, "latency": latency, "ingest": ingest, "memory": memory},
    }))
}
