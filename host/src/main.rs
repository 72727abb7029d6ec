//! The `vista` command line.
//!
//! Install with `scripts/install.sh` (or `cargo install --path host
//! --locked`), then `vista serve --plugins DIR`; see the README.
//!
//! Every error ends the process with one line on standard error, secrets
//! masked, and exit status 1; a closed standard output (`vista ... | head`)
//! ends it quietly with status 0, as for any Unix filter.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use vista_host::cli::config::{apply_config_file, check_config, config_file_argument};
use vista_host::cli::serve::{authentication, Isolation, LogFormat, ServeArgs};
use vista_host::{Config, Shared};

/// mimalloc instead of glibc malloc: the host allocates and frees small
/// objects (JSON values, frames, queue entries) on many threads at once,
/// where glibc's arenas and locking cost the most (issue 20's profile put
/// the allocator at 28% of ingest); see BENCHMARKS.md, "Performance against
/// the reference broadcaster". Plugins keep their own allocator: only
/// `abi_stable` strings, which free through their own vtable, cross the
/// boundary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        apply_config_file(&file, Cli::command)?;
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
            // Into a buffer first: the generator panics on a write error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vista", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            return Ok(());
        }
        Command::Man => {
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
        Command::Config(ConfigCommand::Check { file }) => return check_config(&file, Cli::command),
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
                    mirror_entries: args.projector_mirror_entities,
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
        writer_threads: args.writer_threads,
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
        sources: args.sources,
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
