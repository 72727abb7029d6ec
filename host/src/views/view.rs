//! One view: its definition, its index, its subscribers grouped by what
//! they see, and the frames one change produces for them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use vista_plugin_api::view::{Order, SortSpec, ViewDef};

use super::index::{OrderedIndex, SortKey, Window};
use crate::filters::Filters;
use crate::frame::{EntityUpdate, Frame, WireSort};
use crate::ids::{PluginName, Seq, ViewId};
use crate::store::{Change, Store};
use crate::vocab::{ConnId, FastMap, Mode, Op, SubscribeRequest};

/// Subscribers sharing one window of a list view.
pub(crate) struct WindowGroup {
    /// Keys currently in the window, in order: what these clients hold.
    pub(crate) members: Vec<String>,
    pub(crate) conns: HashSet<ConnId>,
    _live: LiveWindow,
}

/// How many window groups the views hold: shared by every group they
/// create, each counted from creation to drop, however it ends (its last
/// subscriber gone, its view replaced or unloaded). See
/// [`super::Views::windows_exist`].
#[derive(Default)]
pub(crate) struct LiveWindows(Arc<AtomicUsize>);

impl LiveWindows {
    pub(crate) fn exist(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    fn count_one(&self) -> LiveWindow {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveWindow(self.0.clone())
    }
}

/// One live window group's share of [`LiveWindows`].
struct LiveWindow(Arc<AtomicUsize>);

impl Drop for LiveWindow {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where one subscription is registered inside its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    All,
    Key(String),
    Window(Window),
}

#[derive(Default)]
pub(crate) struct Subscribers {
    pub(crate) all: HashSet<ConnId>,
    pub(crate) by_key: FastMap<String, HashSet<ConnId>>,
    pub(crate) windows: FastMap<Window, WindowGroup>,
}

/// One view: its definition, index and subscribers.
pub struct View {
    /// View id, e.g. `Token/list`.
    pub id: ViewId,
    /// Source entity type.
    pub source: String,
    /// Streaming mode.
    pub mode: Mode,
    /// Name of the plugin providing the view.
    pub plugin: PluginName,
    /// The definition (filter/sort/limit) for derived views; `None` for base views.
    pub def: Option<ViewDef>,
    /// A subscription filter narrowing this copy of a list view (a
    /// filtered sub-view shared by the subscriptions with equal filters);
    /// `None` for the views themselves.
    pub(crate) filters: Option<Filters>,
    /// Effective sort for list views.
    pub(crate) sort: SortSpec,
    pub(crate) index: OrderedIndex,
    pub(crate) subs: Subscribers,
}

impl View {
    pub(crate) fn new(
        id: ViewId,
        source: &str,
        mode: Mode,
        plugin: &PluginName,
        def: Option<ViewDef>,
    ) -> Self {
        let sort = def.as_ref().map_or_else(
            || SortSpec {
                field: Seq::FIELD.into(),
                order: Order::Desc,
            },
            ViewDef::effective_sort,
        );
        let index = OrderedIndex::for_field(&sort.field, sort.order == Order::Desc);
        Self {
            id,
            source: source.to_owned(),
            mode,
            plugin: plugin.clone(),
            def,
            filters: None,
            sort,
            index,
            subs: Subscribers::default(),
        }
    }

    /// A copy of this list view holding only the entities that also match
    /// `filters`: same id (frames name the view the client subscribed to),
    /// definition, sort and limit (applied after the filter).
    pub(crate) fn filtered(&self, filters: Filters, store: &Store) -> View {
        let mut view = View::new(
            self.id.clone(),
            &self.source,
            self.mode,
            &self.plugin,
            self.def.clone(),
        );
        view.filters = Some(filters);
        view.rebuild_index(store);
        view
    }

    /// Subscriptions to this view: all keys, one key or a window.
    pub fn subscriber_count(&self) -> usize {
        self.subs.all.len()
            + self.subs.by_key.values().map(HashSet::len).sum::<usize>()
            + self
                .subs
                .windows
                .values()
                .map(|g| g.conns.len())
                .sum::<usize>()
    }

    /// Entities in a list view (0 for state and append views, which keep
    /// no index).
    pub fn member_count(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn desc(&self) -> bool {
        self.sort.order == Order::Desc
    }

    pub(crate) fn is_derived(&self) -> bool {
        self.def.is_some()
    }

    pub(crate) fn matches(&self, entity: &Value) -> bool {
        self.def.as_ref().is_none_or(|d| d.matches(entity))
            && self.filters.as_ref().is_none_or(|f| f.matches(entity))
    }

    /// The wire `sort` of list views.
    pub fn wire_sort(&self) -> Option<WireSort> {
        (self.mode == Mode::List).then(|| WireSort {
            field: self.sort.field.split('.').map(str::to_owned).collect(),
            order: self.sort.order,
        })
    }

    pub(crate) fn rebuild_index(&mut self, store: &Store) {
        self.index = OrderedIndex::default();
        if self.mode != Mode::List {
            return;
        }
        // A base list in `_seq` order reads each entity's `_seq` alone:
        // most of a large store is held as text, and a restart rebuilds
        // every list view over all of it.
        let by_seq_alone =
            self.def.is_none() && self.filters.is_none() && self.sort.field == Seq::FIELD;
        let members = store.table(&self.source).filter_map(|(key, stored)| {
            if let Some(seq) = by_seq_alone.then(|| stored.seq()).flatten() {
                return Some((key, SortKey::Seq(seq.0)));
            }
            let entity = stored.tree();
            self.matches(&entity)
                .then(|| (key, SortKey::of(&entity, &self.sort.field)))
        });
        self.index = OrderedIndex::from_members(members, &self.sort.field, self.desc());
    }

    /// Where a subscription request sits in this view.
    pub(crate) fn slot_for(&self, request: &SubscribeRequest) -> Slot {
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

    pub(crate) fn window_for(&self, request: &SubscribeRequest) -> Window {
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

    pub(crate) fn snapshot_keys(&self, slot: &Slot, store: &Store) -> Vec<String> {
        self.snapshot_iter(slot, store).map(str::to_owned).collect()
    }

    /// The keys a subscription's snapshot holds, in order, borrowed: a
    /// limited snapshot reads only what it sends.
    pub(crate) fn snapshot_iter<'a>(
        &'a self,
        slot: &'a Slot,
        store: &'a Store,
    ) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match (self.mode, slot) {
            (Mode::Append, _) => Box::new(std::iter::empty()),
            (Mode::List, Slot::Key(key)) => {
                Box::new(self.index.contains(key).then_some(key.as_str()).into_iter())
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
                    .then_some(key.as_str())
                    .into_iter(),
            ),
            (Mode::State, _) => {
                // Key order has no index: sort borrowed keys, copy none.
                let mut keys: Vec<&str> = store.table(&self.source).map(|(k, _)| k).collect();
                keys.sort_unstable();
                Box::new(keys.into_iter())
            }
        }
    }

    pub(crate) fn add(&mut self, conn: ConnId, slot: &Slot, live_windows: &LiveWindows) {
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
                        _live: live_windows.count_one(),
                    })
                    .conns
                    .insert(conn);
            }
        }
    }

    pub(crate) fn remove(&mut self, conn: ConnId, slot: &Slot) {
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
    pub(crate) fn apply(
        &mut self,
        change: &Change,
        store: &Store,
        deliver: &mut dyn FnMut(ConnId, &Frame),
    ) {
        let key = change.key.as_str();
        let direct_subscribers = !self.subs.all.is_empty() || self.subs.by_key.contains_key(key);
        if self.mode != Mode::List {
            if !direct_subscribers {
                return;
            }
            let mut frames = FrameCache::single(self.id.shared(), self.mode);
            let frame = match (&change.patch, change.existed) {
                (Some(_), _) => frames.change(key, change),
                (None, true) => frames.delete(key),
                (None, false) => return,
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
                let value = SortKey::of(entity, &self.sort.field);
                self.index.insert(key, value, desc);
            }
            _ => self.index.remove(key, desc),
        }

        if !direct_subscribers && self.subs.windows.is_empty() {
            return; // index maintained; nobody to tell
        }
        let mut frames = if self.subs.windows.is_empty() {
            FrameCache::single(self.id.shared(), self.mode)
        } else {
            FrameCache::new(self.id.shared(), self.mode)
        };
        // What a client holding every member sees for this change.
        if direct_subscribers {
            let direct = if !now_in {
                frames.delete(key)
            } else if self.is_derived() || !was_in {
                frames.upsert_changed(change)
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
                if member == key && (self.def.is_some() || !old.contains(key)) {
                    out.push(frames.upsert_changed(change));
                } else if !old.contains(member.as_str()) {
                    out.push(frames.upsert(member, store, &self.source));
                } else if member == key {
                    out.push(frames.change(key, change));
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

    pub(crate) fn deliver_to_all_and_key(
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
pub(crate) struct FrameCache {
    pub(crate) view: Arc<str>,
    pub(crate) mode: Mode,
    pub(crate) frames: FastMap<(Op, String), Frame>,
    /// Whether frames are kept for reuse: not when a change needs one
    /// frame only (no windows), where keeping it would cost two key copies
    /// and a map for nothing.
    memo: bool,
}

impl FrameCache {
    pub(crate) fn new(view: Arc<str>, mode: Mode) -> Self {
        Self {
            view,
            mode,
            frames: FastMap::default(),
            memo: true,
        }
    }

    /// A cache for a change that needs at most one frame of each kind.
    pub(crate) fn single(view: Arc<str>, mode: Mode) -> Self {
        Self {
            memo: false,
            ..Self::new(view, mode)
        }
    }

    /// The frame of `op` for `key`, encoded by `encode` unless kept.
    fn memoized(&mut self, op: Op, key: &str, encode: impl FnOnce(&Self) -> Frame) -> Frame {
        if !self.memo {
            return encode(self);
        }
        if let Some(frame) = self.frames.get(&(op, key.to_owned())) {
            return frame.clone();
        }
        let frame = encode(self);
        self.frames.insert((op, key.to_owned()), frame.clone());
        frame
    }

    pub(crate) fn update(
        &self,
        op: Op,
        key: &str,
        data: Option<Arc<Value>>,
        text: Option<Arc<RawValue>>,
        append: Vec<String>,
        seq: Option<Seq>,
    ) -> Frame {
        EntityUpdate {
            view: self.view.clone(),
            mode: self.mode,
            op,
            key: key.to_owned(),
            data,
            text,
            append,
            seq,
        }
        .into_frame()
    }

    pub(crate) fn delete(&mut self, key: &str) -> Frame {
        self.memoized(Op::Delete, key, |cache| {
            cache.update(Op::Delete, key, None, None, Vec::new(), None)
        })
    }

    pub(crate) fn upsert(&mut self, key: &str, store: &Store, source: &str) -> Frame {
        self.memoized(Op::Upsert, key, |cache| {
            let entity = store.tree(source, key);
            let seq = entity.as_deref().and_then(Seq::of);
            cache.update(Op::Upsert, key, entity, None, Vec::new(), seq)
        })
    }

    /// The changed entity as an `upsert`, as the change left it: the
    /// store's copy may have moved on while the views were behind (a later
    /// request writing the same key), and reading the change's own value
    /// also spares parsing an entity the store keeps as text; that text,
    /// if the store made one, is the frame's data as it is.
    pub(crate) fn upsert_changed(&mut self, change: &Change) -> Frame {
        let key = change.key.as_str();
        self.memoized(Op::Upsert, key, |cache| {
            let (entity, text) = (change.new.clone(), change.new_text.clone());
            cache.update(Op::Upsert, key, entity, text, Vec::new(), Some(change.seq))
        })
    }

    /// The mutation itself as a `patch` (base views).
    pub(crate) fn change(&mut self, key: &str, change: &Change) -> Frame {
        self.memoized(Op::Patch, key, |cache| {
            let (patch, append) = change.wire_patch();
            cache.update(Op::Patch, key, patch, None, append, Some(change.seq))
        })
    }
}
