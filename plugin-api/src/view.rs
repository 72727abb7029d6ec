//! Derived views: declarative filter, sort and limit over one entity type.
//!
//! A plugin declares them with a small typed builder:
//!
//! ```
//! use vista_plugin_api::view::{eq, view};
//! let active = view("ActiveGame/latest").from("Game").filter(eq("status", "active")).sort_desc("startedAt").take(10);
//! assert_eq!(active.take, Some(10));
//! ```
//!
//! The definition is data, evaluated by the host, so the host can maintain
//! the view incrementally and diff an old definition against a new one.
//!
//! # Ordering
//!
//! The order matches the published TypeScript client, which re-sorts list
//! views itself: a missing or `null` field sorts lowest (first ascending, last
//! descending), then booleans, then numbers (numerically), then strings (by
//! UTF-8 bytes); ties are broken by entity key ascending in both directions.
//! The TypeScript client compares strings with `localeCompare`, which differs
//! from byte order for mixed case (`"a" < "B"` there, `"B" < "a"` here) and
//! accented letters; use lowercase ASCII or numbers as sort keys when both
//! orders must agree exactly.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A derived view over one entity type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    /// View id `Name/view`, what clients subscribe to.
    pub id: String,
    /// The entity type the view draws from.
    pub source: String,
    /// Only entities matching this predicate are in the view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Order of the view; `_seq` descending when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortSpec>,
    /// At most this many entities (the first ones in sort order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take: Option<usize>,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// Sort of a derived view: a dot path into the entity and a direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortSpec {
    /// Dot-separated path, e.g. `stats.score`.
    pub field: String,
    /// Direction.
    pub order: Order,
}

/// A declarative predicate over dot paths of an entity.
///
/// Comparisons only match values of the same kind (number with number,
/// string with string, boolean with boolean); a missing field never matches
/// a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Field equals the literal.
    Eq(String, Value),
    /// Field has the same kind as the literal and a different value.
    Ne(String, Value),
    /// Field is less than the literal.
    Lt(String, Value),
    /// Field is less than or equal to the literal.
    Le(String, Value),
    /// Field is greater than the literal.
    Gt(String, Value),
    /// Field is greater than or equal to the literal.
    Ge(String, Value),
    /// Field equals one of the literals.
    In(String, Vec<Value>),
    /// Field is present and not null.
    Exists(String),
    /// All of the predicates hold.
    And(Vec<Filter>),
    /// At least one of the predicates holds.
    Or(Vec<Filter>),
    /// The predicate does not hold.
    Not(Box<Filter>),
}

/// Starts a view declaration: `view("ActiveGame/latest").from("Game")...`.
pub fn view(id: impl Into<String>) -> ViewDef {
    ViewDef {
        id: id.into(),
        source: String::new(),
        filter: None,
        sort: None,
        take: None,
    }
}

impl ViewDef {
    /// Sets the source entity type.
    pub fn from(mut self, entity: impl Into<String>) -> Self {
        self.source = entity.into();
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sorts ascending by a dot path.
    pub fn sort_asc(mut self, field: impl Into<String>) -> Self {
        self.sort = Some(SortSpec {
            field: field.into(),
            order: Order::Asc,
        });
        self
    }

    /// Sorts descending by a dot path.
    pub fn sort_desc(mut self, field: impl Into<String>) -> Self {
        self.sort = Some(SortSpec {
            field: field.into(),
            order: Order::Desc,
        });
        self
    }

    /// Limits the view to its first `n` entities.
    pub fn take(mut self, n: usize) -> Self {
        self.take = Some(n);
        self
    }

    /// The effective sort: the declared one or `_seq` descending.
    pub fn effective_sort(&self) -> SortSpec {
        self.sort.clone().unwrap_or(SortSpec {
            field: "_seq".into(),
            order: Order::Desc,
        })
    }

    /// Whether `entity` belongs in the view (ignoring the limit).
    pub fn matches(&self, entity: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(entity))
    }

    /// Checks the definition; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let Some((name, suffix)) = self.id.split_once('/') else {
            return Err("id must look like Name/view".into());
        };
        if name.is_empty() || suffix.is_empty() || suffix.contains('/') {
            return Err("id must look like Name/view".into());
        }
        if self.source.is_empty() {
            return Err("no source entity (call .from(..))".into());
        }
        if let Some(sort) = &self.sort {
            check_path(&sort.field).map_err(|e| format!("sort: {e}"))?;
        }
        if self.take == Some(0) {
            return Err("take must be at least 1".into());
        }
        if let Some(filter) = &self.filter {
            filter.validate().map_err(|e| format!("filter: {e}"))?;
        }
        Ok(())
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        Err(format!("invalid field path {path:?}"))
    } else {
        Ok(())
    }
}

fn check_literal(op: &str, path: &str, literal: &Value, ordered: bool) -> Result<(), String> {
    check_path(path)?;
    match literal {
        Value::Number(_) | Value::String(_) => Ok(()),
        Value::Bool(_) if !ordered => Ok(()),
        other => Err(format!(
            "{op} on {path:?}: literal {other} is not a {}",
            if ordered {
                "number or string"
            } else {
                "number, string or boolean"
            }
        )),
    }
}

/// `field == value`.
pub fn eq(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Eq(field.into(), value.into())
}
/// `field != value` (same kind).
pub fn ne(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Ne(field.into(), value.into())
}
/// `field < value`.
pub fn lt(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Lt(field.into(), value.into())
}
/// `field <= value`.
pub fn le(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Le(field.into(), value.into())
}
/// `field > value`.
pub fn gt(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Gt(field.into(), value.into())
}
/// `field >= value`.
pub fn ge(field: impl Into<String>, value: impl Into<Value>) -> Filter {
    Filter::Ge(field.into(), value.into())
}
/// `field` equals one of `values`.
pub fn is_in<V: Into<Value>>(
    field: impl Into<String>,
    values: impl IntoIterator<Item = V>,
) -> Filter {
    Filter::In(field.into(), values.into_iter().map(Into::into).collect())
}
/// `field` is present and not null.
pub fn exists(field: impl Into<String>) -> Filter {
    Filter::Exists(field.into())
}
/// All of `filters`.
pub fn and(filters: impl IntoIterator<Item = Filter>) -> Filter {
    Filter::And(filters.into_iter().collect())
}
/// Any of `filters`.
pub fn or(filters: impl IntoIterator<Item = Filter>) -> Filter {
    Filter::Or(filters.into_iter().collect())
}
/// Not `filter`.
pub fn not(filter: Filter) -> Filter {
    Filter::Not(Box::new(filter))
}

impl Filter {
    /// Checks paths and literals; the message names the bad part.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Filter::Eq(p, v) => check_literal("eq", p, v, false),
            Filter::Ne(p, v) => check_literal("ne", p, v, false),
            Filter::Lt(p, v) => check_literal("lt", p, v, true),
            Filter::Le(p, v) => check_literal("le", p, v, true),
            Filter::Gt(p, v) => check_literal("gt", p, v, true),
            Filter::Ge(p, v) => check_literal("ge", p, v, true),
            Filter::In(p, vs) => vs.iter().try_for_each(|v| check_literal("in", p, v, false)),
            Filter::Exists(p) => check_path(p),
            Filter::And(fs) | Filter::Or(fs) => fs.iter().try_for_each(Filter::validate),
            Filter::Not(f) => f.validate(),
        }
    }

    /// Evaluates the predicate against an entity.
    pub fn matches(&self, entity: &Value) -> bool {
        let cmp = |path: &str, literal: &Value| compare_same_kind(lookup(entity, path)?, literal);
        match self {
            Filter::Eq(p, v) => cmp(p, v) == Some(Ordering::Equal),
            Filter::Ne(p, v) => matches!(cmp(p, v), Some(Ordering::Less | Ordering::Greater)),
            Filter::Lt(p, v) => cmp(p, v) == Some(Ordering::Less),
            Filter::Le(p, v) => matches!(cmp(p, v), Some(Ordering::Less | Ordering::Equal)),
            Filter::Gt(p, v) => cmp(p, v) == Some(Ordering::Greater),
            Filter::Ge(p, v) => matches!(cmp(p, v), Some(Ordering::Greater | Ordering::Equal)),
            Filter::In(p, vs) => vs.iter().any(|v| cmp(p, v) == Some(Ordering::Equal)),
            Filter::Exists(p) => lookup(entity, p).is_some_and(|v| !v.is_null()),
            Filter::And(fs) => fs.iter().all(|f| f.matches(entity)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(entity)),
            Filter::Not(f) => !f.matches(entity),
        }
    }
}

/// Follows a dot path into nested objects.
pub fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |v, part| v.as_object()?.get(part))
}

fn compare_same_kind(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The part of an entity a view sorts by, with the client-compatible order
/// described in the module docs (without the direction or the key tie-break).
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    /// Missing, null, or an object/array: sorts lowest.
    Missing,
    /// A boolean.
    Bool(bool),
    /// A number, compared numerically.
    Number(f64),
    /// A string, compared by bytes.
    Text(String),
}

impl SortValue {
    /// Extracts the sort value at `path` from an entity.
    pub fn of(entity: &Value, path: &str) -> Self {
        match lookup(entity, path) {
            Some(Value::Bool(b)) => SortValue::Bool(*b),
            Some(Value::Number(n)) => n.as_f64().map_or(SortValue::Missing, SortValue::Number),
            Some(Value::String(s)) => SortValue::Text(s.clone()),
            _ => SortValue::Missing,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            SortValue::Missing => 0,
            SortValue::Bool(_) => 1,
            SortValue::Number(_) => 2,
            SortValue::Text(_) => 3,
        }
    }
}

impl Eq for SortValue {}

impl PartialOrd for SortValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortValue::Bool(a), SortValue::Bool(b)) => a.cmp(b),
            (SortValue::Number(a), SortValue::Number(b)) => a.total_cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_fields_never_match_comparisons() {
        let game = json!({"status": "active", "score": 3});
        assert!(eq("status", "active").matches(&game));
        assert!(!ne("winner", "x").matches(&game));
        assert!(!lt("winner", 5).matches(&game));
        assert!(not(exists("winner")).matches(&game));
        assert!(
            !eq("score", "3").matches(&game),
            "number never equals string"
        );
        assert!(is_in("score", [1, 3]).matches(&game));
        assert!(and([gt("score", 2), le("score", 3)]).matches(&game));
        assert!(or([eq("status", "ended"), ge("score", 3)]).matches(&game));
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = view("A/b").from("A").filter(lt("x", true));
        assert!(bad.validate().unwrap_err().contains("lt on \"x\""));
        assert!(view("nope").from("A").validate().is_err());
        assert!(view("A/b").validate().unwrap_err().contains("source"));
        assert!(view("A/b").from("A").sort_desc("a..b").validate().is_err());
    }

    #[test]
    fn sort_values_order_missing_lowest() {
        let mut values = vec![
            SortValue::Text("b".into()),
            SortValue::Number(10.0),
            SortValue::Missing,
            SortValue::Number(2.0),
            SortValue::Text("a".into()),
        ];
        values.sort();
        assert_eq!(
            values,
            vec![
                SortValue::Missing,
                SortValue::Number(2.0),
                SortValue::Number(10.0),
                SortValue::Text("a".into()),
                SortValue::Text("b".into()),
            ]
        );
    }

    #[test]
    fn view_definitions_round_trip_as_json() {
        let def = view("ActiveGame/latest")
            .from("Game")
            .filter(and([eq("status", "active"), not(exists("winner"))]))
            .sort_desc("startedAt")
            .take(10);
        let text = serde_json::to_string(&def).unwrap();
        assert_eq!(serde_json::from_str::<ViewDef>(&text).unwrap(), def);
    }
}
