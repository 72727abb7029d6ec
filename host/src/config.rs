//! The settings of a running host, in one struct: what `vista serve`'s
//! flags, `VISTA_*` variables and configuration file come down to
//! ([`crate::cli::serve`] fills it in), and what every part of the host
//! reads. Apart from [`crate::shared`] so the modules that only read
//! settings (the WebSocket close handling, limits) do not depend on the
//! engine and the log that `Shared` starts.

use std::path::PathBuf;
use std::time::Duration;

use crate::{cluster, durable, sources};

/// Settings of a running host.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory scanned for plugin files.
    pub plugins_dir: PathBuf,
    /// Private directory plugin files are copied to before being mapped.
    pub cache_dir: PathBuf,
    /// Largest accepted ingest body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Bound on a client's queued live frames, in bytes.
    pub outbox_bytes: usize,
    /// Largest accepted client message, in bytes.
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Open WebSocket connections allowed; more are refused with 503.
    pub max_connections: usize,
    /// Clients silent (no message, no pong) for longer are closed; quiet
    /// ones are pinged first. `None` disables the check.
    pub idle_timeout: Option<Duration>,
    /// A projector making no progress for this long is declared stuck.
    pub projector_timeout: Duration,
    /// Subscribes per second one connection may make, on average.
    pub subscribe_rate: u32,
    /// Subscribes one connection may make at once.
    pub subscribe_burst: u32,
    /// On shutdown, how long writers may flush before clients are closed.
    pub shutdown_grace: Duration,
    /// Ingest requests read and processed at once; more wait their turn.
    pub max_concurrent_ingests: usize,
    /// Where the event log lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// When the log is fsynced.
    pub fsync: durable::FsyncPolicy,
    /// Checkpoint the store after this many events...
    pub checkpoint_every_events: u64,
    /// ...or this long, whichever comes first.
    pub checkpoint_every: Duration,
    /// How much of the log is kept once checkpointed.
    pub retention: durable::Retention,
    /// Time a connection gets to send a complete request head, counted from
    /// accept and, on a keep-alive connection, from the previous response
    /// (so it is also the idle keep-alive timeout); also the time a
    /// WebSocket upgrade gets to complete. `None` disables.
    pub header_timeout: Option<Duration>,
    /// Time an ingest request gets to deliver its whole body (408 after).
    pub body_timeout: Option<Duration>,
    /// Threads of the socket writers' runtime (see [`crate::ws`]); 0: half
    /// the cores, at least one.
    pub writer_threads: usize,
    /// Open TCP connections allowed from one IP address (0: unlimited);
    /// more are answered 429 `ip-connection-limit-exceeded`.
    pub max_connections_per_ip: usize,
    /// Share a NATS JetStream stream with other hosts instead of keeping an
    /// event log of its own (`data_dir` then keeps only checkpoints).
    pub cluster: Option<cluster::ClusterConfig>,
    /// Change streams turned into ingest requests (`--source NAME=URL`).
    pub sources: Vec<sources::SourceSpec>,
}
