//! The FFI boundary: the ABI-stable root module and the entry points
//! [`export_plugin!`](crate::export_plugin) generates.
//!
//! Everything crossing the boundary is an `abi_stable` type: manifests,
//! events and mutations travel as JSON strings (`RString`/`RStr`), and the
//! host's entity state is reached through the [`StateReader`] trait object.
//! JSON keeps the contract small and lets either side evolve its Rust types
//! without a layout change; the host checks the layout (`abi_stable`) and
//! [`crate::CONTRACT_VERSION`] before calling anything.
//!
//! Every entry point runs the plugin's code under `catch_unwind`: a panic
//! becomes an `RErr` whose message starts with `panic: `.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RStr, RString},
    StableAbi,
};
use serde_json::Value;

use crate::{MutationsJson, Plugin, StateSource, StateView};

/// Read access to the host's entity state, passed into
/// [`PluginModule::project`].
#[sabi_trait]
pub trait StateReader {
    /// The JSON text of `entity[key]`, if it exists.
    fn get(&self, entity: RStr<'_>, key: RStr<'_>) -> ROption<RString>;
}

/// The borrowed trait object the host passes to a projector.
pub type StateReaderRef<'a> = StateReader_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>;

/// Wraps a host-side [`StateReader`] implementation for the FFI call.
pub fn state_reader_ref<R: StateReader>(reader: &R) -> StateReaderRef<'_> {
    StateReader_TO::from_ptr(reader, sabi_trait::TD_Opaque)
}

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The [`crate::CONTRACT_VERSION`] the plugin was built against.
    pub contract_version: u32,
    /// Returns the plugin's [`crate::Manifest`] as JSON, or an error message.
    pub manifest: extern "C" fn() -> RResult<RString, RString>,
    /// Projects one event: `(stream, event JSON, state)` to a JSON array of
    /// [`crate::Mutation`]s, or an error message.
    #[sabi(last_prefix_field)]
    pub project:
        for<'a> extern "C" fn(RStr<'a>, RStr<'a>, StateReaderRef<'a>) -> RResult<RString, RString>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "vista_plugin";
    const NAME: &'static str = "vista_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Builds the root module of plugin `P` (used by [`crate::export_plugin!`]).
pub fn root_module<P: Plugin>(contract_version: u32) -> PluginModuleRef {
    PluginModule {
        contract_version,
        manifest: manifest_entry::<P>,
        project: project_entry::<P>,
    }
    .leak_into_prefix()
}

extern "C" fn manifest_entry<P: Plugin>() -> RResult<RString, RString> {
    guarded(|| serde_json::to_string(&P::manifest()).map_err(|e| e.to_string()))
}

extern "C" fn project_entry<P: Plugin>(
    stream: RStr<'_>,
    event: RStr<'_>,
    state: StateReaderRef<'_>,
) -> RResult<RString, RString> {
    guarded(|| {
        let source = FfiStateSource(&state);
        let mut out = MutationsJson::new();
        P::project_json(
            &StateView::new(&source),
            stream.as_str(),
            event.as_str(),
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        Ok(out.into_json())
    })
}

/// Runs plugin code, turning errors and panics into `RErr`.
fn guarded(body: impl FnOnce() -> Result<String, String>) -> RResult<RString, RString> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(json)) => RResult::ROk(json.into()),
        Ok(Err(message)) => RResult::RErr(message.into()),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            RResult::RErr(format!("panic: {message}").into())
        }
    }
}

/// Adapts the FFI state reader to the safe [`StateSource`] trait.
struct FfiStateSource<'r, 'a>(&'r StateReaderRef<'a>);

impl StateSource for FfiStateSource<'_, '_> {
    fn get(&self, entity: &str, key: &str) -> Option<Value> {
        serde_json::from_str(&self.get_json(entity, key)?).ok()
    }

    fn get_json(&self, entity: &str, key: &str) -> Option<String> {
        let text = self.0.get(entity.into(), key.into()).into_option()?;
        Some(text.into_string())
    }
}
