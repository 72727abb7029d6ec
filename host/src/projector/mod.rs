//! Running a plugin's projector: one interface, two ways.
//!
//! Plugin code is foreign: it may loop forever, overflow its stack, abort,
//! or write through a wild pointer. The engine never calls it. It hands a
//! whole ingest request to the plugin build's [`Projector`] ([`ProjectJob`])
//! and goes on serving other streams, subscriptions and reloads; the
//! answer comes back as a [`Projected`] command.
//!
//! - [`process`] (`--isolation process`, the default): the projector runs
//!   in a child process of its own (the `vista` binary, started as
//!   `vista __projector FILE`), which maps the plugin; the host never maps
//!   plugin code. A child that dies (any signal or exit) costs the request
//!   it was projecting, answered `projector-crashed` with the event's line,
//!   and the child is started again; a stuck one is killed, so it leaves no
//!   thread or CPU behind.
//! - [`thread`] (`--isolation thread`): a thread of the host, as fast as it
//!   gets, and as fragile: a crash in the plugin is a crash of the host, and
//!   a stuck thread cannot be stopped, only demoted.
//!
//! Both project through the same [`overlay`], so a request reads the same
//! state either way.

pub mod child;
pub mod mirror;
pub mod overlay;
mod plain;
pub mod process;
mod stdin;
pub mod thread;
pub mod wire;

use std::sync::{Arc, RwLock};

use vista_plugin_api::Mutation;

use crate::ingest::IngestBody;
use crate::plugins::{Code, PluginLibrary};
use crate::store::Store;

/// The store shared by the engine (the only writer) and projectors.
pub type SharedStore = Arc<RwLock<Store>>;

/// One ingest request for one plugin.
pub struct ProjectJob {
    /// Identifies the request in the engine.
    pub ticket: u64,
    /// The stream the events arrived on.
    pub stream: Arc<str>,
    /// The events.
    pub body: Arc<IngestBody>,
    /// Mutations of this plugin's earlier requests that are logged (or
    /// being logged) but not applied yet, in log order: the projection
    /// reads as if they were, since they will be before this request is.
    /// (A projector process keeps them in its mirror already, through
    /// [`Projector::settle`], and ignores these.)
    pub pending: Arc<Vec<Mutation>>,
    /// Whether the request may be refused after this projector succeeds
    /// because another plugin projecting it fails: a projector process then
    /// keeps what it needs to take the request back out of its mirror.
    /// When false (the plugin is the request's only consumer) a refusal
    /// after success is rare (a failed log write, a shutdown), and
    /// [`Projector::settle`] asks to be started afresh instead, so the
    /// common request pays for no undo.
    pub undoable: bool,
    /// How many of this plugin's earlier requests are logged and not
    /// applied yet (a projector process's mirror keeps what they wrote).
    pub unapplied: usize,
}

/// The mutations each event produced (index = event index), or why the
/// request failed.
pub type Projection = Result<Vec<Vec<Mutation>>, ProjectFailure>;

/// A projector error, an invalid mutation, or a crash, at one event.
#[derive(Debug, Clone)]
pub struct ProjectFailure {
    /// The event's line or item number.
    pub position: usize,
    /// The plugin's message, or what was wrong with its output.
    pub message: String,
    /// Set when the projector process died.
    pub crash: Option<Crash>,
}

impl ProjectFailure {
    /// The plugin refused the event, or returned something invalid.
    pub fn error(position: usize, message: String) -> Self {
        Self {
            position,
            message,
            crash: None,
        }
    }
}

/// How a projector process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
}

impl Crash {
    /// The signal's name (`SIGSEGV`, ...), if a signal killed it.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal.map(crate::plugins::signal_name)
    }

    /// "was killed by SIGSEGV" or "exited with code 3".
    pub fn describe(&self) -> String {
        match (self.signal_name(), self.exit_code) {
            (Some(name), _) => format!("was killed by {name}"),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended".to_owned(),
        }
    }
}

/// What a projector reports back.
pub struct Projected {
    /// The request's ticket; 0 when a projector process died between
    /// requests.
    pub ticket: u64,
    /// The plugin's name.
    pub plugin: String,
    /// The result.
    pub outcome: Projection,
}

impl Projected {
    /// The crash it reports, if the projector process died.
    pub fn crash(&self) -> Option<Crash> {
        self.outcome.as_ref().err().and_then(|f| f.crash)
    }
}

/// What a projector needs once told a request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Settled {
    /// Nothing: it is in step with the store.
    InStep,
    /// A refused request stays in its state: start it afresh.
    StartAfresh,
}

/// What happened to a projector that made no progress for the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStuck {
    /// It was stopped and started afresh: it serves the next request.
    Restarted,
    /// It cannot be stopped (a thread): the build must be replaced.
    Abandoned,
}

/// One plugin build's projector, as the engine drives it.
pub trait Projector: Send {
    /// Queues a request; `false` if the projector is gone.
    fn submit(&mut self, job: ProjectJob) -> bool;

    /// The fate of a projected request: applied (logged and to be applied
    /// in order) or refused. Called once per answered ticket, before the
    /// next request is submitted. Returns [`Settled::StartAfresh`] when the
    /// projector cannot take a refused request back (it was not
    /// [`ProjectJob::undoable`]): the engine restarts it, with the pending
    /// mutations, before its next request.
    fn settle(&mut self, ticket: u64, applied: bool) -> Settled;

    /// Events projected so far: the engine's progress probe.
    fn progress(&self) -> u64;

    /// Whether it reads [`ProjectJob::pending`] (a thread does; a process
    /// mirrors those mutations already, so the engine need not copy them).
    fn needs_pending(&self) -> bool;

    /// The current request made no progress for the timeout.
    fn stuck(&mut self, pending: &[Mutation]) -> AfterStuck;

    /// Starts afresh after a crash, or to forget what it mirrored (its
    /// entities changed under it: a log write failed, a reprojection
    /// swapped them). `pending`: the plugin's logged, unapplied mutations.
    fn restart(&mut self, pending: &[Mutation]) -> std::io::Result<()>;

    /// The child process's id, if it runs in one.
    fn pid(&self) -> Option<u32>;
}

/// Starts the projector of a loaded build, in the way the build was loaded
/// ([`crate::plugins::load`]): in a child process or on a thread.
/// `store` is what it reads (and, in a child, mirrors); `done` receives
/// every answer.
pub fn start(
    lib: Arc<PluginLibrary>,
    store: SharedStore,
    done: impl Fn(Projected) + Send + Sync + 'static,
) -> std::io::Result<Box<dyn Projector>> {
    Ok(match lib.code {
        Code::Mapped(_) => Box::new(thread::ProjectorWorker::spawn(lib, store, done)?),
        Code::Child(_) => Box::new(process::ProcessProjector::start(lib, store, done)?),
    })
}

/// Projects requests one at a time and waits for each answer: reprojection
/// and other rebuilds, which own their store and apply what they get.
pub struct Blocking {
    projector: Box<dyn Projector>,
    answers: std::sync::mpsc::Receiver<Projected>,
    next_ticket: u64,
}

impl Blocking {
    /// A projector of `lib` over `store`.
    pub fn start(lib: Arc<PluginLibrary>, store: SharedStore) -> std::io::Result<Self> {
        let (sender, answers) = std::sync::mpsc::channel();
        let sender = std::sync::Mutex::new(sender);
        let projector = start(lib, store, move |done| {
            let _ = sender.lock().unwrap_or_else(|e| e.into_inner()).send(done);
        })?;
        Ok(Self {
            projector,
            answers,
            next_ticket: 1,
        })
    }

    /// Projects one request over the store (nothing pending). A crashed
    /// projector process is started again for the next request; one found
    /// dead before it took this one is started again for this one.
    pub fn project(&mut self, stream: &str, body: Arc<IngestBody>) -> Projection {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let job = || ProjectJob {
            ticket,
            stream: stream.into(),
            body: body.clone(),
            pending: Arc::new(Vec::new()),
            undoable: true,
            // The caller applies each answer before it asks for the next.
            unapplied: 0,
        };
        let gone = || Err(ProjectFailure::error(0, "the projector is gone".into()));
        if !self.projector.submit(job()) {
            return gone();
        }
        let mut restarted_for_this = false;
        loop {
            let Ok(answer) = self.answers.recv() else {
                return gone();
            };
            if answer.ticket != ticket {
                // It died between requests, maybe before reading this one.
                if answer.crash().is_some() && !restarted_for_this {
                    restarted_for_this = true;
                    if self.projector.restart(&[]).is_err() || !self.projector.submit(job()) {
                        return gone();
                    }
                }
                continue;
            }
            if answer.crash().is_some() {
                let _ = self.projector.restart(&[]);
            }
            return answer.outcome;
        }
    }

    /// Whether the last request's mutations were applied to the store.
    pub fn settle(&mut self, applied: bool) {
        // Its jobs are undoable: a refusal never needs a fresh start.
        let _ = self.projector.settle(self.next_ticket - 1, applied);
    }
}
