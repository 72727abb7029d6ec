//! Which filtered sub-views a change can concern, found without asking
//! each of them.
//!
//! Why: subscriptions with distinct `filters` (one per token, per user...)
//! each have a filtered sub-view, and asking every sub-view of the changed
//! entity type about every change costs a lookup and a filter match per
//! sub-view per event. A sub-view does something with a change only if the
//! entity matches its filters now or its index held the entity before
//! (`View::apply` returns early otherwise). So the sub-views to ask are:
//!
//! - those whose first string filter entry (`Filters::index_entry`) equals
//!   the string form of the new entity's field at that path (the only ones
//!   the entity can match now);
//! - those holding the entity's key (`holders`, kept in step with their
//!   indexes: after every change applied to a sub-view, and when a sub-view
//!   is built, rebuilt or dropped);
//! - those without a string entry (numbers and booleans only), always.
//!
//! Every other sub-view would have returned early: skipping it changes
//! nothing.

use std::collections::HashMap;

use serde_json::Value;

use super::{FilterKey, View};
use crate::filters::{field_at, string_form};

/// See the module doc.
#[derive(Default)]
pub(super) struct FilterIndex {
    by_entity: HashMap<String, EntityFilters>,
    /// Entity type -> entity key -> the sub-views whose index holds it.
    holders: HashMap<String, HashMap<String, Vec<FilterKey>>>,
}

/// The filtered sub-views of one entity type.
#[derive(Default)]
struct EntityFilters {
    /// Path of the first string entry -> its text -> sub-views.
    by_text: HashMap<Vec<String>, HashMap<String, Vec<FilterKey>>>,
    /// Sub-views without a string entry.
    unindexed: Vec<FilterKey>,
}

impl FilterIndex {
    /// Registers a filtered sub-view just built (or rebuilt) from the store.
    pub(super) fn add(&mut self, key: &FilterKey, view: &View) {
        let entity = self.by_entity.entry(view.source.clone()).or_default();
        match view.filters.as_ref().and_then(|f| f.index_entry()) {
            Some((path, text)) => entity
                .by_text
                .entry(path.to_vec())
                .or_default()
                .entry(text.to_owned())
                .or_default()
                .push(key.clone()),
            None => entity.unindexed.push(key.clone()),
        }
        let holders = self.holders.entry(view.source.clone()).or_default();
        for member in view.index.keys() {
            holders
                .entry(member.to_string())
                .or_default()
                .push(key.clone());
        }
    }

    /// Forgets a filtered sub-view (before it is dropped or rebuilt).
    pub(super) fn remove(&mut self, key: &FilterKey, view: &View) {
        if let Some(entity) = self.by_entity.get_mut(&view.source) {
            match view.filters.as_ref().and_then(|f| f.index_entry()) {
                Some((path, text)) => {
                    if let Some(texts) = entity.by_text.get_mut(path) {
                        if let Some(keys) = texts.get_mut(text) {
                            keys.retain(|k| k != key);
                            if keys.is_empty() {
                                texts.remove(text);
                            }
                        }
                        if texts.is_empty() {
                            entity.by_text.remove(path);
                        }
                    }
                }
                None => entity.unindexed.retain(|k| k != key),
            }
        }
        if let Some(holders) = self.holders.get_mut(&view.source) {
            for member in view.index.keys() {
                if let Some(keys) = holders.get_mut(member) {
                    keys.retain(|k| k != key);
                    if keys.is_empty() {
                        holders.remove(member);
                    }
                }
            }
        }
    }

    /// The sub-views a change of `entity_key` (now `new`) can concern, each
    /// once.
    pub(super) fn candidates(
        &self,
        entity: &str,
        entity_key: &str,
        new: Option<&Value>,
    ) -> Vec<FilterKey> {
        let mut out: Vec<FilterKey> = Vec::new();
        if let Some(filters) = self.by_entity.get(entity) {
            out.extend(filters.unindexed.iter().cloned());
            if let Some(new) = new {
                for (path, texts) in &filters.by_text {
                    let form = field_at(new, path).and_then(string_form);
                    if let Some(keys) = form.and_then(|form| texts.get(form.as_ref())) {
                        out.extend(keys.iter().cloned());
                    }
                }
            }
        }
        if let Some(held) = self.holders.get(entity).and_then(|h| h.get(entity_key)) {
            for key in held {
                if !out.contains(key) {
                    out.push(key.clone());
                }
            }
        }
        out
    }

    /// Records whether sub-view `key` holds `entity_key` after a change.
    pub(super) fn held(&mut self, entity: &str, entity_key: &str, key: &FilterKey, holds: bool) {
        let holders = match self.holders.get_mut(entity) {
            Some(holders) => holders,
            None if holds => self.holders.entry(entity.to_owned()).or_default(),
            None => return,
        };
        match holders.get_mut(entity_key) {
            Some(keys) if holds && !keys.contains(key) => keys.push(key.clone()),
            Some(_) if holds => {}
            Some(keys) => {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    holders.remove(entity_key);
                }
            }
            None if holds => {
                holders.insert(entity_key.to_owned(), vec![key.clone()]);
            }
            None => {}
        }
    }
}
