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

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use vista_plugin_api::Hidden;

/// Version of the on-disk layout; a data directory of another version is
/// refused with both versions named.
pub const FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoint");

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
        })
    }
}

/// The store as of one record.
pub struct Checkpoint {
    /// The last record it includes.
    pub rec: u64,
    /// The `_seq` of the last mutation it includes.
    pub last_seq: u64,
    /// Every entity: (type, key, value).
    pub entities: Vec<(String, String, Arc<serde_json::Value>)>,
    /// Cluster mode: the build (plugin, fingerprint) each plugin ran at
    /// `rec`, so a restart projects what follows with the same builds.
    /// Stored under a key of its own, absent when empty, so checkpoints of
    /// a single host keep their format.
    pub builds: Vec<(String, String)>,
    /// Every entity's hidden aggregate state (`unique_count` member sets):
    /// (type, key, state), for the entities that have one.
    pub hidden: Vec<(String, String, Arc<Hidden>)>,
}

/// A checkpoint line holding one entity's hidden state. Entity lines are
/// JSON arrays, these are objects, so the decoder tells them apart by their
/// first byte (and a checkpoint without them reads as before).
#[derive(serde::Serialize, serde::Deserialize)]
struct HiddenLine<E, K, H> {
    entity: E,
    key: K,
    hidden: H,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.rec.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        for (entity, key, value) in &self.entities {
            serde_json::to_writer(&mut out, &(entity, key, &**value)).expect("entities serialize");
            out.push(b'\n');
        }
        for (entity, key, hidden) in &self.hidden {
            let line = HiddenLine {
                entity,
                key,
                hidden: &**hidden,
            };
            serde_json::to_writer(&mut out, &line).expect("hidden state serializes");
            out.push(b'\n');
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() < 16 {
            return Err("checkpoint header is truncated".into());
        }
        let rec = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let last_seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let mut entities = Vec::new();
        let mut hidden = Vec::new();
        for (line, text) in bytes[16..].split(|b| *b == b'\n').enumerate() {
            if text.is_empty() {
                continue;
            }
            if text[0] == b'{' {
                let state: HiddenLine<String, String, Hidden> = serde_json::from_slice(text)
                    .map_err(|e| format!("hidden state {}: {e}", line + 1))?;
                hidden.push((state.entity, state.key, Arc::new(state.hidden)));
                continue;
            }
            let (entity, key, value): (String, String, serde_json::Value) =
                serde_json::from_slice(text).map_err(|e| format!("entity {}: {e}", line + 1))?;
            entities.push((entity, key, Arc::new(value)));
        }
        Ok(Checkpoint {
            rec,
            last_seq,
            entities,
            builds: Vec::new(),
            hidden,
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

    /// Closes and opens the database again: after an I/O error redb refuses
    /// every transaction until it is reopened. Then a fsynced write of
    /// [`PROBE_BYTES`] (removed again) proves the disk takes writes: an
    /// empty commit would pass on a disk with a few pages left.
    fn reopen(&self) -> Result<(), String> {
        {
            let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
            *db = None; // closed before it is opened again (redb locks the file)
            *db = Some(open_database(&self.path, || {})?);
        }
        fault_injected()?;
        let db = self.db()?;
        for probe in [Some(vec![0u8; PROBE_BYTES]), None] {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate);
            {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                match &probe {
                    Some(bytes) => meta.insert("probe", bytes.as_slice()).map(drop),
                    None => meta.remove("probe").map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())?;
        }
        Ok(())
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
            for record in records {
                log.insert(record.rec, record.encode().as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())
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
        let txn = self
            .db()
            .map_err(&err)?
            .begin_read()
            .map_err(|e| err(e.to_string()))?;
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
        if let Some(value) = checkpoints.get("latest").map_err(|e| e.to_string())? {
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

    /// Replaces the checkpoint (durably).
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let txn = self.db()?.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(CHECKPOINT).map_err(|e| e.to_string())?;
            table
                .insert("latest", checkpoint.encode().as_slice())
                .map_err(|e| e.to_string())?;
            if checkpoint.builds.is_empty() {
                table.remove("builds").map_err(|e| e.to_string())?;
            } else {
                let builds = serde_json::to_vec(&checkpoint.builds).expect("builds serialize");
                table
                    .insert("builds", builds.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }

    /// The latest checkpoint, if any.
    pub fn load_checkpoint(&self) -> Result<Option<Checkpoint>, DataError> {
        let err = storage(&self.path);
        let txn = self
            .db()
            .map_err(&err)?
            .begin_read()
            .map_err(|e| err(e.to_string()))?;
        let table = txn.open_table(CHECKPOINT).map_err(|e| err(e.to_string()))?;
        let Some(value) = table.get("latest").map_err(|e| err(e.to_string()))? else {
            return Ok(None);
        };
        let corrupt = |reason: String| DataError::Corrupt {
            path: self.path.clone(),
            what: "checkpoint".into(),
            reason,
        };
        let mut checkpoint = Checkpoint::decode(value.value()).map_err(corrupt)?;
        if let Some(builds) = table.get("builds").map_err(|e| err(e.to_string()))? {
            checkpoint.builds = serde_json::from_slice(builds.value())
                .map_err(|e| corrupt(format!("builds: {e}")))?;
        }
        Ok(Some(checkpoint))
    }
}

/// `vista data check DIR`: reads every record and the checkpoint and
/// checks that `_seq` ranges only go up.
pub fn check(dir: &Path) -> Result<LogStats, DataError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(DataError::Open {
            path,
            reason: "no such file".into(),
        });
    }
    let log = EventLog::open(dir)?;
    log.load_checkpoint()?;
    let mut last_seq = 0;
    for record in log.records_after(0)? {
        if record.mutations > 0 && record.first_seq <= last_seq {
            return Err(DataError::Corrupt {
                path: log.path.clone(),
                what: format!("log record {}", record.rec),
                reason: format!(
                    "its _seq range starts at {}, not after {last_seq}",
                    record.first_seq
                ),
            });
        }
        last_seq = last_seq.max(record.first_seq + record.mutations.max(1) - 1);
    }
    log.stats().map_err(storage(&log.path))
}

/// What `vista data repair` did.
#[derive(Debug, serde::Serialize)]
pub struct Repaired {
    /// Records dropped because they could not be read (and all after them).
    pub dropped_records: u64,
    /// The first record dropped, if any.
    pub from_rec: Option<u64>,
}

/// `vista data repair DIR`: opening lets redb recover the file to its last
/// whole commit; then every record from the first unreadable one on is
/// dropped (a record after a hole cannot be replayed in order).
pub fn repair(dir: &Path) -> Result<Repaired, DataError> {
    let log = EventLog::open(dir)?;
    let err = storage(&log.path);
    let txn = log
        .db()
        .map_err(&err)?
        .begin_write()
        .map_err(|e| err(e.to_string()))?;
    let mut repaired = Repaired {
        dropped_records: 0,
        from_rec: None,
    };
    {
        let mut table = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
        let mut bad_from = None;
        for entry in table.iter().map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            if LogRecord::decode(key.value(), value.value()).is_err() {
                bad_from = Some(key.value());
                break;
            }
        }
        if let Some(from) = bad_from {
            let doomed: Vec<u64> = table
                .range(from..)
                .map_err(|e| err(e.to_string()))?
                .filter_map(|e| e.ok().map(|(k, _)| k.value()))
                .collect();
            for rec in &doomed {
                table.remove(rec).map_err(|e| err(e.to_string()))?;
            }
            repaired.dropped_records = doomed.len() as u64;
            repaired.from_rec = Some(from);
        }
    }
    txn.commit().map_err(|e| err(e.to_string()))?;
    Ok(repaired)
}

/// How much of the log is kept. Records are only ever dropped once a
/// checkpoint covers them, so a restart never needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep every record (the default; reprojection needs the whole log).
    All,
    /// Keep the last N records.
    Records(u64),
    /// Keep records logged within this long.
    Age(Duration),
    /// Keep the newest records up to this many bytes.
    Bytes(u64),
}

impl std::str::FromStr for Retention {
    type Err = String;

    /// `all`, `records:N`, `age:SECS` or `bytes:N`.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{value:?} is not a number"))
        };
        match text.split_once(':') {
            None if text == "all" => Ok(Retention::All),
            Some(("records", n)) => Ok(Retention::Records(number(n)?)),
            Some(("age", secs)) => Ok(Retention::Age(Duration::from_secs(number(secs)?))),
            Some(("bytes", n)) => Ok(Retention::Bytes(number(n)?)),
            _ => Err(format!(
                "expected all, records:N, age:SECS or bytes:N, got {text:?}"
            )),
        }
    }
}

impl EventLog {
    /// Drops records covered by the checkpoint at `covered` that the policy
    /// no longer keeps. Returns how many were dropped.
    pub fn prune(&self, policy: Retention, covered: u64) -> Result<u64, String> {
        if policy == Retention::All {
            return Ok(0);
        }
        let txn = self.db()?.begin_write().map_err(|e| e.to_string())?;
        let dropped;
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let last = log
                .last()
                .map_err(|e| e.to_string())?
                .map_or(0, |(k, _)| k.value());
            // The newest record the policy lets go, never past the checkpoint.
            let cutoff = match policy {
                Retention::All => 0,
                Retention::Records(keep) => last.saturating_sub(keep),
                Retention::Age(age) => {
                    let oldest_kept = now_ms().saturating_sub(age.as_millis() as u64);
                    let mut cutoff = 0;
                    for entry in log.iter().map_err(|e| e.to_string())? {
                        let (key, value) = entry.map_err(|e| e.to_string())?;
                        match LogRecord::decode(key.value(), value.value()) {
                            Ok(record) if record.logged_at_ms < oldest_kept => cutoff = key.value(),
                            _ => break,
                        }
                    }
                    cutoff
                }
                Retention::Bytes(keep) => {
                    let mut kept = 0u64;
                    let mut cutoff = 0;
                    for entry in log.iter().map_err(|e| e.to_string())?.rev() {
                        let (key, value) = entry.map_err(|e| e.to_string())?;
                        kept += value.value().len() as u64;
                        if kept > keep {
                            cutoff = key.value();
                            break;
                        }
                    }
                    cutoff
                }
            }
            .min(covered);
            let doomed: Vec<u64> = log
                .range(..=cutoff)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok().map(|(k, _)| k.value()))
                .collect();
            for rec in &doomed {
                log.remove(rec).map_err(|e| e.to_string())?;
            }
            dropped = doomed.len() as u64;
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(dropped)
    }
}

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit, before any request in it is answered (default).
    Always,
    /// Commits are written at once and fsynced every this often; a request
    /// is answered once written, so a power loss (not a process crash) can
    /// lose up to this much acknowledged data.
    Every(Duration),
}

/// Work for the log writer thread.
pub enum WriterJob {
    /// Append a record.
    Append(LogRecord),
    /// Write a checkpoint.
    Checkpoint(Checkpoint),
}

/// What the writer reports back.
pub enum WriterReport {
    /// Every record up to this one is durable (per the policy).
    Durable(u64),
    /// These records could not be written; nothing of them is on disk.
    Failed {
        /// The records.
        recs: Vec<u64>,
        /// Why.
        reason: String,
    },
    /// A checkpoint covering this record was written.
    Checkpointed(u64),
}

/// The thread that writes the log.
pub struct LogWriter {
    jobs: mpsc::Sender<WriterJob>,
    thread: std::thread::JoinHandle<()>,
}

impl LogWriter {
    /// Starts the writer; `report` receives its outcomes in record order.
    pub fn spawn(
        log: Arc<EventLog>,
        policy: FsyncPolicy,
        retention: Retention,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> LogWriter {
        let (jobs, queue) = mpsc::channel::<WriterJob>();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                crate::supervise::run("log-writer", || {
                    write_loop(&log, policy, retention, &queue, report)
                })
            })
            .expect("start the log writer thread");
        LogWriter { jobs, thread }
    }

    /// Queues a job.
    pub fn submit(&self, job: WriterJob) {
        let _ = self.jobs.send(job);
    }

    /// Writes what is queued, then stops the thread (which drops its
    /// handle on the log).
    pub fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn write_loop(
    log: &EventLog,
    policy: FsyncPolicy,
    retention: Retention,
    queue: &mpsc::Receiver<WriterJob>,
    report: impl Fn(WriterReport),
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut backoff = REOPEN_FIRST_BACKOFF;
    let mut next_reopen = Instant::now();
    loop {
        let faulted = log.fault().is_some();
        let wait = match (policy, unsynced) {
            _ if faulted => next_reopen.saturating_duration_since(Instant::now()),
            (FsyncPolicy::Every(every), true) => every.saturating_sub(last_sync.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let first = match queue.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if faulted && Instant::now() >= next_reopen {
            // A storage fault heals by itself once the disk takes writes.
            match log.reopen() {
                Ok(()) => {
                    tracing::info!(file = %log.path().display(), "the event log is writable again; ingest resumes");
                    log.set_fault(None);
                    backoff = REOPEN_FIRST_BACKOFF;
                }
                Err(reason) => {
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "the event log still cannot be written");
                    next_reopen = Instant::now() + backoff;
                    backoff = (backoff * 2).min(REOPEN_MAX_BACKOFF);
                }
            }
        }
        let Some(first) = first else {
            if !faulted && unsynced {
                if let Err(reason) = log.sync() {
                    tracing::error!(%reason, "log fsync failed");
                    log.set_fault(Some(reason));
                    next_reopen = Instant::now() + backoff;
                }
                last_sync = Instant::now();
                unsynced = false;
            }
            continue;
        };
        // Group commit: everything queued meanwhile goes in the same
        // transaction, behind one fsync.
        let mut records = Vec::new();
        let mut checkpoints = Vec::new();
        for job in std::iter::once(first).chain(queue.try_iter()) {
            match job {
                WriterJob::Append(record) => {
                    crate::supervise::inject_panic("log-writer", &record.stream);
                    records.push(record)
                }
                WriterJob::Checkpoint(checkpoint) => checkpoints.push(checkpoint),
            }
        }
        if let Some(reason) = log.fault() {
            // Refused at once, never half-written: the engine answers 503.
            if !records.is_empty() {
                report(WriterReport::Failed {
                    recs: records.iter().map(|r| r.rec).collect(),
                    reason,
                });
            }
            if !checkpoints.is_empty() {
                tracing::warn!("checkpoint skipped: the event log cannot be written");
            }
            continue;
        }
        if !records.is_empty() {
            let fsync = policy == FsyncPolicy::Always;
            let started = Instant::now();
            match log.append(&records, fsync) {
                Ok(()) => {
                    metrics::histogram!("vista_log_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("vista_log_records_total").increment(records.len() as u64);
                    unsynced = !fsync;
                    report(WriterReport::Durable(
                        records.last().expect("non-empty").rec,
                    ));
                }
                Err(reason) => {
                    metrics::counter!("vista_log_write_failures_total").increment(1);
                    tracing::error!(%reason, records = records.len(), "cannot write the event log; the requests are refused with 503 until it can");
                    log.set_fault(Some(reason.clone()));
                    next_reopen = Instant::now() + backoff;
                    report(WriterReport::Failed {
                        recs: records.iter().map(|r| r.rec).collect(),
                        reason,
                    });
                }
            }
        }
        for checkpoint in checkpoints {
            let started = Instant::now();
            match log.write_checkpoint(&checkpoint) {
                Ok(()) => {
                    tracing::info!(
                        rec = checkpoint.rec,
                        entities = checkpoint.entities.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "checkpoint written"
                    );
                    report(WriterReport::Checkpointed(checkpoint.rec));
                    match log.prune(retention, checkpoint.rec) {
                        Ok(0) => {}
                        Ok(dropped) => {
                            tracing::info!(dropped, "log records past the retention dropped")
                        }
                        Err(reason) => tracing::error!(%reason, "cannot drop old log records"),
                    }
                    publish_gauges(log);
                }
                Err(reason) => tracing::error!(%reason, "cannot write a checkpoint"),
            }
        }
    }
}

/// The first wait before reopening a faulted log, doubled up to
/// [`REOPEN_MAX_BACKOFF`].
const REOPEN_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What a reopened log must be able to write before it takes requests.
const PROBE_BYTES: usize = 4 << 20;
/// See [`REOPEN_FIRST_BACKOFF`].
const REOPEN_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fault injection for tests where no small filesystem can be mounted:
/// while the file named by `VISTA_FAULT_LOG_UNWRITABLE` exists, every
/// append and fsync fails, before writing anything, as on a full disk.
fn fault_injected() -> Result<(), String> {
    static FLAG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let flag =
        FLAG.get_or_init(|| std::env::var_os("VISTA_FAULT_LOG_UNWRITABLE").map(PathBuf::from));
    match flag {
        Some(flag) if flag.exists() => {
            Err("injected fault: No space left on device (os error 28)".into())
        }
        _ => Ok(()),
    }
}

/// `/metrics` gauges of what the log holds.
pub fn publish_gauges(log: &EventLog) {
    if let Ok(stats) = log.stats() {
        metrics::gauge!("vista_log_retained_records").set(stats.records as f64);
        metrics::gauge!("vista_log_first_record").set(stats.first_rec as f64);
        metrics::gauge!("vista_log_last_record").set(stats.last_rec as f64);
        metrics::gauge!("vista_log_disk_bytes").set(stats.disk_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(rec: u64) -> LogRecord {
        LogRecord {
            rec,
            stream: "tokens".into(),
            first_seq: rec * 10,
            mutations: 3,
            body: Bytes::from(format!("{{\"n\":{rec}}}\n")),
            logged_at_ms: 1_700_000_000_000 + rec,
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopening() {
        let dir = tempfile_dir();
        {
            let log = EventLog::open(&dir).unwrap();
            log.append(&[record(1), record(2)], true).unwrap();
            log.append(&[record(3)], true).unwrap();
        }
        let log = EventLog::open(&dir).unwrap();
        let records = log.records_after(1).unwrap();
        assert_eq!(records, vec![record(2), record(3)]);
        let stats = log.stats().unwrap();
        assert_eq!((stats.records, stats.last_rec, stats.last_seq), (3, 3, 32));
        assert!(LogRecord::decode(9, &record(1).encode()[..10]).is_err());
    }

    #[test]
    fn pruning_keeps_the_policy_and_never_passes_the_checkpoint() {
        let dir = tempfile_dir();
        let log = EventLog::open(&dir).unwrap();
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
        let dir = tempfile_dir();
        let log = EventLog::open(&dir).unwrap();
        let mut hidden = Hidden::default();
        for trader in ["ann", "bob"] {
            let m = vista_plugin_api::Mutation::patch("Token", "a", json!({}))
                .unique_count("traders", trader);
            vista_plugin_api::apply_mutation(&mut None, &mut hidden, &m);
        }
        log.write_checkpoint(&Checkpoint {
            rec: 7,
            last_seq: 70,
            entities: vec![("Token".into(), "a".into(), Arc::new(json!({"supply": 1})))],
            builds: vec![("tokens".into(), "0123456789abcdef".into())],
            hidden: vec![("Token".into(), "a".into(), Arc::new(hidden.clone()))],
        })
        .unwrap();
        let checkpoint = log.load_checkpoint().unwrap().unwrap();
        assert_eq!((checkpoint.rec, checkpoint.last_seq), (7, 70));
        assert_eq!(checkpoint.entities[0].2["supply"], 1);
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
    fn a_directory_keeps_to_the_mode_it_was_first_used_in() {
        let dir = tempfile_dir();
        let log = EventLog::open(&dir).unwrap();
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
        let old = tempfile_dir();
        let log = EventLog::open(&old).unwrap();
        log.append(&[record(1)], true).unwrap();
        assert!(log.claim_mode("cluster:VISTA").is_err());
        log.claim_mode("single").unwrap();
    }

    #[test]
    fn another_format_is_refused_with_both_versions() {
        let dir = tempfile_dir();
        {
            let log = EventLog::open(&dir).unwrap();
            let txn = log.db().unwrap().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 99u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = EventLog::open(&dir).err().unwrap().to_string();
        assert!(
            err.contains("format 99") && err.contains(&format!("format {FORMAT_VERSION}")),
            "{err}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vista-log-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
