//! Sources: live views over another system's change stream (`--source
//! NAME=URL`, or `[[source]]` entries in the configuration file). A source
//! turns a PostgreSQL table's changes ([`postgres`]) or a NATS JetStream
//! stream the user owns ([`nats`]) into ingest requests on the stream
//! `NAME`, through the same engine path as `POST /ingest/NAME`.
//!
//! # Exactly once, and where the position lives
//!
//! Every request a source submits carries the source's position once it is
//! applied ([`SourceMark`]: a PostgreSQL commit LSN, a JetStream sequence).
//! The engine hands it to the log with the request's record, and the local
//! log writes it in the same redb transaction as the record
//! (`durable::EventLog::append`, table `sources`). So the position is
//! durable exactly when the events are: a crash either keeps both or
//! neither. At start the host reads the positions back
//! (`EventLog::source_positions`) and each source resumes strictly after
//! its own: a PostgreSQL transaction whose commit LSN is not past it, or a
//! JetStream message whose sequence is not, is skipped. Upstream is told
//! only what is durable: the replication slot's confirmed position and
//! the JetStream acks follow the answers, never the sends.
//!
//! A request a plugin refuses becomes a dead letter (as for HTTP ingest)
//! and the source goes on; its position is stored with the next request
//! that is applied (a crash in between submits the refused one again, which
//! is refused again: nothing is applied twice).
//!
//! `--in-memory` keeps nothing: a source starts from its beginning each
//! time (PostgreSQL: a new initial snapshot on a temporary slot; NATS: the
//! whole stream through an ephemeral consumer).
//!
//! # Backpressure
//!
//! A source has at most [`WINDOW`] requests in flight; when the engine is
//! behind, it stops reading upstream (TCP and the broker buffer, not the
//! host), instead of queueing without bound.
//!
//! # Failures
//!
//! A lost connection, a refused start (no plugin consumes the stream yet),
//! or a log that cannot be written ends the session: the runner waits for
//! what is in flight, reports the error (`GET /sources`, the log, metrics)
//! and starts a new session after a backoff (0.5 s doubling to 10 s) from
//! the last durable position. Serving goes on meanwhile.
//!
//! In cluster mode a source would have to run on one host at a time (a
//! lease); that is not built, so `--source` with `--cluster` is refused at
//! start.

pub(crate) mod nats;
mod pgoutput;
pub(crate) mod postgres;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::durable::SourceMark;
use crate::engine::{Command, EngineHandle, IngestError, Ingested};
use crate::ingest::IngestBody;

/// Requests one source may have in flight before it waits for answers.
pub const WINDOW: usize = 64;

/// A future a [`Source`] returns.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `--source NAME=URL`: the stream `NAME` fed from `URL`
/// (`postgres://...` or `nats://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The source's name, which is also the ingest stream it feeds.
    pub name: String,
    /// Where it reads.
    pub url: String,
}

impl std::str::FromStr for SourceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected NAME=URL (postgres://... or nats://...)"))?;
        // The name is an ingest stream's (as in `/ingest/NAME`).
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "source name {name:?}: letters, digits, '-' and '_' (it names the ingest stream)"
            ));
        }
        let scheme = url.split("://").next().unwrap_or("");
        if !matches!(scheme, "postgres" | "postgresql" | "nats") {
            return Err(format!(
                "source {name:?}: unsupported URL scheme {scheme:?} (expected postgres:// or nats://)"
            ));
        }
        Ok(SourceSpec {
            name: name.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// One kind of source: a session reads upstream from the context's
/// position and submits requests through it until the connection fails or
/// the host stops.
pub(crate) trait Source: Send + Sync {
    /// `postgres` or `nats`.
    fn kind(&self) -> &'static str;

    /// One session: connect, resume after [`Ctx::position`], submit until
    /// an error (returned, then retried after a backoff) or shutdown.
    fn session<'a>(&'a self, ctx: &'a mut Ctx) -> BoxFuture<'a, Result<(), String>>;
}

/// What `GET /sources` shows of one source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceState {
    /// The source's (and stream's) name.
    pub name: String,
    /// `postgres` or `nats`.
    pub kind: &'static str,
    /// Where it reads, password masked.
    pub url: String,
    /// `connecting`, `snapshot`, `streaming`, `retrying` or `stopped`.
    pub state: &'static str,
    /// The last position applied (durable with a data directory).
    pub position: Option<String>,
    /// How far behind upstream it is, in the source's terms.
    pub lag: Value,
    /// Requests submitted and not answered yet.
    pub in_flight: usize,
    /// Changes (events) applied.
    pub changes: u64,
    /// Requests applied.
    pub requests: u64,
    /// Requests a plugin refused (kept as dead letters).
    pub refused: u64,
    /// Sessions that ended in an error.
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it happened, milliseconds since the Unix epoch.
    pub last_error_at_ms: Option<u64>,
}

/// Every configured source's state, shared between the runners and
/// `GET /sources`.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    states: Vec<Arc<Mutex<SourceState>>>,
}

impl Registry {
    /// Every source's state, for `GET /sources`.
    pub(crate) fn list(&self) -> Vec<SourceState> {
        self.states
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// Starts a runner for each source; they stop at `shutdown`. `positions`
/// were read back from the log (empty in memory); `durable` says whether
/// requests are logged (so their marks are kept).
pub(crate) fn start(
    specs: &[SourceSpec],
    engine: &EngineHandle,
    positions: BTreeMap<String, String>,
    durable: bool,
    shutdown: CancellationToken,
) -> Registry {
    let mut registry = Registry::default();
    for spec in specs {
        let source: Box<dyn Source> = if spec.url.starts_with("nats://") {
            Box::new(nats::Nats::new(spec, durable))
        } else {
            Box::new(postgres::Postgres::new(spec, durable))
        };
        let state = Arc::new(Mutex::new(SourceState {
            name: spec.name.clone(),
            kind: source.kind(),
            url: crate::redact::redact(&spec.url),
            state: "connecting",
            position: positions.get(&spec.name).cloned(),
            lag: Value::Null,
            ..SourceState::default()
        }));
        registry.states.push(state.clone());
        let ctx = Ctx {
            name: spec.name.clone(),
            engine: engine.clone(),
            state,
            durable,
            position: positions.get(&spec.name).cloned(),
            in_flight: VecDeque::new(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(run(source, ctx));
    }
    registry
}

/// Runs sessions until shutdown, with a backoff after each failure.
async fn run(source: Box<dyn Source>, mut ctx: Ctx) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        ctx.set_state("connecting");
        let shutdown = ctx.shutdown.clone();
        let outcome = tokio::select! {
            outcome = source.session(&mut ctx) => outcome,
            _ = shutdown.cancelled() => Ok(()),
        };
        // What was submitted is answered either way; its position counts.
        let drained = ctx.drain().await;
        if ctx.shutdown.is_cancelled() {
            ctx.set_state("stopped");
            return;
        }
        let error = match (outcome, drained) {
            (Err(e), _) | (Ok(()), Err(e)) => e,
            (Ok(()), Ok(_)) => "the session ended".to_owned(),
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tracing::warn!(source = %ctx.name, error = %error, retry_in_ms = backoff.as_millis() as u64, "source session failed; retrying");
        crate::metrics::get().source_errors.inc();
        {
            let mut state = ctx.lock();
            state.errors += 1;
            state.last_error = Some(error);
            state.last_error_at_ms = Some(crate::durable::now_ms());
            state.state = "retrying";
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {
                ctx.set_state("stopped");
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A submitted request waiting for its answer.
struct Pending {
    answer: oneshot::Receiver<Result<Ingested, IngestError>>,
    position: String,
    changes: usize,
}

/// A source's side of the host: where it submits requests, its position,
/// its state.
pub(crate) struct Ctx {
    name: String,
    engine: EngineHandle,
    state: Arc<Mutex<SourceState>>,
    durable: bool,
    /// The last position applied (or refused), in answer order.
    position: Option<String>,
    in_flight: VecDeque<Pending>,
    shutdown: CancellationToken,
}

impl Ctx {
    /// The source's name (and stream).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The last position applied; a session resumes strictly after it.
    pub(crate) fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// Requests submitted and not answered yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shown as the source's state.
    pub(crate) fn set_state(&self, state: &'static str) {
        self.lock().state = state;
    }

    /// Shown as the source's lag.
    pub(crate) fn set_lag(&self, lag: Value) {
        self.lock().lag = lag;
    }

    /// Submits `events` (serialized JSON objects, one line each) as one
    /// request that brings the source to `position` once applied. Waits
    /// while [`WINDOW`] requests are in flight. Returns the positions
    /// answered meanwhile, in order (applied, or refused by a plugin and
    /// dead-lettered), for the source to confirm upstream; an error ends
    /// the session.
    pub(crate) async fn submit(
        &mut self,
        events: &[String],
        position: String,
    ) -> Result<Vec<String>, String> {
        let mut body = IngestBody::from_events(events.iter().map(String::as_str));
        if self.durable {
            body = body.with_source(SourceMark {
                source: self.name.clone(),
                position: position.clone(),
            });
        }
        let (reply, answer) = oneshot::channel();
        self.engine.send(Command::Ingest {
            stream: self.name.clone(),
            body: Arc::new(body),
            reply,
        });
        self.in_flight.push_back(Pending {
            answer,
            position,
            changes: events.len(),
        });
        let mut done = self.settle_ready()?;
        while self.in_flight.len() >= WINDOW {
            done.extend(self.settle_front().await?);
        }
        self.lock().in_flight = self.in_flight.len();
        Ok(done)
    }

    /// The positions answered so far without waiting.
    pub(crate) fn settle_ready(&mut self) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        while let Some(front) = self.in_flight.front_mut() {
            match front.answer.try_recv() {
                Ok(outcome) => {
                    let pending = self.in_flight.pop_front().expect("front exists");
                    done.extend(self.settled(pending.position, pending.changes, outcome)?);
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.in_flight.pop_front();
                    return Err("the server is shutting down".into());
                }
            }
        }
        self.lock().in_flight = self.in_flight.len();
        Ok(done)
    }

    /// Waits for every request in flight; returns their positions.
    pub(crate) async fn drain(&mut self) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        let mut failed = None;
        while !self.in_flight.is_empty() {
            match self.settle_front().await {
                Ok(positions) => done.extend(positions),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.lock().in_flight = 0;
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    async fn settle_front(&mut self) -> Result<Option<String>, String> {
        let Some(Pending {
            answer,
            position,
            changes,
        }) = self.in_flight.pop_front()
        else {
            return Ok(None);
        };
        let outcome = answer.await.unwrap_or(Err(IngestError::ShuttingDown));
        self.settled(position, changes, outcome)
    }

    /// Counts an answer; `Ok(Some(position))` when the source may confirm
    /// it upstream.
    fn settled(
        &mut self,
        position: String,
        changes: usize,
        outcome: Result<Ingested, IngestError>,
    ) -> Result<Option<String>, String> {
        let metrics = crate::metrics::get();
        match outcome {
            Ok(_) => {
                metrics.source_changes.inc_by(changes as u64);
                self.position = Some(position.clone());
                let mut state = self.lock();
                state.changes += changes as u64;
                state.requests += 1;
                state.position = Some(position.clone());
                Ok(Some(position))
            }
            // The plugin refused it: a dead letter, and the source goes on.
            Err(
                refused @ (IngestError::Projector { .. }
                | IngestError::ProjectorCrashed { .. }
                | IngestError::ProjectorTimeout { .. }),
            ) => {
                metrics.source_refused.inc();
                tracing::warn!(source = %self.name, position = %position, error = %refused, "a plugin refused a source's change; kept as a dead letter, going on");
                self.position = Some(position.clone());
                let mut state = self.lock();
                state.refused += 1;
                state.position = Some(position.clone());
                state.last_error = Some(format!("refused at {}: {refused}", position));
                state.last_error_at_ms = Some(crate::durable::now_ms());
                Ok(Some(position))
            }
            // Nothing consumes the stream yet, the log cannot be written,
            // the host stops: retried from the last position.
            Err(other) => Err(other.to_string()),
        }
    }
}

/// `GET /sources`.
pub(crate) fn status(registry: &Registry) -> Value {
    json!({ "sources": registry.list() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_name_a_stream_and_a_known_scheme() {
        let spec: SourceSpec = "orders=postgres://u@h:5432/db?publication=vista"
            .parse()
            .unwrap();
        assert_eq!(spec.name, "orders");
        assert!(spec.url.starts_with("postgres://"));
        assert!("trades=nats://127.0.0.1:4222?stream=T"
            .parse::<SourceSpec>()
            .is_ok());
        assert!("orders".parse::<SourceSpec>().is_err());
        assert!("a b=nats://x".parse::<SourceSpec>().is_err());
        assert!("orders=mysql://x".parse::<SourceSpec>().is_err());
    }
}
