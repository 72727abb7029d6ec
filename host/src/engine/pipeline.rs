//! Requests in flight: the state machine an ingest request goes through on
//! the engine thread, from arrival to its answer.
//!
//! ```text
//! deferred --dispatch--> in_flight --all answered--> awaiting_log --durable--> committing --applied--> answered
//!                                                 \-(in memory, replaying)----^
//! ```
//!
//! - *deferred*: a consuming plugin is busy; requests wait in arrival order,
//!   so each projection reads the state its predecessors committed.
//! - *in flight*: handed to every consuming plugin's projector (`busy`
//!   holds the plugin until it answers); answered with the first failure,
//!   or with `projector-timeout` when a projector makes no progress.
//! - *awaiting the log*: `_seq`s reserved, the log record written, not
//!   durable yet. The plugin's next request may project meanwhile, over
//!   these mutations (`pending`); if the record cannot be written, those
//!   requests are refused with it (they are *doomed*).
//! - *committing*: applied one request after another in record order,
//!   [`COMMIT_CHUNK`] mutations at a time, so the engine handles other
//!   commands between chunks.
//!
//! It is its own type, apart from the engine, so the rules of ordering,
//! log failures and deadlines can be tested without sockets, plugins or a
//! log: everything else it needs (the projectors, the log, the store) comes
//! through [`Env`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use vista_plugin_api::Mutation;

use super::api::{IngestError, Ingested};
use crate::durable::{SourceMark, WriterReport};
use crate::ids::{PluginName, Seq};
use crate::ingest::IngestBody;
use crate::projector::{ProjectFailure, ProjectJob, Projected, Projection};

/// How a timed-out request's dead letter begins.
pub(super) const TIMEOUT_MESSAGE: &str = "the projector made no progress for";

/// Mutations applied per commit step before the engine looks at its
/// commands again: a request of up to 1,024 events (the common bulk
/// batch of 1,000 among them) is written in one step, all of it after its
/// answer has gone out (see [`Pipeline::commit_step`]).
pub const COMMIT_CHUNK: usize = 1024;

/// The `busy` ticket of a plugin held for a reprojection's final pass.
pub(super) const REPROJECTION_TICKET: u64 = u64::MAX;

/// What the pipeline needs from the rest of the engine.
pub(super) trait Env {
    /// Loaded plugins consuming `stream`, in name order.
    fn consumers(&self, stream: &str) -> Vec<PluginName>;
    /// Why `plugin` serves nothing until a new build loads (it timed out on
    /// a thread, or crashed too often), if it does not.
    fn refusal(&self, plugin: &str) -> Option<IngestError>;
    /// Hands a projection to `plugin`'s projector; false if it is gone.
    /// `pending` gives the plugin's logged, unapplied mutations, asked for
    /// only by a projector that must start afresh first.
    fn submit(
        &mut self,
        plugin: &str,
        job: ProjectJob,
        pending: &dyn Fn() -> Vec<Mutation>,
    ) -> bool;
    /// Whether `plugin`'s projector reads the logged, unapplied mutations
    /// from each job ([`ProjectJob::pending`]).
    fn needs_pending(&self, plugin: &str) -> bool;
    /// The fate of a request `plugin` projected: applied or refused.
    fn settle(&mut self, plugin: &str, ticket: u64, applied: bool);
    /// `plugin`'s projector must start afresh before its next request
    /// (what it mirrors was refused).
    fn resync(&mut self, plugin: &str);
    /// `plugin`'s progress counter (`None`: not loaded).
    fn progress(&self, plugin: &str) -> Option<u64>;
    /// `plugin` made no progress for `timeout_ms`.
    fn timed_out(&mut self, plugin: &str, timeout_ms: u64, pending: &[Mutation]);
    /// `plugin`'s projector process died (`what`: how).
    fn crashed(&mut self, plugin: &str, what: String);
    /// Keeps the event a plugin refused, crashed or timed out on.
    fn dead_letter(
        &mut self,
        stream: &str,
        body: &IngestBody,
        plugin: &str,
        failure: &ProjectFailure,
    );
    /// Whether a request of `mutations` may be committed at all.
    fn admit(&self, mutations: u64, plugins: &[PluginName]) -> Result<(), IngestError>;
    /// Logs a request first (`Some(record number)`: applied once durable),
    /// or not at all (`None`: applied at once).
    fn log(
        &mut self,
        stream: &str,
        first_seq: u64,
        mutations: u64,
        body: Bytes,
        source: Option<SourceMark>,
    ) -> Option<u64>;
    /// Applies a chunk to the store (after advancing `_seq` to
    /// `advance_to`, if set), calling `ends_at` with the `_seq` of its last
    /// mutation before writing the first. Its frames follow: the engine
    /// runs the request's changes through the views after the answer, or
    /// before it handles anything else but an ingest request.
    fn apply(
        &mut self,
        advance_to: Option<u64>,
        chunk: &mut dyn ExactSizeIterator<Item = Mutation>,
        ends_at: &mut dyn FnMut(Seq),
    );
    /// A request (log record `rec`, 0 if none) was applied.
    fn committed(&mut self, rec: u64, events: u64);
    /// Runs before waiting requests are dispatched (a reprojection waiting
    /// for its final pass takes its plugin first).
    fn before_dispatch(&mut self, pipeline: &mut Pipeline);
}

/// An ingest request waiting for a busy plugin.
pub(super) struct Waiting {
    pub(super) stream: String,
    pub(super) body: Arc<IngestBody>,
    pub(super) reply: oneshot::Sender<Result<Ingested, IngestError>>,
    /// A request every host (or every replay) must answer alike: one whose
    /// projector process crashes is projected once more in a fresh child
    /// before it is refused, so a transient fault does not drop it.
    pub(super) retry_crash: bool,
}

/// An ingest request being projected.
struct InFlight {
    /// Set when a request this one projected over could not be logged.
    doomed: Option<String>,
    stream: Arc<str>,
    body: Arc<IngestBody>,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
    /// Consuming plugins, in name order, with their answers so far.
    parts: Vec<Part>,
    /// See [`Waiting::retry_crash`].
    retry_crash: bool,
}

struct Part {
    plugin: PluginName,
    outcome: Option<Projection>,
    /// The worker's counter when the request was submitted.
    first_progress: u64,
    /// Progress probe: the worker's counter when last seen changing, and when.
    last_progress: u64,
    progress_at: Instant,
}

/// A request whose projections all succeeded, being applied chunk by chunk.
pub(super) struct Commit {
    /// Mutations in commit order, still to apply.
    mutations: std::vec::IntoIter<Mutation>,
    pub(super) plugins: Vec<PluginName>,
    events: usize,
    /// `_seq` reserved for the first mutation.
    first_seq: u64,
    /// Whether the first chunk has been applied.
    started: bool,
    /// Its log record (0 without a data directory).
    rec: u64,
    reply: oneshot::Sender<Result<Ingested, IngestError>>,
}

/// Requests from arrival to answer (see the module doc).
pub(super) struct Pipeline {
    projector_timeout: Duration,
    in_flight: HashMap<u64, InFlight>,
    /// Plugins projecting a request, and which.
    pub(super) busy: HashMap<PluginName, u64>,
    deferred: VecDeque<Waiting>,
    /// Requests being committed, one after another, chunk by chunk.
    pub(super) committing: VecDeque<Commit>,
    /// Requests whose log record is not durable yet, in record order.
    pub(super) awaiting_log: VecDeque<Commit>,
    /// The last `_seq` reserved.
    pub(super) last_reserved_seq: u64,
    next_ticket: u64,
}

impl Pipeline {
    pub(super) fn new(projector_timeout: Duration) -> Self {
        Self {
            projector_timeout,
            in_flight: HashMap::new(),
            busy: HashMap::new(),
            deferred: VecDeque::new(),
            committing: VecDeque::new(),
            awaiting_log: VecDeque::new(),
            last_reserved_seq: 0,
            next_ticket: 1,
        }
    }

    /// Nothing projecting, waiting or being applied (the log may still
    /// hold records to make durable).
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.committing.is_empty() && self.deferred.is_empty()
    }

    /// Whether any request involving `plugin` is awaiting the log or being
    /// applied.
    pub(super) fn holds_commits_of(&self, plugin: &str) -> bool {
        self.awaiting_log
            .iter()
            .chain(self.committing.iter())
            .any(|c| c.plugins.iter().any(|p| p.as_str() == plugin))
    }

    /// Starts projecting a request, or queues it behind a busy plugin.
    pub(super) fn ingest(&mut self, request: Waiting, env: &mut dyn Env) {
        let consumers = env.consumers(&request.stream);
        let shares_a_plugin = |w: &Waiting| {
            env.consumers(&w.stream)
                .into_iter()
                .any(|name| consumers.contains(&name))
        };
        let waits = consumers.iter().any(|c| !self.can_project(c))
            || self.deferred.iter().any(shares_a_plugin);
        if waits {
            self.deferred.push_back(request);
        } else {
            self.dispatch(request, consumers, env);
        }
    }

    /// Whether `plugin` may start projecting: it is not projecting (or held
    /// by a reprojection) and none of its requests is being applied.
    fn can_project(&self, plugin: &str) -> bool {
        !self.busy.contains_key(plugin)
            && !self
                .committing
                .iter()
                .any(|c| c.plugins.iter().any(|p| p.as_str() == plugin))
    }

    /// Whether the oldest commit may apply its next chunk: it started
    /// already, or none of its plugins is projecting (a projection must not
    /// read a half-applied request it counts as pending).
    pub(super) fn can_commit(&self) -> bool {
        self.committing
            .front()
            .is_some_and(|c| c.started || !c.plugins.iter().any(|p| self.busy.contains_key(p)))
    }

    /// The logged, not yet applied mutations of requests involving any of
    /// `plugins`, in log order.
    fn pending_for(&self, plugins: &[PluginName]) -> Vec<Mutation> {
        self.awaiting_log
            .iter()
            .filter(|c| c.plugins.iter().any(|p| plugins.contains(p)))
            .flat_map(|c| c.mutations.as_slice().iter().cloned())
            .collect()
    }

    /// Hands a request to its consumers' projectors.
    fn dispatch(&mut self, request: Waiting, consumers: Vec<PluginName>, env: &mut dyn Env) {
        let Waiting {
            stream,
            body,
            reply,
            retry_crash,
        } = request;
        if consumers.is_empty() {
            let _ = reply.send(Err(IngestError::UnknownStream(stream)));
            return;
        }
        if let Some(refused) = consumers.iter().find_map(|c| env.refusal(c)) {
            let _ = reply.send(Err(refused));
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let stream: Arc<str> = stream.into();
        let now = Instant::now();
        // Only a projector that reads the shared store needs the logged,
        // unapplied mutations handed over (a process keeps them mirrored).
        let pending = if consumers.iter().any(|c| env.needs_pending(c)) {
            Arc::new(self.pending_for(&consumers))
        } else {
            Arc::default()
        };
        let mut parts = Vec::with_capacity(consumers.len());
        // With one consumer, only a failed log write (which resyncs its
        // projector anyway) or a shutdown refuses what it projected.
        let undoable = consumers.len() > 1;
        for name in consumers {
            let unapplied = self
                .awaiting_log
                .iter()
                .filter(|c| c.plugins.contains(&name))
                .count();
            let job = ProjectJob {
                ticket,
                stream: stream.clone(),
                body: body.clone(),
                pending: pending.clone(),
                undoable,
                unapplied,
            };
            let own_pending = || self.pending_for(std::slice::from_ref(&name));
            let submitted = env.submit(&name, job, &own_pending);
            let progress = env.progress(&name).unwrap_or(0);
            let outcome =
                (!submitted).then(|| Err(ProjectFailure::error(0, "the projector is gone".into())));
            if outcome.is_none() {
                self.busy.insert(name.clone(), ticket);
            }
            parts.push(Part {
                first_progress: progress,
                last_progress: progress,
                progress_at: now,
                plugin: name,
                outcome,
            });
        }
        self.in_flight.insert(
            ticket,
            InFlight {
                doomed: None,
                stream,
                body,
                reply,
                parts,
                retry_crash,
            },
        );
        self.finish_if_done(ticket, env);
    }

    /// A projector answered.
    pub(super) fn projected(&mut self, projected: Projected, env: &mut dyn Env) {
        if let Some(crash) = projected.crash() {
            env.crashed(&projected.plugin, crash.describe());
        }
        if !self.in_flight.contains_key(&projected.ticket) {
            // A request already answered (failed or timed out elsewhere).
            self.release(&projected.plugin, projected.ticket);
            env.settle(&projected.plugin, projected.ticket, false);
        }
        if let Some(request) = self.in_flight.get_mut(&projected.ticket) {
            if let Some(part) = request
                .parts
                .iter_mut()
                .find(|p| p.plugin.as_str() == projected.plugin && p.outcome.is_none())
            {
                part.outcome = Some(projected.outcome);
            }
            self.finish_if_done(projected.ticket, env);
        }
        self.pump_deferred(env);
    }

    /// Answers a request once it failed or every projector answered.
    fn finish_if_done(&mut self, ticket: u64, env: &mut dyn Env) {
        let Some(request) = self.in_flight.get(&ticket) else {
            return;
        };
        let failed = request
            .parts
            .iter()
            .find(|p| matches!(p.outcome, Some(Err(_))));
        if failed.is_none() && request.parts.iter().any(|p| p.outcome.is_none()) {
            return;
        }
        let request = self.in_flight.remove(&ticket).expect("looked up above");
        // The projection is over: its plugins may take their next request
        // (over this one's logged mutations) while this one is logged.
        for answered in request.parts.iter().filter(|p| p.outcome.is_some()) {
            self.release(&answered.plugin, ticket);
        }
        // Whether it will be applied: every part answered without error,
        // and nothing it projected over failed to be logged.
        let applies = request.doomed.is_none()
            && request
                .parts
                .iter()
                .all(|p| matches!(p.outcome, Some(Ok(_))));
        for part in request.parts.iter().filter(|p| p.outcome.is_some()) {
            env.settle(&part.plugin, ticket, applies);
        }
        if let Some(reason) = request.doomed.clone() {
            let _ = request
                .reply
                .send(Err(IngestError::StorageUnavailable(reason)));
            self.pump_deferred(env);
            return;
        }
        if let Some(part) = request
            .parts
            .iter()
            .find(|p| matches!(p.outcome, Some(Err(_))))
        {
            let Some(Err(failure)) = &part.outcome else {
                unreachable!("matched above")
            };
            if failure.crash.is_some() && request.retry_crash {
                tracing::warn!(plugin = %part.plugin, line = failure.position, "projector process crashed; projecting the request once more in a fresh one");
                self.deferred.push_front(Waiting {
                    stream: request.stream.to_string(),
                    body: request.body,
                    reply: request.reply,
                    retry_crash: false,
                });
                self.pump_deferred(env);
                return;
            }
            env.dead_letter(&request.stream, &request.body, &part.plugin, failure);
            let error = match failure.crash {
                Some(crash) => IngestError::ProjectorCrashed {
                    plugin: part.plugin.to_string(),
                    position: failure.position,
                    message: failure.message.clone(),
                    crash,
                },
                None => IngestError::Projector {
                    plugin: part.plugin.to_string(),
                    position: failure.position,
                    message: failure.message.clone(),
                },
            };
            let _ = request.reply.send(Err(error));
            return;
        }
        let plugins: Vec<PluginName> = request.parts.iter().map(|p| p.plugin.clone()).collect();
        let outcomes: Vec<Vec<Vec<Mutation>>> = request
            .parts
            .into_iter()
            .map(|p| match p.outcome {
                Some(Ok(produced)) => produced,
                _ => unreachable!("every part answered without error"),
            })
            .collect();
        // Event order, then plugin order.
        let events = outcomes.first().map_or(0, Vec::len);
        let mut per_plugin: Vec<std::vec::IntoIter<Vec<Mutation>>> =
            outcomes.into_iter().map(Vec::into_iter).collect();
        let mut ordered = Vec::new();
        for _ in 0..events {
            for produced in &mut per_plugin {
                ordered.extend(produced.next().unwrap_or_default());
            }
        }
        self.submit_commit(
            ordered,
            plugins,
            request.body.len(),
            &request.stream,
            request.body.raw().clone(),
            request.body.source().cloned(),
            request.reply,
            env,
        );
        self.pump_deferred(env);
    }

    /// Reserves the `_seq`s of a request's mutations and logs it first
    /// (applied once durable), applies it at once (in memory, or replaying
    /// the log), or refuses it (the log is closed), as `env` says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit_commit(
        &mut self,
        mutations: Vec<Mutation>,
        plugins: Vec<PluginName>,
        events: usize,
        stream: &str,
        body: Bytes,
        source: Option<SourceMark>,
        reply: oneshot::Sender<Result<Ingested, IngestError>>,
        env: &mut dyn Env,
    ) {
        let count = mutations.len() as u64;
        if let Err(refused) = env.admit(count, &plugins) {
            let _ = reply.send(Err(refused));
            return;
        }
        let first_seq = self.last_reserved_seq + 1;
        self.last_reserved_seq += count;
        let mut commit = Commit {
            mutations: mutations.into_iter(),
            plugins,
            events,
            first_seq,
            started: false,
            rec: 0,
            reply,
        };
        match env.log(stream, first_seq, count, body, source) {
            Some(rec) => {
                commit.rec = rec;
                self.awaiting_log.push_back(commit);
            }
            None => {
                self.committing.push_back(commit);
                if self.committing.len() == 1 {
                    // Nothing else is committing: small requests finish at once.
                    self.commit_step(env);
                }
            }
        }
    }

    /// The log writer made records durable, or failed to write them
    /// (checkpoints are the engine's business).
    pub(super) fn logged(&mut self, report: WriterReport, env: &mut dyn Env) {
        match report {
            WriterReport::Durable(upto) => {
                while self.awaiting_log.front().is_some_and(|c| c.rec <= upto) {
                    let commit = self.awaiting_log.pop_front().expect("checked");
                    self.committing.push_back(commit);
                }
                if !self.committing.is_empty() && !self.committing[0].started {
                    self.commit_step(env);
                }
            }
            WriterReport::Failed { recs, reason } => {
                // Later requests of the same plugins projected over the
                // failed ones: they fail too, and so do projections running.
                let first_failed = recs.iter().min().copied().unwrap_or(u64::MAX);
                let mut doomed_plugins: HashSet<PluginName> = HashSet::new();
                for commit in &self.awaiting_log {
                    let depends = recs.contains(&commit.rec)
                        || (commit.rec > first_failed
                            && commit.plugins.iter().any(|p| doomed_plugins.contains(p)));
                    if depends {
                        doomed_plugins.extend(commit.plugins.iter().cloned());
                    }
                }
                let (failed, kept): (VecDeque<Commit>, VecDeque<Commit>) =
                    self.awaiting_log.drain(..).partition(|c| {
                        recs.contains(&c.rec)
                            || (c.rec > first_failed
                                && c.plugins.iter().any(|p| doomed_plugins.contains(p)))
                    });
                for request in self.in_flight.values_mut() {
                    if request
                        .parts
                        .iter()
                        .any(|p| doomed_plugins.contains(&p.plugin))
                    {
                        request.doomed = Some(reason.clone());
                    }
                }
                self.awaiting_log = kept;
                // Their projectors mirrored what is now refused.
                for plugin in &doomed_plugins {
                    env.resync(plugin);
                }
                for commit in failed {
                    let _ = commit
                        .reply
                        .send(Err(IngestError::StorageUnavailable(reason.clone())));
                }
                self.pump_deferred(env);
            }
            WriterReport::Checkpointed(_) => {}
        }
    }

    /// Applies the next chunk of the oldest commit; a finished commit
    /// answers its request and the next one starts.
    pub(super) fn commit_step(&mut self, env: &mut dyn Env) {
        if !self.can_commit() {
            return;
        }
        let Some(mut commit) = self.committing.pop_front() else {
            return;
        };
        let chunk = commit.mutations.len().min(COMMIT_CHUNK);
        // A refused request between reservation and commit leaves a gap.
        let advance_to = (!commit.started).then(|| commit.first_seq - 1);
        commit.started = true;
        if chunk < commit.mutations.len() {
            env.apply(
                advance_to,
                &mut commit.mutations.by_ref().take(chunk),
                &mut |_| {},
            );
            self.committing.push_front(commit);
            return;
        }
        // The answer goes out as the last chunk's writing starts: nothing
        // else runs on the engine until it is written, so any command after
        // the answer finds the request applied, and the answer travels
        // while the store is written.
        let Commit {
            mut mutations,
            events,
            rec,
            reply,
            ..
        } = commit;
        crate::metrics::get().events_ingested.inc_by(events as u64);
        let mut reply = Some(reply);
        env.apply(advance_to, &mut mutations, &mut |seq| {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Ok(Ingested {
                    accepted: events,
                    seq: Some(seq),
                }));
            }
        });
        env.committed(rec, events as u64);
        self.pump_deferred(env);
    }

    /// Frees `plugin` if it is busy with `ticket`.
    pub(super) fn release(&mut self, plugin: &str, ticket: u64) {
        if self.busy.get(plugin) == Some(&ticket) {
            self.busy.remove(plugin);
        }
    }

    /// Dispatches waiting requests whose plugins are free, keeping each
    /// plugin's requests in arrival order.
    pub(super) fn pump_deferred(&mut self, env: &mut dyn Env) {
        env.before_dispatch(self);
        if self.deferred.is_empty() {
            return;
        }
        let mut claimed: HashSet<PluginName> = HashSet::new();
        let mut still_waiting = VecDeque::new();
        while let Some(request) = self.deferred.pop_front() {
            let consumers = env.consumers(&request.stream);
            if consumers
                .iter()
                .any(|c| !self.can_project(c) || claimed.contains(c))
            {
                claimed.extend(consumers);
                still_waiting.push_back(request);
            } else {
                self.dispatch(request, consumers, env);
            }
        }
        self.deferred = still_waiting;
    }

    /// Time until the earliest projector deadline.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        self.in_flight
            .values()
            .flat_map(|r| r.parts.iter().filter(|p| p.outcome.is_none()))
            .map(|p| {
                (p.progress_at + self.projector_timeout).saturating_duration_since(Instant::now())
            })
            .min()
            .map(|d| d.max(Duration::from_millis(1)))
    }

    /// Answers 503 `projector-timeout` the request of every projector that
    /// made no progress for the timeout (the projector is restarted or,
    /// on a thread, marked stuck: see [`Env::timed_out`]).
    pub(super) fn check_deadlines(&mut self, env: &mut dyn Env) {
        let now = Instant::now();
        // (ticket, plugin, the line it is stuck on)
        let mut expired: Vec<(u64, PluginName, usize)> = Vec::new();
        for (ticket, request) in &mut self.in_flight {
            for part in request.parts.iter_mut().filter(|p| p.outcome.is_none()) {
                let Some(progress) = env.progress(&part.plugin) else {
                    continue;
                };
                if progress != part.last_progress {
                    part.last_progress = progress;
                    part.progress_at = now;
                } else if now.duration_since(part.progress_at) >= self.projector_timeout {
                    let done = progress.saturating_sub(part.first_progress) as usize;
                    let line = request.body.events().nth(done).map_or(0, |(line, _)| line);
                    expired.push((*ticket, part.plugin.clone(), line));
                }
            }
        }
        for (ticket, name, line) in expired {
            let timeout_ms = self.projector_timeout.as_millis() as u64;
            let pending = self.pending_for(std::slice::from_ref(&name));
            env.timed_out(&name, timeout_ms, &pending);
            self.release(&name, ticket);
            if let Some(request) = self.in_flight.remove(&ticket) {
                // Plugins of this request that answered are free.
                for answered in request.parts.iter().filter(|p| p.outcome.is_some()) {
                    self.release(&answered.plugin, ticket);
                    env.settle(&answered.plugin, ticket, false);
                }
                let failure =
                    ProjectFailure::error(line, format!("{TIMEOUT_MESSAGE} {timeout_ms} ms"));
                env.dead_letter(&request.stream, &request.body, &name, &failure);
                let _ = request.reply.send(Err(IngestError::ProjectorTimeout {
                    plugin: name.to_string(),
                    timeout_ms,
                }));
            }
        }
        self.pump_deferred(env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The rest of the engine, faked: plugins by stream, projectors that
    /// only record what they were given, a log that records, a store that
    /// records the keys applied.
    #[derive(Default)]
    struct Fake {
        streams: BTreeMap<String, Vec<String>>,
        /// (plugin, ticket) handed to projectors, in order.
        submitted: Vec<(String, u64)>,
        /// Whether each submitted job was undoable, in the same order.
        undoable: Vec<bool>,
        /// (plugin, ticket, applied) of every settle.
        settled: Vec<(String, u64, bool)>,
        progress: HashMap<String, u64>,
        stuck: HashSet<String>,
        /// Log first (records numbered from 1), or apply at once.
        logging: bool,
        logged: Vec<u64>,
        /// Keys applied, in order.
        applied: Vec<String>,
        /// (plugin, line) of every dead letter.
        dead_letters: Vec<(String, usize)>,
    }

    impl Fake {
        fn with(streams: &[(&str, &[&str])], logging: bool) -> Self {
            let streams: BTreeMap<String, Vec<String>> = streams
                .iter()
                .map(|(s, ps)| (s.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect();
            let progress = streams.values().flatten().map(|p| (p.clone(), 0)).collect();
            Fake {
                streams,
                progress,
                logging,
                ..Fake::default()
            }
        }
    }

    impl Env for Fake {
        fn consumers(&self, stream: &str) -> Vec<PluginName> {
            self.streams
                .get(stream)
                .map(|plugins| plugins.iter().map(|p| p.as_str().into()).collect())
                .unwrap_or_default()
        }
        fn refusal(&self, plugin: &str) -> Option<IngestError> {
            self.stuck
                .contains(plugin)
                .then(|| IngestError::PluginStuck {
                    plugin: plugin.to_owned(),
                })
        }
        fn submit(
            &mut self,
            plugin: &str,
            job: ProjectJob,
            _pending: &dyn Fn() -> Vec<Mutation>,
        ) -> bool {
            self.submitted.push((plugin.to_owned(), job.ticket));
            self.undoable.push(job.undoable);
            true
        }
        fn needs_pending(&self, _plugin: &str) -> bool {
            true
        }
        fn settle(&mut self, plugin: &str, ticket: u64, applied: bool) {
            self.settled.push((plugin.to_owned(), ticket, applied));
        }
        fn resync(&mut self, _plugin: &str) {}
        fn progress(&self, plugin: &str) -> Option<u64> {
            self.progress.get(plugin).copied()
        }
        fn timed_out(&mut self, plugin: &str, _timeout_ms: u64, _pending: &[Mutation]) {
            self.stuck.insert(plugin.to_owned());
        }
        fn crashed(&mut self, _plugin: &str, _what: String) {}
        fn dead_letter(&mut self, _: &str, _: &IngestBody, plugin: &str, failure: &ProjectFailure) {
            self.dead_letters
                .push((plugin.to_owned(), failure.position));
        }
        fn admit(&self, _mutations: u64, _plugins: &[PluginName]) -> Result<(), IngestError> {
            Ok(())
        }
        fn log(&mut self, _: &str, _: u64, _: u64, _: Bytes, _: Option<SourceMark>) -> Option<u64> {
            if !self.logging {
                return None;
            }
            self.logged.push(self.logged.len() as u64 + 1);
            self.logged.last().copied()
        }
        fn apply(
            &mut self,
            _advance_to: Option<u64>,
            chunk: &mut dyn ExactSizeIterator<Item = Mutation>,
            ends_at: &mut dyn FnMut(Seq),
        ) {
            ends_at(Seq((self.applied.len() + chunk.len()) as u64));
            self.applied.extend(chunk.map(|m| m.key));
        }
        fn committed(&mut self, _rec: u64, _events: u64) {}
        fn before_dispatch(&mut self, _pipeline: &mut Pipeline) {}
    }

    type Answer = oneshot::Receiver<Result<Ingested, IngestError>>;

    fn request(pipeline: &mut Pipeline, env: &mut Fake, stream: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        let body =
            IngestBody::parse(Bytes::from_static(b"{\"n\":1}\n{\"n\":2}\n")).expect("parses");
        pipeline.ingest(
            Waiting {
                stream: stream.to_owned(),
                body: Arc::new(body),
                reply,
                retry_crash: false,
            },
            env,
        );
        answer
    }

    /// `plugin` answers the `nth` request it was given with one mutation
    /// of key `key`.
    fn answer(pipeline: &mut Pipeline, env: &mut Fake, plugin: &str, nth: usize, key: &str) {
        let ticket = ticket_of(env, plugin, nth);
        pipeline.projected(
            Projected {
                ticket,
                plugin: plugin.to_owned(),
                outcome: Ok(vec![vec![Mutation::delete("E", key)]]),
            },
            env,
        );
    }

    fn ticket_of(env: &Fake, plugin: &str, nth: usize) -> u64 {
        env.submitted
            .iter()
            .filter(|(p, _)| p == plugin)
            .nth(nth)
            .expect("submitted")
            .1
    }

    #[test]
    fn requests_to_one_plugin_commit_in_arrival_order_and_wait_for_it() {
        let mut env = Fake::with(&[("s", &["a"]), ("t", &["b"])], false);
        let mut pipeline = Pipeline::new(Duration::from_secs(60));
        let mut first = request(&mut pipeline, &mut env, "s");
        let mut second = request(&mut pipeline, &mut env, "s");
        let mut other = request(&mut pipeline, &mut env, "t");
        // `a` projects the first request only; `b` is free and starts.
        assert_eq!(env.submitted.len(), 2);
        assert_eq!(pipeline.busy.get("a"), Some(&ticket_of(&env, "a", 0)));
        assert!(second.try_recv().is_err(), "the second request is deferred");
        answer(&mut pipeline, &mut env, "b", 0, "t1");
        assert!(other.try_recv().unwrap().is_ok());
        answer(&mut pipeline, &mut env, "a", 0, "s1");
        assert_eq!(first.try_recv().unwrap().unwrap().accepted, 2);
        // The deferred request went to `a` once it was free.
        answer(&mut pipeline, &mut env, "a", 1, "s2");
        assert!(second.try_recv().unwrap().is_ok());
        assert_eq!(env.applied, ["t1", "s1", "s2"]);
        assert!(pipeline.is_idle());
    }

    #[test]
    fn only_a_request_other_plugins_project_too_is_undoable_and_one_failing_refuses_it_for_all() {
        let mut env = Fake::with(&[("solo", &["a"]), ("shared", &["a", "b"])], false);
        let mut pipeline = Pipeline::new(Duration::from_secs(60));
        let mut solo = request(&mut pipeline, &mut env, "solo");
        assert_eq!(env.undoable, vec![false], "a sole consumer keeps no undo");
        answer(&mut pipeline, &mut env, "a", 0, "k1");
        assert!(solo.try_recv().unwrap().is_ok());
        assert_eq!(
            env.settled,
            vec![("a".into(), ticket_of(&env, "a", 0), true)]
        );

        let mut shared = request(&mut pipeline, &mut env, "shared");
        assert_eq!(env.undoable, vec![false, true, true]);
        answer(&mut pipeline, &mut env, "a", 1, "k2");
        let ticket = ticket_of(&env, "b", 0);
        pipeline.projected(
            Projected {
                ticket,
                plugin: "b".into(),
                outcome: Err(ProjectFailure::error(2, "refused".into())),
            },
            &mut env,
        );
        assert!(shared.try_recv().unwrap().is_err());
        // `a` projected it without error and must take it back out.
        assert!(
            env.settled.contains(&("a".into(), ticket, false)),
            "{:?}",
            env.settled
        );
        assert_eq!(env.applied, vec!["k1".to_owned()]);
    }

    #[test]
    fn requests_commit_in_log_order_once_durable() {
        let mut env = Fake::with(&[("s", &["a"])], true);
        let mut pipeline = Pipeline::new(Duration::from_secs(60));
        let mut first = request(&mut pipeline, &mut env, "s");
        answer(&mut pipeline, &mut env, "a", 0, "s1");
        // The next request projects while the first waits for the log.
        let mut second = request(&mut pipeline, &mut env, "s");
        answer(&mut pipeline, &mut env, "a", 1, "s2");
        assert_eq!(env.logged, [1, 2]);
        assert!(
            env.applied.is_empty(),
            "nothing is applied before it is durable"
        );
        pipeline.logged(WriterReport::Durable(2), &mut env);
        // The engine loop applies the rest, a chunk per turn.
        while pipeline.can_commit() {
            pipeline.commit_step(&mut env);
        }
        assert_eq!(env.applied, ["s1", "s2"]);
        assert!(first.try_recv().unwrap().is_ok() && second.try_recv().unwrap().is_ok());
    }

    #[test]
    fn a_failed_log_write_refuses_what_projected_over_it() {
        let mut env = Fake::with(&[("s", &["a"]), ("t", &["b"])], true);
        let mut pipeline = Pipeline::new(Duration::from_secs(60));
        let mut failed = request(&mut pipeline, &mut env, "s");
        answer(&mut pipeline, &mut env, "a", 0, "s1");
        let mut over_it = request(&mut pipeline, &mut env, "s");
        answer(&mut pipeline, &mut env, "a", 1, "s2");
        let mut projecting = request(&mut pipeline, &mut env, "s");
        let mut unrelated = request(&mut pipeline, &mut env, "t");
        answer(&mut pipeline, &mut env, "b", 0, "t1");
        pipeline.logged(
            WriterReport::Failed {
                recs: vec![1],
                reason: "disk full".into(),
            },
            &mut env,
        );
        let refused = |answer: &mut Answer| {
            matches!(
                answer.try_recv(),
                Ok(Err(IngestError::StorageUnavailable(reason))) if reason == "disk full"
            )
        };
        assert!(refused(&mut failed));
        assert!(refused(&mut over_it), "projected over the failed record");
        // The projection running over it is refused when it answers.
        answer(&mut pipeline, &mut env, "a", 2, "s3");
        assert!(refused(&mut projecting));
        // Another plugin's request is logged and applied as usual.
        pipeline.logged(WriterReport::Durable(3), &mut env);
        assert!(unrelated.try_recv().unwrap().is_ok());
        assert_eq!(env.applied, ["t1"]);
        assert!(pipeline.is_idle() && pipeline.awaiting_log.is_empty());
    }

    #[test]
    fn a_projector_without_progress_past_the_deadline_times_out_with_nothing_applied() {
        let mut env = Fake::with(&[("s", &["a", "b"])], false);
        let mut pipeline = Pipeline::new(Duration::from_millis(300));
        let mut stalled = request(&mut pipeline, &mut env, "s");
        let mut waiting = request(&mut pipeline, &mut env, "s");
        // `b` answered; `a` makes progress for a while, then none.
        answer(&mut pipeline, &mut env, "b", 0, "b1");
        std::thread::sleep(Duration::from_millis(150));
        *env.progress.get_mut("a").unwrap() += 1;
        pipeline.check_deadlines(&mut env);
        std::thread::sleep(Duration::from_millis(150));
        pipeline.check_deadlines(&mut env);
        assert!(stalled.try_recv().is_err(), "progress moved the deadline");
        assert!(pipeline.next_deadline().is_some());
        std::thread::sleep(Duration::from_millis(350));
        pipeline.check_deadlines(&mut env);
        assert!(matches!(
            stalled.try_recv(),
            Ok(Err(IngestError::ProjectorTimeout { plugin, timeout_ms: 300 })) if plugin == "a"
        ));
        assert!(env.stuck.contains("a"));
        // Its dead letter names the event it was stuck on: one done, the
        // second (line 2) not.
        assert_eq!(env.dead_letters, vec![("a".to_owned(), 2)]);
        // The next request of the stuck plugin is refused, not projected.
        assert!(matches!(
            waiting.try_recv(),
            Ok(Err(IngestError::PluginStuck { plugin })) if plugin == "a"
        ));
        assert!(env.applied.is_empty());
        assert!(pipeline.is_idle() && pipeline.busy.is_empty());
    }
}
