//! Benchmark of derived-view maintenance.
//!
//! Run with: `cargo run --release -p example-view-bench -- --entities 10000,100000`
//!
//! Builds a store of `Game` entities, the `games` plugin's two windowed
//! views (`ActiveGame/latest`: active, `startedAt` desc, take 10;
//! `Game/top`: `score` desc, take 3) and 100 subscribers spread over
//! several `skip`/`take` windows. It then applies a mix of mutations
//! (attacks that change scores, games ending, new games starting) through the
//! real `Store` and `Views` and reports mutations per second and frames per
//! mutation. In the same run, the same mutations go through a naive
//! maintainer that recomputes every window from scratch per mutation
//! (filter + sort all entities) and diffs it, which is what the reference
//! server effectively does. Both produce the same frames; the difference is
//! the cost per mutation and how it grows with the number of entities.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use clap::Parser;
use serde_json::{json, Value};
use vista_host::store::Store;
use vista_host::views::{SubscribeRequest, Views};
use vista_plugin_api::view::{eq, view, Order, SortValue, ViewDef};
use vista_plugin_api::Mutation;

#[derive(Parser)]
struct Args {
    /// Entity counts to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    entities: Vec<usize>,
    /// Mutations through incremental maintenance per run.
    #[arg(long, default_value_t = 20_000)]
    mutations: usize,
    /// Mutations through the recompute-from-scratch baseline per run.
    #[arg(long, default_value_t = 40)]
    baseline_mutations: usize,
    /// Subscribers, spread over the windows below.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Instead: per-event cost with this many subscriptions with distinct
    /// equality filters (comma separated counts), see [`filter_bench`].
    #[arg(long, value_delimiter = ',')]
    filters: Vec<usize>,
}

/// Issue 20's filter goal: `count` subscriptions to `Holding/all`, each
/// with its own `{"owner": "u<i>"}` filter, over 1,000 holdings; every
/// mutation moves a random holding to a random owner among the filtered
/// ones (it leaves one subscriber's filter and enters another's). Returns
/// µs per mutation and frames per mutation.
fn filter_bench(count: usize, mutations: usize) -> (f64, f64) {
    let mut store = Store::new();
    let mut views = Views::new();
    let holdings = 1_000u64;
    for i in 0..holdings {
        store.apply(Mutation::patch(
            "Holding",
            format!("h{i}"),
            json!({"owner": format!("u{}", i % count as u64), "amount": i}),
        ));
    }
    let all = view("Holding/all").from("Holding").sort_desc("amount");
    views.add_derived(all, &"bench".into(), &store, &mut |_, _| {});
    for i in 0..count {
        let request = SubscribeRequest {
            view: "Holding/all".into(),
            with_snapshot: false,
            filters: vista_host::filters::Filters::parse(Some(&json!({"owner": format!("u{i}")})))
                .expect("valid filters"),
            ..SubscribeRequest::default()
        };
        views
            .subscribe(i as u64, &request, &store)
            .expect("subscribe");
    }
    let mut rng = Rng(7);
    let batch: Vec<Mutation> = (0..mutations)
        .map(|i| {
            Mutation::patch(
                "Holding",
                format!("h{}", rng.below(holdings)),
                json!({"owner": format!("u{}", rng.below(count as u64)), "amount": holdings + i as u64}),
            )
        })
        .collect();
    let mut frames = 0usize;
    let started = Instant::now();
    for mutation in batch {
        let change = store.apply(mutation);
        views.apply(&change, &store, &mut |_, _| frames += 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    (
        seconds * 1e6 / mutations as f64,
        frames as f64 / mutations as f64,
    )
}

/// xorshift64: deterministic input without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn view_defs() -> Vec<ViewDef> {
    vec![
        view("ActiveGame/latest")
            .from("Game")
            .filter(eq("status", "active"))
            .sort_desc("startedAt")
            .take(10),
        view("Game/top").from("Game").sort_desc("score").take(3),
    ]
}

/// Subscriber windows (skip, take), cycled over subscribers.
const WINDOWS: [(Option<usize>, Option<usize>); 4] = [
    (None, None),
    (None, Some(5)),
    (Some(2), Some(5)),
    (Some(1), Some(1)),
];

/// A workload: the mutation sequence both maintainers apply.
fn workload(rng: &mut Rng, entities: usize, count: usize) -> Vec<Mutation> {
    let mut next_game = entities as u64;
    let mut next_started = entities as i64 * 10;
    (0..count)
        .map(|_| {
            let roll = rng.below(100);
            if roll < 70 {
                let game = format!("g{}", rng.below(next_game));
                Mutation::patch("Game", game, json!({"score": rng.below(1_000_000)}))
            } else if roll < 85 {
                let game = format!("g{}", rng.below(next_game));
                Mutation::patch("Game", game, json!({"status": "ended"}))
            } else {
                next_game += 1;
                next_started += 1;
                Mutation::patch(
                    "Game",
                    format!("g{next_game}"),
                    json!({"id": next_game, "status": "active", "startedAt": next_started, "score": 0, "players": ["a", "b"]}),
                )
            }
        })
        .collect()
}

fn populated_store(rng: &mut Rng, entities: usize) -> Store {
    let mut store = Store::new();
    for i in 0..entities {
        let status = if rng.below(2) == 0 { "active" } else { "ended" };
        store.apply(Mutation::patch(
            "Game",
            format!("g{i}"),
            json!({"id": i, "status": status, "startedAt": i as i64 * 10, "score": rng.below(1_000_000), "players": ["a", "b"]}),
        ));
    }
    store
}

struct Outcome {
    seconds: f64,
    frames: u64,
    mutations: usize,
}

fn incremental(entities: usize, subscribers: usize, mutations: &[Mutation]) -> Outcome {
    let mut store = populated_store(&mut Rng(7), entities);
    let mut views = Views::new();
    let defs = view_defs();
    for def in &defs {
        views.add_derived(def.clone(), &"bench".into(), &store, &mut |_, _| {});
    }
    for conn in 0..subscribers {
        let def = &defs[conn % defs.len()];
        let (skip, take) = WINDOWS[(conn / defs.len()) % WINDOWS.len()];
        let request = SubscribeRequest {
            view: def.id.clone(),
            skip,
            take,
            with_snapshot: true,
            ..Default::default()
        };
        views
            .subscribe(conn as u64, &request, &store)
            .expect("view exists");
    }
    let mut frames = 0u64;
    let started = Instant::now();
    for mutation in mutations {
        let change = store.apply(mutation.clone());
        views.apply(&change, &store, &mut |_, _| frames += 1);
    }
    Outcome {
        seconds: started.elapsed().as_secs_f64(),
        frames,
        mutations: mutations.len(),
    }
}

/// (view index, skip, take) of one subscriber.
type SubscriberWindow = (usize, usize, Option<usize>);

/// The naive maintainer: per mutation, recompute each subscriber window
/// from all entities and diff against what the subscriber holds.
fn recompute(entities: usize, subscribers: usize, mutations: &[Mutation]) -> Outcome {
    let mut store = populated_store(&mut Rng(7), entities);
    let defs = view_defs();
    let window_of =
        |store: &Store, def: &ViewDef, skip: usize, take: Option<usize>| -> Vec<(String, Value)> {
            let sort = def.effective_sort();
            let mut members: Vec<(SortValue, &str, std::sync::Arc<Value>)> = store
                .table("Game")
                .map(|(k, e)| (k, e.tree()))
                .filter(|(_, e)| def.matches(e))
                .map(|(k, e)| (SortValue::of(&e, &sort.field), k, e))
                .collect();
            members.sort_by(|a, b| {
                let by_value = if sort.order == Order::Desc {
                    b.0.cmp(&a.0)
                } else {
                    a.0.cmp(&b.0)
                };
                by_value.then_with(|| a.1.cmp(b.1))
            });
            let end = take.map_or(def.take.unwrap_or(usize::MAX), |t| {
                (skip + t).min(def.take.unwrap_or(usize::MAX))
            });
            members
                .into_iter()
                .take(end)
                .skip(skip)
                .map(|(_, k, e)| (k.to_owned(), Value::clone(&e)))
                .collect()
        };
    let subs: Vec<SubscriberWindow> = (0..subscribers)
        .map(|conn| {
            let (skip, take) = WINDOWS[(conn / defs.len()) % WINDOWS.len()];
            (conn % defs.len(), skip.unwrap_or(0), take)
        })
        .collect();
    let mut held: Vec<BTreeMap<String, Value>> = subs
        .iter()
        .map(|(d, skip, take)| {
            window_of(&store, &defs[*d], *skip, *take)
                .into_iter()
                .collect()
        })
        .collect();
    let mut frames = 0u64;
    let started = Instant::now();
    for mutation in mutations {
        let key = mutation.key.clone();
        store.apply(mutation.clone());
        // One recomputation per distinct window, shared by its subscribers.
        let mut computed: BTreeMap<SubscriberWindow, Vec<(String, Value)>> = BTreeMap::new();
        for (i, sub) in subs.iter().enumerate() {
            let window = computed
                .entry(*sub)
                .or_insert_with(|| window_of(&store, &defs[sub.0], sub.1, sub.2));
            let now: HashSet<&String> = window.iter().map(|(k, _)| k).collect();
            frames += held[i].keys().filter(|k| !now.contains(k)).count() as u64;
            frames += window
                .iter()
                .filter(|(k, _)| !held[i].contains_key(k) || *k == key)
                .count() as u64;
            held[i] = window.iter().cloned().collect();
        }
    }
    Outcome {
        seconds: started.elapsed().as_secs_f64(),
        frames,
        mutations: mutations.len(),
    }
}

fn main() {
    let args = Args::parse();
    if !args.filters.is_empty() {
        println!("| distinct filters | mutations | µs/mutation | frames/mutation |");
        println!("|---:|---:|---:|---:|");
        for &count in &args.filters {
            let mutations = args.mutations;
            let (us, frames) = filter_bench(count, mutations);
            println!("| {count} | {mutations} | {us:.2} | {frames:.2} |");
        }
        return;
    }
    println!("| entities | maintainer | mutations | mutations/s | µs/mutation | frames/mutation |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &entities in &args.entities {
        let mutations = workload(
            &mut Rng(42),
            entities,
            args.mutations.max(args.baseline_mutations),
        );
        let fast = incremental(entities, args.subscribers, &mutations[..args.mutations]);
        let slow = recompute(
            entities,
            args.subscribers,
            &mutations[..args.baseline_mutations],
        );
        for (name, outcome) in [("incremental", &fast), ("recompute", &slow)] {
            println!(
                "| {entities} | {name} | {} | {:.0} | {:.2} | {:.2} |",
                outcome.mutations,
                outcome.mutations as f64 / outcome.seconds,
                outcome.seconds * 1e6 / outcome.mutations as f64,
                outcome.frames as f64 / outcome.mutations as f64,
            );
        }
        // Same frames on the common prefix: the baseline is a fair comparison.
        let check = incremental(
            entities,
            args.subscribers,
            &mutations[..args.baseline_mutations],
        );
        assert_eq!(
            check.frames, slow.frames,
            "both maintainers emit the same number of frames"
        );
    }
}
