//! The engine's side of cluster mode (the async side is `crate::cluster`;
//! what they say to each other is [`super::link`]): records of the
//! shared log are applied one at a time, in stream order, each to
//! completion before the next starts, so every host reaches the same state
//! with the same `_seq`s whatever its timing.
//!
//! Plugin builds found in the plugins directory are *staged*, not run: a
//! build runs from the position of its marker in the log, on every host at
//! once. A marker naming a build this host lacks pauses consumption (the
//! host reports itself not ready) until the file appears.
//!
//! Local checkpoints (the store, the stream position and the builds running
//! there) go to the data directory's redb file, so a restarting host reads
//! only the records it missed.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::link::{EngineLink, EntryKind, LogEntry, Offer, ToCluster, SEQ_SHIFT};
use super::pipeline::Waiting;
use super::{Engine, IngestError, Ingested, InstallError};
use crate::durable::{Checkpoint, EventLog, FsyncPolicy, LogWriter, Retention, WriterJob};
use crate::ingest::IngestBody;
use crate::plugins::{PluginLibrary, PluginReport, PluginState};
use crate::reproject::{Fed, ReprojectReport, Reprojector};

/// The cluster state the engine keeps.
pub(crate) struct ClusterSide {
    link: EngineLink,
    /// Records received and not applied yet, in stream order.
    queue: VecDeque<LogEntry>,
    /// The record being applied.
    current: Option<Applying>,
    /// Ingests received by this host, waiting for their record to apply.
    waiters: HashMap<String, oneshot::Sender<Result<Ingested, IngestError>>>,
    /// Builds mapped but not (yet) switched to by a marker.
    staged: Vec<PluginLibrary>,
    /// Why consumption stopped, if it did.
    pause: Option<Pause>,
    /// A reprojection (plugin, marker position) consumption waits for.
    reprojecting: Option<(String, u64)>,
    checkpoints: Option<Checkpoints>,
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

/// Local checkpoints of a cluster member.
struct Checkpoints {
    writer: LogWriter,
    every_events: u64,
    every: Duration,
    events_since: u64,
    last: Instant,
    /// Stream position of the last checkpoint taken.
    taken_at: u64,
}

impl ClusterSide {
    pub(crate) fn new(link: EngineLink) -> Self {
        Self {
            link,
            queue: VecDeque::new(),
            current: None,
            waiters: HashMap::new(),
            staged: Vec::new(),
            pause: None,
            reprojecting: None,
            checkpoints: None,
            started: false,
        }
    }
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

impl Engine {
    fn side(&mut self) -> &mut ClusterSide {
        self.cluster.as_mut().expect("cluster mode")
    }

    /// Cluster mode: a mapped build waits for its marker. It is offered to
    /// the cluster (which publishes a marker unless the log runs it
    /// already), and resumes consumption if the log waits for it.
    pub(super) fn stage(&mut self, lib: PluginLibrary) -> Result<String, InstallError> {
        let name = lib.manifest.name.clone();
        let running = self
            .plugins
            .get(&name)
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
        let side = self.side();
        side.link
            .known_streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(lib.manifest.streams.iter().cloned());
        let _ = side.link.requests.send(ToCluster::Offer(Offer {
            plugin: name.clone(),
            fingerprint: lib.fingerprint.clone(),
            version: lib.manifest.version.clone(),
            at_start: !side.started,
        }));
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
            self.side().pause = None;
            self.reports.retain(|_, r| r.state != PluginState::Missing);
            self.publish_engine_state();
        }
        Ok(name)
    }

    /// Cluster mode: a plugin file was deleted. Builds staged from it are
    /// dropped; a build running from it keeps running (its code stays
    /// mapped) until a marker replaces it, since hosts that stopped
    /// projecting at different moments would diverge.
    pub(super) fn unstage_file(&mut self, file: &std::path::Path) {
        self.side().staged.retain(|s| s.file != file);
        let running = self.plugins.values().any(|p| p.lib.file == file);
        if running {
            tracing::warn!(file = %file.display(), "plugin file deleted; in cluster mode its running build stays until a build marker replaces it");
        } else {
            self.reports.remove(file);
        }
        self.publish_engine_state();
    }

    /// Takes a record the consumer read.
    pub(super) fn cluster_record(&mut self, entry: LogEntry) {
        self.side().queue.push_back(entry);
    }

    /// An ingest of this host waits for its record.
    pub(super) fn cluster_wait(
        &mut self,
        request: String,
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
    ) {
        self.side().waiters.insert(request, reply);
    }

    /// The ingest gave up (not published, or tired of waiting).
    pub(super) fn cluster_forget(&mut self, request: &str) {
        self.side().waiters.remove(request);
    }

    /// Finishes the record being applied if its outcome is in, then applies
    /// queued records until one has to wait (a projector thread, or a
    /// missing build). Called after every command the engine handles.
    pub(super) fn cluster_pump(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        loop {
            if let Some(applying) = &mut self.side().current {
                match applying.answer.try_recv() {
                    Ok(outcome) => {
                        let applying = self.side().current.take().expect("checked");
                        self.cluster_applied(applying.seq, applying.request, outcome);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        let applying = self.side().current.take().expect("checked");
                        self.cluster_applied(
                            applying.seq,
                            applying.request,
                            Err(IngestError::ShuttingDown),
                        );
                    }
                }
            }
            if self.side().pause.is_some() || self.side().reprojecting.is_some() {
                return;
            }
            let Some(entry) = self.side().queue.pop_front() else {
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
                            self.cluster_applied(
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
                    self.side().current = Some(Applying {
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
                    let before = self.plugins.get(&plugin).map(|p| p.lib.fingerprint.clone());
                    if !self.switch_build(&plugin, &fingerprint, &version, seq) {
                        self.side().queue.push_front(LogEntry {
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
                        && self.plugins.get(&plugin).is_some_and(|p| {
                            p.lib.fingerprint == fingerprint && p.lib.manifest.reproject
                        });
                    if switched && self.start_cluster_reprojection(&plugin, seq) {
                        return;
                    }
                    self.cluster_applied(seq, None, Ok(Ingested::nothing()));
                }
                EntryKind::Reproject { plugin } => {
                    if self.start_cluster_reprojection(&plugin, seq) {
                        // Applied once the rebuilt state is swapped in.
                        return;
                    }
                    self.cluster_applied(seq, None, Ok(Ingested::nothing()));
                }
                EntryKind::Unknown(what) => {
                    tracing::warn!(position = seq, "cluster log record ignored: {what}");
                    self.cluster_applied(seq, None, Ok(Ingested::nothing()));
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
        let side = self.side();
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
            self.side().pause = Some(pause);
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
        self.cluster.as_ref()?.current.as_ref().map(|a| a.seq)
    }

    /// A record is done: answers its waiter, advances the applied
    /// position, checkpoints now and then. An outcome that other hosts
    /// might not share (a stuck projector) pauses instead.
    fn cluster_applied(
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
                self.side().pause = Some(pause);
                self.publish_engine_state();
                if let Some(reply) = request.and_then(|r| self.side().waiters.remove(&r)) {
                    let _ = reply.send(outcome);
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
        if let Some(reply) = request.and_then(|r| self.side().waiters.remove(&r)) {
            let _ = reply.send(outcome);
        }
        let _ = self.side().link.applied.send(seq);
        crate::metrics::get()
            .cluster_applied_position
            .set(seq as i64);
        self.cluster_checkpoint(seq, events, false);
    }

    /// Starts rebuilding `plugin` from the stream's records before
    /// `position`; consumption waits until the result is swapped in there.
    /// False when there is nothing to do (no such plugin running).
    fn start_cluster_reprojection(&mut self, plugin: &str, position: u64) -> bool {
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
                    self.side().pause = Some(Pause::Stuck {
                        plugin: plugin.to_owned(),
                        position,
                    });
                    self.publish_engine_state();
                    return true;
                }
            };
        tracing::info!(%plugin, position, "reprojection from the shared log started; consumption waits for it");
        self.reprojections.insert(
            plugin.to_owned(),
            super::Reprojection {
                reprojector,
                wants_final: false,
                state: "running",
                changed: None,
                error: None,
            },
        );
        let side = self.side();
        side.reprojecting = Some((plugin.to_owned(), position));
        let _ = side.link.requests.send(ToCluster::Fetch {
            upto: position,
            streams: lib.manifest.streams.clone(),
            sink,
        });
        true
    }

    /// A cluster reprojection ended: the rebuilt state goes in at its
    /// marker's position (or, failed, nothing changes: alike on every
    /// host), then consumption goes on. Hands `report` back if it is not
    /// about a cluster reprojection.
    pub(super) fn cluster_reprojected(
        &mut self,
        report: ReprojectReport,
    ) -> Option<ReprojectReport> {
        let plugin = match &report {
            ReprojectReport::Done { plugin, .. } | ReprojectReport::Failed { plugin, .. } => {
                plugin.clone()
            }
            ReprojectReport::CaughtUp { .. } => return Some(report),
        };
        let position = match self.cluster.as_ref().and_then(|c| c.reprojecting.clone()) {
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
                if let Some(r) = self.reprojections.get_mut(&plugin) {
                    r.state = "failed";
                    r.error = Some(reason);
                }
            }
            ReprojectReport::CaughtUp { .. } => unreachable!("returned above"),
        }
        self.side().reprojecting = None;
        self.cluster_applied(position, None, Ok(Ingested::nothing()));
        self.cluster_pump();
        None
    }

    /// `POST /plugins/{name}/reproject` in cluster mode: a marker in the
    /// log, so every host rebuilds at the same position.
    pub(super) fn request_cluster_reprojection(&mut self, plugin: &str) {
        let _ = self.side().link.requests.send(ToCluster::Reproject {
            plugin: plugin.to_owned(),
        });
    }

    /// Takes a checkpoint every N events or M seconds (or now, `force`).
    fn cluster_checkpoint(&mut self, seq: u64, events: u64, force: bool) {
        let builds: Vec<(String, String)> = self
            .plugins
            .iter()
            .map(|(name, p)| (name.clone(), p.lib.fingerprint.clone()))
            .collect();
        let store = self.store.clone();
        let Some(checkpoints) = self.side().checkpoints.as_mut() else {
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
        let store = store.read().unwrap_or_else(|e| e.into_inner());
        checkpoints.writer.submit(WriterJob::Checkpoint(Checkpoint {
            rec: seq,
            last_seq: store.version(),
            entities: store.entities(),
            builds,
            hidden: store.hidden_states(),
        }));
    }

    /// Tells the async side whether this host consumes (for `/readyz`) and
    /// which plugins still wait for their first marker.
    fn publish_engine_state(&self) {
        let Some(side) = &self.cluster else {
            return;
        };
        let unmarked: Vec<String> = side
            .staged
            .iter()
            .map(|s| s.manifest.name.clone())
            .filter(|name| !self.plugins.contains_key(name))
            .collect();
        let mut state = side.link.engine.lock().unwrap_or_else(|e| e.into_inner());
        state.paused = side.pause.as_ref().map(ToString::to_string);
        state.unmarked = unmarked;
    }

    /// Cluster mode start: restores the local checkpoint (with the builds
    /// it was taken with) and returns the stream position it covers; the
    /// consumer starts after it.
    pub fn recover_cluster(
        &mut self,
        persistence: ClusterPersistence,
    ) -> Result<u64, crate::durable::DataError> {
        let mut position = 0;
        if let Some(log) = &persistence.log {
            if let Some(checkpoint) = log.load_checkpoint()? {
                position = checkpoint.rec;
                let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
                store.restore(checkpoint.entities, checkpoint.hidden, checkpoint.last_seq);
                self.views.rebuild_all(&store);
                drop(store);
                self.resync_projectors();
                // The builds the checkpoint ran go first, as markers at its
                // position (a missing one pauses right there).
                for (plugin, fingerprint) in checkpoint.builds {
                    self.side().queue.push_back(LogEntry {
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
            let commands = self.commands.clone();
            let writer = LogWriter::spawn(
                log.clone(),
                FsyncPolicy::Always,
                Retention::All,
                move |report| {
                    let _ = commands.send(super::Command::Log(report));
                },
            );
            self.side().checkpoints = Some(Checkpoints {
                writer,
                every_events: persistence.checkpoint_every_events,
                every: persistence.checkpoint_every,
                events_since: 0,
                last: Instant::now(),
                taken_at: position,
            });
        }
        let side = self.side();
        side.started = true;
        let _ = side.link.applied.send(position);
        self.cluster_pump();
        self.publish_engine_state();
        Ok(position)
    }

    /// Shutdown: a last checkpoint at the applied position, so the next
    /// start reads nothing twice; then the checkpoint writer is closed.
    pub(super) fn close_cluster(&mut self) {
        let applied = *self.side().link.applied.borrow();
        self.cluster_checkpoint(applied, 0, true);
        if let Some(checkpoints) = self.side().checkpoints.take() {
            checkpoints.writer.close();
            tracing::info!(position = applied, "cluster checkpoint written");
        }
    }
}
