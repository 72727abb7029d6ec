//! The ordered index of a list view and the windows read from it.
//!
//! A list view's members live in a `BTreeSet` ordered by (sort value,
//! direction, key), with each member's current sort value in a map beside
//! it so an update can find and move it in O(log n); or, for a view sorted
//! by `_seq` (most are), in a `BTreeMap` by `_seq` alone (no two entities
//! share one), with a hash table of `_seq`s alone to find a member by key.
//! A window (`skip`/`take`) is
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
use std::hash::BuildHasher;

use hashbrown::HashTable;

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
}

/// The two shapes of an index. Most list views sort by `_seq`, which no
/// two entities share: their members are ordered by it alone, 24 bytes an
/// entry against 40 (with the direction and the tie-breaking key), and
/// compared as integers; and a member is found by key through a table of
/// `_seq`s alone, 8 bytes a slot, that hashes the key the order holds
/// instead of holding a copy of it and its sort value (a map from key to
/// value cost about 75 bytes per member of a million: BENCHMARKS.md,
/// "memory per entity").
enum Order {
    /// By `_seq` (each member's [`SortKey::Seq`]).
    Seq {
        members: BTreeMap<u64, Box<str>>,
        /// Each member's `_seq`, in slots found by the hash of its key.
        positions: HashTable<u64>,
        hasher: foldhash::fast::RandomState,
        desc: bool,
    },
    /// By any sort value, then key.
    Any {
        order: BTreeSet<OrderKey>,
        /// Each member's current sort value, to find it in `order`.
        values: FastMap<Box<str>, SortKey>,
    },
}

impl Default for Order {
    fn default() -> Self {
        Order::Any {
            order: BTreeSet::new(),
            values: FastMap::default(),
        }
    }
}

impl Order {
    fn by_seq(desc: bool) -> Self {
        Order::Seq {
            members: BTreeMap::new(),
            positions: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            desc,
        }
    }
}

/// Where `key`'s `_seq` is in `positions`, comparing the key `members`
/// holds at each candidate `_seq`.
fn seq_of(
    members: &BTreeMap<u64, Box<str>>,
    positions: &HashTable<u64>,
    hash: u64,
    key: &str,
) -> Option<u64> {
    positions
        .find(hash, |seq| members.get(seq).is_some_and(|k| **k == *key))
        .copied()
}

/// Makes room for one more slot in `positions`, whose slots are exactly
/// `members`. The table grows by being rebuilt from `members`, never by
/// rehashing its slots, each of which would be a search of `members` for
/// its key.
fn reserve_one(
    members: &BTreeMap<u64, Box<str>>,
    positions: &mut HashTable<u64>,
    hasher: &foldhash::fast::RandomState,
) {
    if positions.len() == positions.capacity() {
        *positions = positions_of(members, hasher, (members.len() + 1) * 2);
    }
}

/// A table of `members`' `_seq`s with room for `capacity`, each key read
/// once, in order.
fn positions_of(
    members: &BTreeMap<u64, Box<str>>,
    hasher: &foldhash::fast::RandomState,
    capacity: usize,
) -> HashTable<u64> {
    let mut positions = HashTable::with_capacity(capacity);
    for (seq, key) in members {
        positions.insert_unique(hasher.hash_one(&**key), *seq, |_| {
            unreachable!("sized above")
        });
    }
    positions
}

impl OrderedIndex {
    /// An empty index of a view sorted by `field`.
    pub(crate) fn for_field(field: &str, desc: bool) -> Self {
        let order = if field == Seq::FIELD {
            Order::by_seq(desc)
        } else {
            Order::default()
        };
        Self { order }
    }

    /// Members held.
    pub(crate) fn len(&self) -> usize {
        match &self.order {
            Order::Seq { members, .. } => members.len(),
            Order::Any { values, .. } => values.len(),
        }
    }

    /// The members' keys, in no particular order.
    pub(crate) fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.order {
            Order::Seq { members, .. } => Box::new(members.values().map(|k| &**k)),
            Order::Any { values, .. } => Box::new(values.keys().map(|k| &**k)),
        }
    }

    /// Takes a member out (if it is one).
    pub(crate) fn remove(&mut self, key: &str, desc: bool) {
        match &mut self.order {
            Order::Seq {
                members,
                positions,
                hasher,
                ..
            } => {
                let hash = hasher.hash_one(key);
                let found =
                    positions.find_entry(hash, |seq| members.get(seq).is_some_and(|k| **k == *key));
                if let Ok(slot) = found {
                    let (seq, _) = slot.remove();
                    members.remove(&seq);
                }
            }
            Order::Any { order, values } => {
                if let Some((key, value)) = values.remove_entry(key) {
                    order.remove(&OrderKey { value, desc, key });
                }
            }
        }
    }

    /// Puts `key` at `value`'s position. Moving a member reuses its key
    /// string instead of allocating it again: every update of a list
    /// view's member moves it (a `_seq` sort changes on every write), so
    /// this runs once per change per view.
    pub(crate) fn insert(&mut self, key: &str, value: SortKey, desc: bool) {
        if let (Order::Seq { members, .. }, SortKey::Seq(seq)) = (&self.order, &value) {
            // Two members at one `_seq` (no two entities the store wrote
            // have one) need the general order, which tells them apart by key.
            if members.get(seq).is_some_and(|held| **held != *key) {
                self.generalize();
            }
        } else if matches!(self.order, Order::Seq { .. }) {
            // Not a `_seq` after all (no entity the store wrote has one):
            // the general order holds it.
            self.generalize();
        }
        match (&mut self.order, value) {
            (
                Order::Seq {
                    members,
                    positions,
                    hasher,
                    ..
                },
                SortKey::Seq(seq),
            ) => {
                let hash = hasher.hash_one(key);
                let found =
                    positions.find_entry(hash, |s| members.get(s).is_some_and(|k| **k == *key));
                if let Ok(mut slot) = found {
                    let old = std::mem::replace(slot.get_mut(), seq);
                    let moved = members.remove(&old).unwrap_or_else(|| key.into());
                    members.insert(seq, moved);
                    return;
                }
                reserve_one(members, positions, hasher);
                members.insert(seq, key.into());
                positions.insert_unique(hash, seq, |_| unreachable!("reserved above"));
            }
            (Order::Any { order, values }, value) => {
                let (map_key, order_key) = match values.remove_entry(key) {
                    Some((map_key, old)) => {
                        let order_key = order
                            .take(&OrderKey {
                                value: old,
                                desc,
                                key: map_key.clone(),
                            })
                            .map(|stored| stored.key);
                        (map_key, order_key.unwrap_or_else(|| key.into()))
                    }
                    None => (key.into(), key.into()),
                };
                values.insert(map_key, value.clone());
                order.insert(OrderKey {
                    value,
                    desc,
                    key: order_key,
                });
            }
            (Order::Seq { .. }, _) => unreachable!("generalized above"),
        }
    }

    /// Moves a `_seq` order's members into the general order.
    fn generalize(&mut self) {
        if let Order::Seq { members, desc, .. } = std::mem::take(&mut self.order) {
            let values = members
                .iter()
                .map(|(seq, key)| (key.clone(), SortKey::Seq(*seq)))
                .collect();
            let order = members
                .into_iter()
                .map(|(seq, key)| OrderKey {
                    value: SortKey::Seq(seq),
                    desc,
                    key,
                })
                .collect();
            self.order = Order::Any { order, values };
        }
    }

    /// An index of these members (distinct keys) of a view sorted by
    /// `field`, built in one go: sorted once and bulk-loaded, several times
    /// faster than inserting each (a restart rebuilds every list view over
    /// the whole store).
    pub(crate) fn from_members<'a>(
        members: impl Iterator<Item = (&'a str, SortKey)>,
        field: &str,
        desc: bool,
    ) -> Self {
        let order: Vec<OrderKey> = members
            .map(|(key, value)| OrderKey {
                value,
                desc,
                key: key.into(),
            })
            .collect();
        let all_seq = order.iter().all(|m| matches!(m.value, SortKey::Seq(_)));
        if field == Seq::FIELD && all_seq {
            let by_seq: BTreeMap<u64, Box<str>> = order
                .iter()
                .filter_map(|m| match m.value {
                    SortKey::Seq(seq) => Some((seq, m.key.clone())),
                    SortKey::Value(_) => None,
                })
                .collect();
            if by_seq.len() == order.len() {
                let hasher = foldhash::fast::RandomState::default();
                let positions = positions_of(&by_seq, &hasher, by_seq.len());
                return Self {
                    order: Order::Seq {
                        members: by_seq,
                        positions,
                        hasher,
                        desc,
                    },
                };
            }
        }
        // Not all by distinct `_seq`s: the general order.
        let values = order
            .iter()
            .map(|m| (m.key.clone(), m.value.clone()))
            .collect();
        Self {
            order: Order::Any {
                order: order.into_iter().collect(),
                values,
            },
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        match &self.order {
            Order::Seq {
                members,
                positions,
                hasher,
                ..
            } => seq_of(members, positions, hasher.hash_one(key), key).is_some(),
            Order::Any { values, .. } => values.contains_key(key),
        }
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
                ..
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
                ..
            } => Box::new(members.values().skip(window.start).take(take).map(|k| &**k)),
            Order::Any { order, .. } => {
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
                Order::Any { order, .. } => order.len(),
            }
        }

        fn value_of(&self, key: &str) -> Option<SortKey> {
            match &self.order {
                Order::Seq {
                    members,
                    positions,
                    hasher,
                    ..
                } => seq_of(members, positions, hasher.hash_one(key), key).map(SortKey::Seq),
                Order::Any { values, .. } => values.get(key).cloned(),
            }
        }

        fn members(&self) -> Vec<(String, SortKey)> {
            let mut members: Vec<_> = self
                .keys()
                .map(|k| (k.to_owned(), self.value_of(k).expect("a member")))
                .collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            members
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
        assert_eq!(index.value_of("a"), Some(text("4")));
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
                keys.iter().enumerate().map(|(i, k)| (k.as_str(), value(i))),
                "n",
                desc,
            );
            let all = Window {
                start: 0,
                end: None,
            };
            assert_eq!(built.window(all), inserted.window(all));
            assert_eq!(built.members(), inserted.members());
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
            // Every key is found (or not) through the `_seq` table as the
            // general order's map finds it, across the table's rebuilds.
            for n in 0..130 {
                let key = format!("k{n}");
                assert_eq!(by_seq.contains(&key), general.contains(&key), "{key}");
                assert_eq!(by_seq.value_of(&key), general.value_of(&key), "{key}");
            }
            let window = Window {
                start: 5,
                end: Some(17),
            };
            assert_eq!(by_seq.window(window), general.window(window));
            assert_eq!(
                (by_seq.len(), by_seq.order_len()),
                (general.len(), general.order_len())
            );
            let members = by_seq.members();
            let built = OrderedIndex::from_members(
                members.iter().map(|(k, v)| (k.as_str(), v.clone())),
                Seq::FIELD,
                desc,
            );
            assert!(matches!(built.order, Order::Seq { .. }));
            assert_eq!(built.window(all), by_seq.window(all));
            // A value that is no `_seq` moves the index to the general order,
            // keeping every member.
            by_seq.insert("odd", SortKey::from(SortValue::Number(1.0)), desc);
            general.insert("odd", SortKey::from(SortValue::Number(1.0)), desc);
            assert!(matches!(by_seq.order, Order::Any { .. }));
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
