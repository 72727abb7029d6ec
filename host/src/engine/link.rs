//! What the engine and cluster mode's async side ([`crate::cluster`]) say
//! to each other: the records of the shared log the engine applies, what it
//! asks of the async side (markers to publish, records to fetch for a
//! reprojection), and what it tells it about consuming.
//!
//! The engine owns this vocabulary (it is the engine's interface to a
//! shared log), so the dependency goes one way: the async side imports the
//! engine, the engine never imports the async side.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::reproject::Fed;

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

/// What the engine asks of the async side.
#[derive(Debug)]
pub(crate) enum ToCluster {
    /// Publish a build marker unless the log runs that build.
    Offer(Offer),
    /// Publish a reprojection marker.
    Reproject { plugin: String },
    /// Read the ingest records of `streams` before position `upto` into
    /// `sink`, then [`Fed::End`] (or [`Fed::Failed`]).
    Fetch {
        upto: u64,
        streams: Vec<String>,
        sink: mpsc::Sender<Fed>,
    },
}

/// A build this host mapped, offered to the cluster: the consumer task
/// publishes its marker unless the stream already runs it.
#[derive(Debug)]
pub(crate) struct Offer {
    pub plugin: String,
    pub fingerprint: String,
    pub version: String,
    /// Found in the plugins directory at start (rather than dropped in
    /// later): then a marker is published only if the plugin has none yet,
    /// so a restarting host with an old file does not switch the cluster
    /// back to it.
    pub at_start: bool,
}

/// What the engine tells the async side about consuming.
#[derive(Debug, Default)]
pub(crate) struct EngineState {
    /// Why it stopped consuming (a missing build, a stuck projector).
    pub paused: Option<String>,
    /// Plugins with a staged build and no marker applied yet: their streams
    /// are not served until the marker (published at start) is read.
    pub unmarked: Vec<String>,
}

/// The engine's end of the cluster channels.
pub(crate) struct EngineLink {
    /// What the engine asks of the async side.
    pub requests: mpsc::UnboundedSender<ToCluster>,
    /// Ingest streams some loaded or staged build consumes.
    pub known_streams: Arc<RwLock<HashSet<String>>>,
    /// What the engine last said about consuming.
    pub engine: Arc<Mutex<EngineState>>,
    /// The last stream sequence the engine applied.
    pub applied: watch::Sender<u64>,
}
