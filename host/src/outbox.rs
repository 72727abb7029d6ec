//! A connection's bounded outbox: the only link between the engine and a
//! socket writer.
//!
//! The engine pushes while holding its lock, so pushing never waits: live
//! frames beyond the byte bound are refused, the client is closed with a
//! `slow-consumer:` reason and the event is counted and logged, never
//! dropped in silence. Subscription replies (the `subscribed` frame and the
//! snapshot job) are always accepted, because their size is bounded by the
//! view rather than by the event rate, and they must stay in order with the
//! live frames that follow them.
//!
//! The writer drains everything queued at once and flushes once per drain.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::frame::{Frame, Mode, SnapshotEntry};

/// Something waiting to be written to one socket.
pub enum Outgoing {
    /// An encoded frame.
    Frame(Frame),
    /// A snapshot to encode in batches (50, then 100...) by the writer, off
    /// the engine lock.
    Snapshot {
        /// View id (the `entity` field of the frames).
        view: Arc<str>,
        /// Mode of the view.
        mode: Mode,
        /// Entities in view order.
        entries: Vec<SnapshotEntry>,
    },
    /// Close the connection with this code and reason, after what is queued.
    Close {
        /// WebSocket close code.
        code: u16,
        /// `"<kebab-code>: <text>"`.
        reason: String,
    },
}

/// Why a live frame was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The outbox was over its bound; the connection is now being closed.
    Overflow,
    /// The connection is already closing.
    Closed,
}

struct Queue {
    items: VecDeque<Outgoing>,
    /// Bytes of live frames queued (snapshots are not counted).
    live_bytes: usize,
    /// Set once a close was queued; nothing more is accepted.
    closing: bool,
}

/// The outbox shared by the engine (producer) and the socket writer (consumer).
pub struct Outbox {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Bound on queued live-frame bytes.
    max_live_bytes: usize,
}

impl Outbox {
    /// An empty outbox bounded at `max_live_bytes` of live frames.
    pub fn new(max_live_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                live_bytes: 0,
                closing: false,
            }),
            wake: Notify::new(),
            max_live_bytes,
        }
    }

    /// Queues a live frame; refuses (and starts closing) when over the bound.
    pub fn push_live(&self, frame: Frame) -> Result<(), PushError> {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closing {
            return Err(PushError::Closed);
        }
        if queue.live_bytes + frame.len() > self.max_live_bytes {
            queue.closing = true;
            queue.items.push_back(Outgoing::Close {
                code: 1008,
                reason: "slow-consumer: outbox overflow, reconnect to resync".into(),
            });
            drop(queue);
            self.wake.notify_one();
            return Err(PushError::Overflow);
        }
        queue.live_bytes += frame.len();
        queue.items.push_back(Outgoing::Frame(frame));
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a reply to the client's own request (subscribed frame,
    /// snapshot, socket issue), regardless of the bound.
    pub fn push_reply(&self, item: Outgoing) {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closing {
            return;
        }
        if let Outgoing::Close { .. } = item {
            queue.closing = true;
        }
        queue.items.push_back(item);
        drop(queue);
        self.wake.notify_one();
    }

    /// Waits until something is queued, then takes all of it.
    pub async fn drain(&self) -> VecDeque<Outgoing> {
        loop {
            {
                let mut queue = self.queue.lock().expect("outbox lock");
                if !queue.items.is_empty() {
                    queue.live_bytes = 0;
                    return std::mem::take(&mut queue.items);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Whether a close has been queued.
    pub fn is_closing(&self) -> bool {
        self.queue.lock().expect("outbox lock").closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: usize) -> Frame {
        Frame {
            bytes: Bytes::from(vec![b'x'; n]),
            text: false,
        }
    }

    #[tokio::test]
    async fn overflow_closes_instead_of_dropping_silently() {
        let outbox = Outbox::new(100);
        assert_eq!(outbox.push_live(frame(60)), Ok(()));
        assert_eq!(outbox.push_live(frame(60)), Err(PushError::Overflow));
        assert_eq!(outbox.push_live(frame(1)), Err(PushError::Closed));
        let items = outbox.drain().await;
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[1], Outgoing::Close { reason, .. } if reason.starts_with("slow-consumer:"))
        );
    }

    #[tokio::test]
    async fn replies_ignore_the_bound_and_drain_resets_it() {
        let outbox = Outbox::new(10);
        outbox.push_reply(Outgoing::Frame(frame(50)));
        assert_eq!(outbox.push_live(frame(10)), Ok(()));
        assert_eq!(outbox.drain().await.len(), 2);
        assert_eq!(outbox.push_live(frame(10)), Ok(()));
    }
}
