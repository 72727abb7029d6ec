//! Per-subscription filters: the `filters` map the published clients send
//! with `watch(view, {filters})`, `{"dot.path": value, ...}`.
//!
//! Why a type of its own: a subscription's filters decide which entities
//! its snapshot holds and which enter or leave it live, and subscriptions
//! with equal filters share one filtered index (see `views`). So filters
//! are validated once, when the subscribe is parsed (a malformed one is a
//! non-fatal `invalid-filter` issue), and reduced to a canonical text that
//! identifies equal filters however the client ordered or spelled them.
//!
//! Matching: every entry must match. A string compares with the field's
//! string form (`"5"` matches the number `5`, `"true"` the boolean); a
//! number compares by value with a numeric field (or an integer stored as a
//! decimal string); a boolean with a boolean. A missing field, `null`, an
//! object or an array never matches.

use serde_json::{Map, Value};

/// Why a `filters` map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct InvalidFilter(pub String);

/// What one filter entry expects.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Validated filters, sorted by path.
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    entries: Vec<(Vec<String>, Expected)>,
    canonical: String,
}

/// Most entries one subscription's filters may have.
pub const MAX_FILTERS: usize = 32;

impl Filters {
    /// Parses the `filters` field of a subscribe. `None` or `{}` is no
    /// filter at all.
    pub fn parse(value: Option<&Value>) -> Result<Option<Filters>, InvalidFilter> {
        let fields: &Map<String, Value> = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(fields)) => fields,
            Some(other) => {
                return Err(InvalidFilter(format!(
                    "\"filters\" must be an object of dot path -> value, not {other}"
                )))
            }
        };
        if fields.is_empty() {
            return Ok(None);
        }
        if fields.len() > MAX_FILTERS {
            return Err(InvalidFilter(format!(
                "at most {MAX_FILTERS} filters per subscription, not {}",
                fields.len()
            )));
        }
        // serde_json's map is ordered by key: entries come sorted.
        let mut entries = Vec::with_capacity(fields.len());
        for (path, value) in fields {
            if path.split('.').any(str::is_empty) {
                return Err(InvalidFilter(format!(
                    "{path:?} is not a dot path (empty field name)"
                )));
            }
            let expected = match value {
                Value::String(text) => Expected::Text(text.clone()),
                Value::Number(n) => Expected::Number(n.as_f64().unwrap_or(f64::NAN)),
                Value::Bool(b) => Expected::Bool(*b),
                other => {
                    return Err(InvalidFilter(format!(
                        "the value of {path:?} must be a string, number or boolean, not {other}"
                    )))
                }
            };
            entries.push((path.split('.').map(str::to_owned).collect(), expected));
        }
        let canonical = serde_json::to_string(fields).expect("JSON serializes");
        Ok(Some(Filters { entries, canonical }))
    }

    /// The text identifying these filters: equal filters, equal text.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether `entity` passes every entry.
    pub fn matches(&self, entity: &Value) -> bool {
        self.entries.iter().all(|(path, expected)| {
            field_at(entity, path).is_some_and(|field| field_matches(field, expected))
        })
    }

    /// The first string entry, as (path, text): an entity passes these
    /// filters only if [`string_form`] of its field at the path is the
    /// text. What `views` indexes filtered sub-views by.
    pub fn index_entry(&self) -> Option<(&[String], &str)> {
        self.entries
            .iter()
            .find_map(|(path, expected)| match expected {
                Expected::Text(text) => Some((path.as_slice(), text.as_str())),
                _ => None,
            })
    }
}

/// The field at a dot path (split into its steps).
pub fn field_at<'v>(entity: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter()
        .try_fold(entity, |value, step| value.as_object()?.get(step))
}

/// The string form a string filter compares a field with: a string as is,
/// a number as JSON writes it, a boolean as `true`/`false`; nothing for
/// anything else (never matched by a string filter).
pub fn string_form(field: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match field {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

fn field_matches(field: &Value, expected: &Expected) -> bool {
    match (expected, field) {
        (Expected::Text(text), field) => string_form(field).is_some_and(|form| form == *text),
        (Expected::Number(want), Value::Number(n)) => n.as_f64() == Some(*want),
        (Expected::Number(want), Value::String(s)) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && s.parse::<f64>().ok() == Some(*want)
        }
        (Expected::Bool(want), Value::Bool(b)) => b == want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filters(v: Value) -> Filters {
        Filters::parse(Some(&v)).unwrap().unwrap()
    }

    #[test]
    fn strings_match_the_string_form_numbers_the_value() {
        let f = filters(json!({"symbol": "SOL", "meta.decimals": "9"}));
        assert!(f.matches(&json!({"symbol": "SOL", "meta": {"decimals": 9}})));
        assert!(f.matches(&json!({"symbol": "SOL", "meta": {"decimals": "9"}})));
        assert!(!f.matches(&json!({"symbol": "SOL", "meta": {"decimals": 6}})));
        assert!(
            !f.matches(&json!({"symbol": "SOL"})),
            "missing never matches"
        );
        let n = filters(json!({"score": 10}));
        assert!(n.matches(&json!({"score": 10.0})));
        assert!(n.matches(&json!({"score": "10"})));
        assert!(!n.matches(&json!({"score": "ten"})));
        assert!(filters(json!({"live": "true"})).matches(&json!({"live": true})));
        assert!(filters(json!({"live": true})).matches(&json!({"live": true})));
    }

    #[test]
    fn equal_filters_have_equal_canonical_text() {
        let a: Value = serde_json::from_str(r#"{"b": "1", "a": 2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": 2, "b": "1"}"#).unwrap();
        assert_eq!(filters(a).canonical(), filters(b).canonical());
        assert_eq!(Filters::parse(Some(&json!({}))).unwrap(), None);
        assert_eq!(Filters::parse(None).unwrap(), None);
    }

    #[test]
    fn malformed_filters_are_refused_saying_why() {
        let err = |v: Value| Filters::parse(Some(&v)).unwrap_err().0;
        assert!(err(json!(["a"])).contains("must be an object"));
        assert!(err(json!({"a..b": "x"})).contains("not a dot path"));
        assert!(err(json!({"a": {"gt": 1}})).contains("string, number or boolean"));
        assert!(err(json!({"a": null})).contains("string, number or boolean"));
    }
}
