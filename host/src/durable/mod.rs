//! The event log: the source of truth of a durable host (`--data DIR`).
//!
//! Every accepted ingest request is one [`LogRecord`]: its stream, its body
//! exactly as received, and the `_seq` range its mutations got. Projectors
//! are deterministic, so replaying the records through the loaded plugins
//! rebuilds the store, `_seq` for `_seq`. A checkpoint (the whole store and
//! the record it covers) bounds how much a restart replays.
//!
//! Storage is [redb](https://docs.rs/redb): one file, ACID transactions, a
//! crash mid-commit leaves the previous commit intact (so a request is
//! wholly in the log or wholly absent), and a commit with
//! `Durability::Immediate` is fsynced before it returns. Why redb rather
//! than fjall (an LSM with a journal): the log is append-only with
//! sequential keys and is read back in order, which a B-tree serves
//! without compaction threads or tuning, and one file is what an operator
//! backs up. Measured in BENCHMARKS.md.
//!
//! The [`LogWriter`] thread owns all writes. It takes every record queued
//! since its last commit and writes them in one transaction: concurrent
//! requests share one fsync (group commit). The engine applies a request
//! only once its record is durable and answers it after that, so nothing
//! acknowledged is ever lost and nothing a client saw is ever undone.
//!
//! This module holds the records and the database they are stored in; the
//! writer thread and its recovery from storage faults are in `writer`, the
//! checkpoint and retention in `checkpoint`, `vista data check|repair` in
//! `check`.

mod check;
mod checkpoint;
mod writer;

pub use check::{check, repair, Repaired};
pub use checkpoint::{Checkpoint, Retention};
pub use writer::{FsyncPolicy, LogWriter, WriterJob, WriterReport};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use writer::fault_injected;

/// Version of the on-disk layout; a data directory of another version is
/// refused with both versions named.
pub const FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoint");
/// Each source's position ([`SourceMark`]): written in the same transaction
/// as the record that carried it, so it is durable exactly when the events
/// it stands for are (see [`crate::sources`]).
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");

/// redb's page cache for the log.
const LOG_CACHE_BYTES: usize = 16 << 20;

/// The file inside the data directory.
pub const DB_FILE: &str = "vista.redb";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The directory or database file cannot be created or opened.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Written by an incompatible version of Vista.
    #[error("{path} was written in data format {found}; this vista reads format {expected}")]
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// Format found in the file.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
    },
    /// The directory belongs to the other mode (a cluster member's
    /// checkpoints, or a single host's log): its positions mean different
    /// things there, so using it would skip or repeat records.
    #[error("{path} holds {found}; this host was started for {wanted}: use another --data directory (or the matching mode)")]
    WrongMode {
        /// The database file.
        path: PathBuf,
        /// What the directory holds.
        found: String,
        /// What this start asked for.
        wanted: String,
    },
    /// A record or checkpoint cannot be decoded.
    #[error("{path}: {what} is corrupt: {reason}; run `vista data check` / `vista data repair` on the directory")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record (`log record N`) or `checkpoint`.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A read or write failed.
    #[error("storage error on {path}: {reason}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// One accepted ingest request.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Record number, from 1, in commit order.
    pub rec: u64,
    /// The stream it was posted to.
    pub stream: String,
    /// `_seq` of its first mutation.
    pub first_seq: u64,
    /// How many mutations it produced (its `_seq`s are
    /// `first_seq..first_seq + mutations`).
    pub mutations: u64,
    /// The body as received (NDJSON or a JSON array).
    pub body: Bytes,
    /// When it was logged, in milliseconds since the Unix epoch (for
    /// `--retain age:`).
    pub logged_at_ms: u64,
    /// The source position the request brings its source to, if a source
    /// produced it: stored beside the log in the same transaction (not in
    /// the record's bytes, so the record format is unchanged).
    pub source: Option<SourceMark>,
}

/// Where a source (a database's change stream, a broker's stream) stands
/// once a request it produced is applied: its name and a position in the
/// source's own terms (a PostgreSQL LSN, a JetStream sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMark {
    /// The source's name (`--source NAME=URL`).
    pub source: String,
    /// Its position, opaque to the log.
    pub position: String,
}

const RECORD_TAG: u8 = 1;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LogRecord {
    /// `tag, first_seq, mutations, logged_at_ms, stream length, stream,
    /// body`: a layout of our own because it is six fields, read back in
    /// order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 8 + 8 + 4 + self.stream.len() + self.body.len());
        out.push(RECORD_TAG);
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.mutations.to_le_bytes());
        out.extend_from_slice(&self.logged_at_ms.to_le_bytes());
        out.extend_from_slice(&(self.stream.len() as u32).to_le_bytes());
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads what [`LogRecord::encode`] wrote.
    pub fn decode(rec: u64, bytes: &[u8]) -> Result<LogRecord, String> {
        let take = |from: usize, len: usize| {
            bytes
                .get(from..from + len)
                .ok_or_else(|| format!("record of {} bytes is truncated", bytes.len()))
        };
        if take(0, 1)?[0] != RECORD_TAG {
            return Err(format!("unknown record tag {}", bytes[0]));
        }
        let first_seq = u64::from_le_bytes(take(1, 8)?.try_into().expect("8 bytes"));
        let mutations = u64::from_le_bytes(take(9, 8)?.try_into().expect("8 bytes"));
        let logged_at_ms = u64::from_le_bytes(take(17, 8)?.try_into().expect("8 bytes"));
        let stream_len = u32::from_le_bytes(take(25, 4)?.try_into().expect("4 bytes")) as usize;
        let stream = std::str::from_utf8(take(29, stream_len)?)
            .map_err(|e| format!("stream name: {e}"))?
            .to_owned();
        let body = Bytes::copy_from_slice(&bytes[29 + stream_len..]);
        Ok(LogRecord {
            rec,
            stream,
            first_seq,
            mutations,
            body,
            logged_at_ms,
            source: None,
        })
    }
}

/// What is on disk, for `GET /status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LogStats {
    /// Records in the log.
    pub records: u64,
    /// First record still held (0 when empty).
    pub first_rec: u64,
    /// Last record written (0 when empty).
    pub last_rec: u64,
    /// The last `_seq` handed out by a logged record.
    pub last_seq: u64,
    /// Size of the database file.
    pub disk_bytes: u64,
    /// Record the latest checkpoint covers (0: none).
    pub checkpoint_rec: u64,
}

/// The open event log.
pub struct EventLog {
    /// `None` only while [`EventLog::reopen`] swaps it.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Why the log cannot be written now (a full disk, an I/O error), until
    /// the writer reopens it and a write succeeds.
    fault: Arc<LogHealth>,
}

/// Whether the log can be written, shared with whoever reports health
/// (`/readyz`, `/status`) without holding the log open.
#[derive(Default)]
pub struct LogHealth(Mutex<Option<String>>);

impl LogHealth {
    /// Why the log cannot be written now, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A read guard on the open database.
struct Db<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was made")
    }
}

/// Opens (or creates) the database file.
fn open_database(path: &Path, repaired: impl Fn() + 'static) -> Result<Database, String> {
    Database::builder()
        // The log is written in order and read back once, at start: a big
        // page cache would only hold memory.
        .set_cache_size(LOG_CACHE_BYTES)
        .set_repair_callback(move |_| repaired())
        .create(path)
        .map_err(|e| e.to_string())
}

fn storage(path: &Path) -> impl Fn(String) -> DataError + '_ {
    move |reason| DataError::Storage {
        path: path.to_owned(),
        reason,
    }
}

impl EventLog {
    /// Opens (or creates) the log in `dir`. A crash mid-commit is recovered
    /// by redb (the torn commit is discarded) and logged.
    pub fn open(dir: &Path) -> Result<EventLog, DataError> {
        let path = dir.join(DB_FILE);
        let open_error = |reason: String| DataError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let repaired = std::rc::Rc::new(std::cell::Cell::new(false));
        let flag = repaired.clone();
        let db = open_database(&path, move || flag.set(true)).map_err(open_error)?;
        if repaired.get() {
            tracing::warn!(file = %path.display(), "the data file was not closed cleanly; recovered to its last whole commit");
        }
        let log = EventLog {
            db: RwLock::new(Some(db)),
            path,
            fault: Arc::default(),
        };
        log.check_format()?;
        Ok(log)
    }

    /// A read transaction, failures named with the log's path.
    fn read_txn(&self) -> Result<redb::ReadTransaction, DataError> {
        let err = storage(&self.path);
        self.db()
            .map_err(&err)?
            .begin_read()
            .map_err(|e| err(e.to_string()))
    }

    fn db(&self) -> Result<Db<'_>, String> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err("the event log is being reopened".into());
        }
        Ok(Db(guard))
    }

    /// Why the log cannot be written now, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.fault.fault()
    }

    /// Its health, to report after the log is closed too.
    pub fn health(&self) -> Arc<LogHealth> {
        self.fault.clone()
    }

    fn set_fault(&self, reason: Option<String>) {
        *self.fault.0.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Claims the directory for one mode: `single` (this host's own event
    /// log) or `cluster:STREAM` (checkpoints of a position in that shared
    /// stream). A record number and a stream position are both counted from
    /// 1, so a directory used in the other mode would have its checkpoint
    /// read as the wrong position: refused with both named. A directory
    /// from before modes were recorded is a single host's if it holds
    /// anything.
    pub fn claim_mode(&self, wanted: &str) -> Result<(), DataError> {
        let err = storage(&self.path);
        let describe = |mode: &str| match mode.strip_prefix("cluster:") {
            Some(stream) => format!("checkpoints of cluster stream {stream:?}"),
            None => "a single host's event log".to_owned(),
        };
        let found = {
            let txn = self
                .db()
                .map_err(&err)?
                .begin_read()
                .map_err(|e| err(e.to_string()))?;
            let meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
            let found = meta
                .get("mode")
                .map_err(|e| err(e.to_string()))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            found
        };
        let found = match found {
            Some(mode) => Some(mode),
            None => {
                let stats = self.stats().map_err(&err)?;
                (stats.records > 0 || stats.checkpoint_rec > 0).then(|| "single".to_owned())
            }
        };
        match found {
            Some(mode) if mode == wanted => Ok(()),
            Some(mode) => Err(DataError::WrongMode {
                path: self.path.clone(),
                found: describe(&mode),
                wanted: describe(wanted),
            }),
            None => {
                let txn = self
                    .db()
                    .map_err(&err)?
                    .begin_write()
                    .map_err(|e| err(e.to_string()))?;
                {
                    let mut meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
                    meta.insert("mode", wanted.as_bytes())
                        .map_err(|e| err(e.to_string()))?;
                }
                txn.commit().map_err(|e| err(e.to_string()))
            }
        }
    }

    fn check_format(&self) -> Result<(), DataError> {
        let err = storage(&self.path);
        let txn = self
            .db()
            .map_err(&err)?
            .begin_write()
            .map_err(|e| err(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
            let found = meta
                .get("format")
                .map_err(|e| err(e.to_string()))?
                .map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| err(e.to_string()))?;
                }
                Some(bytes) => {
                    let found = bytes
                        .get(..4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    if found != FORMAT_VERSION {
                        return Err(DataError::Incompatible {
                            path: self.path.clone(),
                            found,
                            expected: FORMAT_VERSION,
                        });
                    }
                }
            }
            txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
            txn.open_table(CHECKPOINT).map_err(|e| err(e.to_string()))?;
        }
        txn.commit().map_err(|e| err(e.to_string()))
    }

    /// Appends records in one transaction; with `fsync`, durable on return.
    pub fn append(&self, records: &[LogRecord], fsync: bool) -> Result<(), String> {
        fault_injected()?;
        let mut txn = self.db()?.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(if fsync {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let mut sources = txn.open_table(SOURCES).map_err(|e| e.to_string())?;
            for record in records {
                log.insert(record.rec, record.encode().as_slice())
                    .map_err(|e| e.to_string())?;
                if let Some(mark) = &record.source {
                    sources
                        .insert(mark.source.as_str(), mark.position.as_bytes())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }

    /// Every source's last durable position (see [`SourceMark`]).
    pub fn source_positions(&self) -> Result<Vec<SourceMark>, DataError> {
        let err = storage(&self.path);
        let txn = self.read_txn()?;
        let table = match txn.open_table(SOURCES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut marks = Vec::new();
        for entry in table.iter().map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            marks.push(SourceMark {
                source: key.value().to_owned(),
                position: String::from_utf8_lossy(value.value()).into_owned(),
            });
        }
        Ok(marks)
    }

    /// Makes every earlier commit durable (the `--fsync every` timer).
    pub fn sync(&self) -> Result<(), String> {
        fault_injected()?;
        let mut txn = self.db()?.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate);
        txn.commit().map_err(|e| e.to_string())
    }

    /// Records after `rec`, in order.
    pub fn records_after(&self, rec: u64) -> Result<Vec<LogRecord>, DataError> {
        let err = storage(&self.path);
        let txn = self.read_txn()?;
        let log = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
        let mut records = Vec::new();
        for entry in log.range(rec + 1..).map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            let record = LogRecord::decode(key.value(), value.value()).map_err(|reason| {
                DataError::Corrupt {
                    path: self.path.clone(),
                    what: format!("log record {}", key.value()),
                    reason,
                }
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// What the log holds.
    pub fn stats(&self) -> Result<LogStats, String> {
        let txn = self.db()?.begin_read().map_err(|e| e.to_string())?;
        let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut stats = LogStats {
            records: log.len().map_err(|e| e.to_string())?,
            disk_bytes: std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            ..LogStats::default()
        };
        if let Some((key, _)) = log.first().map_err(|e| e.to_string())? {
            stats.first_rec = key.value();
        }
        if let Some((key, value)) = log.last().map_err(|e| e.to_string())? {
            stats.last_rec = key.value();
            if let Ok(record) = LogRecord::decode(key.value(), value.value()) {
                stats.last_seq = record.first_seq + record.mutations.max(1) - 1;
            }
        }
        let checkpoints = txn.open_table(CHECKPOINT).map_err(|e| e.to_string())?;
        let header = match checkpoints
            .get(checkpoint::HEADER)
            .map_err(|e| e.to_string())?
        {
            Some(header) => Some(header),
            None => checkpoints
                .get(checkpoint::LATEST)
                .map_err(|e| e.to_string())?,
        };
        if let Some(value) = header {
            let bytes = value.value();
            if bytes.len() >= 16 {
                stats.checkpoint_rec = u64::from_le_bytes(bytes[..8].try_into().expect("8"));
                stats.last_seq = stats
                    .last_seq
                    .max(u64::from_le_bytes(bytes[8..16].try_into().expect("8")));
            }
        }
        Ok(stats)
    }
}

/// `/metrics` gauges of what the log holds.
pub fn publish_gauges(log: &EventLog) {
    if let Ok(stats) = log.stats() {
        let metrics = crate::metrics::get();
        metrics.log_retained_records.set(stats.records as i64);
        metrics.log_first_record.set(stats.first_rec as i64);
        metrics.log_last_record.set(stats.last_rec as i64);
        metrics.log_disk_bytes.set(stats.disk_bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::Stored;
    use serde_json::json;
    use std::time::Duration;
    use vista_plugin_api::Hidden;

    fn record(rec: u64) -> LogRecord {
        LogRecord {
            rec,
            stream: "tokens".into(),
            first_seq: rec * 10,
            mutations: 3,
            body: Bytes::from(format!("{{\"n\":{rec}}}\n")),
            logged_at_ms: 1_700_000_000_000 + rec,
            source: None,
        }
    }

    #[test]
    fn a_source_position_is_stored_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let mark = |position: &str| SourceMark {
            source: "orders".into(),
            position: position.into(),
        };
        {
            let log = EventLog::open(dir.path()).unwrap();
            assert!(log.source_positions().unwrap().is_empty());
            let mut first = record(1);
            first.source = Some(mark("lsn:1"));
            let mut second = record(2);
            second.source = Some(mark("lsn:2"));
            log.append(&[first, second, record(3)], true).unwrap();
        }
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.source_positions().unwrap(), vec![mark("lsn:2")]);
    }

    #[test]
    fn records_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            log.append(&[record(1), record(2)], true).unwrap();
            log.append(&[record(3)], true).unwrap();
        }
        let log = EventLog::open(dir.path()).unwrap();
        let records = log.records_after(1).unwrap();
        assert_eq!(records, vec![record(2), record(3)]);
        let stats = log.stats().unwrap();
        assert_eq!((stats.records, stats.last_rec, stats.last_seq), (3, 3, 32));
        assert!(LogRecord::decode(9, &record(1).encode()[..10]).is_err());
    }

    #[test]
    fn pruning_keeps_the_policy_and_never_passes_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.append(&(1..=10).map(record).collect::<Vec<_>>(), true)
            .unwrap();
        assert_eq!(
            log.prune(Retention::Records(3), 5).unwrap(),
            5,
            "only up to the checkpoint"
        );
        assert_eq!(log.stats().unwrap().first_rec, 6);
        assert_eq!(log.prune(Retention::Records(3), 10).unwrap(), 2);
        assert_eq!(log.stats().unwrap().first_rec, 8);
        assert_eq!(
            log.prune(Retention::Age(Duration::from_secs(1)), 10)
                .unwrap(),
            3,
            "all old"
        );
        assert_eq!(
            "bytes:10".parse::<Retention>().unwrap(),
            Retention::Bytes(10)
        );
        assert!("weeks:2".parse::<Retention>().is_err());
    }

    #[test]
    fn checkpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let mut hidden = Hidden::default();
        for trader in ["ann", "bob"] {
            let m = vista_plugin_api::Mutation::patch("Token", "a", json!({}))
                .unique_count("traders", trader);
            vista_plugin_api::apply_mutation(&mut None, &mut hidden, &m);
        }
        log.write_checkpoint(&Checkpoint {
            rec: 7,
            last_seq: 70,
            entities: vec![(
                "Token".into(),
                "a".into(),
                Stored::compact(Arc::new(json!({"supply": 1}))),
            )],
            builds: vec![("tokens".into(), "0123456789abcdef".into())],
            hidden: vec![("Token".into(), "a".into(), Arc::new(hidden.clone()))],
        })
        .unwrap();
        let checkpoint = log.load_checkpoint().unwrap().unwrap();
        assert_eq!((checkpoint.rec, checkpoint.last_seq), (7, 70));
        assert_eq!(checkpoint.entities[0].2.tree()["supply"], 1);
        assert_eq!(checkpoint.hidden.len(), 1);
        assert_eq!(*checkpoint.hidden[0].2, hidden);
        assert_eq!(hidden.members("traders").unwrap().len(), 2);
        assert_eq!(
            checkpoint.builds,
            [("tokens".into(), "0123456789abcdef".into())]
        );
        log.write_checkpoint(&Checkpoint {
            rec: 8,
            last_seq: 71,
            entities: Vec::new(),
            builds: Vec::new(),
            hidden: Vec::new(),
        })
        .unwrap();
        let checkpoint = log.load_checkpoint().unwrap().unwrap();
        assert!(
            checkpoint.builds.is_empty(),
            "a checkpoint without builds clears them"
        );
    }

    #[test]
    fn statistics_read_the_checkpoint_header_with_or_without_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.write_checkpoint(&Checkpoint {
            rec: 7,
            last_seq: 70,
            entities: vec![(
                "Token".into(),
                "a".into(),
                Stored::Tree(Arc::new(json!({"supply": 1}))),
            )],
            builds: Vec::new(),
            hidden: Vec::new(),
        })
        .unwrap();
        let stats = log.stats().unwrap();
        assert_eq!((stats.checkpoint_rec, stats.last_seq), (7, 70));
        // A data directory written before the header had its own key.
        let txn = log.db().unwrap().begin_write().unwrap();
        {
            let mut table = txn.open_table(CHECKPOINT).unwrap();
            assert!(table.remove(checkpoint::HEADER).unwrap().is_some());
        }
        txn.commit().unwrap();
        let stats = log.stats().unwrap();
        assert_eq!((stats.checkpoint_rec, stats.last_seq), (7, 70));
    }

    #[test]
    fn a_directory_keeps_to_the_mode_it_was_first_used_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.claim_mode("cluster:VISTA").unwrap();
        log.claim_mode("cluster:VISTA").unwrap();
        let err = log.claim_mode("single").unwrap_err().to_string();
        assert!(
            err.contains("checkpoints of cluster stream \"VISTA\"")
                && err.contains("a single host's event log"),
            "{err}"
        );
        assert!(log.claim_mode("cluster:OTHER").is_err());
        // A directory from before modes were recorded, holding records, is
        // a single host's.
        let old = tempfile::tempdir().unwrap();
        let log = EventLog::open(old.path()).unwrap();
        log.append(&[record(1)], true).unwrap();
        assert!(log.claim_mode("cluster:VISTA").is_err());
        log.claim_mode("single").unwrap();
    }

    #[test]
    fn another_format_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            let txn = log.db().unwrap().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 99u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = EventLog::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("format 99") && err.contains(&format!("format {FORMAT_VERSION}")),
            "{err}"
        );
    }
}
