//! A NATS JetStream stream the user owns, as a source
//! (`--source NAME=nats://HOST:PORT?stream=STREAM[&consumer=DURABLE]`).
//!
//! Not the cluster's own log (`crate::cluster`): any stream, read by a
//! durable pull consumer (`vista-NAME` unless `consumer=` names another),
//! whose messages are each one event (the payload, a JSON object) and one
//! request, so a plugin refusing one message dead-letters that message
//! alone. A message is acked only once its request is durable in Vista
//! (acks follow the answers, in order). The JetStream sequence of the
//! message is the position logged with it; after a restart, messages the
//! consumer redelivers at or before the logged position are acked and
//! skipped, so each is applied once even when the host died between
//! logging a message and acking it. A payload that is not a JSON object is
//! skipped, acked and reported (`last_error`).
//!
//! `async-nats` is already the cluster's client; no second one. In memory
//! (nothing survives a restart) the consumer is ephemeral and reads the
//! whole stream each start.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::json;

use super::{BoxFuture, Ctx, Source, SourceSpec};

/// Messages taken from the consumer before waiting for the next.
const READ_AHEAD: usize = 1024;

/// A JetStream stream as a source.
pub(crate) struct Nats {
    server: String,
    stream: String,
    consumer: String,
    durable: bool,
}

impl Nats {
    pub(crate) fn new(spec: &SourceSpec, durable: bool) -> Self {
        let (server, query) = spec.url.split_once('?').unwrap_or((&spec.url, ""));
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        Nats {
            server: server.to_owned(),
            stream: param("stream").unwrap_or_else(|| spec.name.to_uppercase()),
            consumer: param("consumer").unwrap_or_else(|| format!("vista-{}", spec.name)),
            durable,
        }
    }

    async fn run(&self, ctx: &mut Ctx) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(Some(3))
            .connect(&self.server)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.server))?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream {:?}: {e}", self.stream))?;
        let after: u64 = ctx.position().and_then(|p| p.parse().ok()).unwrap_or(0);
        let config = consumer::pull::Config {
            durable_name: self.durable.then(|| self.consumer.clone()),
            ack_policy: if self.durable {
                consumer::AckPolicy::All
            } else {
                consumer::AckPolicy::None
            },
            ack_wait: Duration::from_secs(120),
            deliver_policy: match after {
                0 => consumer::DeliverPolicy::All,
                seq => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
            },
            max_ack_pending: (READ_AHEAD * 4) as i64,
            ..Default::default()
        };
        if self.durable {
            // Messages the consumer delivered before a restart and no one
            // acked would come back only after the ack wait, behind newer
            // ones: the consumer is made afresh at the logged position
            // instead, so delivery is in stream order from there.
            match stream.delete_consumer(&self.consumer).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(format!("consumer {:?}: {e}", self.consumer)),
            }
        }
        let consumer: consumer::PullConsumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("consumer {:?} on {:?}: {e}", self.consumer, self.stream))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(READ_AHEAD)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| format!("consumer {:?}: {e}", self.consumer))?;
        ctx.set_state("streaming");
        // Submitted, not yet confirmed: (sequence, message) to ack.
        let mut unacked: VecDeque<(u64, jetstream::Message)> = VecDeque::new();
        let mut last_submitted = after;
        loop {
            // Answers are collected between messages: soon while some are
            // awaited, so acks and the reported position keep up.
            let wait = if ctx.in_flight() > 0 { 20 } else { 500 };
            let next = tokio::time::timeout(Duration::from_millis(wait), messages.next()).await;
            let message = match next {
                Ok(Some(message)) => Some(message.map_err(|e| format!("consumer: {e}"))?),
                Ok(None) => return Err("the consumer ended".into()),
                Err(_) => None,
            };
            let mut confirmed = ctx.settle_ready()?;
            if let Some(message) = message {
                let info = message.info().map_err(|e| e.to_string())?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                ctx.set_lag(json!({ "messages": pending }));
                if seq <= last_submitted {
                    // Logged before a restart, or redelivered: applied once.
                    if ctx.in_flight() == 0 && self.durable {
                        let _ = message.ack().await;
                    }
                    continue;
                }
                last_submitted = seq;
                match event_of(&message.payload) {
                    Ok(event) => {
                        confirmed.extend(ctx.submit(&[event], seq.to_string()).await?);
                        unacked.push_back((seq, message));
                    }
                    Err(why) => {
                        tracing::warn!(source = %ctx.name(), seq, %why, "skipping a message that is not a JSON object");
                        crate::metrics::get().source_refused.inc();
                        unacked.push_back((seq, message));
                        confirmed.extend(ctx.submit(&[], seq.to_string()).await?);
                    }
                }
            }
            // Ack the newest confirmed message (AckAll covers the rest).
            if let Some(upto) = confirmed.last().and_then(|p| p.parse::<u64>().ok()) {
                let mut newest = None;
                while unacked.front().is_some_and(|(seq, _)| *seq <= upto) {
                    newest = unacked.pop_front();
                }
                if let (Some((_, message)), true) = (newest, self.durable) {
                    message
                        .ack()
                        .await
                        .map_err(|e| format!("cannot ack: {e}"))?;
                }
            }
        }
    }
}

/// The event of a message: its payload when it is a JSON object, on one
/// line.
fn event_of(payload: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_owned())?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    if text.contains('\n') {
        Ok(value.to_string())
    } else {
        Ok(text.trim().to_owned())
    }
}

impl Source for Nats {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn session<'a>(&'a self, ctx: &'a mut Ctx) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.run(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_objects_are_events() {
        assert_eq!(event_of(b"{\"a\": 1}").unwrap(), "{\"a\": 1}");
        assert_eq!(event_of(b"{\n\"a\": 1\n}").unwrap(), "{\"a\":1}");
        assert!(event_of(b"[1]").is_err());
        assert!(event_of(b"hello").is_err());
    }
}
