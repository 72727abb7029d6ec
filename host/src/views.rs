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

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};

use serde_json::Value;
use vista_plugin_api::view::{Order, SortSpec, SortValue, ViewDef};

use crate::frame::{
    socket_issue, EntityUpdate, Frame, Mode, Op, Snapshot, SnapshotEntry, Subscribed, WireSort,
};
use crate::outbox::{Outgoing, SnapshotJob};
use crate::store::{Change, Store};

/// Identifies a client connection.
pub type ConnId = u64;

/// A subscription request, as parsed from either message form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeRequest {
    /// View id.
    pub view: String,
    /// One key, or `None` for all keys (`"*"` is normalised to `None`).
    pub key: Option<String>,
    /// Window size within the view's order (list views).
    pub take: Option<usize>,
    /// Window offset within the view's order (list views).
    pub skip: Option<usize>,
    /// `false` to skip the snapshot.
    pub with_snapshot: bool,
    /// Only snapshot entities whose `_seq` is greater than this.
    pub after: Option<String>,
    /// At most this many snapshot entities.
    pub snapshot_limit: Option<usize>,
}

/// What the connection must send to start a subscription.
pub struct SubscriptionStart {
    /// The encoded `subscribed` frame.
    pub subscribed: Frame,
    /// View id and mode, for the snapshot frames.
    pub view: Arc<str>,
    /// Mode of the view.
    pub mode: Mode,
    /// The snapshot to send, in view order; `None` for append views or when
    /// the client asked for no snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
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

/// A `skip`/`take` window, as a half-open range of view positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First position.
    pub start: usize,
    /// One past the last position; `None` = to the end.
    pub end: Option<usize>,
}

impl Window {
    fn is_everything(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }
}

/// Position of an entity in a view: sort value, direction, then key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderKey {
    value: SortValue,
    desc: bool,
    key: String,
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_value = self.value.cmp(&other.value);
        let by_value = if self.desc {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The members of a list view in view order.
#[derive(Default)]
pub struct OrderedIndex {
    order: BTreeSet<OrderKey>,
    /// Each member's current sort value, to find it in `order`.
    values: HashMap<String, SortValue>,
}

impl OrderedIndex {
    fn remove(&mut self, key: &str, desc: bool) {
        if let Some(value) = self.values.remove(key) {
            self.order.remove(&OrderKey {
                value,
                desc,
                key: key.to_owned(),
            });
        }
    }

    fn insert(&mut self, key: &str, value: SortValue, desc: bool) {
        self.remove(key, desc);
        self.values.insert(key.to_owned(), value.clone());
        self.order.insert(OrderKey {
            value,
            desc,
            key: key.to_owned(),
        });
    }

    fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Keys at the window's positions, in order.
    fn window(&self, window: Window) -> Vec<String> {
        self.window_iter(window).cloned().collect()
    }

    /// The same keys, borrowed.
    fn window_iter(&self, window: Window) -> impl Iterator<Item = &String> {
        let take = window
            .end
            .map_or(usize::MAX, |end| end.saturating_sub(window.start));
        self.order
            .iter()
            .skip(window.start)
            .take(take)
            .map(|k| &k.key)
    }
}

/// Subscribers sharing one window of a list view.
struct WindowGroup {
    /// Keys currently in the window, in order: what these clients hold.
    members: Vec<String>,
    conns: HashSet<ConnId>,
}

/// Where one subscription is registered inside its view.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    All,
    Key(String),
    Window(Window),
}

#[derive(Default)]
struct Subscribers {
    all: HashSet<ConnId>,
    by_key: HashMap<String, HashSet<ConnId>>,
    windows: HashMap<Window, WindowGroup>,
}

/// One view: its definition, index and subscribers.
pub struct View {
    /// View id, e.g. `Token/list`.
    pub id: Arc<str>,
    /// Source entity type.
    pub source: String,
    /// Streaming mode.
    pub mode: Mode,
    /// Name of the plugin providing the view.
    pub plugin: String,
    /// The definition (filter/sort/limit) for derived views; `None` for base views.
    pub def: Option<ViewDef>,
    /// Effective sort for list views.
    sort: SortSpec,
    index: OrderedIndex,
    subs: Subscribers,
}

impl View {
    fn new(id: &str, source: &str, mode: Mode, plugin: &str, def: Option<ViewDef>) -> Self {
        let sort = def.as_ref().map_or_else(
            || SortSpec {
                field: "_seq".into(),
                order: Order::Desc,
            },
            ViewDef::effective_sort,
        );
        Self {
            id: id.into(),
            source: source.to_owned(),
            mode,
            plugin: plugin.to_owned(),
            def,
            sort,
            index: OrderedIndex::default(),
            subs: Subscribers::default(),
        }
    }

    fn desc(&self) -> bool {
        self.sort.order == Order::Desc
    }

    fn is_derived(&self) -> bool {
        self.def.is_some()
    }

    fn matches(&self, entity: &Value) -> bool {
        self.def.as_ref().is_none_or(|d| d.matches(entity))
    }

    /// The wire `sort` of list views.
    pub fn wire_sort(&self) -> Option<WireSort> {
        (self.mode == Mode::List).then(|| WireSort {
            field: self.sort.field.split('.').map(str::to_owned).collect(),
            order: self.sort.order,
        })
    }

    fn rebuild_index(&mut self, store: &Store) {
        self.index = OrderedIndex::default();
        if self.mode != Mode::List {
            return;
        }
        let desc = self.desc();
        for (key, entity) in store.table(&self.source) {
            if self.matches(entity) {
                let value = SortValue::of(entity, &self.sort.field);
                self.index.insert(key, value, desc);
            }
        }
    }

    /// Where a subscription request sits in this view.
    fn slot_for(&self, request: &SubscribeRequest) -> Slot {
        match (&request.key, self.mode) {
            (Some(key), _) => Slot::Key(key.clone()),
            (None, Mode::List) => {
                let window = self.window_for(request);
                if window.is_everything() {
                    Slot::All
                } else {
                    Slot::Window(window)
                }
            }
            (None, _) => Slot::All,
        }
    }

    fn window_for(&self, request: &SubscribeRequest) -> Window {
        let limit = self.def.as_ref().and_then(|d| d.take);
        let start = request.skip.unwrap_or(0);
        let requested_end = request.take.map(|t| start.saturating_add(t));
        let end = match (requested_end, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Window {
            start: end.map_or(start, |e| start.min(e)),
            end,
        }
    }

    fn snapshot_keys(&self, slot: &Slot, store: &Store) -> Vec<String> {
        self.snapshot_iter(slot, store).cloned().collect()
    }

    /// The keys a subscription's snapshot holds, in order, borrowed: a
    /// limited snapshot reads only what it sends.
    fn snapshot_iter<'a>(
        &'a self,
        slot: &'a Slot,
        store: &'a Store,
    ) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        match (self.mode, slot) {
            (Mode::Append, _) => Box::new(std::iter::empty()),
            (Mode::List, Slot::Key(key)) => {
                Box::new(self.index.contains(key).then_some(key).into_iter())
            }
            (Mode::List, Slot::All) => Box::new(self.index.window_iter(Window {
                start: 0,
                end: None,
            })),
            (Mode::List, Slot::Window(window)) => Box::new(self.index.window_iter(*window)),
            (Mode::State, Slot::Key(key)) => Box::new(
                store
                    .get(&self.source, key)
                    .is_some()
                    .then_some(key)
                    .into_iter(),
            ),
            (Mode::State, _) => {
                // Key order has no index: sort borrowed keys, copy none.
                let mut keys: Vec<&String> = store.table(&self.source).map(|(k, _)| k).collect();
                keys.sort_unstable();
                Box::new(keys.into_iter())
            }
        }
    }

    fn add(&mut self, conn: ConnId, slot: &Slot) {
        match slot {
            Slot::All => {
                self.subs.all.insert(conn);
            }
            Slot::Key(key) => {
                self.subs
                    .by_key
                    .entry(key.clone())
                    .or_default()
                    .insert(conn);
            }
            Slot::Window(window) => {
                let index = &self.index;
                self.subs
                    .windows
                    .entry(*window)
                    .or_insert_with(|| WindowGroup {
                        members: index.window(*window),
                        conns: HashSet::new(),
                    })
                    .conns
                    .insert(conn);
            }
        }
    }

    fn remove(&mut self, conn: ConnId, slot: &Slot) {
        match slot {
            Slot::All => {
                self.subs.all.remove(&conn);
            }
            Slot::Key(key) => {
                if let Some(conns) = self.subs.by_key.get_mut(key) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        self.subs.by_key.remove(key);
                    }
                }
            }
            Slot::Window(window) => {
                if let Some(group) = self.subs.windows.get_mut(window) {
                    group.conns.remove(&conn);
                    if group.conns.is_empty() {
                        self.subs.windows.remove(window);
                    }
                }
            }
        }
    }

    /// Updates the index for one change and delivers the resulting frames.
    fn apply(&mut self, change: &Change, store: &Store, deliver: &mut dyn FnMut(ConnId, &Frame)) {
        let key = change.key.as_str();
        let direct_subscribers = !self.subs.all.is_empty() || self.subs.by_key.contains_key(key);
        if self.mode != Mode::List {
            if !direct_subscribers {
                return;
            }
            let mut frames = FrameCache::new(self.id.clone(), self.mode);
            let frame = match (&change.patch, &change.old) {
                (Some(_), _) => frames.change(key, change),
                (None, Some(_)) => frames.delete(key),
                (None, None) => return,
            };
            self.deliver_to_all_and_key(key, &frame, deliver);
            return;
        }

        let was_in = self.index.contains(key);
        let now_in = change.new.as_deref().is_some_and(|e| self.matches(e));
        if !was_in && !now_in {
            return;
        }
        let desc = self.desc();
        match &change.new {
            Some(entity) if now_in => {
                let value = SortValue::of(entity, &self.sort.field);
                self.index.insert(key, value, desc);
            }
            _ => self.index.remove(key, desc),
        }

        if !direct_subscribers && self.subs.windows.is_empty() {
            return; // index maintained; nobody to tell
        }
        let mut frames = FrameCache::new(self.id.clone(), self.mode);
        // What a client holding every member sees for this change.
        if direct_subscribers {
            let direct = if !now_in {
                frames.delete(key)
            } else if self.is_derived() || !was_in {
                frames.upsert(key, store, &self.source)
            } else {
                frames.change(key, change)
            };
            self.deliver_to_all_and_key(key, &direct, deliver);
        }

        for (window, group) in &mut self.subs.windows {
            let members = self.index.window(*window);
            if members == group.members && !members.iter().any(|m| m == key) {
                continue;
            }
            let old: HashSet<&str> = group.members.iter().map(String::as_str).collect();
            let new: HashSet<&str> = members.iter().map(String::as_str).collect();
            let mut out: Vec<Frame> = Vec::new();
            for left in group.members.iter().filter(|m| !new.contains(m.as_str())) {
                out.push(frames.delete(left));
            }
            for member in &members {
                if !old.contains(member.as_str()) {
                    out.push(frames.upsert(member, store, &self.source));
                } else if member == key {
                    out.push(if self.def.is_some() {
                        frames.upsert(key, store, &self.source)
                    } else {
                        frames.change(key, change)
                    });
                }
            }
            for conn in &group.conns {
                for frame in &out {
                    deliver(*conn, frame);
                }
            }
            group.members = members;
        }
    }

    fn deliver_to_all_and_key(
        &self,
        key: &str,
        frame: &Frame,
        deliver: &mut dyn FnMut(ConnId, &Frame),
    ) {
        for conn in &self.subs.all {
            deliver(*conn, frame);
        }
        if let Some(conns) = self.subs.by_key.get(key) {
            for conn in conns {
                deliver(*conn, frame);
            }
        }
    }
}

/// Encodes each distinct frame of one change at most once.
struct FrameCache {
    view: Arc<str>,
    mode: Mode,
    frames: HashMap<(Op, String), Frame>,
}

impl FrameCache {
    fn new(view: Arc<str>, mode: Mode) -> Self {
        Self {
            view,
            mode,
            frames: HashMap::new(),
        }
    }

    fn update(
        &self,
        op: Op,
        key: &str,
        data: Option<Arc<Value>>,
        append: Vec<String>,
        seq: Option<String>,
    ) -> Frame {
        EntityUpdate {
            view: self.view.clone(),
            mode: self.mode,
            op,
            key: key.to_owned(),
            data,
            append,
            seq,
        }
        .into_frame()
    }

    fn delete(&mut self, key: &str) -> Frame {
        if let Some(frame) = self.frames.get(&(Op::Delete, key.to_owned())) {
            return frame.clone();
        }
        let frame = self.update(Op::Delete, key, None, Vec::new(), None);
        self.frames
            .insert((Op::Delete, key.to_owned()), frame.clone());
        frame
    }

    fn upsert(&mut self, key: &str, store: &Store, source: &str) -> Frame {
        if let Some(frame) = self.frames.get(&(Op::Upsert, key.to_owned())) {
            return frame.clone();
        }
        let entity = store.get(source, key).cloned();
        let seq = entity
            .as_ref()
            .and_then(|e| e["_seq"].as_str().map(str::to_owned));
        let frame = self.update(Op::Upsert, key, entity, Vec::new(), seq);
        self.frames
            .insert((Op::Upsert, key.to_owned()), frame.clone());
        frame
    }

    /// The mutation itself as a `patch` (base views).
    fn change(&mut self, key: &str, change: &Change) -> Frame {
        if let Some(frame) = self.frames.get(&(Op::Patch, key.to_owned())) {
            return frame.clone();
        }
        let frame = self.update(
            Op::Patch,
            key,
            change.patch.clone(),
            change.append.clone(),
            Some(change.seq.clone()),
        );
        self.frames
            .insert((Op::Patch, key.to_owned()), frame.clone());
        frame
    }
}

/// A subscription's identity on its connection: (view id, key or all keys).
type SubscriptionId = (Arc<str>, Option<String>);

/// An active subscription: where it sits in its view, and the request that
/// made it (kept so the subscription can be re-placed when the view's
/// definition changes, or restarted when a removed view comes back).
struct Registered {
    slot: Slot,
    request: SubscribeRequest,
    generation: u64,
}

/// Error of [`Views::subscribe`]: the view does not exist (the
/// subscription is kept pending until a plugin provides the view).
#[derive(Debug, PartialEq, Eq)]
pub struct ViewNotFound;

/// Every view and every subscription.
#[derive(Default)]
pub struct Views {
    views: HashMap<Arc<str>, View>,
    /// View ids drawing from each entity type.
    by_entity: HashMap<String, Vec<Arc<str>>>,
    /// Each connection's active subscriptions.
    conn_subs: HashMap<ConnId, HashMap<SubscriptionId, Registered>>,
    /// Subscriptions to views that do not exist (yet, or any more), by
    /// connection and (view id, key); started when the view appears.
    pending: HashMap<ConnId, HashMap<(String, Option<String>), SubscribeRequest>>,
    /// The last whole-view snapshot of each view and the store version it
    /// was taken at: subscribers arriving before anything changes share it
    /// (and its encoding). Weak, so it lives only as long as a writer needs it.
    snapshot_cache: HashMap<Arc<str>, (u64, Weak<Snapshot>)>,
    next_generation: u64,
}

/// Something to send to one connection because views were added, removed
/// or redefined (see [`Views::add_base_views`], [`Views::remove_view`],
/// [`Views::redefine`]).
pub type Notify<'a> = &'a mut dyn FnMut(ConnId, Outgoing);

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
        plugin: &str,
        store: &Store,
        notify: Notify<'_>,
    ) {
        for (suffix, mode) in [
            ("list", Mode::List),
            ("state", Mode::State),
            ("append", Mode::Append),
        ] {
            let view = View::new(&format!("{entity}/{suffix}"), entity, mode, plugin, None);
            self.insert(view, store, notify);
        }
    }

    /// Adds a derived (list) view, starting pending subscriptions to it.
    pub fn add_derived(&mut self, def: ViewDef, plugin: &str, store: &Store, notify: Notify<'_>) {
        let view = View::new(
            &def.id.clone(),
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
            if let Ok(start) = self.subscribe(conn, &request, store) {
                start.send(conn, notify);
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
        if let Some(ids) = self.by_entity.get_mut(&view.source) {
            ids.retain(|v| **v != *id);
        }
        let issue = socket_issue(
            "view-removed",
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
                notify(*conn, Outgoing::Cancel(registered.generation));
                notify(*conn, Outgoing::Frame(issue.clone()));
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
        let old_sort = view.wire_sort();
        view.sort = def.effective_sort();
        view.def = Some(def);
        view.rebuild_index(store);
        view.subs = Subscribers::default();
        let sort_changed = view.wire_sort() != old_sort;
        let subscribed = Frame::data(&Subscribed {
            op: "subscribed",
            view: &view.id,
            mode: view.mode,
            sort: view.wire_sort(),
        });
        let mut frames = FrameCache::new(view.id.clone(), view.mode);
        for (conn, sub_id, before) in held {
            let registered = self
                .conn_subs
                .get_mut(&conn)
                .and_then(|subs| subs.get_mut(&sub_id))
                .expect("collected above");
            let slot = view.slot_for(&registered.request);
            view.add(conn, &slot);
            let after = view.snapshot_keys(&slot, store);
            registered.slot = slot;
            let kept: HashSet<&str> = after.iter().map(String::as_str).collect();
            let had: HashSet<&str> = before.iter().map(String::as_str).collect();
            for left in before.iter().filter(|k| !kept.contains(k.as_str())) {
                notify(conn, Outgoing::Frame(frames.delete(left)));
            }
            for entered in after.iter().filter(|k| !had.contains(k.as_str())) {
                notify(
                    conn,
                    Outgoing::Frame(frames.upsert(entered, store, &view.source)),
                );
            }
            if sort_changed {
                notify(conn, Outgoing::Frame(subscribed.clone()));
            }
        }
    }

    /// A view by id.
    pub fn get(&self, id: &str) -> Option<&View> {
        self.views.get(id)
    }

    /// Registers (or replaces) the subscription of `conn` to (view, key) and
    /// returns what to send first. For an unknown view the request is kept
    /// pending and [`ViewNotFound`] returned.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        request: &SubscribeRequest,
        store: &Store,
    ) -> Result<SubscriptionStart, ViewNotFound> {
        self.unsubscribe(conn, &request.view, request.key.as_deref());
        let Some((view_id, view)) = self.views.get_key_value(request.view.as_str()) else {
            self.pending
                .entry(conn)
                .or_default()
                .insert((request.view.clone(), request.key.clone()), request.clone());
            return Err(ViewNotFound);
        };
        let view_id = view_id.clone();
        let slot = view.slot_for(request);
        let view = self.views.get_mut(&view_id).expect("looked up above");
        view.add(conn, &slot);
        let subscribed = Frame::data(&Subscribed {
            op: "subscribed",
            view: &view.id,
            mode: view.mode,
            sort: view.wire_sort(),
        });
        let shareable =
            slot == Slot::All && request.after.is_none() && request.snapshot_limit.is_none();
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
                        key: key.clone(),
                        data,
                    })
                })
                .filter(|e| match &request.after {
                    Some(after) => e.data["_seq"].as_str().is_some_and(|s| s > after.as_str()),
                    None => true,
                });
            let entries = match request.snapshot_limit {
                Some(limit) => entries.take(limit).collect(),
                None => entries.collect(),
            };
            let snapshot = Arc::new(Snapshot::new(view_id.clone(), view.mode, entries));
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
            },
        );
        Ok(SubscriptionStart {
            subscribed,
            view: view_id,
            mode: view.mode,
            snapshot,
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
        if let Some(view) = self.views.get_mut(&view_id) {
            view.remove(conn, &registered.slot);
        }
        Removed::Active(registered.generation)
    }

    /// Removes every subscription of a closed connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.pending.remove(&conn);
        for ((view_id, _), registered) in self.conn_subs.remove(&conn).unwrap_or_default() {
            if let Some(view) = self.views.get_mut(&view_id) {
                view.remove(conn, &registered.slot);
            }
        }
    }

    /// Number of subscriptions held by `conn`, pending ones included.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.conn_subs.get(&conn).map_or(0, HashMap::len)
            + self.pending.get(&conn).map_or(0, HashMap::len)
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
    }
}

impl SubscriptionStart {
    /// Sends the `subscribed` frame and the snapshot through `notify`.
    pub fn send(self, conn: ConnId, notify: Notify<'_>) {
        notify(conn, Outgoing::Frame(self.subscribed));
        if let Some(snapshot) = self.snapshot {
            notify(
                conn,
                Outgoing::Snapshot(SnapshotJob {
                    snapshot,
                    generation: self.generation,
                }),
            );
        }
    }
}
