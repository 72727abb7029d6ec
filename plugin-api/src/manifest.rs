//! What a plugin declares about itself.
//!
//! The manifest crosses the FFI boundary as JSON (see [`crate::ffi`]) and is
//! validated by the host at load: a plugin whose manifest is malformed, or
//! that claims an entity type another plugin already owns, is refused.
//!
//! Every entity type `E` gets three base views from the host without being
//! declared: `E/list`, `E/state` and `E/append`. Derived views (filter, sort,
//! window over one entity type) are declared in [`Manifest::views`].
//!
//! # Entity schemas
//!
//! An entity may carry the JSON Schema of its shape
//! ([`Manifest::entity_schema`], from a Rust type deriving
//! [`schemars::JsonSchema`]). The host never validates entities against it
//! (a projector's output is what it is); it is there for tools: `vista
//! plugin types` turns it into TypeScript interfaces and zod schemas, so a
//! client's types come from the plugin that writes the data, not from a
//! hand-written copy that drifts. The schema is an optional field of the
//! manifest JSON, left out when absent, so a manifest without schemas is
//! byte-for-byte what older plugins send and older plugins load unchanged.

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
    /// JSON Schema (2020-12, as `schemars` writes it) of the entity's
    /// value, without the host's `_seq`; see [`Manifest::entity_schema`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
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
        self.entities.push(EntityDef {
            name: name.into(),
            schema: None,
        });
        self
    }

    /// Declares an entity type owned by this plugin whose values have the
    /// shape of `T` (its JSON Schema, from `#[derive(JsonSchema)]`, goes
    /// into the manifest). Fields a projector may leave unset are `Option`s
    /// in `T`; `T` need not be the type the projector builds its patches
    /// from, but deserializing the entities of a unit test into `T` (with
    /// `#[serde(deny_unknown_fields)]`) keeps the two honest.
    ///
    /// ```
    /// use vista_plugin_api::{schemars::JsonSchema, Manifest};
    /// #[derive(JsonSchema)]
    /// #[schemars(crate = "vista_plugin_api::schemars")]
    /// struct Counter { id: String, count: u64, first_user: Option<String> }
    /// let manifest = Manifest::new("counter", "0.1.0").entity_schema::<Counter>("Counter");
    /// let schema = manifest.entities[0].schema.as_ref().unwrap();
    /// assert_eq!(schema["properties"]["count"]["type"], "integer");
    /// assert_eq!(schema["required"], vista_plugin_api::json!(["id", "count"]));
    /// ```
    pub fn entity_schema<T: schemars::JsonSchema>(mut self, name: impl Into<String>) -> Self {
        let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
        self.entities.push(EntityDef {
            name: name.into(),
            schema: Some(schema.to_value()),
        });
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
            if entity
                .schema
                .as_ref()
                .is_some_and(|s| !s.is_object() && !s.is_boolean())
            {
                return Err(format!(
                    "entity {name:?}: schema is not a JSON Schema object"
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        price: f64,
        note: Option<String>,
    }

    #[test]
    fn a_manifest_without_schemas_is_the_json_older_plugins_send() {
        let manifest = Manifest::new("p", "1").entity("A").stream("s");
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(
            json,
            r#"{"name":"p","version":"1","entities":[{"name":"A"}],"streams":["s"],"views":[]}"#
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }

    #[test]
    fn an_entity_schema_crosses_as_json_and_comes_back_equal() {
        let manifest = Manifest::new("p", "1").entity_schema::<Item>("Item");
        manifest.validate().unwrap();
        let schema = manifest.entities[0].schema.clone().unwrap();
        assert_eq!(schema["properties"]["price"]["type"], "number");
        assert_eq!(schema["required"], serde_json::json!(["id", "price"]));
        let back: Manifest =
            serde_json::from_str(&serde_json::to_string(&manifest).unwrap()).unwrap();
        assert_eq!(back, manifest);
    }

    #[test]
    fn a_schema_that_is_not_an_object_is_refused() {
        let mut manifest = Manifest::new("p", "1").entity("A");
        manifest.entities[0].schema = Some(serde_json::json!("string"));
        assert!(manifest
            .validate()
            .unwrap_err()
            .contains("not a JSON Schema"));
    }
}
