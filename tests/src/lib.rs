//! Test harness: builds the real binaries, starts the real `vista` host on
//! a free loopback port with real plugin `.so` files, and talks to it with a
//! raw WebSocket client and plain HTTP.
//!
//! Every [`Host`] gets its own temporary plugins and cache directories and
//! is killed when dropped. Its log (stderr) is kept in a file so tests can
//! assert on log lines.

pub mod soak;

pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo profile the host and plugins under test are built with:
/// `debug`, or `release` with `VISTA_TEST_PROFILE=release` (for the
/// benchmarks among the tests, e.g. `sources`'s ignored `bench`).
fn profile() -> &'static str {
    match std::env::var("VISTA_TEST_PROFILE").as_deref() {
        Ok("release") => "release",
        _ => "debug",
    }
}

/// Builds the host and every plugin and fixture crate once per test process
/// (a no-op when `cargo test --workspace` already built them).
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "--quiet"]);
        if profile() == "release" {
            command.arg("--release");
        }
        for package in [
            "vista-host",
            "vista-tokens",
            "vista-games",
            "vista-orders",
            "vista-fixture-bad-contract",
            "vista-fixture-foreign-cdylib",
            "vista-fixture-token-owner-clash",
            "vista-fixture-panicky",
            "vista-fixture-bad-filter",
            "vista-fixture-manifest-panics",
            "vista-fixture-spinner",
            "vista-fixture-aggregates",
            "vista-fixture-crashy",
            "vista-fixture-tally",
        ] {
            command.args(["-p", package]);
        }
        let status = command.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the host and plugins failed"
        );
    });
}

/// Path of the built `vista` binary.
pub fn vista_binary() -> PathBuf {
    ensure_built();
    target_dir().join(profile()).join("vista")
}

/// Path of a built plugin library by crate name, e.g. `vista_tokens`.
pub fn plugin_artifact(crate_name: &str) -> PathBuf {
    ensure_built();
    let path = target_dir()
        .join(profile())
        .join(format!("lib{crate_name}.so"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Builds `package` with cargo feature `feature` into its own target
/// directory (so the workspace's `target/debug` copy is untouched) and
/// returns the library: a second build of the same plugin.
pub fn variant_artifact(package: &str, crate_name: &str, feature: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("variants").join(feature);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &dir)
        .args(["build", "--quiet", "-p", package, "--features", feature])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {package} with {feature} failed");
    dir.join("debug").join(format!("lib{crate_name}.so"))
}

/// A file to place in the plugins directory before start.
pub enum PluginFile {
    /// Copy of a built crate's library (`vista_tokens`) under a file name.
    Built(&'static str, &'static str),
    /// Arbitrary bytes under a file name.
    Bytes(Vec<u8>, &'static str),
}

/// A running `vista` process.
pub struct Host {
    child: Child,
    /// Program and arguments, to start it again on the same directories.
    launch: Vec<std::ffi::OsString>,
    /// Working directory, when not the test's.
    cwd: Option<PathBuf>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The plugins directory (inside `dir`).
    pub plugins_dir: PathBuf,
    log_path: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Starts the host with the `tokens` plugin.
    pub async fn with_tokens() -> Host {
        Host::start(vec![PluginFile::Built("vista_tokens", "tokens.so")], &[]).await
    }

    /// Starts the host with the `games` plugin.
    pub async fn with_games() -> Host {
        Host::start(vec![PluginFile::Built("vista_games", "games.so")], &[]).await
    }

    /// Starts the host with the `tokens` and `games` plugins.
    pub async fn with_tokens_and_games() -> Host {
        Host::start(
            vec![
                PluginFile::Built("vista_tokens", "tokens.so"),
                PluginFile::Built("vista_games", "games.so"),
            ],
            &[],
        )
        .await
    }

    /// Starts the host with these plugin files and extra `serve` arguments.
    pub async fn start(files: Vec<PluginFile>, extra_args: &[&str]) -> Host {
        Host::start_wrapped(&[], files, extra_args).await
    }

    /// Like [`Host::start`], with the host run under a wrapper command
    /// (e.g. `prlimit --nofile=40:40 --`).
    pub async fn start_wrapped(
        wrapper: &[&str],
        files: Vec<PluginFile>,
        extra_args: &[&str],
    ) -> Host {
        let binary = vista_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        for file in files {
            match file {
                PluginFile::Built(crate_name, name) => {
                    std::fs::copy(plugin_artifact(crate_name), plugins_dir.join(name)).unwrap();
                }
                PluginFile::Bytes(bytes, name) => {
                    std::fs::write(plugins_dir.join(name), bytes).unwrap()
                }
            }
        }
        let log_path = dir.path().join("vista.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let data = dir.path().join("data");
        let keeps_state = !extra_args
            .iter()
            .any(|a| *a == "--in-memory" || *a == "--data");
        command
            .arg("serve")
            .arg("--plugins")
            .arg(&plugins_dir)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--listen", "127.0.0.1:0"]);
        if keeps_state {
            command.arg("--data").arg(&data);
        }
        command.args(extra_args);
        let launch: Vec<std::ffi::OsString> = std::iter::once(command.get_program().to_owned())
            .chain(command.get_args().map(|a| a.to_owned()))
            .collect();
        let (child, addr) = spawn_host(&launch, None, &log_path).await;
        Host {
            child,
            launch,
            cwd: None,
            addr,
            plugins_dir,
            log_path,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `POST /ingest/{stream}` with a raw body: (status, JSON body).
    pub async fn ingest(&self, stream: &str, body: impl Into<String>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/ingest/{stream}", self.http_url()))
            .body(body.into())
            .send()
            .await
            .expect("ingest request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON response body"))
    }

    /// Ingests NDJSON built from values and asserts success.
    pub async fn ingest_ok(&self, stream: &str, events: &[Value]) -> Value {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let (status, reply) = self.ingest(stream, body).await;
        assert_eq!(status, 200, "ingest failed: {reply}");
        reply
    }

    /// `GET path`: (status, JSON body).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.http_url()))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON response body"))
    }

    /// `GET path`: (status, body as text), for bodies that are not one
    /// JSON value (NDJSON exports, metrics).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.http_url()))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.expect("response body"))
    }

    /// Polls `GET /plugins` until `ready` holds for it; panics after 15 s.
    pub async fn wait_for_plugins(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, plugins) = self.get_json("/plugins").await;
            if ready(&plugins) {
                return plugins;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; /plugins = {plugins}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The OS process id of the host (a wrapper `exec`s it, keeping the pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user+system CPU time of the host so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        process_cpu_ticks(self.pid())
    }

    /// Resident memory of the host process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
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

    /// The value of a Prometheus counter from `GET /metrics` (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// A raw WebSocket client connected to the host.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message from the server, decoded.
#[derive(Debug)]
pub enum Received {
    /// A JSON frame.
    Json {
        /// The decoded JSON.
        value: Value,
        /// It arrived as a text message.
        text: bool,
        /// It arrived gzipped.
        gzipped: bool,
    },
    /// The server closed: code and reason.
    Close(Option<(u16, String)>),
}

/// A raw WebSocket client (tokio-tungstenite) that decodes frames the way
/// the published clients do: JSON text, JSON binary, or gzip binary.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        WsClient { ws }
    }

    /// Connects with a tiny kernel receive buffer (4 KiB), so that a client
    /// that stops reading is noticed by the server quickly.
    pub async fn connect_slow_reader(addr: &str) -> WsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket
            .connect(addr.parse().expect("socket address"))
            .await
            .expect("connect");
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket handshake");
        WsClient { ws }
    }

    /// The underlying WebSocket, to split into sink and stream.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }

    /// Sends a JSON value as a text message.
    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Sends any message.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Next raw WebSocket message, pings and pongs included.
    pub async fn next_raw(&mut self) -> Message {
        self.ws
            .next()
            .await
            .expect("connection open")
            .expect("websocket message")
    }

    /// Next message, or `None` if nothing comes within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        loop {
            let message = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Received::Close(None)),
                Ok(Some(Err(err))) => panic!("websocket error: {err}"),
                Ok(Some(Ok(message))) => message,
            };
            return Some(match message {
                Message::Text(text) => Received::Json {
                    value: serde_json::from_str(text.as_str()).expect("text frame is JSON"),
                    text: true,
                    gzipped: false,
                },
                Message::Binary(bytes) => {
                    let gzipped = bytes.starts_with(&[0x1f, 0x8b]);
                    let json = if gzipped {
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&bytes[..]),
                            &mut out,
                        )
                        .expect("valid gzip");
                        out
                    } else {
                        bytes.to_vec()
                    };
                    Received::Json {
                        value: serde_json::from_slice(&json).expect("binary frame is JSON"),
                        text: false,
                        gzipped,
                    }
                }
                Message::Close(frame) => {
                    Received::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// Next message; panics after [`FRAME_TIMEOUT`].
    pub async fn recv(&mut self) -> Received {
        self.recv_within(FRAME_TIMEOUT)
            .await
            .expect("timed out waiting for a frame")
    }

    /// Next JSON frame (panics on close or timeout).
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json { value, .. } => value,
            Received::Close(close) => panic!("connection closed: {close:?}"),
        }
    }

    /// Asserts that nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(got) = self.recv_within(wait).await {
            panic!("expected no frame, got {got:?}");
        }
    }

    /// Waits until the server has processed every message sent so far:
    /// messages without a reply (unsubscribe, ping) are followed by a
    /// request that does get one (a subscribe to a view that cannot exist,
    /// answered with a `view-not-found` issue).
    pub async fn sync(&mut self) {
        self.send(serde_json::json!({"type": "subscribe", "view": "__sync__/none"}))
            .await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply["error"], "view-not-found",
            "expected the sync reply, got {reply}"
        );
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, request: Value) -> Value {
        self.send(request).await;
        let subscribed = self.recv_json().await;
        assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
        subscribed
    }

    /// Reads snapshot frames until `complete:true`; returns the frames.
    pub async fn snapshot_frames(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv_json().await;
            assert_eq!(
                frame["op"], "snapshot",
                "expected a snapshot frame, got {frame}"
            );
            let complete = frame["complete"] == true;
            frames.push(frame);
            if complete {
                return frames;
            }
        }
    }

    /// Reads a whole snapshot; returns its keys in order.
    pub async fn snapshot_keys(&mut self) -> Vec<String> {
        self.snapshot()
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Reads a whole snapshot; returns the `(key, data)` entries in order.
    pub async fn snapshot(&mut self) -> Vec<(String, Value)> {
        self.snapshot_frames()
            .await
            .iter()
            .flat_map(|f| f["data"].as_array().unwrap().clone())
            .map(|e| (e["key"].as_str().unwrap().to_owned(), e["data"].clone()))
            .collect()
    }
}

impl Host {
    /// Starts the host in working directory `cwd` with these `serve`
    /// arguments; unlike [`Host::start`] no `--plugins` is added, so a
    /// relative or missing plugins directory can be tested. `plugins_dir`
    /// is `cwd` joined with the `--plugins` argument (default `plugins.d`);
    /// the cache and the log live in the host's own temporary directory.
    pub async fn start_in(cwd: &Path, args: &[&str]) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = args
            .iter()
            .position(|a| *a == "--plugins")
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or("plugins.d");
        let log_path = dir.path().join("vista.log");
        let launch: Vec<std::ffi::OsString> = [vista_binary().into_os_string(), "serve".into()]
            .into_iter()
            .chain([
                "--cache-dir".into(),
                dir.path().join("cache").into_os_string(),
            ])
            .chain(["--listen", "127.0.0.1:0"].map(Into::into))
            .chain(args.iter().map(Into::into))
            .collect();
        let (child, addr) = spawn_host(&launch, Some(cwd), &log_path).await;
        Host {
            child,
            launch,
            cwd: Some(cwd.to_owned()),
            addr,
            plugins_dir: cwd.join(plugins),
            log_path,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }
}

/// Starts a `vista` process, its stderr appended to `log_path`; returns it
/// and the address it printed.
async fn spawn_host(
    launch: &[std::ffi::OsString],
    cwd: Option<&Path>,
    log_path: &Path,
) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut command = Command::new(&launch[0]);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .args(&launch[1..])
        .env_remove("VISTA_PLUGINS_DIR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start vista");
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("vista printed nothing")
            .expect("read stdout");
        line.strip_prefix("vista listening on ")
            .expect("listening line")
            .to_owned()
    })
    .await
    .unwrap();
    (child, addr)
}

impl Host {
    /// The data directory the harness gave the host (`--data`).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Kills the host with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the host again with the same arguments and directories (after
    /// [`Host::kill9`] or an exit); it gets a new port.
    pub async fn restart(&mut self) {
        let (child, addr) = spawn_host(&self.launch, self.cwd.as_deref(), &self.log_path).await;
        self.child = child;
        self.addr = addr;
    }

    /// Sends SIGTERM to the host (graceful shutdown).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the host to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vista") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /healthz`, returning how long the answer took (panics unless 200).
    pub async fn healthz_latency(&self) -> Duration {
        let started = std::time::Instant::now();
        let response = self
            .http
            .get(format!("{}/healthz", self.http_url()))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(response.status(), 200);
        started.elapsed()
    }
}

/// Applies one server frame to a view's key -> entity map the way the
/// published clients do: snapshot entries and `upsert` replace, `delete`
/// removes, `patch` deep-merges (append paths concatenate).
pub fn apply_frame(state: &mut std::collections::BTreeMap<String, Value>, frame: &Value) {
    let key = || frame["key"].as_str().unwrap().to_owned();
    match frame["op"].as_str().unwrap_or_default() {
        "snapshot" => {
            for entry in frame["data"].as_array().unwrap() {
                state.insert(
                    entry["key"].as_str().unwrap().to_owned(),
                    entry["data"].clone(),
                );
            }
        }
        "upsert" => {
            state.insert(key(), frame["data"].clone());
        }
        "delete" => {
            state.remove(&key());
        }
        "patch" => {
            let append: Vec<String> = frame["append"]
                .as_array()
                .map(|paths| {
                    paths
                        .iter()
                        .map(|p| p.as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let entity = state.entry(key()).or_insert(serde_json::json!({}));
            vista_plugin_api::merge_patch(entity, frame["data"].as_object().unwrap(), &append);
        }
        _ => {}
    }
}

/// The fields of `/proc/PID/stat` after the command name (so field 0 is
/// the state, 1 the parent PID, 11 and 12 utime and stime); empty if the
/// process is gone.
pub fn proc_stat(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')') {
        Some((_, rest)) => rest.split_whitespace().map(str::to_owned).collect(),
        None => Vec::new(),
    }
}

/// user+system CPU time of a process (all its threads) so far, in clock
/// ticks (1/100 s); 0 if it is gone.
pub fn process_cpu_ticks(pid: u32) -> u64 {
    let fields = proc_stat(pid);
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Whether a process exists and is not a zombie (a child that exited but
/// was not reaped yet).
pub fn process_alive(pid: u32) -> bool {
    proc_stat(pid).first().is_some_and(|state| state != "Z")
}

/// Every live process descended from `pid` (children, their children...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let fields = proc_stat(child);
        if fields.first().is_some_and(|state| state != "Z") {
            if let Some(parent) = fields.get(1).and_then(|p| p.parse().ok()) {
                parents.push((child, parent));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT with these claims, signed with `secret`.
pub fn mint_token(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

/// A JWT with `alg: none` and no signature (which a host must refuse).
pub fn unsigned_token(claims: &Value) -> String {
    use base64::Engine;
    let encode = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        encode(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        encode(claims)
    )
}

/// One of the TypeScript client scripts in `tests/ts-client` that follow
/// the driving protocol: print `ready`, read one line from stdin, end with
/// a JSON summary line and exit 0.
pub struct NodeScript {
    name: String,
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl NodeScript {
    /// Starts `script` against `host` with extra environment variables and
    /// waits (blocking this worker) until it prints `ready`.
    pub fn start(script: &str, host: &Host, env: &[(&str, String)]) -> NodeScript {
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(workspace_root().join("tests/ts-client"))
            .env("VISTA_WS_URL", host.ws_url())
            .env("VISTA_HTTP_URL", host.http_url())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node (is Node.js installed?)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        tokio::task::block_in_place(|| stdout.read_line(&mut ready)).unwrap();
        let mut script = NodeScript {
            name: script.to_owned(),
            child,
            stdout,
        };
        if ready.trim() != "ready" {
            let (_, stderr) = script.wait();
            panic!("{} did not get ready: {ready}\n{stderr}", script.name);
        }
        script
    }

    /// Sends the line it waits for and returns its JSON summary, failing
    /// with its stderr unless it ends with exit 0.
    pub fn finish(mut self, line: &str) -> Value {
        use std::io::Write;
        writeln!(self.child.stdin.take().unwrap(), "{line}").unwrap();
        let (rest, stderr) = self.wait();
        serde_json::from_str(rest.trim().lines().last().unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "{} ended without a summary ({e}): {rest}\n{stderr}",
                self.name
            )
        })
    }

    /// Reads the rest of its stdout, waits for it to exit, and fails unless
    /// it exited 0; returns (stdout, stderr).
    fn wait(&mut self) -> (String, String) {
        let mut rest = String::new();
        let mut stderr = String::new();
        tokio::task::block_in_place(|| {
            std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
            std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr)
                .unwrap();
        });
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        assert!(status.success(), "{} failed: {rest}\n{stderr}", self.name);
        (rest, stderr)
    }
}

/// A `nats-server -js` (Debian's `nats-server` package) on a free loopback
/// port with its own store directory; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Clustering arguments (`-n`, `--cluster`, `--routes`), if any.
    cluster_args: Vec<String>,
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

impl NatsServer {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> NatsServer {
        NatsServer::start_with(Vec::new())
    }

    fn start_with(cluster_args: Vec<String>) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            cluster_args,
        };
        server.launch();
        server
    }

    /// Starts `n` servers routed into one JetStream cluster (streams can
    /// then have up to `n` replicas).
    pub fn start_cluster(n: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                NatsServer::start_with(vec![
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "vista-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    all.join(","),
                ])
            })
            .collect()
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cluster_args)
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Stops it gracefully (SIGTERM: JetStream flushes its store) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills it (SIGKILL: a crashed or lost server).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts it again on the same port with its store deleted (a lost
    /// disk, a recreated server).
    pub fn restart_with_empty_store(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.path().join("store")).expect("delete the store");
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Host {
    /// Starts a cluster member: these plugin files, `--cluster` on `nats`.
    pub async fn cluster_member(nats: &NatsServer, files: Vec<PluginFile>) -> Host {
        Host::start(files, &["--cluster", &nats.url()]).await
    }

    /// Polls `GET /readyz` until 200; panics after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (status, body) = self.get_json("/readyz").await;
            if status == 200 {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready after {limit:?}: {body}\nlog:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a cluster member may take to become ready.
pub const CLUSTER_READY: Duration = Duration::from_secs(30);

/// How long cluster members may take to converge on a view.
pub const CLUSTER_CONVERGE: Duration = Duration::from_secs(30);

/// `n` cluster members on `nats` with these plugins, each ready.
pub async fn ready_members(
    nats: &NatsServer,
    n: usize,
    files: impl Fn() -> Vec<PluginFile>,
) -> Vec<Host> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        hosts.push(Host::cluster_member(nats, files()).await);
    }
    for host in &hosts {
        host.wait_ready(CLUSTER_READY).await;
    }
    hosts
}

/// A fresh subscription's whole snapshot of `view` on `host`.
pub async fn view_of(host: &Host, view: &str) -> std::collections::BTreeMap<String, Value> {
    let mut client = host.client().await;
    client
        .subscribe(serde_json::json!({"type": "subscribe", "view": view}))
        .await;
    client.snapshot().await.into_iter().collect()
}

/// `host`'s `view` once it equals `expected` (or after
/// [`CLUSTER_CONVERGE`], for the caller's assertion to show the
/// difference).
pub async fn view_once_equal(
    host: &Host,
    view: &str,
    expected: &std::collections::BTreeMap<String, Value>,
) -> std::collections::BTreeMap<String, Value> {
    view_once(host, view, |seen| seen == expected).await
}

/// `host`'s `view` once `done` holds for it (or after
/// [`CLUSTER_CONVERGE`], for the caller's assertion to show the
/// difference): a host that did not take a request applies it from the
/// stream a little later.
pub async fn view_once(
    host: &Host,
    view: &str,
    done: impl Fn(&std::collections::BTreeMap<String, Value>) -> bool,
) -> std::collections::BTreeMap<String, Value> {
    let deadline = std::time::Instant::now() + CLUSTER_CONVERGE;
    loop {
        let seen = view_of(host, view).await;
        if done(&seen) || std::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
