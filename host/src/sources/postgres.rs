//! A PostgreSQL database's committed row changes, as a source
//! (`--source NAME=postgres://USER[:PASS]@HOST:PORT/DB?publication=P[&slot=S][&tables=a,b]`).
//!
//! Logical replication with the built-in `pgoutput` plugin: the
//! publication (`vista` by default; created if missing, for `tables=` or
//! else for all tables) says which tables, the replication slot
//! (`vista_NAME` by default) keeps the WAL Vista has not confirmed. Each
//! committed transaction becomes one ingest request (all or nothing) of
//! events `{"type": "insert"|"update"|"delete"|"truncate", "table":
//! "schema.table", "key": {..}, "row": {..}, "old": {..}}` (values as
//! [`super::pgoutput::to_json`] says).
//!
//! **First start** (no position logged): the slot is created with an
//! exported snapshot (`CREATE_REPLICATION_SLOT .. EXPORT_SNAPSHOT`, as
//! Debezium and Electric do); the published tables are read in that
//! snapshot (`SET TRANSACTION SNAPSHOT`) and submitted as `insert` events
//! with `"snapshot": true`, in requests of [`SNAPSHOT_CHUNK`] rows; the
//! last one carries the slot's consistent point as its position, and the
//! stream starts exactly there, so no change is missed or seen twice. A
//! restart before the snapshot's last request is durable takes a new
//! snapshot (the rows already applied are submitted again: key-addressed
//! plugins converge, counting ones would count twice: the one window of
//! at-least-once).
//!
//! **Later starts** resume the slot after the logged commit LSN;
//! transactions at or before it are skipped. The slot's confirmed position
//! is advanced only to answered (durable) commits, or, when nothing is in
//! flight, to the server's keepalive position.
//!
//! Why `pgwire-replication` for the replication connection: it is a
//! maintained, tokio-based client of the streaming replication protocol
//! (authentication, `START_REPLICATION`, keepalives, standby status with
//! an applied position only raised by the caller) with a *gated* session
//! that runs replication commands such as `CREATE_REPLICATION_SLOT` on the
//! same connection before streaming, which the exported snapshot needs.
//! `tokio-postgres` on crates.io has no `COPY BOTH`, so it serves only the
//! ordinary SQL connection (publication, slot checks, the snapshot read).
//! `pgoutput` messages are decoded in [`super::pgoutput`].

use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

use super::pgoutput::{self, Change, Decoder, Relation};
use super::{BoxFuture, Ctx, Source, SourceSpec};

/// Rows per request of the initial snapshot.
pub const SNAPSHOT_CHUNK: usize = 5_000;

/// Session settings both connections run with, so values read in the
/// snapshot and decoded from the stream have one text form.
const SESSION_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3";

/// A PostgreSQL publication as a source.
pub(crate) struct Postgres {
    /// The connection URL without Vista's parameters.
    url: String,
    publication: String,
    slot: String,
    tables: Option<Vec<String>>,
    durable: bool,
}

impl Postgres {
    pub(crate) fn new(spec: &SourceSpec, durable: bool) -> Self {
        let (base, query) = spec.url.split_once('?').unwrap_or((&spec.url, ""));
        let mut kept = Vec::new();
        let (mut publication, mut slot, mut tables) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("publication", v)) => publication = Some(v.to_owned()),
                Some(("slot", v)) => slot = Some(v.to_owned()),
                Some(("tables", v)) => {
                    tables = Some(v.split(',').map(str::to_owned).collect::<Vec<_>>())
                }
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Postgres {
            url,
            publication: publication.unwrap_or_else(|| "vista".into()),
            slot: slot.unwrap_or_else(|| format!("vista_{}", spec.name.replace('-', "_"))),
            tables,
            durable,
        }
    }

    async fn run(&self, ctx: &mut Ctx) -> Result<(), String> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        config.options(SESSION_OPTIONS);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        let connection = tokio::spawn(connection);
        let _connection = AbortOnDrop(connection);
        let sql = |e: tokio_postgres::Error| format!("PostgreSQL: {e}");

        // The publication, created if missing.
        if client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.publication],
            )
            .await
            .map_err(sql)?
            .is_none()
        {
            let what = match &self.tables {
                Some(tables) => format!("FOR TABLE {}", tables.join(", ")),
                None => "FOR ALL TABLES".into(),
            };
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} {what}",
                    quote_ident(&self.publication)
                ))
                .await
                .map_err(sql)?;
            tracing::info!(source = %ctx.name(), publication = %self.publication, "created the publication");
        }

        let resume = ctx
            .position()
            .filter(|_| self.durable)
            .and_then(|p| p.strip_prefix("lsn:"))
            .and_then(|lsn| Lsn::parse(lsn).ok());
        let slot = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(sql)?
            .map(|row| row.get::<_, bool>(0));
        match (resume, slot) {
            (Some(_), None) => {
                return Err(format!(
                    "replication slot {:?} is gone: the changes since the logged position cannot be read; drop the data directory's state or start from a new snapshot",
                    self.slot
                ))
            }
            (_, Some(true)) => {
                return Err(format!(
                    "replication slot {:?} is in use by another connection",
                    self.slot
                ))
            }
            (None, Some(false)) => {
                // A slot without a logged position: a snapshot never
                // finished. Start again from a new one.
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&self.slot])
                    .await
                    .map_err(sql)?;
            }
            _ => {}
        }

        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let replication = ReplicationConfig::new(
            host,
            config.get_user().unwrap_or("postgres"),
            password,
            config.get_dbname().unwrap_or("postgres"),
            self.slot.clone(),
            self.publication.clone(),
        )
        .with_port(config.get_ports().first().copied().unwrap_or(5432))
        .with_tls(TlsConfig::disabled())
        .with_options(SESSION_OPTIONS)
        .with_status_interval(Duration::from_secs(1))
        .with_start_lsn(resume.unwrap_or(Lsn::ZERO))
        .with_application_name(format!("vista-{}", ctx.name()));
        let mut stream = ReplicationClient::connect_gated(replication)
            .await
            .map_err(|e| format!("replication connection: {e}"))?;
        let after = match resume {
            Some(lsn) => lsn,
            None => {
                let temporary = if self.durable { "" } else { "TEMPORARY " };
                let rows = stream
                    .simple_query(&format!(
                        "CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput EXPORT_SNAPSHOT",
                        quote_ident(&self.slot)
                    ))
                    .await
                    .map_err(|e| format!("cannot create replication slot {:?}: {e}", self.slot))?;
                let cell = |i: usize| {
                    rows.first()
                        .and_then(|row| row.get(i).cloned().flatten())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .ok_or_else(|| "CREATE_REPLICATION_SLOT: short answer".to_owned())
                };
                let consistent = Lsn::parse(&cell(1)?).map_err(|e| e.to_string())?;
                let snapshot = cell(2)?;
                tracing::info!(source = %ctx.name(), slot = %self.slot, %consistent, "created the replication slot; taking the initial snapshot");
                ctx.set_state("snapshot");
                self.snapshot(&client, ctx, &snapshot, consistent).await?;
                consistent
            }
        };
        stream
            .start()
            .await
            .map_err(|e| format!("START_REPLICATION: {e}"))?;
        stream
            .wait_started()
            .await
            .map_err(|e| format!("START_REPLICATION: {e}"))?;
        ctx.set_state("streaming");
        tracing::info!(source = %ctx.name(), from = %after, "streaming changes");
        self.stream(&mut stream, ctx, after.as_u64()).await
    }

    /// Reads the published tables in the exported snapshot and submits
    /// their rows; the last request brings the source to `consistent`.
    async fn snapshot(
        &self,
        client: &tokio_postgres::Client,
        ctx: &mut Ctx,
        snapshot: &str,
        consistent: Lsn,
    ) -> Result<(), String> {
        let sql = |e: tokio_postgres::Error| format!("snapshot: {e}");
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
            ))
            .await
            .map_err(sql)?;
        let tables = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&self.publication],
            )
            .await
            .map_err(sql)?;
        let started = Instant::now();
        let mut chunk: Vec<String> = Vec::with_capacity(SNAPSHOT_CHUNK);
        let mut rows_read = 0u64;
        for table in tables {
            let (schema, name): (String, String) = (table.get(0), table.get(1));
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let columns = client
                .query(
                    "SELECT a.attname::text, a.atttypid::int8, \
                            coalesce(a.attnum = ANY(i.indkey), false) \
                     FROM pg_attribute a \
                     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    &[&qualified],
                )
                .await
                .map_err(sql)?;
            let relation = Relation {
                name: format!("{schema}.{name}"),
                columns: columns
                    .iter()
                    .map(|c| (c.get::<_, String>(0), c.get::<_, i64>(1) as u32, c.get(2)))
                    .collect(),
            };
            let select = relation
                .columns
                .iter()
                .map(|(c, _, _)| format!("{}::text", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = client
                .query_raw(
                    &format!("SELECT {select} FROM ONLY {qualified}"),
                    no_params(),
                )
                .await
                .map_err(sql)?;
            pin_mut!(rows);
            while let Some(row) = rows.next().await {
                let row = row.map_err(sql)?;
                let tuple: Vec<Option<Value>> = relation
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, oid, _))| {
                        Some(match row.get::<_, Option<&str>>(i) {
                            Some(text) => pgoutput::to_json(text, *oid),
                            None => Value::Null,
                        })
                    })
                    .collect();
                let mut event = pgoutput::event("insert", &relation, Some(&tuple), None);
                event["snapshot"] = Value::Bool(true);
                chunk.push(event.to_string());
                rows_read += 1;
                if chunk.len() == SNAPSHOT_CHUNK {
                    ctx.submit(&chunk, "snapshot".into()).await?;
                    chunk.clear();
                    ctx.set_lag(json!({ "snapshot_rows": rows_read }));
                }
            }
        }
        client.batch_execute("COMMIT").await.map_err(sql)?;
        // The last request (empty if the tables are) makes the snapshot
        // complete in the log at once.
        ctx.submit(&chunk, format!("lsn:{consistent}")).await?;
        ctx.drain().await?;
        tracing::info!(source = %ctx.name(), rows = rows_read, ms = started.elapsed().as_millis() as u64, "initial snapshot applied");
        Ok(())
    }

    /// Streams committed transactions after `after` (a commit end LSN).
    async fn stream(
        &self,
        stream: &mut ReplicationClient,
        ctx: &mut Ctx,
        mut after: u64,
    ) -> Result<(), String> {
        let mut decoder = Decoder::default();
        let mut open: Option<Vec<String>> = None;
        let mut server_end = after;
        let mut confirmed = after;
        loop {
            let event = tokio::select! {
                event = stream.recv() => Some(event.map_err(|e| format!("replication stream: {e}"))?),
                _ = tokio::time::sleep(Duration::from_millis(if ctx.in_flight() > 0 { 20 } else { 500 })) => None,
            };
            let mut answered = ctx.settle_ready()?;
            match event {
                None => {}
                Some(None) => return Err("the replication stream ended".into()),
                Some(Some(event)) => match event {
                    ReplicationEvent::Begin { .. } => open = Some(Vec::new()),
                    ReplicationEvent::XLogData { data, wal_end, .. } => {
                        server_end = server_end.max(wal_end.as_u64());
                        if let Change::Event(event) = decoder.decode(&data)? {
                            open.get_or_insert_with(Vec::new).push(event.to_string());
                        }
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => {
                        let events = open.take().unwrap_or_default();
                        let end = end_lsn.as_u64();
                        server_end = server_end.max(end);
                        // At or before the logged position: applied already.
                        if end > after && !events.is_empty() {
                            after = end;
                            answered.extend(ctx.submit(&events, format!("lsn:{end_lsn}")).await?);
                        }
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        server_end = server_end.max(wal_end.as_u64());
                    }
                    ReplicationEvent::StoppedAt { .. } => {
                        return Err("the replication stream stopped".into())
                    }
                    ReplicationEvent::Message { .. } => {}
                },
            }
            for position in answered {
                if let Some(lsn) = position
                    .strip_prefix("lsn:")
                    .and_then(|l| Lsn::parse(l).ok())
                {
                    confirmed = confirmed.max(lsn.as_u64());
                }
            }
            // Idle: everything sent was answered, so the server's position
            // can be confirmed (a later commit lies past it).
            if open.is_none() && ctx.in_flight() == 0 {
                confirmed = confirmed.max(server_end);
            }
            stream.update_applied_lsn(Lsn::from_u64(confirmed));
            ctx.set_lag(json!({
                "bytes": server_end.saturating_sub(confirmed),
                "server_lsn": Lsn::from_u64(server_end).to_string(),
            }));
        }
    }
}

/// Aborts the connection task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn no_params() -> impl ExactSizeIterator<Item = &'static (dyn ToSql + Sync)> {
    std::iter::empty()
}

/// `name` as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Source for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn session<'a>(&'a self, ctx: &'a mut Ctx) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.run(ctx))
    }
}
