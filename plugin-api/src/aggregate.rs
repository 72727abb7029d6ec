//! Aggregate operations: per-field operations of a patch that the host
//! evaluates against the stored entity, so a projector that only needs
//! `supply += delta` or "how many distinct traders" never reads state back.
//!
//! Why the host evaluates them: a read costs one serialization of the whole
//! entity across the plugin boundary, and the arithmetic is the same for
//! every plugin. Each operation is a pure function of the current value at
//! its path, the operand in the patch data and (for
//! [`Aggregate::UniqueCount`]) the entity's [`Hidden`] member sets, so a
//! replay of the same mutations gives the same state.
//!
//! Numbers: integers are exact. An integer operand and an integer field add
//! in 128 bits; a result outside the 64-bit range is stored as its decimal
//! string (the wire form of every integer beyond 2^53 anyway, see
//! `docs/PROTOCOL.md`), and a decimal string counts as its integer. A float
//! on either side makes the result a float. A field that holds no number
//! counts as absent.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// What a patch does at one field path instead of setting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Sets the field only if it is absent or `null`.
    SetOnce,
    /// Adds the operand (a number, or an integer as a decimal string).
    Add,
    /// Adds 1; the operand, if any, is ignored.
    Count,
    /// Keeps the larger of the field and the operand (numbers).
    Max,
    /// Keeps the smaller of the field and the operand (numbers).
    Min,
    /// Adds the operand to the entity's hidden member set of this path and
    /// sets the field to the set's size. Members compare by their JSON
    /// text. The set is kept by the host and never sent to clients.
    UniqueCount,
}

impl Aggregate {
    /// The name used in mutation JSON (`"add"`, `"unique_count"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::SetOnce => "set_once",
            Aggregate::Add => "add",
            Aggregate::Count => "count",
            Aggregate::Max => "max",
            Aggregate::Min => "min",
            Aggregate::UniqueCount => "unique_count",
        }
    }

    /// Whether the patch data must hold an operand at the path.
    pub fn needs_operand(self) -> bool {
        self != Aggregate::Count
    }

    /// Whether the operand must be a number (or an integer decimal string).
    pub fn numeric(self) -> bool {
        matches!(self, Aggregate::Add | Aggregate::Max | Aggregate::Min)
    }
}

/// The part of an entity's state that the host keeps and clients never
/// see: the member sets of its [`Aggregate::UniqueCount`] fields, by path.
/// Deleting the entity drops it; a checkpoint saves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hidden {
    sets: BTreeMap<String, BTreeSet<String>>,
}

impl Hidden {
    /// Whether there is nothing hidden.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The members counted at `path` (their JSON text), if any.
    pub fn members(&self, path: &str) -> Option<&BTreeSet<String>> {
        self.sets.get(path)
    }

    /// Forgets everything (the entity was deleted).
    pub fn clear(&mut self) {
        self.sets.clear();
    }
}

/// A number as aggregates compute with it.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(value: &Value) -> Option<Num> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .map(|i| Num::Int(i.into()))
                .or_else(|| n.as_u64().map(|u| Num::Int(u.into())))
                .or_else(|| n.as_f64().map(Num::Float)),
            Value::String(text) => decimal(text).map(Num::Int),
            _ => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map(Num::Int)
                .unwrap_or(Num::Float(a as f64 + b as f64)),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn compare(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a
                .as_f64()
                .partial_cmp(&b.as_f64())
                .unwrap_or(Ordering::Equal),
        }
    }

    /// The stored form: an `i64`/`u64` number, a decimal string beyond
    /// them, or a float (`None` if not finite).
    fn into_value(self) -> Option<Value> {
        match self {
            Num::Int(i) => Some(if let Ok(v) = i64::try_from(i) {
                Value::from(v)
            } else if let Ok(v) = u64::try_from(i) {
                Value::from(v)
            } else {
                Value::String(i.to_string())
            }),
            Num::Float(f) => Number::from_f64(f).map(Value::Number),
        }
    }
}

/// An integer written as a decimal string: an optional `-`, then digits.
fn decimal(text: &str) -> Option<i128> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 39 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `value` is something [`Aggregate::numeric`] accepts as operand.
pub fn is_numeric(value: &Value) -> bool {
    Num::of(value).is_some()
}

/// The value at a dot path of an object, if every step is an object field.
pub fn value_at<'v>(object: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut steps = path.split('.');
    let first = object.get(steps.next()?)?;
    steps.try_fold(first, |value, field| value.as_object()?.get(field))
}

/// Sets the value at a dot path, creating (or replacing non-object values
/// with) objects along the way. `target` becomes an object if it is not.
pub fn set_at(target: &mut Value, path: &str, value: Value) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else {
        unreachable!("made an object above")
    };
    set_in(fields, path, value);
}

/// [`set_at`] on an object's fields.
pub fn set_in(target: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            target.insert(path.to_owned(), value);
        }
        Some((field, rest)) => {
            let slot = target.entry(field.to_owned()).or_insert(Value::Null);
            set_at(slot, rest, value);
        }
    }
}

/// Removes the value at a dot path, if there is one.
pub fn remove_at(target: &mut Map<String, Value>, path: &str) {
    match path.rsplit_once('.') {
        None => {
            target.remove(path);
        }
        Some((parent, field)) => {
            let mut steps = parent.split('.');
            let first = steps.next().and_then(|f| target.get_mut(f));
            let parent = steps.try_fold(first, |value, field| {
                Some(value?.as_object_mut()?.get_mut(field))
            });
            if let Some(Some(Value::Object(fields))) = parent {
                fields.remove(field);
            }
        }
    }
}

fn current_at<'v>(target: &'v Value, path: &str) -> Option<&'v Value> {
    value_at(target.as_object()?, path)
}

/// Evaluates the aggregates of a patch on `target` (after the patch's plain
/// fields were merged). Returns the paths whose value did not change (a
/// `set_once` of a field already set, a `max` below the current value, ...):
/// the host leaves them out of the frame it sends.
pub fn apply_aggregates(
    target: &mut Value,
    data: &Map<String, Value>,
    aggregates: &BTreeMap<String, Aggregate>,
    hidden: &mut Hidden,
) -> Vec<String> {
    let mut unchanged = Vec::new();
    for (path, aggregate) in aggregates {
        let operand = value_at(data, path);
        let current = current_at(target, path);
        let current_num = current.and_then(Num::of);
        let result = match aggregate {
            Aggregate::SetOnce => match current {
                None | Some(Value::Null) => operand.cloned(),
                Some(_) => None,
            },
            Aggregate::Add => operand
                .and_then(Num::of)
                .and_then(|o| current_num.map_or(o, |c| c.add(o)).into_value()),
            Aggregate::Count => current_num
                .map_or(Num::Int(1), |c| c.add(Num::Int(1)))
                .into_value(),
            Aggregate::Max | Aggregate::Min => {
                let wanted = if *aggregate == Aggregate::Max {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
                operand.and_then(Num::of).and_then(|o| match current_num {
                    Some(c) if o.compare(c) != wanted => None,
                    _ => o.into_value(),
                })
            }
            Aggregate::UniqueCount => operand.map(|member| {
                let set = hidden.sets.entry(path.clone()).or_default();
                set.insert(serde_json::to_string(member).expect("a JSON value serializes"));
                Value::from(set.len() as u64)
            }),
        };
        match result {
            Some(value) if current != Some(&value) => set_at(target, path, value),
            _ => unchanged.push(path.clone()),
        }
    }
    unchanged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(entity: Value, data: Value, aggs: &[(&str, Aggregate)]) -> (Value, Vec<String>) {
        let mut entity = entity;
        let aggs = aggs.iter().map(|(p, a)| (p.to_string(), *a)).collect();
        let unchanged = apply_aggregates(
            &mut entity,
            data.as_object().unwrap(),
            &aggs,
            &mut Hidden::default(),
        );
        (entity, unchanged)
    }

    #[test]
    fn integers_stay_exact_beyond_64_bits() {
        let (e, _) = run(
            json!({"n": u64::MAX}),
            json!({"n": 1}),
            &[("n", Aggregate::Add)],
        );
        assert_eq!(e["n"], "18446744073709551616");
        let (e, _) = run(e, json!({"n": -2}), &[("n", Aggregate::Add)]);
        assert_eq!(e["n"], json!(u64::MAX - 1));
        let (e, _) = run(
            json!({"n": 9007199254740993u64}),
            json!({"n": 2}),
            &[("n", Aggregate::Add)],
        );
        assert_eq!(e["n"], json!(9007199254740995u64));
        let (e, _) = run(json!({"n": 1}), json!({"n": 0.5}), &[("n", Aggregate::Add)]);
        assert_eq!(e["n"], json!(1.5));
    }

    #[test]
    fn unchanged_paths_are_reported() {
        let (e, unchanged) = run(
            json!({"first": 1, "hi": 10, "lo": 3}),
            json!({"first": 2, "hi": 4, "lo": 1, "s": {"once": true}}),
            &[
                ("first", Aggregate::SetOnce),
                ("hi", Aggregate::Max),
                ("lo", Aggregate::Min),
                ("s.once", Aggregate::SetOnce),
            ],
        );
        assert_eq!(
            e,
            json!({"first": 1, "hi": 10, "lo": 1, "s": {"once": true}})
        );
        assert_eq!(unchanged, vec!["first".to_owned(), "hi".to_owned()]);
    }

    #[test]
    fn paths_are_set_and_removed() {
        let mut v = json!({"a": 1});
        set_at(&mut v, "a.b.c", json!(2));
        assert_eq!(v, json!({"a": {"b": {"c": 2}}}));
        let Value::Object(mut m) = v else {
            unreachable!()
        };
        remove_at(&mut m, "a.b.c");
        assert_eq!(Value::Object(m), json!({"a": {"b": {}}}));
        assert_eq!(decimal("+1"), None);
        assert_eq!(decimal("-12"), Some(-12));
    }
}
