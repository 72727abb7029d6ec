//! `vista plugin new NAME`: writes a plugin crate that builds as-is.
//!
//! The crate has one entity, one derived view and a unit test, depends on
//! `vista-plugin-api` by path (the crate is not on crates.io), and carries
//! an empty `[workspace]` table so it builds standalone even when created
//! inside another workspace.

use std::path::{Path, PathBuf};

/// Where `vista-plugin-api` lives in the checkout this binary was built from.
pub fn default_api_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api")
}

/// `my-scores` -> `MyScores`.
fn pascal_case(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().expect("non-empty").to_ascii_uppercase();
            std::iter::once(first).chain(chars).collect::<String>()
        })
        .collect()
}

/// Writes the crate `dir/name` and returns its path.
pub fn new_plugin(name: &str, dir: &Path, api_path: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name.starts_with(|c: char| c.is_ascii_alphabetic()),
        "plugin name {name:?}: use letters, digits, '-' and '_', starting with a letter"
    );
    let root = dir.join(name);
    anyhow::ensure!(!root.exists(), "{} already exists", root.display());
    let api_path = std::fs::canonicalize(api_path).map_err(|e| {
        anyhow::anyhow!("vista-plugin-api not found at {}: {e}", api_path.display())
    })?;
    let entity = pascal_case(name);
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
# cdylib: the .so the host loads; rlib: unit tests run in-process.
crate-type = ["cdylib", "rlib"]

[dependencies]
vista-plugin-api = {{ path = "{api}" }}
serde = {{ version = "1", features = ["derive"] }}

# Standalone: not part of any enclosing workspace.
[workspace]
"#,
            api = api_path.display()
        ),
    )?;
    std::fs::write(
        root.join("src/lib.rs"),
        LIB_TEMPLATE
            .replace("{name}", name)
            .replace("{Entity}", &entity),
    )?;
    Ok(root)
}

const LIB_TEMPLATE: &str = r#"//! Vista plugin `{name}`.
//!
//! Stream `{name}`, entity `{Entity}` (keyed by `id`):
//! - `{"type":"set","id":K,"value":N}` sets `{Entity}[K] = {id, value}`;
//! - `{"type":"remove","id":K}` deletes it.
//!
//! Derived view `{Entity}/top`: entities with `value >= 100`, highest
//! first, 10 of them. Build with `cargo build`, copy
//! `target/debug/lib*.so` into the host's plugins directory.

use serde::Deserialize;
use vista_plugin_api::view::{ge, view};
use vista_plugin_api::{json, Manifest, Mutation, Plugin, ProjectError, StateView, Value};

pub struct Projector;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Set { id: String, value: i64 },
    Remove { id: String },
}

impl Plugin for Projector {
    fn manifest() -> Manifest {
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"))
            .entity("{Entity}")
            .stream("{name}")
            .view(view("{Entity}/top").from("{Entity}").filter(ge("value", 100)).sort_desc("value").take(10))
    }

    fn project(_state: &StateView<'_>, _stream: &str, event: &Value) -> Result<Vec<Mutation>, ProjectError> {
        Ok(match Event::deserialize(event)? {
            Event::Set { id, value } => vec![Mutation::patch("{Entity}", id.clone(), json!({"id": id, "value": value}))],
            Event::Remove { id } => vec![Mutation::delete("{Entity}", id)],
        })
    }
}

vista_plugin_api::export_plugin!(Projector);

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::{MemoryState, StateSource};

    #[test]
    fn set_then_remove() {
        let mut state = MemoryState::new();
        state.ingest::<Projector>("{name}", &[json!({"type": "set", "id": "a", "value": 150})]).unwrap();
        assert_eq!(state.get("{Entity}", "a").unwrap()["value"], 150);
        assert!(Projector::manifest().views[0].matches(&state.get("{Entity}", "a").unwrap()));
        state.ingest::<Projector>("{name}", &[json!({"type": "remove", "id": "a"})]).unwrap();
        assert!(state.get("{Entity}", "a").is_none());
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::pascal_case;

    #[test]
    fn entity_names_are_pascal_case() {
        assert_eq!(pascal_case("my-scores"), "MyScores");
        assert_eq!(pascal_case("scores_v2"), "ScoresV2");
    }
}
