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
        if let Some(value) = self.values.remove(key) {
            self.order.remove(&OrderKey {
                value,
                desc,
                key: key.to_owned(),
            });
        }
    }

    pub(crate) fn insert(&mut self, key: &str, value: SortValue, desc: bool) {
        self.remove(key, desc);
        self.values.insert(key.to_owned(), value.clone());
        self.order.insert(OrderKey {
            value,
            desc,
            key: key.to_owned(),
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
