//! The ordered index of a list view and the windows read from it.
//!
//! A list view's members live in a `BTreeSet` ordered by (sort value,
//! direction, key), or, for a view sorted by `_seq` (most are), in a
//! `BTreeMap` by `_seq` alone (no two entities share one); each member's
//! current sort value is kept beside it so an update can find and move it
//! in O(log n). A window (`skip`/`take`) is
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
use std::collections::{BTreeMap, BTreeSet};

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
    order: Order,
    /// Each member's current sort value, to find it in `order`.
    pub(crate) values: FastMap<Box<str>, SortKey>,
}

/// The ordered side of an index. Most list views sort by `_seq`, which no
/// two entities share: their members are ordered by it alone, 24 bytes an
/// entry against 40 (with the direction and the tie-breaking key), and
/// compared as integers.
enum Order {
    /// By `_seq` (each member's [`SortKey::Seq`]).
    Seq {
        members: BTreeMap<u64, Box<str>>,
        desc: bool,
    },
    /// By any sort value, then key.
    Any(BTreeSet<OrderKey>),
}

impl Default for Order {
    fn default() -> Self {
        Order::Any(BTreeSet::new())
    }
}

impl OrderedIndex {
    /// An empty index of a view sorted by `field`.
    pub(crate) fn for_field(field: &str, desc: bool) -> Self {
        let order = if field == Seq::FIELD {
            Order::Seq {
                members: BTreeMap::new(),
                desc,
            }
        } else {
            Order::default()
        };
        Self {
            order,
            values: FastMap::default(),
        }
    }

    /// Members held.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn remove(&mut self, key: &str, desc: bool) {
        if let Some((key, value)) = self.values.remove_entry(key) {
            self.take(value, desc, key);
        }
    }

    /// Takes a member out of `order`, returning its key string there.
    fn take(&mut self, value: SortKey, desc: bool, key: Box<str>) -> Option<Box<str>> {
        match (&mut self.order, value) {
            (Order::Seq { members, .. }, SortKey::Seq(seq)) => members.remove(&seq),
            (Order::Seq { .. }, _) => None,
            (Order::Any(order), value) => order
                .take(&OrderKey { value, desc, key })
                .map(|stored| stored.key),
        }
    }

    /// Puts `key` at `value`'s position. Moving a member reuses its two
    /// key strings (the map's and the order's) instead of allocating them
    /// again: every update of a list view's member moves it (a `_seq` sort
    /// changes on every write), so this runs once per change per view.
    pub(crate) fn insert(&mut self, key: &str, value: SortKey, desc: bool) {
        if matches!(self.order, Order::Seq { .. }) && !matches!(value, SortKey::Seq(_)) {
            // Not a `_seq` after all (no entity the store wrote has one):
            // the general order holds it.
            self.generalize();
        }
        let (map_key, order_key) = match self.values.remove_entry(key) {
            Some((map_key, old)) => {
                let order_key = self.take(old, desc, map_key.clone());
                (map_key, order_key.unwrap_or_else(|| key.into()))
            }
            None => (key.into(), key.into()),
        };
        self.values.insert(map_key, value.clone());
        let order_key = match (&mut self.order, &value) {
            (Order::Seq { members, .. }, SortKey::Seq(seq)) => {
                let Some(displaced) = members.insert(*seq, order_key) else {
                    return;
                };
                // Two members at one `_seq` (no two entities the store
                // wrote): the general order tells them apart by key.
                let order_key = members.insert(*seq, displaced).expect("inserted above");
                self.generalize();
                order_key
            }
            _ => order_key,
        };
        if let Order::Any(order) = &mut self.order {
            order.insert(OrderKey {
                value,
                desc,
                key: order_key,
            });
        }
    }

    /// Moves a `_seq` order's members into the general order.
    fn generalize(&mut self) {
        if let Order::Seq { members, desc } = std::mem::take(&mut self.order) {
            let order = members
                .into_iter()
                .map(|(seq, key)| OrderKey {
                    value: SortKey::Seq(seq),
                    desc,
                    key,
                })
                .collect();
            self.order = Order::Any(order);
        }
    }

    /// An index of these members (distinct keys) of a view sorted by
    /// `field`, built in one go: sorted once and bulk-loaded, several times
    /// faster than inserting each (a restart rebuilds every list view over
    /// the whole store).
    pub(crate) fn from_members<'a>(
        members: impl Iterator<Item = (&'a String, SortKey)>,
        field: &str,
        desc: bool,
    ) -> Self {
        let mut index = Self::for_field(field, desc);
        let mut order = Vec::new();
        for (key, value) in members {
            index.values.insert(Box::from(key.as_str()), value.clone());
            order.push(OrderKey {
                value,
                desc,
                key: key.as_str().into(),
            });
        }
        if let Order::Seq { members, .. } = &mut index.order {
            let by_seq = order.iter().map_while(|m| match m.value {
                SortKey::Seq(seq) => Some((seq, m.key.clone())),
                SortKey::Value(_) => None,
            });
            *members = by_seq.collect();
            if members.len() == order.len() {
                return index;
            }
        }
        // Not all by distinct `_seq`s: the general order.
        index.order = Order::Any(order.into_iter().collect());
        index
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Keys at the window's positions, in order.
    pub(crate) fn window(&self, window: Window) -> Vec<String> {
        self.window_iter(window).map(str::to_owned).collect()
    }

    /// The same keys, borrowed.
    pub(crate) fn window_iter(&self, window: Window) -> Box<dyn Iterator<Item = &str> + '_> {
        let take = window
            .end
            .map_or(usize::MAX, |end| end.saturating_sub(window.start));
        match &self.order {
            Order::Seq {
                members,
                desc: true,
            } => Box::new(
                members
                    .values()
                    .rev()
                    .skip(window.start)
                    .take(take)
                    .map(|k| &**k),
            ),
            Order::Seq {
                members,
                desc: false,
            } => Box::new(members.values().skip(window.start).take(take).map(|k| &**k)),
            Order::Any(order) => {
                Box::new(order.iter().skip(window.start).take(take).map(|k| &*k.key))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl OrderedIndex {
        fn order_len(&self) -> usize {
            match &self.order {
                Order::Seq { members, .. } => members.len(),
                Order::Any(order) => order.len(),
            }
        }
    }

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
        assert_eq!((index.order_len(), index.len()), (2, 2));
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
                "n",
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

    #[test]
    fn a_seq_order_lists_exactly_what_the_general_order_does() {
        let seq = |n: u64| SortKey::Seq(n);
        let all = Window {
            start: 0,
            end: None,
        };
        for desc in [false, true] {
            let mut by_seq = OrderedIndex::for_field(Seq::FIELD, desc);
            let mut general = OrderedIndex::for_field("other", desc);
            assert!(matches!(by_seq.order, Order::Seq { .. }));
            // Created, then moved by later writes, some removed.
            for n in 1..=300u64 {
                let key = format!("k{}", n % 120);
                by_seq.insert(&key, seq(n), desc);
                general.insert(&key, seq(n), desc);
                if n % 7 == 0 {
                    let gone = format!("k{}", (n * 3) % 120);
                    by_seq.remove(&gone, desc);
                    general.remove(&gone, desc);
                }
            }
            assert_eq!(by_seq.window(all), general.window(all));
            let window = Window {
                start: 5,
                end: Some(17),
            };
            assert_eq!(by_seq.window(window), general.window(window));
            assert_eq!(
                (by_seq.len(), by_seq.order_len()),
                (general.len(), general.order_len())
            );
            let members: Vec<(String, SortKey)> = by_seq
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let built = OrderedIndex::from_members(
                members.iter().map(|(k, v)| (k, v.clone())),
                Seq::FIELD,
                desc,
            );
            assert!(matches!(built.order, Order::Seq { .. }));
            assert_eq!(built.window(all), by_seq.window(all));
            // A value that is no `_seq` moves the index to the general order,
            // keeping every member.
            by_seq.insert("odd", SortKey::from(SortValue::Number(1.0)), desc);
            general.insert("odd", SortKey::from(SortValue::Number(1.0)), desc);
            assert!(matches!(by_seq.order, Order::Any(_)));
            assert_eq!(by_seq.window(all), general.window(all));
        }
    }

    #[test]
    fn two_members_at_one_seq_are_both_kept() {
        let mut index = OrderedIndex::for_field(Seq::FIELD, true);
        index.insert("a", SortKey::Seq(5), true);
        index.insert("b", SortKey::Seq(5), true);
        let all = Window {
            start: 0,
            end: None,
        };
        assert_eq!(index.window(all), ["a", "b"]);
        assert_eq!(index.order_len(), 2);
    }
}
