//! What every task of a running host shares: the engine's handle, the
//! settings, the log as the HTTP side sees it, the connection count and the
//! shutdown signal; and [`Shared::new`], the one place that picks the log
//! implementation (in memory, local, JetStream) and starts the engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::engine::{Engine, EngineHandle};
use crate::{auth, cluster, durable, engine, ingest, shutdown, sources};

/// State shared by every task of a running host.
pub struct Shared {
    /// Commands to the engine thread.
    pub engine: EngineHandle,
    /// The host's settings.
    pub config: Config,
    next_conn: AtomicU64,
    /// Open WebSocket connections, checked against `config.max_connections`.
    open_connections: AtomicUsize,
    /// Who may connect, ingest and administer.
    pub auth: auth::Auth,
    /// Ingest requests being read or processed.
    ingest_permits: tokio::sync::Semaphore,
    /// The stop signal, and the connections and requests it waits for.
    pub(crate) shutdown: shutdown::Shutdown,
    /// The log as the HTTP side sees it: where an ingest goes, `/readyz`,
    /// `/status` (the engine holds the log itself).
    pub(crate) log: Arc<dyn engine::log::Front>,
    /// The sources' states, for `GET /sources`.
    pub(crate) sources: sources::Registry,
}

impl Shared {
    /// Builds the engine, loads every plugin in `config.plugins_dir`,
    /// restores the state kept in `config.data_dir` (checkpoint, then the
    /// log replayed through the plugins) and starts the engine thread.
    ///
    /// In cluster mode the builds are staged, the local checkpoint is
    /// restored, and the shared log is consumed after it in the background
    /// (`/readyz` answers 503 until caught up).
    pub async fn new(config: Config, auth: auth::Auth) -> Result<Arc<Self>, StartError> {
        let shutdown = shutdown::Shutdown::default();
        if config.cluster.is_some() && !config.sources.is_empty() {
            return Err(StartError::Cluster(
                "--source is not supported with --cluster yet (a source must run on one host at a time); run sources on a single host with --data".into(),
            ));
        }
        let mut positions = std::collections::BTreeMap::new();
        let mut engine = Engine::new(
            config.cache_dir.clone(),
            config.max_subscriptions_per_connection,
            config.projector_timeout,
        );
        // The log the engine holds, and its front for the HTTP side. A
        // shared log is installed before the plugins load (their builds are
        // staged until its markers); a local one by recovery, after them.
        let mut cluster = None;
        let mut front = engine::log::EngineFront { health: None };
        if let Some(cluster_config) = &config.cluster {
            let log = match &config.data_dir {
                Some(dir) => {
                    let log = durable::EventLog::open(dir)?;
                    log.claim_mode(&format!("cluster:{}", cluster_config.stream))?;
                    Some(Arc::new(log))
                }
                None => None,
            };
            let (link, status, requests) = cluster::channels(0);
            let persistence = cluster::ClusterPersistence {
                log,
                checkpoint_every_events: config.checkpoint_every_events,
                checkpoint_every: config.checkpoint_every,
            };
            let log = cluster::JetStreamLog::new(link, persistence, engine.log_reports());
            engine.use_log(Box::new(log));
            cluster = Some((cluster_config.clone(), status, requests));
        }
        engine.load_plugin_dir(&config.plugins_dir);
        match (&config.data_dir, &cluster) {
            (_, Some(_)) => {
                engine.recover_ordered()?;
            }
            (Some(dir), None) => {
                let log = durable::EventLog::open(dir)?;
                log.claim_mode("single")?;
                let log = Arc::new(log);
                for mark in log.source_positions()? {
                    positions.insert(mark.source, mark.position);
                }
                front.health = Some(log.health());
                engine.recover(engine::Persistence {
                    log,
                    fsync: config.fsync,
                    checkpoint_every_events: config.checkpoint_every_events,
                    checkpoint_every: config.checkpoint_every,
                    retention: config.retention,
                })?;
            }
            (None, None) => engine.start_seq_from_clock(),
        }
        let (engine, _thread) = engine::spawn(engine);
        let log: Arc<dyn engine::log::Front> = match cluster {
            Some((cluster_config, status, requests)) => cluster::Cluster::start(
                cluster_config,
                status,
                requests,
                engine.clone(),
                shutdown.token(),
            )
            .await
            .map_err(StartError::Cluster)?,
            None => Arc::new(front),
        };
        let sources = sources::start(
            &config.sources,
            &engine,
            positions,
            config.data_dir.is_some(),
            shutdown.token(),
        );
        Ok(Arc::new(Self {
            sources,
            log,
            engine,
            next_conn: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            ingest_permits: tokio::sync::Semaphore::new(config.max_concurrent_ingests.max(1)),
            shutdown,
            auth,
            config,
        }))
    }

    /// Applies an ingest request: published first when the log orders
    /// requests (answered once this host applied it), else through the
    /// engine.
    pub async fn ingest(
        &self,
        stream: &str,
        body: Arc<ingest::IngestBody>,
    ) -> Result<engine::Ingested, engine::IngestError> {
        self.log.ingest(&self.engine, stream, body).await
    }

    /// Open WebSocket connections.
    pub(crate) fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Acquire)
    }

    /// One of `config.max_concurrent_ingests` permits, held while an ingest
    /// body is read and processed; `None` once the host is shutting down.
    pub(crate) async fn ingest_permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.ingest_permits.acquire().await.ok()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a connection slot; `None` when the limit is reached. The
    /// slot is released when the returned guard drops.
    pub(crate) fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let open = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.max_connections {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }
}

/// Why a host cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error(transparent)]
    Data(#[from] durable::DataError),
    /// The cluster's NATS URL cannot be used.
    #[error("{0}")]
    Cluster(String),
}

/// One of `config.max_connections` slots, held for a connection's lifetime.
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}
