//! The contract between the Vista host and its projector plugins.
//!
//! A plugin is a `cdylib` crate that depends on this crate only. Its author
//! writes ordinary Rust against the safe [`Plugin`] trait and exports it with
//! [`export_plugin!`]; this crate turns that into an ABI-stable root module
//! (via `abi_stable`) whose layout and version the host checks before it
//! calls anything.
//!
//! # Layout
//!
//! - [`manifest`]: what a plugin declares: its name, version, entity types
//!   (optionally with a JSON Schema of their shape), ingest streams and views.
//! - [`mutation`]: what a projector returns ([`Mutation`]) and the one
//!   implementation of the merge rules (deep merge, append paths, delete)
//!   shared by the host's store and by plugin unit tests ([`MemoryState`]).
//! - [`aggregate`]: per-field operations the host evaluates on a patch
//!   (`add`, `count`, `max`, `min`, `set_once`, `unique_count`).
//! - [`ffi`]: the root module, the state-reader trait object and the
//!   `extern "C"` entry points generated for a plugin. Plugin authors never
//!   touch it directly.
//!
//! # Example
//!
//! ```
//! use vista_plugin_api::view::{gt, view};
//! use vista_plugin_api::{json, Manifest, Mutation, Plugin, ProjectError, StateView, Value};
//!
//! pub struct Counter;
//!
//! impl Plugin for Counter {
//!     fn manifest() -> Manifest {
//!         Manifest::new("counter", "0.1.0")
//!             .entity("Counter")
//!             .stream("clicks")
//!             .view(view("Counter/popular").from("Counter").filter(gt("users", 1)).sort_desc("count").take(10))
//!     }
//!
//!     fn project(_: &StateView<'_>, _stream: &str, event: &Value) -> Result<Vec<Mutation>, ProjectError> {
//!         let id = event["id"].as_str().ok_or_else(|| ProjectError::new("missing id"))?;
//!         let user = event["user"].as_str().ok_or_else(|| ProjectError::new("missing user"))?;
//!         Ok(vec![Mutation::patch("Counter", id, json!({ "id": id }))
//!             .count("count")
//!             .set_once("firstUser", user)
//!             .unique_count("users", user)])
//!     }
//! }
//!
//! vista_plugin_api::export_plugin!(Counter);
//!
//! # use vista_plugin_api::{MemoryState, StateSource};
//! let mut state = MemoryState::new();
//! let click = |user: &str| json!({"id": "b", "user": user});
//! state.ingest::<Counter>("clicks", &[click("ann"), click("bob"), click("ann")]).unwrap();
//! let b = state.get("Counter", "b").unwrap();
//! assert_eq!(b, json!({"id": "b", "count": 3, "firstUser": "ann", "users": 2}));
//! assert!(Counter::manifest().views[0].matches(&b));
//! assert_eq!(state.hidden("Counter", "b").unwrap().members("users").unwrap().len(), 2);
//! ```

// `sabi_trait` expands to impls inside a const block.
pub mod aggregate;
#[allow(non_local_definitions)]
pub mod ffi;
pub mod manifest;
pub mod mutation;
pub mod view;

pub use aggregate::{Aggregate, Hidden};
pub use manifest::{EntityDef, Manifest};
pub use mutation::{
    apply_mutation, apply_patch, merge_patch, Applied, MemoryState, Mutation, MutationError,
    MutationKind, MutationsJson,
};
pub use serde_json::{json, Map, Number, Value};

#[doc(hidden)]
pub use abi_stable;
/// The `schemars` version [`Manifest::entity_schema`] takes types from.
/// A plugin may depend on `schemars` itself (the same major version) or
/// derive through this re-export with
/// `#[schemars(crate = "vista_plugin_api::schemars")]`.
pub use schemars;
/// The `serde_json` the API's [`Value`] comes from, for a plugin that
/// reads its events from their text ([`Plugin::project_text`]).
pub use serde_json;

/// Version of the host/plugin contract. The host refuses a plugin whose root
/// module reports another value, even when the `abi_stable` layout happens to
/// match: bump it whenever the meaning of the JSON exchanged across the
/// boundary changes.
///
/// Version 2 added aggregates (`"aggregates"` in patch mutations). The host
/// still loads plugins of every version from [`OLDEST_CONTRACT_VERSION`]
/// up: their JSON means the same to it.
pub const CONTRACT_VERSION: u32 = 2;

/// The oldest contract version the host still loads.
pub const OLDEST_CONTRACT_VERSION: u32 = 1;

/// An error returned by a projector. The host answers the ingest request that
/// caused it with HTTP 422 naming the plugin and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectError {
    message: String,
}

impl ProjectError {
    /// An error with a human-readable message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message given to [`ProjectError::new`].
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ProjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProjectError {}

impl From<serde_json::Error> for ProjectError {
    fn from(err: serde_json::Error) -> Self {
        Self::new(format!("invalid event: {err}"))
    }
}

impl From<String> for ProjectError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ProjectError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Source of the current state of entities, as seen by a projector.
///
/// The host implements it over its store (plus the mutations already
/// produced earlier in the same ingest request); [`MemoryState`] implements
/// it for unit tests.
pub trait StateSource {
    /// The current value of entity `entity` with key `key`, if it exists.
    fn get(&self, entity: &str, key: &str) -> Option<Value>;

    /// The same value as JSON text. The host hands state over as text, so
    /// reading it this way skips building a `Value` that a typed read
    /// ([`StateView::get_as`]) or an existence check would throw away.
    fn get_json(&self, entity: &str, key: &str) -> Option<String> {
        self.get(entity, key).map(|v| v.to_string())
    }
}

/// Read access to current entity state handed to [`Plugin::project`].
pub struct StateView<'a> {
    source: &'a dyn StateSource,
}

impl<'a> StateView<'a> {
    /// Wraps any [`StateSource`].
    pub fn new(source: &'a dyn StateSource) -> Self {
        Self { source }
    }

    /// The current value of `entity[key]`, if it exists.
    pub fn get(&self, entity: &str, key: &str) -> Option<Value> {
        self.source.get(entity, key)
    }

    /// The current value of `entity[key]` deserialized into `T`, straight
    /// from the JSON text: fields `T` does not name are skipped, not built.
    pub fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        entity: &str,
        key: &str,
    ) -> Result<Option<T>, ProjectError> {
        match self.source.get_json(entity, key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|err| ProjectError::new(format!("stored {entity}[{key}]: {err}"))),
        }
    }

    /// Whether `entity[key]` exists (cheaper than [`StateView::get`]).
    pub fn exists(&self, entity: &str, key: &str) -> bool {
        self.source.get_json(entity, key).is_some()
    }
}

/// A projector plugin: a manifest plus a deterministic function from
/// `(stream, event, current state)` to mutations.
///
/// Both functions are associated functions without `self`: a projector keeps
/// no hidden state, so the host may swap it or replay events through it.
pub trait Plugin {
    /// The plugin's declaration. Called once at load.
    fn manifest() -> Manifest;

    /// Turns one event from `stream` into entity mutations.
    ///
    /// `state` shows the current state of entities, including the effect of
    /// earlier events of the same ingest request. Returning an error (or
    /// panicking) fails the whole request and applies none of it.
    fn project(
        state: &StateView<'_>,
        stream: &str,
        event: &Value,
    ) -> Result<Vec<Mutation>, ProjectError>;

    /// The same, given the event as the JSON text it arrived as: what the
    /// host calls. By default it parses the text into a [`Value`] for
    /// [`Plugin::project`]. A plugin that reads its events into its own
    /// types can deserialize them from the text instead
    /// (`serde_json::from_str`): a `Value` builds a map of every field,
    /// which is a quarter of a simple projector's time. Both must give the
    /// same mutations: [`MemoryState::ingest`] calls this one.
    fn project_text(
        state: &StateView<'_>,
        stream: &str,
        event: &str,
    ) -> Result<Vec<Mutation>, ProjectError> {
        let event: Value = serde_json::from_str(event)
            .map_err(|e| ProjectError::new(format!("event is not valid JSON: {e}")))?;
        Self::project(state, stream, &event)
    }

    /// The same again, with the mutations written as JSON into `out`
    /// rather than returned: what the host calls. By default it writes
    /// what [`Plugin::project_text`] returns. A plugin whose patches are
    /// structs of its own can write them straight ([`MutationsJson::patch`])
    /// instead of building a [`Value`] map of every field per event, only
    /// for it to be written out and dropped. Both must give the same
    /// mutations: [`MemoryState::ingest`] applies what this one writes.
    fn project_json(
        state: &StateView<'_>,
        stream: &str,
        event: &str,
        out: &mut MutationsJson,
    ) -> Result<(), ProjectError> {
        out.extend(Self::project_text(state, stream, event)?);
        Ok(())
    }
}

/// Exports a [`Plugin`] implementation as the plugin's ABI-stable root module.
///
/// Use it once per `cdylib` crate: `vista_plugin_api::export_plugin!(MyPlugin);`.
/// The generated entry points catch panics in plugin code and report them to
/// the host as errors; nothing unwinds across the FFI boundary.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, contract_version = $crate::CONTRACT_VERSION);
    };
    // Hidden form used by the host's tests to build a plugin of another
    // contract version.
    ($plugin:ty, contract_version = $version:expr) => {
        /// The root module of this plugin, as the host loads it.
        pub fn __vista_plugin_root_module() -> $crate::ffi::PluginModuleRef {
            $crate::ffi::root_module::<$plugin>($version)
        }

        // What `#[abi_stable::export_root_module]` expands to, spelled with
        // `$crate` paths so plugin crates need no direct abi_stable dependency.
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __VISTA_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__vista_plugin_root_module)
            }
            // SAFETY: `erased_module` returns the root module of type
            // `PluginModuleRef`, which is the type passed here.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<
                    $crate::ffi::PluginModuleRef,
                >(
                    erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
