//! A connection's bounded outbox: the only link between the engine and a
//! socket writer.
//!
//! The engine pushes while holding its lock, so pushing never waits. Live
//! frames are queued as shared bytes until the queued bytes pass the bound.
//! Past it the client is slow, and the outbox *conflates*: it keeps at most
//! one pending update per (view, key), folding later updates into it
//! ([`EntityUpdate::absorb`]), so memory is bounded by the number of keys
//! and the client catches up with the latest state once it reads again.
//! Append-view frames cannot be conflated (every event matters): past the
//! bound the client is closed with a `slow-consumer:` reason instead.
//! Nothing is ever dropped in silence; both outcomes are counted and logged
//! by the caller.
//!
//! Replies to the client's own requests (the `subscribed` frame, snapshot
//! jobs, socket issues) count against the same bound: one reply is always
//! accepted, however large (a snapshot of a big view), but a client that
//! lets replies pile up past the bound (subscribing again and again without
//! reading) is closed with `slow-consumer:`. A queued snapshot counts its
//! estimated encoded size ([`Snapshot::estimated_bytes`]) and is dropped
//! from the queue if its subscription is replaced or removed before the
//! writer takes it ([`Outbox::cancel_snapshot`]). Before a reply is queued,
//! pending conflated updates are moved into the queue so the client sees
//! everything in order.
//!
//! The writer drains everything queued at once and flushes once per drain.
//!
//! The engine pushes the live frames of each slice of changes it runs
//! through the views via [`Deliveries`]: gathered per connection, then
//! pushed once per connection (one lock), and counted once per slice. The
//! writers are woken only after the request is answered and the views have
//! caught up ([`WakeUps`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::codes::{CloseReason, NORMAL_CLOSE};
use crate::frame::{EntityUpdate, Frame, Snapshot};
use crate::vocab::{ConnId, FastMap};

/// A snapshot queued for one subscription.
pub struct SnapshotJob {
    /// The (possibly shared) snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The subscription it starts (see [`Outbox::cancel_snapshot`]).
    pub generation: u64,
}

/// The most a writer keeps of the queue it emptied, in items (about 14 KiB):
/// a connection that once took a burst does not hold its size forever.
pub const SPARE_CAPACITY: usize = 256;

/// Something waiting to be written to one socket.
pub enum Outgoing {
    /// A live frame's shared bytes (a binary message). Only the bytes are
    /// kept: the frame's update is needed only when conflating, and not
    /// touching its reference count keeps the fan-out path cheap.
    Live(Bytes),
    /// An encoded frame.
    Frame(Frame),
    /// A conflated update, encoded by the writer (it is this client's own).
    /// Boxed: the rare variant would otherwise double the size of every
    /// queued item.
    Update(Box<EntityUpdate>),
    /// A snapshot, encoded in batches off the engine (and shared with
    /// other subscribers of the same snapshot).
    Snapshot(SnapshotJob),
    /// A WebSocket ping (liveness check of a quiet client).
    Ping,
    /// Close the connection with this code and reason, after what is queued.
    Close {
        /// WebSocket close code.
        code: u16,
        /// `"<kebab-code>: <text>"`.
        reason: String,
    },
}

impl Outgoing {
    /// A close for `why`: its code, and the reason `"<why>: <detail>"`.
    pub fn close(why: CloseReason, detail: impl std::fmt::Display) -> Self {
        Outgoing::Close {
            code: why.code(),
            reason: why.with(detail),
        }
    }

    /// A normal close (1000, no reason).
    pub fn normal_close() -> Self {
        Outgoing::Close {
            code: NORMAL_CLOSE,
            reason: String::new(),
        }
    }
}

/// What happened to a live frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued as is.
    Queued,
    /// Folded into the pending update of its key (slow client).
    Conflated,
}

/// Why a live frame was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// An append frame found the outbox over its bound: the connection is
    /// now being closed with `slow-consumer:`.
    SlowConsumer,
    /// The connection is already closing.
    Closed,
}

/// Pending updates of a slow client, one per (view, key), in first-seen order.
#[derive(Default)]
struct Conflation {
    order: Vec<(Arc<str>, String)>,
    pending: HashMap<(Arc<str>, String), EntityUpdate>,
}

impl Conflation {
    fn absorb(&mut self, update: &EntityUpdate) {
        let id = (update.view.clone(), update.key.clone());
        match self.pending.get_mut(&id) {
            Some(pending) => pending.absorb(update),
            None => {
                self.order.push(id.clone());
                self.pending.insert(id, update.clone());
            }
        }
    }

    fn take(&mut self) -> impl Iterator<Item = EntityUpdate> + '_ {
        let pending = &mut self.pending;
        self.order
            .drain(..)
            .filter_map(move |id| pending.remove(&id))
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

struct Queue {
    items: VecDeque<Outgoing>,
    /// Bytes queued: live frames, replies, snapshot estimates.
    queued_bytes: usize,
    /// Non-empty while the client is behind.
    conflation: Conflation,
    /// Set once a close was queued; nothing more is accepted.
    closing: bool,
}

impl Queue {
    /// Moves pending conflated updates into the queue, in order.
    fn settle_conflation(&mut self) {
        let updates: Vec<EntityUpdate> = self.conflation.take().collect();
        self.items
            .extend(updates.into_iter().map(|u| Outgoing::Update(Box::new(u))));
    }
}

/// The outbox shared by the engine (producer) and the socket writer (consumer).
pub struct Outbox {
    conn: ConnId,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Bound on queued live-frame bytes before conflating.
    max_live_bytes: usize,
    /// When the client last sent anything (pongs included), in
    /// milliseconds since [`clock_origin`]; read by the idle sweeper.
    last_heard_ms: AtomicU64,
}

/// The origin of [`Outbox`] liveness timestamps.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64
}

impl Outbox {
    /// An empty outbox for connection `conn`, bounded at `max_live_bytes`
    /// of queued frames.
    pub fn new(conn: ConnId, max_live_bytes: usize) -> Self {
        Self {
            conn,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                queued_bytes: 0,
                conflation: Conflation::default(),
                closing: false,
            }),
            wake: Notify::new(),
            max_live_bytes,
            last_heard_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Records that the client sent something.
    pub fn heard_from_client(&self) {
        self.last_heard_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long the client has been silent.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)))
    }

    /// Queues a live frame, conflating or closing when the client is behind.
    pub fn push_live(&self, frame: &Frame) -> Result<Pushed, PushError> {
        let mut queue = self.queue.lock().expect("outbox lock");
        let outcome = self.push_locked(&mut queue, frame);
        drop(queue);
        self.wake.notify_one();
        outcome
    }

    /// Queues the live frames of one ingest request under a single lock
    /// (the fan-out hot path), without waking the writer: the caller wakes
    /// it through [`WakeUps`]. Calls `outcome` per frame.
    fn queue_live_batch<'f>(
        &self,
        frames: impl IntoIterator<Item = &'f Frame>,
        mut outcome: impl FnMut(Result<Pushed, PushError>),
    ) {
        let mut queue = self.queue.lock().expect("outbox lock");
        for frame in frames {
            outcome(self.push_locked(&mut queue, frame));
        }
    }

    fn push_locked(&self, queue: &mut Queue, frame: &Frame) -> Result<Pushed, PushError> {
        if queue.closing {
            return Err(PushError::Closed);
        }
        let behind =
            !queue.conflation.is_empty() || queue.queued_bytes + frame.len() > self.max_live_bytes;
        if !behind {
            queue.queued_bytes += frame.len();
            queue.items.push_back(Outgoing::Live(frame.bytes.clone()));
            Ok(Pushed::Queued)
        } else {
            match frame.update.as_deref().filter(|u| u.conflatable()) {
                Some(update) => {
                    queue.conflation.absorb(update);
                    Ok(Pushed::Conflated)
                }
                None => {
                    queue.closing = true;
                    queue.items.push_back(Outgoing::close(
                        CloseReason::SlowConsumer,
                        format_args!(
                            "more than {} bytes of append-view frames queued",
                            self.max_live_bytes
                        ),
                    ));
                    Err(PushError::SlowConsumer)
                }
            }
        }
    }

    /// Queues a reply to the client's own request (subscribed frame,
    /// snapshot, socket issue), a ping or a close. A reply finding the
    /// queue already past the bound closes the client instead
    /// (`slow-consumer:`): it asks for more than it reads.
    pub fn push_reply(&self, item: Outgoing) {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.closing {
            return;
        }
        queue.settle_conflation();
        let size = match &item {
            Outgoing::Frame(frame) => frame.len(),
            Outgoing::Snapshot(job) => job.snapshot.estimated_bytes(),
            _ => 0,
        };
        if size > 0 && queue.queued_bytes > self.max_live_bytes {
            tracing::warn!(
                conn = self.conn,
                queued = queue.queued_bytes,
                "slow consumer: replies past the outbox bound; closing the connection"
            );
            crate::metrics::get().slow_consumer_disconnects.inc();
            queue.closing = true;
            queue.items.push_back(Outgoing::close(
                CloseReason::SlowConsumer,
                format_args!(
                    "more than {} bytes of replies and snapshots queued",
                    self.max_live_bytes
                ),
            ));
        } else {
            if let Outgoing::Close { .. } = item {
                queue.closing = true;
            }
            queue.queued_bytes += size;
            queue.items.push_back(item);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Drops the snapshot queued for subscription `generation`, if the
    /// writer has not taken it yet. Returns whether one was dropped.
    pub fn cancel_snapshot(&self, generation: u64) -> bool {
        let mut queue = self.queue.lock().expect("outbox lock");
        let Some(at) = queue.items.iter().position(
            |item| matches!(item, Outgoing::Snapshot(job) if job.generation == generation),
        ) else {
            return false;
        };
        if let Some(Outgoing::Snapshot(job)) = queue.items.remove(at) {
            queue.queued_bytes = queue
                .queued_bytes
                .saturating_sub(job.snapshot.estimated_bytes());
        }
        crate::metrics::get().snapshots_cancelled.inc();
        true
    }

    /// Closes the connection with `code` and `reason` after what is queued,
    /// or, with `discard_queued`, instead of it (shutdown after its grace
    /// period: the close goes out next even to a client that fell behind).
    pub fn close(&self, code: u16, reason: &str, discard_queued: bool) {
        let mut queue = self.queue.lock().expect("outbox lock");
        if discard_queued {
            queue.items.clear();
            queue.conflation = Conflation::default();
            queue.queued_bytes = 0;
        } else if queue.closing {
            return;
        }
        queue.closing = true;
        queue.items.push_back(Outgoing::Close {
            code,
            reason: reason.to_owned(),
        });
        drop(queue);
        self.wake.notify_one();
    }

    /// Waits until something is queued, then takes all of it (conflated
    /// updates last, in first-seen order) in exchange for `spare`, an empty
    /// queue: the writer hands back the one it emptied last time, so a busy
    /// client's two queues keep their capacity rather than one being
    /// allocated per drain (under the lock) and grown again while the
    /// engine pushes (see [`SPARE_CAPACITY`] for what an idle one keeps).
    pub async fn drain_into(&self, spare: &mut VecDeque<Outgoing>) {
        debug_assert!(spare.is_empty());
        loop {
            {
                let mut queue = self.queue.lock().expect("outbox lock");
                queue.settle_conflation();
                if !queue.items.is_empty() {
                    queue.queued_bytes = 0;
                    std::mem::swap(&mut queue.items, spare);
                    return;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Number of updates currently held back by conflation.
    pub fn conflated_len(&self) -> usize {
        self.queue
            .lock()
            .expect("outbox lock")
            .conflation
            .order
            .len()
    }
}

/// The open connections' outboxes. Looked up once per connection per
/// slice of changes, and `Deliveries` files every frame by connection: a
/// fast hash (connection ids are the host's own, not a client's choice)
/// rather than SipHash, which was 1-2% of the engine in profiles.
pub(crate) type Outboxes = FastMap<ConnId, Arc<Outbox>>;

/// The live frames of a slice of changes (a request's, or up to 64 of
/// them), gathered per connection and pushed once per connection: one
/// outbox lock per connection per slice instead of per frame (the outbox
/// lock is shared with that connection's writer task, on another core, so
/// per-frame locking costs a cache-line transfer per frame), and one
/// wake-up once the views have caught up ([`WakeUps`]). Each distinct frame
/// is stored once; connections hold indexes into `frames`. Also counts
/// what happened to the frames; metrics are updated once per slice.
pub(crate) struct Deliveries {
    frames: Vec<Frame>,
    pending: FastMap<ConnId, Vec<u32>>,
    /// Expected frames per connection, to size each connection's list once.
    per_connection_hint: usize,
    queued: u64,
    conflated: u64,
    slow_consumers: u64,
}

impl Deliveries {
    pub(crate) fn new(per_connection_hint: usize) -> Self {
        Self {
            frames: Vec::new(),
            pending: FastMap::default(),
            per_connection_hint: per_connection_hint.min(1024),
            queued: 0,
            conflated: 0,
            slow_consumers: 0,
        }
    }

    /// Gathers one live frame for one connection. Views hand the same frame
    /// to all its recipients in a row, so it is stored once.
    pub(crate) fn push(&mut self, conn: ConnId, frame: &Frame) {
        let same_as_last = self.frames.last().is_some_and(|last| {
            last.bytes.as_ptr() == frame.bytes.as_ptr() && last.len() == frame.len()
        });
        if !same_as_last {
            self.frames.push(frame.clone());
        }
        let index = (self.frames.len() - 1) as u32;
        let hint = self.per_connection_hint;
        self.pending
            .entry(conn)
            .or_insert_with(|| Vec::with_capacity(hint))
            .push(index);
    }

    /// Pushes everything gathered into the outboxes; their writers are
    /// woken when `wake_ups` is dropped.
    pub(crate) fn flush(mut self, conns: &Outboxes, wake_ups: &mut WakeUps) {
        let frames = std::mem::take(&mut self.frames);
        wake_ups.0.reserve(self.pending.len());
        for (conn, indexes) in std::mem::take(&mut self.pending) {
            let Some(outbox) = conns.get(&conn) else {
                continue;
            };
            wake_ups.0.push(Arc::clone(outbox));
            outbox.queue_live_batch(indexes.iter().map(|i| &frames[*i as usize]), |outcome| match outcome {
                Ok(Pushed::Queued) => self.queued += 1,
                Ok(Pushed::Conflated) => self.conflated += 1,
                Err(PushError::SlowConsumer) => {
                    self.slow_consumers += 1;
                    tracing::warn!(conn, "slow consumer: append-view frames past the outbox bound; closing the connection");
                }
                Err(PushError::Closed) => {}
            });
        }
        crate::metrics::get().frames_queued.inc_by(self.queued);
        crate::metrics::get()
            .frames_conflated
            .inc_by(self.conflated);
        crate::metrics::get()
            .slow_consumer_disconnects
            .inc_by(self.slow_consumers);
    }
}

/// Writers with frames queued for them, woken when this is dropped.
///
/// The engine drops it after it has answered the request whose frames were
/// queued. Wake-ups from the engine thread reach the runtime in order, so
/// waking 1,000 writers before answering puts the ingest request's answer
/// behind all of them: the poster waits for the whole fan-out before it can
/// send the next request, and each writer flushes one request's frames per
/// write. Answering first lets the next request be projected while the
/// writers write, and a writer that runs later finds more frames to send in
/// one write (fewer send calls per frame, the larger part of fan-out CPU).
/// Waking on drop means no path can forget to wake.
#[derive(Default)]
pub(crate) struct WakeUps(Vec<Arc<Outbox>>);

impl Drop for WakeUps {
    fn drop(&mut self) {
        for outbox in self.0.drain(..) {
            outbox.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Mode, Op};
    use serde_json::json;

    fn raw(n: usize) -> Frame {
        Frame {
            bytes: Bytes::from(vec![b'x'; n]),
            text: false,
            update: None,
        }
    }

    /// Takes everything queued, as a writer does.
    async fn drain(outbox: &Outbox) -> VecDeque<Outgoing> {
        let mut items = VecDeque::new();
        outbox.drain_into(&mut items).await;
        items
    }

    fn update(mode: Mode, key: &str, supply: u64) -> Frame {
        EntityUpdate {
            view: "Token/list".into(),
            mode,
            op: Op::Patch,
            key: key.into(),
            data: Some(Arc::new(json!({"supply": supply, "pad": "x".repeat(40)}))),
            text: None,
            append: Vec::new(),
            seq: None,
        }
        .into_frame()
    }

    #[tokio::test]
    async fn a_slow_client_gets_one_merged_update_per_key() {
        let outbox = Outbox::new(1, 200);
        assert_eq!(
            outbox.push_live(&update(Mode::List, "a", 1)),
            Ok(Pushed::Queued)
        );
        for supply in 2..50 {
            assert_eq!(
                outbox.push_live(&update(Mode::List, "a", supply)),
                Ok(Pushed::Conflated)
            );
            assert_eq!(
                outbox.push_live(&update(Mode::List, "b", supply)),
                Ok(Pushed::Conflated)
            );
        }
        assert_eq!(outbox.conflated_len(), 2, "memory bounded by keys");
        let items: Vec<Outgoing> = drain(&outbox).await.into();
        assert_eq!(items.len(), 3);
        let Outgoing::Update(a) = &items[1] else {
            panic!()
        };
        assert_eq!(
            (
                a.key.as_str(),
                a.data.as_deref().unwrap()["supply"].as_u64()
            ),
            ("a", Some(49))
        );
        // Caught up: frames queue normally again.
        assert_eq!(
            outbox.push_live(&update(Mode::List, "a", 50)),
            Ok(Pushed::Queued)
        );
    }

    #[tokio::test]
    async fn a_drained_queue_handed_back_keeps_its_capacity_and_order_holds() {
        let outbox = Outbox::new(1, 1 << 20);
        let mut spare = VecDeque::new();
        for n in 0..100 {
            outbox.push_live(&update(Mode::List, "a", n)).unwrap();
        }
        outbox.drain_into(&mut spare).await;
        assert_eq!(spare.len(), 100);
        let grown = spare.capacity();
        spare.clear();
        outbox.push_live(&update(Mode::List, "b", 1)).unwrap();
        outbox.drain_into(&mut spare).await;
        assert_eq!(spare.len(), 1);
        // The outbox now queues into the buffer the writer emptied.
        assert_eq!(outbox.queue.lock().unwrap().items.capacity(), grown);
        for n in 0..3 {
            outbox.push_live(&update(Mode::List, "c", n)).unwrap();
        }
        spare.clear();
        outbox.drain_into(&mut spare).await;
        let order: Vec<u64> = spare
            .iter()
            .map(|item| match item {
                Outgoing::Live(bytes) => {
                    let frame: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    frame["data"]["supply"].as_u64().unwrap()
                }
                _ => panic!("live frames only"),
            })
            .collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[tokio::test]
    async fn append_frames_past_the_bound_close_the_client() {
        let outbox = Outbox::new(1, 200);
        assert_eq!(
            outbox.push_live(&update(Mode::Append, "t1", 1)),
            Ok(Pushed::Queued)
        );
        assert_eq!(
            outbox.push_live(&update(Mode::Append, "t2", 1)),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(
            outbox.push_live(&update(Mode::Append, "t3", 1)),
            Err(PushError::Closed)
        );
        let items = drain(&outbox).await;
        assert!(
            matches!(&items[1], Outgoing::Close { reason, .. } if reason.starts_with("slow-consumer:"))
        );
    }

    #[tokio::test]
    async fn replies_keep_order_with_conflated_updates() {
        let outbox = Outbox::new(1, 100);
        outbox.push_reply(Outgoing::Frame(raw(50)));
        assert_eq!(outbox.push_live(&raw(10)), Ok(Pushed::Queued));
        assert_eq!(
            outbox.push_live(&update(Mode::List, "a", 1)),
            Ok(Pushed::Conflated)
        );
        outbox.push_reply(Outgoing::Frame(raw(5)));
        let items: Vec<Outgoing> = drain(&outbox).await.into();
        assert_eq!(items.len(), 4);
        assert!(
            matches!(items[2], Outgoing::Update(_)),
            "the update precedes the later reply"
        );
        assert!(matches!(&items[3], Outgoing::Frame(f) if f.len() == 5));
        assert!(matches!(&items[1], Outgoing::Live(b) if b.len() == 10));
    }

    fn snapshot_job(entries: usize, generation: u64) -> Outgoing {
        let entries = (0..entries)
            .map(|i| crate::frame::SnapshotEntry {
                key: format!("k{i}"),
                data: crate::entity::Stored::compact(Arc::new(json!({}))),
            })
            .collect();
        Outgoing::Snapshot(SnapshotJob {
            snapshot: Arc::new(Snapshot::new("T/list".into(), Mode::List, entries)),
            generation,
        })
    }

    #[tokio::test]
    async fn replies_piling_up_past_the_bound_close_the_client() {
        let outbox = Outbox::new(1, 1000);
        outbox.push_reply(snapshot_job(100, 1)); // one big reply is fine
        outbox.push_reply(snapshot_job(100, 2)); // the queue was already over
        let items: Vec<Outgoing> = drain(&outbox).await.into();
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[1], Outgoing::Close { code: 1008, reason } if reason.starts_with("slow-consumer:"))
        );
    }

    #[tokio::test]
    async fn a_cancelled_snapshot_leaves_the_queue_and_its_bytes() {
        let outbox = Outbox::new(1, 100_000);
        outbox.push_reply(snapshot_job(10, 1));
        outbox.push_reply(Outgoing::Frame(raw(5)));
        outbox.push_reply(snapshot_job(10, 2));
        assert!(outbox.cancel_snapshot(1));
        assert!(!outbox.cancel_snapshot(1), "already gone");
        assert!(outbox.cancel_snapshot(2));
        let items: Vec<Outgoing> = drain(&outbox).await.into();
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Outgoing::Frame(f) if f.len() == 5));
        assert_eq!(outbox.queue.lock().unwrap().queued_bytes, 0);
    }
}
