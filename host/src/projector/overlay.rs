//! Projecting one request: the [`Overlay`] that lets a projector read the
//! state as of its own earlier events, shared by both kinds of projector
//! (a thread of the host, a child process).
//!
//! Reads inside a request go through an [`Overlay`]: the request's own
//! staged mutations of a key are folded, once each, into a materialized
//! value, so a read costs one lookup and one serialization of the entity,
//! however many events of the request touched it (replaying the staged
//! history on every read made a request quadratic). Keys the request did not
//! touch are read from the [`Base`]: the shared store under its read lock
//! (held only to clone an `Arc`) in a projector thread, the child's mirror
//! of its own entities (or a question to the host) in a projector process.
//!
//! A projector sees the committed state plus its *own* staged mutations:
//! plugins consuming the same stream project concurrently, and another
//! plugin's changes from the same request become visible once committed.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use vista_plugin_api::{apply_mutation, Hidden, Manifest, Mutation};

use super::{ProjectFailure, Projection};
use crate::ingest::IngestBody;
use crate::plugins::FnStateReader;
use crate::vocab::FastMap;

/// Where an [`Overlay`] reads what the request has not staged.
pub trait Base {
    /// The committed value of `entity[key]`.
    fn value(&self, entity: &str, key: &str) -> Option<Arc<Value>>;
    /// The committed value and its hidden aggregate state (only asked for
    /// the plugin's own entities, the only ones it can stage).
    fn value_with_hidden(&self, entity: &str, key: &str) -> (Option<Arc<Value>>, Arc<Hidden>);
}

impl Base for crate::store::Store {
    fn value(&self, entity: &str, key: &str) -> Option<Arc<Value>> {
        self.tree(entity, key)
    }

    fn value_with_hidden(&self, entity: &str, key: &str) -> (Option<Arc<Value>>, Arc<Hidden>) {
        (
            self.tree(entity, key),
            self.hidden(entity, key).cloned().unwrap_or_default(),
        )
    }
}

impl Base for super::SharedStore {
    fn value(&self, entity: &str, key: &str) -> Option<Arc<Value>> {
        self.read()
            .unwrap_or_else(|e| e.into_inner())
            .value(entity, key)
    }

    fn value_with_hidden(&self, entity: &str, key: &str) -> (Option<Arc<Value>>, Arc<Hidden>) {
        self.read()
            .unwrap_or_else(|e| e.into_inner())
            .value_with_hidden(entity, key)
    }
}

/// What a projector reads state through while it projects.
pub type Reader<'a> = FnStateReader<&'a dyn Fn(&str, &str) -> Option<String>>;

/// The `event` index that marks a pending mutation (of an earlier request).
const PENDING: usize = usize::MAX;

/// What projecting one event gave.
pub enum Output {
    /// Its mutations, parsed.
    Parsed(Vec<Mutation>),
    /// Its mutations were checked and kept as the plugin's text, unparsed
    /// (a projector process parses a request's output only if it reads
    /// state): `parse_kept` gives them when a read needs them.
    Kept,
}

/// Projects every event of a request through `project` (the plugin's
/// projector), staging each event's mutations in an overlay over `base`
/// so later events read them. An event `project` kept unparsed
/// ([`Output::Kept`]) is parsed by `parse_kept` (given its index) before
/// the request's first read, and its place in the result stays empty if
/// none comes. `pending` are mutations of the plugin's earlier requests
/// that will be applied before this one (read as if they were).
/// `progress` counts events done: the host's liveness probe, and in a
/// child process the way the host finds the event that crashed it.
#[allow(clippy::too_many_arguments)]
pub fn project_request(
    manifest: &Manifest,
    project: impl Fn(&str, &str, &Reader<'_>) -> Result<Output, String>,
    parse_kept: impl Fn(usize) -> Result<Vec<Mutation>, String>,
    base: &impl Base,
    pending: &[Mutation],
    stream: &str,
    body: &IngestBody,
    progress: &AtomicU64,
) -> Projection {
    let overlay = Overlay::new(base, pending);
    for index in 0..pending.len() {
        overlay.stage((PENDING, index));
    }
    let produced: RefCell<Vec<Vec<Mutation>>> = RefCell::new(Vec::with_capacity(body.len()));
    // Events projected and not staged yet (staged at the next read, in
    // order), and whether any of them was kept unparsed.
    let staged_through = std::cell::Cell::new(0);
    let kept: RefCell<Vec<usize>> = RefCell::new(Vec::new());
    // A kept event whose text would not parse (its check passed, so not
    // expected): the request fails at the event that read.
    let unparsable: RefCell<Option<String>> = RefCell::new(None);
    let stage_projected = || {
        for event in kept.borrow_mut().drain(..) {
            match parse_kept(event) {
                Ok(mutations) => produced.borrow_mut()[event] = mutations,
                Err(message) => *unparsable.borrow_mut() = Some(message),
            }
        }
        let produced = produced.borrow();
        for (event, mutations) in produced.iter().enumerate().skip(staged_through.get()) {
            (0..mutations.len()).for_each(|index| overlay.stage((event, index)));
        }
        staged_through.set(produced.len());
    };
    for (position, json) in body.events() {
        let fail = |message: String| ProjectFailure::error(position, message);
        let output = {
            let read = |entity: &str, key: &str| {
                stage_projected();
                overlay.read(entity, key, &produced.borrow())
            };
            let reader = FnStateReader(&read as &dyn Fn(&str, &str) -> Option<String>);
            project(stream, json, &reader).map_err(fail)?
        };
        if let Some(message) = unparsable.borrow_mut().take() {
            return Err(fail(message));
        }
        let mutations = match output {
            Output::Parsed(mutations) => {
                for mutation in &mutations {
                    check_mutation(manifest, mutation).map_err(fail)?;
                }
                mutations
            }
            Output::Kept => {
                kept.borrow_mut().push(produced.borrow().len());
                Vec::new()
            }
        };
        produced.borrow_mut().push(mutations);
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(produced.into_inner())
}

/// Checks what a projector returned: only its own entities, and what
/// [`Mutation::validate`] accepts (a key, patches of objects, well-formed
/// aggregates, no host-only kind).
fn check_mutation(manifest: &Manifest, mutation: &Mutation) -> Result<(), String> {
    if !manifest.entities.iter().any(|e| e.name == mutation.entity) {
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

/// The request's staged state over its base.
struct Overlay<'s, B: Base> {
    base: &'s B,
    pending: &'s [Mutation],
    staged: RefCell<FastMap<(String, String), Staged>>,
    /// Mutations staged since the last read, not yet in `staged`: a
    /// projector that never reads state never pays for the map.
    unindexed: RefCell<Vec<(usize, usize)>>,
}

impl<'s, B: Base> Overlay<'s, B> {
    fn new(base: &'s B, pending: &'s [Mutation]) -> Self {
        Self {
            base,
            pending,
            staged: RefCell::new(FastMap::default()),
            unindexed: RefCell::new(Vec::new()),
        }
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
            return self.base.value(entity, key).map(|v| to_json(&v));
        };
        if !entry.loaded {
            let (value, hidden) = self.base.value_with_hidden(entity, key);
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
    use crate::projector::SharedStore;
    use crate::store::Store;
    use serde_json::json;
    use std::sync::RwLock;

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
