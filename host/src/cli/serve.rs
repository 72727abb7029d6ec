//! The options of `vista serve`, the parsers of their values, and the
//! authentication settings the binary makes of them before starting a host.
//!
//! They live in the library rather than in the `vista` binary so that
//! `main.rs` keeps to its subcommands and their dispatch, and so the
//! options sit next to the settings they fill in ([`crate::config::Config`],
//! [`crate::auth::Auth`], [`crate::durable::FsyncPolicy`]); the
//! configuration file ([`super::config`]) takes its keys from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The options of `vista serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Directory of plugin `.so` files.
    #[arg(long, env = "VISTA_PLUGINS_DIR", default_value = "plugins.d")]
    pub plugins: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "VISTA_LISTEN", default_value = "127.0.0.1:8877")]
    pub listen: SocketAddr,
    /// Private directory plugin files are copied to before loading
    /// [default: <temp dir>/vista-plugin-cache].
    #[arg(long, env = "VISTA_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Largest accepted ingest body in bytes (larger bodies get 413).
    #[arg(long, env = "VISTA_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Bound on one client's queued live frames in bytes.
    #[arg(long, env = "VISTA_OUTBOX_BYTES", default_value_t = 8 << 20)]
    pub outbox_bytes: usize,
    /// Largest accepted client WebSocket message in bytes.
    #[arg(long, env = "VISTA_MAX_MESSAGE_BYTES", default_value_t = 64 << 10)]
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "VISTA_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,
    /// Open WebSocket connections allowed (more get HTTP 503).
    #[arg(long, env = "VISTA_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Close clients that send nothing (no message, no pong to the server's
    /// pings) for this many seconds; 0 disables.
    #[arg(long, env = "VISTA_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    pub idle_timeout_secs: u64,
    /// A projector making no progress for this many milliseconds gets its
    /// request answered 503 `projector-timeout`; under process isolation
    /// its process is killed and started afresh, under thread isolation the
    /// plugin is marked stuck (its streams 503 `plugin-stuck`) until a new
    /// build loads.
    #[arg(long, env = "VISTA_PROJECTOR_TIMEOUT_MS", default_value_t = 5000)]
    pub projector_timeout_ms: u64,
    /// Where plugin code runs: `process` (each build's projector in a child
    /// process: a crash costs one request, never the host) or `thread`
    /// (in the host process: fastest, and a crashing plugin kills the host).
    #[arg(long, env = "VISTA_ISOLATION", value_enum, default_value_t = Isolation::Process)]
    pub isolation: Isolation,
    /// Process isolation: each projector process's address-space cap, in
    /// MiB; a projector allocating past it crashes (and only it).
    #[arg(long, env = "VISTA_PLUGIN_MEMORY_MB", default_value_t = 2048)]
    pub plugin_memory_mb: u64,
    /// Process isolation: how many of its plugin's entities each projector
    /// process keeps to read without asking the host (the rest stay in
    /// the host only; reading one costs a round trip).
    #[arg(long, env = "VISTA_PROJECTOR_MIRROR_ENTITIES", default_value_t = crate::projector::mirror::DEFAULT_ENTRIES)]
    pub projector_mirror_entities: usize,
    /// Subscribes per second one connection may make on average (more get a
    /// `rate-limit-exceeded` socket issue).
    #[arg(long, env = "VISTA_SUBSCRIBE_RATE", default_value_t = 50)]
    pub subscribe_rate: u32,
    /// Subscribes one connection may make in a burst.
    #[arg(long, env = "VISTA_SUBSCRIBE_BURST", default_value_t = 256)]
    pub subscribe_burst: u32,
    /// On SIGTERM, seconds writers may flush queued frames before clients
    /// are closed regardless.
    #[arg(long, env = "VISTA_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,
    /// Ingest requests read and processed at once (bounds body memory).
    #[arg(long, env = "VISTA_MAX_CONCURRENT_INGESTS", default_value_t = 64)]
    pub max_concurrent_ingests: usize,
    /// Close connections that do not send a complete request head within
    /// this many seconds of connecting or of their previous response (so
    /// also the idle keep-alive timeout), or do not complete a WebSocket
    /// upgrade in that time; 0 disables.
    #[arg(long, env = "VISTA_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds an ingest request gets to deliver its whole body (more: 408
    /// `body-timeout`); 0 disables.
    #[arg(long, env = "VISTA_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Threads that write to client sockets (fan-out), apart from those
    /// serving HTTP and reading sockets; 0: half the cores, at least one.
    #[arg(long, env = "VISTA_WRITER_THREADS", default_value_t = 0)]
    pub writer_threads: usize,
    /// Open TCP connections allowed from one IP address (more get HTTP 429
    /// `ip-connection-limit-exceeded`); 0 means unlimited.
    #[arg(long, env = "VISTA_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,
    /// Directory of the event log (created if missing). Ingest requests are
    /// answered only once durable there, and a restart replays it.
    #[arg(
        long,
        env = "VISTA_DATA_DIR",
        default_value = "vista-data",
        conflicts_with = "in_memory"
    )]
    pub data: PathBuf,
    /// Share this NATS JetStream server's stream with other hosts
    /// (`nats://HOST:PORT`): it replaces the event log as the source of
    /// truth; the data directory keeps local checkpoints only.
    #[arg(long, env = "VISTA_CLUSTER")]
    pub cluster: Option<String>,
    /// The JetStream stream of the cluster (created if missing; its
    /// subjects are `NAME.>`).
    #[arg(long, env = "VISTA_CLUSTER_STREAM", default_value = "VISTA", value_parser = parse_stream_name)]
    pub cluster_stream: String,
    /// Replicas of the cluster stream when this host creates it: needs a
    /// NATS cluster of at least that many servers; an acknowledged ingest
    /// is then stored on a majority of them.
    #[arg(long, env = "VISTA_CLUSTER_REPLICAS", default_value_t = 1)]
    pub cluster_replicas: usize,
    /// Feed the ingest stream NAME from a change stream: `NAME=postgres://USER@HOST:PORT/DB?publication=P`
    /// (logical replication: an initial snapshot, then every committed
    /// transaction as one request) or `NAME=nats://HOST:PORT?stream=S` (a
    /// JetStream stream, one message per event). Repeatable; in a
    /// configuration file, `[[source]]` tables with `name` and `url`.
    #[arg(long = "source", env = "VISTA_SOURCES", value_delimiter = ' ')]
    pub sources: Vec<crate::sources::SourceSpec>,
    /// Keep everything in memory: a restart starts empty (`_seq` still never
    /// goes backwards: it starts from the clock).
    #[arg(long, env = "VISTA_IN_MEMORY")]
    pub in_memory: bool,
    /// When the log is fsynced: `always` (before a request is answered) or
    /// `every:MS` (answered once written, fsynced every MS milliseconds: a
    /// power loss can lose up to MS of acknowledged requests).
    #[arg(long, env = "VISTA_FSYNC", default_value = "always", value_parser = parse_fsync)]
    pub fsync: crate::durable::FsyncPolicy,
    /// Checkpoint the store after this many events...
    #[arg(long, env = "VISTA_CHECKPOINT_EVENTS", default_value_t = 100_000)]
    pub checkpoint_every_events: u64,
    /// ...or this many seconds, whichever comes first.
    #[arg(long, env = "VISTA_CHECKPOINT_SECS", default_value_t = 300)]
    pub checkpoint_every_secs: u64,
    /// How much of the event log to keep once a checkpoint covers it:
    /// `all` (needed to reproject a plugin from its first event),
    /// `records:N`, `age:SECS` or `bytes:N`.
    #[arg(long, env = "VISTA_RETAIN", default_value = "all")]
    pub retain: crate::durable::Retention,
    /// Subscribers need a JWT signed HS256 with this secret (`hs_token` query
    /// parameter or `Authorization: Bearer`).
    #[arg(long, env = "VISTA_JWT_SECRET", conflicts_with = "jwt_public_key")]
    pub jwt_secret: Option<String>,
    /// Subscribers need a JWT signed RS256 or EdDSA, verified with this PEM
    /// public key file.
    #[arg(long, env = "VISTA_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `aud` of subscriber tokens.
    #[arg(long, env = "VISTA_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` of subscriber tokens.
    #[arg(long, env = "VISTA_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Ingest credential `TOKEN[:stream,stream]` (repeatable), sent as
    /// `Authorization: Bearer TOKEN`; a JWT with a `streams` claim works too.
    #[arg(
        long = "ingest-token",
        env = "VISTA_INGEST_TOKENS",
        value_delimiter = ' '
    )]
    pub ingest_tokens: Vec<crate::auth::IngestToken>,
    /// Bearer token required by the admin routes: `/plugins`, `/metrics`,
    /// `/status`, `/admin/*` (the dashboard's data) and reprojection.
    #[arg(long, env = "VISTA_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// The admin routes need a JWT with `"admin": true` (verified like
    /// subscriber tokens), also without --admin-token.
    #[arg(long, env = "VISTA_ADMIN_JWT")]
    pub admin_jwt: bool,
    /// Leave the admin routes open on a non-loopback address (without it,
    /// such a host needs --admin-token or --admin-jwt).
    #[arg(long, env = "VISTA_ALLOW_ANONYMOUS_ADMIN")]
    pub allow_anonymous_admin: bool,
    /// `Origin`s whose pages may open WebSockets (comma-separated; exact,
    /// `*.domain` or `*`); default: any.
    #[arg(long, env = "VISTA_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// A publishable key `KEY[:view,view]` (repeatable), exchanged at
    /// `POST /auth/token` for a subscriber token (needs --jwt-secret).
    #[arg(
        long = "publishable-key",
        env = "VISTA_PUBLISHABLE_KEYS",
        value_delimiter = ' '
    )]
    pub publishable_keys: Vec<crate::auth::PublishableKey>,
    /// Lifetime of tokens issued at `POST /auth/token`, in seconds.
    #[arg(long, env = "VISTA_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Ingest requests per second per credential (or per address without
    /// one); more get 429 `rate-limit-exceeded` with `Retry-After`. 0: off.
    #[arg(long, env = "VISTA_INGEST_RATE", default_value_t = 0)]
    pub ingest_rate: u32,
    /// New WebSocket connections per second per address; more get 429
    /// `rate-limit-exceeded`. 0: off.
    #[arg(long, env = "VISTA_CONNECTION_RATE", default_value_t = 0)]
    pub connection_rate: u32,
    /// `Host` names WebSocket upgrades must use (comma-separated; the port
    /// is ignored); default: any.
    #[arg(long, env = "VISTA_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Serve a non-loopback address without any authentication.
    #[arg(long, env = "VISTA_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers).
    #[arg(long, env = "VISTA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Feed a live stream of demo `tokens` events (needs the tokens plugin).
    #[arg(long, env = "VISTA_DEMO_FEED")]
    pub demo_feed: bool,
    /// A TOML file with the same keys as these options (`max-connections =
    /// 1000`, `ingest-token = ["..."]`); options and environment variables
    /// override it.
    #[arg(long, env = "VISTA_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `--isolation`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Each plugin build's projector in a child process.
    Process,
    /// Projectors on threads of the host process.
    Thread,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A JetStream stream name: letters, digits, `-` and `_` (NATS forbids
/// `.`, spaces and wildcards, and the name is also the subject prefix).
pub fn parse_stream_name(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?}: a stream name is letters, digits, '-' and '_'"
        ))
    }
}

/// `--fsync`: `always` or `every:MS`.
pub fn parse_fsync(text: &str) -> Result<crate::durable::FsyncPolicy, String> {
    use crate::durable::FsyncPolicy;
    match text {
        "always" => Ok(FsyncPolicy::Always),
        other => other
            .strip_prefix("every:")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| FsyncPolicy::Every(Duration::from_millis(ms)))
            .ok_or_else(|| format!("expected `always` or `every:MS`, got {other:?}")),
    }
}

/// The authentication settings from the command line.
pub fn authentication(args: &ServeArgs) -> anyhow::Result<crate::auth::Auth> {
    use crate::auth::{Auth, JwtVerifier, RateLimiter};
    let mut jwt = match (&args.jwt_secret, &args.jwt_public_key) {
        (Some(secret), _) => Some(JwtVerifier::with_secret(secret)),
        (None, Some(file)) => Some(JwtVerifier::with_public_key(file).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    if let Some(audience) = &args.jwt_audience {
        jwt = jwt.map(|j| j.audience(audience));
    }
    if let Some(issuer) = &args.jwt_issuer {
        jwt = jwt.map(|j| j.issuer(issuer));
    }
    Ok(Auth {
        jwt,
        ingest_tokens: args.ingest_tokens.clone(),
        admin_token: args.admin_token.clone(),
        admin_jwt: args.admin_jwt,
        allowed_origins: args.allowed_origins.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
        publishable_keys: args.publishable_keys.clone(),
        token_ttl: std::time::Duration::from_secs(args.token_ttl_secs.max(1)),
        ingest_rate: (args.ingest_rate > 0).then(|| RateLimiter::new(args.ingest_rate)),
        connection_rate: (args.connection_rate > 0).then(|| RateLimiter::new(args.connection_rate)),
    })
}
