//! Supervision of the threads the host cannot run without: the engine and
//! the log writer.
//!
//! A panic on either leaves a process that can no longer apply anything: a
//! dead engine answers every request as if shutting down, a dead writer
//! never makes a record durable. Carrying on would look healthy to a load
//! balancer while serving nothing, so the panic is fatal, as in Erlang/OTP
//! where a supervisor restarts what crashed: here the service manager is
//! the supervisor. [`run`] catches the panic, logs it with its message,
//! turns `/healthz` and `/readyz` into 503 at once ([`failure`]) and exits
//! the process with [`EXIT_CODE`] shortly after. That is safe because
//! nothing acknowledged lives only in memory: every answered request is in
//! the log, and a restart replays it.
//!
//! `VISTA_FAULT_PANIC=THREAD:STREAM` (`engine` or `log-writer`) makes that
//! thread panic on a request of stream `STREAM`: the tests' way to prove
//! all this, off unless the variable is set.

use std::sync::OnceLock;
use std::time::Duration;

/// The exit code of a process whose engine or log writer panicked
/// (`EX_SOFTWARE`).
pub const EXIT_CODE: i32 = 70;

/// Time the process stays up after a fatal panic, answering 503, so a
/// probe or an operator sees why before it goes.
const GRACE: Duration = Duration::from_secs(1);

static FAILURE: OnceLock<String> = OnceLock::new();

/// Why the host is failing, once a supervised thread panicked.
pub fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// Threads run under [`run`], by name.
const SUPERVISED: &[&str] = &["engine", "log-writer"];

/// Runs `body` as the supervised thread `thread` (which must be named so,
/// and be one of [`SUPERVISED`]): a panic in it is fatal to the process
/// (see the module doc).
pub fn run(thread: &'static str, body: impl FnOnce()) {
    debug_assert!(SUPERVISED.contains(&thread));
    watch_panics();
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let reason = FAILURE
            .get_or_init(|| format!("the {thread} thread panicked: {}", message_of(&*panic)));
        tracing::error!(thread, "{reason}; the host exits with code {EXIT_CODE} (nothing acknowledged is lost: a restart replays the log)");
        std::thread::sleep(GRACE);
        std::process::exit(EXIT_CODE);
    }
}

/// Marks the host failed the moment a supervised thread panics, before it
/// unwinds: unwinding drops the replies it owed, and a client answered by
/// that must already find `/healthz` failing.
fn watch_panics() {
    static HOOKED: OnceLock<()> = OnceLock::new();
    HOOKED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(thread) = std::thread::current()
                .name()
                .filter(|name| SUPERVISED.contains(name))
            {
                let _ = FAILURE.set(format!(
                    "the {thread} thread panicked: {}",
                    message_of(info.payload())
                ));
            }
            previous(info);
        }));
    });
}

fn message_of(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Panics if `VISTA_FAULT_PANIC` asks `thread` to on `stream`.
pub fn inject_panic(thread: &str, stream: &str) {
    static PLAN: OnceLock<Option<(String, String)>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("VISTA_FAULT_PANIC").ok()?;
        let (thread, stream) = text.split_once(':')?;
        Some((thread.to_owned(), stream.to_owned()))
    });
    if let Some((planned_thread, planned_stream)) = plan {
        if planned_thread == thread && planned_stream == stream {
            panic!("injected fault (VISTA_FAULT_PANIC) on stream {stream:?}");
        }
    }
}
