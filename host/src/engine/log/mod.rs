//! The log: where an accepted request goes before it is applied, and what
//! the host reads back at start. The engine holds one [`Log`] and talks to
//! it, never to a mode; [`Front`] is the same log as the HTTP side sees it
//! (where an ingest goes, `/readyz`, `/status`).
//!
//! Implementations:
//! - [`InMemory`] (`--in-memory`): nothing is kept; a request is applied at
//!   once.
//! - [`Local`] (`--data DIR`): this host's redb event log
//!   ([`crate::durable`]), with its writer thread and checkpoints.
//! - JetStream (`--cluster`): the shared NATS stream, in `crate::cluster`
//!   (the engine never names it: it is handed a `Box<dyn Log>`).
//!
//! # Why the interface has this shape
//!
//! The two durable logs differ in the one thing that decides the flow:
//! **who orders the records**, and so **when a record is applied**.
//!
//! - A local log is ordered by the engine. A request is projected first;
//!   then the engine reserves its `_seq`s, [`Log::append`]s its record and
//!   applies it once the log reports it durable (`Command::Log`); a failed
//!   write refuses it and whatever projected over it. The log only has to
//!   keep what the engine already decided, so it sees records *after*
//!   projection.
//! - A shared log is ordered by itself ([`Log::orders_requests`]). A request
//!   is published first (by [`Front::ingest`], off the engine thread); every
//!   host reads the records back in the log's order and applies them one at
//!   a time, each to completion (`engine/ordered.rs`), so all hosts reach
//!   the same state. The log sees records *before* projection, and so does
//!   everything that must happen at the same point on every host: plugin
//!   builds switch at their markers, reprojections run at theirs. A request
//!   taken by this host [`Log::wait`]s for its record; [`Log::answer`] and
//!   [`Log::advance`] follow each record applied.
//!
//! So the trait has two groups of methods, one per flow, each defaulting to
//! nothing for the other flow, and a few both share (admission, recovery,
//! checkpoints, closing, status). Everything that depends on the *kind* of
//! log is asked of it ([`Log::orders_requests`], [`Log::must_agree`],
//! [`Log::admit`]) rather than branched on. Another source of events (a
//! database's change stream, another broker) is one more implementation:
//! one that orders records hands them to the engine as
//! `Command::Record(LogEntry)`, like JetStream does; one the engine orders
//! appends like [`Local`].

mod local;

pub(crate) use local::Local;
pub use local::Persistence;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::api::{EngineHandle, IngestError, Ingested, ReprojectError};
use crate::durable::{Checkpoint, DataError, EventLog, LogRecord, LogStats, SourceMark};
use crate::ids::PluginName;
use crate::ingest::IngestBody;
use crate::projector::SharedStore;
use crate::reproject::Fed;

/// An ingest's answer, sent when its request is applied or refused.
pub(crate) type Reply = oneshot::Sender<Result<Ingested, IngestError>>;

/// A future a [`Front`] returns.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a reprojection reads the history it replays.
pub(crate) enum History {
    /// This host's event log, up to its last record.
    Records(Arc<EventLog>),
    /// The log ordered a reprojection marker: every host rebuilds when it
    /// reaches it (nothing starts now).
    AtMarker,
}

/// The log as the engine thread sees it. See the module doc for why it
/// has two groups of methods.
pub(crate) trait Log: Send {
    // --- What kind of log this is.

    /// True when the log orders requests (they are published before they
    /// are projected, and applied as the log hands them over); false when
    /// the engine orders them (projected, then appended).
    fn orders_requests(&self) -> bool {
        false
    }

    /// Whether every outcome must be the same wherever the record is
    /// applied: a crashing record is retried once and then refused rather
    /// than retiring the plugin, a timeout pauses instead of skipping.
    /// True for a log shared by several hosts.
    fn must_agree(&self) -> bool {
        self.orders_requests()
    }

    /// Whether a request of `mutations` mutations may be committed now
    /// (the log is closed, or its records cannot carry that many).
    fn admit(&self, mutations: u64, plugins: &[PluginName]) -> Result<(), IngestError>;

    // --- The engine orders the records (project, append, apply).

    /// Appends a projected request's record: `Some(record number)`, applied
    /// once the log reports it durable; `None`, applied at once. `source`:
    /// where the source that produced it stands once it is applied, kept
    /// with the record (a log that keeps nothing drops it).
    fn append(
        &mut self,
        _stream: &str,
        _first_seq: u64,
        _mutations: u64,
        _body: Bytes,
        _source: Option<SourceMark>,
    ) -> Option<u64> {
        None
    }

    /// A request of record `rec` (0: none) with `events` events was
    /// applied; the log may take a checkpoint of `store`.
    fn committed(&mut self, _rec: u64, _events: u64, _store: &SharedStore) {}

    /// The records after `rec`, to replay at start.
    fn records_after(&self, _rec: u64) -> Result<Vec<LogRecord>, DataError> {
        Ok(Vec::new())
    }

    // --- The log orders the records (publish, then apply in its order).

    /// A request this host took waits for its record.
    fn wait(&mut self, _request: String, _reply: Reply) {}

    /// The request stopped waiting (not published, or tired of waiting).
    fn forget(&mut self, _request: &str) {}

    /// Answers the waiter of `request`, if this host took it.
    fn answer(&mut self, _request: &str, _outcome: Result<Ingested, IngestError>) {}

    /// The record at `position` was applied (or refused alike everywhere):
    /// the applied position moves on, and a checkpoint of `store` with the
    /// `builds` running is taken now and then.
    fn advance(
        &mut self,
        _position: u64,
        _events: u64,
        _store: &SharedStore,
        _builds: &dyn Fn() -> Vec<(String, String)>,
    ) {
    }

    /// Recovery is done: the log resumes after `position` (the checkpoint
    /// loaded, 0 if none).
    fn resume(&mut self, _position: u64) {}

    /// A build this host mapped; the log decides where it starts running
    /// (`at_start`: found at start rather than dropped in later).
    fn offer(&mut self, _build: Offer) {}

    /// What the engine says about consuming: why it stopped (if it did),
    /// and the plugins with a staged build and no marker applied yet.
    fn consuming(&mut self, _paused: Option<String>, _unmarked: Vec<String>) {}

    /// Reads the log's ingest records of `streams` before `upto` into
    /// `sink`, for a reprojection at a marker.
    fn fetch(&mut self, _upto: u64, _streams: Vec<String>, _sink: mpsc::Sender<Fed>) {}

    // --- Both.

    /// The latest checkpoint, to start from.
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>, DataError> {
        Ok(None)
    }

    /// Where a reprojection of `plugin` reads its history (asking the log
    /// for a marker when the log orders it).
    fn reproject(&mut self, plugin: &str) -> Result<History, ReprojectError>;

    /// Shutdown: everything queued is written (a last checkpoint, for a log
    /// that orders records), then the log is closed; what it refuses from
    /// then on is up to [`Log::admit`].
    fn close(&mut self, _store: &SharedStore, _builds: &dyn Fn() -> Vec<(String, String)>) {}

    /// What `GET /status` shows of the log's content, if anything.
    fn stats(&self) -> Option<LogStats> {
        None
    }
}

/// A build offered to a log that orders records.
#[derive(Debug)]
pub(crate) struct Offer {
    /// The plugin.
    pub plugin: String,
    /// The build's fingerprint.
    pub fingerprint: String,
    /// Its version, for messages.
    pub version: String,
    /// The ingest streams it consumes.
    pub streams: Vec<String>,
    /// Found in the plugins directory at start (rather than dropped in
    /// later): then a marker is published only if the plugin has none yet,
    /// so a restarting host with an old file does not switch the cluster
    /// back to it.
    pub at_start: bool,
}

/// Nothing is kept (`--in-memory`): a request is applied at once.
pub(crate) struct InMemory;

impl Log for InMemory {
    fn admit(&self, _mutations: u64, _plugins: &[PluginName]) -> Result<(), IngestError> {
        Ok(())
    }

    fn reproject(&mut self, _plugin: &str) -> Result<History, ReprojectError> {
        Err(ReprojectError::InMemory)
    }
}

/// Readiness as `/readyz` reports it: 200 with `body` when `ready`, else
/// 503 with `body`.
pub(crate) struct Readiness {
    pub ready: bool,
    pub body: serde_json::Value,
}

/// The log as the HTTP side sees it, off the engine thread.
pub(crate) trait Front: Send + Sync {
    /// Applies an ingest request: through the engine (which appends it when
    /// it is projected), or published first when the log orders requests.
    fn ingest<'a>(
        &'a self,
        engine: &'a EngineHandle,
        stream: &'a str,
        body: Arc<IngestBody>,
    ) -> BoxFuture<'a, Result<Ingested, IngestError>>;

    /// `/readyz` (the port of a single host opens once its log is
    /// replayed, so it is ready unless its log cannot be written).
    fn readiness(&self) -> Readiness;

    /// `GET /status`.
    fn status<'a>(&'a self, engine: &'a EngineHandle) -> BoxFuture<'a, serde_json::Value>;
}

/// The front of a log the engine orders: ingest goes to the engine.
/// `health` is `None` for [`InMemory`].
pub(crate) struct EngineFront {
    pub health: Option<Arc<crate::durable::LogHealth>>,
}

impl Front for EngineFront {
    fn ingest<'a>(
        &'a self,
        engine: &'a EngineHandle,
        stream: &'a str,
        body: Arc<IngestBody>,
    ) -> BoxFuture<'a, Result<Ingested, IngestError>> {
        Box::pin(engine.ingest(stream, body))
    }

    fn readiness(&self) -> Readiness {
        match self.health.as_ref().and_then(|log| log.fault()) {
            Some(reason) => Readiness {
                ready: false,
                body: serde_json::json!({
                    "error": crate::codes::HttpCode::StorageUnavailable.as_str(),
                    "message": format!("the event log cannot be written ({reason}); reopened with backoff, ingest resumes by itself"),
                    "status": "storage-unavailable",
                }),
            },
            None => Readiness {
                ready: true,
                body: serde_json::json!({"status": "ready"}),
            },
        }
    }

    fn status<'a>(&'a self, engine: &'a EngineHandle) -> BoxFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let log = engine.log_status().await;
            let fault = self.health.as_ref().and_then(|log| log.fault());
            serde_json::json!({
                "storage": if self.health.is_some() { "durable" } else { "in-memory" },
                "log": log,
                "storage_fault": fault,
            })
        })
    }
}
