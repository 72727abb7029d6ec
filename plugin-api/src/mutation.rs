//! Mutations a projector returns, and the merge rules that apply them.
//!
//! [`apply_mutation`] is the single implementation of the rules, used by the
//! host's entity store, by the host's per-request overlay and by
//! [`MemoryState`] in plugin unit tests, so all three agree:
//! objects merge recursively, arrays and scalars are replaced, and arrays at
//! the mutation's append paths are concatenated instead. An append path may
//! carry a cap ([`Mutation::append_capped`]): after the append, the array
//! keeps only its last `cap` items, so an entity that collects, say, its
//! recent trades stays bounded however long it lives. A path may instead
//! carry an [`Aggregate`] (`add`, `max`, `unique_count`, ...), evaluated
//! against the stored value (see [`crate::aggregate`]), so a projector that
//! only accumulates never reads state.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::aggregate::{apply_aggregates, is_numeric, set_at, value_at, Aggregate, Hidden};
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
    #[serde(default)]
    aggregates: BTreeMap<String, Aggregate>,
    #[serde(default)]
    hidden: Hidden,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireOp {
    Patch,
    Delete,
    Replace,
}

impl TryFrom<WireMutation> for Mutation {
    type Error = String;

    fn try_from(wire: WireMutation) -> Result<Self, String> {
        let kind = match wire.op {
            WireOp::Patch => MutationKind::Patch {
                data: wire.data.ok_or("a patch needs \"data\"")?,
                append: wire.append,
                caps: wire.caps,
                aggregates: wire.aggregates,
            },
            WireOp::Delete => MutationKind::Delete,
            WireOp::Replace => MutationKind::Replace {
                data: wire.data.ok_or("a replace needs \"data\"")?,
                hidden: wire.hidden,
            },
        };
        Ok(Mutation {
            entity: wire.entity,
            key: wire.key,
            kind,
        })
    }
}

/// One event's mutations as the JSON array the host reads, written one at
/// a time ([`crate::Plugin::project_json`]). [`MutationsJson::push`] writes
/// any [`Mutation`]; [`MutationsJson::patch`] writes a plain patch whose
/// data is any serializable object, in the same shape, without a [`Value`]
/// of it.
#[derive(Debug)]
pub struct MutationsJson {
    json: Vec<u8>,
}

impl Default for MutationsJson {
    fn default() -> Self {
        Self::new()
    }
}

impl Extend<Mutation> for MutationsJson {
    /// Writes each of `mutations` ([`MutationsJson::push`]).
    fn extend<I: IntoIterator<Item = Mutation>>(&mut self, mutations: I) {
        mutations
            .into_iter()
            .for_each(|mutation| self.push(&mutation));
    }
}

impl MutationsJson {
    /// No mutations yet.
    pub fn new() -> Self {
        Self {
            json: Vec::with_capacity(256),
        }
    }

    fn separate(&mut self) {
        self.json
            .push(if self.json.is_empty() { b'[' } else { b',' });
    }

    /// Writes `mutation`.
    pub fn push(&mut self, mutation: &Mutation) {
        self.separate();
        serde_json::to_writer(&mut self.json, mutation).expect("a mutation serializes");
    }

    /// Writes what `push(&Mutation::patch(entity, key, data))` writes,
    /// with `data` serialized straight. It must serialize as a JSON object
    /// (a struct or a map): the host refuses the request otherwise. An
    /// error serializing it is returned and nothing is written.
    pub fn patch(
        &mut self,
        entity: &str,
        key: &str,
        data: &impl Serialize,
    ) -> Result<(), crate::ProjectError> {
        let before = self.json.len();
        self.separate();
        let written = (|| {
            self.json.extend_from_slice(b"{\"entity\":");
            serde_json::to_writer(&mut self.json, entity)?;
            self.json.extend_from_slice(b",\"key\":");
            serde_json::to_writer(&mut self.json, key)?;
            self.json.extend_from_slice(b",\"op\":\"patch\",\"data\":");
            serde_json::to_writer(&mut self.json, data)?;
            self.json.push(b'}');
            Ok::<(), serde_json::Error>(())
        })();
        written.map_err(|e| {
            self.json.truncate(before);
            crate::ProjectError::new(format!("patch of {entity}[{key}]: {e}"))
        })
    }

    /// The JSON array.
    pub fn into_json(mut self) -> String {
        if self.json.is_empty() {
            self.json.push(b'[');
        }
        self.json.push(b']');
        String::from_utf8(self.json).expect("serde_json writes UTF-8")
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
        /// Dot paths evaluated by an [`Aggregate`] instead of set; the
        /// operand is the value at that path in `data`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        aggregates: BTreeMap<String, Aggregate>,
    },
    /// Remove the entity (and its [`Hidden`] state).
    Delete,
    /// Host-internal: the whole entity and its hidden state, as a
    /// reprojection rebuilt them. A projector returning it is refused
    /// ([`MutationError::HostOnly`]).
    Replace {
        /// The whole entity; must be a JSON object.
        data: Value,
        /// Its hidden aggregate state.
        #[serde(default, skip_serializing_if = "Hidden::is_empty")]
        hidden: Hidden,
    },
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
                aggregates: BTreeMap::new(),
            },
        }
    }

    /// Host-internal: `entity[key]` becomes `data` with hidden state
    /// `hidden` ([`MutationKind::Replace`]; projectors may not return it).
    pub fn replace(
        entity: impl Into<String>,
        key: impl Into<String>,
        data: Value,
        hidden: Hidden,
    ) -> Self {
        Self {
            entity: entity.into(),
            key: key.into(),
            kind: MutationKind::Replace { data, hidden },
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

    /// Makes `path` an aggregate of this patch with `operand` (set into the
    /// data at `path`). No effect on other kinds.
    pub fn aggregate(
        mut self,
        path: impl Into<String>,
        aggregate: Aggregate,
        operand: Option<Value>,
    ) -> Self {
        if let MutationKind::Patch {
            data, aggregates, ..
        } = &mut self.kind
        {
            let path = path.into();
            if let Some(operand) = operand {
                if data.is_object() {
                    set_at(data, &path, operand);
                }
            }
            aggregates.insert(path, aggregate);
        }
        self
    }

    /// `path += amount` (a number; integers stay exact, see
    /// [`crate::aggregate`]). An absent field counts as 0.
    pub fn add(self, path: impl Into<String>, amount: impl Into<Value>) -> Self {
        self.aggregate(path, Aggregate::Add, Some(amount.into()))
    }

    /// `path += 1`. An absent field counts as 0.
    pub fn count(self, path: impl Into<String>) -> Self {
        self.aggregate(path, Aggregate::Count, None)
    }

    /// `path = max(path, value)` (numbers). An absent field takes `value`.
    pub fn max(self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.aggregate(path, Aggregate::Max, Some(value.into()))
    }

    /// `path = min(path, value)` (numbers). An absent field takes `value`.
    pub fn min(self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.aggregate(path, Aggregate::Min, Some(value.into()))
    }

    /// Sets `path` to `value` only if it is absent or `null`.
    pub fn set_once(self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.aggregate(path, Aggregate::SetOnce, Some(value.into()))
    }

    /// Counts distinct `member`s at `path`: the host keeps the set (never
    /// sent to clients) and sets the field to its size.
    pub fn unique_count(self, path: impl Into<String>, member: impl Into<Value>) -> Self {
        self.aggregate(path, Aggregate::UniqueCount, Some(member.into()))
    }

    /// Whether applying this mutation reads or writes [`Hidden`] state.
    pub fn uses_hidden(&self) -> bool {
        match &self.kind {
            MutationKind::Patch { aggregates, .. } => {
                aggregates.values().any(|a| *a == Aggregate::UniqueCount)
            }
            MutationKind::Delete | MutationKind::Replace { .. } => true,
        }
    }

    /// Checks a mutation as a projector returned it: a non-empty key, a
    /// patch of an object, well-formed aggregates (a path with an operand
    /// of the right type, overlapping no other aggregate or append path),
    /// and no host-only kind.
    pub fn validate(&self) -> Result<(), MutationError> {
        let (entity, key) = (&self.entity, &self.key);
        if key.is_empty() {
            return Err(MutationError::EmptyKey {
                entity: entity.clone(),
            });
        }
        let (data, append, aggregates) = match &self.kind {
            MutationKind::Delete => return Ok(()),
            MutationKind::Replace { .. } => {
                return Err(MutationError::HostOnly {
                    entity: entity.clone(),
                    key: key.clone(),
                })
            }
            MutationKind::Patch {
                data,
                append,
                aggregates,
                ..
            } => (data, append, aggregates),
        };
        let Value::Object(data) = data else {
            return Err(MutationError::NotAnObject {
                entity: entity.clone(),
                key: key.clone(),
            });
        };
        let overlaps = |a: &str, b: &str| {
            a == b
                || (a.len() > b.len() && a.starts_with(b) && a.as_bytes()[b.len()] == b'.')
                || (b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'.')
        };
        for (path, aggregate) in aggregates {
            let bad = |reason: &str| MutationError::Aggregate {
                path: path.clone(),
                aggregate: *aggregate,
                reason: reason.to_owned(),
            };
            if path.split('.').any(str::is_empty) {
                return Err(bad("the path has an empty field name"));
            }
            if let Some(other) = append
                .iter()
                .map(String::as_str)
                .chain(aggregates.keys().map(String::as_str).filter(|p| *p != path))
                .find(|other| overlaps(path, other))
            {
                return Err(bad(&format!("the path overlaps {other:?}")));
            }
            match value_at(data, path) {
                None if aggregate.needs_operand() => {
                    return Err(bad("the data has no operand at the path"))
                }
                Some(operand) if aggregate.numeric() && !is_numeric(operand) => {
                    return Err(bad(&format!(
                        "the operand {operand} is not a number (or an integer as a decimal string)"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Why a mutation a projector returned is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MutationError {
    /// The key is empty.
    EmptyKey {
        /// Entity type.
        entity: String,
    },
    /// A patch whose data is not a JSON object.
    NotAnObject {
        /// Entity type.
        entity: String,
        /// Entity key.
        key: String,
    },
    /// A malformed aggregate.
    Aggregate {
        /// Its dot path.
        path: String,
        /// Which aggregate.
        aggregate: Aggregate,
        /// What is wrong with it.
        reason: String,
    },
    /// A kind only the host may produce ([`MutationKind::Replace`]).
    HostOnly {
        /// Entity type.
        entity: String,
        /// Entity key.
        key: String,
    },
}

impl std::fmt::Display for MutationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MutationError::EmptyKey { entity } => {
                write!(f, "mutation of {entity} with an empty key")
            }
            MutationError::NotAnObject { entity, key } => {
                write!(f, "patch of {entity}[{key}] is not a JSON object")
            }
            MutationError::Aggregate {
                path,
                aggregate,
                reason,
            } => write!(f, "aggregate {} at {path:?}: {reason}", aggregate.name()),
            MutationError::HostOnly { entity, key } => write!(
                f,
                "mutation of {entity}[{key}] has op \"replace\", which only the host may use"
            ),
        }
    }
}

impl std::error::Error for MutationError {}

/// What applying a patch did besides changing the entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Capped append paths whose arrays were trimmed.
    pub trimmed: Vec<String>,
    /// Aggregate paths whose value did not change.
    pub unchanged: Vec<String>,
}

/// Applies a patch by the rules of the module docs: the plain fields
/// ([`merge_patch`], skipping aggregate paths), then the aggregates, then
/// the caps.
pub fn apply_patch(
    target: &mut Value,
    patch: &Map<String, Value>,
    append: &[String],
    caps: &BTreeMap<String, usize>,
    aggregates: &BTreeMap<String, Aggregate>,
    hidden: &mut Hidden,
) -> Applied {
    merge_object(target, patch, append, aggregates, "");
    let unchanged = if aggregates.is_empty() {
        Vec::new()
    } else {
        apply_aggregates(target, patch, aggregates, hidden)
    };
    let mut trimmed = Vec::new();
    for (path, cap) in caps {
        if let Some(Value::Array(items)) = value_at_mut(target, path) {
            if items.len() > *cap {
                items.drain(..items.len() - cap);
                trimmed.push(path.clone());
            }
        }
    }
    Applied { trimmed, unchanged }
}

/// Applies one mutation to an entity (`None`: absent) and its hidden state
/// by the rules of the module docs. A patch whose data is not an object
/// changes nothing (the host refuses such a mutation before it gets here).
pub fn apply_mutation(
    entity: &mut Option<Value>,
    hidden: &mut Hidden,
    mutation: &Mutation,
) -> Applied {
    match &mutation.kind {
        MutationKind::Patch {
            data: Value::Object(data),
            append,
            caps,
            aggregates,
        } => {
            let value = entity.get_or_insert_with(|| Value::Object(Map::new()));
            apply_patch(value, data, append, caps, aggregates, hidden)
        }
        MutationKind::Patch { .. } => Applied::default(),
        MutationKind::Delete => {
            *entity = None;
            hidden.clear();
            Applied::default()
        }
        MutationKind::Replace {
            data,
            hidden: rebuilt,
        } => {
            *entity = Some(data.clone());
            *hidden = rebuilt.clone();
            Applied::default()
        }
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
    merge_object(target, patch, append, &BTreeMap::new(), "");
}

fn merge_object(
    target: &mut Value,
    patch: &Map<String, Value>,
    append: &[String],
    skip: &BTreeMap<String, Aggregate>,
    prefix: &str,
) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (field, value) in patch {
        // Fields already present are updated in place: no key allocated
        // (most patches update an entity's existing fields).
        let path: std::borrow::Cow<str> = if prefix.is_empty() {
            field.into()
        } else {
            format!("{prefix}.{field}").into()
        };
        if !skip.is_empty() && skip.contains_key(&*path) {
            continue;
        }
        match value {
            Value::Object(inner) => {
                if !target.contains_key(field) {
                    target.insert(field.clone(), Value::Null);
                }
                let slot = target.get_mut(field).expect("inserted above");
                merge_object(slot, inner, append, skip, &path);
            }
            Value::Array(items) if append.iter().any(|a| **a == *path) => {
                match target.get_mut(field) {
                    Some(Value::Array(existing)) => existing.extend(items.iter().cloned()),
                    _ => {
                        target.insert(field.clone(), value.clone());
                    }
                }
            }
            _ => match target.get_mut(field) {
                Some(slot) => *slot = value.clone(),
                None => {
                    target.insert(field.clone(), value.clone());
                }
            },
        }
    }
}

/// An in-memory entity store with the host's merge rules, for unit tests of
/// projectors: feed events through [`crate::Plugin::project`] and apply the
/// mutations here.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    entities: HashMap<(String, String), Value>,
    hidden: HashMap<(String, String), Hidden>,
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one mutation. A patch whose data is not an object is ignored
    /// here (the host refuses it with an error; [`MemoryState::ingest`]
    /// refuses it too).
    pub fn apply(&mut self, mutation: &Mutation) {
        let id = (mutation.entity.clone(), mutation.key.clone());
        let mut entity = self.entities.remove(&id);
        let mut hidden = self.hidden.remove(&id).unwrap_or_default();
        apply_mutation(&mut entity, &mut hidden, mutation);
        if let Some(entity) = entity {
            self.entities.insert(id.clone(), entity);
        }
        if !hidden.is_empty() {
            self.hidden.insert(id, hidden);
        }
    }

    /// The hidden state the host would keep for `entity[key]` (the member
    /// sets of its `unique_count` fields).
    pub fn hidden(&self, entity: &str, key: &str) -> Option<&Hidden> {
        self.hidden.get(&(entity.to_owned(), key.to_owned()))
    }

    /// Projects `events` of `stream` through plugin `P`, applying each
    /// event's mutations before the next event, as the host does. A
    /// mutation the host would refuse fails it the same way.
    pub fn ingest<P: crate::Plugin>(
        &mut self,
        stream: &str,
        events: &[Value],
    ) -> Result<(), crate::ProjectError> {
        for event in events {
            // As text, as the host hands it over: the path a plugin's
            // own `project_text` takes.
            let text = event.to_string();
            let mut out = MutationsJson::new();
            P::project_json(&crate::StateView::new(self), stream, &text, &mut out)?;
            // Read back as the host reads it.
            let mutations: Vec<Mutation> = serde_json::from_str(&out.into_json())
                .map_err(|e| crate::ProjectError::new(format!("the mutations written: {e}")))?;
            for mutation in &mutations {
                mutation
                    .validate()
                    .map_err(|e| crate::ProjectError::new(e.to_string()))?;
            }
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
    fn a_patch_written_straight_reads_back_as_the_pushed_mutation() {
        #[derive(Serialize)]
        struct Data<'a> {
            name: &'a str,
            count: u64,
            nested: BTreeMap<&'a str, f64>,
        }
        let mut out = MutationsJson::new();
        assert_eq!(MutationsJson::new().into_json(), "[]");
        let data = Data {
            name: "a \"quoted\" \u{2028} name",
            count: u64::MAX,
            nested: BTreeMap::from([("x", 1.5)]),
        };
        out.patch("Token", "k\\1", &data).unwrap();
        out.push(&Mutation::delete("Token", "k2"));
        // A map with a non-string key does not serialize: nothing written.
        let refused = out.patch("Token", "k3", &BTreeMap::from([((1, 2), 3)]));
        assert!(refused
            .unwrap_err()
            .to_string()
            .starts_with("patch of Token[k3]: key must be a string"));
        let read: Vec<Mutation> = serde_json::from_str(&out.into_json()).unwrap();
        let value = serde_json::to_value(&data).unwrap();
        assert_eq!(
            read,
            vec![
                Mutation::patch("Token", "k\\1", value),
                Mutation::delete("Token", "k2")
            ]
        );
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
        let MutationKind::Patch {
            data,
            append,
            caps,
            aggregates,
        } = &m.kind
        else {
            unreachable!()
        };
        let hidden = &mut Hidden::default();
        let applied = apply_patch(
            &mut entity,
            data.as_object().unwrap(),
            append,
            caps,
            aggregates,
            hidden,
        );
        assert_eq!(entity, json!({"recent": [2, 3, 4, 5]}));
        assert_eq!(applied.trimmed, vec!["recent".to_owned()]);
        let untouched = apply_patch(
            &mut entity,
            &obj(json!({"other": 1})),
            append,
            caps,
            aggregates,
            hidden,
        );
        assert!(untouched.trimmed.is_empty());
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
