//! Connections on the engine thread: their outboxes, subscriptions (the
//! `subscribed` frame and the snapshot, queued in the same step as the
//! view registers the subscriber, so the snapshot and the live frames after
//! it are exact), view-change notices, and the idle sweep.
//!
//! Nothing here writes to a socket: everything goes to the connection's
//! [`Outbox`], whose writer thread encodes and sends it.

use std::time::Duration;

use super::Engine;
use crate::codes::{CloseReason, IssueCode};
use crate::frame::socket_issue;
use crate::outbox::{Outbox, Outgoing, SnapshotJob};
use crate::views::{Notice, Removed, SubscribeError};
use crate::vocab::{ConnId, SubscribeRequest};

impl Engine {
    /// Starts (or restarts) a subscription: queues the `subscribed` frame
    /// and the snapshot on the connection's outbox, or a `view-not-found`
    /// socket issue (the subscription then waits for the view to appear).
    pub(super) fn subscribe(&mut self, conn: ConnId, request: &SubscribeRequest) {
        let Some(outbox) = self.conns.get(&conn).cloned() else {
            return;
        };
        let replaced = self
            .views
            .unsubscribe(conn, &request.view, request.key.as_deref());
        if let Removed::Active(generation) = replaced {
            // A snapshot still queued for the replaced subscription is stale.
            outbox.cancel_snapshot(generation);
        } else if replaced == Removed::Nothing
            && self.views.subscription_count(conn) >= self.max_subscriptions
        {
            outbox.push_reply(Outgoing::Frame(socket_issue(
                IssueCode::SubscriptionLimitExceeded,
                &format!(
                    "at most {} subscriptions per connection",
                    self.max_subscriptions
                ),
                false,
            )));
            return;
        }
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        match self.views.subscribe(conn, request, &store) {
            Ok(start) => start.send(conn, &mut |_, notice| tell(&outbox, notice)),
            Err(SubscribeError::InvalidFilter(message)) => {
                outbox.push_reply(Outgoing::Frame(socket_issue(
                    IssueCode::InvalidFilter,
                    &message,
                    false,
                )));
            }
            Err(SubscribeError::ViewNotFound) => {
                tracing::debug!(conn, view = %request.view, "subscribe to unknown view (pending)");
                outbox.push_reply(Outgoing::Frame(socket_issue(
                    IssueCode::ViewNotFound,
                    &format!(
                        "no view named {:?}; the subscription starts if a plugin provides it",
                        request.view
                    ),
                    false,
                )));
            }
        }
    }

    pub(super) fn cancel_snapshot(&self, conn: ConnId, generation: u64) {
        if let Some(outbox) = self.conns.get(&conn) {
            outbox.cancel_snapshot(generation);
        }
    }

    /// Liveness: pings clients quiet for a third of `timeout` and closes
    /// those silent for longer than `timeout` (no message, no pong) with
    /// `idle-timeout:`. Returns (pinged, closed).
    pub(super) fn sweep_idle(&self, timeout: Duration) -> (usize, usize) {
        let (mut pinged, mut closed) = (0, 0);
        for (conn, outbox) in &self.conns {
            let silent = outbox.silent_for();
            if silent > timeout {
                tracing::info!(conn, silent_s = silent.as_secs(), "closing a silent client");
                outbox.push_reply(Outgoing::close(
                    CloseReason::IdleTimeout,
                    format_args!("nothing received for {} s", silent.as_secs()),
                ));
                closed += 1;
            } else if silent > timeout / 3 {
                outbox.push_reply(Outgoing::Ping);
                pinged += 1;
            }
        }
        crate::metrics::get().idle_disconnects.inc_by(closed as u64);
        (pinged, closed)
    }

    /// Queues view-change notices on their connections' outboxes.
    pub(super) fn send_notes(&self, notes: Vec<(ConnId, Notice)>) {
        for (conn, notice) in notes {
            if let Some(outbox) = self.conns.get(&conn) {
                tell(outbox, notice);
            }
        }
    }
}

/// Queues what views asked to tell a connection.
pub(super) fn tell(outbox: &Outbox, notice: Notice) {
    match notice {
        Notice::Frame(frame) => outbox.push_reply(Outgoing::Frame(frame)),
        Notice::Snapshot {
            snapshot,
            generation,
        } => outbox.push_reply(Outgoing::Snapshot(SnapshotJob {
            snapshot,
            generation,
        })),
        Notice::Cancel(generation) => {
            outbox.cancel_snapshot(generation);
        }
    }
}
