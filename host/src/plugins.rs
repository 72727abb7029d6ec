//! Loading plugin files and calling into them.
//!
//! A plugin file is copied to a unique name in a private cache directory
//! and loaded from the copy: `abi_stable` never unloads a library, and the
//! dynamic loader would hand back the already-mapped library for a path it
//! has seen, so a later build dropped over the same name must get a fresh
//! path (and the original file can be replaced while the copy stays mapped).
//!
//! Loading checks, in order: the `abi_stable` header and root-module layout
//! (a foreign or stale `.so` fails here), [`CONTRACT_VERSION`], then the
//! manifest. Each failure is a [`LoadError`] naming the file and the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{ROption, RStr, RString};
use serde::Serialize;
use vista_plugin_api::ffi::{state_reader_ref, PluginModuleRef, StateReader};
use vista_plugin_api::{Manifest, Mutation, CONTRACT_VERSION};

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
    #[error("plugin contract version {found}, this host speaks version {expected}")]
    ContractVersion {
        /// What the plugin reports.
        found: u32,
        /// [`CONTRACT_VERSION`].
        expected: u32,
    },
    /// The manifest function failed or returned something invalid.
    #[error("manifest error: {0}")]
    Manifest(String),
}

/// A loaded plugin library: its manifest and its root module.
pub struct PluginLibrary {
    /// The manifest, validated.
    pub manifest: Manifest,
    /// The file in the plugins directory it was loaded from.
    pub file: PathBuf,
    module: PluginModuleRef,
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
}

static NEXT_COPY: AtomicU64 = AtomicU64::new(0);

/// Copies `file` into `cache_dir` under a unique name and loads it.
pub fn load(file: &Path, cache_dir: &Path) -> Result<PluginLibrary, LoadError> {
    std::fs::create_dir_all(cache_dir)?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let mapped = cache_dir.join(format!(
        "{stem}-{}-{}.so",
        std::process::id(),
        NEXT_COPY.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(file, &mapped)?;
    let header = lib_header_from_path(&mapped);
    // Once mapped (or refused), the copy's name is no longer needed: the
    // mapping outlives the directory entry, and nothing piles up in the cache.
    let _ = std::fs::remove_file(&mapped);
    let module = header
        .and_then(|header| header.init_root_module::<PluginModuleRef>())
        .map_err(library_error)?;
    let found = module.contract_version();
    if found != CONTRACT_VERSION {
        return Err(LoadError::ContractVersion {
            found,
            expected: CONTRACT_VERSION,
        });
    }
    let manifest_json = module.manifest()()
        .into_result()
        .map_err(|e| LoadError::Manifest(e.into()))?;
    let manifest: Manifest =
        serde_json::from_str(&manifest_json).map_err(|e| LoadError::Manifest(e.to_string()))?;
    manifest.validate().map_err(LoadError::Manifest)?;
    Ok(PluginLibrary {
        manifest,
        file: file.to_owned(),
        module,
    })
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
    /// Calls the projector. `Err` carries the plugin's message (prefixed
    /// `panic: ` when it panicked) or a description of invalid output.
    pub fn project(
        &self,
        stream: &str,
        event_json: &str,
        state: &impl StateReader,
    ) -> Result<Vec<Mutation>, String> {
        let reader = state_reader_ref(state);
        let output =
            self.module.project()(RStr::from_str(stream), RStr::from_str(event_json), reader)
                .into_result()
                .map_err(RString::into_string)?;
        serde_json::from_str(&output)
            .map_err(|e| format!("projector returned invalid mutations: {e}"))
    }
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
