//! The checkpoint and what it lets go: the store as of one record, its
//! encoding and its place in the database, and the retention policy that
//! drops log records once a checkpoint covers them.
//!
//! Its own module because it is the one part of the file format that holds
//! state rather than requests (a restart loads it instead of replaying what
//! it covers), and because the two questions it answers, "where does a
//! restart start" and "which records may go", are the same question: no
//! record is dropped before a checkpoint covers it.

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableTable;
use vista_plugin_api::Hidden;

use crate::entity::Stored;

use super::{now_ms, storage, DataError, EventLog, LogRecord, CHECKPOINT, LOG};

/// The key of the checkpoint in its table.
pub(super) const LATEST: &str = "latest";

/// The key of a checkpoint's header (its record and `_seq`) beside the
/// checkpoint itself. Checkpoints written before it existed have none: the
/// header is then read from the checkpoint.
pub(super) const HEADER: &str = "header";

/// The store as of one record.
pub struct Checkpoint {
    /// The last record it includes.
    pub rec: u64,
    /// The `_seq` of the last mutation it includes.
    pub last_seq: u64,
    /// Every entity: (type, key, value).
    pub entities: Vec<(String, String, Stored)>,
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
            serde_json::to_writer(&mut out, &(entity, key, value)).expect("entities serialize");
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

    /// Decodes a checkpoint, its lines split between two threads: a
    /// restart waits for this, and parsing a JSON tree per entity (not
    /// reading the bytes) is most of it (about 40% of a start with
    /// 1,000,000 entities).
    fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() < 16 {
            return Err("checkpoint header is truncated".into());
        }
        let rec = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let last_seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let body = &bytes[16..];
        // The second half starts after the newline nearest the middle.
        let split = body[body.len() / 2..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |at| body.len() / 2 + at + 1);
        let (first, second) = body.split_at(split);
        let first_lines = first.iter().filter(|b| **b == b'\n').count();
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| decode_lines(second, first_lines));
            let first = decode_lines(first, 0);
            (first, second.join().expect("decoding does not panic"))
        });
        let (mut entities, mut hidden) = first?;
        let (more_entities, more_hidden) = second?;
        entities.extend(more_entities);
        hidden.extend(more_hidden);
        Ok(Checkpoint {
            rec,
            last_seq,
            entities,
            builds: Vec::new(),
            hidden,
        })
    }
}

/// What some lines of a checkpoint hold; `skipped` lines come before them
/// (for the line numbers of errors).
type Decoded = (
    Vec<(String, String, Stored)>,
    Vec<(String, String, Arc<Hidden>)>,
);

fn decode_lines(bytes: &[u8], skipped: usize) -> Result<Decoded, String> {
    let mut entities = Vec::new();
    let mut hidden = Vec::new();
    for (line, text) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = skipped + line + 1;
        if text.is_empty() {
            continue;
        }
        if text[0] == b'{' {
            let state: HiddenLine<String, String, Hidden> =
                serde_json::from_slice(text).map_err(|e| format!("hidden state {line}: {e}"))?;
            hidden.push((state.entity, state.key, Arc::new(state.hidden)));
            continue;
        }
        // Kept as text: a tree is built only for an entity written again.
        let (entity, key, value): (String, String, Stored) =
            serde_json::from_slice(text).map_err(|e| format!("entity {line}: {e}"))?;
        entities.push((entity, key, value));
    }
    Ok((entities, hidden))
}

impl EventLog {
    /// Replaces the checkpoint (durably).
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let txn = self.db()?.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(CHECKPOINT).map_err(|e| e.to_string())?;
            let encoded = checkpoint.encode();
            table
                .insert(LATEST, encoded.as_slice())
                .map_err(|e| e.to_string())?;
            // Its first 16 bytes (record and `_seq`) again, on their own:
            // what the log's statistics read, without reading (and
            // allocating) every entity of a large checkpoint.
            table
                .insert(HEADER, &encoded[..16])
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
        let txn = self.read_txn()?;
        let table = txn.open_table(CHECKPOINT).map_err(|e| err(e.to_string()))?;
        let Some(value) = table.get(LATEST).map_err(|e| err(e.to_string()))? else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checkpoint(entities: usize) -> Checkpoint {
        let hidden: Hidden =
            serde_json::from_value(json!({"holders": ["\"a\"", "\"b\""]})).unwrap();
        Checkpoint {
            rec: 7,
            last_seq: 99,
            entities: (0..entities)
                .map(|i| {
                    let value = json!({"n": i, "text": "line\nbreak"});
                    let value = if i % 2 == 0 {
                        Stored::compact(Arc::new(value))
                    } else {
                        Stored::Tree(Arc::new(value))
                    };
                    ("Token".to_owned(), format!("k{i}"), value)
                })
                .collect(),
            builds: Vec::new(),
            hidden: vec![("Token".into(), "k1".into(), Arc::new(hidden))],
        }
    }

    #[test]
    fn decoding_in_two_halves_gives_back_every_entity_in_order() {
        for count in [0, 1, 2, 3, 1001] {
            let original = checkpoint(count);
            let decoded = Checkpoint::decode(&original.encode()).unwrap();
            assert_eq!((decoded.rec, decoded.last_seq), (7, 99));
            assert_eq!(decoded.entities, original.entities, "{count} entities");
            assert_eq!(decoded.hidden.len(), 1);
            assert_eq!(decoded.hidden[0].2, original.hidden[0].2);
        }
    }

    #[test]
    fn a_corrupt_line_in_the_second_half_is_named_by_its_number() {
        let mut bytes = checkpoint(1000).encode();
        // Line 901 of 1,000 (the hidden-state line is 1,001).
        let at = bytes[16..]
            .split(|b| *b == b'\n')
            .take(900)
            .map(|line| line.len() + 1)
            .sum::<usize>()
            + 16;
        bytes[at] = b'x';
        let error = Checkpoint::decode(&bytes).err().expect("a corrupt line");
        assert!(error.starts_with("entity 901:"), "{error}");
    }
}
