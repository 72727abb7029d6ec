//! The `vista` command line.
//!
//! Install with `scripts/install.sh` (or `cargo install --path host
//! --locked`), then `vista serve --plugins DIR`; see the README.
//!
//! Every error ends the process with one line on standard error, secrets
//! masked, and exit status 1; a closed standard output (`vista ... | head`)
//! ends it quietly with status 0, as for any Unix filter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vista_host::{Config, Shared};

/// `vista --version`: the crate's version and the commit it was built
/// from (`unknown` outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("VISTA_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "vista",
    version = VERSION,
    about = "Plugin-hosted real-time entity streaming over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the plugins in a directory and serve WebSocket + HTTP on one port.
    Serve(Box<ServeArgs>),
    /// Plugin development helpers.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Inspect or repair a data directory (stop the host first).
    #[command(subcommand)]
    Data(DataCommand),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Post NDJSON events from a file (or `-` for stdin) in batches, with
    /// progress; stops at the first refused line, naming it.
    Ingest {
        /// The stream.
        stream: String,
        /// The NDJSON file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// The host's HTTP address.
        #[arg(long, env = "VISTA_URL", default_value = "http://127.0.0.1:8877")]
        url: String,
        /// Events per request (each request is all or nothing).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Bearer token (an ingest token or a JWT with `streams`).
        #[arg(long, env = "VISTA_TOKEN")]
        token: Option<String>,
    },
    /// Watch a view live: its rows redrawn in place, or `--json` frames.
    Tail {
        /// The view, e.g. `Token/list`.
        view: String,
        /// One key of it.
        #[arg(long)]
        key: Option<String>,
        /// The host's WebSocket address.
        #[arg(long, env = "VISTA_WS_URL", default_value = "ws://127.0.0.1:8877")]
        url: String,
        /// Print every frame as one JSON line (for scripts).
        #[arg(long)]
        json: bool,
        /// The table's columns after the key, e.g. `symbol,supply`
        /// [default: `_seq` and every top-level field].
        #[arg(long, value_delimiter = ',', conflicts_with = "json")]
        columns: Option<Vec<String>>,
        /// Subscriber token (a JWT; sent as `Authorization: Bearer`).
        #[arg(long, env = "VISTA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Mint a development token (HS256 JWT) for a host started with
    /// `--jwt-secret`; prints the token alone, for `export VISTA_TOKEN=$(...)`.
    Token {
        /// Environment variable holding the host's `--jwt-secret` (read from
        /// the environment so the secret stays out of shell history).
        #[arg(long, default_value = "VISTA_JWT_SECRET")]
        secret_env: String,
        /// View patterns the token may subscribe to, e.g. `Token/*,Game/top`
        /// [default: every view].
        #[arg(long, value_delimiter = ',')]
        views: Option<Vec<String>>,
        /// Streams it may ingest into (comma-separated).
        #[arg(long, value_delimiter = ',')]
        streams: Option<Vec<String>>,
        /// Lifetime: seconds, or a number with s, m, h or d (`90s`, `1h`).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Subject (`sub`).
        #[arg(long, default_value = "vista-cli")]
        sub: String,
        /// Also allow the admin routes (`"admin": true`).
        #[arg(long)]
        admin: bool,
        /// `aud`, when the host has --jwt-audience.
        #[arg(long, env = "VISTA_JWT_AUDIENCE")]
        audience: Option<String>,
        /// `iss`, when the host has --jwt-issuer.
        #[arg(long, env = "VISTA_JWT_ISSUER")]
        issuer: Option<String>,
    },
    /// Print a shell completion script, e.g. `vista completions bash >
    /// ~/.local/share/bash-completion/completions/vista`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `vista man > vista.1 && man ./vista.1`.
    Man,
    /// The plugin table of a running host.
    Plugins {
        /// The host's HTTP address.
        #[arg(long, env = "VISTA_URL", default_value = "http://127.0.0.1:8877")]
        url: String,
        /// Admin token (the host's --admin-token, or a JWT with `"admin": true`).
        #[arg(long, env = "VISTA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The events the host's plugins refused or crashed on, as NDJSON (one
    /// dead letter per line; its `event` can be fixed and re-ingested).
    DeadLetters {
        /// The host's HTTP address.
        #[arg(long, env = "VISTA_URL", default_value = "http://127.0.0.1:8877")]
        url: String,
        /// Admin token.
        #[arg(long, env = "VISTA_TOKEN")]
        token: Option<String>,
        /// Print only the events (ready for `vista ingest STREAM -`).
        #[arg(long)]
        events: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective `serve`
    /// settings (file, then environment, then defaults) with secrets masked.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Read every log record and the checkpoint; report the first problem
    /// with its record number (exit 1), or the log's figures (exit 0).
    Check {
        /// The data directory.
        dir: PathBuf,
    },
    /// Let redb recover the file to its last whole commit, then drop log
    /// records from the first one that cannot be read.
    Repair {
        /// The data directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate (one entity, one derived view, a unit test).
    New {
        /// Crate and plugin name, e.g. `scores`.
        name: String,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the vista-plugin-api crate [default: the one this binary was built from].
        #[arg(long)]
        api_path: Option<PathBuf>,
    },
    /// Map a plugin file exactly as the host does and print one JSON line:
    /// `{"ok":true,"name":..,"version":..}` (exit 0) or
    /// `{"ok":false,"error":..}` (exit 1). The host runs this in a child
    /// process before mapping a file itself.
    Check {
        /// The plugin file.
        file: PathBuf,
    },
    /// Print a TypeScript module for a plugin file's views: entity
    /// interfaces (from the schemas its manifest declares), the stack
    /// definition for `HyperStack.connect`, and with `--zod` zod schemas
    /// the client can validate frames with. The file is loaded as the host
    /// loads it (checked in a child process first); exit 1 when it is not
    /// a loadable plugin.
    Types {
        /// The plugin file.
        file: PathBuf,
        /// Write TypeScript (the only output so far; required).
        #[arg(long, required = true)]
        ts: bool,
        /// The WebSocket URL of the generated `stack` [default: ws://127.0.0.1:8877].
        #[arg(long)]
        url: Option<String>,
        /// Also write zod schemas and the stack's `schemas` (imports `zod`).
        #[arg(long)]
        zod: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of plugin `.so` files.
    #[arg(long, env = "VISTA_PLUGINS_DIR", default_value = "plugins.d")]
    plugins: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "VISTA_LISTEN", default_value = "127.0.0.1:8877")]
    listen: SocketAddr,
    /// Private directory plugin files are copied to before loading
    /// [default: <temp dir>/vista-plugin-cache].
    #[arg(long, env = "VISTA_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Largest accepted ingest body in bytes (larger bodies get 413).
    #[arg(long, env = "VISTA_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Bound on one client's queued live frames in bytes.
    #[arg(long, env = "VISTA_OUTBOX_BYTES", default_value_t = 8 << 20)]
    outbox_bytes: usize,
    /// Largest accepted client WebSocket message in bytes.
    #[arg(long, env = "VISTA_MAX_MESSAGE_BYTES", default_value_t = 64 << 10)]
    max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "VISTA_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    max_subscriptions: usize,
    /// Open WebSocket connections allowed (more get HTTP 503).
    #[arg(long, env = "VISTA_MAX_CONNECTIONS", default_value_t = 50_000)]
    max_connections: usize,
    /// Close clients that send nothing (no message, no pong to the server's
    /// pings) for this many seconds; 0 disables.
    #[arg(long, env = "VISTA_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    idle_timeout_secs: u64,
    /// A projector making no progress for this many milliseconds gets its
    /// request answered 503 `projector-timeout`; under process isolation
    /// its process is killed and started afresh, under thread isolation the
    /// plugin is marked stuck (its streams 503 `plugin-stuck`) until a new
    /// build loads.
    #[arg(long, env = "VISTA_PROJECTOR_TIMEOUT_MS", default_value_t = 5000)]
    projector_timeout_ms: u64,
    /// Where plugin code runs: `process` (each build's projector in a child
    /// process: a crash costs one request, never the host) or `thread`
    /// (in the host process: fastest, and a crashing plugin kills the host).
    #[arg(long, env = "VISTA_ISOLATION", value_enum, default_value_t = Isolation::Process)]
    isolation: Isolation,
    /// Process isolation: each projector process's address-space cap, in
    /// MiB; a projector allocating past it crashes (and only it).
    #[arg(long, env = "VISTA_PLUGIN_MEMORY_MB", default_value_t = 2048)]
    plugin_memory_mb: u64,
    /// Subscribes per second one connection may make on average (more get a
    /// `rate-limit-exceeded` socket issue).
    #[arg(long, env = "VISTA_SUBSCRIBE_RATE", default_value_t = 50)]
    subscribe_rate: u32,
    /// Subscribes one connection may make in a burst.
    #[arg(long, env = "VISTA_SUBSCRIBE_BURST", default_value_t = 256)]
    subscribe_burst: u32,
    /// On SIGTERM, seconds writers may flush queued frames before clients
    /// are closed regardless.
    #[arg(long, env = "VISTA_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    shutdown_grace_secs: u64,
    /// Ingest requests read and processed at once (bounds body memory).
    #[arg(long, env = "VISTA_MAX_CONCURRENT_INGESTS", default_value_t = 64)]
    max_concurrent_ingests: usize,
    /// Close connections that do not send a complete request head within
    /// this many seconds of connecting or of their previous response (so
    /// also the idle keep-alive timeout), or do not complete a WebSocket
    /// upgrade in that time; 0 disables.
    #[arg(long, env = "VISTA_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds an ingest request gets to deliver its whole body (more: 408
    /// `body-timeout`); 0 disables.
    #[arg(long, env = "VISTA_BODY_TIMEOUT_SECS", default_value_t = 30)]
    body_timeout_secs: u64,
    /// Open TCP connections allowed from one IP address (more get HTTP 429
    /// `ip-connection-limit-exceeded`); 0 means unlimited.
    #[arg(long, env = "VISTA_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    max_connections_per_ip: usize,
    /// Directory of the event log (created if missing). Ingest requests are
    /// answered only once durable there, and a restart replays it.
    #[arg(
        long,
        env = "VISTA_DATA_DIR",
        default_value = "vista-data",
        conflicts_with = "in_memory"
    )]
    data: PathBuf,
    /// Share this NATS JetStream server's stream with other hosts
    /// (`nats://HOST:PORT`): it replaces the event log as the source of
    /// truth; the data directory keeps local checkpoints only.
    #[arg(long, env = "VISTA_CLUSTER")]
    cluster: Option<String>,
    /// The JetStream stream of the cluster (created if missing; its
    /// subjects are `NAME.>`).
    #[arg(long, env = "VISTA_CLUSTER_STREAM", default_value = "VISTA", value_parser = parse_stream_name)]
    cluster_stream: String,
    /// Replicas of the cluster stream when this host creates it: needs a
    /// NATS cluster of at least that many servers; an acknowledged ingest
    /// is then stored on a majority of them.
    #[arg(long, env = "VISTA_CLUSTER_REPLICAS", default_value_t = 1)]
    cluster_replicas: usize,
    /// Keep everything in memory: a restart starts empty (`_seq` still never
    /// goes backwards: it starts from the clock).
    #[arg(long, env = "VISTA_IN_MEMORY")]
    in_memory: bool,
    /// When the log is fsynced: `always` (before a request is answered) or
    /// `every:MS` (answered once written, fsynced every MS milliseconds: a
    /// power loss can lose up to MS of acknowledged requests).
    #[arg(long, env = "VISTA_FSYNC", default_value = "always", value_parser = parse_fsync)]
    fsync: vista_host::durable::FsyncPolicy,
    /// Checkpoint the store after this many events...
    #[arg(long, env = "VISTA_CHECKPOINT_EVENTS", default_value_t = 100_000)]
    checkpoint_every_events: u64,
    /// ...or this many seconds, whichever comes first.
    #[arg(long, env = "VISTA_CHECKPOINT_SECS", default_value_t = 300)]
    checkpoint_every_secs: u64,
    /// How much of the event log to keep once a checkpoint covers it:
    /// `all` (needed to reproject a plugin from its first event),
    /// `records:N`, `age:SECS` or `bytes:N`.
    #[arg(long, env = "VISTA_RETAIN", default_value = "all")]
    retain: vista_host::durable::Retention,
    /// Subscribers need a JWT signed HS256 with this secret (`hs_token` query
    /// parameter or `Authorization: Bearer`).
    #[arg(long, env = "VISTA_JWT_SECRET", conflicts_with = "jwt_public_key")]
    jwt_secret: Option<String>,
    /// Subscribers need a JWT signed RS256 or EdDSA, verified with this PEM
    /// public key file.
    #[arg(long, env = "VISTA_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Required `aud` of subscriber tokens.
    #[arg(long, env = "VISTA_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Required `iss` of subscriber tokens.
    #[arg(long, env = "VISTA_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Ingest credential `TOKEN[:stream,stream]` (repeatable), sent as
    /// `Authorization: Bearer TOKEN`; a JWT with a `streams` claim works too.
    #[arg(
        long = "ingest-token",
        env = "VISTA_INGEST_TOKENS",
        value_delimiter = ' '
    )]
    ingest_tokens: Vec<vista_host::auth::IngestToken>,
    /// Bearer token required by the admin routes: `/plugins`, `/metrics`,
    /// `/status`, `/admin/*` (the dashboard's data) and reprojection.
    #[arg(long, env = "VISTA_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// The admin routes need a JWT with `"admin": true` (verified like
    /// subscriber tokens), also without --admin-token.
    #[arg(long, env = "VISTA_ADMIN_JWT")]
    admin_jwt: bool,
    /// Leave the admin routes open on a non-loopback address (without it,
    /// such a host needs --admin-token or --admin-jwt).
    #[arg(long, env = "VISTA_ALLOW_ANONYMOUS_ADMIN")]
    allow_anonymous_admin: bool,
    /// `Origin`s whose pages may open WebSockets (comma-separated; exact,
    /// `*.domain` or `*`); default: any.
    #[arg(long, env = "VISTA_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// A publishable key `KEY[:view,view]` (repeatable), exchanged at
    /// `POST /auth/token` for a subscriber token (needs --jwt-secret).
    #[arg(
        long = "publishable-key",
        env = "VISTA_PUBLISHABLE_KEYS",
        value_delimiter = ' '
    )]
    publishable_keys: Vec<vista_host::auth::PublishableKey>,
    /// Lifetime of tokens issued at `POST /auth/token`, in seconds.
    #[arg(long, env = "VISTA_TOKEN_TTL_SECS", default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Ingest requests per second per credential (or per address without
    /// one); more get 429 `rate-limit-exceeded` with `Retry-After`. 0: off.
    #[arg(long, env = "VISTA_INGEST_RATE", default_value_t = 0)]
    ingest_rate: u32,
    /// New WebSocket connections per second per address; more get 429
    /// `rate-limit-exceeded`. 0: off.
    #[arg(long, env = "VISTA_CONNECTION_RATE", default_value_t = 0)]
    connection_rate: u32,
    /// `Host` names WebSocket upgrades must use (comma-separated; the port
    /// is ignored); default: any.
    #[arg(long, env = "VISTA_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Serve a non-loopback address without any authentication.
    #[arg(long, env = "VISTA_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers).
    #[arg(long, env = "VISTA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Feed a live stream of demo `tokens` events (needs the tokens plugin).
    #[arg(long, env = "VISTA_DEMO_FEED")]
    demo_feed: bool,
    /// A TOML file with the same keys as these options (`max-connections =
    /// 1000`, `ingest-token = ["..."]`); options and environment variables
    /// override it.
    #[arg(long, env = "VISTA_CONFIG")]
    config: Option<PathBuf>,
}

/// `--isolation`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Isolation {
    /// Each plugin build's projector in a child process.
    Process,
    /// Projectors on threads of the host process.
    Thread,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() {
    // A projector process (started by a host, never by a person) needs
    // neither the async runtime nor the command line parser.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "__projector" {
        std::process::exit(vista_host::run_projector_process(std::path::Path::new(
            &args[2],
        )));
    }
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    let Err(err) = outcome else {
        return;
    };
    // `vista tail | head`: the reader left; nothing more to say.
    let broken_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        std::process::exit(0);
    }
    eprintln!("vista: {}", vista_host::redact::redact(&format!("{err:#}")));
    std::process::exit(1);
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

async fn run() -> anyhow::Result<()> {
    // A configuration file fills in what neither the command line nor the
    // environment sets: its keys become the options' environment variables.
    if let Some(file) = config_file_argument() {
        apply_config_file(&file)?;
    }
    let command = Cli::parse().command;
    init_logging(match &command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    });
    let args = match command {
        Command::Serve(args) => *args,
        Command::Token {
            secret_env,
            views,
            streams,
            ttl,
            sub,
            admin,
            audience,
            issuer,
        } => {
            let secret = std::env::var(&secret_env).map_err(|_| {
                anyhow::anyhow!(
                    "{secret_env} is not set: export it with the host's --jwt-secret, or name another variable with --secret-env"
                )
            })?;
            let mut signer = vista_host::auth::JwtVerifier::with_secret(&secret);
            if let Some(audience) = &audience {
                signer = signer.audience(audience);
            }
            if let Some(issuer) = &issuer {
                signer = signer.issuer(issuer);
            }
            let (token, exp) = signer
                .mint(&vista_host::auth::TokenRequest {
                    subject: sub,
                    views,
                    streams,
                    admin,
                    ttl,
                })
                .context("cannot sign the token")?;
            use std::io::Write;
            writeln!(std::io::stdout(), "{token}")?;
            eprintln!("expires at {exp} (unix seconds), in {} s", ttl.as_secs());
            return Ok(());
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: the generator panics on a write error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vista", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            return Ok(());
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            std::io::Write::write_all(&mut std::io::stdout(), &page)?;
            return Ok(());
        }
        Command::Plugin(PluginCommand::New {
            name,
            dir,
            api_path,
        }) => {
            let api_path = api_path.unwrap_or_else(vista_host::scaffold::default_api_path);
            let root = vista_host::scaffold::new_plugin(&name, &dir, &api_path)?;
            println!("created plugin crate {}", root.display());
            println!("next: cd {} && cargo test && cargo build, then copy target/debug/lib*.so into the plugins directory", root.display());
            return Ok(());
        }
        Command::Data(command) => return data_command(command),
        Command::Config(ConfigCommand::Check { file }) => return check_config(&file),
        Command::Ingest {
            stream,
            file,
            url,
            batch,
            token,
        } => {
            let (input, total): (Box<dyn std::io::BufRead>, Option<u64>) =
                if file.as_os_str() == "-" {
                    (Box::new(std::io::BufReader::new(std::io::stdin())), None)
                } else {
                    let opened = std::fs::File::open(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let size = opened.metadata().map(|m| m.len()).ok();
                    (Box::new(std::io::BufReader::new(opened)), size)
                };
            vista_host::cli::ingest(&url, &stream, input, total, batch, token.as_deref()).await?;
            return Ok(());
        }
        Command::Tail {
            view,
            key,
            url,
            json,
            columns,
            token,
        } => {
            return vista_host::cli::tail(vista_host::cli::TailOptions {
                url,
                view,
                key,
                json,
                token,
                columns,
            })
            .await
        }
        Command::Plugins { url, token } => {
            return vista_host::cli::plugins(&url, token.as_deref()).await
        }
        Command::DeadLetters { url, token, events } => {
            return vista_host::cli::dead_letters(&url, token.as_deref(), events).await
        }
        Command::Plugin(PluginCommand::Types {
            file,
            ts: _,
            url,
            zod,
        }) => {
            vista_host::set_checker(
                std::env::current_exe().context("cannot find this executable")?,
            );
            let options = vista_host::typegen::TsOptions { url, zod };
            match vista_host::typegen::plugin_types(&file, &options) {
                Ok(module) => {
                    print!("{module}");
                    return Ok(());
                }
                Err(err) => {
                    eprintln!("vista plugin types: {}: {err}", file.display());
                    std::process::exit(1);
                }
            }
        }
        Command::Plugin(PluginCommand::Check { file }) => {
            let answer = vista_host::check_answer(&file);
            println!("{}", serde_json::to_string(&answer)?);
            std::io::Write::flush(&mut std::io::stdout())?;
            std::process::exit(if answer.ok { 0 } else { 1 });
        }
    };
    let auth = authentication(&args)?;
    // Plugin files are checked in a child process (`vista plugin check`)
    // before they are mapped here: a bad file cannot take the host down.
    // Under process isolation they are never mapped here: each build's
    // projector runs in a child process (`vista __projector FILE`).
    match std::env::current_exe() {
        Ok(exe) => {
            if args.isolation == Isolation::Process {
                vista_host::set_process_isolation(vista_host::ProcessSettings {
                    exe: exe.clone(),
                    memory_mb: args.plugin_memory_mb.max(64),
                });
            }
            vista_host::set_checker(exe)
        }
        Err(err) if args.isolation == Isolation::Process => {
            anyhow::bail!("cannot find this executable to start projector processes: {err}")
        }
        Err(err) => {
            tracing::warn!(%err, "cannot find this executable; plugin files are mapped unchecked")
        }
    }
    let plugins_dir = plugins_dir(args.plugins);
    let config = Config {
        cache_dir: args
            .cache_dir
            .unwrap_or_else(|| std::env::temp_dir().join("vista-plugin-cache")),
        plugins_dir,
        max_body_bytes: args.max_body_bytes,
        outbox_bytes: args.outbox_bytes,
        max_message_bytes: args.max_message_bytes,
        max_subscriptions_per_connection: args.max_subscriptions,
        max_connections: args.max_connections,
        idle_timeout: (args.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(args.idle_timeout_secs)),
        projector_timeout: Duration::from_millis(args.projector_timeout_ms.max(1)),
        subscribe_rate: args.subscribe_rate,
        subscribe_burst: args.subscribe_burst,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        max_concurrent_ingests: args.max_concurrent_ingests,
        header_timeout: (args.header_timeout_secs > 0)
            .then(|| Duration::from_secs(args.header_timeout_secs)),
        body_timeout: (args.body_timeout_secs > 0)
            .then(|| Duration::from_secs(args.body_timeout_secs)),
        max_connections_per_ip: args.max_connections_per_ip,
        data_dir: (!args.in_memory).then_some(args.data),
        fsync: args.fsync,
        checkpoint_every_events: args.checkpoint_every_events.max(1),
        checkpoint_every: Duration::from_secs(args.checkpoint_every_secs.max(1)),
        retention: args.retain,
        cluster: args.cluster.map(|url| vista_host::cluster::ClusterConfig {
            url,
            stream: args.cluster_stream,
            replicas: args.cluster_replicas,
        }),
    };
    // A write past a file-size limit must fail with EFBIG (answered 503),
    // not kill the process with SIGXFSZ.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Every connection is a file descriptor: use the whole hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-files limit"),
    }
    tracing::info!(plugins = %config.plugins_dir.display(), "loading plugins");
    match &config.data_dir {
        Some(dir) if config.cluster.is_some() => {
            tracing::info!(data = %dir.display(), "cluster mode: local checkpoints in the data directory")
        }
        Some(dir) => tracing::info!(data = %dir.display(), "restoring state from the event log"),
        None => tracing::warn!("--in-memory: nothing is kept across restarts"),
    }
    if args.admin_jwt && auth.jwt.is_none() {
        anyhow::bail!("--admin-jwt needs --jwt-secret or --jwt-public-key to verify the tokens");
    }
    if !auth.is_enabled() {
        if args.listen.ip().is_loopback() {
            tracing::warn!("authentication is off: anyone who reaches this loopback port may subscribe, ingest and administer");
        } else if !args.allow_anonymous {
            anyhow::bail!(
                "refusing to serve {} without authentication: configure --jwt-secret or --jwt-public-key, --ingest-token and --admin-token, or pass --allow-anonymous",
                args.listen
            );
        } else {
            tracing::warn!(listen = %args.listen, "--allow-anonymous: serving a public address without authentication");
        }
    } else if !auth.admin_protected() && !args.listen.ip().is_loopback() {
        // Subscribers and ingest are protected, the admin routes are not:
        // anyone reaching the port could read every view definition and
        // start a rebuild of the whole history.
        if !args.allow_anonymous_admin {
            anyhow::bail!(
                "refusing to serve {} with the admin routes (/plugins, /metrics, /status, /admin/*, reprojection) open to anyone: add --admin-token TOKEN, or --admin-jwt to accept JWTs with \"admin\": true, or --allow-anonymous-admin to leave them open",
                args.listen
            );
        }
        tracing::warn!(listen = %args.listen, "--allow-anonymous-admin: the admin routes of a public address are open to anyone");
    }
    // The port opens once the log is replayed: a host that answers is ready.
    let shared = Shared::new(config, auth)
        .await
        .context("cannot start the host")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let _watcher = match vista_host::watch_plugins(shared.clone()) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::error!(%err, "cannot watch the plugins directory; hot reload is off");
            None
        }
    };
    // Machine-readable line tests and scripts wait for.
    println!("vista listening on {address}");
    tracing::info!(%address, "listening (ws://{address}, http://{address})");
    if args.demo_feed {
        tokio::spawn(vista_host::run_demo_feed(
            shared.clone(),
            Duration::from_millis(250),
        ));
    }
    let shutdown = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    };
    vista_host::run(listener, shared, shutdown).await;
    Ok(())
}

/// A JetStream stream name: letters, digits, `-` and `_` (NATS forbids
/// `.`, spaces and wildcards, and the name is also the subject prefix).
fn parse_stream_name(text: &str) -> Result<String, String> {
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

/// The plugins directory, created if missing (so it can be watched) and
/// made absolute: files loaded at start and paths reported by the watcher
/// must be the same paths, or a deleted file would not unload.
fn plugins_dir(dir: PathBuf) -> PathBuf {
    if !dir.exists() {
        match std::fs::create_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "created the plugins directory"),
            Err(err) => {
                tracing::error!(dir = %dir.display(), %err, "cannot create the plugins directory")
            }
        }
    }
    match std::fs::canonicalize(&dir) {
        Ok(absolute) => absolute,
        Err(err) => {
            tracing::error!(dir = %dir.display(), %err, "cannot resolve the plugins directory");
            std::path::absolute(&dir).unwrap_or(dir)
        }
    }
}

/// `--ttl`: `3600`, `90s`, `30m`, `1h` or `2d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: expected seconds or a number with s, m, h or d"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Duration::from_secs(n * scale))
        .ok_or_else(|| format!("{text:?}: expected a positive number, e.g. 90s or 1h"))
}

fn parse_fsync(text: &str) -> Result<vista_host::durable::FsyncPolicy, String> {
    use vista_host::durable::FsyncPolicy;
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

/// `vista data check|repair DIR`.
fn data_command(command: DataCommand) -> anyhow::Result<()> {
    use vista_host::durable;
    match command {
        DataCommand::Check { dir } => match durable::check(&dir) {
            Ok(stats) => {
                println!("{}", serde_json::json!({"ok": true, "log": stats}));
                Ok(())
            }
            Err(err) => {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": err.to_string()})
                );
                std::process::exit(1);
            }
        },
        DataCommand::Repair { dir } => {
            let report = durable::repair(&dir)?;
            println!("{}", serde_json::json!({"ok": true, "repaired": report}));
            Ok(())
        }
    }
}

/// The authentication settings from the command line.
fn authentication(args: &ServeArgs) -> anyhow::Result<vista_host::auth::Auth> {
    use vista_host::auth::{Auth, JwtVerifier, RateLimiter};
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

/// `--config FILE` (or `--config=FILE`, or `VISTA_CONFIG`) of a `serve`
/// command line, looked up before the command line is parsed.
fn config_file_argument() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix("--config") {
            Some("") => args.get(i + 1).map(PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(PathBuf::from),
            None => None,
        })
        .or_else(|| std::env::var_os("VISTA_CONFIG").map(PathBuf::from))
}

/// Sets the environment variable of every `serve` option the file names
/// and the environment does not already set. Unknown keys are errors.
fn apply_config_file(file: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", file.display()))?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    for (key, value) in table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| anyhow::anyhow!("{}: unknown key {key:?}", file.display()))?;
        let env = arg.get_env().ok_or_else(|| {
            anyhow::anyhow!("{}: {key:?} cannot be set from a file", file.display())
        })?;
        if std::env::var_os(env).is_some() {
            continue;
        }
        let delimiter = arg.get_value_delimiter().unwrap_or(',');
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(anyhow::anyhow!(
                "{}: {key:?} must be a string, number or boolean, not {}",
                file.display(),
                other.type_str()
            )),
        };
        let text = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(&delimiter.to_string()),
            other => scalar(other)?,
        };
        // Single-threaded at this point: nothing else reads the environment.
        std::env::set_var(env, text);
    }
    Ok(())
}

/// `vista config check FILE`.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    apply_config_file(file)?;
    let matches = Cli::command()
        .try_get_matches_from(["vista", "serve"])
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let serve = matches.subcommand_matches("serve").expect("serve");
    let mut settings = serde_json::Map::new();
    for arg in Cli::command()
        .find_subcommand("serve")
        .expect("serve")
        .get_arguments()
    {
        let id = arg.get_id().as_str();
        let Some(values) = serve.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let secret = ["secret", "token", "key"]
            .iter()
            .any(|word| id.contains(word))
            && !id.ends_with("_ttl_secs")
            && id != "jwt_public_key";
        let shown: Vec<String> = values
            .iter()
            .map(|v| if secret { mask(v) } else { v.clone() })
            .collect();
        let name = arg.get_long().unwrap_or(id).to_owned();
        settings.insert(
            name,
            if shown.len() == 1 {
                serde_json::Value::String(shown[0].clone())
            } else {
                serde_json::json!(shown)
            },
        );
    }
    println!("{}", serde_json::to_string_pretty(&settings)?);
    Ok(())
}

/// A secret as its first two characters and stars.
fn mask(secret: &str) -> String {
    let keep: String = secret.chars().take(2).collect();
    format!("{keep}***")
}
