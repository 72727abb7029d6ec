//! The Vista host: loads projector plugins, ingests events through them
//! into a host-owned entity store, and streams views of that store to
//! WebSocket clients speaking the HyperStack protocol.
//!
//! # Layout
//!
//! The HTTP wing goes one way: [`accept`] -> [`server`] -> [`ws`].
//!
//! - [`accept`]: the listening port: accepting, the header timeout, the
//!   per-IP cap, rate-limited accept errors.
//! - [`server`]: the one route table: WebSocket upgrades and the HTTP API
//!   (`/ingest/{stream}`, `/plugins`, `/healthz`, `/metrics`).
//! - [`http`]: response shapes every route answers with, and what accept
//!   attaches to a request (peer address, the per-IP slot).
//! - [`dashboard`]: the live dashboard page at `/` (assets compiled in)
//!   and the admin endpoints it polls.
//! - [`ws`]: one WebSocket client: reading its messages, writing its
//!   outbox, its close codes and lingering close.
//! - [`cli`]: `vista ingest`, `vista tail` and `vista plugins`, clients
//!   of a running host; the `vista serve` options and configuration file.
//! - [`redact`]: masking tokens and passwords in what is printed or logged.
//! - [`auth`]: subscriber tokens (JWT), ingest and admin credentials,
//!   origins, hosts and rate limits.
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
//!   as their log (publishing, consuming in order, build markers), and that
//!   stream as the engine's log (`JetStreamLog`).
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
//! - [`sources`]: live views over PostgreSQL (logical replication) and NATS
//!   JetStream streams (`--source`), each position logged with the events.
//!
//! The crate is a facade: [`Config`], [`Shared`], [`run`] and a few
//! re-exports serve the `vista` binary; `auth`, `cluster`, `durable`,
//! `filters`, `ids`, `store`, `views`, `frame`, `scaffold` and `typegen` are public
//! for the binary's subcommands, the view benchmark and the model tests;
//! everything else is `pub(crate)`.
//!
//! [`run`] (in [`accept`]) takes an already-bound listener, so tests bind port 0.

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

pub(crate) mod accept;
pub(crate) mod codes;
pub(crate) mod dashboard;
pub mod dead_letters;
pub(crate) mod demo;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod ingest;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod plugins;
pub(crate) mod projector;
pub(crate) mod protocol;
pub(crate) mod reproject;
pub(crate) mod server;
pub(crate) mod shutdown;
pub mod sources;
pub mod supervise;
pub(crate) mod vocab;
pub(crate) mod watcher;
pub(crate) mod ws;

pub use accept::run;
pub use demo::run as run_demo_feed;
pub use plugins::{check_answer, set_checker, CheckAnswer};
pub use plugins::{set_process_isolation, ProcessSettings};
pub use projector::child::run as run_projector_process;
pub use watcher::{watch as watch_plugins, PluginWatcher};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, EngineHandle};

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
    /// Change streams turned into ingest requests (`--source NAME=URL`).
    pub sources: Vec<sources::SourceSpec>,
}

/// State shared by every task of a running host.
pub struct Shared {
    /// Commands to the engine thread.
    pub engine: EngineHandle,
    /// The host's settings.
    pub config: Config,
    next_conn: AtomicU64,
    /// Open WebSocket connections, checked against `config.max_connections`.
    open_connections: AtomicUsize,
    /// Who may connect, ingest and administer.
    pub auth: auth::Auth,
    /// Ingest requests being read or processed.
    ingest_permits: tokio::sync::Semaphore,
    /// The stop signal, and the connections and requests it waits for.
    pub(crate) shutdown: shutdown::Shutdown,
    /// The log as the HTTP side sees it: where an ingest goes, `/readyz`,
    /// `/status` (the engine holds the log itself).
    pub(crate) log: Arc<dyn engine::log::Front>,
    /// The sources' states, for `GET /sources`.
    pub(crate) sources: sources::Registry,
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
        let shutdown = shutdown::Shutdown::default();
        if config.cluster.is_some() && !config.sources.is_empty() {
            return Err(StartError::Cluster(
                "--source is not supported with --cluster yet (a source must run on one host at a time); run sources on a single host with --data".into(),
            ));
        }
        let mut positions = std::collections::BTreeMap::new();
        let mut engine = Engine::new(
            config.cache_dir.clone(),
            config.max_subscriptions_per_connection,
            config.projector_timeout,
        );
        // The log the engine holds, and its front for the HTTP side. A
        // shared log is installed before the plugins load (their builds are
        // staged until its markers); a local one by recovery, after them.
        let mut cluster = None;
        let mut front = engine::log::EngineFront { health: None };
        if let Some(cluster_config) = &config.cluster {
            let log = match &config.data_dir {
                Some(dir) => {
                    let log = durable::EventLog::open(dir)?;
                    log.claim_mode(&format!("cluster:{}", cluster_config.stream))?;
                    Some(Arc::new(log))
                }
                None => None,
            };
            let (link, status, requests) = cluster::channels(0);
            let persistence = cluster::ClusterPersistence {
                log,
                checkpoint_every_events: config.checkpoint_every_events,
                checkpoint_every: config.checkpoint_every,
            };
            let log = cluster::JetStreamLog::new(link, persistence, engine.log_reports());
            engine.use_log(Box::new(log));
            cluster = Some((cluster_config.clone(), status, requests));
        }
        engine.load_plugin_dir(&config.plugins_dir);
        match (&config.data_dir, &cluster) {
            (_, Some(_)) => {
                engine.recover_ordered()?;
            }
            (Some(dir), None) => {
                let log = durable::EventLog::open(dir)?;
                log.claim_mode("single")?;
                let log = Arc::new(log);
                for mark in log.source_positions()? {
                    positions.insert(mark.source, mark.position);
                }
                front.health = Some(log.health());
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
        let log: Arc<dyn engine::log::Front> = match cluster {
            Some((cluster_config, status, requests)) => cluster::Cluster::start(
                cluster_config,
                status,
                requests,
                engine.clone(),
                shutdown.token(),
            )
            .await
            .map_err(StartError::Cluster)?,
            None => Arc::new(front),
        };
        let sources = sources::start(
            &config.sources,
            &engine,
            positions,
            config.data_dir.is_some(),
            shutdown.token(),
        );
        Ok(Arc::new(Self {
            sources,
            log,
            engine,
            next_conn: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            ingest_permits: tokio::sync::Semaphore::new(config.max_concurrent_ingests.max(1)),
            shutdown,
            auth,
            config,
        }))
    }

    /// Applies an ingest request: published first when the log orders
    /// requests (answered once this host applied it), else through the
    /// engine.
    pub async fn ingest(
        &self,
        stream: &str,
        body: Arc<ingest::IngestBody>,
    ) -> Result<engine::Ingested, engine::IngestError> {
        self.log.ingest(&self.engine, stream, body).await
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
