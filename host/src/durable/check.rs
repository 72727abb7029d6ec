//! `vista data check` and `vista data repair`: an operator's tools on a
//! stopped host's data directory.
//!
//! Its own module because they are not part of serving: they read the whole
//! log at once, as a running host never does, and `repair` is the one place
//! records are dropped without a checkpoint covering them (a record after a
//! hole cannot be replayed in order).

use std::path::Path;

use redb::ReadableTable;

use super::{storage, DataError, EventLog, LogRecord, LogStats, DB_FILE, LOG};

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
