//! Plugin builds on the engine thread: installing a mapped build (checked
//! against the others: an entity type and a view id belong to one plugin),
//! swapping it for the running version of the same name, unloading it when
//! its file goes, and the reports `GET /plugins` shows.
//!
//! A swap changes views under live subscribers, so it happens here, between
//! commits: removed views first (`view-removed`), then redefined ones
//! (converging deltas), then added ones (pending subscriptions start). A
//! refused build leaves the running version serving.
//!
//! This is the one place a projector is started ([`projector::start`]),
//! and where its faults are counted: a crashed or stuck projector process
//! is started afresh for the next request, [`CRASHES_TO_GIVE_UP`] crashes
//! within [`CRASH_WINDOW`] retire the build, a stuck thread marks it stuck.
//! The pipeline only submits to it and reads its progress (through
//! [`super::pipeline::Env`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vista_plugin_api::view::ViewDef;
use vista_plugin_api::Manifest;

use super::api::{Command, InstallError, CRASHES_TO_GIVE_UP, CRASH_WINDOW};
use super::Engine;
use crate::ids::{PluginName, ViewId};
use crate::plugins::{
    self, view_ids, BuildEventKind, LoadError, PluginLibrary, PluginReport, PluginState,
};
use crate::projector::{self, AfterStuck, Projector};
use crate::reproject::ReprojectionStatus;
use crate::views::Notice;
use crate::vocab::ConnId;

/// A loaded plugin build and its projector.
pub(super) struct LoadedPlugin {
    pub(super) lib: Arc<PluginLibrary>,
    pub(super) worker: Box<dyn Projector>,
    /// A projector thread timed out: the build serves nothing more.
    pub(super) stuck: bool,
    /// Recent crashes of its projector process (and stuck ones killed).
    crashes: VecDeque<Instant>,
    /// It crashed [`CRASHES_TO_GIVE_UP`] times: the build serves nothing more.
    pub(super) crashed: bool,
    /// Its projector must start afresh before its next request: it died,
    /// or what it mirrors changed under it. Done at dispatch, when none of
    /// the plugin's requests is half-applied, so the store plus the
    /// pending mutations are exactly what it must see.
    pub(super) resync: bool,
}

impl Engine {
    /// Loads every `*.so` file of `dir` (sorted by name). Bad files are
    /// logged and reported; the rest load.
    pub fn load_plugin_dir(&mut self, dir: &Path) {
        plugins::prune_stale_copies(&self.cache_dir);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "so" || x == "dylib"))
                .collect(),
            Err(err) => {
                tracing::error!(dir = %dir.display(), %err, "cannot read plugins directory");
                return;
            }
        };
        files.sort();
        for file in files {
            let loaded = plugins::load(&file, &self.cache_dir);
            let _ = self.accept_load(&file, loaded);
        }
    }

    /// Installs a freshly mapped plugin, or records why it was refused.
    ///
    /// A plugin whose name is already loaded replaces the running version:
    /// its views are diffed and subscribers converge (see
    /// [`Engine::install`]). A refused build leaves the running version in
    /// place; `GET /plugins` shows the error on that file.
    pub fn accept_load(
        &mut self,
        file: &Path,
        loaded: Result<PluginLibrary, LoadError>,
    ) -> Result<String, InstallError> {
        let result = loaded
            .map_err(|e| InstallError::Load(one_line(&e.to_string())))
            .and_then(|lib| {
                // A log that orders records also orders build switches: the
                // build runs from its marker there, on every host at once.
                if self.log.orders_requests() {
                    self.stage(lib)
                } else {
                    self.install(lib)
                }
            });
        match &result {
            Ok(name) => tracing::info!(file = %file.display(), plugin = %name, "plugin loaded"),
            Err(reason) => {
                tracing::error!("plugin refused: {}: {reason}", file.display());
                // A previous build from this file keeps serving, if any.
                let serving = self
                    .reports
                    .get(file)
                    .is_some_and(|report| report.state != PluginState::Failed);
                if !serving {
                    let mut failed = PluginReport::failed(file, reason.to_string());
                    if let Some(previous) = self.reports.remove(file) {
                        failed.history = previous.history;
                    }
                    self.reports.insert(file.to_owned(), failed);
                }
                let report = self.reports.get_mut(file).expect("inserted above");
                report.last_error = Some(reason.to_string());
                report.record(BuildEventKind::Refused, Some(reason.to_string()));
            }
        }
        result
    }

    /// Validates a plugin against the others, then installs it or swaps it
    /// for the running version of the same name.
    pub(super) fn install(&mut self, lib: PluginLibrary) -> Result<String, InstallError> {
        let manifest = lib.manifest.clone();
        let name = manifest.name.clone();
        for entity in &manifest.entities {
            if let Some(owner) = self.plugins.values().find(|p| {
                // By name: the same type declared with another schema
                // is still the same type.
                p.lib.manifest.name != name
                    && p.lib
                        .manifest
                        .entities
                        .iter()
                        .any(|e| e.name == entity.name)
            }) {
                return Err(InstallError::EntityTaken {
                    entity: entity.name.clone(),
                    owner: owner.lib.manifest.name.clone(),
                    file: owner.lib.file.display().to_string(),
                });
            }
        }
        for id in view_ids(&manifest) {
            if let Some(existing) = self.views.get(&id).filter(|v| *v.plugin != *name) {
                return Err(InstallError::ViewTaken {
                    view: id.to_string(),
                    owner: existing.plugin.to_string(),
                });
            }
        }
        let lib = Arc::new(lib);
        let commands = self.commands.clone();
        let worker = projector::start(lib.clone(), self.store.clone(), move |done| {
            let _ = commands.send(Command::Projected(done));
        })
        .map_err(|e| InstallError::Thread(e.to_string()))?;
        let previous = self.plugins.remove(name.as_str());
        let mut notes: Vec<(ConnId, Notice)> = Vec::new();
        self.apply_manifest_change(
            previous.as_ref().map(|p| &p.lib.manifest),
            Some(&manifest),
            &mut |conn, item| notes.push((conn, item)),
        );
        self.send_notes(notes);
        if let Some(previous) = &previous {
            if previous.lib.file != lib.file {
                if let Some(report) = self.reports.get_mut(&previous.lib.file) {
                    report.state = PluginState::Superseded;
                    report.record(BuildEventKind::Superseded, None);
                }
            }
            if previous.stuck {
                tracing::info!(plugin = %name, "a new build replaces the stuck one; its streams are served again");
            }
            tracing::info!(plugin = %name, from = %previous.lib.manifest.version, to = %manifest.version, "plugin swapped");
        }
        let history = self
            .reports
            .remove(&lib.file)
            .map(|previous| previous.history)
            .unwrap_or_default();
        let mut report = PluginReport {
            loaded_at: Some(plugins::unix_millis()),
            history,
            ..PluginReport::of_build(&lib, PluginState::Loaded)
        };
        report.record(BuildEventKind::Loaded, None);
        if let Some(previous) = &previous {
            report.record_swap(previous.lib.fingerprint.clone());
        }
        self.reports.insert(lib.file.clone(), report);
        self.plugins.insert(
            name.clone().into(),
            LoadedPlugin {
                lib,
                worker,
                stuck: false,
                crashes: VecDeque::new(),
                crashed: false,
                resync: false,
            },
        );
        // Requests that waited for the stuck build can run now.
        self.pump_deferred();
        // A log that orders records starts it at the build marker instead,
        // at one position.
        if manifest.reproject && previous.is_some() && !self.log.orders_requests() {
            match self.start_reprojection(&name) {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(plugin = %name, %err, "the new build asks for reprojection; not started")
                }
            }
        }
        Ok(name)
    }

    /// Unloads the plugin loaded from `file` (the file was deleted): its
    /// projector stops, its views go (subscribers get `view-removed` and
    /// stay pending), its entity state stays for a later build to serve.
    pub fn unload_file(&mut self, file: &Path) {
        if self.log.orders_requests() {
            // Hosts must not stop projecting at different moments.
            self.unstage_file(file);
            return;
        }
        self.reports.remove(file);
        let Some(name) = self
            .plugins
            .values()
            .find(|p| p.lib.file == file)
            .map(|p| p.lib.manifest.name.clone())
        else {
            return;
        };
        let plugin = self.plugins.remove(name.as_str()).expect("found above");
        let mut notes: Vec<(ConnId, Notice)> = Vec::new();
        self.apply_manifest_change(Some(&plugin.lib.manifest), None, &mut |conn, item| {
            notes.push((conn, item))
        });
        self.send_notes(notes);
        self.pump_deferred();
        tracing::info!(file = %file.display(), plugin = %name, "plugin unloaded; its entities are kept");
    }

    /// Turns the views of `old` into those of `new`: removed views first
    /// (`view-removed`), then redefined ones (converging deltas), then added
    /// ones (pending subscriptions start).
    fn apply_manifest_change(
        &mut self,
        old: Option<&Manifest>,
        new: Option<&Manifest>,
        notify: &mut dyn FnMut(ConnId, Notice),
    ) {
        let entities = |m: Option<&Manifest>| -> Vec<String> {
            m.map(|m| m.entities.iter().map(|e| e.name.clone()).collect())
                .unwrap_or_default()
        };
        let derived = |m: Option<&Manifest>| -> BTreeMap<String, ViewDef> {
            m.map(|m| m.views.iter().map(|v| (v.id.clone(), v.clone())).collect())
                .unwrap_or_default()
        };
        let (old_entities, new_entities) = (entities(old), entities(new));
        let (old_views, new_views) = (derived(old), derived(new));
        let plugin = PluginName::from(new.or(old).map_or("", |m| &m.name));
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        for id in old_views.keys().filter(|id| !new_views.contains_key(*id)) {
            self.views.remove_view(id, notify);
        }
        for entity in old_entities.iter().filter(|e| !new_entities.contains(e)) {
            for (id, _) in ViewId::bases(entity) {
                self.views.remove_view(&id, notify);
            }
        }
        for (id, def) in new_views
            .iter()
            .filter(|(id, _)| old_views.contains_key(*id))
        {
            self.views.redefine(id, def.clone(), &store, notify);
        }
        for entity in new_entities.iter().filter(|e| !old_entities.contains(e)) {
            self.views.add_base_views(entity, &plugin, &store, notify);
        }
        for (_, def) in new_views
            .into_iter()
            .filter(|(id, _)| !old_views.contains_key(id))
        {
            self.views.add_derived(def, &plugin, &store, notify);
        }
    }

    /// Every plugin file seen, with reprojection progress.
    pub(super) fn plugin_reports(&self) -> Vec<PluginReport> {
        self.reports
            .values()
            .cloned()
            .map(|mut report| {
                let current = report.name.as_ref().and_then(|name| {
                    let plugin = self.plugins.get(name.as_str())?;
                    (plugin.lib.file.display().to_string() == report.file).then_some(name)
                });
                report.pid = current
                    .and_then(|name| self.plugins.get(name.as_str()))
                    .and_then(|p| p.worker.pid());
                if let Some(r) = current.and_then(|name| self.reprojections.get(name.as_str())) {
                    let records = r
                        .reprojector
                        .progress
                        .records
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let events = r
                        .reprojector
                        .progress
                        .events
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let seconds = r.reprojector.started.elapsed().as_secs_f64().max(1e-3);
                    report.reprojection = Some(ReprojectionStatus {
                        state: r.state,
                        records_replayed: records,
                        records_total: r.reprojector.total,
                        events,
                        events_per_second: events as f64 / seconds,
                        changed: r.changed,
                        error: r.error.clone(),
                    });
                }
                report
            })
            .collect()
    }
}

/// `name`'s projector made no progress for `timeout_ms`: a process is
/// killed and started afresh (a crash, as counted by [`crashed`]); a thread
/// is abandoned and the build marked stuck, its streams answering 503 until
/// a new build loads.
pub(super) fn timed_out(
    plugins: &mut BTreeMap<PluginName, LoadedPlugin>,
    reports: &mut BTreeMap<PathBuf, PluginReport>,
    name: &str,
    timeout_ms: u64,
    pending: &[vista_plugin_api::Mutation],
    must_agree: bool,
) {
    crate::metrics::get().projector_timeouts.inc();
    let Some(plugin) = plugins.get_mut(name) else {
        return;
    };
    if plugin.worker.stuck(pending) == AfterStuck::Restarted {
        tracing::error!(plugin = %name, timeout_ms, "projector timed out; its process was killed and started afresh");
        let what = format!("made no progress for {timeout_ms} ms and was killed");
        crashed(plugins, reports, name, what, must_agree);
        if let Some(plugin) = plugins.get_mut(name) {
            plugin.resync = false; // started afresh already
        }
        return;
    }
    tracing::error!(plugin = %name, timeout_ms, "projector timed out; plugin marked stuck, its streams answer 503 until a new build loads");
    {
        plugin.stuck = true;
        if let Some(report) = reports.get_mut(&plugin.lib.file) {
            report.state = PluginState::Stuck;
            let error = format!("projector made no progress for {timeout_ms} ms");
            report.record(BuildEventKind::Stuck, Some(error.clone()));
            report.last_error = Some(error);
        }
    }
}

/// Counts a crash of `name`'s projector process (or a stuck one killed):
/// the [`CRASHES_TO_GIVE_UP`]th within [`CRASH_WINDOW`] retires the build
/// until a new one loads; before that a fresh child serves the next request
/// (see `LoadedPlugin::resync`). `must_agree` (a cluster host, a replay):
/// every host must answer every record alike, so timing must not decide,
/// and no build retires.
pub(super) fn crashed(
    plugins: &mut BTreeMap<PluginName, LoadedPlugin>,
    reports: &mut BTreeMap<PathBuf, PluginReport>,
    name: &str,
    what: String,
    must_agree: bool,
) {
    crate::metrics::get().projector_crashes.inc();
    let Some(plugin) = plugins.get_mut(name) else {
        return;
    };
    let now = Instant::now();
    plugin
        .crashes
        .retain(|at| now.duration_since(*at) < CRASH_WINDOW);
    plugin.crashes.push_back(now);
    plugin.resync = true;
    let report = reports.get_mut(&plugin.lib.file);
    if plugin.crashes.len() < CRASHES_TO_GIVE_UP || must_agree {
        if let Some(report) = report {
            report.last_error = Some(format!("its projector process {what}; restarted"));
        }
        return;
    }
    plugin.crashed = true;
    let error = format!(
        "its projector process {what}; {CRASHES_TO_GIVE_UP} crashes within {} s",
        CRASH_WINDOW.as_secs()
    );
    tracing::error!(plugin = %name, "{error}: its streams answer 503 plugin-crashed until a new build loads");
    if let Some(report) = report {
        report.state = PluginState::Crashed;
        report.record(BuildEventKind::Crashed, Some(error.clone()));
        report.last_error = Some(error);
    }
}

/// Loaded plugins consuming `stream`, in name order.
pub(super) fn consumers(
    plugins: &BTreeMap<PluginName, LoadedPlugin>,
    stream: &str,
) -> Vec<PluginName> {
    plugins
        .iter()
        .filter(|(_, p)| p.lib.manifest.streams.iter().any(|s| s == stream))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Collapses a multi-line error (abi_stable's are) into one log-friendly line.
/// The builds running, as (plugin, fingerprint), for a checkpoint of a log
/// that orders records (a restart runs them from its position).
pub(super) fn builds(plugins: &BTreeMap<PluginName, LoadedPlugin>) -> Vec<(String, String)> {
    plugins
        .iter()
        .map(|(name, p)| (name.to_string(), p.lib.fingerprint.clone()))
        .collect()
}

fn one_line(text: &str) -> String {
    text.replace('\0', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
