//! Property test of incremental view maintenance: random creates, patches
//! (sort-key and filter-field changes included) and deletes go through the
//! real `Store` and `Views`; after every step, each subscriber's state as
//! rebuilt from the frames it received must equal its window recomputed
//! from scratch, and no frame may concern an unchanged member.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use vista_host::frame::Frame;
use vista_host::store::Store;
use vista_host::views::{ConnId, SubscribeRequest, Views};
use vista_plugin_api::view::{eq, view, ViewDef};
use vista_plugin_api::Mutation;

/// What the TypeScript client does to order a list view: numbers
/// numerically, strings by text, missing/null lowest, ties by key ascending.
/// Written independently of the host's `SortValue`.
fn client_order(
    field: &str,
    desc: bool,
) -> impl Fn(&(String, Value), &(String, Value)) -> Ordering + '_ {
    move |(ka, a), (kb, b)| {
        let rank = |v: &Value| match v.get(field) {
            None | Some(Value::Null) => (0, 0.0, String::new()),
            Some(Value::Number(n)) => (1, n.as_f64().unwrap(), String::new()),
            Some(Value::String(s)) => (2, 0.0, s.clone()),
            Some(_) => (0, 0.0, String::new()),
        };
        let (ra, rb) = (rank(a), rank(b));
        let by_value =
            ra.0.cmp(&rb.0)
                .then(ra.1.total_cmp(&rb.1))
                .then(ra.2.cmp(&rb.2));
        let by_value = if desc { by_value.reverse() } else { by_value };
        by_value.then_with(|| ka.cmp(kb))
    }
}

fn views_under_test() -> Vec<ViewDef> {
    vec![
        view("Active/latest")
            .from("Game")
            .filter(eq("status", "active"))
            .sort_desc("startedAt")
            .take(4),
        view("Game/low").from("Game").sort_asc("score").take(3),
        view("Active/all")
            .from("Game")
            .filter(eq("status", "active"))
            .sort_desc("score"),
    ]
}

/// Windows subscribed per view: (skip, take).
const WINDOWS: [(Option<usize>, Option<usize>); 5] = [
    (None, None),
    (None, Some(2)),
    (Some(1), Some(2)),
    (Some(2), Some(10)),
    (Some(3), None),
];

#[derive(Debug, Clone)]
enum Op {
    Patch {
        key: u8,
        status: Option<Option<bool>>,
        started: Option<Option<i8>>,
        score: Option<i8>,
    },
    Delete {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    use proptest::option::of;
    prop_oneof![
        4 => (0u8..8, of(of(any::<bool>())), of(of(-3i8..4)), of(-3i8..4))
            .prop_map(|(key, status, started, score)| Op::Patch { key, status, started, score }),
        1 => (0u8..8).prop_map(|key| Op::Delete { key }),
    ]
}

fn mutation(op: &Op) -> Mutation {
    match op {
        Op::Patch {
            key,
            status,
            started,
            score,
        } => {
            let mut data = Map::new();
            if let Some(status) = status {
                data.insert(
                    "status".into(),
                    status.map_or(Value::Null, |active| {
                        json!(if active { "active" } else { "ended" })
                    }),
                );
            }
            if let Some(started) = started {
                data.insert(
                    "startedAt".into(),
                    started.map_or(Value::Null, |s| json!(s)),
                );
            }
            if let Some(score) = score {
                data.insert("score".into(), json!(score));
            }
            Mutation::patch("Game", format!("g{key}"), Value::Object(data))
        }
        Op::Delete { key } => Mutation::delete("Game", format!("g{key}")),
    }
}

fn decode(frame: &Frame) -> Value {
    let bytes = if frame.bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&frame.bytes[..]),
            &mut out,
        )
        .unwrap();
        out
    } else {
        frame.bytes.to_vec()
    };
    serde_json::from_slice(&bytes).unwrap()
}

struct Subscriber {
    conn: ConnId,
    def: ViewDef,
    skip: usize,
    take: Option<usize>,
    /// What this client holds, rebuilt from frames.
    state: BTreeMap<String, Value>,
}

impl Subscriber {
    fn expected(&self, store: &Store) -> Vec<(String, Value)> {
        let sort = self.def.effective_sort();
        let mut members: Vec<(String, Value)> = store
            .table("Game")
            .map(|(k, e)| (k, e.to_value()))
            .filter(|(_, e)| self.def.matches(e))
            .map(|(k, e)| (k.to_owned(), e))
            .collect();
        members.sort_by(client_order(
            &sort.field,
            sort.order == vista_plugin_api::view::Order::Desc,
        ));
        let limit = self.def.take.unwrap_or(usize::MAX);
        let end = self.take.map_or(limit, |t| (self.skip + t).min(limit));
        members.into_iter().take(end).skip(self.skip).collect()
    }

    fn held(&self) -> Vec<(String, Value)> {
        let sort = self.def.effective_sort();
        let mut held: Vec<(String, Value)> = self.state.clone().into_iter().collect();
        held.sort_by(client_order(
            &sort.field,
            sort.order == vista_plugin_api::view::Order::Desc,
        ));
        held
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = Store::new();
    let mut views = Views::new();
    let mut subscribers = Vec::new();
    for def in views_under_test() {
        views.add_derived(def.clone(), &"test".into(), &store, &mut |_, _| {});
        for (skip, take) in WINDOWS {
            let conn = subscribers.len() as ConnId;
            let request = SubscribeRequest {
                view: def.id.clone(),
                skip,
                take,
                with_snapshot: true,
                ..SubscribeRequest::default()
            };
            let start = views
                .subscribe(conn, &request, &store)
                .expect("view exists");
            prop_assert_eq!(start.snapshot.map(|s| s.entries.len()), Some(0));
            subscribers.push(Subscriber {
                conn,
                def: def.clone(),
                skip: skip.unwrap_or(0),
                take,
                state: BTreeMap::new(),
            });
        }
    }

    for op in &ops {
        let change = store.apply(mutation(op));
        let mut delivered: Vec<(ConnId, Value)> = Vec::new();
        views.apply(&change, &store, &mut |conn, frame| {
            delivered.push((conn, decode(frame)))
        });
        for sub in &mut subscribers {
            let before = sub.state.clone();
            let mut touched = Vec::new();
            for (_, frame) in delivered.iter().filter(|(c, _)| *c == sub.conn) {
                let key = frame["key"].as_str().unwrap().to_owned();
                prop_assert!(
                    !touched.contains(&key),
                    "two frames for {} in one step: {:?}",
                    key,
                    delivered
                );
                touched.push(key.clone());
                match frame["op"].as_str().unwrap() {
                    "upsert" => {
                        // Only the changed entity, or one entering the window.
                        prop_assert!(
                            key == change.key || !before.contains_key(&key),
                            "upsert of unchanged member {} (op {:?})",
                            key,
                            op
                        );
                        sub.state.insert(key, frame["data"].clone());
                    }
                    "delete" => {
                        prop_assert!(
                            before.contains_key(&key),
                            "delete of {} the client never had",
                            key
                        );
                        sub.state.remove(&key);
                    }
                    other => prop_assert!(false, "derived views send upsert/delete, got {}", other),
                }
            }
            prop_assert_eq!(
                sub.held(),
                sub.expected(&store),
                "view {} skip {} take {:?} after {:?}",
                &sub.def.id,
                sub.skip,
                sub.take,
                op
            );
        }
    }

    // A subscriber arriving now gets exactly its window as a snapshot, in order.
    for sub in &subscribers {
        let request = SubscribeRequest {
            view: sub.def.id.clone(),
            skip: Some(sub.skip),
            take: sub.take,
            with_snapshot: true,
            ..SubscribeRequest::default()
        };
        let start = views.subscribe(1000 + sub.conn, &request, &store).unwrap();
        let snapshot: Vec<(String, Value)> = start
            .snapshot
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.data.to_value()))
            .collect();
        prop_assert_eq!(snapshot, sub.expected(&store));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn clients_rebuild_exactly_the_recomputed_window(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
