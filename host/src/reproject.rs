//! Reprojection: rebuilding a plugin's entities from the event log through
//! a new build of its projector, while the current state keeps serving.
//!
//! A plugin that changes how it projects (a bug fix, a new field) would
//! otherwise serve history computed by the old code. The log holds every
//! event, and projectors are deterministic, so the host can recompute:
//!
//! 1. A reprojector thread replays every logged record of the plugin's
//!    streams through the plugin into a *shadow* store (the live store is
//!    not touched; ingest and subscribers carry on). Progress (records
//!    replayed of total, events/s) shows in `GET /plugins`.
//! 2. Caught up with the log, it tells the engine, which waits until the
//!    plugin has nothing in flight, holds its new requests back for the
//!    moment, and lets the reprojector replay the few records logged
//!    meanwhile.
//! 3. The engine swaps: the difference between the live entities and the
//!    shadow ones is committed like any request (one log record reserving
//!    its `_seq`s, then `delete`s for entities that no longer exist and
//!    delete + patch for changed ones), so subscribers converge without
//!    reconnecting. Unchanged entities send nothing.
//!
//! It is refused when the log no longer starts at its first record
//! (`--retain` dropped some): the rebuild would be missing history.
//!
//! In cluster mode ([`Reprojector::spawn_fed`]) the records come from the
//! shared stream, read up to the marker that asked for the rebuild while
//! the host consumes nothing else, so there is no final pass: the rebuilt
//! state is swapped in at the marker's position on every host. A record the
//! new build refuses is skipped there (it was in the log refused or not,
//! and every host skips it alike), where a single host's log holds only
//! accepted records and a refusal fails the rebuild.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Instant;

use crate::durable::EventLog;
use crate::ingest::IngestBody;
use crate::plugins::PluginLibrary;
pub use crate::plugins::ReprojectionStatus;
use crate::projector::{Blocking, SharedStore};
use crate::store::Store;

/// What the reprojector thread tells the engine.
pub enum ReprojectReport {
    /// Every record logged so far is replayed; ready for the final pass.
    CaughtUp {
        /// The plugin.
        plugin: String,
    },
    /// The final pass is done: the shadow store holds the rebuilt entities.
    Done {
        /// The plugin.
        plugin: String,
        /// The rebuilt entities of the plugin.
        shadow: Store,
    },
    /// The rebuild failed; the live state is untouched.
    Failed {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// Progress counters shared with the engine (for `GET /plugins`).
#[derive(Default)]
pub struct Progress {
    /// Log records looked at.
    pub records: AtomicU64,
    /// Events projected.
    pub events: AtomicU64,
}

/// The engine's handle on a running reprojector thread.
pub struct Reprojector {
    finish: mpsc::Sender<()>,
    /// Shared progress.
    pub progress: Arc<Progress>,
    /// When it started.
    pub started: Instant,
    /// Records in the log when it started.
    pub total: u64,
}

impl Reprojector {
    /// Starts rebuilding `lib`'s entities from `log`.
    pub fn spawn(
        lib: Arc<PluginLibrary>,
        log: Arc<EventLog>,
        total: u64,
        report: impl Fn(ReprojectReport) + Send + 'static,
    ) -> std::io::Result<Reprojector> {
        let (finish, finish_signal) = mpsc::channel::<()>();
        Reprojector::start(
            lib,
            total,
            finish,
            report,
            move |lib, shadow, projector, progress, report| {
                let cursor = replay(lib, &log, shadow, projector, 0, progress)?;
                report(ReprojectReport::CaughtUp {
                    plugin: lib.manifest.name.clone(),
                });
                finish_signal
                    .recv()
                    .map_err(|_| "the engine stopped".to_owned())?;
                replay(lib, &log, shadow, projector, cursor, progress).map(|_| ())
            },
        )
    }

    /// The thread both kinds of rebuild run on: `rebuild` fills a shadow
    /// store, whose outcome is then reported ([`report_end`]).
    fn start<R>(
        lib: Arc<PluginLibrary>,
        total: u64,
        finish: mpsc::Sender<()>,
        report: R,
        rebuild: impl FnOnce(&PluginLibrary, &SharedStore, &mut Blocking, &Progress, &R) -> Result<(), String>
            + Send
            + 'static,
    ) -> std::io::Result<Reprojector>
    where
        R: Fn(ReprojectReport) + Send + 'static,
    {
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        std::thread::Builder::new()
            .name(format!("reproject-{}", lib.manifest.name))
            .spawn(move || {
                let shadow: SharedStore = Arc::new(RwLock::new(Store::new()));
                // The new build projects over the shadow store: in its own
                // child process under process isolation, like any request.
                let outcome = match Blocking::start(lib.clone(), shadow.clone()) {
                    Ok(mut projector) => rebuild(&lib, &shadow, &mut projector, &shared, &report),
                    Err(err) => Err(format!("cannot start the projector: {err}")),
                };
                report_end(lib.manifest.name.clone(), &shadow, outcome, &report);
            })?;
        Ok(Reprojector {
            finish,
            progress,
            started: Instant::now(),
            total,
        })
    }

    /// Lets the thread replay what was logged since it caught up, and swap.
    pub fn finish(&self) {
        let _ = self.finish.send(());
    }
}

/// What a cluster reprojection is fed, in stream order.
pub enum Fed {
    /// The next record of one of the plugin's streams.
    Record(crate::durable::LogRecord),
    /// Every record before the marker was sent.
    End,
    /// The stream could not be read to the marker.
    Failed(String),
}

impl Reprojector {
    /// Cluster mode: rebuilds `lib`'s entities from the records `records`
    /// delivers (the shared stream up to the marker), then reports `Done`
    /// (no final pass: the host consumes nothing meanwhile). Records the
    /// build refuses are skipped.
    pub fn spawn_fed(
        lib: Arc<PluginLibrary>,
        mut records: tokio::sync::mpsc::Receiver<Fed>,
        total: u64,
        report: impl Fn(ReprojectReport) + Send + 'static,
    ) -> std::io::Result<Reprojector> {
        // No final pass: nothing waits on `finish`.
        let (finish, _) = mpsc::channel::<()>();
        Reprojector::start(
            lib,
            total,
            finish,
            report,
            move |lib, shadow, projector, progress, _| loop {
                match records.blocking_recv() {
                    Some(Fed::Record(record)) => {
                        progress.records.fetch_add(1, Ordering::Relaxed);
                        if let Err(reason) = project_record(shadow, projector, &record, progress) {
                            tracing::debug!(plugin = %lib.manifest.name, %reason, "record refused by the new build; skipped");
                        }
                    }
                    Some(Fed::End) => return Ok(()),
                    Some(Fed::Failed(reason)) => return Err(reason),
                    None => return Err("the stream reader stopped".to_owned()),
                }
            },
        )
    }
}

/// Reports the end of a rebuild: the shadow store, or why it failed.
fn report_end(
    plugin: String,
    shadow: &SharedStore,
    outcome: Result<(), String>,
    report: &impl Fn(ReprojectReport),
) {
    match outcome {
        Ok(()) => {
            let shadow = std::mem::take(&mut *shadow.write().unwrap_or_else(|e| e.into_inner()));
            report(ReprojectReport::Done { plugin, shadow });
        }
        Err(reason) => report(ReprojectReport::Failed { plugin, reason }),
    }
}

/// Projects one record of the plugin's streams into `shadow`; nothing is
/// applied if the projector refuses it (or crashes on it).
fn project_record(
    shadow: &SharedStore,
    projector: &mut Blocking,
    record: &crate::durable::LogRecord,
    progress: &Progress,
) -> Result<(), String> {
    let body = IngestBody::parse(record.body.clone()).map_err(|e| {
        format!(
            "log record {}: line {}: {}",
            record.rec, e.position, e.message
        )
    })?;
    let body = Arc::new(body);
    let events = body.len() as u64;
    let produced = match projector.project(&record.stream, body) {
        Ok(produced) => produced,
        Err(failure) => {
            projector.settle(false);
            return Err(format!(
                "log record {} event {}: {}",
                record.rec, failure.position, failure.message
            ));
        }
    };
    progress.events.fetch_add(events, Ordering::Relaxed);
    let mut store = shadow.write().unwrap_or_else(|e| e.into_inner());
    for mutation in produced.into_iter().flatten() {
        store.apply(mutation);
    }
    drop(store);
    projector.settle(true);
    Ok(())
}

/// Replays the records after `cursor` of the plugin's streams into
/// `shadow`; returns the last record read.
fn replay(
    lib: &PluginLibrary,
    log: &EventLog,
    shadow: &SharedStore,
    projector: &mut Blocking,
    cursor: u64,
    progress: &Progress,
) -> Result<u64, String> {
    let records = log.records_after(cursor).map_err(|e| e.to_string())?;
    let mut last = cursor;
    let total = records.len();
    let (started, mut reported) = (Instant::now(), Instant::now());
    for (done, record) in records.into_iter().enumerate() {
        last = record.rec;
        progress.records.fetch_add(1, Ordering::Relaxed);
        if reported.elapsed().as_secs() >= 2 {
            reported = Instant::now();
            let events = progress.events.load(Ordering::Relaxed);
            tracing::info!(
                plugin = %lib.manifest.name,
                done,
                total,
                events_per_second = (events as f64 / started.elapsed().as_secs_f64()) as u64,
                "reprojecting"
            );
        }
        if !lib.manifest.streams.contains(&record.stream) {
            continue;
        }
        project_record(shadow, projector, &record, progress)?;
    }
    Ok(last)
}
