//! The Vista host: loads projector plugins, ingests events through them
//! into a host-owned entity store, and streams views of that store to
//! WebSocket clients speaking the HyperStack protocol.
//!
//! # Layout
//!
//! - [`server`]: the listening port: WebSocket upgrades and the HTTP API
//!   (`/ingest/{stream}`, `/plugins`, `/healthz`, `/metrics`).
//! - [`dashboard`]: the live dashboard page at `/` (assets compiled in)
//!   and the admin endpoints it polls.
//! - [`connection`]: one client: reading its messages, writing its outbox.
//! - [`cli`]: `vista ingest`, `vista tail` and `vista plugins`, clients
//!   of a running host; the `vista serve` options and configuration file.
//! - [`redact`]: masking tokens and passwords in what is printed or logged.
//! - [`auth`]: subscriber tokens (JWT), ingest and admin credentials,
//!   origins, hosts and rate limits.
//! - [`hygiene`]: timeouts, the per-IP cap, close codes and the lingering
//!   close that keep stuck or misbehaving peers from holding connections.
//! - [`protocol`]: parsing client messages (both message forms).
//! - [`engine`]: the single owner of plugins, store, views and outboxes,
//!   on its own thread, reached through commands.
//! - [`projector`]: running a plugin build's projector, behind one
//!   interface: in a child process of its own (the default: a crash costs
//!   one request) or on a thread; the overlay a request's reads go through.
//! - [`dead_letters`]: the events plugins refused or crashed on, kept for
//!   an operator to fix and re-ingest.
//! - [`supervise`]: a panic on the engine or the log writer fails the
//!   process loudly instead of leaving it half alive.
//! - [`ingest`]: splitting an ingest body into events.
//! - [`durable`]: the event log (redb), its writer thread and checkpoints.
//! - [`cluster`]: scale-out: several hosts sharing a NATS JetStream stream
//!   as their log (publishing, consuming in order, build markers).
//! - [`reproject`]: rebuilding a plugin's entities from the log through a
//!   new build, in the background, then swapping.
//! - [`plugins`]: loading `.so` files through the ABI-stable contract, each
//!   checked first in a child process (`vista plugin check`), whose answer
//!   is all the host learns of a build it runs in projector processes.
//! - [`store`]: entities and `_seq` stamping.
//! - [`ids`]: the identifiers with a wire form (`_seq`, view ids, modes,
//!   plugin names), each formatted and parsed there only.
//! - [`views`]: base and derived views, windows, and the frames a change produces.
//! - [`filters`]: per-subscription `filters` (dot path -> value), parsed and
//!   made into the key filtered views are shared by.
//! - [`frame`]: encoding frames once (JSON, safe integers, gzip).
//! - [`outbox`]: the bounded per-connection queue between engine and socket.
//! - [`vocab`]: the shared words: connection ids, subscribe requests, modes, ops.
//! - [`watcher`]: hot reload: watching the plugins directory.
//! - [`scaffold`]: `vista plugin new`.
//! - [`typegen`]: `vista plugin types`: a TypeScript module (entity
//!   interfaces from the manifest's schemas, the stack definition, zod).
//! - [`demo`]: the demo feed behind `vista serve --demo-feed`.
//!
//! The crate is a facade: [`Config`], [`Shared`], [`run`] and a few
//! re-exports serve the `vista` binary; `auth`, `cluster`, `durable`,
//! `filters`, `ids`, `store`, `views`, `frame`, `scaffold` and `typegen` are public
//! for the binary's subcommands, the view benchmark and the model tests;
//! everything else is `pub(crate)`.
//!
//! [`run`] takes an already-bound listener, so tests bind port 0.

// The public face: what the `vista` binary, the view benchmark and the
// model test use. Everything else is the host's own business.
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod durable;
pub mod filters;
pub mod frame;
pub mod ids;
pub mod redact;
pub mod scaffold;
pub mod store;
pub mod typegen;
pub mod views;

pub(crate) mod connection;
pub(crate) mod dashboard;
pub mod dead_letters;
pub(crate) mod demo;
pub(crate) mod engine;
pub(crate) mod hygiene;
pub(crate) mod ingest;
pub(crate) mod outbox;
pub(crate) mod plugins;
pub(crate) mod projector;
pub(crate) mod protocol;
pub(crate) mod reproject;
pub(crate) mod server;
pub mod supervise;
pub(crate) mod vocab;
pub(crate) mod watcher;

pub use demo::run as run_demo_feed;
pub use plugins::{check_answer, set_checker, CheckAnswer};
pub use plugins::{set_process_isolation, ProcessSettings};
pub use projector::child::run as run_projector_process;
pub use watcher::{watch as watch_plugins, PluginWatcher};

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::engine::{Command, Engine, EngineHandle};

/// Settings of a running host.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory scanned for plugin files.
    pub plugins_dir: PathBuf,
    /// Private directory plugin files are copied to before being mapped.
    pub cache_dir: PathBuf,
    /// Largest accepted ingest body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Bound on a client's queued live frames, in bytes.
    pub outbox_bytes: usize,
    /// Largest accepted client message, in bytes.
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Open WebSocket connections allowed; more are refused with 503.
    pub max_connections: usize,
    /// Clients silent (no message, no pong) for longer are closed; quiet
    /// ones are pinged first. `None` disables the check.
    pub idle_timeout: Option<Duration>,
    /// A projector making no progress for this long is declared stuck.
    pub projector_timeout: Duration,
    /// Subscribes per second one connection may make, on average.
    pub subscribe_rate: u32,
    /// Subscribes one connection may make at once.
    pub subscribe_burst: u32,
    /// On shutdown, how long writers may flush before clients are closed.
    pub shutdown_grace: Duration,
    /// Ingest requests read and processed at once; more wait their turn.
    pub max_concurrent_ingests: usize,
    /// Where the event log lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// When the log is fsynced.
    pub fsync: durable::FsyncPolicy,
    /// Checkpoint the store after this many events...
    pub checkpoint_every_events: u64,
    /// ...or this long, whichever comes first.
    pub checkpoint_every: Duration,
    /// How much of the log is kept once checkpointed.
    pub retention: durable::Retention,
    /// Time a connection gets to send a complete request head, counted from
    /// accept and, on a keep-alive connection, from the previous response
    /// (so it is also the idle keep-alive timeout); also the time a
    /// WebSocket upgrade gets to complete. `None` disables.
    pub header_timeout: Option<Duration>,
    /// Time an ingest request gets to deliver its whole body (408 after).
    pub body_timeout: Option<Duration>,
    /// Open TCP connections allowed from one IP address (0: unlimited);
    /// more are answered 429 `ip-connection-limit-exceeded`.
    pub max_connections_per_ip: usize,
    /// Share a NATS JetStream stream with other hosts instead of keeping an
    /// event log of its own (`data_dir` then keeps only checkpoints).
    pub cluster: Option<cluster::ClusterConfig>,
}

/// State shared by every task of a running host.
pub struct Shared {
    /// Commands to the engine thread.
    pub engine: EngineHandle,
    /// The host's settings.
    pub config: Config,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    next_conn: AtomicU64,
    /// Open WebSocket connections, checked against `config.max_connections`.
    open_connections: AtomicUsize,
    /// Who may connect, ingest and administer.
    pub auth: auth::Auth,
    /// Ingest requests being read or processed.
    ingest_permits: tokio::sync::Semaphore,
    /// Cluster mode: the shared log.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// A single durable host: whether its event log can be written (not
    /// the log itself: the engine closes it at shutdown).
    pub(crate) log: Option<Arc<durable::LogHealth>>,
}

impl Shared {
    /// Builds the engine, loads every plugin in `config.plugins_dir`,
    /// restores the state kept in `config.data_dir` (checkpoint, then the
    /// log replayed through the plugins) and starts the engine thread.
    ///
    /// In cluster mode the builds are staged, the local checkpoint is
    /// restored, and the shared log is consumed after it in the background
    /// (`/readyz` answers 503 until caught up).
    pub async fn new(config: Config, auth: auth::Auth) -> Result<Arc<Self>, StartError> {
        let mut engine = Engine::new(
            config.cache_dir.clone(),
            config.max_subscriptions_per_connection,
            config.projector_timeout,
        );
        let mut requests = None;
        let mut cluster_status = None;
        let mut single_log = None;
        if config.cluster.is_some() {
            let (link, status, requests_rx) = cluster::channels(0);
            cluster_status = Some(status);
            requests = Some(requests_rx);
            engine.enable_cluster(link);
        }
        engine.load_plugin_dir(&config.plugins_dir);
        match (&config.data_dir, &config.cluster) {
            (data_dir, Some(_)) => {
                let log = match (data_dir, &config.cluster) {
                    (Some(dir), Some(cluster)) => {
                        let log = durable::EventLog::open(dir)?;
                        log.claim_mode(&format!("cluster:{}", cluster.stream))?;
                        Some(Arc::new(log))
                    }
                    _ => None,
                };
                engine.recover_cluster(engine::ClusterPersistence {
                    log,
                    checkpoint_every_events: config.checkpoint_every_events,
                    checkpoint_every: config.checkpoint_every,
                })?;
            }
            (Some(dir), None) => {
                let log = durable::EventLog::open(dir)?;
                log.claim_mode("single")?;
                let log = Arc::new(log);
                single_log = Some(log.health());
                engine.recover(engine::Persistence {
                    log,
                    fsync: config.fsync,
                    checkpoint_every_events: config.checkpoint_every_events,
                    checkpoint_every: config.checkpoint_every,
                    retention: config.retention,
                })?;
            }
            (None, None) => engine.start_seq_from_clock(),
        }
        let (engine, _thread) = engine::spawn(engine);
        let cluster = match (&config.cluster, cluster_status, requests) {
            (Some(cluster_config), Some(status), Some(requests)) => Some(
                cluster::Cluster::start(cluster_config.clone(), status, requests, engine.clone())
                    .await
                    .map_err(StartError::Cluster)?,
            ),
            _ => None,
        };
        Ok(Arc::new(Self {
            log: single_log,
            cluster,
            engine,
            metrics: metrics_handle(),
            next_conn: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            ingest_permits: tokio::sync::Semaphore::new(config.max_concurrent_ingests.max(1)),
            auth,
            config,
        }))
    }

    /// Applies an ingest request: through the shared log in cluster mode
    /// (answered once this host applied it), else on this host.
    pub async fn ingest(
        &self,
        stream: &str,
        body: Arc<ingest::IngestBody>,
    ) -> Result<engine::Ingested, engine::IngestError> {
        match &self.cluster {
            Some(cluster) => cluster.ingest(&self.engine, stream, &body).await,
            None => self.engine.ingest(stream, body).await,
        }
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a connection slot; `None` when the limit is reached. The
    /// slot is released when the returned guard drops.
    fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let open = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.max_connections {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }
}

/// Why a host cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error(transparent)]
    Data(#[from] durable::DataError),
    /// The cluster's NATS URL cannot be used.
    #[error("{0}")]
    Cluster(String),
}

/// One of `config.max_connections` slots, held for a connection's lifetime.
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Installs the process-wide Prometheus recorder once.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then
            // `/metrics` shows an empty page rather than failing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves HTTP and WebSocket connections on `listener` until `shutdown`
/// completes, then shuts down in order: stop accepting (the listener is
/// closed, so new connections are refused), let writers flush what is
/// queued followed by close 1001 `server-shutdown:` for up to
/// `config.shutdown_grace`, then drop what is still queued so the close goes
/// out next, and wait a last moment for the writers.
///
/// Each accepted connection is served by [`hygiene::serve_tcp`] (header
/// timeout, per-IP cap). A failed accept (typically EMFILE) backs off for
/// 100 ms and is logged at most once per second.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    if let Some(timeout) = shared.config.idle_timeout {
        // One sweeper for all connections: no per-connection timer.
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(timeout / 3);
            loop {
                ticker.tick().await;
                shared.engine.send(Command::SweepIdle { timeout });
            }
        });
    }
    let ips = hygiene::IpLimiter::new(shared.config.max_connections_per_ip);
    let accept_errors = hygiene::AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                accept_errors.failed(&err);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        accept_errors.succeeded();
        tokio::spawn(hygiene::serve_tcp(
            stream,
            peer,
            shared.clone(),
            ips.clone(),
        ));
    }
    drop(listener);
    let reason = "server-shutdown: the server is restarting; reconnect";
    tracing::info!(
        clients = shared.open_connections.load(Ordering::Acquire),
        grace_s = shared.config.shutdown_grace.as_secs_f64(),
        "stopped accepting; flushing clients"
    );
    shared.engine.send(Command::CloseAll {
        code: 1001,
        reason: reason.into(),
        discard_queued: false,
    });
    if !shared.wait_for_clients(shared.config.shutdown_grace).await {
        let left = shared.open_connections.load(Ordering::Acquire);
        tracing::warn!(
            left,
            "grace period over; closing clients that are still behind"
        );
        shared.engine.send(Command::CloseAll {
            code: 1001,
            reason: reason.into(),
            discard_queued: true,
        });
        shared.wait_for_clients(Duration::from_secs(1)).await;
    }
    // Requests still arriving now find no log and answer 503; the file is
    // closed cleanly so the next start needs no recovery.
    shared.engine.close_log().await;
}

impl Shared {
    /// Waits until every WebSocket connection and ingest request has ended,
    /// or `limit` passes; returns whether they all ended.
    async fn wait_for_clients(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let idle = || {
            self.open_connections.load(Ordering::Acquire) == 0
                && self.ingest_permits.available_permits()
                    == self.config.max_concurrent_ingests.max(1)
        };
        while !idle() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}
