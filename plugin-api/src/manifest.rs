//! What a plugin declares about itself.
//!
//! The manifest crosses the FFI boundary as JSON (see [`crate::ffi`]) and is
//! validated by the host at load: a plugin whose manifest is malformed, or
//! that claims an entity type another plugin already owns, is refused.
//!
//! Every entity type `E` gets three base views from the host without being
//! declared: `E/list`, `E/state` and `E/append`. Derived views (filter, sort,
//! window over one entity type) are declared in [`Manifest::views`].

use serde::{Deserialize, Serialize};

use crate::view::ViewDef;

/// A plugin's declaration: identity, the entities it owns, the ingest streams
/// it consumes and its derived views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name, unique per host; a new build with the same name replaces
    /// the old one.
    pub name: String,
    /// Free-form version shown in `GET /plugins`.
    pub version: String,
    /// Entity types this plugin owns. Only this plugin may mutate them.
    #[serde(default)]
    pub entities: Vec<EntityDef>,
    /// Ingest streams (`POST /ingest/{stream}`) whose events reach this
    /// plugin's projector.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Derived views over this plugin's entities.
    #[serde(default)]
    pub views: Vec<ViewDef>,
    /// When this build replaces a running build of the same plugin, rebuild
    /// the plugin's entities by replaying the host's event log through it
    /// (see [`Manifest::reproject_on_swap`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reproject: bool,
}

/// One entity type owned by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityDef {
    /// Entity type name, e.g. `Token`; the prefix of its view ids.
    pub name: String,
}

impl Manifest {
    /// A manifest with a name and version and nothing declared yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            entities: Vec::new(),
            streams: Vec::new(),
            views: Vec::new(),
            reproject: false,
        }
    }

    /// Asks the host to rebuild this plugin's entities from its event log
    /// when this build replaces a running one: for a build whose projector
    /// computes differently (a fix, a new field), so history is recomputed
    /// by the new code. The current state keeps serving meanwhile, and
    /// subscribers then receive the difference.
    pub fn reproject_on_swap(mut self) -> Self {
        self.reproject = true;
        self
    }

    /// Declares an entity type owned by this plugin.
    pub fn entity(mut self, name: impl Into<String>) -> Self {
        self.entities.push(EntityDef { name: name.into() });
        self
    }

    /// Declares an ingest stream consumed by this plugin.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.streams.push(name.into());
        self
    }

    /// Declares a derived view (see [`crate::view::view`]).
    pub fn view(mut self, view: impl Into<ViewDef>) -> Self {
        self.views.push(view.into());
        self
    }

    /// Checks the manifest for mistakes the host would refuse, returning a
    /// message naming the offending item.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("plugin name is empty".into());
        }
        let mut seen = std::collections::HashSet::new();
        for entity in &self.entities {
            let name = &entity.name;
            if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
                return Err(format!("invalid entity name {name:?}"));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("entity {name:?} declared twice"));
            }
        }
        for stream in &self.streams {
            if stream.is_empty() || stream.contains('/') {
                return Err(format!("invalid stream name {stream:?}"));
            }
        }
        let mut view_ids = std::collections::HashSet::new();
        for view in &self.views {
            view.validate()
                .map_err(|err| format!("view {:?}: {err}", view.id))?;
            if !seen.contains(view.source.as_str()) {
                return Err(format!(
                    "view {:?}: source entity {:?} is not declared by this plugin",
                    view.id, view.source
                ));
            }
            if !view_ids.insert(view.id.as_str()) {
                return Err(format!("view {:?} declared twice", view.id));
            }
            let (_, suffix) = view.id.split_once('/').unwrap_or_default();
            if seen.contains(view.id.split('/').next().unwrap_or_default())
                && matches!(suffix, "list" | "state" | "append")
            {
                return Err(format!("view {:?} shadows a base view", view.id));
            }
        }
        Ok(())
    }
}
