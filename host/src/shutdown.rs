//! Shutdown as one signal, the way mini-redis does it: every long-lived
//! task (the accept loop, the idle sweeper, the cluster's consumer and
//! request server, the demo feed) listens to one [`CancellationToken`],
//! and the tasks that must finish their work first (WebSocket connections
//! flushing their queues, ingest requests waiting for their answer) are
//! tracked, so the host waits on them rather than polling counters.
//!
//! `tokio-util`'s token and [`TaskTracker`] are the well-kept versions of
//! mini-redis's broadcast channel plus dropped-sender wait; written by hand
//! they would be the same two structures with more room for a missed wake.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

/// The host's one stop signal and the work it waits for.
#[derive(Default)]
pub struct Shutdown {
    stop: CancellationToken,
    clients: TaskTracker,
}

impl Shutdown {
    /// Tells every listening task to stop.
    pub fn signal(&self) {
        self.stop.cancel();
    }

    /// Completes once [`signal`](Self::signal) was called.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// A handle for a task that outlives a borrow of the host.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// `work` counted as a client's (a connection, an ingest request) until
    /// it completes: [`clients_done`](Self::clients_done) waits for it.
    pub fn track<F: Future>(&self, work: F) -> TrackedFuture<F> {
        self.clients.track_future(work)
    }

    /// Waits until every tracked client's work has completed, or `limit`
    /// passes; returns whether it all completed.
    pub async fn clients_done(&self, limit: Duration) -> bool {
        self.clients.close();
        tokio::time::timeout(limit, self.clients.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tracked_work_and_only_for_it() {
        let shutdown = Shutdown::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let work = tokio::spawn(shutdown.track(async move {
            let _ = released.await;
        }));
        assert!(!shutdown.clients_done(Duration::from_millis(50)).await);
        release.send(()).unwrap();
        work.await.unwrap();
        assert!(shutdown.clients_done(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn the_signal_reaches_every_listener() {
        let shutdown = Shutdown::default();
        let listeners: Vec<_> = (0..3)
            .map(|_| {
                let token = shutdown.token();
                tokio::spawn(async move { token.cancelled().await })
            })
            .collect();
        shutdown.signal();
        for listener in listeners {
            tokio::time::timeout(Duration::from_secs(1), listener)
                .await
                .expect("a listener heard the signal")
                .unwrap();
        }
    }
}
