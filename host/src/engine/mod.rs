//! The engine: sole owner of plugins, entity store, views, subscriptions and
//! connection outboxes, running on a thread of its own.
//!
//! Everything that changes server state reaches the engine as a
//! [`Command`] on one channel ([`EngineHandle`]); requests that need an
//! answer carry a oneshot reply. Async workers (HTTP handlers, connection
//! readers) only send commands and await replies: they never run plugin
//! code, view maintenance or gzip, and never block on the engine, so
//! `/healthz`, `/metrics` and accepting connections keep answering however
//! busy it is.
//!
//! Serializing ingest commits and subscribes on one thread is what makes a
//! snapshot and the live frames after it exact: a subscription sees every
//! mutation either in its snapshot or as a frame, never both, never
//! neither.
//!
//! An ingest request goes through two steps:
//! 1. *projection*: the request is handed to the projector thread of every
//!    plugin consuming the stream ([`crate::projector`]); the engine goes on
//!    with other commands meanwhile. A plugin projects one request at a
//!    time: a request for a busy plugin waits in `deferred`, in arrival
//!    order, so each projection reads the state its predecessors committed.
//! 2. *commit*: when every projector answered, their mutations are applied
//!    to the store in event order (then plugin name order), views are
//!    maintained and frames delivered; then the HTTP request is answered.
//!    With a data directory, the request's [`LogRecord`] (its body and the
//!    `_seq` range reserved for its mutations) goes to the log writer
//!    first, and the request is applied only once the record is durable:
//!    nothing a client sees or is told is ever undone by a crash. Requests
//!    commit one after another in record order, so `_seq` order is
//!    application order and a replay reproduces it exactly. A big request
//!    commits in chunks of [`COMMIT_CHUNK`] mutations and the engine handles
//!    waiting commands (subscribes, other requests' projections) between
//!    chunks. Each mutation is still either in a snapshot or sent as a
//!    frame; a snapshot taken between chunks holds part of the request.
//!    A plugin projects one request at a time. Its next request may start
//!    while the previous one waits for the log: it projects over the store
//!    plus the not-yet-applied mutations of the plugin's logged requests
//!    (which will be applied first), so requests to one plugin share
//!    fsyncs too. Meanwhile a commit involving a plugin waits while that
//!    plugin projects, so a projection never reads a half-applied state.
//!    If a record cannot be logged, the plugin's later requests, which
//!    projected over it, are refused with it.
//!
//! A projector that makes no progress for `--projector-timeout-ms` is
//! *stuck*: its request is answered 503 `projector-timeout` with nothing
//! applied, its streams answer 503 `plugin-stuck` until a new build of it
//! loads, and everything else carries on.

mod cluster;
mod reprojection;

pub use cluster::ClusterPersistence;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use vista_plugin_api::view::ViewDef;
use vista_plugin_api::{Manifest, Mutation};

use crate::durable::{
    Checkpoint, EventLog, FsyncPolicy, LogRecord, LogStats, LogWriter, WriterJob, WriterReport,
};
use crate::frame::{socket_issue, Frame};
use crate::ingest::IngestBody;
use crate::outbox::{Outbox, Outgoing, PushError, Pushed, SnapshotJob};
use crate::plugins::{
    self, view_ids, BuildEventKind, LoadError, PluginLibrary, PluginReport, PluginState,
};
use crate::projector::{ProjectJob, Projected, Projection, ProjectorWorker, SharedStore};
use crate::reproject::{ReprojectReport, ReprojectionStatus};
use crate::store::Store;
use crate::views::{Notice, Removed, SubscribeError, Views};
use crate::vocab::{ConnId, SubscribeRequest};
use reprojection::Reprojection;

/// Result of a successful ingest.
#[derive(Debug, PartialEq, Eq)]
pub struct Ingested {
    /// Events accepted.
    pub accepted: usize,
    /// `_seq` of the last mutation applied (the current one if none were).
    pub seq: String,
}

impl Ingested {
    /// The outcome of a record that applies no events (a build marker).
    fn nothing() -> Self {
        Ingested {
            accepted: 0,
            seq: String::new(),
        }
    }
}

/// Why an ingest request was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No loaded plugin consumes the stream.
    #[error("no plugin consumes stream {0:?}")]
    UnknownStream(String),
    /// A projector returned an error or panicked.
    #[error("plugin {plugin:?} failed on event {position}: {message}")]
    Projector {
        /// Plugin name.
        plugin: String,
        /// Event position in the request.
        position: usize,
        /// The plugin's message.
        message: String,
    },
    /// A projector made no progress within the deadline; it is now stuck.
    #[error("plugin {plugin:?} made no progress for {timeout_ms} ms; it is marked stuck until a new build loads")]
    ProjectorTimeout {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// A plugin consuming the stream is stuck from an earlier request.
    #[error("plugin {plugin:?} is stuck (a projector timed out); load a new build of it")]
    PluginStuck {
        /// Plugin name.
        plugin: String,
    },
    /// The event log could not be written; nothing was applied.
    #[error("the event log cannot be written ({0}); nothing was applied, retry later")]
    StorageUnavailable(String),
    /// The engine stopped (the server is shutting down).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Cluster mode: the shared log (NATS JetStream) did not take the
    /// request; nothing was applied anywhere.
    #[error("the cluster log is unavailable ({0}); nothing was applied, retry later")]
    LogUnavailable(String),
    /// Cluster mode: this host stopped consuming the log (a missing build,
    /// a stuck projector), so it could not apply the request; nothing was
    /// published.
    #[error("this host is paused and cannot apply new requests: {0}; send them to another host")]
    HostPaused(String),
    /// Cluster mode: the body is larger than the NATS server's message limit.
    #[error("the cluster log takes messages of at most {max_payload} bytes")]
    TooLargeForLog {
        /// The NATS server's `max_payload`.
        max_payload: usize,
    },
    /// Cluster mode: the log took the request but this host has not applied
    /// it yet (it is consuming slowly or paused); it will be.
    #[error("in the log at position {stream_seq}, not applied on this host yet")]
    NotAppliedYet {
        /// The record's stream sequence.
        stream_seq: u64,
    },
}

/// Why a reprojection cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReprojectError {
    /// No such plugin is loaded.
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    /// The host keeps no log (`--in-memory`).
    #[error("this host runs --in-memory: there is no event log to replay")]
    InMemory,
    /// Records were dropped by the retention policy.
    #[error("the event log no longer holds the plugin's streams from their first event: records 1 to {0} were dropped by --retain")]
    LogIncomplete(u64),
    /// One is already running for this plugin.
    #[error("a reprojection of {0:?} is already running")]
    AlreadyRunning(String),
    /// The plugin is stuck.
    #[error("plugin {0:?} is stuck; load a new build first")]
    Stuck(String),
    /// The thread could not start or the log could not be read.
    #[error("{0}")]
    Failed(String),
}

/// Why a plugin build was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The file could not be loaded as a plugin.
    #[error("{0}")]
    Load(String),
    /// An entity type already belongs to another plugin.
    #[error("entity {entity:?} is already owned by plugin {owner:?} ({file})")]
    EntityTaken {
        /// The entity type.
        entity: String,
        /// The plugin owning it.
        owner: String,
        /// That plugin's file.
        file: String,
    },
    /// A view id is already served by another plugin.
    #[error("manifest error: view {view:?} is already provided by plugin {owner:?}")]
    ViewTaken {
        /// The view id.
        view: String,
        /// The plugin providing it.
        owner: String,
    },
    /// The projector thread could not be started.
    #[error("cannot start the projector thread: {0}")]
    Thread(String),
}

/// A request to the engine thread.
pub enum Command {
    /// Project and commit an ingest request.
    Ingest {
        /// Stream name.
        stream: String,
        /// The events.
        body: Arc<IngestBody>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    },
    /// A projector thread finished a request.
    Projected(Projected),
    /// The log writer reports.
    Log(WriterReport),
    /// Rebuild a plugin's entities from the log (`POST /plugins/{name}/reproject`).
    Reproject {
        /// The plugin.
        plugin: String,
        /// Started, or why not.
        reply: oneshot::Sender<Result<(), ReprojectError>>,
    },
    /// A reprojector thread reports.
    Reprojector(ReprojectReport),
    /// Cluster mode: the next record of the shared log.
    ClusterRecord(crate::cluster::LogEntry),
    /// Cluster mode: an ingest of this host waits for its record.
    ClusterWait {
        /// The id in the record's `Vista-Request` header.
        request: String,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    },
    /// Cluster mode: an ingest stopped waiting.
    ClusterForget {
        /// Its id.
        request: String,
    },
    /// Close the event log cleanly (shutdown): everything queued is
    /// written, then the database file is closed, so the next start needs
    /// no recovery.
    CloseLog {
        /// Answered once closed.
        reply: oneshot::Sender<()>,
    },
    /// What `GET /status` shows about the log.
    LogStatus {
        /// Where the stats go.
        reply: oneshot::Sender<Option<LogStats>>,
    },
    /// A connection opened.
    Connect {
        /// Its id.
        conn: ConnId,
        /// Its outbox.
        outbox: Arc<Outbox>,
    },
    /// A connection closed.
    Disconnect {
        /// Its id.
        conn: ConnId,
    },
    /// Start or replace a subscription; the answer goes to the outbox.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// What it asked for.
        request: SubscribeRequest,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// View id.
        view: String,
        /// Key, `None` for all keys.
        key: Option<String>,
    },
    /// Install a mapped plugin build (or record why it was refused).
    Load {
        /// The file in the plugins directory.
        file: PathBuf,
        /// The mapped library, or the load error.
        loaded: Box<Result<PluginLibrary, LoadError>>,
        /// Where the outcome goes (plugin name or reason).
        reply: Option<oneshot::Sender<Result<String, InstallError>>>,
    },
    /// A plugin file was deleted.
    Unload {
        /// The file in the plugins directory.
        file: PathBuf,
    },
    /// What `GET /plugins` shows.
    Reports {
        /// Where the reports go.
        reply: oneshot::Sender<Vec<PluginReport>>,
    },
    /// What `GET /admin/views` shows.
    Views {
        /// Where the summaries go.
        reply: oneshot::Sender<Vec<crate::views::ViewSummary>>,
    },
    /// Ping quiet clients, close silent ones.
    SweepIdle {
        /// The idle timeout.
        timeout: Duration,
    },
    /// Close every client.
    CloseAll {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
        /// Drop what is still queued so the close goes out next.
        discard_queued: bool,
    },
}

/// The async side's handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Sends a command that needs no answer. Ignored once the engine stopped.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Projects and commits an ingest request.
    pub async fn ingest(
        &self,
        stream: &str,
        body: Arc<IngestBody>,
    ) -> Result<Ingested, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ingest {
            stream: stream.to_owned(),
            body,
            reply,
        });
        answer.await.unwrap_or(Err(IngestError::ShuttingDown))
    }

    /// The event log's figures (`None` in memory).
    pub async fn log_status(&self) -> Option<LogStats> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::LogStatus { reply });
        answer.await.ok().flatten()
    }

    /// Closes the event log (the last step of a shutdown).
    pub async fn close_log(&self) {
        let (reply, answer) = oneshot::channel();
        self.send(Command::CloseLog { reply });
        let _ = answer.await;
    }

    /// Starts rebuilding a plugin's entities from the log.
    pub async fn reproject(&self, plugin: &str) -> Result<(), ReprojectError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reproject {
            plugin: plugin.to_owned(),
            reply,
        });
        answer
            .await
            .unwrap_or_else(|_| Err(ReprojectError::Failed("the server is shutting down".into())))
    }

    /// Every plugin file seen, for `GET /plugins`.
    pub async fn reports(&self) -> Vec<PluginReport> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reports { reply });
        answer.await.unwrap_or_default()
    }

    /// Every view with its counts, for `GET /admin/views`.
    pub async fn views(&self) -> Vec<crate::views::ViewSummary> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Views { reply });
        answer.await.unwrap_or_default()
    }

    /// Installs a mapped build; blocks the calling (non-async) thread until
    /// the engine answers. Used by the file watcher.
    pub fn load_blocking(
        &self,
        file: &Path,
        loaded: Result<PluginLibrary, LoadError>,
    ) -> Result<String, InstallError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Load {
            file: file.to_owned(),
            loaded: Box::new(loaded),
            reply: Some(reply),
        });
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err(InstallError::Load("the server is shutting down".into())))
    }
}

/// Mutations applied per commit step before the engine looks at its
/// commands again.
pub const COMMIT_CHUNK: usize = 512;

/// Starts the engine thread; it runs until every [`EngineHandle`] is dropped.
pub fn spawn(mut engine: Engine) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let handle = EngineHandle {
        commands: engine.commands.clone(),
    };
    let commands = engine
        .queue
        .take()
        .expect("the engine thread is started once");
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            // The engine holds a sender for its projector threads' answers,
            // so the channel never disconnects; `Stop` is implied by the
            // process ending.
            loop {
                if !engine.can_commit() {
                    let wait = engine.next_deadline().unwrap_or(Duration::from_secs(3600));
                    match commands.recv_timeout(wait) {
                        Ok(command) => engine.handle(command),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    engine.commit_step();
                    // Between chunks: whatever arrived meanwhile, bounded so
                    // a command flood cannot starve the commit.
                    for command in commands.try_iter().take(256) {
                        engine.handle(command);
                    }
                }
                engine.check_deadlines();
                engine.cluster_pump();
            }
        })
        .expect("start the engine thread");
    (handle, thread)
}

/// A loaded plugin build and its projector thread.
struct LoadedPlugin {
    lib: Arc<PluginLibrary>,
    worker: ProjectorWorker,
    stuck: bool,
}

/// An ingest request being projected.
struct InFlight {
    /// Set when a request this one projected over could not be logged.
    doomed: Option<String>,
    stream: Arc<str>,
    body: Arc<IngestBody>,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
    /// Consuming plugins, in name order, with their answers so far.
    parts: Vec<Part>,
}

struct Part {
    plugin: String,
    outcome: Option<Projection>,
    /// Progress probe: the worker's counter when last seen changing, and when.
    last_progress: u64,
    progress_at: Instant,
}

/// A request whose projections all succeeded, being applied chunk by chunk.
struct Commit {
    /// Mutations in commit order, still to apply.
    mutations: std::vec::IntoIter<Mutation>,
    plugins: Vec<String>,
    events: usize,
    /// `_seq` reserved for the first mutation.
    first_seq: u64,
    /// Whether the first chunk has been applied.
    started: bool,
    /// Its log record (0 without a data directory).
    rec: u64,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
}

/// The engine's side of the event log.
struct Durable {
    log: Arc<EventLog>,
    writer: LogWriter,
    next_rec: u64,
    checkpoint_every_events: u64,
    checkpoint_every: Duration,
    events_since_checkpoint: u64,
    last_checkpoint: Instant,
}

/// Where accepted requests go before they are applied.
enum Storage {
    /// Nowhere: applied at once (`--in-memory`).
    InMemory,
    /// The event log: applied once durable.
    Logged(Durable),
    /// The log was closed at shutdown: requests are refused, never applied
    /// unlogged.
    Closed,
}

/// How the engine keeps its state across restarts.
pub struct Persistence {
    /// The open log.
    pub log: Arc<EventLog>,
    /// When it is fsynced.
    pub fsync: FsyncPolicy,
    /// Checkpoint after this many events...
    pub checkpoint_every_events: u64,
    /// ...or this long, whichever comes first.
    pub checkpoint_every: Duration,
    /// How much of the log is kept.
    pub retention: crate::durable::Retention,
}

/// An ingest request waiting for a busy plugin.
struct Waiting {
    stream: String,
    body: Arc<IngestBody>,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
}

/// The state of the whole server, owned by the engine thread.
pub struct Engine {
    store: SharedStore,
    views: Views,
    /// Loaded plugins by name.
    plugins: BTreeMap<String, LoadedPlugin>,
    /// What `GET /plugins` shows, by plugin file.
    reports: BTreeMap<PathBuf, PluginReport>,
    /// Outboxes of open connections.
    conns: HashMap<ConnId, Arc<Outbox>>,
    /// Where plugin files are copied before being mapped.
    cache_dir: PathBuf,
    max_subscriptions: usize,
    projector_timeout: Duration,
    in_flight: HashMap<u64, InFlight>,
    /// Plugins projecting a request, and which.
    busy: HashMap<String, u64>,
    deferred: VecDeque<Waiting>,
    /// Requests being committed, one after another, chunk by chunk.
    committing: VecDeque<Commit>,
    /// Requests whose log record is not durable yet, in record order.
    awaiting_log: VecDeque<Commit>,
    /// The last `_seq` reserved.
    last_reserved_seq: u64,
    storage: Storage,
    /// Set while the log is replayed at start: nothing is logged again.
    replaying: bool,
    /// Reprojections by plugin (the latest of each).
    reprojections: BTreeMap<String, Reprojection>,
    /// Cluster mode: the shared log's records and the staged builds.
    cluster: Option<cluster::ClusterSide>,
    next_ticket: u64,
    commands: mpsc::Sender<Command>,
    queue: Option<mpsc::Receiver<Command>>,
}

impl Engine {
    /// An engine with no plugins.
    pub fn new(cache_dir: PathBuf, max_subscriptions: usize, projector_timeout: Duration) -> Self {
        let (commands, queue) = mpsc::channel();
        Self {
            store: Arc::new(RwLock::new(Store::new())),
            views: Views::new(),
            plugins: BTreeMap::new(),
            reports: BTreeMap::new(),
            conns: HashMap::new(),
            cache_dir,
            max_subscriptions,
            projector_timeout,
            in_flight: HashMap::new(),
            busy: HashMap::new(),
            deferred: VecDeque::new(),
            committing: VecDeque::new(),
            awaiting_log: VecDeque::new(),
            last_reserved_seq: 0,
            storage: Storage::InMemory,
            replaying: false,
            reprojections: BTreeMap::new(),
            cluster: None,
            next_ticket: 1,
            commands,
            queue: Some(queue),
        }
    }

    /// Cluster mode: records come from the shared log, plugin builds wait
    /// for their markers ([`crate::cluster`]).
    pub(crate) fn enable_cluster(&mut self, link: crate::cluster::EngineLink) {
        self.cluster = Some(cluster::ClusterSide::new(link));
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::ClusterRecord(entry) => self.cluster_record(entry),
            Command::ClusterWait { request, reply } => self.cluster_wait(request, reply),
            Command::ClusterForget { request } => self.cluster_forget(&request),
            Command::Ingest {
                stream,
                body,
                reply,
            } => self.ingest(Waiting {
                stream,
                body,
                reply,
            }),
            Command::Projected(projected) => self.projected(projected),
            Command::Log(report) => self.logged(report),
            Command::CloseLog { reply } => {
                if self.cluster.is_some() {
                    self.close_cluster();
                }
                if matches!(self.storage, Storage::Logged(_)) {
                    let Storage::Logged(durable) =
                        std::mem::replace(&mut self.storage, Storage::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    durable.writer.close();
                    drop(durable.log);
                    tracing::info!("event log closed");
                }
                let _ = reply.send(());
            }
            Command::LogStatus { reply } => {
                let stats = match &self.storage {
                    Storage::Logged(durable) => durable.log.stats().ok(),
                    _ => None,
                };
                let _ = reply.send(stats);
            }
            Command::Connect { conn, outbox } => {
                self.conns.insert(conn, outbox);
            }
            Command::Disconnect { conn } => {
                self.views.remove_conn(conn);
                self.conns.remove(&conn);
            }
            Command::Subscribe { conn, request } => self.subscribe(conn, &request),
            Command::Unsubscribe { conn, view, key } => {
                if let Removed::Active(generation) =
                    self.views.unsubscribe(conn, &view, key.as_deref())
                {
                    self.cancel_snapshot(conn, generation);
                }
            }
            Command::Load {
                file,
                loaded,
                reply,
            } => {
                let outcome = self.accept_load(&file, *loaded);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Command::Unload { file } => self.unload_file(&file),
            Command::Reports { reply } => {
                let _ = reply.send(self.plugin_reports());
            }
            Command::Views { reply } => {
                let _ = reply.send(self.views.summaries());
            }
            Command::Reproject { plugin, reply } => {
                let _ = reply.send(self.start_reprojection(&plugin));
            }
            Command::Reprojector(report) => self.reprojected(report),
            Command::SweepIdle { timeout } => {
                self.sweep_idle(timeout);
            }
            Command::CloseAll {
                code,
                reason,
                discard_queued,
            } => {
                for outbox in self.conns.values() {
                    outbox.close(code, &reason, discard_queued);
                }
            }
        }
    }

    /// Loads every `*.so` file of `dir` (sorted by name). Bad files are
    /// logged and reported; the rest load.
    pub fn load_plugin_dir(&mut self, dir: &Path) {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "so" || x == "dylib"))
                .collect(),
            Err(err) => {
                tracing::error!(dir = %dir.display(), %err, "cannot read plugins directory");
                return;
            }
        };
        files.sort();
        for file in files {
            let loaded = plugins::load(&file, &self.cache_dir);
            let _ = self.accept_load(&file, loaded);
        }
    }

    /// Installs a freshly mapped plugin, or records why it was refused.
    ///
    /// A plugin whose name is already loaded replaces the running version:
    /// its views are diffed and subscribers converge (see
    /// [`Engine::install`]). A refused build leaves the running version in
    /// place; `GET /plugins` shows the error on that file.
    pub fn accept_load(
        &mut self,
        file: &Path,
        loaded: Result<PluginLibrary, LoadError>,
    ) -> Result<String, InstallError> {
        let result = loaded
            .map_err(|e| InstallError::Load(one_line(&e.to_string())))
            .and_then(|lib| match self.cluster {
                Some(_) => self.stage(lib),
                None => self.install(lib),
            });
        match &result {
            Ok(name) => tracing::info!(file = %file.display(), plugin = %name, "plugin loaded"),
            Err(reason) => {
                tracing::error!("plugin refused: {}: {reason}", file.display());
                // A previous build from this file keeps serving, if any.
                let serving = self
                    .reports
                    .get(file)
                    .is_some_and(|report| report.state != PluginState::Failed);
                if !serving {
                    let mut failed = PluginReport::failed(file, reason.to_string());
                    if let Some(previous) = self.reports.remove(file) {
                        failed.history = previous.history;
                    }
                    self.reports.insert(file.to_owned(), failed);
                }
                let report = self.reports.get_mut(file).expect("inserted above");
                report.last_error = Some(reason.to_string());
                report.record(BuildEventKind::Refused, Some(reason.to_string()));
            }
        }
        result
    }

    /// Validates a plugin against the others, then installs it or swaps it
    /// for the running version of the same name.
    fn install(&mut self, lib: PluginLibrary) -> Result<String, InstallError> {
        let manifest = lib.manifest.clone();
        let name = manifest.name.clone();
        for entity in &manifest.entities {
            if let Some(owner) = self.plugins.values().find(|p| {
                // By name: the same type declared with another schema
                // is still the same type.
                p.lib.manifest.name != name
                    && p.lib
                        .manifest
                        .entities
                        .iter()
                        .any(|e| e.name == entity.name)
            }) {
                return Err(InstallError::EntityTaken {
                    entity: entity.name.clone(),
                    owner: owner.lib.manifest.name.clone(),
                    file: owner.lib.file.display().to_string(),
                });
            }
        }
        for id in view_ids(&manifest) {
            if let Some(existing) = self.views.get(&id).filter(|v| v.plugin != name) {
                return Err(InstallError::ViewTaken {
                    view: id,
                    owner: existing.plugin.clone(),
                });
            }
        }
        let lib = Arc::new(lib);
        let commands = self.commands.clone();
        let worker = ProjectorWorker::spawn(lib.clone(), self.store.clone(), move |done| {
            let _ = commands.send(Command::Projected(done));
        })
        .map_err(|e| InstallError::Thread(e.to_string()))?;
        let previous = self.plugins.remove(&name);
        let mut notes: Vec<(ConnId, Notice)> = Vec::new();
        self.apply_manifest_change(
            previous.as_ref().map(|p| &p.lib.manifest),
            Some(&manifest),
            &mut |conn, item| notes.push((conn, item)),
        );
        self.send_notes(notes);
        if let Some(previous) = &previous {
            if previous.lib.file != lib.file {
                if let Some(report) = self.reports.get_mut(&previous.lib.file) {
                    report.state = PluginState::Superseded;
                    report.record(BuildEventKind::Superseded, None);
                }
            }
            if previous.stuck {
                tracing::info!(plugin = %name, "a new build replaces the stuck one; its streams are served again");
            }
            tracing::info!(plugin = %name, from = %previous.lib.manifest.version, to = %manifest.version, "plugin swapped");
        }
        let history = self
            .reports
            .remove(&lib.file)
            .map(|previous| previous.history)
            .unwrap_or_default();
        let mut report = PluginReport {
            loaded_at: Some(plugins::unix_millis()),
            history,
            ..PluginReport::of_build(&lib, PluginState::Loaded)
        };
        report.record(BuildEventKind::Loaded, None);
        self.reports.insert(lib.file.clone(), report);
        self.plugins.insert(
            name.clone(),
            LoadedPlugin {
                lib,
                worker,
                stuck: false,
            },
        );
        // Requests that waited for the stuck build can run now.
        self.pump_deferred();
        // In cluster mode the build marker starts it, at one position.
        if manifest.reproject && previous.is_some() && self.cluster.is_none() {
            match self.start_reprojection(&name) {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(plugin = %name, %err, "the new build asks for reprojection; not started")
                }
            }
        }
        Ok(name)
    }

    /// Unloads the plugin loaded from `file` (the file was deleted): its
    /// projector stops, its views go (subscribers get `view-removed` and
    /// stay pending), its entity state stays for a later build to serve.
    pub fn unload_file(&mut self, file: &Path) {
        if self.cluster.is_some() {
            // Hosts must not stop projecting at different moments.
            self.unstage_file(file);
            return;
        }
        self.reports.remove(file);
        let Some(name) = self
            .plugins
            .values()
            .find(|p| p.lib.file == file)
            .map(|p| p.lib.manifest.name.clone())
        else {
            return;
        };
        let plugin = self.plugins.remove(&name).expect("found above");
        let mut notes: Vec<(ConnId, Notice)> = Vec::new();
        self.apply_manifest_change(Some(&plugin.lib.manifest), None, &mut |conn, item| {
            notes.push((conn, item))
        });
        self.send_notes(notes);
        self.pump_deferred();
        tracing::info!(file = %file.display(), plugin = %name, "plugin unloaded; its entities are kept");
    }

    /// Turns the views of `old` into those of `new`: removed views first
    /// (`view-removed`), then redefined ones (converging deltas), then added
    /// ones (pending subscriptions start).
    fn apply_manifest_change(
        &mut self,
        old: Option<&Manifest>,
        new: Option<&Manifest>,
        notify: &mut dyn FnMut(ConnId, Notice),
    ) {
        let entities = |m: Option<&Manifest>| -> Vec<String> {
            m.map(|m| m.entities.iter().map(|e| e.name.clone()).collect())
                .unwrap_or_default()
        };
        let derived = |m: Option<&Manifest>| -> BTreeMap<String, ViewDef> {
            m.map(|m| m.views.iter().map(|v| (v.id.clone(), v.clone())).collect())
                .unwrap_or_default()
        };
        let (old_entities, new_entities) = (entities(old), entities(new));
        let (old_views, new_views) = (derived(old), derived(new));
        let plugin = new.or(old).map(|m| m.name.clone()).unwrap_or_default();
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        for id in old_views.keys().filter(|id| !new_views.contains_key(*id)) {
            self.views.remove_view(id, notify);
        }
        for entity in old_entities.iter().filter(|e| !new_entities.contains(e)) {
            for mode in ["list", "state", "append"] {
                self.views.remove_view(&format!("{entity}/{mode}"), notify);
            }
        }
        for (id, def) in new_views
            .iter()
            .filter(|(id, _)| old_views.contains_key(*id))
        {
            self.views.redefine(id, def.clone(), &store, notify);
        }
        for entity in new_entities.iter().filter(|e| !old_entities.contains(e)) {
            self.views.add_base_views(entity, &plugin, &store, notify);
        }
        for (_, def) in new_views
            .into_iter()
            .filter(|(id, _)| !old_views.contains_key(id))
        {
            self.views.add_derived(def, &plugin, &store, notify);
        }
    }

    /// Queues view-change notices on their connections' outboxes.
    fn send_notes(&self, notes: Vec<(ConnId, Notice)>) {
        for (conn, notice) in notes {
            if let Some(outbox) = self.conns.get(&conn) {
                tell(outbox, notice);
            }
        }
    }

    /// Starts projecting a request, or queues it behind a busy plugin.
    fn ingest(&mut self, request: Waiting) {
        let consumers: Vec<String> = self
            .plugins
            .values()
            .filter(|p| p.lib.manifest.streams.contains(&request.stream))
            .map(|p| p.lib.manifest.name.clone())
            .collect();
        let shares_a_plugin = |w: &Waiting| {
            self.consumers(&w.stream)
                .any(|name| consumers.contains(&name))
        };
        let waits = consumers.iter().any(|c| !self.can_project(c))
            || self.deferred.iter().any(shares_a_plugin);
        if waits {
            self.deferred.push_back(request);
        } else {
            self.dispatch(request, consumers);
        }
    }

    /// Whether `plugin` may start projecting: it is not projecting (or held
    /// by a reprojection) and none of its requests is being applied.
    fn can_project(&self, plugin: &str) -> bool {
        !self.busy.contains_key(plugin)
            && !self
                .committing
                .iter()
                .any(|c| c.plugins.iter().any(|p| p == plugin))
    }

    /// Whether the oldest commit may apply its next chunk: it started
    /// already, or none of its plugins is projecting (a projection must not
    /// read a half-applied request it counts as pending).
    fn can_commit(&self) -> bool {
        self.committing
            .front()
            .is_some_and(|c| c.started || !c.plugins.iter().any(|p| self.busy.contains_key(p)))
    }

    /// The logged, not yet applied mutations of requests involving any of
    /// `plugins`, in log order.
    fn pending_for(&self, plugins: &[String]) -> Vec<Mutation> {
        self.awaiting_log
            .iter()
            .filter(|c| c.plugins.iter().any(|p| plugins.contains(p)))
            .flat_map(|c| c.mutations.as_slice().iter().cloned())
            .collect()
    }

    fn consumers<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = String> + 'a {
        self.plugins
            .values()
            .filter(move |p| p.lib.manifest.streams.iter().any(|s| s == stream))
            .map(|p| p.lib.manifest.name.clone())
    }

    /// Hands a request to its consumers' projector threads.
    fn dispatch(&mut self, request: Waiting, consumers: Vec<String>) {
        let Waiting {
            stream,
            body,
            reply,
        } = request;
        if consumers.is_empty() {
            let _ = reply.send(Err(IngestError::UnknownStream(stream)));
            return;
        }
        if let Some(stuck) = consumers.iter().find(|c| self.plugins[*c].stuck) {
            let _ = reply.send(Err(IngestError::PluginStuck {
                plugin: stuck.clone(),
            }));
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let stream: Arc<str> = stream.into();
        let now = Instant::now();
        let pending = Arc::new(self.pending_for(&consumers));
        let mut parts = Vec::with_capacity(consumers.len());
        for name in consumers {
            let plugin = &self.plugins[&name];
            let job = ProjectJob {
                ticket,
                stream: stream.clone(),
                body: body.clone(),
                pending: pending.clone(),
            };
            let outcome = (!plugin.worker.submit(job)).then(|| {
                Err(crate::projector::ProjectFailure {
                    position: 0,
                    message: "the projector thread is gone".into(),
                })
            });
            if outcome.is_none() {
                self.busy.insert(name.clone(), ticket);
            }
            parts.push(Part {
                last_progress: plugin.worker.progress(),
                progress_at: now,
                plugin: name,
                outcome,
            });
        }
        self.in_flight.insert(
            ticket,
            InFlight {
                doomed: None,
                stream,
                body,
                reply,
                parts,
            },
        );
        self.finish_if_done(ticket);
    }

    /// A projector thread answered.
    fn projected(&mut self, projected: Projected) {
        if !self.in_flight.contains_key(&projected.ticket) {
            // A request already answered (failed or timed out elsewhere).
            self.release(&projected.plugin, projected.ticket);
        }
        if let Some(request) = self.in_flight.get_mut(&projected.ticket) {
            if let Some(part) = request
                .parts
                .iter_mut()
                .find(|p| p.plugin == projected.plugin && p.outcome.is_none())
            {
                part.outcome = Some(projected.outcome);
            }
            self.finish_if_done(projected.ticket);
        }
        self.pump_deferred();
    }

    /// Answers a request once it failed or every projector answered.
    fn finish_if_done(&mut self, ticket: u64) {
        let Some(request) = self.in_flight.get(&ticket) else {
            return;
        };
        let failed = request
            .parts
            .iter()
            .find(|p| matches!(p.outcome, Some(Err(_))));
        if failed.is_none() && request.parts.iter().any(|p| p.outcome.is_none()) {
            return;
        }
        let request = self.in_flight.remove(&ticket).expect("looked up above");
        // The projection is over: its plugins may take their next request
        // (over this one's logged mutations) while this one is logged.
        for answered in request.parts.iter().filter(|p| p.outcome.is_some()) {
            self.release(&answered.plugin, ticket);
        }
        if let Some(reason) = request.doomed.clone() {
            let _ = request
                .reply
                .send(Err(IngestError::StorageUnavailable(reason)));
            self.pump_deferred();
            return;
        }
        if let Some(part) = request
            .parts
            .iter()
            .find(|p| matches!(p.outcome, Some(Err(_))))
        {
            let Some(Err(failure)) = &part.outcome else {
                unreachable!("matched above")
            };
            let _ = request.reply.send(Err(IngestError::Projector {
                plugin: part.plugin.clone(),
                position: failure.position,
                message: failure.message.clone(),
            }));
            return;
        }
        let plugins: Vec<String> = request.parts.iter().map(|p| p.plugin.clone()).collect();
        let outcomes: Vec<Vec<Vec<Mutation>>> = request
            .parts
            .into_iter()
            .map(|p| match p.outcome {
                Some(Ok(produced)) => produced,
                _ => unreachable!("every part answered without error"),
            })
            .collect();
        // Event order, then plugin order.
        let events = outcomes.first().map_or(0, Vec::len);
        let mut per_plugin: Vec<std::vec::IntoIter<Vec<Mutation>>> =
            outcomes.into_iter().map(Vec::into_iter).collect();
        let mut ordered = Vec::new();
        for _ in 0..events {
            for produced in &mut per_plugin {
                ordered.extend(produced.next().unwrap_or_default());
            }
        }
        self.submit_commit(
            ordered,
            plugins,
            request.body.len(),
            &request.stream,
            request.body.raw().clone(),
            request.reply,
        );
        self.pump_deferred();
    }

    /// Reserves the `_seq`s of a request's mutations and, by the storage
    /// mode, logs it first (applied once durable), applies it at once (in
    /// memory, or replaying the log), or refuses it (the log is closed).
    fn submit_commit(
        &mut self,
        mutations: Vec<Mutation>,
        plugins: Vec<String>,
        events: usize,
        stream: &str,
        body: bytes::Bytes,
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    ) {
        if matches!(self.storage, Storage::Closed) {
            let _ = reply.send(Err(IngestError::ShuttingDown));
            return;
        }
        let count = mutations.len() as u64;
        if self.cluster.is_some() && count >= 1 << crate::cluster::SEQ_SHIFT {
            let _ = reply.send(Err(IngestError::Projector {
                plugin: plugins.join(","),
                position: 0,
                message: format!(
                    "the request produced {count} mutations; in cluster mode a request may produce fewer than {}",
                    1u64 << crate::cluster::SEQ_SHIFT
                ),
            }));
            return;
        }
        let first_seq = self.last_reserved_seq + 1;
        self.last_reserved_seq += count;
        let mut commit = Commit {
            mutations: mutations.into_iter(),
            plugins,
            events,
            first_seq,
            started: false,
            rec: 0,
            reply,
        };
        match &mut self.storage {
            Storage::Logged(durable) if !self.replaying => {
                commit.rec = durable.next_rec;
                durable.next_rec += 1;
                durable.writer.submit(WriterJob::Append(LogRecord {
                    rec: commit.rec,
                    stream: stream.to_owned(),
                    first_seq,
                    mutations: count,
                    body,
                    logged_at_ms: crate::durable::now_ms(),
                }));
                self.awaiting_log.push_back(commit);
            }
            _ => {
                self.committing.push_back(commit);
                if self.committing.len() == 1 {
                    // Nothing else is committing: small requests finish at once.
                    self.commit_step();
                }
            }
        }
    }

    /// The log writer made records durable, or failed to write them.
    fn logged(&mut self, report: WriterReport) {
        match report {
            WriterReport::Durable(upto) => {
                while self.awaiting_log.front().is_some_and(|c| c.rec <= upto) {
                    let commit = self.awaiting_log.pop_front().expect("checked");
                    self.committing.push_back(commit);
                }
                if !self.committing.is_empty() && !self.committing[0].started {
                    self.commit_step();
                }
            }
            WriterReport::Failed { recs, reason } => {
                // Later requests of the same plugins projected over the
                // failed ones: they fail too, and so do projections running.
                let first_failed = recs.iter().min().copied().unwrap_or(u64::MAX);
                let mut doomed_plugins: HashSet<String> = HashSet::new();
                for commit in &self.awaiting_log {
                    let depends = recs.contains(&commit.rec)
                        || (commit.rec > first_failed
                            && commit.plugins.iter().any(|p| doomed_plugins.contains(p)));
                    if depends {
                        doomed_plugins.extend(commit.plugins.iter().cloned());
                    }
                }
                let (failed, kept): (VecDeque<Commit>, VecDeque<Commit>) =
                    self.awaiting_log.drain(..).partition(|c| {
                        recs.contains(&c.rec)
                            || (c.rec > first_failed
                                && c.plugins.iter().any(|p| doomed_plugins.contains(p)))
                    });
                for request in self.in_flight.values_mut() {
                    if request
                        .parts
                        .iter()
                        .any(|p| doomed_plugins.contains(&p.plugin))
                    {
                        request.doomed = Some(reason.clone());
                    }
                }
                self.awaiting_log = kept;
                for commit in failed {
                    let _ = commit
                        .reply
                        .send(Err(IngestError::StorageUnavailable(reason.clone())));
                }
                self.pump_deferred();
            }
            WriterReport::Checkpointed(rec) => {
                metrics::counter!("vista_checkpoints_total").increment(1);
                tracing::debug!(rec, "checkpoint durable");
            }
        }
    }

    /// Applies the next chunk of the oldest commit and delivers its frames;
    /// a finished commit answers its request and the next one starts.
    fn commit_step(&mut self) {
        if !self.can_commit() {
            return;
        }
        let Some(mut commit) = self.committing.pop_front() else {
            return;
        };
        let chunk = commit.mutations.len().min(COMMIT_CHUNK);
        let mut deliveries = Deliveries::new(chunk);
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        if !commit.started {
            // A refused request between reservation and commit leaves a gap.
            store.advance_to(commit.first_seq - 1);
            commit.started = true;
        }
        for mutation in commit.mutations.by_ref().take(chunk) {
            let change = store.apply(mutation);
            self.views.apply(&change, &store, &mut |conn, frame| {
                deliveries.push(conn, frame)
            });
        }
        let seq = store.last_seq();
        drop(store);
        deliveries.flush(&self.conns);
        if commit.mutations.len() > 0 {
            self.committing.push_front(commit);
            return;
        }
        metrics::counter!("vista_events_ingested_total").increment(commit.events as u64);
        let _ = commit.reply.send(Ok(Ingested {
            accepted: commit.events,
            seq,
        }));
        self.maybe_checkpoint(commit.rec, commit.events as u64);
        self.pump_deferred();
    }

    /// Takes a checkpoint every N events or M seconds: the store's entities
    /// (`Arc` clones, cheap) go to the writer thread, which serializes them.
    fn maybe_checkpoint(&mut self, rec: u64, events: u64) {
        let Storage::Logged(durable) = &mut self.storage else {
            return;
        };
        if self.replaying || rec == 0 {
            return;
        }
        durable.events_since_checkpoint += events;
        if durable.events_since_checkpoint < durable.checkpoint_every_events
            && durable.last_checkpoint.elapsed() < durable.checkpoint_every
        {
            return;
        }
        durable.events_since_checkpoint = 0;
        durable.last_checkpoint = Instant::now();
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        let checkpoint = Checkpoint {
            rec,
            last_seq: store.version(),
            entities: store.entities(),
            builds: Vec::new(),
            hidden: store.hidden_states(),
        };
        drop(store);
        durable.writer.submit(WriterJob::Checkpoint(checkpoint));
    }

    /// Starts a fresh in-memory store's `_seq` from the clock (microseconds
    /// since the Unix epoch), so `_seq` never goes backwards across
    /// restarts even though nothing is kept.
    pub fn start_seq_from_clock(&mut self) {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.last_reserved_seq = micros;
        self.store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .advance_to(micros);
    }

    /// Restores the state kept in `persistence` (checkpoint, then the log
    /// after it, replayed through the loaded plugins) and makes the engine
    /// log every request from now on. Progress is logged for long replays.
    pub fn recover(&mut self, persistence: Persistence) -> Result<(), crate::durable::DataError> {
        let log = persistence.log.clone();
        let started = Instant::now();
        let mut after = 0;
        if let Some(checkpoint) = log.load_checkpoint()? {
            after = checkpoint.rec;
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            store.restore(checkpoint.entities, checkpoint.hidden, checkpoint.last_seq);
            // The plugins' views were built over the empty store.
            self.views.rebuild_all(&store);
            tracing::info!(
                rec = checkpoint.rec,
                last_seq = checkpoint.last_seq,
                "checkpoint loaded"
            );
        }
        let records = log.records_after(after)?;
        let total = records.len();
        let (mut replayed, mut skipped, mut events) = (0usize, 0usize, 0usize);
        let mut last_report = Instant::now();
        self.replaying = true;
        let queue = self
            .queue
            .take()
            .expect("recover runs before the engine thread");
        for record in &records {
            let last_seq = record.first_seq + record.mutations.max(1) - 1;
            if record.stream.is_empty() {
                // A reprojection's swap: it only reserved `_seq`s.
                self.last_reserved_seq = self.last_reserved_seq.max(last_seq);
                continue;
            }
            let body = match IngestBody::parse(record.body.clone()) {
                Ok(body) => Arc::new(body),
                Err(err) => {
                    tracing::error!(
                        rec = record.rec,
                        line = err.position,
                        "log record body does not parse; skipped"
                    );
                    skipped += 1;
                    self.last_reserved_seq = self.last_reserved_seq.max(last_seq);
                    continue;
                }
            };
            events += body.len();
            self.last_reserved_seq = self.last_reserved_seq.max(record.first_seq - 1);
            let (reply, mut answer) = oneshot::channel();
            self.ingest(Waiting {
                stream: record.stream.clone(),
                body,
                reply,
            });
            while !(self.in_flight.is_empty()
                && self.committing.is_empty()
                && self.deferred.is_empty())
            {
                if self.can_commit() {
                    self.commit_step();
                    continue;
                }
                let wait = self.next_deadline().unwrap_or(Duration::from_secs(1));
                if let Ok(command) = queue.recv_timeout(wait) {
                    self.handle(command);
                }
                self.check_deadlines();
            }
            match answer.try_recv() {
                Ok(Ok(_)) => replayed += 1,
                Ok(Err(err)) => {
                    skipped += 1;
                    tracing::error!(rec = record.rec, stream = %record.stream, %err, "log record not replayed");
                }
                Err(_) => skipped += 1,
            }
            // Whatever the outcome, the record's `_seq`s stay used.
            self.last_reserved_seq = self.last_reserved_seq.max(last_seq);
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                tracing::info!(done = replayed + skipped, total, "replaying the event log");
            }
        }
        self.queue = Some(queue);
        self.replaying = false;
        let stats = log
            .stats()
            .map_err(|reason| crate::durable::DataError::Storage {
                path: log.path().to_owned(),
                reason,
            })?;
        let applied = self
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .version();
        self.last_reserved_seq = self.last_reserved_seq.max(stats.last_seq).max(applied);
        self.store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .advance_to(self.last_reserved_seq);
        tracing::info!(
            records = total,
            replayed,
            skipped,
            events,
            ms = started.elapsed().as_millis() as u64,
            last_seq = self.last_reserved_seq,
            "state recovered"
        );
        let commands = self.commands.clone();
        crate::durable::publish_gauges(&log);
        let writer = LogWriter::spawn(
            log.clone(),
            persistence.fsync,
            persistence.retention,
            move |report| {
                let _ = commands.send(Command::Log(report));
            },
        );
        self.storage = Storage::Logged(Durable {
            log,
            writer,
            next_rec: stats.last_rec + 1,
            checkpoint_every_events: persistence.checkpoint_every_events,
            checkpoint_every: persistence.checkpoint_every,
            events_since_checkpoint: events as u64,
            last_checkpoint: Instant::now(),
        });
        Ok(())
    }

    /// Frees `plugin` if it is busy with `ticket`.
    fn release(&mut self, plugin: &str, ticket: u64) {
        if self.busy.get(plugin) == Some(&ticket) {
            self.busy.remove(plugin);
        }
    }

    /// Every plugin file seen, with reprojection progress.
    fn plugin_reports(&self) -> Vec<PluginReport> {
        self.reports
            .values()
            .cloned()
            .map(|mut report| {
                let current = report.name.as_ref().and_then(|name| {
                    let plugin = self.plugins.get(name)?;
                    (plugin.lib.file.display().to_string() == report.file).then_some(name)
                });
                if let Some(r) = current.and_then(|name| self.reprojections.get(name)) {
                    let records = r
                        .reprojector
                        .progress
                        .records
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let events = r
                        .reprojector
                        .progress
                        .events
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let seconds = r.reprojector.started.elapsed().as_secs_f64().max(1e-3);
                    report.reprojection = Some(ReprojectionStatus {
                        state: r.state,
                        records_replayed: records,
                        records_total: r.reprojector.total,
                        events,
                        events_per_second: events as f64 / seconds,
                        changed: r.changed,
                        error: r.error.clone(),
                    });
                }
                report
            })
            .collect()
    }

    /// Dispatches waiting requests whose plugins are free, keeping each
    /// plugin's requests in arrival order.
    fn pump_deferred(&mut self) {
        // A reprojection waiting to swap goes before new requests.
        if self.reprojections.values().any(|r| r.wants_final) {
            self.start_final_passes();
        }
        if self.deferred.is_empty() {
            return;
        }
        let mut claimed: HashSet<String> = HashSet::new();
        let mut still_waiting = VecDeque::new();
        while let Some(request) = self.deferred.pop_front() {
            let consumers: Vec<String> = self.consumers(&request.stream).collect();
            if consumers
                .iter()
                .any(|c| !self.can_project(c) || claimed.contains(c))
            {
                claimed.extend(consumers);
                still_waiting.push_back(request);
            } else {
                self.dispatch(request, consumers);
            }
        }
        self.deferred = still_waiting;
    }

    /// Time until the earliest projector deadline.
    fn next_deadline(&self) -> Option<Duration> {
        self.in_flight
            .values()
            .flat_map(|r| r.parts.iter().filter(|p| p.outcome.is_none()))
            .map(|p| {
                (p.progress_at + self.projector_timeout).saturating_duration_since(Instant::now())
            })
            .min()
            .map(|d| d.max(Duration::from_millis(1)))
    }

    /// Declares stuck every projector that made no progress for the
    /// timeout, answering its request with 503 `projector-timeout`.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let mut expired: Vec<(u64, String)> = Vec::new();
        for (ticket, request) in &mut self.in_flight {
            for part in request.parts.iter_mut().filter(|p| p.outcome.is_none()) {
                let Some(plugin) = self.plugins.get(&part.plugin) else {
                    continue;
                };
                let progress = plugin.worker.progress();
                if progress != part.last_progress {
                    part.last_progress = progress;
                    part.progress_at = now;
                } else if now.duration_since(part.progress_at) >= self.projector_timeout {
                    expired.push((*ticket, part.plugin.clone()));
                }
            }
        }
        for (ticket, name) in expired {
            let timeout_ms = self.projector_timeout.as_millis() as u64;
            tracing::error!(plugin = %name, timeout_ms, "projector timed out; plugin marked stuck, its streams answer 503 until a new build loads");
            metrics::counter!("vista_projector_timeouts_total").increment(1);
            if let Some(plugin) = self.plugins.get_mut(&name) {
                plugin.stuck = true;
                plugin.worker.demote();
                if let Some(report) = self.reports.get_mut(&plugin.lib.file) {
                    report.state = PluginState::Stuck;
                    let error = format!("projector made no progress for {timeout_ms} ms");
                    report.record(BuildEventKind::Stuck, Some(error.clone()));
                    report.last_error = Some(error);
                }
            }
            self.release(&name, ticket);
            if let Some(request) = self.in_flight.remove(&ticket) {
                // Plugins of this request that answered are free.
                for answered in request.parts.iter().filter(|p| p.outcome.is_some()) {
                    self.release(&answered.plugin, ticket);
                }
                let _ = request.reply.send(Err(IngestError::ProjectorTimeout {
                    plugin: name,
                    timeout_ms,
                }));
            }
        }
        self.pump_deferred();
    }

    /// Starts (or restarts) a subscription: queues the `subscribed` frame
    /// and the snapshot on the connection's outbox, or a `view-not-found`
    /// socket issue (the subscription then waits for the view to appear).
    fn subscribe(&mut self, conn: ConnId, request: &SubscribeRequest) {
        let Some(outbox) = self.conns.get(&conn).cloned() else {
            return;
        };
        let replaced = self
            .views
            .unsubscribe(conn, &request.view, request.key.as_deref());
        if let Removed::Active(generation) = replaced {
            // A snapshot still queued for the replaced subscription is stale.
            outbox.cancel_snapshot(generation);
        } else if replaced == Removed::Nothing
            && self.views.subscription_count(conn) >= self.max_subscriptions
        {
            outbox.push_reply(Outgoing::Frame(socket_issue(
                "subscription-limit-exceeded",
                &format!(
                    "at most {} subscriptions per connection",
                    self.max_subscriptions
                ),
                false,
            )));
            return;
        }
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        match self.views.subscribe(conn, request, &store) {
            Ok(start) => start.send(conn, &mut |_, notice| tell(&outbox, notice)),
            Err(SubscribeError::InvalidFilter(message)) => {
                outbox.push_reply(Outgoing::Frame(socket_issue(
                    "invalid-filter",
                    &message,
                    false,
                )));
            }
            Err(SubscribeError::ViewNotFound) => {
                tracing::debug!(conn, view = %request.view, "subscribe to unknown view (pending)");
                outbox.push_reply(Outgoing::Frame(socket_issue(
                    "view-not-found",
                    &format!(
                        "no view named {:?}; the subscription starts if a plugin provides it",
                        request.view
                    ),
                    false,
                )));
            }
        }
    }

    fn cancel_snapshot(&self, conn: ConnId, generation: u64) {
        if let Some(outbox) = self.conns.get(&conn) {
            outbox.cancel_snapshot(generation);
        }
    }

    /// Liveness: pings clients quiet for a third of `timeout` and closes
    /// those silent for longer than `timeout` (no message, no pong) with
    /// `idle-timeout:`. Returns (pinged, closed).
    fn sweep_idle(&self, timeout: Duration) -> (usize, usize) {
        let (mut pinged, mut closed) = (0, 0);
        for (conn, outbox) in &self.conns {
            let silent = outbox.silent_for();
            if silent > timeout {
                tracing::info!(conn, silent_s = silent.as_secs(), "closing a silent client");
                outbox.push_reply(Outgoing::Close {
                    code: 1001,
                    reason: format!("idle-timeout: nothing received for {} s", silent.as_secs()),
                });
                closed += 1;
            } else if silent > timeout / 3 {
                outbox.push_reply(Outgoing::Ping);
                pinged += 1;
            }
        }
        metrics::counter!("vista_idle_disconnects_total").increment(closed as u64);
        (pinged, closed)
    }
}

/// Queues what views asked to tell a connection.
fn tell(outbox: &Outbox, notice: Notice) {
    match notice {
        Notice::Frame(frame) => outbox.push_reply(Outgoing::Frame(frame)),
        Notice::Snapshot {
            snapshot,
            generation,
        } => outbox.push_reply(Outgoing::Snapshot(SnapshotJob {
            snapshot,
            generation,
        })),
        Notice::Cancel(generation) => {
            outbox.cancel_snapshot(generation);
        }
    }
}

/// Collapses a multi-line error (abi_stable's are) into one log-friendly line.
fn one_line(text: &str) -> String {
    text.replace('\0', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The live frames of one ingest request, gathered per connection and
/// pushed once per connection at the end of the request: one outbox lock
/// and one writer wake-up per connection per request instead of per frame
/// (the outbox lock is shared with that connection's writer thread, so
/// per-frame locking costs a cache-line transfer per frame). Each distinct
/// frame is stored once; connections hold indexes into `frames`. Also counts
/// what happened to the frames; metrics are updated once per request.
struct Deliveries {
    frames: Vec<Frame>,
    pending: HashMap<ConnId, Vec<u32>>,
    /// Expected frames per connection, to size each connection's list once.
    per_connection_hint: usize,
    queued: u64,
    conflated: u64,
    slow_consumers: u64,
}

impl Deliveries {
    fn new(per_connection_hint: usize) -> Self {
        Self {
            frames: Vec::new(),
            pending: HashMap::new(),
            per_connection_hint: per_connection_hint.min(1024),
            queued: 0,
            conflated: 0,
            slow_consumers: 0,
        }
    }

    /// Gathers one live frame for one connection. Views hand the same frame
    /// to all its recipients in a row, so it is stored once.
    fn push(&mut self, conn: ConnId, frame: &Frame) {
        let same_as_last = self.frames.last().is_some_and(|last| {
            last.bytes.as_ptr() == frame.bytes.as_ptr() && last.len() == frame.len()
        });
        if !same_as_last {
            self.frames.push(frame.clone());
        }
        let index = (self.frames.len() - 1) as u32;
        let hint = self.per_connection_hint;
        self.pending
            .entry(conn)
            .or_insert_with(|| Vec::with_capacity(hint))
            .push(index);
    }

    /// Pushes everything gathered into the outboxes.
    fn flush(mut self, conns: &HashMap<ConnId, Arc<Outbox>>) {
        let frames = std::mem::take(&mut self.frames);
        for (conn, indexes) in std::mem::take(&mut self.pending) {
            let Some(outbox) = conns.get(&conn) else {
                continue;
            };
            outbox.push_live_batch(indexes.iter().map(|i| &frames[*i as usize]), |outcome| match outcome {
                Ok(Pushed::Queued) => self.queued += 1,
                Ok(Pushed::Conflated) => self.conflated += 1,
                Err(PushError::SlowConsumer) => {
                    self.slow_consumers += 1;
                    tracing::warn!(conn, "slow consumer: append-view frames past the outbox bound; closing the connection");
                }
                Err(PushError::Closed) => {}
            });
        }
        metrics::counter!("vista_frames_queued_total").increment(self.queued);
        metrics::counter!("vista_frames_conflated_total").increment(self.conflated);
        metrics::counter!("vista_slow_consumer_disconnects_total").increment(self.slow_consumers);
    }
}
