//! `--isolation process` (the default): each plugin build's projector in a
//! child process of its own, supervised by the host.
//!
//! Why a process: it is the one boundary plugin code cannot cross. A
//! projector that aborts, overflows its stack, writes through a null
//! pointer or allocates past `--plugin-memory-mb` (the child's
//! `RLIMIT_AS`) kills its child, not the host; one that spins is killed
//! with SIGKILL, which no thread can be. The host keeps the store, the
//! views and every connection; the child keeps only what it needs to
//! project fast (see [`super::child`] for its mirror).
//!
//! Per child the host runs two small threads: a *writer* for what does not
//! fit in the child's stdin pipe (the engine writes a job itself while the
//! pipe has room and never blocks on a full one: [`super::stdin`]) and a
//! *reader* that owns its stdout and the `Child` itself. The reader answers
//! the child's reads of other plugins' entities from the shared store, hands
//! each answer to the engine, and, when the pipe ends, reaps the child and
//! reports the crash: the request being projected fails at the event the
//! shared progress counter points to ([`super::wire::SharedCounter`]),
//! with the signal. The engine then starts a fresh child
//! ([`Projector::restart`]); a child retired on purpose (stuck, restarted,
//! unloaded) is reaped silently.

use std::io::{BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use vista_plugin_api::Mutation;

use super::child;
use super::stdin::{self, InputSender};
use super::wire::{
    self, encode, encode_parts, key_hash, read_frame, Found, FromChild, Row, SharedCounter, ToChild,
};
use super::{
    AfterStuck, Crash, ProjectFailure, ProjectJob, Projected, Projector, Settled, SharedStore,
};
use crate::ingest::IngestBody;
use crate::plugins::{ChildBuild, Code, PluginLibrary, ProcessSettings};
use crate::vocab::FastSet;

/// A started child and its ends of the pipes.
struct Spawned {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    progress: Arc<SharedCounter>,
}

fn spawn(copy: &Path, settings: &ProcessSettings) -> std::io::Result<Spawned> {
    let progress = Arc::new(SharedCounter::new()?);
    let progress_fd = progress.raw_fd();
    let limit = settings.memory_mb.saturating_mul(1 << 20);
    let mut command = Command::new(&settings.exe);
    command
        .arg("__projector")
        .arg(copy)
        .env(
            child::MIRROR_ENTRIES_ENV,
            settings.mirror_entries.to_string(),
        )
        .env(
            "GLIBC_TUNABLES",
            plugin_malloc_tunables(std::env::var("GLIBC_TUNABLES").ok()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(progress_fd, wire::PROGRESS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A group of its own: a Ctrl-C or a signal to the host's group
            // is the host's to handle (its shutdown), not a crash of every
            // projector. And it dies with the thread that started it (the
            // engine's, which lives as long as the host; a reprojection's,
            // which is done with it), so a host killed by SIGKILL leaves
            // no projector behind, not even a spinning one.
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let cap = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    Ok(Spawned {
        child,
        stdin,
        stdout,
        progress,
    })
}

/// The glibc malloc settings a projector process starts with: the host's
/// own code allocates with mimalloc, but a plugin (a `cdylib` with its own
/// global allocator) allocates with the system's `malloc`, a few dozen
/// small blocks per event, all freed before the next one. glibc keeps 7
/// freed blocks of a size per thread for reuse (`tcache_count`); past
/// that, blocks go through its slower bins. With 256, the `tokens`
/// plugin's cost per `token_created` event fell from 840-890 ns to 720-750
/// (BENCHMARKS.md, "Eighth session"). Tunables the host was started with
/// are passed on after this one, so a user's own setting of it wins.
fn plugin_malloc_tunables(theirs: Option<String>) -> String {
    const OURS: &str = "glibc.malloc.tcache_count=256";
    match theirs {
        Some(theirs) if !theirs.is_empty() => format!("{OURS}:{theirs}"),
        _ => OURS.to_owned(),
    }
}

/// The request a child is projecting, to name the event if it dies.
struct Current {
    ticket: u64,
    body: Arc<IngestBody>,
    progress_at_start: u64,
}

/// What the engine side and the reader thread of one child share.
#[derive(Default)]
struct ChildState {
    current: Option<Current>,
    /// Reaped: its pid may belong to another process now.
    exited: bool,
    /// Killed or let go on purpose: its end is no crash.
    retired: bool,
}

/// One running child.
struct Running {
    pid: u32,
    to_child: InputSender,
    progress: Arc<SharedCounter>,
    state: Arc<Mutex<ChildState>>,
}

impl Running {
    /// Kills the child (if it still runs) and lets its threads end quietly.
    fn retire(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.retired = true;
        if !state.exited {
            // SAFETY: the child is not reaped (`exited` is set under this
            // lock after reaping), so the pid is still ours.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }

    /// Lets the child answer the request it is projecting (its build was
    /// swapped out or unloaded under it: the engine still waits for that
    /// answer, as it would from a projector thread), then ends it: its
    /// stdin is closed once it has no request, and it is killed if it
    /// still runs after [`RETIRE_GRACE`].
    fn retire_after_current(self) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.retired = true;
            if state.current.is_none() {
                self.to_child.close();
            }
        }
        let _ = std::thread::Builder::new()
            .name("retire-projector".into())
            .spawn(move || {
                std::thread::sleep(RETIRE_GRACE);
                self.retire();
            });
    }
}

/// How long a swapped-out child may take to answer its last request.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer callback, shared by every reader thread of one projector.
type Done = Arc<dyn Fn(Projected) + Send + Sync>;

/// One plugin build's projector, run in a child process.
pub struct ProcessProjector {
    lib: Arc<PluginLibrary>,
    store: SharedStore,
    done: Done,
    running: Option<Running>,
    /// The fate of the last request, told to the child with the next one.
    settled: Option<(u64, bool)>,
    /// The last request submitted, and whether the child can take it back.
    last_job: Option<(u64, bool)>,
}

impl ProcessProjector {
    /// Starts the build's child and loads its mirror from `store`.
    pub fn start(
        lib: Arc<PluginLibrary>,
        store: SharedStore,
        done: impl Fn(Projected) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let mut projector = Self {
            lib,
            store,
            done: Arc::new(done),
            running: None,
            settled: None,
            last_job: None,
        };
        projector.restart(&[])?;
        Ok(projector)
    }

    fn build(&self) -> &ChildBuild {
        match &self.lib.code {
            Code::Child(build) => build,
            Code::Mapped(_) => unreachable!("a process projector of a mapped build"),
        }
    }

    /// Starts the threads of a spawned child and sends it its mirror.
    fn run(&mut self, spawned: Spawned, pending: &[Mutation]) -> std::io::Result<()> {
        let Spawned {
            mut child,
            stdin,
            stdout,
            progress,
        } = spawned;
        let pid = child.id();
        let state = Arc::new(Mutex::new(ChildState::default()));
        let name = self.lib.manifest.name.clone();
        let to_child = match stdin::start(stdin, format!("to-projector-{name}")) {
            Ok(to_child) => to_child,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        };
        let reader = Reader {
            plugin: name.clone(),
            store: self.store.clone(),
            to_child: to_child.clone(),
            progress: progress.clone(),
            state: state.clone(),
            done: self.done.clone(),
        };
        let spawned_reader = std::thread::Builder::new()
            .name(format!("from-projector-{name}"))
            .spawn(move || reader.run(&mut child, stdout));
        if spawned_reader.is_err() {
            tracing::error!(plugin = %name, "cannot start the threads of a projector process");
        }
        to_child.send(&self.load_message(pending));
        self.running = Some(Running {
            pid,
            to_child,
            progress,
            state,
        });
        Ok(())
    }

    /// What the child's mirror starts from: the keys of the plugin's
    /// entities, the entities `pending` touches, and `pending`.
    fn load_message(&self, pending: &[Mutation]) -> Vec<u8> {
        let mut hashes = Vec::new();
        let mut taken = Vec::new();
        {
            let store = self.store.read().unwrap_or_else(|e| e.into_inner());
            for entity in &self.lib.manifest.entities {
                for (key, _) in store.table(&entity.name) {
                    hashes.extend_from_slice(&key_hash(&entity.name, key).to_le_bytes());
                }
            }
            let mut touched = FastSet::default();
            for mutation in pending {
                let (entity, key) = (&mutation.entity, &mutation.key);
                if touched.insert((entity, key)) {
                    if let Some(value) = store.get(entity, key) {
                        let hidden = store.hidden(entity, key).cloned();
                        taken.push((entity.clone(), key.clone(), value.clone(), hidden));
                    }
                }
            }
        }
        // Encoded outside the lock: only `Arc`s were cloned under it.
        let rows = taken
            .into_iter()
            .map(|(entity, key, value, hidden)| Row {
                entity,
                key,
                value,
                hidden: hidden.map(|h| (*h).clone()),
            })
            .collect();
        encode(
            &ToChild::Load {
                rows,
                pending: pending.to_vec(),
            },
            &hashes,
        )
    }
}

impl Drop for ProcessProjector {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.retire_after_current();
        }
    }
}

impl Projector for ProcessProjector {
    fn submit(&mut self, job: ProjectJob) -> bool {
        let settle = self.settled.take();
        self.last_job = Some((job.ticket, job.undoable));
        let Some(running) = &self.running else {
            return false;
        };
        running
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current = Some(Current {
            ticket: job.ticket,
            body: job.body.clone(),
            progress_at_start: running.progress.load(),
        });
        let table = job.body.table();
        let frame = encode_parts(
            &ToChild::Job {
                ticket: job.ticket,
                stream: job.stream.to_string(),
                settle,
                undoable: job.undoable,
                unapplied: job.unapplied,
                table_at: table.as_ref().map(|_| job.body.raw().len()),
            },
            &[job.body.raw(), table.as_deref().unwrap_or_default()],
        );
        running.to_child.send(&frame)
    }

    fn settle(&mut self, ticket: u64, applied: bool) -> Settled {
        self.settled = Some((ticket, applied));
        if !applied && self.last_job == Some((ticket, false)) {
            // The child folded it in and kept no undo: a fresh child (the
            // engine restarts it before the next request) loads the truth.
            return Settled::StartAfresh;
        }
        Settled::InStep
    }

    fn needs_pending(&self) -> bool {
        false
    }

    fn progress(&self) -> u64 {
        self.running.as_ref().map_or(0, |r| r.progress.load())
    }

    fn stuck(&mut self, pending: &[Mutation]) -> AfterStuck {
        match self.restart(pending) {
            Ok(()) => AfterStuck::Restarted,
            Err(err) => {
                tracing::error!(plugin = %self.lib.manifest.name, %err, "cannot restart a stuck projector process");
                AfterStuck::Abandoned
            }
        }
    }

    fn restart(&mut self, pending: &[Mutation]) -> std::io::Result<()> {
        if let Some(old) = self.running.take() {
            old.retire();
        }
        // The new child's mirror is loaded as the host has it now.
        self.settled = None;
        self.last_job = None;
        let spawned = spawn(&self.build().copy, &self.build().settings)?;
        self.run(spawned, pending)
    }

    fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }
}

/// The host side of a child's stdout.
struct Reader {
    plugin: String,
    store: SharedStore,
    to_child: InputSender,
    progress: Arc<SharedCounter>,
    state: Arc<Mutex<ChildState>>,
    done: Done,
}

impl Reader {
    fn run(self, child: &mut Child, mut stdout: impl Read) {
        let mut hello_pending = true;
        let mut refusal = None;
        // The parts of the request being projected, read ahead of its Done.
        let mut parts: Option<(u64, Vec<Vec<Mutation>>)> = None;
        loop {
            match read_frame::<FromChild>(&mut stdout) {
                Ok(Some((FromChild::Hello { manifest }, _))) if hello_pending => {
                    hello_pending = false;
                    if manifest.name != self.plugin {
                        refusal = Some(format!(
                            "the restarted projector names plugin {:?}",
                            manifest.name
                        ));
                        let _ = child.kill();
                    }
                }
                Ok(Some((FromChild::Refused { error }, _))) => refusal = Some(error),
                Ok(Some((FromChild::Read { keys }, _))) => {
                    let taken: Vec<_> = {
                        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
                        keys.iter()
                            .map(|(entity, key)| {
                                let value = store.get(entity, key).cloned();
                                value.map(|v| (v, store.hidden(entity, key).cloned()))
                            })
                            .collect()
                    };
                    // Encoded outside the lock (text as it is).
                    let found = taken
                        .into_iter()
                        .map(|taken| {
                            taken.map(|(value, hidden)| Found {
                                value,
                                hidden: hidden.map(|h| (*h).clone()),
                            })
                        })
                        .collect();
                    self.to_child
                        .send(&encode(&ToChild::ReadReply { found }, b""));
                }
                // A part or an answer of another request before this one's
                // Done: applying either would lose events.
                Ok(Some((FromChild::Part { ticket, .. } | FromChild::Done { ticket, .. }, _)))
                    if parts
                        .as_ref()
                        .is_some_and(|(current, _)| *current != ticket) =>
                {
                    refusal = Some("the projector process broke the protocol".into());
                    let _ = child.kill();
                }
                Ok(Some((FromChild::Part { ticket, mutations }, _))) => match &mut parts {
                    Some((_, read)) => read.extend(mutations),
                    None => parts = Some((ticket, mutations)),
                },
                Ok(Some((FromChild::Done { ticket, outcome }, _))) => {
                    // Parts count only with a successful Done; a failed
                    // request drops them.
                    let outcome = match (parts.take(), outcome) {
                        (Some((_, mut read)), Ok(rest)) => {
                            read.extend(rest);
                            Ok(read)
                        }
                        (_, outcome) => outcome,
                    };
                    {
                        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                        state.current = None;
                        if state.retired {
                            // Its last answer: the child may go.
                            self.to_child.close();
                        }
                    }
                    (self.done)(Projected {
                        ticket,
                        plugin: self.plugin.clone(),
                        outcome: outcome.map_err(|(position, message)| {
                            ProjectFailure::error(position, message)
                        }),
                    });
                }
                Ok(Some(_)) => {
                    refusal = Some("the projector process broke the protocol".into());
                    let _ = child.kill();
                }
                Ok(None) | Err(_) => break,
            }
        }
        // The pipe ended: the child is exiting (or was killed).
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let status = child.wait();
        state.exited = true;
        if state.retired {
            return;
        }
        let current = state.current.take();
        drop(state);
        let crash = match status {
            Ok(status) => Crash {
                signal: status.signal(),
                exit_code: status.code(),
            },
            Err(_) => Crash {
                signal: None,
                exit_code: None,
            },
        };
        let (ticket, position) = match &current {
            Some(current) => {
                let done = self
                    .progress
                    .load()
                    .saturating_sub(current.progress_at_start) as usize;
                let position = current
                    .body
                    .events()
                    .nth(done)
                    .or_else(|| current.body.events().last())
                    .map_or(0, |(position, _)| position);
                (current.ticket, position)
            }
            None => (0, 0),
        };
        let mut message = format!("the projector process {}", crash.describe());
        if let Some(refusal) = refusal {
            message.push_str(&format!(": {refusal}"));
        }
        tracing::error!(plugin = %self.plugin, ticket, line = position, "{message}");
        (self.done)(Projected {
            ticket,
            plugin: self.plugin.clone(),
            outcome: Err(ProjectFailure {
                position,
                message,
                crash: Some(crash),
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::plugin_malloc_tunables;

    #[test]
    fn a_projector_process_gets_a_larger_malloc_cache_and_keeps_the_users_tunables() {
        assert_eq!(
            plugin_malloc_tunables(None),
            "glibc.malloc.tcache_count=256"
        );
        assert_eq!(
            plugin_malloc_tunables(Some(String::new())),
            "glibc.malloc.tcache_count=256"
        );
        // The user's come last: glibc takes the last setting of a tunable.
        assert_eq!(
            plugin_malloc_tunables(Some(
                "glibc.malloc.tcache_count=7:glibc.malloc.check=3".into()
            )),
            "glibc.malloc.tcache_count=256:glibc.malloc.tcache_count=7:glibc.malloc.check=3"
        );
    }
}
