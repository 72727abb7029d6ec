//! `loadgen cluster`: Vista hosts sharing one NATS JetStream stream.
//!
//! Fan-out past one process: a process here may hold 20,000 descriptors,
//! so the tool itself cannot hold 45,000 client sockets either. It runs one
//! `loadgen clients` child per host (each holding that host's clients,
//! counting frames, answering one JSON line), ingests through the first
//! host, and reads every host's CPU time from `/proc`. In the same run, one
//! host without `--cluster` holding one host's share of clients gives the
//! single-host figures.
//!
//! Ingest: the latency of one-event requests posted one after another
//! (p50/p99) on a durable single host (`--fsync always`) and on a cluster
//! host, whose answer waits for the JetStream ack and its own apply; and
//! events/s through the cluster with concurrent posters.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::{
    cpu_seconds, ingest, open_clients, post_timed, read_live, rss_kib, token_bodies, token_events,
    Common, Latency, Server, Tally, Target,
};

/// A `nats-server -js` on a free loopback port with a temporary store.
struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nats {
    fn start() -> anyhow::Result<Nats> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server (apt-get install nats-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        })
    }
}

/// Waits until `GET /readyz` answers 200.
async fn wait_ready(http: &reqwest::Client, addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("http://{addr}/readyz")).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{addr} not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `loadgen clients` child holding one host's clients.
struct ClientsChild {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for ClientsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ClientsChild {
    /// Starts it and waits until every client is subscribed.
    fn start(addr: &str, clients: usize, expect: u64, common: &Common) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["clients", "--addr", addr])
            .args(["--clients", &clients.to_string()])
            .args(["--expect", &expect.to_string()])
            .args(["--source-addrs", &common.source_addrs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready = lines.next().context("the clients child said nothing")??;
        anyhow::ensure!(ready.contains("ready"), "clients child: {ready}");
        Ok(ClientsChild { child, lines })
    }

    /// Its report, once it received everything or gave up waiting.
    fn report(&mut self) -> anyhow::Result<Value> {
        let line = self.lines.next().context("no report")??;
        Ok(serde_json::from_str(&line)?)
    }
}

/// `loadgen clients` (run by [`fanout`]): connect and subscribe, say
/// `ready`, count frames until `expect` arrived (or none came for 5 s), then
/// print the counts.
pub async fn clients_child(addr: &str, expect: u64, common: &Common) -> anyhow::Result<()> {
    let (sockets, connect_time) = open_clients(addr, common.clients, common).await?;
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(read_live(ws, tally.clone(), false, stop_rx.clone())))
        .collect();
    println!(
        "{}",
        json!({"ready": true, "connect_seconds": connect_time.as_secs_f64()})
    );
    std::io::stdout().flush()?;
    let mut last = (0, Instant::now());
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let frames = tally.frames.load(Ordering::Relaxed);
        if frames >= expect {
            break;
        }
        if frames != last.0 {
            last = (frames, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5)
            && (frames > 0 || started.elapsed() > Duration::from_secs(120))
        {
            break;
        }
    }
    stop_tx.send(true)?;
    for reader in readers {
        reader.await?;
    }
    println!(
        "{}",
        json!({
            "frames": tally.frames.load(Ordering::Relaxed),
            "bytes": tally.bytes.load(Ordering::Relaxed),
            "disconnects": tally.disconnects.load(Ordering::Relaxed),
            "errors": tally.errors.load(Ordering::Relaxed),
            "connect_seconds": connect_time.as_secs_f64(),
        })
    );
    Ok(())
}

/// One fan-out run: `hosts` (their addresses and pids), `clients` on each,
/// `events` ingested through the first.
async fn fan_out(
    label: &str,
    hosts: &[(String, u32)],
    clients: usize,
    events: usize,
    common: &Common,
) -> anyhow::Result<Value> {
    let expect = (clients * events) as u64;
    let mut children = Vec::new();
    for (addr, _) in hosts {
        let (addr, common) = (addr.clone(), common.clone());
        children.push(
            tokio::task::spawn_blocking(move || {
                ClientsChild::start(&addr, clients, expect, &common)
            })
            .await??,
        );
    }
    let rss_connected: u64 = hosts.iter().map(|(_, pid)| rss_kib(*pid)).sum();
    let http = reqwest::Client::new();
    let cpu_before: f64 = hosts.iter().map(|(_, pid)| cpu_seconds(*pid)).sum();
    let started = Instant::now();
    let mut sent = 0;
    while sent < events {
        let count = common.batch.min(events - sent);
        ingest(&http, &hosts[0].0, token_events(sent, count, 1000, false)).await?;
        sent += count;
    }
    let ingest_time = started.elapsed();
    let mut reports = Vec::new();
    for mut child in children {
        reports.push(tokio::task::spawn_blocking(move || child.report()).await??);
    }
    let wall = started.elapsed();
    let cpu: f64 = hosts.iter().map(|(_, pid)| cpu_seconds(*pid)).sum::<f64>() - cpu_before;
    let delivered: u64 = reports
        .iter()
        .map(|r| r["frames"].as_u64().unwrap_or(0))
        .sum();
    let expected = expect * hosts.len() as u64;
    let result = json!({
        "label": label,
        "hosts": hosts.len(),
        "clients_per_host": clients,
        "clients": clients * hosts.len(),
        "events": events,
        "ingest_seconds": ingest_time.as_secs_f64(),
        "deliver_seconds": wall.as_secs_f64(),
        "expected_frames": expected,
        "delivered_frames": delivered,
        "lost_frames": expected.saturating_sub(delivered),
        "frames_per_second": delivered as f64 / wall.as_secs_f64(),
        "hosts_cpu_seconds": cpu,
        "host_cpu_us_per_frame": cpu * 1e6 / delivered.max(1) as f64,
        "hosts_rss_kib_connected": rss_connected,
        "disconnects": reports.iter().map(|r| r["disconnects"].as_u64().unwrap_or(0)).sum::<u64>(),
        "clients_reports": reports,
    });
    eprintln!(
        "{label}: {} hosts x {clients} clients, {events} events: {delivered}/{expected} frames in {:.2}s = {:.0} frames/s; hosts' CPU {:.2}s = {:.3} µs/frame",
        hosts.len(),
        wall.as_secs_f64(),
        result["frames_per_second"].as_f64().unwrap_or(0.0),
        cpu,
        result["host_cpu_us_per_frame"].as_f64().unwrap_or(0.0),
    );
    Ok(result)
}

/// One-event requests one after another: (p50, p99 and so on).
async fn sequential_latency(addr: &str, requests: usize) -> anyhow::Result<Latency> {
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests {
        let sent = Instant::now();
        ingest(&http, addr, token_events(1_000_000 + i, 1, 1000, false)).await?;
        samples.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(Latency::of(samples))
}

/// `loadgen cluster`.
pub async fn run(
    common: &Common,
    hosts: usize,
    events: usize,
    latency_requests: usize,
    throughput_events: usize,
    posters: usize,
) -> anyhow::Result<Value> {
    let clients_per_host = common.clients;
    let http = reqwest::Client::new();
    // The single host, in the same run.
    let single = Server::start(Target::Vista, common)?;
    wait_ready(&http, &single.addr).await?;
    let single_fanout = fan_out(
        "single host",
        &[(single.addr.clone(), single.pid())],
        clients_per_host,
        events,
        common,
    )
    .await?;
    let single_latency = sequential_latency(&single.addr, latency_requests).await?;
    eprintln!(
        "single durable host: one-event ingest p50 {:.2} ms, p99 {:.2} ms",
        single_latency.p50_ms, single_latency.p99_ms
    );
    drop(single);

    let nats = Nats::start()?;
    let mut members = Vec::new();
    for _ in 0..hosts {
        members.push(Server::start_with(
            Target::Vista,
            common,
            &["--cluster", &nats.url],
        )?);
    }
    for member in &members {
        wait_ready(&http, &member.addr).await?;
    }
    let addrs: Vec<(String, u32)> = members.iter().map(|m| (m.addr.clone(), m.pid())).collect();
    let cluster_fanout = fan_out("cluster", &addrs, clients_per_host, events, common).await?;
    let cluster_latency = sequential_latency(&members[0].addr, latency_requests).await?;
    eprintln!(
        "cluster host: one-event ingest p50 {:.2} ms, p99 {:.2} ms",
        cluster_latency.p50_ms, cluster_latency.p99_ms
    );
    // Throughput: concurrent posters, requests of `--batch`, spread over
    // the hosts' ports in turn by poster.
    let bodies = token_bodies(2_000_000, throughput_events, common.batch);
    let (wall, cpu, latencies) = post_timed(&members[0], bodies, posters).await?;
    let throughput = throughput_events as f64 / wall.as_secs_f64();
    let post_latency = Latency::of(latencies);
    eprintln!(
        "cluster ingest: {throughput_events} events, {posters} posters, requests of {}: {throughput:.0} events/s; POST p50 {:.2} ms p99 {:.2} ms; receiving host CPU {:.2} µs/event",
        common.batch,
        post_latency.p50_ms,
        post_latency.p99_ms,
        cpu * 1e6 / throughput_events as f64
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok(json!({
        "nats_server": nats_version(),
        "single": single_fanout,
        "cluster": cluster_fanout,
        "ratio_cluster_to_single": {
            "frames_per_second": ratio(
                cluster_fanout["frames_per_second"].as_f64().unwrap_or(0.0),
                single_fanout["frames_per_second"].as_f64().unwrap_or(0.0)),
            "host_cpu_per_frame": ratio(
                cluster_fanout["host_cpu_us_per_frame"].as_f64().unwrap_or(0.0),
                single_fanout["host_cpu_us_per_frame"].as_f64().unwrap_or(0.0)),
        },
        "ingest_latency": {
            "requests": latency_requests,
            "single_durable_fsync_always": single_latency,
            "cluster": cluster_latency,
            "added_p50_ms": cluster_latency.p50_ms - single_latency.p50_ms,
            "added_p99_ms": cluster_latency.p99_ms - single_latency.p99_ms,
        },
        "cluster_throughput": {
            "events": throughput_events,
            "posters": posters,
            "batch": common.batch,
            "seconds": wall.as_secs_f64(),
            "events_per_second": throughput,
            "post_latency": post_latency,
            "receiving_host_cpu_us_per_event": cpu * 1e6 / throughput_events as f64,
        },
    }))
}

fn nats_version() -> String {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
