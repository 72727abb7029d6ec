//! Example Vista plugin: ticks, the workload of the reference broadcaster
//! comparison (issue 20).
//!
//! Exists so Vista can be measured on exactly the events the reference
//! broadcaster serves: it consumes the ingest stream `ticks`, whose events
//! are objects with a string `id` (`{"id":"k7","t":<µs>,"v":7}`), and owns
//! the entity type `Tick`, keyed by `id`. Each event patches `Tick[id]`
//! with the event as is, so a `Tick/list` subscriber receives
//! `{"op":"patch","mode":"list","entity":"Tick/list","key":ID,"data":EVENT+_seq}`,
//! the reference's frame plus the host's `_seq`. An event without a string
//! `id` is a projector error.

use vista_plugin_api::{serde_json, Manifest, Mutation, Plugin, ProjectError, StateView, Value};

/// The plugin; stateless, as every projector is.
pub struct Ticks;

impl Plugin for Ticks {
    fn manifest() -> Manifest {
        Manifest::new("ticks", env!("CARGO_PKG_VERSION"))
            .entity("Tick")
            .stream("ticks")
    }

    fn project(
        _state: &StateView<'_>,
        _stream: &str,
        event: &Value,
    ) -> Result<Vec<Mutation>, ProjectError> {
        Ok(vec![Mutation::patch(
            "Tick",
            tick_id(event)?,
            event.clone(),
        )])
    }

    /// From the text, the event parsed here becomes the patch itself:
    /// moved into it, where `project` must copy a tree it only borrows.
    fn project_text(
        _state: &StateView<'_>,
        _stream: &str,
        event: &str,
    ) -> Result<Vec<Mutation>, ProjectError> {
        let event: Value = serde_json::from_str(event)?;
        let id = tick_id(&event)?.to_owned();
        Ok(vec![Mutation::patch("Tick", id, event)])
    }
}

fn tick_id(event: &Value) -> Result<&str, ProjectError> {
    event
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ProjectError::new("a tick needs a string `id`"))
}

vista_plugin_api::export_plugin!(Ticks);

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::{json, MemoryState, StateSource};

    #[test]
    fn each_tick_patches_its_key() {
        let mut state = MemoryState::new();
        state
            .ingest::<Ticks>(
                "ticks",
                &[
                    json!({"id": "k1", "t": 10, "v": 1}),
                    json!({"id": "k2", "t": 11, "v": 2}),
                    json!({"id": "k1", "t": 12, "v": 3}),
                ],
            )
            .unwrap();
        assert_eq!(
            state.get("Tick", "k1").unwrap(),
            json!({"id": "k1", "t": 12, "v": 3})
        );
        assert_eq!(state.get("Tick", "k2").unwrap()["v"], 2);
        // The host's path (the text) and the tree's agree.
        let event = json!({"id": "k3", "t": 13, "v": 4});
        let view = StateView::new(&state);
        assert_eq!(
            Ticks::project(&view, "ticks", &event).unwrap(),
            Ticks::project_text(&view, "ticks", &event.to_string()).unwrap()
        );
    }

    #[test]
    fn a_tick_without_a_string_id_is_an_error() {
        let err = MemoryState::new()
            .ingest::<Ticks>("ticks", &[json!({"id": 7})])
            .unwrap_err();
        assert!(err.message().contains("string `id`"), "{err}");
        Ticks::manifest().validate().unwrap();
    }
}
