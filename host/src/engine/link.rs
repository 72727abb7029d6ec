//! The records a log that orders them hands the engine
//! (`Command::Record`), as the engine applies them: ingest requests, build
//! markers, reprojection markers, and the `_seq`s they get.
//!
//! The engine owns this vocabulary (with [`super::log::Log`] it is the
//! engine's interface to such a log), so the dependency goes one way: the
//! log's async side ([`crate::cluster`]) imports the engine, the engine
//! never imports it.

use bytes::Bytes;

/// `_seq` of a record's first mutation is its stream sequence shifted by
/// this many bits; a request may produce at most `2^24 - 1` mutations.
pub const SEQ_SHIFT: u32 = 24;

/// One record of the shared log, as the engine applies it.
#[derive(Debug)]
pub struct LogEntry {
    /// The stream sequence.
    pub seq: u64,
    /// What it holds.
    pub kind: EntryKind,
}

/// What a record of the shared log holds.
#[derive(Debug)]
pub enum EntryKind {
    /// An ingest request.
    Ingest {
        /// The ingest stream.
        stream: String,
        /// The body exactly as received.
        body: Bytes,
        /// The id its receiving host waits on.
        request: Option<String>,
    },
    /// Plugin `plugin` runs build `fingerprint` from here on.
    Build {
        /// The plugin.
        plugin: String,
        /// The build's fingerprint.
        fingerprint: String,
        /// Its version, for messages.
        version: String,
    },
    /// Rebuild `plugin`'s entities from the log before this record.
    Reproject {
        /// The plugin.
        plugin: String,
    },
    /// Not a record this version understands; applied as nothing on every
    /// host (logged).
    Unknown(String),
}
