//! Views and their subscribers: which frames each change produces, for whom.
//!
//! Every entity type `E` has three base views (`E/list`, `E/state`,
//! `E/append`); plugins add derived views (filter, sort, limit). All list
//! views, base or derived, are the same machine: an [`OrderedIndex`] of the
//! entities passing the filter, kept in view order and updated in
//! O(log n) per change.
//!
//! Subscribers of one view are grouped by what they see, so each distinct
//! frame is encoded once per change and shared:
//! - `all`: every member (no key, no window). Base views send `patch`
//!   frames (the mutation itself, append paths included) and `delete`;
//!   derived views send `upsert` (full entity) on enter/change and `delete`
//!   on leave.
//! - `by_key`: one key of the view.
//! - `windows`: a `skip`/`take` window of a list view (within the view's own
//!   limit). Each [`WindowGroup`] remembers its members; after a change the
//!   window is re-read from the index (O(skip + take), independent of the
//!   number of entities) and diffed: `delete` for members that left, `upsert`
//!   for members that entered, and the change itself for a member that stayed.
//!
//! A subscription with `filters` (list views only) is served by a
//! *filtered sub-view*: a copy of the view whose index holds only the
//! entities that also match the filters, keyed by (view, canonical filters)
//! and shared, refcounted, by every subscription with equal filters, so
//! they share one index and one encoding of each frame. It is the derived
//! view machine again: its snapshot holds only matching entities, and an
//! entity that starts or stops matching gets `upsert`/`delete`.

mod filter_index;
mod index;
mod summary;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use vista_plugin_api::view::ViewDef;

pub use index::{OrderedIndex, Window};
pub use summary::ViewSummary;
pub use view::View;
use view::{FrameCache, Slot, Subscribers};

use crate::codes::IssueCode;
use crate::filters::Filters;
use crate::frame::{socket_issue, Frame, Snapshot, SnapshotEntry, Subscribed};
use crate::ids::{Mode, PluginName, ViewId};
use crate::store::{Change, Store};
pub use crate::vocab::{ConnId, SubscribeRequest};

/// What the connection must send to start a subscription.
pub struct SubscriptionStart {
    /// The encoded `subscribed` frame.
    pub subscribed: Frame,
    /// View id and mode, for the snapshot frames.
    pub view: ViewId,
    /// Mode of the view.
    pub mode: Mode,
    /// The snapshot to send, in view order; `None` for append views or when
    /// the client asked for no snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    /// When resuming from a cursor (`after`): `delete` frames for what left
    /// the view since, sent before the snapshot of what changed.
    pub resume_deletes: Vec<Frame>,
    /// Identifies this subscription on its connection, so a snapshot still
    /// queued when it is replaced or removed can be dropped.
    pub generation: u64,
}

/// What [`Views::unsubscribe`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// There was no such subscription.
    Nothing,
    /// A pending subscription (its view did not exist).
    Pending,
    /// An active subscription, with its generation.
    Active(u64),
}

/// A subscription's identity on its connection: (view id, key or all keys).
type SubscriptionId = (ViewId, Option<String>);

/// An active subscription: where it sits in its view, and the request that
/// made it (kept so the subscription can be re-placed when the view's
/// definition changes, or restarted when a removed view comes back).
struct Registered {
    slot: Slot,
    request: SubscribeRequest,
    generation: u64,
    /// The canonical filters of the filtered sub-view it sits in, if any.
    filter: Option<String>,
}

/// A filtered sub-view: (view id, canonical filters).
type FilterKey = (ViewId, String);

/// A filtered sub-view and how many subscriptions use it.
struct Filtered {
    view: View,
    refs: usize,
}

/// Why [`Views::subscribe`] did not start a subscription.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The view does not exist: the subscription is kept pending until a
    /// plugin provides the view.
    ViewNotFound,
    /// The filters cannot apply to this view (not a list view); the
    /// subscription was not made.
    InvalidFilter(String),
}

/// Every view and every subscription.
#[derive(Default)]
pub struct Views {
    views: HashMap<ViewId, View>,
    /// View ids drawing from each entity type.
    by_entity: HashMap<String, Vec<ViewId>>,
    /// Each connection's active subscriptions.
    conn_subs: HashMap<ConnId, HashMap<SubscriptionId, Registered>>,
    /// Subscriptions to views that do not exist (yet, or any more), by
    /// connection and (view id, key); started when the view appears.
    pending: HashMap<ConnId, HashMap<(String, Option<String>), SubscribeRequest>>,
    /// Filtered sub-views by (view id, canonical filters).
    filtered: HashMap<FilterKey, Filtered>,
    /// Which filtered sub-views a change can concern.
    filter_index: filter_index::FilterIndex,
    /// The last whole-view snapshot of each view and the store version it
    /// was taken at: subscribers arriving before anything changes share it
    /// (and its encoding). Weak, so it lives only as long as a writer needs it.
    snapshot_cache: HashMap<ViewId, (u64, Weak<Snapshot>)>,
    next_generation: u64,
    live_windows: view::LiveWindows,
}

/// Something to send to one connection because views were added, removed
/// or redefined (see [`Views::add_base_views`], [`Views::remove_view`],
/// [`Views::redefine`]).
pub type Notify<'a> = &'a mut dyn FnMut(ConnId, Notice);

/// What views ask the engine to tell one connection.
pub enum Notice {
    /// Send this frame.
    Frame(Frame),
    /// Send this snapshot, which starts subscription `generation`.
    Snapshot {
        /// The snapshot (possibly shared with other subscribers).
        snapshot: Arc<Snapshot>,
        /// The subscription it starts.
        generation: u64,
    },
    /// Drop the queued snapshot of subscription `generation`, if any: the
    /// subscription is gone.
    Cancel(u64),
}

impl Views {
    /// No views yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `E/list`, `E/state` and `E/append` for an entity type, starting
    /// pending subscriptions to them.
    pub fn add_base_views(
        &mut self,
        entity: &str,
        plugin: &PluginName,
        store: &Store,
        notify: Notify<'_>,
    ) {
        for (id, mode) in ViewId::bases(entity) {
            let view = View::new(id, entity, mode, plugin, None);
            self.insert(view, store, notify);
        }
    }

    /// Adds a derived (list) view, starting pending subscriptions to it.
    pub fn add_derived(
        &mut self,
        def: ViewDef,
        plugin: &PluginName,
        store: &Store,
        notify: Notify<'_>,
    ) {
        let view = View::new(
            ViewId::derived(&def.id),
            &def.source.clone(),
            Mode::List,
            plugin,
            Some(def),
        );
        self.insert(view, store, notify);
    }

    fn insert(&mut self, mut view: View, store: &Store, notify: Notify<'_>) {
        self.snapshot_cache.remove(&*view.id);
        view.rebuild_index(store);
        let id = view.id.clone();
        self.by_entity
            .entry(view.source.clone())
            .or_default()
            .push(id.clone());
        self.views.insert(id.clone(), view);
        let waiting: Vec<(ConnId, SubscribeRequest)> = self
            .pending
            .iter_mut()
            .flat_map(|(conn, requests)| {
                let keys: Vec<_> = requests
                    .keys()
                    .filter(|(v, _)| **v == *id)
                    .cloned()
                    .collect();
                keys.into_iter()
                    .filter_map(|k| requests.remove(&k))
                    .map(|r| (*conn, r))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (conn, request) in waiting {
            match self.subscribe(conn, &request, store) {
                Ok(start) => start.send(conn, notify),
                Err(SubscribeError::InvalidFilter(message)) => notify(
                    conn,
                    Notice::Frame(socket_issue(IssueCode::InvalidFilter, &message, false)),
                ),
                Err(SubscribeError::ViewNotFound) => {}
            }
        }
    }

    /// Removes a view. Its subscribers get a non-fatal `view-removed` issue
    /// and their subscriptions stay pending, to restart if the view returns.
    pub fn remove_view(&mut self, id: &str, notify: Notify<'_>) {
        self.snapshot_cache.remove(id);
        let Some(view) = self.views.remove(id) else {
            return;
        };
        let gone: Vec<FilterKey> = self
            .filtered
            .keys()
            .filter(|(v, _)| **v == *id)
            .cloned()
            .collect();
        for key in gone {
            let filtered = self.filtered.remove(&key).expect("listed above");
            self.filter_index.remove(&key, &filtered.view);
        }
        crate::metrics::get()
            .filtered_views
            .set(self.filtered.len() as i64);
        if let Some(ids) = self.by_entity.get_mut(&view.source) {
            ids.retain(|v| **v != *id);
        }
        let issue = socket_issue(
            IssueCode::ViewRemoved,
            &format!("view {id:?} was removed by a plugin reload; the subscription stays pending"),
            false,
        );
        for (conn, subs) in &mut self.conn_subs {
            let ids: Vec<SubscriptionId> =
                subs.keys().filter(|(v, _)| **v == *id).cloned().collect();
            for sub_id in ids {
                let registered = subs.remove(&sub_id).expect("listed above");
                self.pending
                    .entry(*conn)
                    .or_default()
                    .insert((id.to_owned(), sub_id.1), registered.request);
                notify(*conn, Notice::Cancel(registered.generation));
                notify(*conn, Notice::Frame(issue.clone()));
            }
        }
    }

    /// Replaces a derived view's definition. Each subscriber gets exactly
    /// the `delete`s and `upsert`s that turn what it holds into its window
    /// of the new definition, then, if the sort changed, a `subscribed`
    /// frame carrying the new sort. Unchanged definitions send nothing.
    pub fn redefine(&mut self, id: &str, def: ViewDef, store: &Store, notify: Notify<'_>) {
        let Some(view) = self.views.get_mut(id) else {
            return;
        };
        if view.def.as_ref() == Some(&def) {
            return;
        }
        self.snapshot_cache.remove(id);
        // What every subscriber holds under the old definition.
        let mut held: Vec<(ConnId, SubscriptionId, Vec<String>)> = Vec::new();
        for (conn, subs) in &self.conn_subs {
            for (sub_id, registered) in subs.iter().filter(|(s, _)| *s.0 == *id) {
                let view = match &registered.filter {
                    None => &self.views[id],
                    Some(f) => &self.filtered[&(sub_id.0.clone(), f.clone())].view,
                };
                let keys = match &registered.slot {
                    Slot::Window(window) => view
                        .subs
                        .windows
                        .get(window)
                        .map(|g| g.members.clone())
                        .unwrap_or_default(),
                    slot => view.snapshot_keys(slot, store),
                };
                held.push((*conn, sub_id.clone(), keys));
            }
        }
        let view = self.views.get_mut(id).expect("looked up above");
        let old_sort = view.wire_sort();
        let redefine = |view: &mut View| {
            view.sort = def.effective_sort();
            view.def = Some(def.clone());
            view.rebuild_index(store);
            view.subs = Subscribers::default();
        };
        redefine(view);
        for (key, filtered) in self.filtered.iter_mut().filter(|((v, _), _)| **v == *id) {
            self.filter_index.remove(key, &filtered.view);
            redefine(&mut filtered.view);
            self.filter_index.add(key, &filtered.view);
        }
        let view = &self.views[id];
        let sort_changed = view.wire_sort() != old_sort;
        let subscribed = Frame::data(&Subscribed {
            op: "subscribed",
            view: &view.id,
            mode: view.mode,
            sort: view.wire_sort(),
        });
        let mut frames = FrameCache::new(view.id.shared(), view.mode);
        for (conn, sub_id, before) in held {
            let registered = self
                .conn_subs
                .get_mut(&conn)
                .and_then(|subs| subs.get_mut(&sub_id))
                .expect("collected above");
            let view = match &registered.filter {
                None => self.views.get_mut(id).expect("looked up above"),
                Some(f) => {
                    &mut self
                        .filtered
                        .get_mut(&(sub_id.0.clone(), f.clone()))
                        .expect("kept with its subscriptions")
                        .view
                }
            };
            let slot = view.slot_for(&registered.request);
            view.add(conn, &slot, &self.live_windows);
            let after = view.snapshot_keys(&slot, store);
            registered.slot = slot;
            let kept: HashSet<&str> = after.iter().map(String::as_str).collect();
            let had: HashSet<&str> = before.iter().map(String::as_str).collect();
            for left in before.iter().filter(|k| !kept.contains(k.as_str())) {
                notify(conn, Notice::Frame(frames.delete(left)));
            }
            for entered in after.iter().filter(|k| !had.contains(k.as_str())) {
                notify(
                    conn,
                    Notice::Frame(frames.upsert(entered, store, &view.source)),
                );
            }
            if sort_changed {
                notify(conn, Notice::Frame(subscribed.clone()));
            }
        }
    }

    /// Re-reads every view's index from the store (after the store was
    /// restored from a checkpoint under views built on an empty one).
    pub fn rebuild_all(&mut self, store: &Store) {
        self.snapshot_cache.clear();
        for view in self.views.values_mut() {
            view.rebuild_index(store);
        }
        for (key, filtered) in self.filtered.iter_mut() {
            self.filter_index.remove(key, &filtered.view);
            filtered.view.rebuild_index(store);
            self.filter_index.add(key, &filtered.view);
        }
    }

    /// A view by id.
    pub fn get(&self, id: &str) -> Option<&View> {
        self.views.get(id)
    }

    /// Every view, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &View> {
        self.views.values()
    }

    /// Registers (or replaces) the subscription of `conn` to (view, key) and
    /// returns what to send first. For an unknown view the request is kept
    /// pending and [`SubscribeError::ViewNotFound`] returned. With
    /// `filters`, it joins (or creates) the filtered sub-view of its view.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        request: &SubscribeRequest,
        store: &Store,
    ) -> Result<SubscriptionStart, SubscribeError> {
        self.unsubscribe(conn, &request.view, request.key.as_deref());
        let Some(view_id) = self
            .views
            .get_key_value(request.view.as_str())
            .map(|(k, _)| k)
        else {
            self.pending
                .entry(conn)
                .or_default()
                .insert((request.view.clone(), request.key.clone()), request.clone());
            return Err(SubscribeError::ViewNotFound);
        };
        let view_id = view_id.clone();
        let filter = match &request.filters {
            None => None,
            Some(filters) => Some(self.filtered_key(&view_id, filters, store)?),
        };
        let view = match &filter {
            None => self.views.get_mut(&view_id).expect("looked up above"),
            Some(key) => {
                let filtered = self.filtered.get_mut(key).expect("made above");
                filtered.refs += 1;
                &mut filtered.view
            }
        };
        let slot = view.slot_for(request);
        view.add(conn, &slot, &self.live_windows);
        let subscribed = Frame::data(&Subscribed {
            op: "subscribed",
            view: &view.id,
            mode: view.mode,
            sort: view.wire_sort(),
        });
        // `after`: resume from a cursor. Whole views and single keys resume
        // with the changes since (and deletes of what left); a cursor older
        // than the known deletes, or a window, gets a full snapshot.
        let resume = request
            .after
            .filter(|after| store.can_resume_from(after.0) && !matches!(slot, Slot::Window(_)));
        let mut resume_deletes = Vec::new();
        if let (Some(after), true) = (resume, view.mode != Mode::Append) {
            let mut frames = FrameCache::new(view.id.shared(), view.mode);
            let wanted = |key: &str| match &slot {
                Slot::Key(k) => k == key,
                _ => true,
            };
            for key in store
                .deleted_after(&view.source, after.0)
                .filter(|k| wanted(k))
            {
                resume_deletes.push(frames.delete(key));
            }
            if view.mode == Mode::List {
                // Changed since the cursor but no longer in the view.
                for (key, entity) in store.table(&view.source) {
                    if wanted(key) && entity.seq() > Some(after) && !view.index.contains(key) {
                        resume_deletes.push(frames.delete(key));
                    }
                }
            }
        }
        let shareable = slot == Slot::All
            && filter.is_none()
            && request.after.is_none()
            && request.snapshot_limit.is_none();
        let cached = shareable
            .then(|| self.snapshot_cache.get(&view_id))
            .flatten()
            .filter(|(version, _)| *version == store.version())
            .and_then(|(_, weak)| weak.upgrade());
        let snapshot = (view.mode != Mode::Append && request.with_snapshot).then(|| {
            if let Some(snapshot) = cached {
                return snapshot;
            }
            let entries = view
                .snapshot_iter(&slot, store)
                .filter_map(|key| {
                    let data = store.get(&view.source, key)?.clone();
                    Some(SnapshotEntry {
                        key: key.to_owned(),
                        data,
                    })
                })
                .filter(|e| resume.is_none_or(|after| e.data.seq() > Some(after)));
            let entries = match request.snapshot_limit {
                Some(limit) => entries.take(limit).collect(),
                None => entries.collect(),
            };
            let snapshot = Arc::new(Snapshot::new(view_id.shared(), view.mode, entries));
            if shareable {
                self.snapshot_cache.insert(
                    view_id.clone(),
                    (store.version(), Arc::downgrade(&snapshot)),
                );
            }
            snapshot
        });
        self.next_generation += 1;
        let generation = self.next_generation;
        self.conn_subs.entry(conn).or_default().insert(
            (view_id.clone(), request.key.clone()),
            Registered {
                slot,
                request: request.clone(),
                generation,
                filter: filter.map(|(_, canonical)| canonical),
            },
        );
        Ok(SubscriptionStart {
            subscribed,
            view: view_id,
            mode: view.mode,
            snapshot,
            resume_deletes,
            generation,
        })
    }

    /// Removes the subscription (active or pending) of `conn` to (view,
    /// key), saying what it was.
    pub fn unsubscribe(&mut self, conn: ConnId, view: &str, key: Option<&str>) -> Removed {
        let was_pending = self
            .pending
            .get_mut(&conn)
            .and_then(|p| p.remove(&(view.to_owned(), key.map(str::to_owned))))
            .is_some();
        let nothing = if was_pending {
            Removed::Pending
        } else {
            Removed::Nothing
        };
        let Some(subs) = self.conn_subs.get_mut(&conn) else {
            return nothing;
        };
        let Some(view_id) = self.views.get_key_value(view).map(|(k, _)| k.clone()) else {
            return nothing;
        };
        let Some(registered) = subs.remove(&(view_id.clone(), key.map(str::to_owned))) else {
            return nothing;
        };
        let generation = registered.generation;
        self.leave(conn, view_id, registered);
        Removed::Active(generation)
    }

    /// The filtered sub-view of `view_id` for `filters`, made if missing.
    fn filtered_key(
        &mut self,
        view_id: &ViewId,
        filters: &Filters,
        store: &Store,
    ) -> Result<FilterKey, SubscribeError> {
        let parent = &self.views[view_id];
        if parent.mode != Mode::List {
            return Err(SubscribeError::InvalidFilter(format!(
                "filters apply to list views; {view_id:?} streams in {} mode",
                match parent.mode {
                    Mode::State => "state",
                    Mode::Append => "append",
                    Mode::List => "list",
                }
            )));
        }
        let key = (view_id.clone(), filters.canonical().to_owned());
        if !self.filtered.contains_key(&key) {
            let view = parent.filtered(filters.clone(), store);
            self.filter_index.add(&key, &view);
            self.filtered
                .insert(key.clone(), Filtered { view, refs: 0 });
            crate::metrics::get()
                .filtered_views
                .set(self.filtered.len() as i64);
        }
        Ok(key)
    }

    /// Takes a subscription out of the view (or filtered sub-view, dropped
    /// with its last subscription) it sits in.
    fn leave(&mut self, conn: ConnId, view_id: ViewId, registered: Registered) {
        match registered.filter {
            None => {
                if let Some(view) = self.views.get_mut(&view_id) {
                    view.remove(conn, &registered.slot);
                }
            }
            Some(canonical) => {
                let key = (view_id, canonical);
                if let Some(filtered) = self.filtered.get_mut(&key) {
                    filtered.view.remove(conn, &registered.slot);
                    filtered.refs -= 1;
                    if filtered.refs == 0 {
                        let filtered = self.filtered.remove(&key).expect("looked up above");
                        self.filter_index.remove(&key, &filtered.view);
                        crate::metrics::get()
                            .filtered_views
                            .set(self.filtered.len() as i64);
                    }
                }
            }
        }
    }

    /// Number of filtered sub-views (distinct (view, filters) in use).
    pub fn filtered_views(&self) -> usize {
        self.filtered.len()
    }

    /// Removes every subscription of a closed connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.pending.remove(&conn);
        for ((view_id, _), registered) in self.conn_subs.remove(&conn).unwrap_or_default() {
            self.leave(conn, view_id, registered);
        }
    }

    /// Number of subscriptions held by `conn`, pending ones included.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.conn_subs.get(&conn).map_or(0, HashMap::len)
            + self.pending.get(&conn).map_or(0, HashMap::len)
    }

    /// Whether any view (or filtered sub-view) has a `skip`/`take` window
    /// subscribed. A window's change reads entities other than the changed
    /// one (members entering it) from the store, so it must run right after
    /// its own mutation, before the store moves on: the engine lets the
    /// views fall behind the store only while there is none
    /// (`engine/behind.rs`).
    pub fn windows_exist(&self) -> bool {
        self.live_windows.exist()
    }

    /// Maintains every view of the changed entity type and delivers frames.
    pub fn apply(
        &mut self,
        change: &Change,
        store: &Store,
        deliver: &mut dyn FnMut(ConnId, &Frame),
    ) {
        let Some(ids) = self.by_entity.get(&change.entity) else {
            return;
        };
        for id in ids {
            if let Some(view) = self.views.get_mut(id) {
                view.apply(change, store, deliver);
            }
        }
        let concerned =
            self.filter_index
                .candidates(&change.entity, &change.key, change.new.as_deref());
        for key in concerned {
            if let Some(filtered) = self.filtered.get_mut(&key) {
                filtered.view.apply(change, store, deliver);
                let holds = filtered.view.index.contains(&change.key);
                self.filter_index
                    .held(&change.entity, &change.key, &key, holds);
            }
        }
    }
}

impl SubscriptionStart {
    /// Sends the `subscribed` frame and the snapshot through `notify`.
    pub fn send(self, conn: ConnId, notify: Notify<'_>) {
        notify(conn, Notice::Frame(self.subscribed));
        for frame in self.resume_deletes {
            notify(conn, Notice::Frame(frame));
        }
        if let Some(snapshot) = self.snapshot {
            notify(
                conn,
                Notice::Snapshot {
                    snapshot,
                    generation: self.generation,
                },
            );
        }
    }
}
