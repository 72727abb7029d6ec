//! The shared stream as the engine sees it: [`JetStreamLog`], the
//! [`Log`] of a cluster member, and what it tells the async side of this
//! module ([`ToCluster`], [`EngineState`], over the channels of
//! [`super::channels`]).
//!
//! JetStream orders the records, so this log takes no appends: a request is
//! published by the async side before it is projected, and the engine
//! applies the records as the consumer hands them over
//! (`engine/ordered.rs`). What is left for the engine to ask of it is what
//! the stream has beyond a single host's log: the ingests this host took,
//! waiting for their records; the applied position the consumer and
//! `/readyz` read; build and reprojection markers to publish, and history
//! to read for a reprojection; and the local checkpoints (the store, the
//! stream position and the builds running there) that go to the data
//! directory's redb file, so a restarting host reads only the records it
//! missed.
//!
//! It lives here, beside the async side, because everything in it is about
//! the stream; the engine only holds it as a `Box<dyn Log>`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::durable::{
    Checkpoint, DataError, EventLog, FsyncPolicy, LogWriter, Retention, WriterJob, WriterReport,
};
use crate::engine::link::SEQ_SHIFT;
use crate::engine::log::{History, Log, Offer, Reply};
use crate::engine::{IngestError, Ingested, ReprojectError};
use crate::ids::PluginName;
use crate::projector::SharedStore;
use crate::reproject::Fed;

/// What the engine asks of the async side.
#[derive(Debug)]
pub(crate) enum ToCluster {
    /// Publish a build marker unless the log runs that build.
    Offer(Offer),
    /// Publish a reprojection marker.
    Reproject { plugin: String },
    /// Read the ingest records of `streams` before position `upto` into
    /// `sink`, then [`Fed::End`] (or [`Fed::Failed`]).
    Fetch {
        upto: u64,
        streams: Vec<String>,
        sink: mpsc::Sender<Fed>,
    },
}

/// What the engine tells the async side about consuming.
#[derive(Debug, Default)]
pub(crate) struct EngineState {
    /// Why it stopped consuming (a missing build, a stuck projector).
    pub paused: Option<String>,
    /// Plugins with a staged build and no marker applied yet: their streams
    /// are not served until the marker (published at start) is read.
    pub unmarked: Vec<String>,
}

/// The engine's end of the cluster channels.
pub(crate) struct EngineLink {
    /// What the engine asks of the async side.
    pub requests: mpsc::UnboundedSender<ToCluster>,
    /// Ingest streams some loaded or staged build consumes.
    pub known_streams: Arc<RwLock<HashSet<String>>>,
    /// What the engine last said about consuming.
    pub engine: Arc<Mutex<EngineState>>,
    /// The last stream sequence the engine applied.
    pub applied: watch::Sender<u64>,
}

/// Where a cluster member keeps its checkpoints.
pub struct ClusterPersistence {
    /// The data directory's database (`None`: `--in-memory`, every start
    /// reads the whole stream).
    pub log: Option<Arc<EventLog>>,
    /// Checkpoint after this many events...
    pub checkpoint_every_events: u64,
    /// ...or this long, whichever comes first.
    pub checkpoint_every: Duration,
}

/// Local checkpoints of a cluster member.
struct Checkpoints {
    log: Arc<EventLog>,
    writer: LogWriter,
    every_events: u64,
    every: Duration,
    events_since: u64,
    last: Instant,
    /// Stream position of the last checkpoint taken.
    taken_at: u64,
}

/// The shared JetStream stream, as the engine's [`Log`].
pub(crate) struct JetStreamLog {
    link: EngineLink,
    /// Ingests received by this host, waiting for their record to apply.
    waiters: HashMap<String, Reply>,
    checkpoints: Option<Checkpoints>,
}

impl JetStreamLog {
    /// The engine's side of the stream; checkpoints go to
    /// `persistence.log` (if any) through a writer thread reporting to
    /// `report`.
    pub(crate) fn new(
        link: EngineLink,
        persistence: ClusterPersistence,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> Self {
        let checkpoints = persistence.log.map(|log| Checkpoints {
            writer: LogWriter::spawn(log.clone(), FsyncPolicy::Always, Retention::All, report),
            log,
            every_events: persistence.checkpoint_every_events,
            every: persistence.checkpoint_every,
            events_since: 0,
            last: Instant::now(),
            taken_at: 0,
        });
        JetStreamLog {
            link,
            waiters: HashMap::new(),
            checkpoints,
        }
    }

    /// Takes a checkpoint every N events or M seconds (or now, `force`).
    fn checkpoint(
        &mut self,
        seq: u64,
        events: u64,
        force: bool,
        store: &SharedStore,
        builds: &dyn Fn() -> Vec<(String, String)>,
    ) {
        let Some(checkpoints) = self.checkpoints.as_mut() else {
            return;
        };
        checkpoints.events_since += events;
        let due = checkpoints.events_since >= checkpoints.every_events
            || (checkpoints.last.elapsed() >= checkpoints.every && checkpoints.events_since > 0);
        if !(due || force) || checkpoints.taken_at == seq {
            return;
        }
        checkpoints.events_since = 0;
        checkpoints.last = Instant::now();
        checkpoints.taken_at = seq;
        let builds = builds();
        let store = store.read().unwrap_or_else(|e| e.into_inner());
        checkpoints.writer.submit(WriterJob::Checkpoint(Checkpoint {
            rec: seq,
            last_seq: store.version(),
            entities: store.entities(),
            builds,
            hidden: store.hidden_states(),
        }));
    }
}

impl Log for JetStreamLog {
    fn orders_requests(&self) -> bool {
        true
    }

    /// A record's `_seq`s start at its stream position shifted by
    /// [`SEQ_SHIFT`], so a request must fit in that range.
    fn admit(&self, mutations: u64, plugins: &[PluginName]) -> Result<(), IngestError> {
        if mutations >= 1 << SEQ_SHIFT {
            return Err(IngestError::Projector {
                plugin: plugins.join(","),
                position: 0,
                message: format!(
                    "the request produced {mutations} mutations; in cluster mode a request may produce fewer than {}",
                    1u64 << SEQ_SHIFT
                ),
            });
        }
        Ok(())
    }

    fn wait(&mut self, request: String, reply: Reply) {
        self.waiters.insert(request, reply);
    }

    fn forget(&mut self, request: &str) {
        self.waiters.remove(request);
    }

    fn answer(&mut self, request: &str, outcome: Result<Ingested, IngestError>) {
        if let Some(reply) = self.waiters.remove(request) {
            let _ = reply.send(outcome);
        }
    }

    fn advance(
        &mut self,
        position: u64,
        events: u64,
        store: &SharedStore,
        builds: &dyn Fn() -> Vec<(String, String)>,
    ) {
        let _ = self.link.applied.send(position);
        crate::metrics::get()
            .cluster_applied_position
            .set(position as i64);
        self.checkpoint(position, events, false, store, builds);
    }

    fn resume(&mut self, position: u64) {
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.taken_at = position;
        }
        let _ = self.link.applied.send(position);
    }

    fn offer(&mut self, build: Offer) {
        self.link
            .known_streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(build.streams.iter().cloned());
        let _ = self.link.requests.send(ToCluster::Offer(build));
    }

    fn consuming(&mut self, paused: Option<String>, unmarked: Vec<String>) {
        let mut state = self.link.engine.lock().unwrap_or_else(|e| e.into_inner());
        state.paused = paused;
        state.unmarked = unmarked;
    }

    fn fetch(&mut self, upto: u64, streams: Vec<String>, sink: mpsc::Sender<Fed>) {
        let _ = self.link.requests.send(ToCluster::Fetch {
            upto,
            streams,
            sink,
        });
    }

    fn load_checkpoint(&self) -> Result<Option<Checkpoint>, DataError> {
        match &self.checkpoints {
            Some(checkpoints) => checkpoints.log.load_checkpoint(),
            None => Ok(None),
        }
    }

    /// `POST /plugins/{name}/reproject`: a marker in the log, so every
    /// host rebuilds at the same position.
    fn reproject(&mut self, plugin: &str) -> Result<History, ReprojectError> {
        let _ = self.link.requests.send(ToCluster::Reproject {
            plugin: plugin.to_owned(),
        });
        Ok(History::AtMarker)
    }

    /// A last checkpoint at the applied position, so the next start reads
    /// nothing twice; then the checkpoint writer is closed. Records still
    /// arriving are applied (the stream keeps them anyway).
    fn close(&mut self, store: &SharedStore, builds: &dyn Fn() -> Vec<(String, String)>) {
        let applied = *self.link.applied.borrow();
        self.checkpoint(applied, 0, true, store, builds);
        if let Some(checkpoints) = self.checkpoints.take() {
            checkpoints.writer.close();
            tracing::info!(position = applied, "cluster checkpoint written");
        }
    }
}
