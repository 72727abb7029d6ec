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

use std::borrow::Cow;

use serde::Deserialize;
use vista_plugin_api::serde_json::{self, value::RawValue};
use vista_plugin_api::{Manifest, Mutation, MutationsJson, Plugin, ProjectError, StateView, Value};

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

    /// What the host calls: the event's text is the patch, written as it
    /// came, once checked as JSON; of its fields only `id` is read (no
    /// tree of the event is built). Anything but an object with a string
    /// `id` goes the way of [`Ticks::project_text`], which words the error.
    fn project_json(
        state: &StateView<'_>,
        stream: &str,
        event: &str,
        out: &mut MutationsJson,
    ) -> Result<(), ProjectError> {
        #[derive(Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            id: Cow<'a, str>,
        }
        let tick = serde_json::from_str::<&RawValue>(event)
            .and_then(|raw| serde_json::from_str::<Id<'_>>(raw.get()).map(|tick| (raw, tick)));
        match tick {
            Ok((raw, Id { id })) => out.patch("Tick", &id, &raw),
            Err(_) => {
                out.extend(Self::project_text(state, stream, event)?);
                Ok(())
            }
        }
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
    fn the_event_written_as_the_patch_reads_as_the_returned_mutations() {
        let state = MemoryState::new();
        let view = StateView::new(&state);
        let written = |event: &str| {
            let mut out = MutationsJson::new();
            Ticks::project_json(&view, "ticks", event, &mut out).map(|()| {
                let json = out.into_json();
                (serde_json::from_str::<Vec<Mutation>>(&json).unwrap(), json)
            })
        };
        let event = r#"{ "t": 13, "id": "k\"3", "v": [1.5, {"x": null}] }"#;
        let (mutations, json) = written(event).unwrap();
        assert_eq!(
            mutations,
            Ticks::project_text(&view, "ticks", event).unwrap()
        );
        assert!(json.contains(event), "the event's own text: {json}");
        // Not an object with a string `id`: the same errors as from the text.
        for bad in [r#"{"id": 7}"#, r#"[1]"#, r#"{"id": "k""#, r#"{"t": 1}"#] {
            assert_eq!(
                written(bad).unwrap_err().to_string(),
                Ticks::project_text(&view, "ticks", bad)
                    .unwrap_err()
                    .to_string(),
                "{bad}"
            );
        }
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
