//! Recovery at start from a log the engine orders (this host's event log,
//! [`super::log::Local`]), the clock-started `_seq` of an in-memory host,
//! and closing whatever log the engine holds at shutdown. (A log that
//! orders records recovers in `super::ordered`: it replays nothing, the
//! log hands the records over again.)
//!
//! Recovery loads the latest checkpoint, then replays the records after it
//! through the loaded plugins, one request at a time, through the same
//! pipeline and the same engine loop as live requests ([`Engine::turn`]),
//! only nothing is logged again (`replaying`). So a replay reproduces the
//! `_seq`s and the state the live run had, and there is one loop to reason
//! about. Then the log writer starts and every request is logged first,
//! applied once durable: nothing a client sees or is told is ever undone by
//! a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::api::Command;
use super::log::{Local, Log, Persistence};
use super::pipeline::Waiting;
use super::Engine;
use crate::durable::LogStats;
use crate::ingest::IngestBody;

impl Engine {
    /// Starts a fresh in-memory store's `_seq` from the clock (microseconds
    /// since the Unix epoch), so `_seq` never goes backwards across
    /// restarts even though nothing is kept.
    pub fn start_seq_from_clock(&mut self) {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.pipeline.last_reserved_seq = micros;
        self.store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .advance_to(micros);
    }

    /// Restores the state kept in `persistence` (checkpoint, then the log
    /// after it, replayed through the loaded plugins) and makes the engine
    /// log every request from now on. Progress is logged for long replays.
    pub fn recover(&mut self, persistence: Persistence) -> Result<(), crate::durable::DataError> {
        let log = Local::open(&persistence);
        let started = Instant::now();
        let mut after = 0;
        if let Some(checkpoint) = log.load_checkpoint()? {
            after = checkpoint.rec;
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            store.restore(checkpoint.entities, checkpoint.hidden, checkpoint.last_seq);
            // The plugins' views were built over the empty store, and their
            // projector processes mirror it.
            self.views.rebuild_all(&store);
            drop(store);
            self.resync_projectors();
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
                self.pipeline.last_reserved_seq = self.pipeline.last_reserved_seq.max(last_seq);
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
                    self.pipeline.last_reserved_seq = self.pipeline.last_reserved_seq.max(last_seq);
                    continue;
                }
            };
            events += body.len();
            self.pipeline.last_reserved_seq =
                self.pipeline.last_reserved_seq.max(record.first_seq - 1);
            let (reply, mut answer) = oneshot::channel();
            self.ingest(Waiting {
                stream: record.stream.clone(),
                body,
                reply,
                retry_crash: true,
            });
            // The engine loop itself, until the record is answered.
            while !self.pipeline.is_idle() {
                self.turn(&queue, Duration::from_secs(1));
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
            self.pipeline.last_reserved_seq = self.pipeline.last_reserved_seq.max(last_seq);
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                tracing::info!(done = replayed + skipped, total, "replaying the event log");
            }
        }
        self.queue = Some(queue);
        self.replaying = false;
        let stats = log.disk_stats()?;
        let applied = self
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .version();
        self.pipeline.last_reserved_seq = self
            .pipeline
            .last_reserved_seq
            .max(stats.last_seq)
            .max(applied);
        self.store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .advance_to(self.pipeline.last_reserved_seq);
        tracing::info!(
            records = total,
            replayed,
            skipped,
            events,
            ms = started.elapsed().as_millis() as u64,
            last_seq = self.pipeline.last_reserved_seq,
            "state recovered"
        );
        let commands = self.commands.clone();
        let log = log.start(persistence, events as u64, move |report| {
            let _ = commands.send(Command::Log(report));
        })?;
        self.log = Box::new(log);
        Ok(())
    }

    /// Closes the log cleanly (shutdown): everything queued is written,
    /// then the file is closed; what is refused from now on is the log's
    /// business ([`Log::admit`]).
    pub(super) fn close_log(&mut self) {
        let plugins = &self.plugins;
        self.log
            .close(&self.store, &|| super::install::builds(plugins));
    }

    /// What `GET /status` shows about the log.
    pub(super) fn log_status(&self) -> Option<LogStats> {
        self.log.stats()
    }
}
