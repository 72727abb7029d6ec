//! Writing to the shared stream: ingest requests (published, then waited
//! on until this host applied them) and what the engine asks to publish,
//! build and reprojection markers, each retried until NATS takes it.
//!
//! Its own module because writing is the half of a cluster member that
//! answers to clients and to the engine: every refusal an ingest can get
//! before its record reaches the stream (an unknown stream, a stream that
//! ends before what this host applied, a paused host, NATS away, a body
//! over NATS's limit) is decided here, and a marker is published once
//! however many hosts offer it (`Nats-Msg-Id`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream;
use tokio::sync::{mpsc, oneshot};

use super::log::ToCluster;
use super::{subject_token, warn_now, BuildMarker, Cluster, APPLY_WAIT};
use crate::engine::log::Offer;
use crate::engine::{Command, EngineHandle, IngestError, Ingested};
use crate::ingest::IngestBody;
use crate::reproject::Fed;

impl Cluster {
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
        engine.send(Command::Wait {
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
                engine.send(Command::Forget { request });
                crate::metrics::get().cluster_publish_failed.inc();
                return Err(IngestError::LogUnavailable(err.to_string()));
            }
        };
        match tokio::time::timeout(APPLY_WAIT, applied).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(IngestError::ShuttingDown),
            Err(_) => {
                engine.send(Command::Forget { request });
                Err(IngestError::NotAppliedYet {
                    stream_seq: ack.sequence,
                })
            }
        }
    }

    /// Does what the engine asks: publishes markers (in order, retrying
    /// while NATS is unreachable) and reads history for reprojections.
    pub(super) async fn serve_engine(
        self: Arc<Self>,
        mut requests: mpsc::UnboundedReceiver<ToCluster>,
    ) {
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

/// The payload of a `{stream}.reproject.{plugin}` record.
fn json_plugin(plugin: &str) -> serde_json::Value {
    serde_json::json!({ "plugin": plugin })
}
