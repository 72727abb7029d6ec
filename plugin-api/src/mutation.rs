//! Mutations a projector returns, and the merge rules that apply them.
//!
//! [`apply_patch`] is the single implementation of the rules, used by the
//! host's entity store and by [`MemoryState`] in plugin unit tests:
//! objects merge recursively, arrays and scalars are replaced, and arrays at
//! the mutation's append paths are concatenated instead. An append path may
//! carry a cap ([`Mutation::append_capped`]): after the append, the array
//! keeps only its last `cap` items, so an entity that collects, say, its
//! recent trades stays bounded however long it lives.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::StateSource;

/// One change to one entity.
///
/// Deserialized through [`WireMutation`] rather than derived: serde's
/// `flatten` of an internally tagged enum buffers every field into an
/// intermediate tree first, which doubled the host's cost of reading a
/// projector's output. The JSON shape is the same either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireMutation")]
pub struct Mutation {
    /// Entity type, e.g. `Token`. Must be owned by the plugin returning it.
    pub entity: String,
    /// Entity key, e.g. a mint address.
    pub key: String,
    /// What happens to the entity.
    #[serde(flatten)]
    pub kind: MutationKind,
}

/// A [`Mutation`] as it appears in JSON, flat.
#[derive(Deserialize)]
struct WireMutation {
    entity: String,
    key: String,
    op: WireOp,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    append: Vec<String>,
    #[serde(default)]
    caps: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireOp {
    Patch,
    Delete,
}

impl TryFrom<WireMutation> for Mutation {
    type Error = String;

    fn try_from(wire: WireMutation) -> Result<Self, String> {
        let kind = match wire.op {
            WireOp::Patch => MutationKind::Patch {
                data: wire.data.ok_or("a patch needs \"data\"")?,
                append: wire.append,
                caps: wire.caps,
            },
            WireOp::Delete => MutationKind::Delete,
        };
        Ok(Mutation {
            entity: wire.entity,
            key: wire.key,
            kind,
        })
    }
}

/// The kind of a [`Mutation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MutationKind {
    /// Deep-merge `data` (a JSON object) into the entity, creating it if
    /// needed; arrays at `append` paths are concatenated.
    Patch {
        /// The partial state; must be a JSON object.
        data: Value,
        /// Dot paths whose arrays are appended to rather than replaced.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        append: Vec<String>,
        /// Append paths whose arrays keep only their last N items.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        caps: BTreeMap<String, usize>,
    },
    /// Remove the entity.
    Delete,
}

impl Mutation {
    /// A patch of `entity[key]` with the JSON object `data`.
    pub fn patch(entity: impl Into<String>, key: impl Into<String>, data: Value) -> Self {
        Self {
            entity: entity.into(),
            key: key.into(),
            kind: MutationKind::Patch {
                data,
                append: Vec::new(),
                caps: BTreeMap::new(),
            },
        }
    }

    /// The deletion of `entity[key]`.
    pub fn delete(entity: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            entity: entity.into(),
            key: key.into(),
            kind: MutationKind::Delete,
        }
    }

    /// Marks a dot path of a patch as an append path: the array at that path
    /// in `data` is concatenated to the entity's array. No effect on deletes.
    pub fn append(mut self, path: impl Into<String>) -> Self {
        if let MutationKind::Patch { append, .. } = &mut self.kind {
            append.push(path.into());
        }
        self
    }

    /// Like [`Mutation::append`], and the array at `path` then keeps only
    /// its last `cap` items. Clients see the same array as the host: when
    /// the cap trims, the host sends the whole trimmed array instead of the
    /// appended items.
    pub fn append_capped(mut self, path: impl Into<String>, cap: usize) -> Self {
        if let MutationKind::Patch { append, caps, .. } = &mut self.kind {
            let path = path.into();
            append.push(path.clone());
            caps.insert(path, cap);
        }
        self
    }
}

/// Applies a patch by the rules of the module docs: [`merge_patch`], then
/// the caps. Returns the capped paths whose arrays were trimmed.
pub fn apply_patch(
    target: &mut Value,
    patch: &Map<String, Value>,
    append: &[String],
    caps: &BTreeMap<String, usize>,
) -> Vec<String> {
    merge_patch(target, patch, append);
    let mut trimmed = Vec::new();
    for (path, cap) in caps {
        if let Some(Value::Array(items)) = value_at_mut(target, path) {
            if items.len() > *cap {
                items.drain(..items.len() - cap);
                trimmed.push(path.clone());
            }
        }
    }
    trimmed
}

/// Applies one mutation to an entity (`None`: absent) by the rules of the
/// module docs. A patch whose data is not an object changes nothing (the
/// host refuses such a mutation before it gets here).
pub fn apply_mutation(entity: &mut Option<Value>, mutation: &Mutation) {
    match &mutation.kind {
        MutationKind::Patch {
            data: Value::Object(data),
            append,
            caps,
        } => {
            let value = entity.get_or_insert_with(|| Value::Object(Map::new()));
            apply_patch(value, data, append, caps);
        }
        MutationKind::Patch { .. } => {}
        MutationKind::Delete => *entity = None,
    }
}

/// The value at a dot path, if every step is an object field.
pub fn value_at_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.')
        .try_fold(value, |value, field| value.as_object_mut()?.get_mut(field))
}

/// Deep-merges `patch` into `target` (see the module docs).
///
/// `target` becomes an object if it was not one.
pub fn merge_patch(target: &mut Value, patch: &Map<String, Value>, append: &[String]) {
    merge_object(target, patch, append, "");
}

fn merge_object(target: &mut Value, patch: &Map<String, Value>, append: &[String], prefix: &str) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (field, value) in patch {
        let path = if prefix.is_empty() {
            field.clone()
        } else {
            format!("{prefix}.{field}")
        };
        match value {
            Value::Object(inner) => {
                let slot = target.entry(field.clone()).or_insert(Value::Null);
                merge_object(slot, inner, append, &path);
            }
            Value::Array(items) if append.contains(&path) => match target.get_mut(field) {
                Some(Value::Array(existing)) => existing.extend(items.iter().cloned()),
                _ => {
                    target.insert(field.clone(), value.clone());
                }
            },
            _ => {
                target.insert(field.clone(), value.clone());
            }
        }
    }
}

/// An in-memory entity store with the host's merge rules, for unit tests of
/// projectors: feed events through [`crate::Plugin::project`] and apply the
/// mutations here.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    entities: HashMap<(String, String), Value>,
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one mutation. A patch whose data is not an object is ignored
    /// here (the host refuses it with an error).
    pub fn apply(&mut self, mutation: &Mutation) {
        let id = (mutation.entity.clone(), mutation.key.clone());
        let mut entity = self.entities.remove(&id);
        apply_mutation(&mut entity, mutation);
        if let Some(entity) = entity {
            self.entities.insert(id, entity);
        }
    }

    /// Projects `events` of `stream` through plugin `P`, applying each
    /// event's mutations before the next event, as the host does.
    pub fn ingest<P: crate::Plugin>(
        &mut self,
        stream: &str,
        events: &[Value],
    ) -> Result<(), crate::ProjectError> {
        for event in events {
            let mutations = P::project(&crate::StateView::new(self), stream, event)?;
            mutations.iter().for_each(|m| self.apply(m));
        }
        Ok(())
    }
}

impl StateSource for MemoryState {
    fn get(&self, entity: &str, key: &str) -> Option<Value> {
        self.entities
            .get(&(entity.to_owned(), key.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn objects_merge_arrays_replace_append_paths_concatenate() {
        let mut entity = json!({"a": {"x": 1, "y": 2}, "tags": [1], "stats": {"hist": [1]}});
        merge_patch(
            &mut entity,
            &obj(json!({"a": {"y": 3}, "tags": [2], "stats": {"hist": [2, 3]}})),
            &["stats.hist".into()],
        );
        assert_eq!(
            entity,
            json!({"a": {"x": 1, "y": 3}, "tags": [2], "stats": {"hist": [1, 2, 3]}})
        );
    }

    #[test]
    fn append_path_on_missing_array_creates_it() {
        let mut entity = json!({});
        merge_patch(
            &mut entity,
            &obj(json!({"events": [1]})),
            &["events".into()],
        );
        assert_eq!(entity, json!({"events": [1]}));
    }

    #[test]
    fn capped_appends_keep_the_last_items() {
        let mut entity = json!({"recent": [1, 2, 3]});
        let m = Mutation::patch("T", "k", json!({"recent": [4, 5]})).append_capped("recent", 4);
        let MutationKind::Patch { data, append, caps } = &m.kind else {
            unreachable!()
        };
        let trimmed = apply_patch(&mut entity, data.as_object().unwrap(), append, caps);
        assert_eq!(entity, json!({"recent": [2, 3, 4, 5]}));
        assert_eq!(trimmed, vec!["recent".to_owned()]);
        let untouched = apply_patch(&mut entity, &obj(json!({"other": 1})), append, caps);
        assert!(untouched.is_empty());
        assert_eq!(
            serde_json::to_value(&m).unwrap()["caps"],
            json!({"recent": 4})
        );
    }

    #[test]
    fn mutation_json_shape_is_stable() {
        let m = Mutation::patch("Token", "m1", json!({"a": [1]})).append("a");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"entity": "Token", "key": "m1", "op": "patch", "data": {"a": [1]}, "append": ["a"]})
        );
        let d: Mutation =
            serde_json::from_value(json!({"entity": "T", "key": "k", "op": "delete"})).unwrap();
        assert_eq!(d, Mutation::delete("T", "k"));
    }
}
