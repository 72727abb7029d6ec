//! Applying the records of a log that orders them
//! ([`super::log::Log::orders_requests`]; cluster mode's JetStream stream,
//! whose async side is `crate::cluster`): records ([`super::link::LogEntry`]) are applied one at
//! a time, in the log's order, each to completion before the next starts,
//! so every host reaches the same state with the same `_seq`s whatever its
//! timing.
//!
//! Plugin builds found in the plugins directory are *staged*, not run: a
//! build runs from the position of its marker in the log, on every host at
//! once. A marker naming a build this host lacks pauses consumption (the
//! host reports itself not ready) until the file appears.
//!
//! This is the engine's half because it acts on the engine's plugins,
//! pipeline and reprojections; what is specific to the log (waiters,
//! the applied position, checkpoints, markers published) is behind
//! [`super::log::Log`], implemented next to the log's async side.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::link::{EntryKind, LogEntry, SEQ_SHIFT};
use super::log::Offer;
use super::pipeline::Waiting;
use super::{Engine, IngestError, Ingested, InstallError};
use crate::ingest::IngestBody;
use crate::plugins::{PluginLibrary, PluginReport, PluginState};
use crate::reproject::{Fed, ReprojectReport, Reprojector};

/// What the engine keeps of a log that orders records (all empty for one
/// the engine orders).
#[derive(Default)]
pub(super) struct Ordered {
    /// Records received and not applied yet, in the log's order.
    pub(super) queue: VecDeque<LogEntry>,
    /// The record being applied.
    current: Option<Applying>,
    /// Builds mapped but not (yet) switched to by a marker.
    staged: Vec<PluginLibrary>,
    /// Why consumption stopped, if it did.
    pause: Option<Pause>,
    /// A reprojection (plugin, marker position) consumption waits for.
    reprojecting: Option<(String, u64)>,
    /// The state was recovered: builds mapped from now on were dropped in
    /// while running.
    started: bool,
}

struct Applying {
    seq: u64,
    request: Option<String>,
    answer: oneshot::Receiver<Result<Ingested, IngestError>>,
}

/// Why this host stopped consuming the log.
#[derive(Debug, Clone)]
enum Pause {
    /// The log switches `plugin` to a build this host has no file of.
    MissingBuild {
        plugin: String,
        fingerprint: String,
        version: String,
        position: u64,
    },
    /// A projector timed out on a record: skipping it would diverge from
    /// the other hosts, so nothing more is applied until a restart.
    Stuck { plugin: String, position: u64 },
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pause::MissingBuild {
                plugin,
                fingerprint,
                version,
                position,
            } => write!(
                f,
                "the log switches plugin {plugin:?} to build {fingerprint} (version {version}) at position {position}; put that build in the plugins directory"
            ),
            Pause::Stuck { plugin, position } => write!(
                f,
                "plugin {plugin:?} made no progress on the record at position {position}; restart the host (the record is applied again)"
            ),
        }
    }
}

impl Engine {
    /// A mapped build waits for its marker. It is offered to the log
    /// (which publishes a marker unless it runs that build already), and
    /// resumes consumption if the log waits for it.
    pub(super) fn stage(&mut self, lib: PluginLibrary) -> Result<String, InstallError> {
        let name = lib.manifest.name.clone();
        let running = self
            .plugins
            .get(name.as_str())
            .is_some_and(|p| p.lib.fingerprint == lib.fingerprint);
        let previous = self.reports.remove(&lib.file);
        let history = previous
            .as_ref()
            .map(|p| p.history.clone())
            .unwrap_or_default();
        let (since, loaded_at) = match previous {
            Some(p) if running => (p.since, p.loaded_at),
            _ => (None, None),
        };
        let state = if running {
            PluginState::Loaded
        } else {
            PluginState::Staged
        };
        let report = PluginReport {
            since,
            loaded_at,
            history,
            ..PluginReport::of_build(&lib, state)
        };
        self.reports.insert(lib.file.clone(), report);
        self.log.offer(Offer {
            plugin: name.clone(),
            fingerprint: lib.fingerprint.clone(),
            version: lib.manifest.version.clone(),
            streams: lib.manifest.streams.clone(),
            at_start: !self.ordered.started,
        });
        let side = &mut self.ordered;
        if !running {
            side.staged.retain(|s| s.fingerprint != lib.fingerprint);
            tracing::info!(plugin = %name, fingerprint = %lib.fingerprint, "build staged; it runs from its marker in the log");
            side.staged.push(lib);
        }
        let waited_for = matches!(
            &side.pause,
            Some(Pause::MissingBuild { plugin, .. }) if *plugin == name
        );
        if waited_for {
            self.ordered.pause = None;
            self.reports.retain(|_, r| r.state != PluginState::Missing);
            self.publish_engine_state();
        }
        Ok(name)
    }

    /// A plugin file was deleted. Builds staged from it are
    /// dropped; a build running from it keeps running (its code stays
    /// mapped) until a marker replaces it, since hosts that stopped
    /// projecting at different moments would diverge.
    pub(super) fn unstage_file(&mut self, file: &std::path::Path) {
        self.ordered.staged.retain(|s| s.file != file);
        let running = self.plugins.values().any(|p| p.lib.file == file);
        if running {
            tracing::warn!(file = %file.display(), "plugin file deleted; in cluster mode its running build stays until a build marker replaces it");
        } else {
            self.reports.remove(file);
        }
        self.publish_engine_state();
    }

    /// Finishes the record being applied if its outcome is in, then applies
    /// queued records until one has to wait (a projector thread, or a
    /// missing build). Called after every command the engine handles
    /// (with a log the engine orders, nothing is ever queued here).
    pub(super) fn ordered_pump(&mut self) {
        loop {
            if let Some(applying) = &mut self.ordered.current {
                match applying.answer.try_recv() {
                    Ok(outcome) => {
                        let applying = self.ordered.current.take().expect("checked");
                        self.record_applied(applying.seq, applying.request, outcome);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        let applying = self.ordered.current.take().expect("checked");
                        self.record_applied(
                            applying.seq,
                            applying.request,
                            Err(IngestError::ShuttingDown),
                        );
                    }
                }
            }
            if self.ordered.pause.is_some() || self.ordered.reprojecting.is_some() {
                return;
            }
            let Some(entry) = self.ordered.queue.pop_front() else {
                return;
            };
            let seq = entry.seq;
            match entry.kind {
                EntryKind::Ingest {
                    stream,
                    body,
                    request,
                } => {
                    let body = match IngestBody::parse(body) {
                        Ok(body) => Arc::new(body),
                        Err(err) => {
                            // Only a foreign publisher writes this: every
                            // host refuses it the same way.
                            self.record_applied(
                                seq,
                                request,
                                Err(IngestError::Projector {
                                    plugin: String::new(),
                                    position: err.position,
                                    message: format!("the record does not parse: {}", err.message),
                                }),
                            );
                            continue;
                        }
                    };
                    // `_seq`s of this record start at `seq << SEQ_SHIFT`.
                    self.pipeline.last_reserved_seq = (seq << SEQ_SHIFT) - 1;
                    let (reply, answer) = oneshot::channel();
                    self.ordered.current = Some(Applying {
                        seq,
                        request,
                        answer,
                    });
                    self.ingest(Waiting {
                        stream,
                        body,
                        reply,
                        retry_crash: true,
                    });
                }
                EntryKind::Build {
                    plugin,
                    fingerprint,
                    version,
                } => {
                    let before = self
                        .plugins
                        .get(plugin.as_str())
                        .map(|p| p.lib.fingerprint.clone());
                    if !self.switch_build(&plugin, &fingerprint, &version, seq) {
                        self.ordered.queue.push_front(LogEntry {
                            seq,
                            kind: EntryKind::Build {
                                plugin,
                                fingerprint,
                                version,
                            },
                        });
                        return;
                    }
                    // A new build that asks for reprojection rebuilds here.
                    let switched = before.is_some()
                        && before.as_deref() != Some(fingerprint.as_str())
                        && self.plugins.get(plugin.as_str()).is_some_and(|p| {
                            p.lib.fingerprint == fingerprint && p.lib.manifest.reproject
                        });
                    if switched && self.start_marked_reprojection(&plugin, seq) {
                        return;
                    }
                    self.record_applied(seq, None, Ok(Ingested::nothing()));
                }
                EntryKind::Reproject { plugin } => {
                    if self.start_marked_reprojection(&plugin, seq) {
                        // Applied once the rebuilt state is swapped in.
                        return;
                    }
                    self.record_applied(seq, None, Ok(Ingested::nothing()));
                }
                EntryKind::Unknown(what) => {
                    tracing::warn!(position = seq, "cluster log record ignored: {what}");
                    self.record_applied(seq, None, Ok(Ingested::nothing()));
                }
            }
        }
    }

    /// Runs `plugin`'s build `fingerprint` from here; false (and paused)
    /// when this host has no such build.
    fn switch_build(&mut self, plugin: &str, fingerprint: &str, version: &str, seq: u64) -> bool {
        if self
            .plugins
            .get(plugin)
            .is_some_and(|p| p.lib.fingerprint == fingerprint)
        {
            return true;
        }
        let side = &mut self.ordered;
        let Some(index) = side
            .staged
            .iter()
            .position(|s| s.manifest.name == plugin && s.fingerprint == fingerprint)
        else {
            let pause = Pause::MissingBuild {
                plugin: plugin.to_owned(),
                fingerprint: fingerprint.to_owned(),
                version: version.to_owned(),
                position: seq,
            };
            tracing::warn!(%plugin, %fingerprint, position = seq, "consumption paused: {pause}");
            self.reports.insert(
                PathBuf::from(format!("<missing build {plugin} {fingerprint}>")),
                PluginReport {
                    name: Some(plugin.to_owned()),
                    version: Some(version.to_owned()),
                    file: String::new(),
                    entities: Vec::new(),
                    views: Vec::new(),
                    streams: Vec::new(),
                    state: PluginState::Missing,
                    last_error: Some(pause.to_string()),
                    reprojection: None,
                    fingerprint: Some(fingerprint.to_owned()),
                    since: None,
                    pid: None,
                    loaded_at: None,
                    history: Default::default(),
                },
            );
            self.ordered.pause = Some(pause);
            self.publish_engine_state();
            return false;
        };
        let lib = side.staged.remove(index);
        let file = lib.file.clone();
        match self.install(lib) {
            Ok(_) => {
                if let Some(report) = self.reports.get_mut(&file) {
                    report.since = Some(seq);
                }
                tracing::info!(%plugin, %fingerprint, position = seq, "switched build at its marker")
            }
            // Deterministic (same manifests on every host): every host
            // refuses it the same way and keeps the previous build.
            Err(err) => {
                tracing::error!(%plugin, %fingerprint, position = seq, %err, "build marker refused");
                if let Some(report) = self.reports.get_mut(&file) {
                    report.state = PluginState::Failed;
                    report.last_error = Some(err.to_string());
                }
            }
        }
        self.publish_engine_state();
        true
    }

    /// The stream position of the record being applied, if any.
    pub(super) fn applying_position(&self) -> Option<u64> {
        self.ordered.current.as_ref().map(|a| a.seq)
    }

    /// A record is done: answers its waiter, advances the applied
    /// position, checkpoints now and then. An outcome that other hosts
    /// might not share (a stuck projector) pauses instead.
    fn record_applied(
        &mut self,
        seq: u64,
        request: Option<String>,
        outcome: Result<Ingested, IngestError>,
    ) {
        let events = match &outcome {
            Ok(done) => done.accepted as u64,
            Err(
                IngestError::ProjectorTimeout { plugin, .. } | IngestError::PluginStuck { plugin },
            ) => {
                let pause = Pause::Stuck {
                    plugin: plugin.clone(),
                    position: seq,
                };
                tracing::error!(position = seq, "consumption paused: {pause}");
                self.ordered.pause = Some(pause);
                self.publish_engine_state();
                if let Some(request) = request {
                    self.log.answer(&request, outcome);
                }
                return;
            }
            Err(IngestError::ShuttingDown) => return,
            Err(err) => {
                crate::metrics::get().cluster_refused.inc();
                tracing::info!(position = seq, %err, "cluster record refused (identically on every host)");
                0
            }
        };
        if let Some(request) = request {
            self.log.answer(&request, outcome);
        }
        let plugins = &self.plugins;
        self.log.advance(seq, events, &self.store, &|| {
            super::install::builds(plugins)
        });
    }

    /// Starts rebuilding `plugin` from the stream's records before
    /// `position`; consumption waits until the result is swapped in there.
    /// False when there is nothing to do (no such plugin running).
    fn start_marked_reprojection(&mut self, plugin: &str, position: u64) -> bool {
        let Some(lib) = self.plugins.get(plugin).map(|p| p.lib.clone()) else {
            tracing::warn!(%plugin, position, "reprojection marker for a plugin not running here; nothing to do");
            return false;
        };
        let (sink, records) = tokio::sync::mpsc::channel::<Fed>(1024);
        let commands = self.commands.clone();
        let reprojector =
            match Reprojector::spawn_fed(lib.clone(), records, position, move |report| {
                let _ = commands.send(super::Command::Reprojector(report));
            }) {
                Ok(reprojector) => reprojector,
                Err(err) => {
                    tracing::error!(%plugin, %err, "cannot start the reprojection thread; pausing");
                    self.ordered.pause = Some(Pause::Stuck {
                        plugin: plugin.to_owned(),
                        position,
                    });
                    self.publish_engine_state();
                    return true;
                }
            };
        tracing::info!(%plugin, position, "reprojection from the shared log started; consumption waits for it");
        self.reprojections.insert(
            plugin.into(),
            super::Reprojection {
                reprojector,
                wants_final: false,
                state: "running",
                changed: None,
                error: None,
            },
        );
        self.ordered.reprojecting = Some((plugin.to_owned(), position));
        self.log.fetch(position, lib.manifest.streams.clone(), sink);
        true
    }

    /// A cluster reprojection ended: the rebuilt state goes in at its
    /// marker's position (or, failed, nothing changes: alike on every
    /// host), then consumption goes on. Hands `report` back if it is not
    /// about a cluster reprojection.
    pub(super) fn marked_reprojected(
        &mut self,
        report: ReprojectReport,
    ) -> Option<ReprojectReport> {
        let plugin = match &report {
            ReprojectReport::Done { plugin, .. } | ReprojectReport::Failed { plugin, .. } => {
                plugin.clone()
            }
            ReprojectReport::CaughtUp { .. } => return Some(report),
        };
        let position = match self.ordered.reprojecting.clone() {
            Some((waiting, position)) if waiting == plugin => position,
            _ => return Some(report),
        };
        match report {
            ReprojectReport::Done { plugin, shadow } => {
                // The marker's own `_seq` range holds the swap's mutations.
                self.pipeline.last_reserved_seq = (position << SEQ_SHIFT) - 1;
                self.swap_in(&plugin, shadow);
            }
            ReprojectReport::Failed { plugin, reason } => {
                tracing::error!(%plugin, %reason, position, "cluster reprojection failed; the state is unchanged");
                if let Some(r) = self.reprojections.get_mut(plugin.as_str()) {
                    r.state = "failed";
                    r.error = Some(reason);
                }
            }
            ReprojectReport::CaughtUp { .. } => unreachable!("returned above"),
        }
        self.ordered.reprojecting = None;
        self.record_applied(position, None, Ok(Ingested::nothing()));
        self.ordered_pump();
        None
    }

    /// Tells the log whether this host consumes (for `/readyz`) and which
    /// plugins still wait for their first marker.
    fn publish_engine_state(&mut self) {
        let unmarked: Vec<String> = self
            .ordered
            .staged
            .iter()
            .map(|s| s.manifest.name.clone())
            .filter(|name| !self.plugins.contains_key(name.as_str()))
            .collect();
        let paused = self.ordered.pause.as_ref().map(ToString::to_string);
        self.log.consuming(paused, unmarked);
    }

    /// Start with a log that orders records: restores the log's checkpoint
    /// (with the builds it was taken with) and returns the position it
    /// covers; the log is read after it.
    pub fn recover_ordered(&mut self) -> Result<u64, crate::durable::DataError> {
        let mut position = 0;
        if let Some(checkpoint) = self.log.load_checkpoint()? {
            position = checkpoint.rec;
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            store.restore(checkpoint.entities, checkpoint.hidden, checkpoint.last_seq);
            self.views.rebuild_all(&store);
            drop(store);
            self.resync_projectors();
            // The builds the checkpoint ran go first, as markers at its
            // position (a missing one pauses right there).
            for (plugin, fingerprint) in checkpoint.builds {
                self.ordered.queue.push_back(LogEntry {
                    seq: position,
                    kind: EntryKind::Build {
                        plugin,
                        fingerprint,
                        version: "(from the checkpoint)".into(),
                    },
                });
            }
            tracing::info!(
                position,
                last_seq = checkpoint.last_seq,
                "cluster checkpoint loaded; reading the stream after it"
            );
        }
        self.ordered.started = true;
        self.log.resume(position);
        self.ordered_pump();
        self.publish_engine_state();
        Ok(position)
    }
}
