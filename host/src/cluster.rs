//! Scale-out: several hosts sharing one NATS JetStream stream as their log
//! (`vista serve --cluster nats://HOST:PORT`).
//!
//! Projectors are deterministic, so hosts that apply the same records in the
//! same order hold the same state. The JetStream stream is that order: no
//! host owns the data, any host takes ingest, and every host consumes the
//! whole stream. This module is the async side of it; the engine's side
//! (applying records one at a time, switching builds at markers) is
//! [`crate::engine`]'s `cluster` module.
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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::durable::LogRecord;
use crate::engine::link::{
    EngineLink, EngineState, EntryKind, LogEntry, Offer, ToCluster, SEQ_SHIFT,
};
use crate::engine::{Command, EngineHandle, IngestError, Ingested};
use crate::ingest::IngestBody;
use crate::reproject::Fed;

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
    /// last, and publishing offered build markers.
    pub async fn start(
        config: ClusterConfig,
        status: Arc<ClusterStatus>,
        requests: mpsc::UnboundedReceiver<ToCluster>,
        engine: EngineHandle,
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
        tokio::spawn(cluster.clone().consume(engine));
        tokio::spawn(cluster.clone().serve_engine(requests));
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

    /// Publishes an ingest request and waits until this host applied it.
    pub async fn ingest(
        &self,
        engine: &EngineHandle,
        stream: &str,
        body: &IngestBody,
    ) -> Result<Ingested, IngestError> {
        let known = self
            .status
            .known_streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(stream);
        if !known {
            return Err(IngestError::UnknownStream(stream.to_owned()));
        }
        if let Some(reason) = self
            .status
            .stream_behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(IngestError::LogUnavailable(reason));
        }
        // A paused host could not apply the record it would publish, so it
        // could not answer: the client is better served by another host.
        if let Some(reason) = self
            .status
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused
            .clone()
        {
            return Err(IngestError::HostPaused(reason));
        }
        if !self.connected() {
            return Err(IngestError::LogUnavailable(format!(
                "NATS at {} is not connected",
                crate::redact::redact(&self.config.url)
            )));
        }
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && body.raw().len() > max_payload {
            return Err(IngestError::TooLargeForLog { max_payload });
        }
        let request = format!(
            "{}.{}",
            self.host_id,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let (reply, applied) = oneshot::channel();
        engine.send(Command::ClusterWait {
            request: request.clone(),
            reply,
        });
        let mut headers = HeaderMap::new();
        headers.insert("Vista-Stream", stream);
        headers.insert("Vista-Request", request.as_str());
        headers.insert("Nats-Msg-Id", request.as_str());
        let acked = async {
            self.js
                .publish_with_headers(self.ingest_subject(), headers, body.raw().clone())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        let ack = match acked.await {
            Ok(ack) => ack,
            Err(err) => {
                engine.send(Command::ClusterForget { request });
                metrics::counter!("vista_cluster_publish_failed_total").increment(1);
                return Err(IngestError::LogUnavailable(err.to_string()));
            }
        };
        match tokio::time::timeout(APPLY_WAIT, applied).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(IngestError::ShuttingDown),
            Err(_) => {
                engine.send(Command::ClusterForget { request });
                Err(IngestError::NotAppliedYet {
                    stream_seq: ack.sequence,
                })
            }
        }
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

    /// Reads the stream in order after the last applied record and hands
    /// each record to the engine, forever; a broken consumer is recreated
    /// after the last record handed over.
    async fn consume(self: Arc<Self>, engine: EngineHandle) {
        let mut stream = self.open_stream().await;
        let mut handed = *self.status.applied.borrow();
        let mut applied = self.status.applied.clone();
        let mut last_progress_log = Instant::now();
        let mut behind_warned: Option<Instant> = None;
        loop {
            if self.status.head_at_start.load(Ordering::Acquire) == u64::MAX {
                match stream.info().await {
                    Ok(info) => {
                        let head = info.state.last_sequence;
                        self.status.head_at_start.store(head, Ordering::Release);
                        tracing::info!(applied = handed, head, stream = %self.config.stream, "joined the cluster stream; catching up");
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot read the cluster stream's state; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            // A stream that ends before what this host applied was
            // recreated or lost its store: its new records would be skipped
            // as already applied. Say so instead of waiting in silence.
            if let Ok(info) = stream.info().await {
                let last = info.state.last_sequence;
                if last < handed && warn_now(&mut behind_warned) {
                    tracing::error!(
                        stream = %self.config.stream,
                        stream_last = last,
                        applied = handed,
                        "the cluster stream ends before what this host applied (was it deleted or its store lost?); this host's state no longer matches it: move its data directory away and restart it to rebuild from the stream"
                    );
                    *self
                        .status
                        .stream_behind
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(format!(
                        "the cluster stream ends at {last}, before position {handed} this host applied"
                    ));
                }
            }
            let ordered = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: handed + 1,
                    },
                    ..Default::default()
                })
                .await;
            let messages = match ordered {
                Ok(consumer) => consumer.messages().await,
                Err(err) => {
                    tracing::warn!(%err, "cannot create the cluster consumer; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stream = self.open_stream().await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(%err, "cannot read the cluster stream; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // A consumer whose server went away (a NATS cluster node lost)
            // may wait forever without an error: every STALL_CHECK with no
            // message, the stream is asked whether it holds more than was
            // handed over, and the consumer is recreated if it does.
            let mut stall_check = tokio::time::interval(STALL_CHECK);
            stall_check.tick().await;
            let mut received = false;
            loop {
                self.note_catch_up(*applied.borrow(), &mut last_progress_log);
                // Bounded hand-over: wait while the engine is behind.
                while handed.saturating_sub(*applied.borrow()) >= APPLY_WINDOW {
                    if applied.changed().await.is_err() {
                        return;
                    }
                }
                let next = tokio::select! {
                    next = messages.next() => next,
                    // Wake up to report catch-up progress while idle.
                    _ = applied.changed() => continue,
                    _ = stall_check.tick() => {
                        if !std::mem::take(&mut received) {
                            if let Ok(info) = stream.info().await {
                                if info.state.last_sequence > handed {
                                    tracing::warn!(handed, stream_last = info.state.last_sequence, "cluster consumer stalled; recreating it");
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                };
                received = true;
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::warn!(%err, "cluster consumer failed; recreating it");
                        break;
                    }
                    None => break,
                };
                let Ok(info) = message.info() else {
                    continue;
                };
                let seq = info.stream_sequence;
                if seq <= handed {
                    continue;
                }
                let entry = decode(&self.config.stream, seq, &message);
                handed = seq;
                engine.send(Command::ClusterRecord(entry));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Marks the host caught up once it applied the stream's head as of
    /// joining; logs progress every 2 s until then.
    fn note_catch_up(&self, applied: u64, last_log: &mut Instant) {
        if self.status.caught_up.load(Ordering::Acquire) {
            return;
        }
        let head = self.status.head_at_start.load(Ordering::Acquire);
        if applied >= head {
            self.status.caught_up.store(true, Ordering::Release);
            tracing::info!(applied, head, "caught up with the cluster stream");
        } else if last_log.elapsed() >= Duration::from_secs(2) {
            *last_log = Instant::now();
            tracing::info!(applied, head, "catching up with the cluster stream");
        }
    }

    /// Does what the engine asks: publishes markers (in order, retrying
    /// while NATS is unreachable) and reads history for reprojections.
    async fn serve_engine(self: Arc<Self>, mut requests: mpsc::UnboundedReceiver<ToCluster>) {
        let stream = self.open_stream().await;
        while let Some(request) = requests.recv().await {
            match request {
                ToCluster::Offer(offer) => {
                    let mut warned: Option<Instant> = None;
                    while let Err(err) = self.offer(&stream, &offer).await {
                        if warn_now(&mut warned) {
                            tracing::warn!(plugin = %offer.plugin, fingerprint = %offer.fingerprint, %err, "cannot publish the build marker; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                ToCluster::Reproject { plugin } => {
                    let subject = format!(
                        "{}.reproject.{}",
                        self.config.stream,
                        subject_token(&plugin)
                    );
                    let payload = serde_json::to_vec(&json_plugin(&plugin)).expect("serializes");
                    let mut warned: Option<Instant> = None;
                    loop {
                        let published = async {
                            self.js
                                .publish(subject.clone(), payload.clone().into())
                                .await?
                                .await
                                .map_err(async_nats::Error::from)
                        };
                        match published.await {
                            Ok(ack) => {
                                tracing::info!(%plugin, position = ack.sequence, "reprojection marker published");
                                break;
                            }
                            Err(err) => {
                                if warn_now(&mut warned) {
                                    tracing::warn!(%plugin, %err, "cannot publish the reprojection marker; retrying");
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                }
                ToCluster::Fetch {
                    upto,
                    streams,
                    sink,
                } => {
                    let cluster = self.clone();
                    tokio::spawn(async move {
                        let end = match cluster.fetch(upto, &streams, &sink).await {
                            Ok(()) => Fed::End,
                            Err(reason) => Fed::Failed(reason),
                        };
                        let _ = sink.send(end).await;
                    });
                }
            }
        }
    }

    /// Sends the ingest records of `streams` before position `upto` to
    /// `sink`, in order. The stream must still start at position 1.
    async fn fetch(
        &self,
        upto: u64,
        streams: &[String],
        sink: &mpsc::Sender<Fed>,
    ) -> Result<(), String> {
        let mut stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        if info.state.first_sequence > 1 {
            return Err(format!(
                "the stream no longer starts at position 1 (it starts at {}): history is missing",
                info.state.first_sequence
            ));
        }
        let subject = self.ingest_subject();
        // An ordered consumer with nothing to deliver would wait forever.
        let mut counts = stream
            .info_with_subjects(&subject)
            .await
            .map_err(|e| e.to_string())?;
        let mut ingested = 0;
        while let Some(count) = counts.next().await {
            ingested += count.map_err(|e| e.to_string())?.1;
        }
        if ingested == 0 {
            return Ok(());
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq >= upto {
                break;
            }
            if let EntryKind::Ingest { stream, body, .. } =
                decode(&self.config.stream, seq, &message).kind
            {
                if streams.contains(&stream) {
                    let record = LogRecord {
                        rec: seq,
                        stream,
                        first_seq: seq << SEQ_SHIFT,
                        mutations: 0,
                        body,
                        logged_at_ms: 0,
                    };
                    sink.send(Fed::Record(record))
                        .await
                        .map_err(|_| "the reprojection stopped".to_owned())?;
                }
            }
            // The marker at `upto` is in the stream, so every ingest record
            // before it is delivered before the last one.
            if pending == 0 {
                break;
            }
        }
        Ok(())
    }

    async fn offer(&self, stream: &stream::Stream, offer: &Offer) -> Result<(), String> {
        let subject = self.build_subject(&offer.plugin);
        let latest = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => serde_json::from_slice::<BuildMarker>(&message.payload)
                .ok()
                .map(|m| m.fingerprint),
            Err(err)
                if err.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                None
            }
            Err(err) => return Err(err.to_string()),
        };
        match &latest {
            Some(current) if *current == offer.fingerprint => return Ok(()),
            Some(current) if offer.at_start => {
                tracing::warn!(
                    plugin = %offer.plugin,
                    here = %offer.fingerprint,
                    cluster = %current,
                    "this host's build of the plugin differs from the cluster's; it will pause at the cluster's build marker until it has that file"
                );
                return Ok(());
            }
            _ => {}
        }
        let marker = BuildMarker {
            plugin: offer.plugin.clone(),
            fingerprint: offer.fingerprint.clone(),
            version: offer.version.clone(),
        };
        let mut headers = HeaderMap::new();
        // Hosts given the same build at once publish one marker.
        let id = format!(
            "build/{}/{}/{}",
            offer.plugin,
            latest.as_deref().unwrap_or("-"),
            offer.fingerprint
        );
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = self
            .js
            .publish_with_headers(
                subject,
                headers,
                serde_json::to_vec(&marker)
                    .expect("marker serializes")
                    .into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(plugin = %offer.plugin, fingerprint = %offer.fingerprint, position = ack.sequence, duplicate = ack.duplicate, "build marker published");
        Ok(())
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

/// The payload of a `{stream}.reproject.{plugin}` record.
fn json_plugin(plugin: &str) -> serde_json::Value {
    serde_json::json!({ "plugin": plugin })
}

/// The payload of a `{stream}.build.{plugin}` record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BuildMarker {
    plugin: String,
    fingerprint: String,
    version: String,
}

/// Reads a stream message as a log record.
fn decode(stream_name: &str, seq: u64, message: &jetstream::Message) -> LogEntry {
    let subject = message.subject.as_str();
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let kind = match subject
        .strip_prefix(stream_name)
        .and_then(|s| s.strip_prefix('.'))
    {
        Some("ingest") => match header("Vista-Stream") {
            Some(stream) => EntryKind::Ingest {
                stream,
                body: message.payload.clone(),
                request: header("Vista-Request"),
            },
            None => EntryKind::Unknown("an ingest record without Vista-Stream".into()),
        },
        Some(rest) if rest.starts_with("build.") => {
            match serde_json::from_slice::<BuildMarker>(&message.payload) {
                Ok(marker) => EntryKind::Build {
                    plugin: marker.plugin,
                    fingerprint: marker.fingerprint,
                    version: marker.version,
                },
                Err(err) => {
                    EntryKind::Unknown(format!("a build marker that does not parse: {err}"))
                }
            }
        }
        Some(rest) if rest.starts_with("reproject.") => {
            match serde_json::from_slice::<serde_json::Value>(&message.payload)
                .ok()
                .and_then(|v| v["plugin"].as_str().map(str::to_owned))
            {
                Some(plugin) => EntryKind::Reproject { plugin },
                None => EntryKind::Unknown("a reprojection marker without a plugin".into()),
            }
        }
        _ => EntryKind::Unknown(format!("subject {subject}")),
    };
    LogEntry { seq, kind }
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
