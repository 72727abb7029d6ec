//! Views a step behind the store: the changes of the last applied request,
//! waiting to be run through the views after the request is answered.
//!
//! Why: an ingest request's answer waits for its commit, and the next
//! request of a poster with one request in flight (the common bulk loader)
//! cannot reach its projector before that answer. Of the engine's work per
//! mutation, the store write is what makes a request *applied and visible*;
//! view maintenance and frame encoding (more than half of the engine's time
//! in a profile of ingest) only tell subscribers already connected. Done
//! after the answer, in slices, with the next request let through to its
//! projector between slices, it runs on one core while that projection
//! runs on the other.
//!
//! A request of several chunks (`COMMIT_CHUNK` mutations each) has them
//! applied back to back, and its views caught up after the answer too:
//! the answer of a 1,000-event request no longer waits for the first
//! chunk's views.
//!
//! What keeps this exact: the views are behind only from a request's first
//! applied chunk until the end of the turn that applied its last: a turn
//! ends behind only when the next one commits at once, never when it may
//! wait for a command. Every command but an ingest request (subscribes,
//! unsubscribes, view reads, plugin loads, projections coming back to be
//! committed, log records that may install a build) catches the views up
//! before it is handled, and the changes reach the views in the order they
//! were applied, each carrying its own entity and patch. So a subscription
//! still sees each mutation either in its snapshot or as a frame, and
//! frames still leave in mutation order. An ingest request let through
//! only starts a projection: it reads the store (already written) or the
//! projector's own mirror, never a view.
//!
//! Only while no `skip`/`take` window is subscribed
//! ([`crate::views::Views::windows_exist`]): a window's change reads other
//! entities (members entering it) from the store, which must not have moved
//! on yet. With a window subscribed, each change goes through the views
//! right after its mutation, as before.
//!
//! A change holds its entity (`Change::new`); a later mutation of the same
//! entity while that change waits would deep-copy it (`Arc::make_mut`), so
//! the apply catches up first when the entity it writes is held elsewhere
//! ([`crate::store::Store::is_shared`]).

use std::collections::VecDeque;

use crate::outbox::{Deliveries, Outboxes, WakeUps};
use crate::store::{Change, Store};
use crate::views::Views;

/// Changes run through the views per slice while requests may arrive: about
/// a tenth of a millisecond of view work, so a request waits little.
pub(super) const SLICE: usize = 64;

/// Changes applied to the store and not yet to the views, in order.
#[derive(Default)]
pub(super) struct Behind(VecDeque<Change>);

impl Behind {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn push(&mut self, change: Change) {
        self.0.push_back(change);
    }

    /// Runs up to `limit` waiting changes through the views and queues
    /// their frames; the writers are woken when `wake_ups` is dropped.
    pub(super) fn catch_up(
        &mut self,
        limit: usize,
        views: &mut Views,
        store: &Store,
        conns: &Outboxes,
        wake_ups: &mut WakeUps,
    ) {
        let count = limit.min(self.0.len());
        if count == 0 {
            return;
        }
        let mut deliveries = Deliveries::new(count);
        for change in self.0.drain(..count) {
            views.apply(&change, store, &mut |conn, frame| {
                deliveries.push(conn, frame)
            });
        }
        deliveries.flush(conns, wake_ups);
    }
}
