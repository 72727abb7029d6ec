//! What the rest of the host sees of the engine: the [`Command`]s it takes,
//! the [`EngineHandle`] async workers send them through (awaiting a oneshot
//! reply when they need an answer), the outcomes and refusals those answers
//! carry, and [`spawn`], which starts the engine thread.
//!
//! Everything here is plain data and channels: a caller never touches
//! engine state, so it can never block on it (see the parent module).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Engine;
use crate::durable::{LogStats, WriterReport};
use crate::ids::Seq;
use crate::ingest::IngestBody;
use crate::outbox::Outbox;
use crate::plugins::{LoadError, PluginLibrary, PluginReport};
use crate::projector::Projected;
use crate::reproject::ReprojectReport;
use crate::vocab::{ConnId, SubscribeRequest};

/// Crashes of one build within [`CRASH_WINDOW`] that retire it (a
/// promise of the [`IngestError::PluginCrashed`] refusal; counted in
/// [`super::install`]).
pub const CRASHES_TO_GIVE_UP: usize = 3;
/// See [`CRASHES_TO_GIVE_UP`].
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Result of a successful ingest.
#[derive(Debug, PartialEq, Eq)]
pub struct Ingested {
    /// Events accepted.
    pub accepted: usize,
    /// `_seq` of the last mutation applied (the current one if none were);
    /// `None` for a record that applies nothing (a build marker).
    pub seq: Option<Seq>,
}

impl Ingested {
    /// The outcome of a record that applies no events (a build marker).
    pub(super) fn nothing() -> Self {
        Ingested {
            accepted: 0,
            seq: None,
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
    /// A projector made no progress within the deadline: its process was
    /// killed and started afresh, or its thread is now stuck.
    #[error("plugin {plugin:?} made no progress for {timeout_ms} ms; nothing was applied")]
    ProjectorTimeout {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The plugin's projector process died on an event; it was restarted.
    #[error("plugin {plugin:?} crashed on event {position}: {message}")]
    ProjectorCrashed {
        /// Plugin name.
        plugin: String,
        /// Event position in the request.
        position: usize,
        /// What happened ("the projector process was killed by SIGABRT").
        message: String,
        /// How it ended.
        crash: crate::projector::Crash,
    },
    /// A plugin consuming the stream crashed too often (see
    /// [`CRASHES_TO_GIVE_UP`]).
    #[error("plugin {plugin:?} crashed {} times within {} s; load a new build of it", CRASHES_TO_GIVE_UP, CRASH_WINDOW.as_secs())]
    PluginCrashed {
        /// Plugin name.
        plugin: String,
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
    /// A log that orders records (cluster mode): its next record, in its
    /// order.
    Record(super::link::LogEntry),
    /// A log that orders records: an ingest of this host waits for its
    /// record.
    Wait {
        /// The id its record carries (cluster mode: the `Vista-Request`
        /// header).
        request: String,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    },
    /// A log that orders records: an ingest stopped waiting.
    Forget {
        /// Its id.
        request: String,
    },
    /// Close the log cleanly (shutdown): everything queued is written,
    /// then the database file is closed, so the next start needs no
    /// recovery.
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
    /// What `GET /admin/dead-letters` shows.
    DeadLetters {
        /// Where the list goes.
        reply: oneshot::Sender<Vec<crate::dead_letters::DeadLetter>>,
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
    pub(super) commands: mpsc::Sender<Command>,
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

    /// The dead letters, for `GET /admin/dead-letters`.
    pub async fn dead_letters(&self) -> Vec<crate::dead_letters::DeadLetter> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::DeadLetters { reply });
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
            // A panic here is fatal to the process, loudly
            // ([`crate::supervise`]): a host without its engine serves nothing.
            crate::supervise::run("engine", || {
                while engine.turn(&commands, Duration::from_secs(3600)) {}
            })
        })
        .expect("start the engine thread");
    (handle, thread)
}
