//! The ordered index of a list view and the windows read from it.
//!
//! A list view's members live in a `BTreeSet` ordered by (sort value,
//! direction, key), with each member's current sort value kept beside it so
//! an update can find and move it in O(log n). A window (`skip`/`take`) is
//! read by walking the set from its start: O(skip + take), independent of
//! how many entities the view holds.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use vista_plugin_api::view::SortValue;

use crate::vocab::FastMap;

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
    pub(crate) value: SortValue,
    pub(crate) desc: bool,
    pub(crate) key: String,
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
    pub(crate) values: FastMap<String, SortValue>,
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
    pub(crate) fn insert(&mut self, key: &str, value: SortValue, desc: bool) {
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
                    .map_or_else(|| key.to_owned(), |stored| stored.key);
                (probe.key, order_key)
            }
            None => (key.to_owned(), key.to_owned()),
        };
        self.values.insert(map_key, value.clone());
        self.order.insert(OrderKey {
            value,
            desc,
            key: order_key,
        });
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Keys at the window's positions, in order.
    pub(crate) fn window(&self, window: Window) -> Vec<String> {
        self.window_iter(window).cloned().collect()
    }

    /// The same keys, borrowed.
    pub(crate) fn window_iter(&self, window: Window) -> impl Iterator<Item = &String> {
        let take = window
            .end
            .map_or(usize::MAX, |end| end.saturating_sub(window.start));
        self.order
            .iter()
            .skip(window.start)
            .take(take)
            .map(|k| &k.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SortValue {
        SortValue::Text(s.to_owned())
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
}
