//! [`Local`]: this host's own event log (`--data DIR`) as the engine uses
//! it: records appended by the [`LogWriter`] thread after projection, a
//! checkpoint every N events or M seconds, the records after the latest
//! checkpoint read back at start, and the writer closed at shutdown.
//!
//! The log's format and the writer thread are [`crate::durable`]; this is
//! only the engine's side of them, apart from [`super`] so the trait stays
//! readable on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{History, Log};
use crate::durable::{
    Checkpoint, DataError, EventLog, FsyncPolicy, LogRecord, LogStats, LogWriter, SourceMark,
    WriterJob, WriterReport,
};
use crate::engine::api::{IngestError, ReprojectError};
use crate::ids::PluginName;
use crate::projector::SharedStore;

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

/// The event log of a single durable host.
pub(crate) struct Local {
    /// `None` once closed at shutdown (the file is closed with the last
    /// handle on it).
    log: Option<Arc<EventLog>>,
    /// `None` until recovery is done, and once closed at shutdown: then
    /// requests are refused, never applied unlogged.
    writer: Option<LogWriter>,
    next_rec: u64,
    checkpoint_every_events: u64,
    checkpoint_every: Duration,
    events_since_checkpoint: u64,
    last_checkpoint: Instant,
}

impl Local {
    /// The log of `persistence`, before its writer starts: it can be read
    /// (checkpoint, records) for recovery, not written.
    pub(crate) fn open(persistence: &Persistence) -> Self {
        Local {
            log: Some(persistence.log.clone()),
            writer: None,
            next_rec: 1,
            checkpoint_every_events: persistence.checkpoint_every_events,
            checkpoint_every: persistence.checkpoint_every,
            events_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        }
    }

    /// The log as it is after recovery, written by its writer thread from
    /// now on; `report` receives the writer's outcomes. `events` were
    /// replayed since the checkpoint.
    pub(crate) fn start(
        mut self,
        persistence: Persistence,
        events: u64,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> Result<Self, DataError> {
        let log = self.event_log().clone();
        let stats = self.disk_stats()?;
        crate::durable::publish_gauges(&log);
        self.writer = Some(LogWriter::spawn(
            log,
            persistence.fsync,
            persistence.retention,
            report,
        ));
        self.next_rec = stats.last_rec + 1;
        self.events_since_checkpoint = events;
        self.last_checkpoint = Instant::now();
        Ok(self)
    }

    fn event_log(&self) -> &Arc<EventLog> {
        self.log.as_ref().expect("open until closed at shutdown")
    }

    /// What is on disk.
    pub(crate) fn disk_stats(&self) -> Result<LogStats, DataError> {
        let log = self.event_log();
        log.stats().map_err(|reason| DataError::Storage {
            path: log.path().to_owned(),
            reason,
        })
    }
}

impl Log for Local {
    fn admit(&self, _mutations: u64, _plugins: &[PluginName]) -> Result<(), IngestError> {
        match self.writer {
            Some(_) => Ok(()),
            None => Err(IngestError::ShuttingDown),
        }
    }

    fn append(
        &mut self,
        stream: &str,
        first_seq: u64,
        mutations: u64,
        body: Bytes,
        source: Option<SourceMark>,
    ) -> Option<u64> {
        let writer = self.writer.as_ref()?;
        let rec = self.next_rec;
        self.next_rec += 1;
        writer.submit(WriterJob::Append(LogRecord {
            rec,
            stream: stream.to_owned(),
            first_seq,
            mutations,
            body,
            logged_at_ms: crate::durable::now_ms(),
            source,
        }));
        Some(rec)
    }

    /// Takes a checkpoint every N events or M seconds: the store's entities
    /// (`Arc` clones, cheap) go to the writer thread, which serializes them.
    fn committed(&mut self, rec: u64, events: u64, store: &SharedStore) {
        let Some(writer) = &self.writer else {
            return;
        };
        if rec == 0 {
            return;
        }
        self.events_since_checkpoint += events;
        if self.events_since_checkpoint < self.checkpoint_every_events
            && self.last_checkpoint.elapsed() < self.checkpoint_every
        {
            return;
        }
        self.events_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let store = store.read().unwrap_or_else(|e| e.into_inner());
        let checkpoint = Checkpoint {
            rec,
            last_seq: store.version(),
            entities: store.entities(),
            // A single host replays with the builds loaded at start.
            builds: Vec::new(),
            hidden: store.hidden_states(),
        };
        drop(store);
        writer.submit(WriterJob::Checkpoint(checkpoint));
    }

    fn records_after(&self, rec: u64) -> Result<Vec<LogRecord>, DataError> {
        self.event_log().records_after(rec)
    }

    fn load_checkpoint(&self) -> Result<Option<Checkpoint>, DataError> {
        self.event_log().load_checkpoint()
    }

    fn reproject(&mut self, _plugin: &str) -> Result<History, ReprojectError> {
        match (&self.writer, &self.log) {
            (Some(_), Some(log)) => Ok(History::Records(log.clone())),
            _ => Err(ReprojectError::Failed("the server is shutting down".into())),
        }
    }

    /// Everything queued is written, then the file is closed.
    fn close(&mut self, _store: &SharedStore, _builds: &dyn Fn() -> Vec<(String, String)>) {
        if let Some(writer) = self.writer.take() {
            writer.close();
            self.log = None;
            tracing::info!("event log closed");
        }
    }

    fn stats(&self) -> Option<LogStats> {
        self.writer.as_ref()?;
        self.log.as_ref()?.stats().ok()
    }
}
