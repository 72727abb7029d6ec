//! The Vista host: loads projector plugins, ingests events through them
//! into a host-owned entity store, and streams views of that store to
//! WebSocket clients speaking the HyperStack protocol.
//!
//! # Layout
//!
//! - [`server`]: the listening port: WebSocket upgrades and the HTTP API
//!   (`/ingest/{stream}`, `/plugins`, `/healthz`, `/metrics`).
//! - [`connection`]: one client: reading its messages, writing its outbox.
//! - [`protocol`]: parsing client messages (both message forms).
//! - [`engine`]: the single owner of plugins, store, views and outboxes.
//! - [`plugins`]: loading `.so` files through the ABI-stable contract, each
//!   checked first in a child process (`vista plugin check`).
//! - [`store`]: entities and `_seq` stamping.
//! - [`views`]: base and derived views, windows, and the frames a change produces.
//! - [`frame`]: encoding frames once (JSON, safe integers, gzip).
//! - [`outbox`]: the bounded per-connection queue between engine and socket.
//! - [`watcher`]: hot reload: watching the plugins directory.
//! - [`scaffold`]: `vista plugin new`.
//! - [`demo`]: the demo feed behind `vista serve --demo-feed`.
//!
//! [`run`] takes an already-bound listener, so tests bind port 0.

pub mod connection;
pub mod demo;
pub mod engine;
pub mod frame;
pub mod outbox;
pub mod plugins;
pub mod protocol;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod views;
pub mod watcher;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::engine::Engine;

/// Settings of a running host.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory scanned for plugin files.
    pub plugins_dir: PathBuf,
    /// Private directory plugin files are copied to before being mapped.
    pub cache_dir: PathBuf,
    /// Largest accepted ingest body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Bound on a client's queued live frames, in bytes.
    pub outbox_bytes: usize,
    /// Largest accepted client message, in bytes.
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Open WebSocket connections allowed; more are refused with 503.
    pub max_connections: usize,
    /// Clients silent (no message, no pong) for longer are closed; quiet
    /// ones are pinged first. `None` disables the check.
    pub idle_timeout: Option<Duration>,
}

/// State shared by every task of a running host.
pub struct Shared {
    engine: Mutex<Engine>,
    /// The host's settings.
    pub config: Config,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    next_conn: AtomicU64,
    /// Open WebSocket connections, checked against `config.max_connections`.
    open_connections: AtomicUsize,
}

impl Shared {
    /// Builds the engine and loads every plugin in `config.plugins_dir`.
    pub fn new(config: Config) -> Arc<Self> {
        let mut engine = Engine::new(config.cache_dir.clone());
        engine.load_plugin_dir(&config.plugins_dir);
        Arc::new(Self {
            engine: Mutex::new(engine),
            config,
            metrics: metrics_handle(),
            next_conn: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
        })
    }

    /// Locks the engine. Never hold the guard across an `.await`.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a connection slot; `None` when the limit is reached. The
    /// slot is released when the returned guard drops.
    fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let open = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.max_connections {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }
}

/// One of `config.max_connections` slots, held for a connection's lifetime.
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Installs the process-wide Prometheus recorder once.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then
            // `/metrics` shows an empty page rather than failing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves HTTP and WebSocket connections on `listener` until `shutdown`
/// completes; then tells every client (close 1001 `server-shutdown:`) and
/// gives the writers a moment to flush.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    if let Some(timeout) = shared.config.idle_timeout {
        // One sweeper for all connections: no per-connection timer.
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(timeout / 3);
            loop {
                ticker.tick().await;
                shared.engine().sweep_idle(timeout);
            }
        });
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::error!(%err, "accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| server::handle(request, shared.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(%err, "http connection ended with an error");
            }
        });
    }
    shared
        .engine()
        .close_all(1001, "server-shutdown: the server is restarting; reconnect");
    tokio::time::sleep(Duration::from_millis(300)).await;
}
