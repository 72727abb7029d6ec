//! Property test of aggregates: random sequences of `add`, `count`, `max`,
//! `min`, `set_once`, `unique_count`, plain sets and deletes go through the
//! host's real `Store` and through `MemoryState` (what plugin unit tests
//! use). After every step both must equal a model written independently
//! here (128-bit integers, a set per field), a client that only merges the
//! patch frames the host would send must hold the same entity, and a store
//! restored from a checkpoint taken midway (hidden sets included) must end
//! in the same state as the one that never stopped.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use vista_host::store::Store;
use vista_plugin_api::{merge_patch, MemoryState, Mutation, StateSource};

const KEYS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Add(i64),
    Count,
    Max(i64),
    Min(i64),
    SetOnce(i64),
    Unique(u8),
    Set(i64),
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    let big = prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN + 1), any::<i64>(),];
    prop_oneof![
        big.clone().prop_map(Op::Add),
        Just(Op::Count),
        big.clone().prop_map(Op::Max),
        big.clone().prop_map(Op::Min),
        big.clone().prop_map(Op::SetOnce),
        (0u8..6).prop_map(Op::Unique),
        big.prop_map(Op::Set),
        Just(Op::Delete),
    ]
}

/// The mutation a projector would return for `op` on `key`. Aggregates sit
/// under `stats`, so nested paths are exercised too.
fn mutation(key: &str, op: &Op) -> Mutation {
    let m = Mutation::patch("T", key, json!({"touched": true}));
    match op {
        Op::Add(n) => m.add("stats.sum", *n),
        Op::Count => m.count("stats.n"),
        Op::Max(n) => m.max("stats.hi", *n),
        Op::Min(n) => m.min("stats.lo", *n),
        Op::SetOnce(n) => m.set_once("first", *n),
        Op::Unique(p) => m.unique_count("stats.players", format!("p{p}")),
        Op::Set(n) => Mutation::patch("T", key, json!({"plain": n})),
        Op::Delete => Mutation::delete("T", key),
    }
}

/// One entity of the model.
#[derive(Default, Clone)]
struct Model {
    sum: Option<i128>,
    n: Option<i128>,
    hi: Option<i128>,
    lo: Option<i128>,
    first: Option<i128>,
    players: BTreeSet<u8>,
    plain: Option<i64>,
    touched: bool,
}

/// How the host stores an integer: a number within 64 bits, else its
/// decimal text.
fn int(i: i128) -> Value {
    if let Ok(v) = i64::try_from(i) {
        json!(v)
    } else if let Ok(v) = u64::try_from(i) {
        json!(v)
    } else {
        Value::String(i.to_string())
    }
}

impl Model {
    fn step(&mut self, op: &Op) {
        match op {
            Op::Add(d) => self.sum = Some(self.sum.unwrap_or(0) + *d as i128),
            Op::Count => self.n = Some(self.n.unwrap_or(0) + 1),
            Op::Max(v) => self.hi = Some(self.hi.map_or(*v as i128, |h| h.max(*v as i128))),
            Op::Min(v) => self.lo = Some(self.lo.map_or(*v as i128, |l| l.min(*v as i128))),
            Op::SetOnce(v) => self.first = self.first.or(Some(*v as i128)),
            Op::Unique(p) => {
                self.players.insert(*p);
            }
            Op::Set(v) => self.plain = Some(*v),
            Op::Delete => unreachable!("handled by the caller"),
        }
        if !matches!(op, Op::Set(_)) {
            self.touched = true;
        }
    }

    fn entity(&self) -> Value {
        let mut fields = Map::new();
        let mut stats = Map::new();
        for (name, value) in [
            ("sum", self.sum),
            ("n", self.n),
            ("hi", self.hi),
            ("lo", self.lo),
        ] {
            if let Some(v) = value {
                stats.insert(name.into(), int(v));
            }
        }
        if !self.players.is_empty() {
            stats.insert("players".into(), json!(self.players.len()));
        }
        if !stats.is_empty() {
            fields.insert("stats".into(), Value::Object(stats));
        }
        if let Some(v) = self.first {
            fields.insert("first".into(), int(v));
        }
        if let Some(v) = self.plain {
            fields.insert("plain".into(), json!(v));
        }
        if self.touched {
            fields.insert("touched".into(), json!(true));
        }
        Value::Object(fields)
    }
}

fn without_seq(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("_seq");
    }
    value
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_match_the_model(
        steps in proptest::collection::vec((0usize..KEYS.len(), op()), 1..80),
        checkpoint_at in 0usize..80,
    ) {
        let mut store = Store::new();
        let mut memory = MemoryState::new();
        let mut model: BTreeMap<&str, Model> = BTreeMap::new();
        let mut client: BTreeMap<String, Value> = BTreeMap::new();
        let mut restored: Option<Store> = None;
        for (i, (k, op)) in steps.iter().enumerate() {
            let key = KEYS[*k];
            let m = mutation(key, op);
            m.validate().unwrap();
            if let Some(restored) = restored.as_mut() {
                restored.apply(m.clone());
            }
            memory.apply(&m);
            let change = store.apply(m);
            // What a client holds after merging the frames.
            match change.wire_patch() {
                (Some(patch), append) => {
                    let entity = client.entry(key.to_owned()).or_insert_with(|| json!({}));
                    merge_patch(entity, patch.as_object().unwrap(), &append);
                }
                (None, _) => {
                    client.remove(key);
                }
            }
            if let Op::Delete = op {
                model.remove(key);
            } else {
                model.entry(key).or_default().step(op);
            }
            for key in KEYS {
                let expected = model.get(key).map(Model::entity);
                let stored = store.tree("T", key).map(|v| without_seq(&v));
                prop_assert_eq!(&stored, &expected, "store, key {} after step {}", key, i);
                prop_assert_eq!(&memory.get("T", key), &expected, "MemoryState, key {}", key);
                prop_assert_eq!(
                    &client.get(key).map(without_seq), &expected,
                    "client from frames, key {}", key
                );
                // The hidden set holds exactly the distinct members.
                let members = store
                    .hidden("T", key)
                    .and_then(|h| h.members("stats.players").map(|m| m.len()))
                    .unwrap_or(0);
                prop_assert_eq!(members, model.get(key).map_or(0, |m| m.players.len()));
            }
            if i == checkpoint_at {
                let mut copy = Store::new();
                copy.restore(store.entities(), store.hidden_states(), store.version());
                restored = Some(copy);
            }
        }
        if let Some(restored) = restored {
            for key in KEYS {
                prop_assert_eq!(restored.get("T", key), store.get("T", key));
                prop_assert_eq!(restored.hidden("T", key), store.hidden("T", key));
            }
        }
    }
}

#[test]
fn unchanged_aggregates_stay_out_of_the_frame() {
    let mut store = Store::new();
    store.apply(
        Mutation::patch("T", "k", json!({}))
            .max("hi", 10)
            .set_once("first", 1),
    );
    let change = store.apply(
        Mutation::patch("T", "k", json!({}))
            .max("hi", 3)
            .set_once("first", 2),
    );
    let patch = change.patch.unwrap();
    assert!(
        patch.get("hi").is_none() && patch.get("first").is_none(),
        "{patch}"
    );
    let change = store.apply(Mutation::patch("T", "k", json!({})).add("hi", 5));
    assert_eq!(
        change.patch.unwrap()["hi"],
        15,
        "the result, not the operand"
    );
}
