//! The Vista host: loads projector plugins, ingests events through them
//! into a host-owned entity store, and streams views of that store to
//! WebSocket clients speaking the HyperStack protocol.
//!
//! # Layout
//!
//! The HTTP wing goes one way: [`accept`] -> [`server`] -> [`ws`].
//!
//! - [`accept`]: the listening port: accepting, the header timeout, the
//!   per-IP cap, rate-limited accept errors.
//! - [`server`]: the one route table: WebSocket upgrades and the HTTP API
//!   (`/ingest/{stream}`, `/plugins`, `/healthz`, `/metrics`).
//! - [`http`]: response shapes every route answers with, and what accept
//!   attaches to a request (peer address, the per-IP slot).
//! - [`dashboard`]: the live dashboard page at `/` (assets compiled in)
//!   and the admin endpoints it polls.
//! - [`ws`]: one WebSocket client: reading its messages, writing its
//!   outbox, its close codes and lingering close.
//! - [`cli`]: `vista ingest`, `vista tail` and `vista plugins`, clients
//!   of a running host; the `vista serve` options and configuration file.
//! - [`redact`]: masking tokens and passwords in what is printed or logged.
//! - [`auth`]: subscriber tokens (JWT), ingest and admin credentials,
//!   origins, hosts and rate limits.
//! - [`protocol`]: parsing client messages (both message forms).
//! - [`engine`]: the single owner of plugins, store, views and outboxes,
//!   on its own thread, reached through commands.
//! - [`projector`]: running a plugin build's projector, behind one
//!   interface: in a child process of its own (the default: a crash costs
//!   one request) or on a thread; the overlay a request's reads go through.
//! - [`dead_letters`]: the events plugins refused or crashed on, kept for
//!   an operator to fix and re-ingest.
//! - [`supervise`]: a panic on the engine or the log writer fails the
//!   process loudly instead of leaving it half alive.
//! - [`ingest`]: splitting an ingest body into events.
//! - [`durable`]: the event log (redb), its writer thread and checkpoints.
//! - [`memory`]: busy threads give freed memory back once idle.
//! - [`cluster`]: scale-out: several hosts sharing a NATS JetStream stream
//!   as their log (publishing, consuming in order, build markers), and that
//!   stream as the engine's log (`JetStreamLog`).
//! - [`reproject`]: rebuilding a plugin's entities from the log through a
//!   new build, in the background, then swapping.
//! - [`plugins`]: loading `.so` files through the ABI-stable contract, each
//!   checked first in a child process (`vista plugin check`), whose answer
//!   is all the host learns of a build it runs in projector processes.
//! - [`store`]: entities and `_seq` stamping.
//! - [`ids`]: the identifiers with a wire form (`_seq`, view ids, modes,
//!   plugin names), each formatted and parsed there only.
//! - [`views`]: base and derived views, windows, and the frames a change produces.
//! - [`filters`]: per-subscription `filters` (dot path -> value), parsed and
//!   made into the key filtered views are shared by.
//! - [`frame`]: encoding frames once (JSON, safe integers, gzip).
//! - [`outbox`]: the bounded per-connection queue between engine and socket.
//! - [`vocab`]: the shared words: connection ids, subscribe requests, modes, ops.
//! - [`watcher`]: hot reload: watching the plugins directory.
//! - [`scaffold`]: `vista plugin new`.
//! - [`typegen`]: `vista plugin types`: a TypeScript module (entity
//!   interfaces from the manifest's schemas, the stack definition, zod).
//! - [`demo`]: the demo feed behind `vista serve --demo-feed`.
//! - [`sources`]: live views over PostgreSQL (logical replication) and NATS
//!   JetStream streams (`--source`), each position logged with the events.
//! - [`shared`]: what every task shares, and `Shared::new`, which picks the
//!   log and starts the engine; [`config`]: the host's settings.
//! - [`codes`]: every HTTP error code, socket issue and close reason.
//! - [`metrics`]: every metric, declared once, handles held.
//! - [`shutdown`]: the one stop signal and the work it waits for.
//!
//! The crate is a facade: [`Config`], [`Shared`], [`run`] and a few
//! re-exports serve the `vista` binary; `auth`, `cluster`, `durable`,
//! `filters`, `ids`, `store`, `views`, `frame`, `scaffold` and `typegen` are public
//! for the binary's subcommands, the view benchmark and the model tests;
//! everything else is `pub(crate)`.
//!
//! [`run`] (in [`accept`]) takes an already-bound listener, so tests bind port 0.

// The public face: what the `vista` binary, the view benchmark and the
// model test use. Everything else is the host's own business.
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod durable;
pub mod entity;
pub mod filters;
pub mod frame;
pub mod ids;
pub mod redact;
pub mod scaffold;
pub mod store;
pub mod typegen;
pub mod views;

pub(crate) mod accept;
pub(crate) mod codes;
pub(crate) mod config;
pub(crate) mod dashboard;
pub mod dead_letters;
pub(crate) mod demo;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod ingest;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod plugins;
pub(crate) mod projector;
pub(crate) mod protocol;
pub(crate) mod reproject;
pub(crate) mod server;
pub(crate) mod shared;
pub(crate) mod shutdown;
pub mod sources;
pub mod supervise;
pub(crate) mod vocab;
pub(crate) mod watcher;
pub(crate) mod ws;

pub use accept::run;
pub use config::Config;
pub use demo::run as run_demo_feed;
pub use plugins::{check_answer, set_checker, CheckAnswer};
pub use plugins::{set_process_isolation, ProcessSettings};
pub use projector::child::run as run_projector_process;
pub use shared::{ConnectionSlot, Shared, StartError};
pub use watcher::{watch as watch_plugins, PluginWatcher};
