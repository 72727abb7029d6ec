//! Scale-out: several hosts sharing one NATS JetStream stream as their log
//! (`vista serve --cluster nats://HOST:PORT`).
//!
//! Projectors are deterministic, so hosts that apply the same records in the
//! same order hold the same state. The JetStream stream is that order: no
//! host owns the data, any host takes ingest, and every host consumes the
//! whole stream. This module is the async side of it and the engine's
//! [`JetStreamLog`]; applying records one at a time and switching builds at
//! markers, which a log of any kind that orders records needs, is
//! [`crate::engine`]'s `ordered` module.
//!
//! The stream (default `VISTA`, subjects `VISTA.>`) holds two kinds of
//! record:
//! - `VISTA.ingest`: one ingest request, its body exactly as received, the
//!   ingest stream in header `Vista-Stream`, and in `Vista-Request` the id
//!   the receiving host waits on. One request is one message, so it stays
//!   all or nothing.
//! - `VISTA.build.{plugin}`: a build marker, "plugin P runs build F from
//!   here". A host that maps a new build publishes one (unless the stream's
//!   latest marker for P already names it); every host switches when it
//!   consumes the marker, so all switch at the same stream position. A
//!   host without that build pauses there and is not ready until the file
//!   arrives, rather than projecting with the wrong code.
//! - `VISTA.reproject.{plugin}`: "rebuild plugin P from the log here"
//!   (`POST /plugins/{name}/reproject`; a build marker of a build that asks
//!   for reprojection means the same). Every host stops consuming there,
//!   reads the stream's ingest records before it through the running build
//!   ([`crate::reproject`]) and swaps the result in at that position.
//!
//! `_seq` derives from the stream sequence (`seq << 24` plus the mutation's
//! index in its request), so every host gives the same mutation the same
//! `_seq` and a client can resume with `after` on another host.
//!
//! An ingest answers once the stream acknowledged the message *and* this
//! host applied it (read-your-writes): 200 with the `_seq`, or 422 when the
//! projector refused it, which every host does identically (the record
//! stays in the log and changes nothing; `vista_cluster_refused_total`).
//! NATS unreachable: 503 `log-unavailable`, the host keeps serving what it
//! has, reconnects by itself and resumes consuming where it stopped.
//!
//! The consumer is an ordered JetStream consumer (no acks, recreated on
//! gaps) started after the last record this host applied; it hands records
//! to the engine and stops reading while more than [`APPLY_WINDOW`] records
//! wait there, so a slow host is bounded in memory and catches up at its
//! own pace.
//!
//! This module holds what a member is (its connection, its status and
//! readiness, its face to the HTTP side as the log's [`Front`]) and the
//! record format both halves share; reading the stream is in `consume`,
//! writing to it (ingest requests, markers) in `publish`, and the stream as
//! the engine holds it ([`JetStreamLog`], a [`crate::engine::log::Log`]) in
//! `log`.

mod consume;
mod log;
mod publish;

pub use log::ClusterPersistence;
pub(crate) use log::JetStreamLog;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use tokio::sync::{mpsc, watch};

use crate::engine::log::{BoxFuture, Front};
use crate::engine::{EngineHandle, IngestError, Ingested};
use crate::ingest::IngestBody;
use log::{EngineLink, EngineState, ToCluster};

/// Records handed to the engine and not yet applied before the consumer
/// stops reading.
pub const APPLY_WINDOW: u64 = 1024;

/// How often an idle consumer checks that the stream holds nothing more.
pub const STALL_CHECK: Duration = Duration::from_secs(3);

/// How long an ingest waits for this host to apply its acknowledged record
/// before answering 202 (in the log, applied later).
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Where the shared log is.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// The JetStream stream name; its subjects are `{stream}.>`.
    pub stream: String,
    /// Replicas of the stream when this host creates it (a NATS cluster of
    /// at least that many servers; an ack then means a majority stored it).
    pub replicas: usize,
}

/// What the async side and the engine share about the cluster.
pub(crate) struct ClusterStatus {
    /// The last stream sequence the engine applied.
    pub applied: watch::Receiver<u64>,
    /// The stream's last sequence when this host first reached it.
    head_at_start: AtomicU64,
    /// Applied everything up to `head_at_start` (sticky).
    caught_up: AtomicBool,
    /// What the engine last said about consuming.
    pub engine: Arc<Mutex<EngineState>>,
    /// Set when the stream ends before what this host applied.
    stream_behind: Mutex<Option<String>>,
    /// Ingest streams some loaded or staged build consumes: an ingest for
    /// another stream is refused before it is published.
    pub known_streams: Arc<RwLock<HashSet<String>>>,
}

/// Readiness as `/readyz` reports it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Readiness {
    pub ready: bool,
    pub status: &'static str,
    pub applied: u64,
    pub head: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The channels between the engine and the async side, before either runs.
pub(crate) fn channels(
    applied_from: u64,
) -> (
    EngineLink,
    Arc<ClusterStatus>,
    mpsc::UnboundedReceiver<ToCluster>,
) {
    let (applied, applied_rx) = watch::channel(applied_from);
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let engine = Arc::new(Mutex::new(EngineState::default()));
    let known_streams = Arc::new(RwLock::new(HashSet::new()));
    let status = Arc::new(ClusterStatus {
        applied: applied_rx,
        head_at_start: AtomicU64::new(u64::MAX),
        caught_up: AtomicBool::new(false),
        engine: engine.clone(),
        stream_behind: Mutex::new(None),
        known_streams: known_streams.clone(),
    });
    let link = EngineLink {
        requests,
        known_streams,
        engine,
        applied,
    };
    (link, status, requests_rx)
}

/// The async side of a cluster member.
pub(crate) struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    status: Arc<ClusterStatus>,
    /// Prefix of this host's request ids.
    host_id: String,
    next_request: AtomicU64,
}

impl Cluster {
    /// Connects (in the background: an unreachable NATS is retried
    /// forever) and starts consuming after the record the engine applied
    /// last, and publishing offered build markers; both stop at `stop`.
    pub async fn start(
        config: ClusterConfig,
        status: Arc<ClusterStatus>,
        requests: mpsc::UnboundedReceiver<ToCluster>,
        engine: EngineHandle,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Cluster>, String> {
        let client = async_nats::ConnectOptions::new()
            .name("vista")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| {
                format!(
                    "cannot use NATS at {}: {e}",
                    crate::redact::redact(&config.url)
                )
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let host_id = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        );
        let cluster = Arc::new(Cluster {
            config,
            client,
            js,
            status,
            host_id,
            next_request: AtomicU64::new(1),
        });
        // Both run until the host's shutdown signal.
        let stop_consuming = stop.clone();
        let consume = cluster.clone().consume(engine);
        tokio::spawn(async move {
            tokio::select! {
                () = consume => {}
                () = stop_consuming.cancelled() => {}
            }
        });
        let serve = cluster.clone().serve_engine(requests);
        tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(cluster)
    }

    fn ingest_subject(&self) -> String {
        format!("{}.ingest", self.config.stream)
    }

    fn build_subject(&self, plugin: &str) -> String {
        format!("{}.build.{}", self.config.stream, subject_token(plugin))
    }

    /// Whether NATS is connected right now.
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// `/readyz`: caught up with the stream as it was at start, and not
    /// paused for a missing build.
    pub fn readiness(&self) -> Readiness {
        let applied = *self.status.applied.borrow();
        let head = self.status.head_at_start.load(Ordering::Acquire);
        let engine = self.status.engine.lock().unwrap_or_else(|e| e.into_inner());
        let caught_up = self.status.caught_up.load(Ordering::Acquire);
        let behind = self
            .status
            .stream_behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (status, reason) = if let Some(reason) = behind {
            ("stream-behind", Some(reason))
        } else if let Some(reason) = &engine.paused {
            ("paused", Some(reason.clone()))
        } else if !caught_up {
            ("catching-up", None)
        } else if !engine.unmarked.is_empty() {
            (
                "waiting-for-build-markers",
                Some(format!(
                    "no build marker applied yet for: {}",
                    engine.unmarked.join(", ")
                )),
            )
        } else {
            ("ready", None)
        };
        Readiness {
            ready: status == "ready",
            status,
            applied,
            head: if head == u64::MAX { 0 } else { head },
            reason,
        }
    }

    /// What `GET /status` shows in cluster mode: where the log is, whether
    /// it is reachable, and this host's position in it.
    pub fn status(&self) -> serde_json::Value {
        let readiness = self.readiness();
        serde_json::json!({
            "url": crate::redact::redact(&self.config.url),
            "stream": self.config.stream,
            "connected": self.connected(),
            "applied": readiness.applied,
            "head_at_join": readiness.head,
            "state": readiness.status,
            "reason": readiness.reason,
        })
    }

    /// Makes sure the stream exists (retrying while NATS is unreachable)
    /// and returns its last sequence.
    async fn open_stream(&self) -> stream::Stream {
        let mut warned: Option<Instant> = None;
        loop {
            let created = self
                .js
                .get_or_create_stream(stream::Config {
                    name: self.config.stream.clone(),
                    subjects: vec![format!("{}.>", self.config.stream)],
                    storage: stream::StorageType::File,
                    duplicate_window: Duration::from_secs(120),
                    num_replicas: self.config.replicas.max(1),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(stream) => return stream,
                Err(err) => {
                    if warn_now(&mut warned) {
                        tracing::warn!(url = %crate::redact::redact(&self.config.url), stream = %self.config.stream, %err, "cannot open the cluster stream; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

impl Front for Cluster {
    /// Published first; answered once this host applied it.
    fn ingest<'a>(
        &'a self,
        engine: &'a EngineHandle,
        stream: &'a str,
        body: Arc<IngestBody>,
    ) -> BoxFuture<'a, Result<Ingested, IngestError>> {
        Box::pin(async move { Cluster::ingest(self, engine, stream, &body).await })
    }

    /// A cluster member opens its port at once and is ready once it caught
    /// up with the shared log.
    fn readiness(&self) -> crate::engine::log::Readiness {
        let readiness = Cluster::readiness(self);
        crate::engine::log::Readiness {
            ready: readiness.ready,
            body: serde_json::json!(readiness),
        }
    }

    fn status<'a>(&'a self, _engine: &'a EngineHandle) -> BoxFuture<'a, serde_json::Value> {
        Box::pin(std::future::ready(serde_json::json!({
            "storage": "cluster",
            "cluster": Cluster::status(self),
        })))
    }
}

/// Whether a repeated failure is worth a log line: the first, then one
/// every 5 s.
fn warn_now(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// The payload of a `{stream}.build.{plugin}` record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BuildMarker {
    plugin: String,
    fingerprint: String,
    version: String,
}

/// A plugin name as one subject token: kept if it is letters, digits, `_`
/// and `-`; otherwise hex-encoded (prefixed `x`) so no name can add tokens
/// or wildcards.
fn subject_token(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_owned()
    } else {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_become_single_safe_tokens() {
        assert_eq!(subject_token("tokens"), "tokens");
        assert_eq!(subject_token("my-plugin_2"), "my-plugin_2");
        assert_eq!(subject_token("a.b"), "x612e62");
        assert_eq!(subject_token("*"), "x2a");
        assert_eq!(subject_token(">"), "x3e");
    }
}
