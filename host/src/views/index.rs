//! The ordered index of a list view and the windows read from it.
//!
//! A list view's members live in a `BTreeSet` ordered by (sort value,
//! direction, key), with each member's current sort value kept beside it so
//! an update can find and move it in O(log n). A window (`skip`/`take`) is
//! read by walking the set from its start: O(skip + take), independent of
//! how many entities the view holds.
//!
//! Sort values are held as [`SortKey`]s rather than the plugin API's
//! [`SortValue`]: most list views sort by `_seq` (the default order, and the
//! one every write moves), whose 16-digit text would otherwise be copied out
//! of the entity and compared byte by byte on every step of every index
//! search. As an integer it is neither copied nor `memcmp`ed, and it sorts
//! exactly as its text does.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::Value;
use vista_plugin_api::view::SortValue;

use crate::ids::Seq;
use crate::vocab::FastMap;

/// A member's sort value as the index keeps it: a [`SortValue`], except
/// that a text of exactly [`Seq::WIDTH`] ASCII digits (every `_seq`) is kept
/// as its number. Texts of one width compare as their numbers do, so the
/// order is the [`SortValue`] order either way.
///
/// Boxed otherwise, so a key is 16 bytes, not 32: an index holds two per
/// member (its order and its map), a million members in a large store.
#[derive(Debug, Clone)]
pub(crate) enum SortKey {
    Seq(u64),
    Value(Box<SortValue>),
}

impl SortKey {
    /// The sort value at `path` of `entity`.
    pub(crate) fn of(entity: &Value, path: &str) -> Self {
        if path == Seq::FIELD {
            if let Some(n) = entity
                .get(Seq::FIELD)
                .and_then(Value::as_str)
                .and_then(seq_digits)
            {
                return SortKey::Seq(n);
            }
        }
        SortKey::from(SortValue::of(entity, path))
    }
}

impl From<SortValue> for SortKey {
    fn from(value: SortValue) -> Self {
        match value {
            SortValue::Text(text) => match seq_digits(&text) {
                Some(n) => SortKey::Seq(n),
                None => SortKey::Value(Box::new(SortValue::Text(text))),
            },
            other => SortKey::Value(Box::new(other)),
        }
    }
}

/// The number a text of exactly [`Seq::WIDTH`] ASCII digits spells.
fn seq_digits(text: &str) -> Option<u64> {
    Seq::of_wire_text(text).map(|seq| seq.0)
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortKey::Seq(a), SortKey::Seq(b)) => a.cmp(b),
            (SortKey::Value(a), SortKey::Value(b)) => a.cmp(b),
            // Rare (a sort field holding `_seq`-like texts and other
            // values): compared as the texts they are.
            (SortKey::Seq(a), SortKey::Value(b)) => SortValue::Text(Seq(*a).text()).cmp(b),
            (SortKey::Value(a), SortKey::Seq(b)) => (**a).cmp(&SortValue::Text(Seq(*b).text())),
        }
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SortKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SortKey {}

/// A `skip`/`take` window, as a half-open range of view positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First position.
    pub start: usize,
    /// One past the last position; `None` = to the end.
    pub end: Option<usize>,
}

impl Window {
    pub(crate) fn is_everything(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }
}

/// Position of an entity in a view: sort value, direction, then key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderKey {
    pub(crate) value: SortKey,
    pub(crate) desc: bool,
    pub(crate) key: Box<str>,
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_value = self.value.cmp(&other.value);
        let by_value = if self.desc {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The members of a list view in view order.
#[derive(Default)]
pub struct OrderedIndex {
    pub(crate) order: BTreeSet<OrderKey>,
    /// Each member's current sort value, to find it in `order`.
    pub(crate) values: FastMap<Box<str>, SortKey>,
}

impl OrderedIndex {
    pub(crate) fn remove(&mut self, key: &str, desc: bool) {
        if let Some((key, value)) = self.values.remove_entry(key) {
            self.order.remove(&OrderKey { value, desc, key });
        }
    }

    /// Puts `key` at `value`'s position. Moving a member reuses its two
    /// key strings (the map's and the set's) instead of allocating them
    /// again: every update of a list view's member moves it (a `_seq` sort
    /// changes on every write), so this runs once per change per view.
    pub(crate) fn insert(&mut self, key: &str, value: SortKey, desc: bool) {
        let (map_key, order_key) = match self.values.remove_entry(key) {
            Some((map_key, old)) => {
                let probe = OrderKey {
                    value: old,
                    desc,
                    key: map_key,
                };
                let order_key = self
                    .order
                    .take(&probe)
                    .map_or_else(|| key.into(), |stored| stored.key);
                (probe.key, order_key)
            }
            None => (key.into(), key.into()),
        };
        self.values.insert(map_key, value.clone());
        self.order.insert(OrderKey {
            value,
            desc,
            key: order_key,
        });
    }

    /// An index of these members (distinct keys), built in one go: sorted
    /// once and bulk-loaded, several times faster than inserting each (a
    /// restart rebuilds every list view over the whole store).
    pub(crate) fn from_members<'a>(
        members: impl Iterator<Item = (&'a String, SortKey)>,
        desc: bool,
    ) -> Self {
        let mut values = FastMap::default();
        let mut order = Vec::new();
        for (key, value) in members {
            values.insert(Box::from(key.as_str()), value.clone());
            order.push(OrderKey {
                value,
                desc,
                key: key.as_str().into(),
            });
        }
        Self {
            order: order.into_iter().collect(),
            values,
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Keys at the window's positions, in order.
    pub(crate) fn window(&self, window: Window) -> Vec<String> {
        self.window_iter(window).map(str::to_owned).collect()
    }

    /// The same keys, borrowed.
    pub(crate) fn window_iter(&self, window: Window) -> impl Iterator<Item = &str> {
        let take = window
            .end
            .map_or(usize::MAX, |end| end.saturating_sub(window.start));
        self.order
            .iter()
            .skip(window.start)
            .take(take)
            .map(|k| &*k.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SortKey {
        SortKey::from(SortValue::Text(s.to_owned()))
    }

    #[test]
    fn updates_move_members_and_keep_the_two_sides_in_step() {
        let mut index = OrderedIndex::default();
        index.insert("a", text("1"), true);
        index.insert("b", text("2"), true);
        index.insert("c", text("3"), true);
        assert_eq!(
            index.window(Window {
                start: 0,
                end: None
            }),
            ["c", "b", "a"]
        );
        index.insert("a", text("4"), true); // moved to the front
        index.insert("b", text("2"), true); // unchanged value
        assert_eq!(
            index.window(Window {
                start: 0,
                end: None
            }),
            ["a", "c", "b"]
        );
        index.remove("c", true);
        index.remove("missing", true);
        assert_eq!(
            index.window(Window {
                start: 0,
                end: None
            }),
            ["a", "b"]
        );
        assert_eq!((index.order.len(), index.values.len()), (2, 2));
        assert_eq!(index.values["a"], text("4"));
        assert!(index.contains("b") && !index.contains("c"));
    }

    #[test]
    fn sort_keys_order_exactly_as_the_sort_values_they_stand_for() {
        let values = [
            SortValue::Missing,
            SortValue::Bool(true),
            SortValue::Number(-1.5),
            SortValue::Number(7.0),
            SortValue::Text(String::new()),
            SortValue::Text("0000000000000042".into()),
            SortValue::Text("0000000000000100".into()),
            SortValue::Text("0000000000000099x".into()),
            SortValue::Text("000000000000010".into()),
            SortValue::Text("10000000000000000".into()), // 17 digits
            SortValue::Text("9999999999999999".into()),
            SortValue::Text("abc".into()),
        ];
        assert!(matches!(SortKey::from(values[5].clone()), SortKey::Seq(42)));
        for a in &values {
            for b in &values {
                let keys = (SortKey::from(a.clone()), SortKey::from(b.clone()));
                assert_eq!(keys.0.cmp(&keys.1), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(keys.0 == keys.1, a == b, "{a:?} vs {b:?}");
            }
        }
        let entity = serde_json::json!({"_seq": "0000000000000007", "n": 3});
        assert!(matches!(SortKey::of(&entity, "_seq"), SortKey::Seq(7)));
        assert!(matches!(
            SortKey::of(&entity, "n"),
            SortKey::Value(value) if *value == SortValue::Number(3.0)
        ));
    }

    #[test]
    fn an_index_built_in_one_go_equals_one_built_by_inserts() {
        let keys: Vec<String> = (0..500).map(|i| format!("k{}", (i * 37) % 500)).collect();
        let value = |i: usize| SortKey::from(SortValue::Number((i % 17) as f64));
        for desc in [false, true] {
            let mut inserted = OrderedIndex::default();
            for (i, key) in keys.iter().enumerate() {
                inserted.insert(key, value(i), desc);
            }
            let built = OrderedIndex::from_members(
                keys.iter().enumerate().map(|(i, k)| (k, value(i))),
                desc,
            );
            let all = Window {
                start: 0,
                end: None,
            };
            assert_eq!(built.window(all), inserted.window(all));
            assert_eq!(built.values, inserted.values);
        }
    }
}
