//! Projector threads: each loaded plugin build runs its projector on a
//! thread of its own, never on the engine thread or an async worker.
//!
//! Why a thread per plugin: plugin code is foreign and may loop forever. The
//! engine hands a whole ingest request to each consuming plugin's thread
//! ([`ProjectJob`]) and goes on serving other streams, subscriptions and
//! reloads; a thread that makes no progress for `--projector-timeout-ms` is
//! declared stuck by the engine and abandoned (threads cannot be killed; it
//! is reniced to the lowest priority so a spinning one costs little).
//!
//! Reads inside a request go through an [`Overlay`]: the request's own
//! staged mutations of a key are folded, once each, into a materialized
//! value, so a read costs one lookup and one serialization of the entity,
//! however many events of the request touched it (replaying the staged
//! history on every read made a request quadratic). Keys the request did not
//! touch are read from the shared store under its read lock, which is held
//! only to clone an `Arc`.
//!
//! A projector sees the committed store plus its *own* staged mutations:
//! plugins consuming the same stream project concurrently, and another
//! plugin's changes from the same request become visible once committed.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use vista_plugin_api::{apply_mutation, Hidden, Mutation};

use crate::ingest::IngestBody;
use crate::plugins::{FnStateReader, PluginLibrary};
use crate::store::Store;
use crate::vocab::FastMap;

/// The store shared by the engine (the only writer) and projector threads.
pub type SharedStore = Arc<RwLock<Store>>;

/// One ingest request for one plugin.
pub struct ProjectJob {
    /// Identifies the request in the engine.
    pub ticket: u64,
    /// The stream the events arrived on.
    pub stream: Arc<str>,
    /// The events.
    pub body: Arc<IngestBody>,
    /// Mutations of this plugin's earlier requests that are logged (or
    /// being logged) but not applied yet, in log order: the projection
    /// reads as if they were, since they will be before this request is.
    pub pending: Arc<Vec<Mutation>>,
}

/// The `event` index that marks a mutation of [`ProjectJob::pending`].
const PENDING: usize = usize::MAX;

/// The mutations each event produced (index = event index), or why the
/// request failed.
pub type Projection = Result<Vec<Vec<Mutation>>, ProjectFailure>;

/// A projector error or an invalid mutation, at one event.
#[derive(Debug, Clone)]
pub struct ProjectFailure {
    /// The event's line or item number.
    pub position: usize,
    /// The plugin's message, or what was wrong with its output.
    pub message: String,
}

/// What a projector thread reports back.
pub struct Projected {
    /// The request's ticket.
    pub ticket: u64,
    /// The plugin's name.
    pub plugin: String,
    /// The result.
    pub outcome: Projection,
}

/// Handle to one plugin build's projector thread.
pub struct ProjectorWorker {
    jobs: mpsc::Sender<ProjectJob>,
    progress: Arc<AtomicU64>,
    thread_id: Arc<AtomicI32>,
}

impl ProjectorWorker {
    /// Starts the thread. `done` receives every finished job.
    pub fn spawn(
        lib: Arc<PluginLibrary>,
        store: SharedStore,
        done: impl Fn(Projected) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<ProjectJob>();
        let progress = Arc::new(AtomicU64::new(0));
        let thread_id = Arc::new(AtomicI32::new(0));
        let (counter, tid) = (progress.clone(), thread_id.clone());
        std::thread::Builder::new()
            .name(format!("projector-{}", lib.manifest.name))
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(
                    unsafe { libc::syscall(libc::SYS_gettid) } as i32,
                    Ordering::Relaxed,
                );
                while let Ok(job) = queue.recv() {
                    let outcome = project_request(&lib, &store, &job, &counter);
                    done(Projected {
                        ticket: job.ticket,
                        plugin: lib.manifest.name.clone(),
                        outcome,
                    });
                }
            })?;
        Ok(Self {
            jobs,
            progress,
            thread_id,
        })
    }

    /// Queues a request; `false` if the thread is gone.
    pub fn submit(&self, job: ProjectJob) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Events projected so far by this thread: the engine's progress probe.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Gives a stuck thread the lowest CPU priority. The thread cannot be
    /// stopped; this keeps a spinning projector from starving the host.
    pub fn demote(&self) {
        let tid = self.thread_id.load(Ordering::Relaxed);
        if tid > 0 {
            // SAFETY: setpriority on a thread id of this process.
            let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
            if result != 0 {
                tracing::warn!(tid, "cannot lower the priority of a stuck projector thread");
            }
        }
    }
}

/// Projects every event of a request, staging each event's mutations in an
/// overlay so later events read them.
pub(crate) fn project_request(
    lib: &PluginLibrary,
    store: &SharedStore,
    job: &ProjectJob,
    progress: &AtomicU64,
) -> Projection {
    let overlay = Overlay::new(store, &job.pending);
    for index in 0..job.pending.len() {
        overlay.stage((PENDING, index));
    }
    let mut produced: Vec<Vec<Mutation>> = Vec::with_capacity(job.body.len());
    for (position, json) in job.body.events() {
        let fail = |message: String| ProjectFailure { position, message };
        let mutations = {
            let reader =
                FnStateReader(|entity: &str, key: &str| overlay.read(entity, key, &produced));
            lib.project(&job.stream, json, &reader).map_err(fail)?
        };
        for (index, mutation) in mutations.iter().enumerate() {
            check_mutation(lib, mutation).map_err(fail)?;
            overlay.stage((produced.len(), index));
        }
        produced.push(mutations);
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(produced)
}

/// Checks what a projector returned: only its own entities, and what
/// [`Mutation::validate`] accepts (a key, patches of objects, well-formed
/// aggregates, no host-only kind).
fn check_mutation(plugin: &PluginLibrary, mutation: &Mutation) -> Result<(), String> {
    if !plugin
        .manifest
        .entities
        .iter()
        .any(|e| e.name == mutation.entity)
    {
        return Err(format!(
            "mutation of entity {:?}, which this plugin does not own",
            mutation.entity
        ));
    }
    mutation.validate().map_err(|e| e.to_string())
}

/// A key the request has mutated: its value as of the last fold, and the
/// staged mutations (event index, mutation index) not folded in yet.
struct Staged {
    value: Option<Value>,
    /// Its hidden aggregate state (shared with the store until a
    /// `unique_count` or a delete changes it).
    hidden: Arc<Hidden>,
    unfolded: Vec<(usize, usize)>,
    loaded: bool,
}

/// The request's staged state over the shared store.
struct Overlay<'s> {
    store: &'s SharedStore,
    pending: &'s [Mutation],
    staged: RefCell<FastMap<(String, String), Staged>>,
    /// Mutations staged since the last read, not yet in `staged`: a
    /// projector that never reads state never pays for the map.
    unindexed: RefCell<Vec<(usize, usize)>>,
}

impl<'s> Overlay<'s> {
    fn new(store: &'s SharedStore, pending: &'s [Mutation]) -> Self {
        Self {
            store,
            pending,
            staged: RefCell::new(FastMap::default()),
            unindexed: RefCell::new(Vec::new()),
        }
    }

    fn stored(&self, entity: &str, key: &str) -> Option<Arc<Value>> {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        store.get(entity, key).cloned()
    }

    /// The stored value and hidden state, under one read lock.
    fn stored_with_hidden(&self, entity: &str, key: &str) -> (Option<Arc<Value>>, Arc<Hidden>) {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        (
            store.get(entity, key).cloned(),
            store.hidden(entity, key).cloned().unwrap_or_default(),
        )
    }

    /// A staged mutation: of this request, or pending from earlier ones.
    fn mutation<'m>(
        &'m self,
        produced: &'m [Vec<Mutation>],
        event: usize,
        index: usize,
    ) -> &'m Mutation {
        if event == PENDING {
            &self.pending[index]
        } else {
            &produced[event][index]
        }
    }

    /// Records that mutation `at` of this request was staged. Nothing is
    /// computed until a projector reads state.
    fn stage(&self, at: (usize, usize)) {
        self.unindexed.borrow_mut().push(at);
    }

    /// Moves the mutations staged since the last read into the per-key map.
    fn index(&self, produced: &[Vec<Mutation>]) {
        let mut staged = self.staged.borrow_mut();
        for (event, index) in self.unindexed.borrow_mut().drain(..) {
            let mutation = self.mutation(produced, event, index);
            staged
                .entry((mutation.entity.clone(), mutation.key.clone()))
                .or_insert_with(|| Staged {
                    value: None,
                    hidden: Arc::default(),
                    unfolded: Vec::new(),
                    loaded: false,
                })
                .unfolded
                .push((event, index));
        }
    }

    /// The JSON text of `entity[key]` as this request sees it.
    fn read(&self, entity: &str, key: &str, produced: &[Vec<Mutation>]) -> Option<String> {
        self.index(produced);
        let mut staged = self.staged.borrow_mut();
        let Some(entry) = staged.get_mut(&(entity.to_owned(), key.to_owned())) else {
            drop(staged);
            return self.stored(entity, key).map(|v| to_json(&v));
        };
        if !entry.loaded {
            let (value, hidden) = self.stored_with_hidden(entity, key);
            entry.value = value.map(|v| Value::clone(&v));
            entry.hidden = hidden;
            entry.loaded = true;
        }
        for (event, index) in entry.unfolded.drain(..) {
            let mutation = self.mutation(produced, event, index);
            if mutation.uses_hidden() {
                apply_mutation(&mut entry.value, Arc::make_mut(&mut entry.hidden), mutation);
            } else {
                apply_mutation(&mut entry.value, &mut Hidden::default(), mutation);
            }
        }
        entry.value.as_ref().map(to_json)
    }
}

/// JSON text of a value (`serde_json::to_string` writes straight into a
/// buffer; `Value::to_string` goes through `fmt` and is slower).
fn to_json(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pending_mutations_of_earlier_requests_are_read_first() {
        let store: SharedStore = Arc::new(RwLock::new(Store::new()));
        store
            .write()
            .unwrap()
            .apply(Mutation::patch("T", "k", json!({"n": 1, "l": [1]})));
        // Logged but not applied yet: +1 and an append.
        let pending = vec![
            Mutation::patch("T", "k", json!({"n": 2})),
            Mutation::patch("T", "k", json!({"l": [2]})).append("l"),
        ];
        let overlay = Overlay::new(&store, &pending);
        overlay.stage((PENDING, 0));
        overlay.stage((PENDING, 1));
        let produced = vec![vec![
            Mutation::patch("T", "k", json!({"l": [3]})).append("l")
        ]];
        overlay.stage((0, 0));
        let seen: Value =
            serde_json::from_str(&overlay.read("T", "k", &produced).unwrap()).unwrap();
        assert_eq!(
            (seen["n"].clone(), seen["l"].clone()),
            (json!(2), json!([1, 2, 3]))
        );
    }

    #[test]
    fn reads_see_staged_mutations_folded_once() {
        let store: SharedStore = Arc::new(RwLock::new(Store::new()));
        store
            .write()
            .unwrap()
            .apply(Mutation::patch("T", "k", json!({"n": 1, "keep": true})));
        let overlay = Overlay::new(&store, &[]);
        let produced = vec![
            vec![Mutation::patch("T", "k", json!({"n": 2}))],
            vec![Mutation::patch("T", "k", json!({"l": [1]})).append_capped("l", 2)],
            vec![Mutation::patch("T", "k", json!({"l": [2, 3]})).append_capped("l", 2)],
        ];
        overlay.stage((0, 0));
        let first: Value =
            serde_json::from_str(&overlay.read("T", "k", &produced).unwrap()).unwrap();
        assert_eq!(
            (first["n"].clone(), first["keep"].clone()),
            (json!(2), json!(true))
        );
        overlay.stage((1, 0));
        overlay.stage((2, 0));
        let later: Value =
            serde_json::from_str(&overlay.read("T", "k", &produced).unwrap()).unwrap();
        assert_eq!(later["l"], json!([2, 3]));
        assert!(overlay.read("T", "other", &produced).is_none());
        let mut deleted = produced.clone();
        deleted.push(vec![Mutation::delete("T", "k")]);
        overlay.stage((3, 0));
        assert!(overlay.read("T", "k", &deleted).is_none());
    }
}
