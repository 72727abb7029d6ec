//! An entity as the host holds it: a JSON tree, or its compact text.
//!
//! A `serde_json::Value` object is a `BTreeMap`, whose every node holds
//! room for eleven fields: a five-field token costs about 930 bytes as a
//! tree and about 160 as its text (measured: a million of each). A large
//! store is mostly entities written once (a token created, never traded),
//! so the store keeps an entity created by a plain patch as its text
//! ([`Stored::Text`]) and turns it into a tree when it is written again;
//! from then on patches apply in place with no parse. The views read the
//! change's own tree, so only a reader of the store (a snapshot, a
//! checkpoint, a view built anew) meets the text: snapshots and
//! checkpoints copy it as it is, and anything that needs fields parses it
//! ([`Stored::tree`]).
//!
//! Text is kept only for an entity without integers beyond ±(2^53−1),
//! which frames send as strings so that JavaScript clients lose no
//! precision (`frame::SafeJson`): the text is then exactly what a frame
//! says, and a snapshot copies it without looking.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::ids::Seq;

/// The largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// An entity in the store (see the module doc).
#[derive(Clone, Debug)]
pub enum Stored {
    /// A JSON tree: an entity written since it was created, or one with an
    /// integer frames must send as a string.
    Tree(Arc<Value>),
    /// Its compact JSON text, with no integer beyond [`MAX_SAFE_INTEGER`].
    Text(Arc<RawValue>),
}

impl Stored {
    /// `value` as its text if it has no unsafe integer, else as the tree.
    pub fn compact(value: Arc<Value>) -> Stored {
        if has_unsafe_integer(&value) {
            return Stored::Tree(value);
        }
        match serde_json::value::to_raw_value(&*value) {
            Ok(text) => Stored::Text(Arc::from(text)),
            Err(_) => Stored::Tree(value),
        }
    }

    /// An entity read as text (a checkpoint line): kept as it is unless it
    /// has an integer frames must rewrite.
    pub fn from_text(text: Box<RawValue>) -> Result<Stored, serde_json::Error> {
        if text_may_hold_unsafe_integer(text.get()) {
            return Ok(Stored::Tree(Arc::new(serde_json::from_str(text.get())?)));
        }
        Ok(Stored::Text(Arc::from(text)))
    }

    /// The entity as a tree, parsed if held as text.
    pub fn tree(&self) -> Arc<Value> {
        match self {
            Stored::Tree(value) => value.clone(),
            Stored::Text(_) => Arc::new(self.to_value()),
        }
    }

    /// The entity as a tree of its own (a copy).
    pub fn to_value(&self) -> Value {
        match self {
            Stored::Tree(value) => Value::clone(value),
            Stored::Text(text) => serde_json::from_str(text.get()).expect("stored text is JSON"),
        }
    }

    /// Its `_seq`, read without building a tree.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Stored::Tree(value) => Seq::of(value),
            Stored::Text(text) => {
                #[derive(serde::Deserialize)]
                struct SeqOnly<'a> {
                    #[serde(rename = "_seq", borrow)]
                    seq: Option<&'a str>,
                }
                let only: SeqOnly = serde_json::from_str(text.get()).ok()?;
                only.seq?.parse().ok()
            }
        }
    }

    /// Whether someone besides the store holds the tree (writing it would
    /// copy it first). Text is never written in place.
    pub fn is_shared(&self) -> bool {
        matches!(self, Stored::Tree(value) if Arc::strong_count(value) > 1)
    }
}

/// Equal when the entities are: a tree and a text can be.
impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Stored::Text(a), Stored::Text(b)) => a.get() == b.get() || self.tree() == other.tree(),
            _ => self.tree() == other.tree(),
        }
    }
}

/// Exactly the entity's JSON (a checkpoint line): the text as it is, the
/// tree as serde writes it. Frames write it through `frame::SafeJson`.
impl Serialize for Stored {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Stored::Tree(value) => value.serialize(serializer),
            Stored::Text(text) => text.serialize(serializer),
        }
    }
}

/// Read from JSON as its text (a checkpoint line, an entity the host
/// sends a projector process), through [`Stored::from_text`].
impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        Stored::from_text(text).map_err(serde::de::Error::custom)
    }
}

/// Whether a number is an integer a JavaScript client would round.
pub fn is_unsafe_integer(n: &serde_json::Number) -> bool {
    if let Some(u) = n.as_u64() {
        u > MAX_SAFE_INTEGER
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs() > MAX_SAFE_INTEGER
    } else {
        false
    }
}

fn has_unsafe_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => is_unsafe_integer(n),
        Value::Array(items) => items.iter().any(has_unsafe_integer),
        Value::Object(fields) => fields.values().any(has_unsafe_integer),
        _ => false,
    }
}

/// Whether JSON text may hold an integer beyond [`MAX_SAFE_INTEGER`]: a
/// number (outside strings) of 16 digits or more. Cheaper than a parse;
/// a long number that is safe after all (a float's digits) only costs a
/// tree.
fn text_may_hold_unsafe_integer(text: &str) -> bool {
    let (mut in_string, mut escaped, mut digits) = (false, false, 0usize);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                digits = 0;
            }
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 16 {
                    return true;
                }
            }
            _ => digits = 0,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entity_without_big_integers_is_kept_as_its_text() {
        let value = json!({"mint": "m1", "supply": 5, "_seq": "0000000000000042"});
        let stored = Stored::compact(Arc::new(value.clone()));
        let Stored::Text(text) = &stored else {
            panic!("kept as a tree: {stored:?}")
        };
        assert_eq!(text.get(), serde_json::to_string(&value).unwrap());
        assert_eq!(*stored.tree(), value);
        assert_eq!(stored.seq(), Some(Seq(42)));
        assert_eq!(serde_json::to_value(&stored).unwrap(), value);
        // Read back from JSON: text again, the same entity.
        let read: Stored = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert!(matches!(read, Stored::Text(_)));
        assert_eq!(read, stored);
        let big: Stored = serde_json::from_str(r#"{"n":18446744073709551615}"#).unwrap();
        assert!(matches!(big, Stored::Tree(_)));
    }

    #[test]
    fn an_entity_with_an_integer_beyond_2_pow_53_stays_a_tree() {
        let big = json!({"supply": 9_007_199_254_740_993u64, "_seq": "0000000000000001"});
        assert!(matches!(
            Stored::compact(Arc::new(big.clone())),
            Stored::Tree(_)
        ));
        let text = serde_json::value::to_raw_value(&big).unwrap();
        assert!(matches!(Stored::from_text(text).unwrap(), Stored::Tree(_)));
        // A 16-digit `_seq` is a string, not a number.
        let small = serde_json::value::to_raw_value(&json!({"a": "12345678901234567890", "_seq": "0000000000000001", "n": -900719925474099i64})).unwrap();
        assert!(matches!(Stored::from_text(small).unwrap(), Stored::Text(_)));
        let escaped =
            serde_json::value::to_raw_value(&json!({"a": "x\"1234567890123456789", "n": 1}))
                .unwrap();
        assert!(matches!(
            Stored::from_text(escaped).unwrap(),
            Stored::Text(_)
        ));
    }
}
