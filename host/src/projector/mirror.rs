//! A projector process's bounded mirror of its plugin's own entities.
//!
//! A projector reads state (does this token exist, what is this game's
//! score), and asking the host for every read costs a round trip between
//! two processes. The child therefore keeps the entities it reads and
//! writes, but only up to a bound (`--projector-mirror-entities`): a
//! mirror of every entity doubled the memory of a host holding a million
//! of them (906 bytes per entity in the child, beside the host's own copy).
//! What it holds is exact, and what it lacks the host has:
//!
//! - every key of the plugin's entities is *known* by its [`key_hash`] (8
//!   bytes each, loaded from the host and added to by every write), so a
//!   read of a key that never existed needs no round trip;
//! - an entry written by a request the host has not applied yet stays until
//!   it has ([`Mirror::trim`] keeps it): the host's store lags behind the
//!   child by the requests being logged, so for those keys only the mirror
//!   is right. A delete leaves an absent entry for the same reason;
//! - any other key may be dropped, and a read of it asks the host, whose
//!   store is exact for it while the plugin projects (the engine applies
//!   none of the plugin's requests then). So does a mutation of it, in one
//!   question per request before the answer ([`Mirror::unknown_bases`]),
//!   since folding a patch needs the entity it patches.
//!
//! A request in which the plugin read nothing is forgotten rather than
//! folded in ([`Mirror::forget`]): its keys stop being held, and its text
//! is kept until the host has applied it, to be folded in before a read
//! while the host lags ([`Mirror::take_forgotten`]).
//!
//! Eviction is by two generations rather than a strict least-recently-used
//! list: writes land in the young one, and when it holds half the bound the
//! old one is dropped (but for entries still unapplied) and the young one
//! takes its place. That costs no per-entry list links and no work per
//! read, and what is written again within a generation stays.

use std::sync::Arc;

use serde_json::Value;
use vista_plugin_api::{apply_mutation, Hidden, Mutation, MutationKind};

use super::wire::{key_hash, Row};
use crate::entity::Stored;
use crate::vocab::{FastMap, FastSet};

/// The bound, in entries, when the host gives none.
pub const DEFAULT_ENTRIES: usize = 65_536;

/// What the mirror holds for one key. An entity created by a request is
/// held as its text until it is written again, as the store holds it (see
/// [`crate::entity`]): most are never read.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entity (`None`: absent, deleted by a request or so in the host).
    value: Option<Stored>,
    /// Its hidden aggregate state, if it has any.
    hidden: Option<Arc<Hidden>>,
    /// The fold that last wrote it ([`Mirror`]'s count of applied folds
    /// plus one when it was written; 0: read from the host).
    written: u64,
}

/// An entity and its hidden state as the host gave them (`None`: absent).
pub type Fetched = Option<(Arc<Value>, Arc<Hidden>)>;

impl Entry {
    /// The entity, if it exists, and its hidden state.
    pub fn get(&self) -> Fetched {
        let value = self.value.as_ref()?.tree();
        Some((value, self.hidden.clone().unwrap_or_default()))
    }
}

/// What the mirror says of a key.
pub enum Lookup<'a> {
    /// Held: exact.
    Held(&'a Entry),
    /// Never existed (no write of it ever reached the mirror's keys).
    Absent,
    /// Possibly exists: only the host can say.
    AskHost,
}

/// One generation of entries, by entity type then key.
#[derive(Default)]
struct Generation {
    by_type: FastMap<String, FastMap<String, Entry>>,
    len: usize,
}

impl Generation {
    fn get(&self, entity: &str, key: &str) -> Option<&Entry> {
        self.by_type.get(entity)?.get(key)
    }

    fn get_mut(&mut self, entity: &str, key: &str) -> Option<&mut Entry> {
        self.by_type.get_mut(entity)?.get_mut(key)
    }

    fn remove(&mut self, entity: &str, key: &str) -> Option<Entry> {
        let removed = self.by_type.get_mut(entity)?.remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    fn insert(&mut self, entity: &str, key: String, entry: Entry) {
        if !self.by_type.contains_key(entity) {
            self.by_type.insert(entity.to_owned(), FastMap::default());
        }
        let table = self.by_type.get_mut(entity).expect("inserted above");
        if table.insert(key, entry).is_none() {
            self.len += 1;
        }
    }
}

/// What a request's mutations replaced in the mirror: each key it touched
/// with its entry before (`None`: not held), to put back if it is refused.
pub type Undo = Vec<(String, String, Option<Entry>)>;

/// The mirror (see the module doc).
pub struct Mirror {
    young: Generation,
    old: Generation,
    /// Hashes of every key of the plugin's entities that may exist.
    known: FastSet<u64>,
    bound: usize,
    /// Requests folded in and settled as applied.
    folds: u64,
    /// Of those, how many (the latest) the host had not applied yet when it
    /// sent the latest job.
    unapplied: usize,
    /// The newest `written` stamp an entry was given.
    newest_written: u64,
    /// Requests forgotten rather than folded in ([`Mirror::forget`]) that
    /// the host may not have applied yet: each one's stamp (as an entry's
    /// `written`) and its mutations, one JSON array per event.
    forgotten: std::collections::VecDeque<(u64, Vec<String>)>,
}

impl Mirror {
    /// An empty mirror holding at most about `bound` entries.
    pub fn new(bound: usize) -> Self {
        Self {
            young: Generation::default(),
            old: Generation::default(),
            known: FastSet::default(),
            bound: bound.max(2),
            folds: 0,
            unapplied: 0,
            newest_written: 0,
            forgotten: Default::default(),
        }
    }

    /// Starts over from the host's keys (`hashes`: their [`key_hash`]es,
    /// 8 little-endian bytes each), the entries `pending` touches as the
    /// host has them, and `pending` itself (logged, not applied yet).
    pub fn load(&mut self, hashes: &[u8], rows: Vec<Row>, pending: &[Mutation]) {
        *self = Self::new(self.bound);
        self.known = hashes
            .chunks_exact(8)
            .map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")))
            .collect();
        for row in rows {
            let hidden = Arc::new(row.hidden.unwrap_or_default());
            self.fill(&row.entity, row.key, Some((row.value.tree(), hidden)));
        }
        // A pending key without a row is one the host does not have.
        for mutation in pending {
            if matches!(
                self.lookup(&mutation.entity, &mutation.key),
                Lookup::AskHost
            ) {
                self.fill(&mutation.entity, mutation.key.clone(), None);
            }
        }
        for mutation in pending {
            self.apply(mutation);
        }
        // Unapplied until the host says how many of its requests are.
        self.unapplied = usize::MAX;
    }

    /// What the mirror knows of `entity[key]`.
    pub fn lookup(&self, entity: &str, key: &str) -> Lookup<'_> {
        if let Some(entry) = self
            .young
            .get(entity, key)
            .or_else(|| self.old.get(entity, key))
        {
            return Lookup::Held(entry);
        }
        if self.known.contains(&key_hash(entity, key)) {
            Lookup::AskHost
        } else {
            Lookup::Absent
        }
    }

    /// Whether only the host can say what `entity[key]` is
    /// ([`Lookup::AskHost`]). The key's hash first: a request mostly writes
    /// keys the mirror holds or new ones, and a new one costs one lookup.
    fn only_host_has(&self, entity: &str, key: &str) -> bool {
        self.known.contains(&key_hash(entity, key))
            && self.young.get(entity, key).is_none()
            && self.old.get(entity, key).is_none()
    }

    /// Holds what the host said of `entity[key]` (its store is exact for a
    /// key the mirror does not hold).
    pub fn fill(&mut self, entity: &str, key: String, found: Fetched) {
        let entry = match found {
            Some((value, hidden)) => {
                self.known.insert(key_hash(entity, &key));
                Entry {
                    value: Some(Stored::Tree(value)),
                    hidden: (!hidden.is_empty()).then_some(hidden),
                    written: 0,
                }
            }
            None => Entry {
                value: None,
                hidden: None,
                written: 0,
            },
        };
        self.young.insert(entity, key, entry);
    }

    /// The keys `mutations` write that the mirror would have to ask the
    /// host for before folding them in (each once).
    pub fn unknown_bases<'m>(
        &self,
        mutations: impl Iterator<Item = &'m Mutation>,
    ) -> Vec<(String, String)> {
        let mut seen: FastSet<(&str, &str)> = FastSet::default();
        let mut unknown = Vec::new();
        for mutation in mutations {
            let needs_base = !matches!(mutation.kind, MutationKind::Delete);
            if needs_base
                && self.only_host_has(&mutation.entity, &mutation.key)
                && seen.insert((&mutation.entity, &mutation.key))
            {
                unknown.push((mutation.entity.clone(), mutation.key.clone()));
            }
        }
        unknown
    }

    /// The host's fate for the request folded last: applied, or refused
    /// (then the caller has put its undo back, or the host starts afresh).
    /// `unapplied`: how many of this plugin's requests the host had logged
    /// and not applied when it sent the next one.
    pub fn settle(&mut self, applied: Option<bool>, unapplied: usize) {
        if applied == Some(true) {
            self.folds += 1;
        }
        self.unapplied = unapplied;
        // What the host has applied it has exactly: only the rest of the
        // forgotten requests may have to be folded in.
        let applied_through = self.applied_through();
        while self
            .forgotten
            .front()
            .is_some_and(|(stamp, _)| *stamp <= applied_through)
        {
            self.forgotten.pop_front();
        }
    }

    /// Folds are numbered in the order the host applies them: those up to
    /// this one it has applied.
    fn applied_through(&self) -> u64 {
        self.folds.saturating_sub(self.unapplied as u64)
    }

    /// Whether an entry may be held as written by a request the host has not
    /// applied yet (if not, [`Mirror::holds_unapplied`] is false whatever
    /// it is asked).
    pub fn may_hold_unapplied(&self) -> bool {
        self.newest_written > self.applied_through()
    }

    /// Whether any of `targets` (entity type, key) is held as written by a
    /// request the host may not have applied yet: such a request cannot be
    /// forgotten (a read would then ask a host that lags).
    pub fn holds_unapplied<'t>(
        &self,
        mut targets: impl Iterator<Item = (&'t str, &'t str)>,
    ) -> bool {
        let applied_through = self.applied_through();
        self.newest_written > applied_through
            && targets.any(|(entity, key)| {
                self.young
                    .get(entity, key)
                    .or_else(|| self.old.get(entity, key))
                    .is_some_and(|entry| entry.written > applied_through)
            })
    }

    /// Forgets what a request wrote instead of folding it in: a projector
    /// that does not read state never needs it, and folding cost parsing
    /// every mutation. The keys written stop being held (but stay known),
    /// so a later read asks the host; until the host has applied the
    /// request, its texts are kept ([`Mirror::keep_forgotten`]), and [`Mirror::take_forgotten`] gives
    /// them to be folded in before such a read. The caller has checked
    /// [`Mirror::holds_unapplied`] for `targets`; a request that may be
    /// refused (one with an undo) is folded in instead.
    pub fn forget<'t>(&mut self, targets: impl Iterator<Item = (&'t str, &'t str)>) {
        for (entity, key) in targets {
            self.young.remove(entity, key);
            self.old.remove(entity, key);
            self.known.insert(key_hash(entity, key));
        }
    }

    /// Whether the mirror holds no entry: then forgetting a request is only
    /// knowing the keys it wrote ([`Mirror::know`]).
    pub fn holds_nothing(&self) -> bool {
        self.young.len + self.old.len == 0
    }

    /// Knows keys by their [`key_hash`] (they may exist: a read asks the
    /// host).
    pub fn know(&mut self, hashes: impl Iterator<Item = u64>) {
        self.known.extend(hashes);
    }

    /// Keeps the texts of the request just forgotten ([`Mirror::forget`])
    /// until the host has applied it.
    pub fn keep_forgotten(&mut self, texts: Vec<String>) {
        self.forgotten.push_back((self.folds + 1, texts));
    }

    /// The forgotten requests the host has not applied yet, oldest first,
    /// to be folded in (by the caller, with the bases the host has) before
    /// the mirror answers a read or folds in a request.
    pub fn take_forgotten(&mut self) -> Vec<String> {
        self.forgotten
            .drain(..)
            .flat_map(|(_, texts)| texts)
            .collect()
    }

    /// Whether [`Mirror::take_forgotten`] has anything.
    pub fn has_forgotten(&self) -> bool {
        !self.forgotten.is_empty()
    }

    /// Folds in a request's mutations, returning how to undo them.
    pub fn apply_all<'m>(&mut self, mutations: impl Iterator<Item = &'m Mutation>) -> Undo {
        let mut undo: Undo = Vec::new();
        let mut saved: FastSet<(&str, &str)> = FastSet::default();
        for mutation in mutations {
            let (entity, key) = (mutation.entity.as_str(), mutation.key.as_str());
            if saved.insert((entity, key)) {
                let before = self
                    .young
                    .get(entity, key)
                    .or_else(|| self.old.get(entity, key))
                    .cloned();
                undo.push((entity.to_owned(), key.to_owned(), before));
            }
            self.apply(mutation);
        }
        undo
    }

    /// Puts back what [`Mirror::apply_all`] replaced.
    pub fn undo(&mut self, undo: Undo) {
        for (entity, key, before) in undo {
            self.young.remove(&entity, &key);
            self.old.remove(&entity, &key);
            if let Some(entry) = before {
                self.young.insert(&entity, key, entry);
            }
        }
    }

    /// Folds in one mutation, as the store applies it. The key must be held
    /// or absent ([`Mirror::unknown_bases`] were asked for), but for a
    /// delete.
    pub fn apply(&mut self, mutation: &Mutation) {
        let written = self.folds + 1;
        let (entity, key) = (mutation.entity.as_str(), mutation.key.as_str());
        if self.young.get(entity, key).is_none() {
            let entry = self.old.remove(entity, key).unwrap_or(Entry {
                value: None,
                hidden: None,
                written,
            });
            self.young.insert(entity, key.to_owned(), entry);
        }
        let entry = self.young.get_mut(entity, key).expect("inserted above");
        entry.written = written;
        self.newest_written = written;
        // Only aggregates, deletes and replacements touch the hidden state.
        let touches_hidden = !matches!(
            &mutation.kind,
            MutationKind::Patch { aggregates, .. } if aggregates.is_empty()
        );
        // In place, unless an undo or a reader shares the old value: then a
        // copy. Text is parsed: written again, the entity becomes a tree.
        let mut current = match &mut entry.value {
            Some(Stored::Tree(value)) => Some(std::mem::take(Arc::make_mut(value))),
            Some(text) => Some(text.to_value()),
            None => None,
        };
        let mut untouched = Hidden::default();
        let hidden = if touches_hidden {
            Arc::make_mut(entry.hidden.get_or_insert_with(Arc::default))
        } else {
            &mut untouched
        };
        apply_mutation(&mut current, hidden, mutation);
        if entry.hidden.as_ref().is_some_and(|h| h.is_empty()) {
            entry.hidden = None;
        }
        entry.value = match (entry.value.take(), current) {
            (Some(Stored::Tree(mut held)), Some(current)) => {
                *Arc::make_mut(&mut held) = current;
                Some(Stored::Tree(held))
            }
            (Some(Stored::Text(_)), Some(current)) => Some(Stored::Tree(Arc::new(current))),
            (None, Some(current)) => Some(Stored::compact(Arc::new(current))),
            (_, None) => None,
        };
        if entry.value.is_some() {
            self.known.insert(key_hash(entity, key));
        }
    }

    /// Keeps the mirror within its bound: once the young generation holds
    /// half of it, the old one goes, but for entries the host has not
    /// applied yet, which move to the young one.
    pub fn trim(&mut self) {
        if self.young.len < self.bound / 2 {
            return;
        }
        let applied_through = self.applied_through();
        let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        for (entity, table) in dropped.by_type {
            for (key, entry) in table {
                if entry.written > applied_through {
                    self.young.insert(&entity, key, entry);
                }
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len + self.old.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn held(mirror: &Mirror, entity: &str, key: &str) -> Option<Value> {
        match mirror.lookup(entity, key) {
            Lookup::Held(entry) => entry.get().map(|(value, _)| Value::clone(&value)),
            Lookup::Absent => None,
            Lookup::AskHost => panic!("{entity}[{key}] is not held"),
        }
    }

    #[test]
    fn a_refused_request_is_taken_back_out_of_the_mirror() {
        let mut mirror = Mirror::new(100);
        mirror.apply(&Mutation::patch("T", "a", json!({"n": 1})));
        let request = [
            Mutation::patch("T", "a", json!({"n": 2})),
            Mutation::patch("T", "b", json!({"n": 1})),
            Mutation::patch("T", "a", json!({"m": 4})),
        ];
        let undo = mirror.apply_all(request.iter());
        assert_eq!(held(&mirror, "T", "a"), Some(json!({"n": 2, "m": 4})));
        mirror.undo(undo);
        assert_eq!(held(&mirror, "T", "a"), Some(json!({"n": 1})));
        // Its key stays known (a read asks the host, which never had it).
        assert!(matches!(mirror.lookup("T", "b"), Lookup::AskHost));
    }

    #[test]
    fn the_mirror_folds_mutations_as_the_store_does() {
        let mut mirror = Mirror::new(100);
        mirror.apply(&Mutation::patch("T", "a", json!({"l": [1], "n": 1})).append("l"));
        mirror.apply(&Mutation::patch("T", "a", json!({"l": [2]})).append("l"));
        assert_eq!(held(&mirror, "T", "a"), Some(json!({"l": [1, 2], "n": 1})));
        mirror.apply(&Mutation::delete("T", "a"));
        // A delete is held as absent: the host may still have the entity.
        assert!(matches!(
            mirror.lookup("T", "a"),
            Lookup::Held(Entry { value: None, .. })
        ));
    }

    #[test]
    fn keys_never_written_are_absent_and_loaded_keys_ask_the_host() {
        let mut mirror = Mirror::new(100);
        let hashes: Vec<u8> = key_hash("T", "old").to_le_bytes().to_vec();
        mirror.load(&hashes, Vec::new(), &[]);
        assert!(matches!(mirror.lookup("T", "old"), Lookup::AskHost));
        assert!(matches!(mirror.lookup("T", "new"), Lookup::Absent));
        let writes = [
            Mutation::patch("T", "old", json!({"n": 1})),
            Mutation::patch("T", "new", json!({"n": 1})),
            Mutation::delete("T", "old"),
            Mutation::patch("T", "old", json!({"n": 2})),
        ];
        assert_eq!(
            mirror.unknown_bases(writes.iter()),
            vec![("T".to_owned(), "old".to_owned())]
        );
    }

    #[test]
    fn a_forgotten_request_is_kept_until_the_host_has_applied_it() {
        let mut mirror = Mirror::new(100);
        mirror.settle(None, 0);
        mirror.apply(&Mutation::patch("T", "a", json!({"n": 1})));
        mirror.settle(Some(true), 0);
        assert!(!mirror.may_hold_unapplied());
        // Forgotten: no longer held, still known (a read asks the host).
        mirror.forget([("T", "a"), ("T", "new")].into_iter());
        mirror.keep_forgotten(vec![
            r#"[{"entity":"T","key":"a","op":"patch","data":{"n":2}}]"#.into(),
        ]);
        assert!(matches!(mirror.lookup("T", "a"), Lookup::AskHost));
        assert!(matches!(mirror.lookup("T", "new"), Lookup::AskHost));
        // Applied, but logged only: its text stays to be folded in.
        mirror.settle(Some(true), 1);
        assert!(mirror.has_forgotten());
        // Another request forgotten; then the host has applied both.
        mirror.keep_forgotten(vec!["[]".into()]);
        mirror.settle(Some(true), 1);
        assert_eq!(mirror.take_forgotten(), vec!["[]".to_owned()]);
        mirror.settle(Some(true), 0);
        assert!(!mirror.has_forgotten());
        // A mirror holding nothing only needs to know the keys written.
        let mut empty = Mirror::new(100);
        assert!(empty.holds_nothing());
        assert!(
            mirror.holds_nothing(),
            "forgetting `a` dropped the only entry"
        );
        empty.know([key_hash("T", "x")].into_iter());
        assert!(matches!(empty.lookup("T", "x"), Lookup::AskHost));
        assert!(matches!(empty.lookup("T", "y"), Lookup::Absent));
    }

    #[test]
    fn only_an_entry_the_host_has_not_applied_blocks_forgetting() {
        let mut mirror = Mirror::new(100);
        mirror.settle(None, 0);
        mirror.apply(&Mutation::patch("T", "a", json!({"n": 1})));
        // Settled, logged, not applied: only the mirror has `a`.
        mirror.settle(Some(true), 1);
        assert!(mirror.may_hold_unapplied());
        assert!(mirror.holds_unapplied([("T", "b"), ("T", "a")].into_iter()));
        assert!(!mirror.holds_unapplied([("T", "b")].into_iter()));
        mirror.settle(None, 0);
        assert!(!mirror.holds_unapplied([("T", "a")].into_iter()));
    }

    /// One request writing `keys` of `T`, folded in, then a trim.
    fn write_and_trim(mirror: &mut Mirror, keys: [&str; 2]) {
        let writes = keys.map(|key| Mutation::patch("T", key, json!({})));
        mirror.apply_all(writes.iter());
        mirror.trim();
    }

    #[test]
    fn trimming_drops_applied_entries_and_keeps_unapplied_ones() {
        let mut mirror = Mirror::new(4);
        mirror.settle(None, 0);
        // Request 1 writes a and b; the host has logged it, not applied it.
        write_and_trim(&mut mirror, ["a", "b"]);
        mirror.settle(Some(true), 1);
        // Request 2 writes c and d: request 1 is still unapplied.
        write_and_trim(&mut mirror, ["c", "d"]);
        mirror.trim();
        for key in ["a", "b", "c", "d"] {
            assert!(held(&mirror, "T", key).is_some(), "{key} was dropped");
        }
        // Both applied: the next trims may drop them all, and reads ask the
        // host. The request folded last is never dropped before it settles.
        mirror.settle(Some(true), 0);
        write_and_trim(&mut mirror, ["e", "f"]);
        assert!(held(&mirror, "T", "e").is_some());
        mirror.settle(Some(true), 0);
        write_and_trim(&mut mirror, ["g", "h"]);
        assert!(mirror.len() <= 4, "{} entries held", mirror.len());
        assert!(matches!(mirror.lookup("T", "a"), Lookup::AskHost));
    }
}
