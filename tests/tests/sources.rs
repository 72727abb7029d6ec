//! Sources (`--source`): a real PostgreSQL (Debian's package, a cluster
//! made by `initdb` in a temp dir, `wal_level=logical`) and a real
//! `nats-server -js` feeding the `orders` example plugin, watched by raw
//! WebSocket clients.
//!
//! - 100,000 pre-existing rows arrive through the initial snapshot while
//!   multi-statement transactions (inserts, updates, deletes) run: the
//!   live `Order/list` and the derived `Order/open` end exactly as the
//!   table is, and every row's `changes` count equals its `version`
//!   column (each change applied once: no gap, no duplicate at the
//!   snapshot's edge); a refused row is a dead letter and the source goes
//!   on;
//! - `kill -9` of Vista 10 times during a steady stream of updates: at the
//!   end every view equals the table, each change applied once;
//! - PostgreSQL restarted mid-stream: `/sources` reports the outage, the
//!   source reconnects, nothing is lost;
//! - a NATS JetStream stream through a Vista `kill -9` and restart: every
//!   message applied once;
//! - the published TypeScript client (`tests/ts-client/orders.mjs`) ends
//!   with exactly the table in `Order/list` and `Order/open` after
//!   multi-statement transactions, the derived view's deletes included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vista_tests::postgres::PgServer;
use vista_tests::{apply_frame, view_of, Host, NatsServer, NodeScript, PluginFile, Received};

/// One test at a time: each starts a database or broker and a host.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONVERGE: Duration = Duration::from_secs(120);

fn orders() -> Vec<PluginFile> {
    vec![PluginFile::Built("vista_orders", "orders.so")]
}

const SCHEMA: &str = "CREATE TABLE orders (
    id int PRIMARY KEY,
    customer text NOT NULL,
    status text NOT NULL,
    amount numeric(12,2) NOT NULL,
    version int NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
)";

/// What is compared of an order: status, amount, and how many changes of
/// it were applied (in the table: its version column).
type Row = (String, f64, i64);

async fn table(client: &tokio_postgres::Client) -> BTreeMap<String, Row> {
    client
        .query(
            "SELECT id, status, amount::float8, version FROM orders",
            &[],
        )
        .await
        .expect("read the table")
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0).to_string(),
                (r.get(1), r.get(2), r.get::<_, i32>(3) as i64),
            )
        })
        .collect()
}

fn rows(view: &BTreeMap<String, Value>) -> BTreeMap<String, Row> {
    view.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["status"].as_str().unwrap_or("?").to_owned(),
                    v["amount"].as_f64().unwrap_or(f64::NAN),
                    v["changes"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect()
}

fn open(table: &BTreeMap<String, Row>) -> BTreeMap<String, Row> {
    table
        .iter()
        .filter(|(_, r)| r.0 == "open")
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect()
}

/// A raw WebSocket client applying every frame of one view in the
/// background (reconnecting is the caller's business).
struct Mirror {
    state: Arc<Mutex<BTreeMap<String, Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mirror {
    async fn start(host: &Host, view: &str) -> Mirror {
        let mut client = host.client().await;
        client
            .subscribe(json!({"type": "subscribe", "view": view}))
            .await;
        let state = Arc::new(Mutex::new(BTreeMap::new()));
        for frame in client.snapshot_frames().await {
            apply_frame(&mut state.lock().unwrap(), &frame);
        }
        let held = state.clone();
        let task = tokio::spawn(async move {
            while let Some(received) = client.recv_within(Duration::from_secs(600)).await {
                if let Received::Json { value, .. } = received {
                    apply_frame(&mut held.lock().unwrap(), &value);
                }
            }
        });
        Mirror { state, task }
    }

    fn rows(&self) -> BTreeMap<String, Row> {
        rows(&self.state.lock().unwrap())
    }
}

/// Waits until `probe` returns equal values; panics showing the first
/// differences after `limit`.
async fn until_equal<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (BTreeMap<String, Row>, BTreeMap<String, Row>)>,
{
    let deadline = Instant::now() + limit;
    loop {
        let (seen, expected) = probe().await;
        if seen == expected {
            return;
        }
        if Instant::now() >= deadline {
            let diff: Vec<_> = expected
                .iter()
                .filter(|(k, v)| seen.get(*k) != Some(v))
                .take(5)
                .map(|(k, v)| format!("{k}: expected {v:?}, seen {:?}", seen.get(k)))
                .chain(
                    seen.keys()
                        .filter(|k| !expected.contains_key(*k))
                        .take(5)
                        .map(|k| format!("{k}: not in the table")),
                )
                .collect();
            panic!(
                "{what}: {} rows seen, {} expected; {diff:#?}",
                seen.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// One multi-statement transaction: an insert of `new_id`, updates of two
/// rows below `max_id`, a delete of one.
async fn mixed_transaction(
    client: &mut tokio_postgres::Client,
    rng: &mut Lcg,
    new_id: i64,
    max_id: i64,
) -> Result<(), tokio_postgres::Error> {
    let statuses = ["open", "paid", "shipped", "cancelled"];
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO orders (id, customer, status, amount) VALUES ($1::int8::int, 'live', 'open', 1.25)",
        &[&new_id],
    )
    .await?;
    for _ in 0..2 {
        let id = 1 + rng.next(max_id as u64) as i64;
        let status = statuses[rng.next(4) as usize];
        tx.execute(
            "UPDATE orders SET status = $2, amount = amount + 0.5, version = version + 1 WHERE id = $1::int8::int",
            &[&id, &status],
        )
        .await?;
    }
    let doomed = 1 + rng.next(max_id as u64) as i64;
    tx.execute("DELETE FROM orders WHERE id = $1::int8::int", &[&doomed])
        .await?;
    tx.commit().await
}

fn source_arg(pg: &PgServer) -> String {
    format!("orders={}?publication=vista", pg.url())
}

/// A number sent as its decimal text (a source position, a row's key).
fn position_of(text: &Value) -> Option<i64> {
    text.as_str()?.parse().ok()
}

async fn source_state(host: &Host) -> Value {
    let (status, body) = host.get_json("/sources").await;
    assert_eq!(status, 200, "{body}");
    body["sources"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_100000_rows_and_its_live_changes_become_views_exactly_as_the_table_is() {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::start();
    let mut client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (id, customer, status, amount)
             SELECT g, 'c' || (g % 100), (ARRAY['open','paid','shipped'])[1 + g % 3], (g % 1000)::numeric / 4
             FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    let source = source_arg(&pg);
    let host = Host::start(orders(), &["--source", &source]).await;
    let open_view = Mirror::start(&host, "Order/open").await;

    // Transactions while the snapshot is read and applied: each lands
    // either in the snapshot or after it, never both, never neither. They
    // start once the slot exists (its exported snapshot taken), so the
    // row's version counts exactly the changes the view must have applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .query("SELECT 1 FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no replication slot:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot_started = Instant::now();
    let mut rng = Lcg(7);
    for i in 0..60 {
        mixed_transaction(&mut client, &mut rng, 200_000 + i, 100_000)
            .await
            .unwrap();
        if i == 30 {
            // A row the plugin refuses: a dead letter; the source goes on.
            client
                .batch_execute("BEGIN; INSERT INTO orders (id, customer, status, amount) VALUES (300000, 'x', 'lost', 1); COMMIT")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .batch_execute("DELETE FROM orders WHERE id = 300000")
        .await
        .unwrap();
    let list_view = Mirror::start(&host, "Order/list").await;
    let started = Instant::now();
    until_equal("Order/list (live client)", CONVERGE, || async {
        (list_view.rows(), table(&client).await)
    })
    .await;
    eprintln!(
        "converged {:?} after the last change, {:?} after the slot was created",
        started.elapsed(),
        snapshot_started.elapsed()
    );
    until_equal("Order/open (live client, derived)", CONVERGE, || async {
        (open_view.rows(), open(&table(&client).await))
    })
    .await;
    until_equal("Order/open (fresh snapshot)", CONVERGE, || async {
        (
            rows(&view_of(&host, "Order/open").await),
            open(&table(&client).await),
        )
    })
    .await;

    let state = source_state(&host).await;
    assert_eq!(state["kind"], "postgres", "{state}");
    assert_eq!(state["state"], "streaming", "{state}");
    assert_eq!(state["refused"], 1, "{state}");
    assert!(
        state["position"].as_str().unwrap().starts_with("lsn:"),
        "{state}"
    );
    let (_, letters) = host.get_json("/admin/dead-letters").await;
    assert!(letters.to_string().contains("unknown status"), "{letters}");
    let metrics = host.get_text("/metrics").await.1;
    assert!(
        metrics.contains("vista_source_changes_total"),
        "{metrics:.400}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_ten_times_during_a_stream_of_updates_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::start();
    let client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    let source = source_arg(&pg);
    let mut host = Host::start(orders(), &["--source", &source]).await;
    client
        .batch_execute(
            "INSERT INTO orders (id, customer, status, amount)
             SELECT g, 'c', 'open', 1 FROM generate_series(1, 200) g",
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut client = pg.client().await;
        tokio::spawn(async move {
            let mut rng = Lcg(11);
            let mut next = 1000;
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                mixed_transaction(&mut client, &mut rng, next, 200)
                    .await
                    .unwrap();
                next += 1;
                count += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            count
        })
    };
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(300 + 70 * round)).await;
        host.kill9();
        host.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    assert!(transactions > 50, "only {transactions} transactions ran");

    let open_view = Mirror::start(&host, "Order/open").await;
    until_equal("Order/list after 10 kills", CONVERGE, || async {
        (
            rows(&view_of(&host, "Order/list").await),
            table(&client).await,
        )
    })
    .await;
    until_equal("Order/open after 10 kills", CONVERGE, || async {
        (open_view.rows(), open(&table(&client).await))
    })
    .await;
    eprintln!("{transactions} transactions through 10 kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_is_reported_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut pg = PgServer::start();
    let url = pg.url();
    let client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (id, customer, status, amount)
             SELECT g, 'c', 'open', 1 FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    drop(client);
    let source = source_arg(&pg);
    let host = Host::start(orders(), &["--source", &source]).await;
    // Changes start once the initial snapshot is applied: a row updated
    // before the slot's snapshot arrives in it with its version already
    // raised but counted as one change, which would look like a lost change
    // (it did, under load, when the writer started first).
    let deadline = Instant::now() + Duration::from_secs(30);
    while source_state(&host).await["state"] != "streaming" {
        assert!(
            Instant::now() < deadline,
            "the source is not streaming:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(5);
            let mut next = 1000;
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                tokio::spawn(connection);
                while !stop.load(Ordering::Relaxed) {
                    next += 1;
                    if mixed_transaction(&mut client, &mut rng, next, 100)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart = tokio::task::spawn_blocking(move || {
        pg.restart_after(Duration::from_secs(3));
        pg
    });
    // The outage is reported while PostgreSQL is down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        let state = source_state(&host).await;
        if state["state"] == "retrying" && !state["last_error"].is_null() {
            break state;
        }
        assert!(Instant::now() < deadline, "outage not reported: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pg = restart.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let client = pg.client().await;
    until_equal("Order/list after the restart", CONVERGE, || async {
        (
            rows(&view_of(&host, "Order/list").await),
            table(&client).await,
        )
    })
    .await;
    let state = source_state(&host).await;
    assert_eq!(state["state"], "streaming", "{state}");
    assert!(state["errors"].as_u64().unwrap() >= 1, "{state}");
    assert!(host.log().contains("source session failed"), "{reported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_stream_through_a_vista_crash_applies_every_message_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TRADES".into(),
        subjects: vec!["trades.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let source = format!("orders={}?stream=TRADES", nats.url());
    let mut host = Host::start(orders(), &["--source", &source]).await;

    const MESSAGES: i64 = 3000;
    const KEYS: i64 = 50;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                let key = i % KEYS;
                let event = json!({"type": "update", "table": "public.orders", "key": {"id": key},
                                   "row": {"id": key, "status": "open", "amount": i}});
                js.publish("trades.orders", event.to_string().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                if i == 100 {
                    // Neither refuses the rest.
                    js.publish("trades.orders", "not json".into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    js.publish(
                        "trades.orders",
                        json!({"type": "insert", "key": {"id": 999}, "row": {"id": 999, "status": "lost"}})
                            .to_string()
                            .into(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    host.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.restart().await;
    publisher.await.unwrap();

    let expected: BTreeMap<String, Row> = (0..KEYS)
        .map(|key| {
            let last = (MESSAGES - 1) - ((MESSAGES - 1 - key) % KEYS);
            (
                key.to_string(),
                ("open".to_owned(), last as f64, MESSAGES / KEYS),
            )
        })
        .collect();
    until_equal("Order/list from NATS", CONVERGE, || async {
        (rows(&view_of(&host, "Order/list").await), expected.clone())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = source_state(&host).await;
        assert_eq!(state["kind"], "nats", "{state}");
        if position_of(&state["position"]) == Some(MESSAGES + 2) && state["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// BENCHMARKS.md, "PostgreSQL source": row changes per second from
/// PostgreSQL to a subscribed client, and commit-to-frame latency. Run
/// alone: `cargo test -p vista-tests --test sources -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_typescript_client_sees_the_table_through_a_postgres_source() {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::start();
    let mut client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (id, customer, status, amount)
             SELECT g, 'c', (ARRAY['open','paid'])[1 + g % 2], g FROM generate_series(1, 200) g",
        )
        .await
        .unwrap();
    let source = source_arg(&pg);
    let host = Host::start(orders(), &["--source", &source]).await;
    until_equal("Order/list after the snapshot", CONVERGE, || async {
        (
            rows(&view_of(&host, "Order/list").await),
            table(&client).await,
        )
    })
    .await;
    let node = NodeScript::start("orders.mjs", &host, &[]);
    // Inserts, updates (some leaving `open`, some entering it) and deletes,
    // several statements per transaction, while the client watches.
    let mut rng = Lcg(11);
    for i in 0..40 {
        mixed_transaction(&mut client, &mut rng, 1000 + i, 200)
            .await
            .expect("a transaction");
    }
    let expected = table(&client).await;
    let wanted = json!({"list": expected, "open": open(&expected)});
    assert!(
        wanted["open"].as_object().unwrap().len() < expected.len(),
        "some orders are not open, so the derived view had to drop them"
    );
    let summary = node.finish(&wanted.to_string());
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["list"], expected.len(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand"]
async fn bench_postgres_to_a_subscribed_client() {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::start();
    let client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (id, customer, status, amount)
             SELECT g, 'c', 'open', 1 FROM generate_series(1, 1000) g",
        )
        .await
        .unwrap();
    let source = source_arg(&pg);
    let host = Host::start(orders(), &["--source", &source]).await;
    let mut ws = host.client().await;
    ws.subscribe(json!({"type": "subscribe", "view": "Order/list"}))
        .await;
    let snapshot = ws.snapshot_frames().await;
    let mut seen: usize = snapshot
        .iter()
        .map(|f| f["data"].as_array().map_or(0, Vec::len))
        .sum();
    while seen < 1000 {
        if let Received::Json { .. } = ws.recv().await {
            seen += 1;
        }
    }

    // Latency: one single-row transaction at a time, commit to frame.
    let mut latencies = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        client
            .execute(
                "UPDATE orders SET amount = amount + 1, version = version + 1 WHERE id = $1::int8::int",
                &[&(1 + i as i64)],
            )
            .await
            .unwrap();
        loop {
            if let Received::Json { value, .. } = ws.recv().await {
                if position_of(&value["key"]) == Some(1 + i64::from(i)) {
                    break;
                }
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "commit-to-frame latency over 100 single-row transactions: p50 {:?}, p99 {:?}, max {:?}",
        latencies[50], latencies[98], latencies[99]
    );

    // Throughput: 20 writers of single-row transactions; the client counts
    // frames until it has one per change.
    const CHANGES: usize = 20_000;
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..20 {
        let client = pg.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..CHANGES / 20 {
                let id = 1 + ((w * 50 + i) % 1000) as i64;
                client
                    .execute(
                        "UPDATE orders SET amount = amount + 1, version = version + 1 WHERE id = $1::int8::int",
                        &[&id],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    let mut frames = 0;
    while frames < CHANGES {
        if let Received::Json { .. } = ws.recv().await {
            frames += 1;
        }
    }
    let elapsed = started.elapsed();
    for writer in writers {
        writer.await.unwrap();
    }
    eprintln!(
        "{CHANGES} single-row transactions from 20 writers: {:?} to the client's last frame, {:.0} changes/s",
        elapsed,
        CHANGES as f64 / elapsed.as_secs_f64()
    );
}
