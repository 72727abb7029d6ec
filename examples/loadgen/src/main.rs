//! Load generator for Vista: fan-out, latency, idle connections and big
//! snapshots, each measured against the real `vista` host and, in the same
//! run, against a baseline broadcaster (see `baseline.rs`).
//!
//! Run with (after `cargo build --release -p vista-host -p vista-tokens -p example-loadgen`):
//!
//! ```text
//! target/release/loadgen fanout   --clients 1000 --events 20000
//! target/release/loadgen latency  --clients 100 --rate 2000 --seconds 10
//! target/release/loadgen idle     --clients 15000
//! target/release/loadgen snapshot --entities 100000 --clients 100
//! target/release/loadgen ingest   --events 20000
//! target/release/loadgen durable  --batch 100
//! target/release/loadgen cluster  --clients 15000 --hosts 3
//! target/release/loadgen reference --reference PATH   # issue 20; see reference.rs
//! ```
//!
//! `ingest` measures the host alone: the cost per event of requests of 10
//! to 10,000 events, all on one key (trades on one token, which read and
//! append to it) or on spread keys (token creations), and one request of
//! 4,000 trades on a fresh token.
//!
//! `durable` measures the event log: ingest throughput and per-request
//! latency with 16 concurrent posters `--in-memory`, with `--fsync always`
//! and with `--fsync every:5`; disk bytes per logged event; and the time
//! from spawn to the listening line when a host holding 1,000,000 logged
//! events is killed (SIGKILL) and started again, without a checkpoint and
//! with a recent one. Vista hosts started by this tool keep their log in
//! their temporary directory unless a scenario says `--in-memory`.
//!
//! The tool starts the servers itself (so it knows their pids and can read
//! their CPU time and resident memory from `/proc`), opens the WebSocket
//! clients from several loopback source addresses (127.0.0.2, .3, ...: past
//! the ~28k ephemeral ports of one address), subscribes them to
//! `Token/list`, ingests `token_created` events through `POST
//! /ingest/tokens` and counts what every client receives. Each event
//! carries its send time (microseconds since the epoch) in its `symbol`,
//! which arrives in the `patch` frame: that is the ingest->client latency.
//! The report is JSON on stdout; a summary goes to stderr.

mod baseline;
mod cluster;
mod reference;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(about = "Vista load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// WebSocket clients to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Loopback source addresses to spread clients over (127.0.0.2...).
    #[arg(long, default_value_t = 50)]
    source_addrs: usize,
    /// Events per ingest request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Skip the baseline broadcaster.
    #[arg(long)]
    no_baseline: bool,
    /// Run vista with authentication on: every client connects with a JWT
    /// (`hs_token`), every ingest request carries an ingest token.
    #[arg(long)]
    auth: bool,
    /// The vista binary [default: next to this one].
    #[arg(long)]
    vista: Option<PathBuf>,
    /// The tokens plugin [default: libvista_tokens.so next to this binary].
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// `vista serve --isolation`: `process` (projectors in child processes,
    /// whose CPU counts as the host's), `thread`, or `default` (the flag
    /// not passed: for a host built before it existed).
    #[arg(long, default_value = "process")]
    isolation: String,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every client subscribed to Token/list; ingest `--events` as fast as accepted.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Events to ingest.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
    },
    /// Ingest at a fixed rate and report ingest->client latency.
    Latency {
        #[command(flatten)]
        common: Common,
        /// Events per second.
        #[arg(long, default_value_t = 2000)]
        rate: usize,
        /// Duration of the ingest phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Hold many subscribed idle connections; report memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// Time from subscribe to `complete:true` for a large view, for one client then `--clients` at once.
    Snapshot {
        #[command(flatten)]
        common: Common,
        /// Entities in the view.
        #[arg(long, default_value_t = 100_000)]
        entities: usize,
    },
    /// Per-event ingest cost by request size, same key and spread keys.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Events per request size (at least one request each).
        #[arg(long, default_value_t = 20_000)]
        events: usize,
    },
    /// Durable state: ingest in memory vs with the fsynced event log, disk
    /// bytes per event, restart time with and without a recent checkpoint.
    Durable {
        #[command(flatten)]
        common: Common,
        /// Events per ingest measurement.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Concurrent posters.
        #[arg(long, default_value_t = 16)]
        posters: usize,
        /// Events logged before each restart.
        #[arg(long, default_value_t = 1_000_000)]
        restart_events: usize,
    },
    /// Hosts sharing a NATS JetStream stream (`nats-server` on PATH): fan-out
    /// with `--clients` per host against one host holding as many, ingest
    /// latency added by the JetStream round trip, events/s through the cluster.
    Cluster {
        #[command(flatten)]
        common: Common,
        /// Cluster members.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Events ingested through the first host during fan-out.
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// One-event requests, one after another, for the latency figures.
        #[arg(long, default_value_t = 2000)]
        latency_requests: usize,
        /// Events posted for the throughput figure.
        #[arg(long, default_value_t = 200_000)]
        throughput_events: usize,
        /// Concurrent posters for the throughput figure.
        #[arg(long, default_value_t = 16)]
        posters: usize,
    },
    /// (internal) Hold `--clients` subscribed clients of one host for `cluster`.
    Clients {
        #[command(flatten)]
        common: Common,
        /// The host.
        #[arg(long)]
        addr: String,
        /// Frames to wait for in total.
        #[arg(long)]
        expect: u64,
    },
    /// Issue 20's workload (1,000 `Tick/list` subscribers, 10 events per
    /// request back to back; latency at 2,000 events/s; ingest at batch 100
    /// and 1,000) against vista in memory, vista durable and the reference
    /// broadcaster (`--reference` / `VISTA_REFERENCE`), alternated.
    Reference {
        #[command(flatten)]
        args: reference::ReferenceArgs,
    },
    /// (internal) Run the baseline broadcaster.
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

/// Which server a run targets.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
enum Target {
    Vista,
    Baseline,
}

/// A server process started by the tool.
struct Server {
    child: Child,
    addr: String,
    /// How it was started, to start it again ([`Server::restart`]).
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// Time from spawn to the listening line.
    start_time: Duration,
    /// The event log's directory (a durable vista).
    data_dir: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(target: Target, common: &Common) -> anyhow::Result<Server> {
        Server::start_with(target, common, &[])
    }

    /// Starts a server; `extra_args` go to `vista serve`. Unless they say
    /// `--in-memory` or `--data`, vista keeps its event log in `data` in the
    /// server's temporary directory.
    fn start_with(target: Target, common: &Common, extra_args: &[&str]) -> anyhow::Result<Server> {
        let here = std::env::current_exe()?;
        let bin_dir = here.parent().context("binary directory")?.to_owned();
        let dir = tempfile::tempdir()?;
        let mut data_dir = None;
        let (program, args) = match target {
            Target::Vista => {
                let vista = common
                    .vista
                    .clone()
                    .unwrap_or_else(|| bin_dir.join("vista"));
                let plugin = common
                    .plugin
                    .clone()
                    .unwrap_or_else(|| bin_dir.join("libvista_tokens.so"));
                let plugins = dir.path().join("plugins");
                std::fs::create_dir_all(&plugins)?;
                // `libvista_ticks.so` is installed as `ticks.so`, and so on.
                let stem = plugin
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("tokens");
                let name = stem.trim_start_matches("lib").trim_start_matches("vista_");
                std::fs::copy(&plugin, plugins.join(format!("{name}.so")))
                    .with_context(|| format!("copy {}", plugin.display()))?;
                let mut args: Vec<std::ffi::OsString> = vec![
                    "serve".into(),
                    "--plugins".into(),
                    plugins.into(),
                    "--cache-dir".into(),
                    dir.path().join("cache").into(),
                ];
                for arg in ["--listen", "127.0.0.1:0", "--max-body-bytes", "67108864"] {
                    args.push(arg.into());
                }
                if !extra_args
                    .iter()
                    .any(|a| *a == "--in-memory" || *a == "--data")
                {
                    let data = dir.path().join("data");
                    args.push("--data".into());
                    args.push(data.clone().into());
                    data_dir = Some(data);
                }
                args.extend(extra_args.iter().map(Into::into));
                if common.isolation != "default" {
                    args.push("--isolation".into());
                    args.push(common.isolation.clone().into());
                }
                if common.auth {
                    for arg in [
                        "--jwt-secret",
                        AUTH_SECRET,
                        "--ingest-token",
                        AUTH_INGEST_TOKEN,
                    ] {
                        args.push(arg.into());
                    }
                }
                (vista, args)
            }
            Target::Baseline => (
                here,
                ["baseline-server", "--listen", "127.0.0.1:0"]
                    .iter()
                    .map(Into::into)
                    .collect(),
            ),
        };
        let (child, addr, start_time) = spawn_listening(&program, &args)?;
        Ok(Server {
            child,
            addr,
            program,
            args,
            start_time,
            data_dir,
            _dir: dir,
        })
    }

    /// Kills the process (SIGKILL) and starts it again with the same
    /// arguments (so on the same data directory); returns the time from
    /// spawn to its listening line.
    fn restart(&mut self) -> anyhow::Result<Duration> {
        let _ = self.child.kill();
        self.child.wait()?;
        let (child, addr, start_time) = spawn_listening(&self.program, &self.args)?;
        self.child = child;
        self.addr = addr;
        self.start_time = start_time;
        Ok(start_time)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Spawns a server and waits for its `... listening on ADDR` line; returns
/// the child, ADDR and the time from spawn to that line.
fn spawn_listening(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
) -> anyhow::Result<(Child, String, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )?;
    let start_time = started.elapsed();
    if !line.contains("listening on ") {
        let _ = child.kill();
        let status = child.wait()?;
        anyhow::bail!(
            "{} did not start ({status}); stdout: {line:?}",
            program.display()
        );
    }
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .context("listening line")?
        .to_owned();
    Ok((child, addr, start_time))
}

/// user+system CPU seconds of a process.
/// CPU time (user + system) of the process `pid` and of its children: a
/// host's projector processes work for it, so their time is the host's
/// (live children read from their own `stat`, reaped ones from the
/// parent's `cutime`/`cstime`).
fn cpu_seconds(pid: u32) -> f64 {
    let fields_of = |pid: &str| -> Vec<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit(')').next().unwrap_or_default();
        // Field 4 (ppid) is at 1 after the name; 14-17 (utime, stime,
        // cutime, cstime) at 11-14.
        after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect()
    };
    let own = fields_of(&pid.to_string());
    let field = |fields: &[u64], i: usize| fields.get(i).copied().unwrap_or(0);
    let mut ticks = (11..=14).map(|i| field(&own, i)).sum::<u64>();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(child) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let fields = fields_of(child);
            if field(&fields, 1) == u64::from(pid) {
                ticks += field(&fields, 11) + field(&fields, 12);
            }
        }
    }
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Counters shared by every client task.
#[derive(Default)]
struct Tally {
    frames: AtomicU64,
    bytes: AtomicU64,
    disconnects: AtomicU64,
    errors: AtomicU64,
}

type Socket = WebSocketStream<TcpStream>;

async fn connect(addr: &str, index: usize, source_addrs: usize) -> anyhow::Result<Socket> {
    let source =
        std::net::SocketAddr::from(([127, 0, 0, 2 + (index % source_addrs.max(1)) as u8], 0));
    let socket = TcpSocket::new_v4()?;
    socket.bind(source)?;
    let stream = socket.connect(addr.parse()?).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0);
    let url = match CLIENT_TOKEN.get() {
        Some(token) => format!("ws://{addr}/?hs_token={token}"),
        None => format!("ws://{addr}/"),
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// `--auth`: the secret vista verifies client tokens with, and the ingest token.
const AUTH_SECRET: &str = "loadgen-secret-0123456789";
const AUTH_INGEST_TOKEN: &str = "loadgen-ingest-token";
/// `--auth`: the token every client connects with.
static CLIENT_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn enable_auth() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "loadgen", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET.as_bytes()),
    )
    .expect("sign the client token");
    let _ = CLIENT_TOKEN.set(token);
}

/// The parts of a frame the tool looks at; entity data is skipped unparsed.
#[derive(serde::Deserialize)]
struct FrameHead {
    op: String,
    #[serde(default)]
    data: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    complete: bool,
}

/// Subscribes and waits for `complete:true`; returns the entities received.
async fn subscribe(ws: &mut Socket, view: &str) -> anyhow::Result<usize> {
    ws.send(Message::text(
        json!({"type": "subscribe", "view": view}).to_string(),
    ))
    .await?;
    let mut entities = 0;
    while let Some(message) = ws.next().await {
        let bytes = match message? {
            Message::Binary(b) => b,
            Message::Text(t) => bytes::Bytes::from(t.as_str().to_owned()),
            _ => continue,
        };
        let head: FrameHead = match bytes.first() {
            Some(0x1f) => serde_json::from_reader(flate2::read::GzDecoder::new(&bytes[..]))?,
            _ => serde_json::from_slice(&bytes)?,
        };
        if head.op == "snapshot" {
            entities += head.data.map_or(0, |d| d.len());
            if head.complete {
                return Ok(entities);
            }
        }
    }
    anyhow::bail!("connection closed during the snapshot")
}

/// Subscribes and waits for `complete:true`, decoding only the head of each
/// frame (the host writes `complete` before `data`): measures how fast the
/// host delivers a snapshot rather than how fast this tool parses it.
/// Returns the number of snapshot batches.
async fn subscribe_head_only(ws: &mut Socket, view: &str) -> anyhow::Result<usize> {
    use std::io::Read;
    ws.send(Message::text(
        json!({"type": "subscribe", "view": view}).to_string(),
    ))
    .await?;
    let mut batches = 0;
    while let Some(message) = ws.next().await {
        let Message::Binary(bytes) = message? else {
            continue;
        };
        let mut head = [0u8; 160];
        let len = if bytes.first() == Some(&0x1f) {
            let mut decoder = flate2::read::GzDecoder::new(&bytes[..]);
            let mut filled = 0;
            while filled < head.len() {
                match decoder.read(&mut head[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            filled
        } else {
            let n = bytes.len().min(head.len());
            head[..n].copy_from_slice(&bytes[..n]);
            n
        };
        let head = &head[..len];
        let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
        if has(br#""op":"snapshot""#) {
            batches += 1;
            if has(br#""complete":true"#) {
                return Ok(batches);
            }
        }
    }
    anyhow::bail!("connection closed during the snapshot")
}

/// Extracts the send time carried in `"symbol":"T<micros>"` (token
/// events) or `"t":<micros>` (the `reference` scenario's ticks).
fn sent_micros(frame: &[u8]) -> Option<u64> {
    let find = |needle: &[u8]| {
        frame
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|at| at + needle.len())
    };
    let at = find(br#""symbol":"T"#).or_else(|| find(br#""t":"#))?;
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Reads live frames until told to stop; returns latency samples (µs).
async fn read_live(
    mut ws: Socket,
    tally: Arc<Tally>,
    sample: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<u32> {
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    tally.frames.fetch_add(1, Ordering::Relaxed);
                    tally.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if sample {
                        if let Some(sent) = sent_micros(&bytes) {
                            samples.push(now_micros().saturating_sub(sent) as u32);
                        }
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("socket issue: {}", text.as_str());
                }
                Some(Ok(Message::Close(_))) | None => { tally.disconnects.fetch_add(1, Ordering::Relaxed); return samples; }
                Some(Ok(_)) => {}
                Some(Err(_)) => { tally.disconnects.fetch_add(1, Ordering::Relaxed); return samples; }
            },
            _ = stop.changed() => return samples,
        }
    }
}

/// Connects and subscribes `n` clients, 256 at a time.
async fn open_clients(
    addr: &str,
    n: usize,
    common: &Common,
) -> anyhow::Result<(Vec<Socket>, Duration)> {
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    let mut index = 0;
    while index < n {
        let chunk = (n - index).min(256);
        let mut pending = Vec::with_capacity(chunk);
        for i in index..index + chunk {
            let addr = addr.to_owned();
            let source_addrs = common.source_addrs;
            pending.push(tokio::spawn(async move {
                let mut ws = connect(&addr, i, source_addrs).await?;
                subscribe(&mut ws, "Token/list").await?;
                anyhow::Ok(ws)
            }));
        }
        for task in pending {
            sockets.push(task.await??);
        }
        index += chunk;
    }
    Ok((sockets, started.elapsed()))
}

fn token_events(from: usize, count: usize, mints: usize, stamp: bool) -> String {
    let mut body = String::with_capacity(count * 110);
    let sent = now_micros();
    for i in from..from + count {
        let symbol = if stamp {
            format!("T{sent}")
        } else {
            format!("S{i}")
        };
        body.push_str(&format!(
            "{{\"type\":\"token_created\",\"mint\":\"m{:06}\",\"symbol\":\"{symbol}\",\"decimals\":6,\"supply\":{i}}}\n",
            i % mints
        ));
    }
    body
}

async fn ingest(http: &reqwest::Client, addr: &str, body: String) -> anyhow::Result<()> {
    let mut request = http.post(format!("http://{addr}/ingest/tokens")).body(body);
    if CLIENT_TOKEN.get().is_some() {
        request = request.bearer_auth(AUTH_INGEST_TOKEN);
    }
    let response = request.send().await?;
    anyhow::ensure!(
        response.status() == 200,
        "ingest failed: {}",
        response.text().await?
    );
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

#[derive(Serialize, Debug, Default)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<u32>) -> Latency {
        samples.sort_unstable();
        Latency {
            samples: samples.len(),
            p50_ms: percentile(&samples, 0.5),
            p90_ms: percentile(&samples, 0.9),
            p99_ms: percentile(&samples, 0.99),
            p999_ms: percentile(&samples, 0.999),
            max_ms: samples.last().map_or(0.0, |m| *m as f64 / 1000.0),
        }
    }
}

#[derive(Serialize, Debug)]
struct StreamRun {
    target: Target,
    clients: usize,
    events: usize,
    connect_seconds: f64,
    ingest_seconds: f64,
    ingest_events_per_second: f64,
    deliver_seconds: f64,
    expected_frames: u64,
    delivered_frames: u64,
    lost_frames: u64,
    frames_per_second: f64,
    bytes: u64,
    host_cpu_seconds: f64,
    host_cpu_us_per_frame: f64,
    rss_kib_start: u64,
    rss_kib_connected: u64,
    rss_kib_end: u64,
    rss_kib_per_connection: f64,
    disconnects: u64,
    errors: u64,
    latency: Latency,
}

/// One fan-out or latency run against one target.
async fn stream_run(
    target: Target,
    common: &Common,
    events: usize,
    rate: Option<usize>,
) -> anyhow::Result<StreamRun> {
    let server = Server::start(target, common)?;
    let rss_start = rss_kib(server.pid());
    let (sockets, connect_time) = open_clients(&server.addr, common.clients, common).await?;
    let rss_connected = rss_kib(server.pid());
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Latency: every client samples at a fixed rate; at max rate only 10 do (cheaper).
    let samplers = if rate.is_some() { usize::MAX } else { 10 };
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(read_live(ws, tally.clone(), i < samplers, stop_rx.clone())))
        .collect();

    let http = reqwest::Client::new();
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let mut sent = 0;
    let mut ticker = rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(common.batch as f64 / r as f64)));
    while sent < events {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let count = common.batch.min(events - sent);
        ingest(&http, &server.addr, token_events(sent, count, 1000, true)).await?;
        sent += count;
    }
    let ingest_time = started.elapsed();
    let expected = (events * common.clients) as u64;
    let mut last = (tally.frames.load(Ordering::Relaxed), Instant::now());
    while tally.frames.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = tally.frames.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let deliver_time = started.elapsed();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    let rss_end = rss_kib(server.pid());
    stop_tx.send(true)?;
    let mut samples = Vec::new();
    for reader in readers {
        samples.extend(reader.await?);
    }
    let delivered = tally.frames.load(Ordering::Relaxed);
    Ok(StreamRun {
        target,
        clients: common.clients,
        events,
        connect_seconds: connect_time.as_secs_f64(),
        ingest_seconds: ingest_time.as_secs_f64(),
        ingest_events_per_second: events as f64 / ingest_time.as_secs_f64(),
        deliver_seconds: deliver_time.as_secs_f64(),
        expected_frames: expected,
        delivered_frames: delivered,
        lost_frames: expected.saturating_sub(delivered),
        frames_per_second: delivered as f64 / deliver_time.as_secs_f64(),
        bytes: tally.bytes.load(Ordering::Relaxed),
        host_cpu_seconds: cpu,
        host_cpu_us_per_frame: cpu * 1e6 / delivered.max(1) as f64,
        rss_kib_start: rss_start,
        rss_kib_connected: rss_connected,
        rss_kib_end: rss_end,
        rss_kib_per_connection: (rss_connected as f64 - rss_start as f64)
            / common.clients.max(1) as f64,
        disconnects: tally.disconnects.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        latency: Latency::of(samples),
    })
}

/// Runs the baseline and vista, and reports both plus ratios.
async fn compare(common: &Common, events: usize, rate: Option<usize>) -> anyhow::Result<Value> {
    let vista = stream_run(Target::Vista, common, events, rate).await?;
    summarize(&vista);
    let mut report = json!({"vista": vista});
    if !common.no_baseline {
        let baseline = stream_run(Target::Baseline, common, events, rate).await?;
        summarize(&baseline);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        report["baseline"] = json!(baseline);
        report["ratio_vista_to_baseline"] = json!({
            "host_cpu_per_frame": ratio(vista.host_cpu_us_per_frame, baseline.host_cpu_us_per_frame),
            "frames_per_second": ratio(vista.frames_per_second, baseline.frames_per_second),
            "ingest_events_per_second": ratio(vista.ingest_events_per_second, baseline.ingest_events_per_second),
            "latency_p99": ratio(vista.latency.p99_ms, baseline.latency.p99_ms),
            "rss_connected": ratio(vista.rss_kib_connected as f64, baseline.rss_kib_connected as f64),
        });
        eprintln!(
            "vista/baseline host CPU per delivered frame: {:.3}",
            report["ratio_vista_to_baseline"]["host_cpu_per_frame"]
        );
    }
    Ok(report)
}

/// Trades `from..from+count` on one token, as NDJSON.
fn trade_events(mint: &str, from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| {
            format!("{{\"type\":\"trade\",\"id\":\"t{i}\",\"mint\":\"{mint}\",\"price\":{i},\"amount\":1}}\n")
        })
        .collect()
}

/// Posts `bodies` from `posters` concurrent clients; returns (wall µs,
/// host CPU µs) per event over `events` events.
async fn post_all(
    server: &Server,
    bodies: Vec<String>,
    posters: usize,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let (started, cpu) = (Instant::now(), cpu_seconds(server.pid()));
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let (queue, addr) = (queue.clone(), server.addr.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    return anyhow::Ok(());
                };
                ingest(&http, &addr, body).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let wall = started.elapsed().as_secs_f64() * 1e6 / events as f64;
    let cpu = (cpu_seconds(server.pid()) - cpu) * 1e6 / events as f64;
    Ok((wall, cpu))
}

/// Per-event ingest cost for request sizes 10..10,000, on one key and on
/// spread keys, against one host with no subscribers: wall time with one
/// poster (latency-bound for small requests), wall time with 8 concurrent
/// posters, and host CPU time.
async fn ingest_scaling(common: &Common, events: usize) -> anyhow::Result<Value> {
    let server = Server::start(Target::Vista, common)?;
    let http = reqwest::Client::new();
    let create = |mint: &str| {
        format!("{{\"type\":\"token_created\",\"mint\":\"{mint}\",\"symbol\":\"S\",\"decimals\":0,\"supply\":1}}\n")
    };
    let mut rows = Vec::new();
    let (mut next_id, mut next_mint) = (0, 0);
    for size in [10usize, 100, 1_000, 10_000] {
        let requests = (events / size).max(1);
        let total = requests * size;
        let mut row = json!({"events_per_request": size, "requests": requests});
        for posters in [1usize, 8] {
            // Same key: trades on one token (each reads and appends to it);
            // with several posters, one token per poster.
            let mints: Vec<String> = (0..posters)
                .map(|p| format!("same{size}-{posters}-{p}"))
                .collect();
            for mint in &mints {
                ingest(&http, &server.addr, create(mint)).await?;
            }
            let bodies: Vec<String> = (0..requests)
                .map(|r| {
                    next_id += size;
                    trade_events(&mints[r % posters], next_id - size, size)
                })
                .collect();
            let (same_wall, same_cpu) = post_all(&server, bodies, posters, total).await?;
            // Spread keys: token creations, one key each.
            let bodies: Vec<String> = (0..requests)
                .map(|_| {
                    next_mint += size;
                    token_events(next_mint - size, size, usize::MAX, false)
                })
                .collect();
            let (spread_wall, spread_cpu) = post_all(&server, bodies, posters, total).await?;
            eprintln!(
                "{size:>6} events/request, {posters} poster(s): same key {same_wall:.2} µs/event wall, {same_cpu:.2} host CPU; \
                 spread keys {spread_wall:.2} wall, {spread_cpu:.2} host CPU"
            );
            let tag = if posters == 1 {
                "sequential"
            } else {
                "concurrent"
            };
            row[format!("same_key_{tag}_us_per_event")] = json!(same_wall);
            row[format!("same_key_{tag}_host_cpu_us_per_event")] = json!(same_cpu);
            row[format!("spread_keys_{tag}_us_per_event")] = json!(spread_wall);
            row[format!("spread_keys_{tag}_host_cpu_us_per_event")] = json!(spread_cpu);
        }
        rows.push(row);
    }
    ingest(&http, &server.addr, create("fresh")).await?;
    let started = Instant::now();
    ingest(&http, &server.addr, trade_events("fresh", next_id, 4_000)).await?;
    let four_thousand_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("4,000 trades on one token in one request: {four_thousand_ms:.1} ms");
    let max_over_min = |name: String| {
        let values: Vec<f64> = rows.iter().filter_map(|r| r[&name].as_f64()).collect();
        let max = values.iter().cloned().fold(f64::MIN, f64::max);
        let min = values.iter().cloned().fold(f64::MAX, f64::min);
        max / min
    };
    let mut spreads = serde_json::Map::new();
    for keys in ["same_key", "spread_keys"] {
        for measure in [
            "sequential",
            "concurrent",
            "sequential_host_cpu",
            "concurrent_host_cpu",
        ] {
            let name = format!("{keys}_{measure}_us_per_event");
            spreads.insert(name.clone(), json!(max_over_min(name)));
        }
    }
    eprintln!(
        "max/min per-event cost over request sizes: {}",
        Value::Object(spreads.clone())
    );
    Ok(json!({
        "sizes": rows,
        "max_over_min": spreads,
        "four_thousand_trades_one_request_ms": four_thousand_ms,
    }))
}

/// Posts `bodies` from `posters` concurrent clients, timing each request
/// from send to its 200 answer; returns the wall time, the host's CPU
/// seconds over it and every request's latency in µs.
async fn post_timed(
    server: &Server,
    bodies: Vec<String>,
    posters: usize,
) -> anyhow::Result<(Duration, f64, Vec<u32>)> {
    let (started, cpu) = (Instant::now(), cpu_seconds(server.pid()));
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let (queue, addr) = (queue.clone(), server.addr.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    return anyhow::Ok(latencies);
                };
                let sent = Instant::now();
                ingest(&http, &addr, body).await?;
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    Ok((wall, cpu_seconds(server.pid()) - cpu, latencies))
}

/// `events` `token_created` events over 1,000 mints from event `from`, in
/// requests of `batch`.
fn token_bodies(from: usize, events: usize, batch: usize) -> Vec<String> {
    (from..from + events)
        .step_by(batch.max(1))
        .map(|at| token_events(at, batch.min(from + events - at), 1000, false))
        .collect()
}

/// `GET /status`.
async fn status(http: &reqwest::Client, addr: &str) -> anyhow::Result<Value> {
    let response = http.get(format!("http://{addr}/status")).send().await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /status answered {}",
        response.status()
    );
    Ok(serde_json::from_str(&response.text().await?)?)
}

/// The log writer's commits (transactions) so far and the seconds they
/// took, from `GET /metrics` (`None` when the host shows no such metric).
async fn log_commits(http: &reqwest::Client, addr: &str) -> anyhow::Result<Option<(f64, f64)>> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
    };
    Ok(value("vista_log_commit_seconds_count").zip(value("vista_log_commit_seconds_sum")))
}

/// A number in the `log` object of a `/status` answer.
fn log_field(status: &Value, field: &str) -> anyhow::Result<u64> {
    status["log"][field]
        .as_u64()
        .with_context(|| format!("GET /status has no log.{field}: {status}"))
}

/// Bytes of the files in `dir`: their length and the blocks allocated.
fn dir_bytes(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut sum = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                sum.0 += meta.len();
                sum.1 += meta.blocks() * 512;
            }
        }
    }
    sum
}

/// Ingest throughput and per-request latency of one storage mode.
async fn durable_ingest(
    common: &Common,
    mode: &str,
    args: &[&str],
    events: usize,
    posters: usize,
) -> anyhow::Result<Value> {
    let server = Server::start_with(Target::Vista, common, args)?;
    let http = reqwest::Client::new();
    // Warm-up, not measured: the 1,000 mints are created.
    let warmup = 1000;
    for body in token_bodies(0, warmup, common.batch) {
        ingest(&http, &server.addr, body).await?;
    }
    let bodies = token_bodies(warmup, events, common.batch);
    let requests = bodies.len();
    let body_bytes: usize = bodies.iter().map(String::len).sum();
    let commits_before = log_commits(&http, &server.addr).await?;
    let (wall, cpu, latencies) = post_timed(&server, bodies, posters).await?;
    let commits_after = log_commits(&http, &server.addr).await?;
    let status = status(&http, &server.addr).await?;
    // Group commit: requests per log transaction (one fsync each with
    // `--fsync always`).
    let commits = match (commits_before, commits_after) {
        (Some((n0, s0)), Some((n1, s1))) if n1 > n0 => json!({
            "commits": n1 - n0,
            "requests_per_commit": requests as f64 / (n1 - n0),
            "commit_ms_mean": (s1 - s0) * 1e3 / (n1 - n0),
        }),
        _ => Value::Null,
    };
    let latency = Latency::of(latencies);
    let rate = events as f64 / wall.as_secs_f64();
    eprintln!(
        "{mode}: {events} events in {requests} requests of {} from {posters} posters in {:.2}s = {rate:.0} events/s; \
         host CPU {:.2} µs/event; POST latency p50 {:.2} p99 {:.2} max {:.2} ms; storage {}",
        common.batch,
        wall.as_secs_f64(),
        cpu * 1e6 / events as f64,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        status["storage"]
    );
    let mut report = json!({
        "mode": mode,
        "args": args,
        "events": events,
        "warmup_events": warmup,
        "requests": requests,
        "posters": posters,
        "seconds": wall.as_secs_f64(),
        "events_per_second": rate,
        "host_cpu_us_per_event": cpu * 1e6 / events as f64,
        "body_bytes_per_event": body_bytes as f64 / events as f64,
        "latency": latency,
        "status": status,
        "log_commits": commits,
    });
    if let Some(dir) = &server.data_dir {
        if commits.is_null() {
            eprintln!("{mode}: GET /metrics shows no vista_log_commit_seconds count");
        } else {
            eprintln!("{mode}: log commits {commits}");
        }
        let logged = (events + warmup) as u64;
        let disk = log_field(&status, "disk_bytes")?;
        let (len, allocated) = dir_bytes(dir);
        report["disk"] = json!({
            "events_logged": logged,
            "records": log_field(&status, "records")?,
            "disk_bytes": disk,
            "disk_bytes_per_event": disk as f64 / logged as f64,
            "data_dir_file_bytes": len,
            "data_dir_allocated_bytes": allocated,
        });
    }
    Ok(report)
}

/// Restart time of a durable host holding `events` logged events: ingest,
/// SIGKILL, start again on the same data directory (three times).
/// `recent_checkpoint`: first wait until a checkpoint covers all but the
/// last ~1,000 records (ingesting a few more batches if none comes).
async fn durable_restart(
    common: &Common,
    case: &str,
    args: &[&str],
    events: usize,
    posters: usize,
    recent_checkpoint: bool,
) -> anyhow::Result<Value> {
    let mut server = Server::start_with(Target::Vista, common, args)?;
    let empty_start = server.start_time.as_secs_f64();
    let http = reqwest::Client::new();
    let (wall, _, _) = post_timed(&server, token_bodies(0, events, common.batch), posters).await?;
    let ingest_rate = events as f64 / wall.as_secs_f64();
    let mut extra_events = 0;
    let mut checkpoint_wait = None;
    if recent_checkpoint {
        // The log writer writes a checkpoint after the request that
        // triggers it is answered: wait until one covers all but the last
        // ~1,000 records and no newer one has appeared for 2 s.
        let started = Instant::now();
        let ingested = Instant::now();
        let mut seen = (0, Instant::now());
        loop {
            let status = status(&http, &server.addr).await?;
            let (last, checkpoint) = (
                log_field(&status, "last_rec")?,
                log_field(&status, "checkpoint_rec")?,
            );
            if checkpoint != seen.0 {
                seen = (checkpoint, Instant::now());
            }
            let recent = checkpoint > 0 && last - checkpoint <= 1000;
            if recent && seen.1.elapsed() >= Duration::from_secs(2) {
                checkpoint_wait = Some(started.elapsed().as_secs_f64());
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "{case}: no checkpoint within 1,000 records of the end after 60 s: {status}"
                );
                break;
            }
            if !recent && ingested.elapsed() > Duration::from_secs(5) {
                // The last checkpoint is older (none came within 5 s of
                // the last request): a few more batches, every poll, until
                // one does.
                for body in token_bodies(events + extra_events, 10 * common.batch, common.batch) {
                    ingest(&http, &server.addr, body).await?;
                }
                extra_events += 10 * common.batch;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let before = status(&http, &server.addr).await?;
    let (last_rec, checkpoint_before, last_seq) = (
        log_field(&before, "last_rec")?,
        log_field(&before, "checkpoint_rec")?,
        log_field(&before, "last_seq")?,
    );
    // The checkpoint a restart loads is the newest on disk at the kill:
    // what `/status` shows after the first restart.
    let mut checkpoint_rec = checkpoint_before;
    let mut times = Vec::new();
    let mut after = Vec::new();
    let mut consistent = true;
    let mut entities = 0;
    for round in 0..3 {
        let time = server.restart()?.as_secs_f64();
        let status = status(&http, &server.addr).await?;
        if round == 0 {
            checkpoint_rec = log_field(&status, "checkpoint_rec")?;
            if checkpoint_rec != checkpoint_before {
                eprintln!(
                    "{case}: /status showed checkpoint_rec {checkpoint_before} before the kill, \
                     {checkpoint_rec} after the restart (a checkpoint landed in between)"
                );
            }
        }
        let same = log_field(&status, "last_rec")? == last_rec
            && log_field(&status, "last_seq")? == last_seq
            && log_field(&status, "checkpoint_rec")? == checkpoint_rec;
        if !same {
            consistent = false;
            eprintln!(
                "{case}: after restart {round}, /status differs: before {before}, after {status}"
            );
        }
        if round == 0 {
            let mut ws = connect(&server.addr, 0, common.source_addrs).await?;
            entities = subscribe(&mut ws, "Token/list").await?;
            if entities != 1000.min(events) {
                consistent = false;
                eprintln!(
                    "{case}: Token/list has {entities} entities after the restart, expected {}",
                    1000.min(events)
                );
            }
        }
        times.push(time);
        after.push(status);
    }
    let replayed = last_rec - checkpoint_rec;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "{case}: {} events ({last_rec} records, ingested at {ingest_rate:.0} events/s), checkpoint at record {checkpoint_rec}: \
         {replayed} records replayed; restart (spawn to listening) {} s, median {median:.3} s; empty start {empty_start:.3} s; \
         state {}",
        events + extra_events,
        times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(", "),
        if consistent { "identical" } else { "DIFFERS" }
    );
    Ok(json!({
        "case": case,
        "args": args,
        "events": events + extra_events,
        "extra_events_for_checkpoint": extra_events,
        "checkpoint_wait_seconds": checkpoint_wait,
        "ingest_events_per_second": ingest_rate,
        "last_rec": last_rec,
        "checkpoint_rec_before_kill": checkpoint_before,
        "checkpoint_rec": checkpoint_rec,
        "replayed_records": replayed,
        "replayed_events": replayed as usize * common.batch,
        "empty_start_seconds": empty_start,
        "restart_seconds": times,
        "restart_seconds_median": median,
        "entities_after_restart": entities,
        "state_identical_after_restart": consistent,
        "status_before": before,
        "status_after": after,
    }))
}

/// Durable state: ingest in memory vs fsynced log, disk per event, restart
/// time with and without a recent checkpoint.
async fn durable(
    common: &Common,
    events: usize,
    posters: usize,
    restart_events: usize,
) -> anyhow::Result<Value> {
    let in_memory = durable_ingest(common, "in_memory", &["--in-memory"], events, posters).await?;
    let always = durable_ingest(
        common,
        "fsync_always",
        &["--fsync", "always"],
        events,
        posters,
    )
    .await?;
    let every = durable_ingest(
        common,
        "fsync_every_5ms",
        &["--fsync", "every:5"],
        events,
        posters,
    )
    .await?;
    let ratio = |a: &Value, b: &Value, f: &dyn Fn(&Value) -> f64| f(a) / f(b);
    let rate = |v: &Value| v["events_per_second"].as_f64().unwrap_or(f64::NAN);
    let p50 = |v: &Value| v["latency"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let p99 = |v: &Value| v["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let ratios = json!({
        "fsync_always_events_per_second": ratio(&always, &in_memory, &rate),
        "fsync_every_5ms_events_per_second": ratio(&every, &in_memory, &rate),
        "fsync_always_latency_p50": ratio(&always, &in_memory, &p50),
        "fsync_always_latency_p99": ratio(&always, &in_memory, &p99),
        "fsync_every_5ms_latency_p50": ratio(&every, &in_memory, &p50),
        "fsync_every_5ms_latency_p99": ratio(&every, &in_memory, &p99),
    });
    eprintln!("durable/in-memory: {ratios}");
    let disk = always["disk"].clone();
    eprintln!(
        "disk after fsync_always: {} bytes for {} events = {:.1} bytes/event (posted NDJSON: {:.1} bytes/event)",
        disk["disk_bytes"], disk["events_logged"], disk["disk_bytes_per_event"].as_f64().unwrap_or(f64::NAN),
        always["body_bytes_per_event"].as_f64().unwrap_or(f64::NAN)
    );
    let never = (restart_events as u64 * 10 + 1_000_000).to_string();
    let no_checkpoint = durable_restart(
        common,
        "no_checkpoint",
        &[
            "--checkpoint-every-events",
            &never,
            "--checkpoint-every-secs",
            "86400",
        ],
        restart_events,
        posters,
        false,
    )
    .await?;
    let recent_checkpoint = durable_restart(
        common,
        "recent_checkpoint",
        &["--checkpoint-every-events", "100000"],
        restart_events,
        posters,
        true,
    )
    .await?;
    Ok(json!({
        "events": events,
        "posters": posters,
        "batch": common.batch,
        "ingest": {"in_memory": in_memory, "fsync_always": always, "fsync_every_5ms": every},
        "ratio_to_in_memory": ratios,
        "disk": disk,
        "restart": {"no_checkpoint": no_checkpoint, "recent_checkpoint": recent_checkpoint},
    }))
}

fn summarize(run: &StreamRun) {
    eprintln!(
        "{:?}: {} clients x {} events: delivered {}/{} ({} lost) in {:.2}s = {:.0} frames/s; host CPU {:.2}s = {:.3} µs/frame; \
         latency p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; RSS {} -> {} -> {} KiB; disconnects {} errors {}",
        run.target, run.clients, run.events, run.delivered_frames, run.expected_frames, run.lost_frames, run.deliver_seconds,
        run.frames_per_second, run.host_cpu_seconds, run.host_cpu_us_per_frame, run.latency.p50_ms, run.latency.p99_ms,
        run.latency.p999_ms, run.latency.max_ms, run.rss_kib_start, run.rss_kib_connected, run.rss_kib_end, run.disconnects, run.errors
    );
}

async fn idle(common: &Common, hold: u64) -> anyhow::Result<Value> {
    let server = Server::start(Target::Vista, common)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_start = rss_kib(server.pid());
    let (sockets, connect_time) = open_clients(&server.addr, common.clients, common).await?;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss_held = rss_kib(server.pid());
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(read_live(ws, tally.clone(), false, stop_rx.clone())))
        .collect();
    // Everyone still there: one event reaches every connection.
    let http = reqwest::Client::new();
    ingest(&http, &server.addr, token_events(0, 1, 1, false)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.frames.load(Ordering::Relaxed) < common.clients as u64 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true)?;
    for reader in readers {
        reader.await?;
    }
    let per_connection = (rss_held as f64 - rss_start as f64) / common.clients as f64;
    eprintln!(
        "idle: {} subscribed connections in {:.2}s; host RSS {} -> {} KiB = {:.2} KiB per connection; {} received the probe event; disconnects {}",
        common.clients, connect_time.as_secs_f64(), rss_start, rss_held, per_connection,
        tally.frames.load(Ordering::Relaxed), tally.disconnects.load(Ordering::Relaxed)
    );
    Ok(json!({
        "clients": common.clients,
        "connect_seconds": connect_time.as_secs_f64(),
        "rss_kib_start": rss_start,
        "rss_kib_held": rss_held,
        "rss_kib_per_connection": per_connection,
        "received_probe": tally.frames.load(Ordering::Relaxed),
        "disconnects": tally.disconnects.load(Ordering::Relaxed),
    }))
}

async fn snapshot(common: &Common, entities: usize) -> anyhow::Result<Value> {
    let server = Server::start(Target::Vista, common)?;
    let http = reqwest::Client::new();
    let mut sent = 0;
    while sent < entities {
        let count = 5000.min(entities - sent);
        ingest(
            &http,
            &server.addr,
            token_events(sent, count, entities, false),
        )
        .await?;
        sent += count;
    }
    let mut one = connect(&server.addr, 0, common.source_addrs).await?;
    let started = Instant::now();
    let received = subscribe(&mut one, "Token/list").await?;
    let one_client = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == entities,
        "snapshot had {received} of {entities} entities"
    );

    let mut sockets = Vec::new();
    for i in 0..common.clients {
        sockets.push(connect(&server.addr, i + 1, common.source_addrs).await?);
    }
    // 50, then 100 per batch.
    let expected_batches = if entities <= 50 {
        1
    } else {
        1 + (entities - 50).div_ceil(100)
    };
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let batches = subscribe_head_only(&mut ws, "Token/list").await?;
                anyhow::Ok((batches, started.elapsed().as_secs_f64()))
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        let (batches, t) = task.await??;
        anyhow::ensure!(
            batches == expected_batches,
            "{batches} batches, expected {expected_batches}"
        );
        times.push(t);
    }
    let host_cpu = cpu_seconds(server.pid()) - cpu_before;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let last = *times.last().unwrap();
    eprintln!(
        "snapshot of {entities}: one client {one_client:.3}s (fully parsed, {received} entities); \
         {} clients at once: median {median:.3}s, last {last:.3}s, host CPU {host_cpu:.2}s",
        common.clients
    );
    Ok(json!({
        "entities": entities,
        "one_client_seconds": one_client,
        "one_client_entities": received,
        "clients": common.clients,
        "concurrent_median_seconds": median,
        "concurrent_last_seconds": last,
        "concurrent_host_cpu_seconds": host_cpu,
    }))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::args().any(|a| a == "--auth") {
        enable_auth();
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let report = match cli.scenario {
            Scenario::BaselineServer { listen } => return baseline::serve(listen).await,
            Scenario::Fanout { common, events } => json!({"scenario": "fanout", "result": compare(&common, events, None).await?}),
            Scenario::Latency { common, rate, seconds } => {
                let events = rate * seconds as usize;
                json!({"scenario": "latency", "rate": rate, "result": compare(&common, events, Some(rate)).await?})
            }
            Scenario::Cluster { common, hosts, events, latency_requests, throughput_events, posters } => json!({
                "scenario": "cluster",
                "result": cluster::run(&common, hosts, events, latency_requests, throughput_events, posters).await?,
            }),
            Scenario::Clients { common, addr, expect } => return cluster::clients_child(&addr, expect, &common).await,
            Scenario::Reference { args } => json!({"scenario": "reference", "result": reference::run(&args).await?}),
            Scenario::Idle { common, hold } => json!({"scenario": "idle", "result": idle(&common, hold).await?}),
            Scenario::Snapshot { common, entities } => json!({"scenario": "snapshot", "result": snapshot(&common, entities).await?}),
            Scenario::Ingest { common, events } => json!({"scenario": "ingest", "result": ingest_scaling(&common, events).await?}),
            Scenario::Durable { common, events, posters, restart_events } => json!({
                "scenario": "durable",
                "result": durable(&common, events, posters, restart_events).await?,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}
