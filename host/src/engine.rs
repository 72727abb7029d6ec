//! The engine: sole owner of plugins, entity store, views, subscriptions and
//! connection outboxes.
//!
//! It lives behind one `std::sync::Mutex` ([`crate::Shared::engine`]).
//! Every operation (ingest, subscribe, unsubscribe, plugin load) runs to
//! completion under the lock and never awaits: frames are pushed into
//! bounded [`Outbox`]es, which never block, and sockets are written by each
//! connection's own task. Serializing ingest and subscribe through one lock
//! is what makes a snapshot and the live frames after it exact: a
//! subscription sees every mutation either in its snapshot or as a frame,
//! never both, never neither.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use vista_plugin_api::view::ViewDef;
use vista_plugin_api::{Manifest, Mutation, MutationKind};

use crate::frame::{socket_issue, Frame};
use crate::outbox::{Outbox, Outgoing, PushError, Pushed};
use crate::plugins::{self, FnStateReader, LoadError, PluginLibrary, PluginReport};
use crate::store::Store;
use crate::views::{ConnId, SubscribeRequest, Views};

/// One event of an ingest request.
pub struct EventInput<'a> {
    /// 1-based line (NDJSON) or item (JSON array) number, for error messages.
    pub position: usize,
    /// The event's JSON text (an object).
    pub json: &'a str,
}

/// Result of a successful ingest.
#[derive(Debug, PartialEq, Eq)]
pub struct Ingested {
    /// Events accepted.
    pub accepted: usize,
    /// `_seq` of the last mutation applied (the current one if none were).
    pub seq: String,
}

/// Why an ingest request was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No loaded plugin consumes the stream.
    #[error("no plugin consumes stream {0:?}")]
    UnknownStream(String),
    /// A projector returned an error or panicked.
    #[error("plugin {plugin:?} failed on event {position}: {message}")]
    Projector {
        /// Plugin name.
        plugin: String,
        /// Event position in the request.
        position: usize,
        /// The plugin's message.
        message: String,
    },
}

/// The state of the whole server, owned by one lock.
pub struct Engine {
    store: Store,
    views: Views,
    /// Loaded plugins by name.
    plugins: BTreeMap<String, PluginLibrary>,
    /// What `GET /plugins` shows, by plugin file.
    reports: BTreeMap<PathBuf, PluginReport>,
    /// Outboxes of open connections.
    conns: HashMap<ConnId, Arc<Outbox>>,
    /// Where plugin files are copied before being mapped.
    cache_dir: PathBuf,
}

impl Engine {
    /// An engine with no plugins.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            store: Store::new(),
            views: Views::new(),
            plugins: BTreeMap::new(),
            reports: BTreeMap::new(),
            conns: HashMap::new(),
            cache_dir,
        }
    }

    /// Loads every `*.so` file of `dir` (sorted by name). Bad files are
    /// logged and reported; the rest load.
    pub fn load_plugin_dir(&mut self, dir: &Path) {
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
            self.load_plugin_file(&file);
        }
    }

    /// Loads one plugin file under the engine lock (start-up). The file
    /// watcher maps files outside the lock with [`plugins::load`] and hands
    /// the result to [`Engine::accept_load`].
    pub fn load_plugin_file(&mut self, file: &Path) -> bool {
        let loaded = plugins::load(file, &self.cache_dir);
        self.accept_load(file, loaded).is_ok()
    }

    /// Installs a freshly mapped plugin, or records why it was refused.
    ///
    /// A plugin whose name is already loaded replaces the running version
    /// atomically with respect to ingest (this runs under the engine lock,
    /// like every ingest): its views are diffed and subscribers converge
    /// (see [`Engine::install`]). A refused build leaves the running
    /// version in place; `GET /plugins` shows the error on that file.
    pub fn accept_load(
        &mut self,
        file: &Path,
        loaded: Result<PluginLibrary, LoadError>,
    ) -> Result<String, String> {
        let result = loaded
            .map_err(|e| one_line(&e.to_string()))
            .and_then(|lib| self.install(lib));
        match &result {
            Ok(name) => tracing::info!(file = %file.display(), plugin = %name, "plugin loaded"),
            Err(reason) => {
                tracing::error!("plugin refused: {}: {reason}", file.display());
                match self.reports.get_mut(file) {
                    // A previous build from this file keeps serving.
                    Some(report) if report.state == "loaded" => {
                        report.last_error = Some(reason.clone())
                    }
                    _ => {
                        self.reports.insert(
                            file.to_owned(),
                            PluginReport {
                                name: None,
                                version: None,
                                file: file.display().to_string(),
                                entities: Vec::new(),
                                views: Vec::new(),
                                streams: Vec::new(),
                                state: "failed",
                                last_error: Some(reason.clone()),
                            },
                        );
                    }
                }
            }
        }
        result
    }

    /// Validates a plugin against the others, then installs it or swaps it
    /// for the running version of the same name.
    fn install(&mut self, lib: PluginLibrary) -> Result<String, String> {
        let manifest = lib.manifest.clone();
        let name = manifest.name.clone();
        for entity in &manifest.entities {
            if let Some(owner) = self
                .plugins
                .values()
                .find(|p| p.manifest.name != name && p.manifest.entities.contains(entity))
            {
                return Err(format!(
                    "entity {:?} is already owned by plugin {:?} ({})",
                    entity.name,
                    owner.manifest.name,
                    owner.file.display()
                ));
            }
        }
        let base_view_ids = manifest
            .entities
            .iter()
            .flat_map(|e| ["list", "state", "append"].map(|m| format!("{}/{m}", e.name)));
        for id in base_view_ids.chain(manifest.views.iter().map(|v| v.id.clone())) {
            if let Some(existing) = self.views.get(&id).filter(|v| v.plugin != name) {
                return Err(format!(
                    "manifest error: view {id:?} is already provided by plugin {:?}",
                    existing.plugin
                ));
            }
        }
        let previous = self.plugins.remove(&name);
        let mut notes: Vec<(ConnId, Outgoing)> = Vec::new();
        self.apply_manifest_change(
            previous.as_ref().map(|p| &p.manifest),
            Some(&manifest),
            &mut |conn, item| notes.push((conn, item)),
        );
        self.send_notes(notes);
        if let Some(previous) = &previous {
            if previous.file != lib.file {
                if let Some(report) = self.reports.get_mut(&previous.file) {
                    report.state = "superseded";
                }
            }
            tracing::info!(plugin = %name, from = %previous.manifest.version, to = %manifest.version, "plugin swapped");
        }
        let mut view_ids: Vec<String> = manifest
            .entities
            .iter()
            .flat_map(|e| ["list", "state", "append"].map(|m| format!("{}/{m}", e.name)))
            .collect();
        view_ids.extend(manifest.views.iter().map(|v| v.id.clone()));
        self.reports.insert(
            lib.file.clone(),
            PluginReport {
                name: Some(name.clone()),
                version: Some(manifest.version.clone()),
                file: lib.file.display().to_string(),
                entities: manifest.entities.iter().map(|e| e.name.clone()).collect(),
                views: view_ids,
                streams: manifest.streams.clone(),
                state: "loaded",
                last_error: None,
            },
        );
        self.plugins.insert(name.clone(), lib);
        Ok(name)
    }

    /// Unloads the plugin loaded from `file` (the file was deleted): its
    /// projector stops, its views go (subscribers get `view-removed` and
    /// stay pending), its entity state stays for a later build to serve.
    pub fn unload_file(&mut self, file: &Path) {
        self.reports.remove(file);
        let Some(name) = self
            .plugins
            .values()
            .find(|p| p.file == file)
            .map(|p| p.manifest.name.clone())
        else {
            return;
        };
        let lib = self.plugins.remove(&name).expect("found above");
        let mut notes: Vec<(ConnId, Outgoing)> = Vec::new();
        self.apply_manifest_change(Some(&lib.manifest), None, &mut |conn, item| {
            notes.push((conn, item))
        });
        self.send_notes(notes);
        tracing::info!(file = %file.display(), plugin = %name, "plugin unloaded; its entities are kept");
    }

    /// Turns the views of `old` into those of `new`: removed views first
    /// (`view-removed`), then redefined ones (converging deltas), then added
    /// ones (pending subscriptions start).
    fn apply_manifest_change(
        &mut self,
        old: Option<&Manifest>,
        new: Option<&Manifest>,
        notify: &mut dyn FnMut(ConnId, Outgoing),
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
        let plugin = new.or(old).map(|m| m.name.clone()).unwrap_or_default();
        for id in old_views.keys().filter(|id| !new_views.contains_key(*id)) {
            self.views.remove_view(id, notify);
        }
        for entity in old_entities.iter().filter(|e| !new_entities.contains(e)) {
            for mode in ["list", "state", "append"] {
                self.views.remove_view(&format!("{entity}/{mode}"), notify);
            }
        }
        for (id, def) in new_views
            .iter()
            .filter(|(id, _)| old_views.contains_key(*id))
        {
            self.views.redefine(id, def.clone(), &self.store, notify);
        }
        for entity in new_entities.iter().filter(|e| !old_entities.contains(e)) {
            self.views
                .add_base_views(entity, &plugin, &self.store, notify);
        }
        for (_, def) in new_views
            .into_iter()
            .filter(|(id, _)| !old_views.contains_key(id))
        {
            self.views.add_derived(def, &plugin, &self.store, notify);
        }
    }

    /// Queues view-change notices on their connections' outboxes.
    fn send_notes(&self, notes: Vec<(ConnId, Outgoing)>) {
        for (conn, item) in notes {
            if let Some(outbox) = self.conns.get(&conn) {
                outbox.push_reply(item);
            }
        }
    }

    /// Every plugin file seen, for `GET /plugins`.
    pub fn plugin_reports(&self) -> Vec<PluginReport> {
        self.reports.values().cloned().collect()
    }

    /// Projects a request's events and, if every one succeeds, applies all
    /// the mutations and broadcasts the frames. All or nothing.
    pub fn ingest(
        &mut self,
        stream: &str,
        events: &[EventInput<'_>],
    ) -> Result<Ingested, IngestError> {
        let consumers: Vec<&PluginLibrary> = self
            .plugins
            .values()
            .filter(|p| p.manifest.streams.iter().any(|s| s == stream))
            .collect();
        if consumers.is_empty() {
            return Err(IngestError::UnknownStream(stream.to_owned()));
        }
        // Mutations of earlier events are visible to later ones before
        // commit: a read of entity[key] replays this request's mutations of
        // that key over the stored value. Only reads pay for it; a feed that
        // never reads state stages nothing but an index entry.
        let mut mutations: Vec<Mutation> = Vec::new();
        let mut staged: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for event in events {
            for plugin in &consumers {
                let reader = FnStateReader(|entity: &str, key: &str| {
                    let stored = self.store.get(entity, key).map(|v| Value::clone(v));
                    let value = match staged.get(&(entity.to_owned(), key.to_owned())) {
                        Some(indexes) => indexes
                            .iter()
                            .fold(stored, |value, i| replay(value, &mutations[*i])),
                        None => stored,
                    };
                    value.map(|v| v.to_string())
                });
                let name = &plugin.manifest.name;
                let projector_error = |message: String| IngestError::Projector {
                    plugin: name.clone(),
                    position: event.position,
                    message,
                };
                let produced = plugin
                    .project(stream, event.json, &reader)
                    .map_err(projector_error)?;
                for mutation in produced {
                    check_mutation(plugin, &mutation).map_err(projector_error)?;
                    staged
                        .entry((mutation.entity.clone(), mutation.key.clone()))
                        .or_default()
                        .push(mutations.len());
                    mutations.push(mutation);
                }
            }
        }
        let mut deliveries = Deliveries::new(mutations.len());
        for mutation in mutations {
            let change = self.store.apply(mutation);
            self.views.apply(&change, &self.store, &mut |conn, frame| {
                deliveries.push(conn, frame)
            });
        }
        deliveries.flush(&self.conns);
        Ok(Ingested {
            accepted: events.len(),
            seq: self.store.last_seq(),
        })
    }

    /// Registers a new connection's outbox.
    pub fn connect(&mut self, conn: ConnId, outbox: Arc<Outbox>) {
        self.conns.insert(conn, outbox);
    }

    /// Forgets a closed connection and all its subscriptions.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.views.remove_conn(conn);
        self.conns.remove(&conn);
    }

    /// Starts (or restarts) a subscription: queues the `subscribed` frame
    /// and the snapshot on the connection's outbox, or a `view-not-found`
    /// socket issue (the subscription then waits for the view to appear).
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        request: &SubscribeRequest,
        max_subscriptions: usize,
    ) {
        let Some(outbox) = self.conns.get(&conn) else {
            return;
        };
        let replacing = self
            .views
            .unsubscribe(conn, &request.view, request.key.as_deref());
        if !replacing && self.views.subscription_count(conn) >= max_subscriptions {
            outbox.push_reply(Outgoing::Frame(socket_issue(
                "subscription-limit-exceeded",
                &format!("at most {max_subscriptions} subscriptions per connection"),
                false,
            )));
            return;
        }
        match self.views.subscribe(conn, request, &self.store) {
            Ok(start) => start.send(conn, &mut |_, item| outbox.push_reply(item)),
            Err(_) => {
                tracing::debug!(conn, view = %request.view, "subscribe to unknown view (pending)");
                outbox.push_reply(Outgoing::Frame(socket_issue(
                    "view-not-found",
                    &format!(
                        "no view named {:?}; the subscription starts if a plugin provides it",
                        request.view
                    ),
                    false,
                )));
            }
        }
    }

    /// Stops a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, conn: ConnId, view: &str, key: Option<&str>) -> bool {
        self.views.unsubscribe(conn, view, key)
    }

    /// Liveness: pings clients quiet for a third of `timeout` and closes
    /// those silent for longer than `timeout` (no message, no pong) with
    /// `idle-timeout:`. Returns (pinged, closed).
    pub fn sweep_idle(&self, timeout: std::time::Duration) -> (usize, usize) {
        let (mut pinged, mut closed) = (0, 0);
        for (conn, outbox) in &self.conns {
            let silent = outbox.silent_for();
            if silent > timeout {
                tracing::info!(conn, silent_s = silent.as_secs(), "closing a silent client");
                outbox.push_reply(Outgoing::Close {
                    code: 1001,
                    reason: format!("idle-timeout: nothing received for {} s", silent.as_secs()),
                });
                closed += 1;
            } else if silent > timeout / 3 {
                outbox.push_reply(Outgoing::Ping);
                pinged += 1;
            }
        }
        metrics::counter!("vista_idle_disconnects_total").increment(closed as u64);
        (pinged, closed)
    }

    /// Queues a close frame on every connection (server shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for outbox in self.conns.values() {
            outbox.push_reply(Outgoing::Close {
                code,
                reason: reason.to_owned(),
            });
        }
    }
}

/// An entity after one more (validated) mutation, by the store's rules.
fn replay(value: Option<Value>, mutation: &Mutation) -> Option<Value> {
    match &mutation.kind {
        MutationKind::Patch {
            data: Value::Object(data),
            append,
        } => {
            let mut entity = value.unwrap_or(Value::Null);
            vista_plugin_api::merge_patch(&mut entity, data, append);
            Some(entity)
        }
        MutationKind::Patch { .. } => value,
        MutationKind::Delete => None,
    }
}

/// Collapses a multi-line error (abi_stable's are) into one log-friendly line.
fn one_line(text: &str) -> String {
    text.replace('\0', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks what a projector returned: only its own entities, patches of objects.
fn check_mutation(plugin: &PluginLibrary, mutation: &Mutation) -> Result<(), String> {
    if !plugin
        .manifest
        .entities
        .iter()
        .any(|e| e.name == mutation.entity)
    {
        return Err(format!(
            "mutation of entity {:?}, which this plugin does not own",
            mutation.entity
        ));
    }
    if mutation.key.is_empty() {
        return Err(format!("mutation of {} with an empty key", mutation.entity));
    }
    if let MutationKind::Patch { data, .. } = &mutation.kind {
        if !data.is_object() {
            return Err(format!(
                "patch of {}[{}] is not a JSON object",
                mutation.entity, mutation.key
            ));
        }
    }
    Ok(())
}

/// The live frames of one ingest request, gathered per connection and
/// pushed once per connection at the end of the request: one outbox lock
/// and one writer wake-up per connection per request instead of per frame
/// (the outbox lock is shared with that connection's writer thread, so
/// per-frame locking costs a cache-line transfer per frame). Each distinct
/// frame is stored once; connections hold indexes into `frames`. Also counts
/// what happened to the frames; metrics are updated once per request.
struct Deliveries {
    frames: Vec<Frame>,
    pending: HashMap<ConnId, Vec<u32>>,
    /// Expected frames per connection, to size each connection's list once.
    per_connection_hint: usize,
    queued: u64,
    conflated: u64,
    slow_consumers: u64,
}

impl Deliveries {
    fn new(per_connection_hint: usize) -> Self {
        Self {
            frames: Vec::new(),
            pending: HashMap::new(),
            per_connection_hint,
            queued: 0,
            conflated: 0,
            slow_consumers: 0,
        }
    }

    /// Gathers one live frame for one connection. Views hand the same frame
    /// to all its recipients in a row, so it is stored once.
    fn push(&mut self, conn: ConnId, frame: &Frame) {
        let same_as_last = self.frames.last().is_some_and(|last| {
            last.bytes.as_ptr() == frame.bytes.as_ptr() && last.len() == frame.len()
        });
        if !same_as_last {
            self.frames.push(frame.clone());
        }
        let index = (self.frames.len() - 1) as u32;
        let hint = self.per_connection_hint;
        self.pending
            .entry(conn)
            .or_insert_with(|| Vec::with_capacity(hint))
            .push(index);
    }

    /// Pushes everything gathered into the outboxes.
    fn flush(mut self, conns: &HashMap<ConnId, Arc<Outbox>>) {
        let frames = std::mem::take(&mut self.frames);
        for (conn, indexes) in std::mem::take(&mut self.pending) {
            let Some(outbox) = conns.get(&conn) else {
                continue;
            };
            outbox.push_live_batch(indexes.iter().map(|i| &frames[*i as usize]), |outcome| match outcome {
                Ok(Pushed::Queued) => self.queued += 1,
                Ok(Pushed::Conflated) => self.conflated += 1,
                Err(PushError::SlowConsumer) => {
                    self.slow_consumers += 1;
                    tracing::warn!(conn, "slow consumer: append-view frames past the outbox bound; closing the connection");
                }
                Err(PushError::Closed) => {}
            });
        }
        metrics::counter!("vista_frames_queued_total").increment(self.queued);
        metrics::counter!("vista_frames_conflated_total").increment(self.conflated);
        metrics::counter!("vista_slow_consumer_disconnects_total").increment(self.slow_consumers);
    }
}
