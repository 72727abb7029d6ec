//! The identifiers that have a wire form, each formatted and parsed here
//! and nowhere else, so the forms cannot drift apart between the files
//! that use them:
//!
//! - [`Seq`]: a mutation's sequence number, `_seq` on the wire (a
//!   zero-padded 16-digit decimal string, so text order is numeric order);
//!   also what a client resumes from (`after`).
//! - [`ViewId`]: a view's id, `"{entity}/{mode}"` for the base views of an
//!   entity type (`Token/list`), the manifest's id for a derived view.
//! - [`Mode`]: how a view streams, the `{mode}` of a base view's id.
//! - [`PluginName`]: a plugin, as its manifest names it.
//!
//! A leaf module: it imports no other module of the host, so anything may
//! use it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::Value;

/// A mutation's sequence number: the host stamps the next one on every
/// applied mutation. On the wire (`_seq` in entities, `seq` in frames and
/// ingest replies, a subscribe's `after`) it is [`Seq::WIDTH`] zero-padded
/// decimal digits: text order is numeric order (how the TypeScript client
/// compares it) and 16 digits cover every integer JavaScript represents
/// exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The entity field the host stamps.
    pub const FIELD: &'static str = "_seq";
    /// Digits of the wire form (more only beyond 10^16, never in practice).
    pub const WIDTH: usize = 16;

    /// The `_seq` an entity carries, if it has a well-formed one.
    pub fn of(entity: &Value) -> Option<Seq> {
        entity[Self::FIELD].as_str()?.parse().ok()
    }

    /// The number `text` spells if it is exactly the wire form: [`WIDTH`]
    /// ASCII digits. Texts of that one width compare as their numbers do,
    /// so a sort may hold them as numbers (`views::index::SortKey`).
    ///
    /// [`WIDTH`]: Seq::WIDTH
    pub fn of_wire_text(text: &str) -> Option<Seq> {
        if text.len() != Self::WIDTH {
            return None;
        }
        text.parse().ok()
    }

    /// The wire form's digits, in a buffer: `buf[start..]`.
    fn digits(self) -> ([u8; 20], usize) {
        // Once per mutation: digits by hand instead of `format!`.
        let mut buf = [b'0'; 20];
        let mut rest = self.0;
        let mut start = buf.len();
        while rest > 0 {
            start -= 1;
            buf[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        (buf, start.min(buf.len() - Self::WIDTH))
    }

    /// The wire form, as a `String`.
    pub fn text(self) -> String {
        let (buf, start) = self.digits();
        std::str::from_utf8(&buf[start..])
            .expect("ASCII digits")
            .to_owned()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (buf, start) = self.digits();
        f.write_str(std::str::from_utf8(&buf[start..]).expect("ASCII digits"))
    }
}

impl serde::Serialize for Seq {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (buf, start) = self.digits();
        serializer.serialize_str(std::str::from_utf8(&buf[start..]).expect("ASCII digits"))
    }
}

/// Why a text is not a [`Seq`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a sequence number (`_seq`: decimal digits, e.g. \"0000000000000042\")")]
pub struct InvalidSeq {
    /// The text, as given.
    pub text: String,
}

impl FromStr for Seq {
    type Err = InvalidSeq;

    /// Decimal digits only (any number of leading zeros, so `"42"` and
    /// `"0000000000000042"` are the same `Seq`), within `u64`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSeq {
            text: text.to_owned(),
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse().map(Seq).map_err(|_| invalid())
    }
}

/// Streaming mode of a view, as named on the wire (and in a base view's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Many entities, snapshot then changes.
    List,
    /// One entity by key.
    State,
    /// New events only, no snapshot.
    Append,
}

impl Mode {
    /// The modes of an entity type's base views, in the order they are made.
    pub const BASE: [Mode; 3] = [Mode::List, Mode::State, Mode::Append];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::List => "list",
            Mode::State => "state",
            Mode::Append => "append",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Mode::BASE
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or(())
    }
}

/// A view's id: `"{entity}/{mode}"` for a base view (made only by
/// [`ViewId::base`]), the manifest's id for a derived view. Cheap to clone;
/// compares, hashes and borrows as its text, so maps keyed by it are looked
/// up with a `&str` from a client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(Arc<str>);

impl ViewId {
    /// The base view of `entity` in `mode`: `"{entity}/{mode}"`.
    pub fn base(entity: &str, mode: Mode) -> Self {
        ViewId(format!("{entity}/{mode}").into())
    }

    /// The three base views of `entity`, with their modes.
    pub fn bases(entity: &str) -> [(ViewId, Mode); 3] {
        Mode::BASE.map(|mode| (Self::base(entity, mode), mode))
    }

    /// A derived view's id, as its manifest gives it.
    pub fn derived(id: &str) -> Self {
        ViewId(id.into())
    }

    /// The entity type and mode, if this is a base view's form.
    pub fn as_base(&self) -> Option<(&str, Mode)> {
        let (entity, mode) = self.0.rsplit_once('/')?;
        Some((entity, mode.parse().ok()?))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, shared (what frames carry).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ViewId {
    type Err = std::convert::Infallible;

    /// Any text names a view (a derived view's id is the plugin's choice);
    /// whether one exists is the registry's business.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(ViewId(text.into()))
    }
}

impl Deref for ViewId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ViewId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ViewId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A plugin's name, as its manifest gives it: what the host keys builds,
/// their views and their projectors by. Cheap to clone; compares, hashes
/// and borrows as its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PluginName(Arc<str>);

impl PluginName {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for PluginName {
    fn from(name: &str) -> Self {
        PluginName(name.into())
    }
}

impl From<String> for PluginName {
    fn from(name: String) -> Self {
        PluginName(name.into())
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for PluginName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PluginName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for PluginName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_text_is_fixed_width_and_round_trips() {
        for n in [
            0,
            1,
            42,
            9_999_999_999_999_999,
            10_000_000_000_000_000,
            u64::MAX,
        ] {
            let text = Seq(n).to_string();
            assert!(text.len() >= Seq::WIDTH, "{text}");
            assert_eq!(text.parse::<Seq>(), Ok(Seq(n)));
            assert_eq!(serde_json::to_value(Seq(n)).unwrap(), Value::String(text));
        }
        assert_eq!(Seq(42).to_string(), "0000000000000042");
        assert_eq!(Seq(u64::MAX).to_string(), u64::MAX.to_string());
        assert_eq!("42".parse::<Seq>(), Ok(Seq(42)), "padding is optional");
    }

    #[test]
    fn seq_text_sorts_like_numbers() {
        let mut texts: Vec<String> = [9u64, 10, 100, 2].map(|s| Seq(s).text()).to_vec();
        texts.sort();
        let numbers: Vec<u64> = texts.iter().map(|t| t.parse::<Seq>().unwrap().0).collect();
        assert_eq!(numbers, [2, 9, 10, 100]);
    }

    #[test]
    fn malformed_seq_text_is_refused() {
        for text in [
            "",
            " 42",
            "42 ",
            "+42",
            "-1",
            "4.2",
            "0x2a",
            "abc",
            "latest",
            "18446744073709551616", // u64::MAX + 1
        ] {
            let err = text.parse::<Seq>().unwrap_err();
            assert_eq!(err.text, text);
            assert!(err.to_string().contains("not a sequence number"), "{err}");
        }
    }

    #[test]
    fn seq_of_an_entity() {
        let entity = serde_json::json!({"_seq": "0000000000000007", "a": 1});
        assert_eq!(Seq::of(&entity), Some(Seq(7)));
        assert_eq!(Seq::of(&serde_json::json!({"a": 1})), None);
        assert_eq!(Seq::of(&serde_json::json!({"_seq": 7})), None);
    }

    #[test]
    fn view_ids() {
        let id = ViewId::base("Token", Mode::List);
        assert_eq!(id.as_str(), "Token/list");
        assert_eq!(id.as_base(), Some(("Token", Mode::List)));
        assert_eq!("Token/list".parse::<ViewId>().unwrap(), id);
        assert_eq!(
            ViewId::bases("Game").map(|(id, _)| id.to_string()),
            ["Game/list", "Game/state", "Game/append"]
        );
        assert_eq!(ViewId::derived("Game/top").as_base(), None);
        assert_eq!(ViewId::derived("nothing").as_base(), None);
        let map = std::collections::HashMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("Token/list"), Some(&1));
    }
}
