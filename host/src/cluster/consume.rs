//! Reading the shared stream: the consumer that hands every record to the
//! engine in stream order, and the reads of history a reprojection asks
//! for.
//!
//! Its own module because reading is the half of a cluster member that
//! never writes: it owns the catch-up accounting behind `/readyz` (the head
//! as of joining, caught up or not, a stream that ends before what this
//! host applied) and the consumer's flow control ([`APPLY_WINDOW`],
//! [`STALL_CHECK`]), and turns stream messages back into the engine's
//! [`LogEntry`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{warn_now, BuildMarker, Cluster, APPLY_WINDOW, STALL_CHECK};
use crate::durable::LogRecord;
use crate::engine::link::{EntryKind, LogEntry, SEQ_SHIFT};
use crate::engine::{Command, EngineHandle};
use crate::reproject::Fed;

impl Cluster {
    /// Reads the stream in order after the last applied record and hands
    /// each record to the engine, forever; a broken consumer is recreated
    /// after the last record handed over.
    pub(super) async fn consume(self: Arc<Self>, engine: EngineHandle) {
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
                engine.send(Command::Record(entry));
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

    /// Sends the ingest records of `streams` before position `upto` to
    /// `sink`, in order. The stream must still start at position 1.
    pub(super) async fn fetch(
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
                        source: None,
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
