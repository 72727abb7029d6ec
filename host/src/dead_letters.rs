//! Dead letters: the ingest requests a plugin refused or crashed on, kept
//! so an operator can see, fix and re-ingest them.
//!
//! Kafka Streams and Flink route a poison record to a dead-letter queue
//! instead of crash-looping on it; Vista refuses the request (nothing of it
//! is applied) and keeps the event that failed here, with the plugin build,
//! the error and, in cluster mode, the record's stream position. The list
//! is bounded per plugin ([`PER_PLUGIN`], oldest dropped first) and lives in
//! memory: the events themselves are in the log (or the stream), so nothing
//! acknowledged depends on it. `GET /admin/dead-letters` lists it (JSON, or
//! NDJSON with `?format=ndjson`, which `vista dead-letters` prints so the
//! lines can be edited and fed back to `vista ingest`).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

/// Dead letters kept per plugin.
pub const PER_PLUGIN: usize = 1000;

/// One refused event.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The plugin that refused it.
    pub plugin: String,
    /// The build's fingerprint.
    pub fingerprint: String,
    /// The stream it arrived on.
    pub stream: String,
    /// Its line (NDJSON) or item (JSON array) in the request.
    pub line: usize,
    /// `projector-error`, `projector-crashed` or `projector-timeout`.
    pub code: &'static str,
    /// What went wrong.
    pub error: String,
    /// The signal that killed the projector process, if one did.
    pub signal: Option<&'static str>,
    /// Cluster mode: the record's position in the shared stream.
    pub position: Option<u64>,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event (`null` if the line could not be read back).
    pub event: Value,
}

/// The dead letters of every plugin.
#[derive(Default)]
pub struct DeadLetters {
    by_plugin: BTreeMap<String, VecDeque<DeadLetter>>,
}

impl DeadLetters {
    /// Keeps `letter`, dropping the plugin's oldest past [`PER_PLUGIN`].
    pub fn keep(&mut self, letter: DeadLetter) {
        tracing::warn!(
            plugin = %letter.plugin,
            stream = %letter.stream,
            line = letter.line,
            code = letter.code,
            "dead letter: {}",
            letter.error
        );
        crate::metrics::get().dead_letters.inc();
        let list = self.by_plugin.entry(letter.plugin.clone()).or_default();
        if list.len() == PER_PLUGIN {
            list.pop_front();
        }
        list.push_back(letter);
    }

    /// Every dead letter, by plugin, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.by_plugin.values().flatten().cloned().collect()
    }
}

/// One event of a request body, as JSON (`null` if `line` is not there).
pub fn event_at(body: &crate::ingest::IngestBody, line: usize) -> Value {
    body.events()
        .find(|(position, _)| *position == line)
        .and_then(|(_, json)| serde_json::from_str(json).ok())
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(plugin: &str, line: usize) -> DeadLetter {
        DeadLetter {
            plugin: plugin.into(),
            fingerprint: "f".into(),
            stream: "s".into(),
            line,
            code: "projector-error",
            error: "e".into(),
            signal: None,
            position: None,
            at_ms: 0,
            event: Value::Null,
        }
    }

    #[test]
    fn each_plugin_keeps_its_newest_letters() {
        let mut letters = DeadLetters::default();
        for line in 0..PER_PLUGIN + 5 {
            letters.keep(letter("a", line));
        }
        letters.keep(letter("b", 1));
        let listed = letters.list();
        assert_eq!(listed.len(), PER_PLUGIN + 1);
        assert_eq!(listed[0].line, 5, "the oldest five went");
        assert_eq!(listed.last().unwrap().plugin, "b");
    }

    #[test]
    fn the_failing_event_is_read_back_from_the_body() {
        let body = crate::ingest::IngestBody::parse("{\"a\":1}\n{\"b\":2}\n".into()).unwrap();
        assert_eq!(event_at(&body, 2), serde_json::json!({"b": 2}));
        assert_eq!(event_at(&body, 3), Value::Null);
    }
}
