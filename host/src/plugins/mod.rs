//! Loading plugin files and calling into them.
//!
//! A plugin file is copied to a unique name in a private cache directory
//! and loaded from the copy: `abi_stable` never unloads a library, and the
//! dynamic loader would hand back the already-mapped library for a path it
//! has seen, so a later build dropped over the same name must get a fresh
//! path (and the original file can be replaced while the copy stays mapped).
//!
//! Mapping a plugin checks, in order: the `abi_stable` header and
//! root-module layout (a foreign or stale `.so` fails here),
//! [`CONTRACT_VERSION`], then the manifest (parsed and validated). Each
//! failure is a [`LoadError`] naming the file and the reason.
//!
//! Mapping is not safe against every file: the dynamic loader trusts the
//! ELF headers, so a truncated copy (a build cut short, a half-synced file)
//! or a hostile file can fault the process while it is being mapped
//! (SIGBUS when the loader touches a page past the end of the file,
//! SIGSEGV, ...), which no error handling can catch. So when a checker is
//! set ([`set_checker`], the `vista` binary sets itself), [`load`] first
//! runs `vista plugin check CACHE-COPY` in a child process, which does the
//! same mapping ([`check`]) and answers one JSON line ([`CheckAnswer`]).
//! Only if the child answers ok is the copy mapped in-process. A child
//! killed by a signal, not done within [`CHECK_TIMEOUT`] (then killed), or
//! answering an error refuses the file with that reason, and the host runs
//! on (only what the child proved mappable is mapped here). The child
//! checks the cache copy, the very bytes mapped afterwards, so the file
//! cannot change between check and use. Without a checker (library use, unit
//! tests) files are mapped in-process directly.

mod cache;

pub use cache::prune_stale_copies;

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{ROption, RStr, RString};
use serde::{Deserialize, Serialize};
use vista_plugin_api::ffi::{state_reader_ref, PluginModuleRef, StateReader};
use vista_plugin_api::{Manifest, Mutation, CONTRACT_VERSION, OLDEST_CONTRACT_VERSION};

use crate::ids::ViewId;

/// Why a plugin file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be copied into the cache.
    #[error("cannot copy into the plugin cache: {0}")]
    Copy(#[from] std::io::Error),
    /// Not a shared library at all.
    #[error("not a loadable shared library: {0}")]
    NotALibrary(String),
    /// A shared library without a Vista root module.
    #[error("not a Vista plugin: it exports no abi_stable root module")]
    NotAPlugin,
    /// Built against an incompatible `vista-plugin-api` crate version.
    #[error("built against vista-plugin-api {found}, this host needs a version compatible with {expected}")]
    ApiVersion {
        /// The plugin's `vista-plugin-api` version.
        found: String,
        /// The host's.
        expected: String,
    },
    /// The root module's layout differs from the host's contract.
    #[error("plugin contract layout differs from this host's: {0}")]
    Layout(String),
    /// Any other loader failure (root module init panicked, ...).
    #[error("cannot initialise the plugin: {0}")]
    Init(String),
    /// Built against another contract version.
    #[error("plugin contract version {found}, this host speaks versions {oldest} to {expected}")]
    ContractVersion {
        /// What the plugin reports.
        found: u32,
        /// [`OLDEST_CONTRACT_VERSION`].
        oldest: u32,
        /// [`CONTRACT_VERSION`].
        expected: u32,
    },
    /// The manifest function failed or returned something invalid.
    #[error("manifest error: {0}")]
    Manifest(String),
    /// The plugin check (child process) refused the file; its reason.
    #[error("{0}")]
    Refused(String),
    /// The plugin check was killed by a signal while mapping the file.
    #[error("plugin check crashed with signal {name} ({signal})")]
    CheckCrashed {
        /// The signal number.
        signal: i32,
        /// Its name (`SIGBUS`, ...).
        name: &'static str,
    },
    /// The plugin check did not answer in time and was killed.
    #[error("plugin check did not finish within {:?}; killed", .0)]
    CheckTimedOut(Duration),
    /// The plugin check could not be run or gave no usable answer.
    #[error("plugin check failed: {0}")]
    CheckFailed(String),
}

/// A loaded plugin build: its manifest and where its code runs.
pub struct PluginLibrary {
    /// The manifest, validated.
    pub manifest: Manifest,
    /// The file in the plugins directory it was loaded from.
    pub file: PathBuf,
    /// The build's identity: the first 16 hex digits of the SHA-256 of the
    /// file's bytes. Two hosts with the same fingerprint run the same code;
    /// a cluster switches builds by fingerprint.
    pub fingerprint: String,
    /// Where its code runs.
    pub(crate) code: Code,
}

/// Where a build's code runs ([`crate::projector`]).
pub(crate) enum Code {
    /// Mapped into this process (`--isolation thread`).
    Mapped(PluginModuleRef),
    /// In child processes; this process never maps it
    /// (`--isolation process`).
    Child(ChildBuild),
}

/// How projector processes are started (`--isolation process`).
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// The `vista` binary (run as `EXE plugin check FILE` to learn a build,
    /// `EXE __projector FILE` to run it).
    pub exe: PathBuf,
    /// Each child's address-space cap, in MiB (`--plugin-memory-mb`).
    pub memory_mb: u64,
    /// How many entities each child's mirror holds at most
    /// (`--projector-mirror-entities`, see [`crate::projector::mirror`]).
    pub mirror_entries: usize,
}

static PROCESS_ISOLATION: OnceLock<ProcessSettings> = OnceLock::new();

/// Makes [`load`] run every build in child processes
/// ([`crate::projector::process`]). Set once, before plugins load; later
/// calls are ignored. Without it (library use, unit tests) builds are
/// mapped in-process.
pub fn set_process_isolation(settings: ProcessSettings) {
    let _ = PROCESS_ISOLATION.set(settings);
}

/// A build run in child processes: the cached copy of its file, which
/// every child of the build maps, removed with the build.
pub struct ChildBuild {
    /// The copy in the cache directory.
    pub copy: PathBuf,
    /// How its children start.
    pub settings: ProcessSettings,
}

impl Drop for ChildBuild {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.copy);
    }
}

/// The state of one plugin file, as `GET /plugins` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Serving.
    Loaded,
    /// Nothing from this file serves (see `last_error`).
    Failed,
    /// A build of the same plugin from another file replaced it.
    Superseded,
    /// Its projector timed out; its streams answer 503 until a new build loads.
    Stuck,
    /// Its projector process died three times within a minute; its streams
    /// answer 503 `plugin-crashed` until a new build loads.
    Crashed,
    /// Cluster mode: mapped and ready, waiting for its build marker in the
    /// log before it projects anything.
    Staged,
    /// Cluster mode: the log switched to this build and this host has no
    /// file with it; consumption is paused until one is dropped in.
    Missing,
}

/// One plugin file as shown by `GET /plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    /// Plugin name (`null` when the file could not be read as a plugin).
    pub name: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// The file in the plugins directory.
    pub file: String,
    /// Entity types owned.
    pub entities: Vec<String>,
    /// View ids served (base and derived).
    pub views: Vec<String>,
    /// Ingest streams consumed.
    pub streams: Vec<String>,
    /// What this file is doing now.
    pub state: PluginState,
    /// Why the last load of this file failed.
    pub last_error: Option<String>,
    /// The fingerprint of the build serving (or staged) from this file
    /// ([`PluginLibrary::fingerprint`]; `null` if none).
    pub fingerprint: Option<String>,
    /// Cluster mode: the position in the shared log of the marker this
    /// build runs from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Process isolation: the process id of the build's projector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The plugin's latest reprojection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reprojection: Option<ReprojectionStatus>,
    /// When that build went live, milliseconds since the Unix epoch.
    pub loaded_at: Option<u64>,
    /// What happened to this file, oldest first: the last
    /// [`HISTORY_LEN`] loads, refusals, supersessions and timeouts.
    pub history: VecDeque<BuildEvent>,
}

/// Where a reprojection stands, as `GET /plugins` shows it (the
/// reprojector in [`crate::reproject`] fills it in).
#[derive(Debug, Clone, Serialize)]
pub struct ReprojectionStatus {
    /// `running`, `swapping`, `done` or `failed`.
    pub state: &'static str,
    /// Log records replayed so far.
    pub records_replayed: u64,
    /// Log records to replay (the log's length when it started).
    pub records_total: u64,
    /// Events projected so far.
    pub events: u64,
    /// Events projected per second, so far.
    pub events_per_second: f64,
    /// Entities changed by the swap (when done).
    pub changed: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Entries of [`PluginReport::history`] kept per file.
pub const HISTORY_LEN: usize = 20;

/// What happened to a plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildEventKind {
    /// A build from this file went live.
    Loaded,
    /// A build dropped over this file was refused.
    Refused,
    /// A build of the same plugin from another file replaced it.
    Superseded,
    /// Its projector timed out.
    Stuck,
    /// Its projector process died (or was killed, stuck) three times
    /// within a minute.
    Crashed,
    /// It replaced the running build of the same plugin (`from`).
    Swapped,
    /// A reprojection rebuilt its entities and swapped them in.
    Reprojected,
}

/// One entry of a plugin file's history.
#[derive(Debug, Clone, Serialize)]
pub struct BuildEvent {
    /// When, milliseconds since the Unix epoch.
    pub at: u64,
    /// What happened.
    pub event: BuildEventKind,
    /// The build's version, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The build's fingerprint, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why (refused, stuck, crashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A swap: the fingerprint of the build it replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl PluginReport {
    /// The report of a mapped build in `state`, with no history yet.
    pub fn of_build(lib: &PluginLibrary, state: PluginState) -> Self {
        let manifest = &lib.manifest;
        PluginReport {
            name: Some(manifest.name.clone()),
            version: Some(manifest.version.clone()),
            file: lib.file.display().to_string(),
            entities: manifest.entities.iter().map(|e| e.name.clone()).collect(),
            views: view_ids(manifest).map(|id| id.to_string()).collect(),
            streams: manifest.streams.clone(),
            state,
            last_error: None,
            reprojection: None,
            fingerprint: Some(lib.fingerprint.clone()),
            since: None,
            pid: None,
            loaded_at: None,
            history: VecDeque::new(),
        }
    }

    /// The report of a file nothing serves from (yet): refused.
    pub fn failed(file: &Path, error: String) -> Self {
        PluginReport {
            name: None,
            version: None,
            file: file.display().to_string(),
            entities: Vec::new(),
            views: Vec::new(),
            streams: Vec::new(),
            state: PluginState::Failed,
            last_error: Some(error),
            reprojection: None,
            fingerprint: None,
            since: None,
            pid: None,
            loaded_at: None,
            history: VecDeque::new(),
        }
    }

    /// Appends to the history, dropping the oldest entry past [`HISTORY_LEN`].
    pub fn record(&mut self, event: BuildEventKind, error: Option<String>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        let (version, fingerprint) = match event {
            BuildEventKind::Refused => (None, None),
            _ => (self.version.clone(), self.fingerprint.clone()),
        };
        self.history.push_back(BuildEvent {
            at: unix_millis(),
            event,
            version,
            fingerprint,
            error,
            from: None,
        });
    }

    /// Records that this build replaced the running build `from` (a
    /// fingerprint) of the same plugin.
    pub fn record_swap(&mut self, from: String) {
        self.record(BuildEventKind::Swapped, None);
        if let Some(event) = self.history.back_mut() {
            event.from = Some(from);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The executable run as `EXE plugin check FILE` before a file is mapped.
static CHECKER: OnceLock<PathBuf> = OnceLock::new();

/// How long the plugin check may take before it is killed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes [`load`] check every file in a child process first: `exe plugin
/// check FILE` (normally the running `vista` binary). Set once, before
/// plugins load; later calls are ignored.
pub fn set_checker(exe: PathBuf) {
    let _ = CHECKER.set(exe);
}

/// The answer of `vista plugin check`: one JSON line on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckAnswer {
    /// The file maps as a valid plugin.
    pub ok: bool,
    /// Plugin name (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Plugin version (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The [`LoadError`] text (when not ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole manifest (when ok): under process isolation the host
    /// learns a build from this answer, never mapping it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

/// `vista plugin check FILE`: maps `file` in this process exactly as
/// [`load`] does and returns the manifest. Never unmapped; meant for a
/// short-lived process.
pub fn check(file: &Path) -> Result<Manifest, LoadError> {
    map(file).map(|(manifest, _module)| manifest)
}

/// [`check`], as the answer `vista plugin check` prints.
pub fn check_answer(file: &Path) -> CheckAnswer {
    match check(file) {
        Ok(manifest) => CheckAnswer {
            ok: true,
            name: Some(manifest.name.clone()),
            version: Some(manifest.version.clone()),
            error: None,
            manifest: Some(manifest),
        },
        Err(err) => CheckAnswer {
            ok: false,
            name: None,
            version: None,
            error: Some(err.to_string()),
            manifest: None,
        },
    }
}

/// Copies `file` into `cache_dir` under a unique name, checks the copy in
/// a child process (when a checker is set, see [`set_checker`]) and maps it.
///
/// Error texts name `file`, never the cache copy.
pub fn load(file: &Path, cache_dir: &Path) -> Result<PluginLibrary, LoadError> {
    let mapped = cache::copy_in(file, cache_dir)?;
    let fingerprint = cache::fingerprint_of(&mapped)?;
    if let Some(settings) = PROCESS_ISOLATION.get() {
        // The check's answer carries the manifest; projector processes map
        // the copy (every restarted one again), which stays until the build
        // is dropped.
        let manifest = check_in_child(&settings.exe, &mapped, CHECK_TIMEOUT).map_err(|err| {
            let _ = std::fs::remove_file(&mapped);
            name_the_file(err, &mapped, file)
        })?;
        return Ok(PluginLibrary {
            manifest,
            file: file.to_owned(),
            fingerprint,
            code: Code::Child(ChildBuild {
                copy: mapped,
                settings: settings.clone(),
            }),
        });
    }
    let checked = match CHECKER.get() {
        Some(exe) => check_in_child(exe, &mapped, CHECK_TIMEOUT).map(drop),
        None => Ok(()),
    };
    let result = checked.and_then(|()| map(&mapped));
    // Once mapped (or refused), the copy's name is no longer needed: the
    // mapping outlives the directory entry, and nothing piles up in the cache.
    let _ = std::fs::remove_file(&mapped);
    let (manifest, module) = result.map_err(|err| name_the_file(err, &mapped, file))?;
    Ok(PluginLibrary {
        manifest,
        file: file.to_owned(),
        fingerprint,
        code: Code::Mapped(module),
    })
}

/// Maps `path` in this process and checks it: header, layout, contract
/// version, manifest. Shared by [`load`] and [`check`].
pub(crate) fn map(path: &Path) -> Result<(Manifest, PluginModuleRef), LoadError> {
    let module = lib_header_from_path(path)
        .and_then(|header| header.init_root_module::<PluginModuleRef>())
        .map_err(library_error)?;
    let found = module.contract_version();
    if !(OLDEST_CONTRACT_VERSION..=CONTRACT_VERSION).contains(&found) {
        return Err(LoadError::ContractVersion {
            found,
            oldest: OLDEST_CONTRACT_VERSION,
            expected: CONTRACT_VERSION,
        });
    }
    let manifest_json = module.manifest()()
        .into_result()
        .map_err(|e| LoadError::Manifest(e.into()))?;
    let manifest: Manifest =
        serde_json::from_str(&manifest_json).map_err(|e| LoadError::Manifest(e.to_string()))?;
    manifest.validate().map_err(LoadError::Manifest)?;
    Ok((manifest, module))
}

/// Runs `exe plugin check path` and waits for its answer (at most
/// `timeout`, [`CHECK_TIMEOUT`] in [`load`]; then the child is killed).
fn check_in_child(exe: &Path, path: &Path, timeout: Duration) -> Result<Manifest, LoadError> {
    let mut child = Command::new(exe)
        .args(["plugin", "check"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LoadError::CheckFailed(format!("cannot start {}: {e}", exe.display())))?;
    // Read stdout on a thread so a chatty plugin cannot fill the pipe and
    // stall the child; the answer arrives over a channel so that a pipe
    // kept open by a grandchild cannot stall the host.
    let (sender, answer) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = sender.send(out);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LoadError::CheckTimedOut(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LoadError::CheckFailed(format!("cannot wait for it: {err}")));
            }
        }
    };
    if let Some(signal) = status.signal() {
        return Err(LoadError::CheckCrashed {
            signal,
            name: signal_name(signal),
        });
    }
    let out = answer
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    let out = String::from_utf8_lossy(&out);
    // The answer is the last line: a plugin may print while initialising.
    let parsed = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<CheckAnswer>(l).ok());
    match parsed {
        Some(CheckAnswer {
            ok: true,
            manifest: Some(manifest),
            ..
        }) if status.success() => {
            manifest.validate().map_err(LoadError::Manifest)?;
            Ok(manifest)
        }
        Some(CheckAnswer {
            ok: false,
            error: Some(error),
            ..
        }) => Err(LoadError::Refused(error)),
        _ => Err(LoadError::CheckFailed(format!(
            "it exited with {status} without an answer"
        ))),
    }
}

/// The conventional name of a signal that can end a plugin check.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// Reasons mention the mapped path (the loader's messages do); users know
/// the file in the plugins directory, so name that instead.
fn name_the_file(err: LoadError, mapped: &Path, file: &Path) -> LoadError {
    let (mapped, file) = (mapped.display().to_string(), file.display().to_string());
    let fix = |text: String| text.replace(&mapped, &file);
    match err {
        LoadError::NotALibrary(text) => LoadError::NotALibrary(fix(text)),
        LoadError::Layout(text) => LoadError::Layout(fix(text)),
        LoadError::Init(text) => LoadError::Init(fix(text)),
        LoadError::Manifest(text) => LoadError::Manifest(fix(text)),
        LoadError::Refused(text) => LoadError::Refused(fix(text)),
        LoadError::CheckFailed(text) => LoadError::CheckFailed(fix(text)),
        other => other,
    }
}

/// Turns `abi_stable`'s loader errors into the reasons a user can act on.
fn library_error(err: LibraryError) -> LoadError {
    match err {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } | LibraryError::InvalidAbiHeader(_) => {
            LoadError::NotAPlugin
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::ApiVersion {
            found: actual_version.to_string(),
            expected: expected_version.to_string(),
        },
        LibraryError::AbiInstability(err) => LoadError::Layout(err.to_string()),
        other => LoadError::Init(other.to_string()),
    }
}

impl PluginLibrary {
    /// Calls the projector of a build mapped in this process. `Err` carries
    /// the plugin's message (prefixed `panic: ` when it panicked) or a
    /// description of invalid output.
    pub fn project(
        &self,
        stream: &str,
        event_json: &str,
        state: &impl StateReader,
    ) -> Result<Vec<Mutation>, String> {
        match &self.code {
            Code::Mapped(module) => project_with(module, stream, event_json, state),
            Code::Child(_) => Err("this build runs in a projector process".into()),
        }
    }
}

/// Calls a mapped plugin's projector (see [`PluginLibrary::project`]).
pub(crate) fn project_with(
    module: &PluginModuleRef,
    stream: &str,
    event_json: &str,
    state: &impl StateReader,
) -> Result<Vec<Mutation>, String> {
    parse_mutations(&project_text(module, stream, event_json, state)?)
}

/// Calls a mapped plugin's projector and returns its output as it is: a
/// JSON array of mutations, for a projector process to pass on without
/// writing it out again, and to parse only if it needs to
/// ([`parse_mutations`]).
pub(crate) fn project_text(
    module: &PluginModuleRef,
    stream: &str,
    event_json: &str,
    state: &impl StateReader,
) -> Result<String, String> {
    let reader = state_reader_ref(state);
    Ok(
        module.project()(RStr::from_str(stream), RStr::from_str(event_json), reader)
            .into_result()
            .map_err(RString::into_string)?
            .into_string(),
    )
}

/// Parses a projector's output ([`project_text`]).
pub(crate) fn parse_mutations(text: &str) -> Result<Vec<Mutation>, String> {
    serde_json::from_str(text).map_err(|e| format!("projector returned invalid mutations: {e}"))
}

/// Adapts a closure to the FFI [`StateReader`].
pub struct FnStateReader<F>(pub F);

impl<F: Fn(&str, &str) -> Option<String>> StateReader for FnStateReader<F> {
    fn get(&self, entity: RStr<'_>, key: RStr<'_>) -> ROption<RString> {
        (self.0)(entity.as_str(), key.as_str())
            .map(RString::from)
            .into()
    }
}

/// Every view id a manifest serves: base views of its entities, then its
/// derived views.
pub(crate) fn view_ids(manifest: &Manifest) -> impl Iterator<Item = ViewId> + '_ {
    manifest
        .entities
        .iter()
        .flat_map(|e| ViewId::bases(&e.name).map(|(id, _)| id))
        .chain(manifest.views.iter().map(|v| ViewId::derived(&v.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in checker: a shell script with this body. Written by a
    /// child `sh`, so no write descriptor of it is ever open in this
    /// process (another test thread forking meanwhile would inherit it and
    /// running the script would fail with ETXTBSY).
    fn checker(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vista-checker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let status = Command::new("/bin/sh")
            .args([
                "-c",
                r#"printf '#!/bin/sh\n%s\n' "$1" > "$2" && chmod 755 "$2""#,
                "sh",
            ])
            .arg(body)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    fn run(name: &str, body: &str) -> Result<Manifest, LoadError> {
        let exe = checker(name, body);
        let result = check_in_child(&exe, Path::new("/cache/x.so"), Duration::from_millis(500));
        let _ = std::fs::remove_file(exe);
        result
    }

    #[test]
    fn the_child_answer_decides() {
        let manifest = Manifest::new("a", "1").entity("E").stream("s");
        let answer =
            serde_json::json!({"ok": true, "name": "a", "version": "1", "manifest": manifest});
        let learned =
            run("ok", &format!("echo 'plugin says hi'; echo '{answer}'")).expect("ok answer");
        assert_eq!(learned, manifest, "the answer's manifest is the build's");
        let refused = run(
            "no",
            r#"echo "{\"ok\":false,\"error\":\"manifest error: $3\"}"; exit 1"#,
        )
        .unwrap_err();
        assert!(matches!(refused, LoadError::Refused(_)), "{refused:?}");
        assert_eq!(refused.to_string(), "manifest error: /cache/x.so");
        // The cache path in a reason is replaced by the plugins-dir file.
        let named = name_the_file(refused, Path::new("/cache/x.so"), Path::new("/p/x.so"));
        assert_eq!(named.to_string(), "manifest error: /p/x.so");
    }

    #[test]
    fn a_crash_names_the_signal() {
        let err = run("bus", "kill -BUS $$").unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin check crashed with signal SIGBUS (7)"
        );
        let err = run("segv", "kill -SEGV $$").unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin check crashed with signal SIGSEGV (11)"
        );
    }

    #[test]
    fn a_hung_check_is_killed() {
        let started = Instant::now();
        let err = run("hang", "exec sleep 30").unwrap_err();
        assert!(matches!(err, LoadError::CheckTimedOut(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "plugin check did not finish within 500ms; killed"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn no_answer_is_a_refusal() {
        let err = run("silent", "exit 3").unwrap_err();
        assert!(matches!(err, LoadError::CheckFailed(_)), "{err:?}");
        let err = run("ok-but-failed", r#"echo '{"ok":true}'; exit 2"#).unwrap_err();
        assert!(matches!(err, LoadError::CheckFailed(_)), "{err:?}");
    }
}
