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
//!    to the store in event order (then plugin name order) and the HTTP
//!    request is answered; then its changes go through the views and their
//!    frames are delivered ([`behind`]: views catch up before any command
//!    but an ingest request is handled, and before the engine waits).
//!    With a data directory, the request's [`crate::durable::LogRecord`] (its body and the
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
//!
//! ## Module map
//! - [`api`]: the commands, the handle, the outcomes and refusals; `spawn`.
//! - [`pipeline`]: requests in flight, from arrival to answer (deferred,
//!   projecting, awaiting the log, committing), as a state machine.
//! - [`install`]: plugin builds: install, swap, unload, reports.
//! - [`subscribe`]: connections, subscriptions, notices, the idle sweep.
//! - [`log`]: the [`log::Log`] the engine holds (in memory, this host's
//!   event log, or a shared log such as cluster mode's JetStream stream,
//!   implemented in [`crate::cluster`]), and why its interface has the
//!   shape it has: who orders the records, and when one is applied.
//! - [`recover`]: recovery at start from a log the engine orders (replay),
//!   and closing the log at shutdown.
//! - `ordered`: applying the records of a log that orders them, one at a
//!   time, with plugin builds switched and reprojections run at their
//!   markers; [`link`] is what it receives (the records) and what the
//!   async side of such a log is told.
//! - `reprojection`: rebuilding a plugin's entities from the log.
//! - `behind`: the last applied request's changes, run through the views
//!   after the answer (why, and what keeps it exact).
//! - here: the [`Engine`] state, its command dispatch and its loop, and the
//!   [`pipeline::Env`] the pipeline sees the rest of the engine through.

mod api;
mod behind;
mod install;
pub(crate) mod link;
pub(crate) mod log;
mod ordered;
mod pipeline;
mod recover;
mod reprojection;
mod subscribe;

pub use api::{spawn, Command, EngineHandle, IngestError, Ingested, InstallError, ReprojectError};
pub use log::Persistence;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use vista_plugin_api::Mutation;

use crate::codes::HttpCode;
use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::durable::WriterReport;
use crate::ids::{PluginName, Seq};
use crate::ingest::IngestBody;
use crate::memory::IdleRelease;
use crate::outbox::{Outboxes, WakeUps};
use crate::plugins::PluginReport;
use crate::projector::{ProjectFailure, ProjectJob, Settled, SharedStore};
use crate::store::Store;
use crate::views::{Removed, Views};
use install::LoadedPlugin;
use log::Log;
use pipeline::{Env, Pipeline, Waiting};
use reprojection::Reprojection;

/// The state of the whole server, owned by the engine thread.
pub struct Engine {
    store: SharedStore,
    views: Views,
    /// Loaded plugins by name.
    plugins: BTreeMap<PluginName, LoadedPlugin>,
    /// What `GET /plugins` shows, by plugin file.
    reports: BTreeMap<PathBuf, PluginReport>,
    /// Outboxes of open connections.
    conns: Outboxes,
    /// Where plugin files are copied before being mapped.
    cache_dir: PathBuf,
    max_subscriptions: usize,
    /// Ingest requests from arrival to answer.
    pipeline: Pipeline,
    /// Where requests go before they are applied, and what orders them.
    log: Box<dyn Log>,
    /// Set while the log is replayed at start: nothing is logged again.
    replaying: bool,
    /// Reprojections by plugin (the latest of each).
    reprojections: BTreeMap<PluginName, Reprojection>,
    /// Events the plugins refused, crashed or timed out on.
    dead_letters: DeadLetters,
    /// The records of a log that orders them, and the staged builds.
    ordered: ordered::Ordered,
    commands: mpsc::Sender<Command>,
    queue: Option<mpsc::Receiver<Command>>,
    /// The last applied request's changes, not yet run through the views
    /// (only until the turn that applied its last chunk ends; see
    /// [`behind`]).
    behind: behind::Behind,
    /// Gives a request's freed memory back once the engine is idle.
    idle_release: IdleRelease,
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
            conns: Outboxes::default(),
            cache_dir,
            max_subscriptions,
            pipeline: Pipeline::new(projector_timeout),
            log: Box::new(log::InMemory),
            replaying: false,
            reprojections: BTreeMap::new(),
            dead_letters: DeadLetters::default(),
            ordered: ordered::Ordered::default(),
            commands,
            queue: Some(queue),
            behind: behind::Behind::default(),
            idle_release: IdleRelease::default(),
        }
    }

    /// Makes `log` the engine's log before anything is loaded. A log that
    /// orders requests (cluster mode) hands its records over as
    /// [`Command::Record`], and plugin builds wait for their markers in it.
    /// A log the engine orders is installed by [`Engine::recover`] instead.
    pub(crate) fn use_log(&mut self, log: Box<dyn Log>) {
        self.log = log;
    }

    /// Where a log writer thread reports (as [`Command::Log`]).
    pub(crate) fn log_reports(&self) -> impl Fn(WriterReport) + Send + 'static {
        let commands = self.commands.clone();
        move |report| {
            let _ = commands.send(Command::Log(report));
        }
    }

    /// One turn of the engine loop, the same at start (replaying the log)
    /// and while serving: apply the next chunk of the oldest commit and
    /// handle what arrived meanwhile, or else wait for a command (until the
    /// next projector deadline, at most `idle`); then check deadlines and
    /// the records of a log that orders them, and catch the views up unless
    /// the next turn commits at once. False once every sender is gone.
    fn turn(&mut self, commands: &mpsc::Receiver<Command>, idle: Duration) -> bool {
        if self.pipeline.can_commit() {
            self.idle_release.worked();
            self.commit_step();
            // Between chunks: whatever arrived meanwhile, bounded so a
            // command flood cannot starve the commit.
            for command in commands.try_iter().take(256) {
                self.handle(command);
            }
        } else {
            let wait = self.pipeline.next_deadline().unwrap_or(idle);
            match commands.recv_timeout(self.idle_release.wait(wait)) {
                Ok(command) => {
                    self.idle_release.worked();
                    self.handle(command);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.idle_release.timed_out(wait),
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        self.check_deadlines();
        if !self.ordered.queue.is_empty() {
            // A record may install a build, which rebuilds views.
            self.catch_up_views(commands);
        }
        self.ordered_pump();
        // A request's chunks are applied back to back and its views caught
        // up after its answer (see [`behind`]): a turn ends behind only
        // when the next one commits at once.
        if !self.pipeline.can_commit() {
            self.catch_up_views(commands);
        }
        true
    }

    /// Runs the changes applied in this turn through the views, a slice at
    /// a time; a command that arrives meanwhile is handled between slices
    /// (an ingest request goes to its projector while the views catch up;
    /// anything else catches them up first). See [`behind`].
    ///
    /// The writers are woken once, at the end: woken per slice, each would
    /// write a slice's frames per `send` (more system calls per frame).
    fn catch_up_views(&mut self, commands: &mpsc::Receiver<Command>) {
        let mut wake_ups = WakeUps::default();
        while !self.behind.is_empty() {
            self.run_views(behind::SLICE, &mut wake_ups);
            if let Ok(command) = commands.try_recv() {
                self.handle(command);
            }
        }
    }

    /// Runs up to `limit` waiting changes through the views.
    fn run_views(&mut self, limit: usize, wake_ups: &mut WakeUps) {
        if self.behind.is_empty() {
            return;
        }
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        self.behind
            .catch_up(limit, &mut self.views, &store, &self.conns, wake_ups);
    }

    fn handle(&mut self, command: Command) {
        // Only an ingest request may pass views that are behind the store:
        // it reads no view (see [`behind`]).
        if !matches!(command, Command::Ingest { .. }) {
            self.run_views(usize::MAX, &mut WakeUps::default());
        }
        match command {
            Command::Record(entry) => self.ordered.queue.push_back(entry),
            Command::Wait { request, reply } => self.log.wait(request, reply),
            Command::Forget { request } => self.log.forget(&request),
            Command::Ingest {
                stream,
                body,
                reply,
            } => {
                crate::supervise::inject_panic("engine", &stream);
                self.ingest(Waiting {
                    stream,
                    body,
                    reply,
                    retry_crash: false,
                })
            }
            Command::Projected(projected) => {
                let (pipeline, mut env) = self.split();
                pipeline.projected(projected, &mut env);
            }
            Command::Log(WriterReport::Checkpointed(rec)) => {
                crate::metrics::get().checkpoints.inc();
                tracing::debug!(rec, "checkpoint durable");
            }
            Command::Log(report) => {
                let (pipeline, mut env) = self.split();
                pipeline.logged(report, &mut env);
            }
            Command::CloseLog { reply } => {
                self.close_log();
                let _ = reply.send(());
            }
            Command::LogStatus { reply } => {
                let _ = reply.send(self.log_status());
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
            Command::DeadLetters { reply } => {
                let _ = reply.send(self.dead_letters.list());
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

    /// Makes every projector start afresh before its next request: the
    /// store was replaced under them (a checkpoint loaded).
    fn resync_projectors(&mut self) {
        for plugin in self.plugins.values_mut() {
            plugin.resync = true;
        }
    }

    /// The pipeline, and the rest of the engine as it sees it.
    fn split(&mut self) -> (&mut Pipeline, Stage<'_>) {
        let applying_position = self.applying_position();
        let stage = Stage {
            dead_letters: &mut self.dead_letters,
            applying_position,
            plugins: &mut self.plugins,
            reports: &mut self.reports,
            store: &self.store,
            views: &mut self.views,
            conns: &self.conns,
            log: self.log.as_mut(),
            replaying: self.replaying,
            reprojections: &mut self.reprojections,
            wake_ups: WakeUps::default(),
            behind: &mut self.behind,
        };
        (&mut self.pipeline, stage)
    }

    /// Starts projecting a request, or queues it behind a busy plugin.
    fn ingest(&mut self, request: Waiting) {
        let (pipeline, mut env) = self.split();
        pipeline.ingest(request, &mut env);
    }

    /// Applies the next chunk of the oldest commit and delivers its frames.
    fn commit_step(&mut self) {
        let (pipeline, mut env) = self.split();
        pipeline.commit_step(&mut env);
    }

    /// Dispatches waiting requests whose plugins are free.
    fn pump_deferred(&mut self) {
        let (pipeline, mut env) = self.split();
        pipeline.pump_deferred(&mut env);
    }

    /// Answers requests whose projector made no progress for the timeout.
    fn check_deadlines(&mut self) {
        let (pipeline, mut env) = self.split();
        pipeline.check_deadlines(&mut env);
    }

    /// Commits mutations that did not come from a projection (a
    /// reprojection's swap) like a request.
    fn submit_commit(
        &mut self,
        mutations: Vec<Mutation>,
        plugins: Vec<PluginName>,
        stream: &str,
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    ) {
        let (pipeline, mut env) = self.split();
        pipeline.submit_commit(
            mutations,
            plugins,
            0,
            stream,
            Bytes::new(),
            None,
            reply,
            &mut env,
        );
    }
}

/// The engine's fields the pipeline reaches through [`Env`]: the plugins'
/// projectors, the log, the store and views, the connections.
struct Stage<'a> {
    plugins: &'a mut BTreeMap<PluginName, LoadedPlugin>,
    dead_letters: &'a mut DeadLetters,
    /// A log that orders records: the position of the record being applied.
    applying_position: Option<u64>,
    reports: &'a mut BTreeMap<PathBuf, PluginReport>,
    store: &'a SharedStore,
    views: &'a mut Views,
    conns: &'a Outboxes,
    log: &'a mut dyn Log,
    replaying: bool,
    reprojections: &'a mut BTreeMap<PluginName, Reprojection>,
    /// Writers of the frames applied in this stage, woken when it ends:
    /// after the request is answered (see [`WakeUps`]).
    wake_ups: WakeUps,
    behind: &'a mut behind::Behind,
}

impl Env for Stage<'_> {
    fn consumers(&self, stream: &str) -> Vec<PluginName> {
        install::consumers(self.plugins, stream)
    }

    fn refusal(&self, plugin: &str) -> Option<IngestError> {
        let loaded = &self.plugins[plugin];
        let plugin = plugin.to_owned();
        if loaded.stuck {
            Some(IngestError::PluginStuck { plugin })
        } else if loaded.crashed {
            Some(IngestError::PluginCrashed { plugin })
        } else {
            None
        }
    }

    fn submit(
        &mut self,
        plugin: &str,
        job: ProjectJob,
        pending: &dyn Fn() -> Vec<Mutation>,
    ) -> bool {
        let loaded = self.plugins.get_mut(plugin).expect("a consumer is loaded");
        if std::mem::take(&mut loaded.resync) {
            if let Err(err) = loaded.worker.restart(&pending()) {
                tracing::error!(plugin, %err, "cannot start the projector afresh");
            }
        }
        loaded.worker.submit(job)
    }

    fn needs_pending(&self, plugin: &str) -> bool {
        self.plugins
            .get(plugin)
            .is_some_and(|p| p.worker.needs_pending())
    }

    fn settle(&mut self, plugin: &str, ticket: u64, applied: bool) {
        if let Some(loaded) = self.plugins.get_mut(plugin) {
            if loaded.worker.settle(ticket, applied) == Settled::StartAfresh {
                loaded.resync = true;
            }
        }
    }

    fn resync(&mut self, plugin: &str) {
        if let Some(loaded) = self.plugins.get_mut(plugin) {
            loaded.resync = true;
        }
    }

    fn progress(&self, plugin: &str) -> Option<u64> {
        self.plugins.get(plugin).map(|p| p.worker.progress())
    }

    fn timed_out(&mut self, plugin: &str, timeout_ms: u64, pending: &[Mutation]) {
        let must_agree = self.log.must_agree() || self.replaying;
        install::timed_out(
            self.plugins,
            self.reports,
            plugin,
            timeout_ms,
            pending,
            must_agree,
        );
    }

    fn crashed(&mut self, plugin: &str, what: String) {
        let must_agree = self.log.must_agree() || self.replaying;
        install::crashed(self.plugins, self.reports, plugin, what, must_agree);
    }

    fn dead_letter(
        &mut self,
        stream: &str,
        body: &IngestBody,
        plugin: &str,
        failure: &ProjectFailure,
    ) {
        let code = match failure.crash {
            Some(_) => HttpCode::ProjectorCrashed,
            None if failure.message.starts_with(pipeline::TIMEOUT_MESSAGE) => {
                HttpCode::ProjectorTimeout
            }
            None => HttpCode::ProjectorError,
        }
        .as_str();
        self.dead_letters.keep(DeadLetter {
            plugin: plugin.to_owned(),
            fingerprint: self
                .plugins
                .get(plugin)
                .map(|p| p.lib.fingerprint.clone())
                .unwrap_or_default(),
            stream: stream.to_owned(),
            line: failure.position,
            code,
            error: failure.message.clone(),
            signal: failure.crash.and_then(|c| c.signal_name()),
            position: self.applying_position,
            at_ms: crate::plugins::unix_millis(),
            event: crate::dead_letters::event_at(body, failure.position),
        });
    }

    fn admit(&self, mutations: u64, plugins: &[PluginName]) -> Result<(), IngestError> {
        self.log.admit(mutations, plugins)
    }

    fn log(
        &mut self,
        stream: &str,
        first_seq: u64,
        mutations: u64,
        body: Bytes,
        source: Option<crate::durable::SourceMark>,
    ) -> Option<u64> {
        if self.replaying {
            return None;
        }
        self.log.append(stream, first_seq, mutations, body, source)
    }

    fn apply(
        &mut self,
        advance_to: Option<u64>,
        chunk: &mut dyn ExactSizeIterator<Item = Mutation>,
        ends_at: &mut dyn FnMut(Seq),
    ) {
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        // The views follow the store in order (the changes wait in a queue)
        // and catch up after the request's answer ([`behind`]).
        let wake_ups = &mut self.wake_ups;
        if let Some(seq) = advance_to {
            store.advance_to(seq);
        }
        // Every mutation, a delete of a missing entity too, takes a `_seq`.
        let last = Seq(store.last_seq().0 + chunk.len() as u64);
        ends_at(last);
        let views_may_lag = !self.views.windows_exist();
        for mutation in chunk {
            if !self.behind.is_empty() && store.is_shared(&mutation.entity, &mutation.key) {
                self.behind
                    .catch_up(usize::MAX, self.views, &store, self.conns, wake_ups);
            }
            let change = store.apply(mutation);
            self.behind.push(change);
            if !views_may_lag {
                self.behind
                    .catch_up(usize::MAX, self.views, &store, self.conns, wake_ups);
            }
        }
        debug_assert_eq!(store.last_seq(), last, "the answered `_seq`");
    }

    fn committed(&mut self, rec: u64, events: u64) {
        if !self.replaying {
            self.log.committed(rec, events, self.store);
        }
    }

    fn before_dispatch(&mut self, pipeline: &mut Pipeline) {
        // A reprojection waiting to swap goes before new requests.
        if self.reprojections.values().any(|r| r.wants_final) {
            reprojection::start_final_passes(self.reprojections, pipeline);
        }
    }
}
