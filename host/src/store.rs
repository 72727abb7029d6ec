//! The host-owned entity store.
//!
//! Entities live here, not in plugins: a plugin can be swapped or removed
//! and its entities stay. Every applied mutation gets the next sequence
//! number ([`Seq`]), written into the entity as `_seq` in its wire form (a
//! zero-padded 16-digit decimal string, see `crate::ids`).
//!
//! Entities are [`Stored`]: an entity created by a plain patch is kept as
//! its compact text, and becomes a tree when written again (see
//! [`crate::entity`]). Trees are `Arc`s, and so is text: a snapshot holds
//! the values it captured while later mutations copy-on-write, so snapshots
//! are encoded off the engine lock without cloning the store.
//!
//! Aggregates (`add`, `unique_count`, ...) are evaluated here, against the
//! stored value, and the patch clients receive carries their results, not
//! the operands, so published clients merge it as any patch. The member
//! sets `unique_count` needs are kept beside the entities ([`Hidden`], in
//! a side table only entities that use one have): never in the entity JSON,
//! so never sent, but checkpointed and carried by a reprojection.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use vista_plugin_api::aggregate::{remove_at, set_in, value_at};
use vista_plugin_api::mutation::value_at_mut;
use vista_plugin_api::{apply_patch, Aggregate, Applied, Hidden, Mutation, MutationKind};

use crate::entity::Stored;
use crate::ids::Seq;
use crate::vocab::FastMap;

/// Tombstones kept (all entity types together) before the oldest go.
pub const MAX_TOMBSTONES: usize = 1_000_000;

/// All entities of all types, by type then key.
#[derive(Default)]
pub struct Store {
    /// Keys are boxed (16 bytes, not a `String`'s 24): a table slot per
    /// entity, a million slots in a large store.
    tables: FastMap<String, FastMap<Box<str>, Stored>>,
    /// Hidden aggregate state by type then key, only for entities that
    /// have some (`Arc`: a checkpoint shares it like the values).
    hidden: FastMap<String, FastMap<String, Arc<Hidden>>>,
    /// Deleted keys by entity type, by the `_seq` of their delete, so a
    /// client resuming from a cursor learns what went away
    /// ([`Store::deleted_after`]).
    tombstones: FastMap<String, BTreeMap<u64, String>>,
    /// The `_seq` of each key's tombstone, to drop it when the key returns.
    tombstone_of: FastMap<(String, String), u64>,
    /// Tombstones are complete for deletes after this `_seq`: older ones
    /// were dropped (oldest first past [`MAX_TOMBSTONES`]) or predate what
    /// this process rebuilt (a checkpoint keeps no tombstones).
    tombstone_horizon: u64,
    /// Last sequence number assigned (0 = none yet).
    last_seq: u64,
}

/// What one applied mutation did, handed to view maintenance.
pub struct Change {
    /// Entity type.
    pub entity: String,
    /// Entity key.
    pub key: String,
    /// Whether the entity existed before the mutation. (Not the old value
    /// itself: holding a second reference to it would make every patch
    /// deep-copy the entity in `Arc::make_mut`.)
    pub existed: bool,
    /// The entity after it (`None` for a delete).
    pub new: Option<Arc<Value>>,
    /// For a patch: the patch data with `_seq` added, as sent in `patch` frames.
    pub patch: Option<Arc<Value>>,
    /// For a patch: its append paths.
    pub append: Vec<String>,
    /// Capped append paths whose arrays were trimmed by this patch.
    pub trimmed: Vec<String>,
    /// The `_seq` assigned to this mutation.
    pub seq: Seq,
    /// `new` as the compact text the store keeps it as, if it does (a new
    /// entity from a plain patch): frames send it as it is rather than
    /// writing the tree out again.
    pub new_text: Option<Arc<RawValue>>,
}

impl Change {
    /// The patch and append paths as clients must receive them. When a
    /// capped array was trimmed, the appended items alone would leave
    /// clients with a longer array than the host's, so the patch carries the
    /// whole trimmed array (from the new entity) and replaces theirs. Built
    /// only when a frame is needed: most changes have no subscriber.
    pub fn wire_patch(&self) -> (Option<Arc<Value>>, Vec<String>) {
        if self.trimmed.is_empty() {
            return (self.patch.clone(), self.append.clone());
        }
        let (Some(patch), Some(entity)) = (&self.patch, &self.new) else {
            return (self.patch.clone(), self.append.clone());
        };
        let mut patch = Value::clone(patch);
        let mut entity = Value::clone(entity);
        for path in &self.trimmed {
            if let (Some(whole), Some(slot)) = (
                value_at_mut(&mut entity, path),
                value_at_mut(&mut patch, path),
            ) {
                *slot = whole.take();
            }
        }
        let append = self
            .append
            .iter()
            .filter(|p| !self.trimmed.contains(p))
            .cloned()
            .collect();
        (Some(Arc::new(patch)), append)
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// `entity[key]` as the store holds it.
    pub fn get(&self, entity: &str, key: &str) -> Option<&Stored> {
        self.tables.get(entity)?.get(key)
    }

    /// `entity[key]` as a tree (parsed if held as text).
    pub fn tree(&self, entity: &str, key: &str) -> Option<Arc<Value>> {
        self.get(entity, key).map(Stored::tree)
    }

    /// Whether the entity is also held outside the store (a change waiting
    /// for the views, a snapshot, a frame): writing it would copy it first.
    pub fn is_shared(&self, entity: &str, key: &str) -> bool {
        self.get(entity, key).is_some_and(Stored::is_shared)
    }

    /// The hidden aggregate state of `entity[key]`, if it has any.
    pub fn hidden(&self, entity: &str, key: &str) -> Option<&Arc<Hidden>> {
        self.hidden.get(entity)?.get(key)
    }

    /// Every entity's hidden state, for a checkpoint.
    pub fn hidden_states(&self) -> Vec<(String, String, Arc<Hidden>)> {
        rows(&self.hidden)
    }

    /// All entities of one type, in no particular order.
    pub fn table(&self, entity: &str) -> impl Iterator<Item = (&str, &Stored)> {
        self.tables
            .get(entity)
            .into_iter()
            .flatten()
            .map(|(key, stored)| (&**key, stored))
    }

    /// Number of mutations applied so far: changes whenever any entity does.
    pub fn version(&self) -> u64 {
        self.last_seq
    }

    /// Records that `entity[key]` was deleted by mutation `self.last_seq`.
    fn bury(&mut self, entity: &str, key: &str) {
        let seq = self.last_seq;
        self.tombstones
            .entry(entity.to_owned())
            .or_default()
            .insert(seq, key.to_owned());
        self.tombstone_of
            .insert((entity.to_owned(), key.to_owned()), seq);
        if self.tombstone_of.len() > MAX_TOMBSTONES {
            // Forget the oldest: cursors before it get a full snapshot.
            let oldest = self
                .tombstones
                .iter()
                .filter_map(|(entity, tombs)| {
                    tombs.first_key_value().map(|(s, _)| (*s, entity.clone()))
                })
                .min();
            if let Some((seq, entity)) = oldest {
                if let Some(key) = self
                    .tombstones
                    .get_mut(&entity)
                    .and_then(|t| t.remove(&seq))
                {
                    self.tombstone_of.remove(&(entity, key));
                }
                self.tombstone_horizon = self.tombstone_horizon.max(seq);
            }
        }
    }

    /// Keys of `entity` deleted after `_seq` `after` (and not re-created).
    pub fn deleted_after(&self, entity: &str, after: u64) -> impl Iterator<Item = &String> {
        self.tombstones
            .get(entity)
            .into_iter()
            .flat_map(move |tombs| tombs.range(after + 1..).map(|(_, key)| key))
    }

    /// Whether a client's cursor is recent enough to be resumed from: every
    /// delete after it is still known.
    pub fn can_resume_from(&self, after: u64) -> bool {
        after >= self.tombstone_horizon
    }

    /// Moves the `_seq` counter forward to `seq` (never back): the next
    /// mutation gets `seq + 1`.
    pub fn advance_to(&mut self, seq: u64) {
        if self.last_seq == 0 {
            // A fresh store starting from a later `_seq` (the clock, in
            // memory) knows no deletes before it.
            self.tombstone_horizon = self.tombstone_horizon.max(seq);
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// Every entity, for a checkpoint (`Arc` clones: the values are shared).
    pub fn entities(&self) -> Vec<(String, String, Stored)> {
        rows(&self.tables)
    }

    /// Replaces the contents with a checkpoint's.
    pub fn restore(
        &mut self,
        entities: Vec<(String, String, Stored)>,
        hidden: Vec<(String, String, Arc<Hidden>)>,
        last_seq: u64,
    ) {
        self.tables = FastMap::default();
        self.hidden = FastMap::default();
        for (entity, key, state) in hidden {
            self.hidden.entry(entity).or_default().insert(key, state);
        }
        // A checkpoint keeps no tombstones: deletes before it are unknown.
        self.tombstones = FastMap::default();
        self.tombstone_of = FastMap::default();
        self.tombstone_horizon = last_seq;
        for (entity, key, value) in entities {
            let table = self.tables.entry(entity).or_default();
            table.insert(key.into_boxed_str(), value);
        }
        self.last_seq = last_seq;
    }

    /// The `_seq` of the last applied mutation.
    pub fn last_seq(&self) -> Seq {
        Seq(self.last_seq)
    }

    /// Applies a validated mutation (patch data is an object), stamping
    /// `_seq`. A delete of a missing entity still consumes a sequence number
    /// and reports `existed: false, new: None`.
    pub fn apply(&mut self, mutation: Mutation) -> Change {
        self.last_seq += 1;
        let seq = Seq(self.last_seq);
        let Mutation { entity, key, kind } = mutation;
        let (data, append, caps, aggregates, replace) = match kind {
            MutationKind::Patch {
                data,
                append,
                caps,
                aggregates,
            } => (data, append, caps, aggregates, None),
            MutationKind::Replace { data, hidden } => (
                data,
                Vec::new(),
                BTreeMap::new(),
                BTreeMap::new(),
                Some(hidden),
            ),
            MutationKind::Delete => {
                let existed = self
                    .tables
                    .get_mut(&entity)
                    .is_some_and(|table| table.remove(key.as_str()).is_some());
                if let Some(hidden) = self.hidden.get_mut(&entity) {
                    hidden.remove(&key);
                }
                if existed {
                    self.bury(&entity, &key);
                }
                return Change {
                    entity,
                    key,
                    existed,
                    new: None,
                    patch: None,
                    append: Vec::new(),
                    trimmed: Vec::new(),
                    seq,
                    new_text: None,
                };
            }
        };
        let mut data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        // Lookups before inserts: the common patch of a live entity copies
        // neither the type name nor the key.
        if !self.tables.contains_key(&entity) {
            self.tables.insert(entity.clone(), FastMap::default());
        }
        let table = self.tables.get_mut(&entity).expect("inserted above");
        let existed = table.contains_key(key.as_str());
        // Only a key that does not exist can have a tombstone: the common
        // patch of a live entity skips the lookup (and its key copies).
        let returning = (!existed && !self.tombstone_of.is_empty())
            .then(|| self.tombstone_of.remove(&(entity.clone(), key.clone())))
            .flatten();
        if let Some(seq) = returning {
            if let Some(tombs) = self.tombstones.get_mut(&entity) {
                tombs.remove(&seq);
            }
        }
        data.insert(Seq::FIELD.into(), Value::String(seq.text()));
        if !existed && replace.is_none() && caps.is_empty() && aggregates.is_empty() {
            // A new entity from a plain patch is the patch itself (merging
            // it into nothing copies every field, appended arrays and nulls
            // included): sent as it is, and stored as its text.
            let value = Arc::new(Value::Object(data));
            let stored = Stored::compact(value.clone());
            let new_text = match &stored {
                Stored::Text(text) => Some(text.clone()),
                Stored::Tree(_) => None,
            };
            table.insert(key.as_str().into(), stored);
            return Change {
                entity,
                key,
                existed,
                new: Some(value.clone()),
                patch: Some(value),
                append,
                trimmed: Vec::new(),
                seq,
                new_text,
            };
        }
        if !existed {
            let empty = Stored::Tree(Arc::new(Value::Object(Map::new())));
            table.insert(key.as_str().into(), empty);
        }
        let stored = table.get_mut(key.as_str()).expect("inserted above");
        // Written again: a tree from now on, patched in place.
        if let Stored::Text(_) = stored {
            *stored = Stored::Tree(stored.tree());
        }
        let Stored::Tree(slot) = stored else {
            unreachable!("made a tree above")
        };
        let applied = if let Some(rebuilt) = replace {
            *Arc::make_mut(slot) = Value::Object(data.clone());
            let states = self.hidden.entry(entity.clone()).or_default();
            if rebuilt.is_empty() {
                states.remove(&key);
            } else {
                states.insert(key.clone(), Arc::new(rebuilt));
            }
            Applied::default()
        } else {
            let uses_hidden = aggregates.values().any(|a| *a == Aggregate::UniqueCount);
            let applied = if uses_hidden {
                let hidden = self
                    .hidden
                    .entry(entity.clone())
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                apply_patch(
                    Arc::make_mut(slot),
                    &data,
                    &append,
                    &caps,
                    &aggregates,
                    Arc::make_mut(hidden),
                )
            } else {
                // Plain patches (and aggregates without hidden state) need
                // no side-table lookup: an empty `Hidden` does not allocate.
                apply_patch(
                    Arc::make_mut(slot),
                    &data,
                    &append,
                    &caps,
                    &aggregates,
                    &mut Hidden::default(),
                )
            };
            if !aggregates.is_empty() {
                // Clients get results, not operands; unchanged fields are
                // left out of the frame.
                for path in aggregates.keys() {
                    if applied.unchanged.contains(path) {
                        remove_at(&mut data, path);
                    } else if let Some(result) = slot.as_object().and_then(|e| value_at(e, path)) {
                        set_in(&mut data, path, result.clone());
                    }
                }
            }
            applied
        };
        let new = Some(slot.clone());
        Change {
            entity,
            key,
            existed,
            new,
            patch: Some(Arc::new(Value::Object(data))),
            append,
            trimmed: applied.trimmed,
            seq,
            new_text: None,
        }
    }
}

/// A table of tables as (type, key, value) rows (`Arc` clones).
fn rows<K: AsRef<str>, T: Clone>(
    tables: &FastMap<String, FastMap<K, T>>,
) -> Vec<(String, String, T)> {
    tables
        .iter()
        .flat_map(|(entity, table)| {
            table
                .iter()
                .map(move |(key, value)| (entity.clone(), key.as_ref().to_owned(), value.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snapshots_keep_their_values_after_later_patches() {
        let mut store = Store::new();
        store.apply(Mutation::patch("T", "k", json!({"v": 1})));
        let captured = store.get("T", "k").unwrap().clone();
        let change = store.apply(Mutation::patch("T", "k", json!({"v": 2})));
        assert_eq!(captured.tree()["v"], 1);
        assert_eq!(change.new.unwrap()["v"], 2);
        assert_eq!(change.patch.unwrap()["_seq"], Seq(2).text());
    }

    #[test]
    fn a_new_entity_is_its_patch_and_later_patches_leave_that_patch_alone() {
        let mut store = Store::new();
        let created = store.apply(Mutation::patch(
            "T",
            "k",
            json!({"v": 1, "gone": null, "nested": {"a": [1]}}),
        ));
        let expected = json!({"v": 1, "gone": null, "nested": {"a": [1]}, "_seq": Seq(1).text()});
        // Stored as its text, sent as the patch's own tree.
        assert!(matches!(store.get("T", "k"), Some(Stored::Text(_))));
        assert_eq!(*store.tree("T", "k").unwrap(), expected);
        assert_eq!(created.patch.as_deref(), Some(&expected));
        assert!(!created.existed);
        // The change still holds the patch when the entity moves on.
        let updated = store.apply(Mutation::patch(
            "T",
            "k",
            json!({"v": 2, "nested": {"b": 3}}),
        ));
        assert_eq!(created.patch.as_deref(), Some(&expected));
        assert_eq!(created.new.as_deref(), Some(&expected));
        assert_eq!(updated.new.unwrap()["nested"], json!({"a": [1], "b": 3}));
        // Written again: a tree, patched in place from now on.
        assert!(matches!(store.get("T", "k"), Some(Stored::Tree(_))));
        assert_eq!(store.tree("T", "k").unwrap()["v"], 2);
        // With an aggregate the entity is computed, not copied.
        store.apply(Mutation::patch("T", "n", json!({})).aggregate(
            "hits",
            Aggregate::Add,
            Some(json!(5)),
        ));
        let counted = store.apply(Mutation::patch("T", "n", json!({})).aggregate(
            "hits",
            Aggregate::Add,
            Some(json!(2)),
        ));
        assert_eq!(counted.new.unwrap()["hits"], 7);
    }

    #[test]
    fn a_deleted_key_is_a_tombstone_until_it_returns() {
        let mut store = Store::new();
        store.apply(Mutation::patch("T", "a", json!({"v": 1})));
        store.apply(Mutation::patch("T", "b", json!({"v": 1})));
        store.apply(Mutation::delete("T", "a"));
        store.apply(Mutation::delete("T", "b"));
        assert_eq!(store.deleted_after("T", 0).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(store.deleted_after("T", 3).collect::<Vec<_>>(), ["b"]);
        store.apply(Mutation::patch("T", "a", json!({"v": 2})));
        assert_eq!(store.deleted_after("T", 0).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_trimmed_capped_array_is_sent_whole() {
        let mut store = Store::new();
        let push = |n: u64| {
            Mutation::patch("T", "k", json!({"a": {"recent": [n]}})).append_capped("a.recent", 3)
        };
        for n in 1..=3 {
            let (patch, append) = store.apply(push(n)).wire_patch();
            assert_eq!(append, vec!["a.recent".to_owned()], "no trim: append");
            assert_eq!(patch.unwrap()["a"]["recent"], json!([n]));
        }
        let (patch, append) = store.apply(push(4)).wire_patch();
        assert!(append.is_empty(), "trimmed: replace");
        assert_eq!(patch.unwrap()["a"]["recent"], json!([2, 3, 4]));
        assert_eq!(
            store.tree("T", "k").unwrap()["a"]["recent"],
            json!([2, 3, 4])
        );
    }
}
