//! Example Vista plugin: a PostgreSQL `orders` table, fed by a source
//! (`vista serve --source orders=postgres://...`), as live views.
//!
//! Consumes the stream `orders`, whose events are the PostgreSQL source's
//! row changes (`{"type", "table", "key", "row", "old"}`, see the host's
//! `sources` module), and owns the entity type `Order`, keyed by the row's
//! primary key (its values joined by `:`):
//!
//! | change   | effect |
//! |----------|--------|
//! | `insert` (also the initial snapshot's rows) and `update` | `Order[key]` = the row (merged: a column PostgreSQL did not send, an unchanged TOASTed value, stays); `Order[key].changes` += 1 (how many changes of the row were applied: the tests compare it with a version column to show each was applied once) |
//! | `delete` | deletes `Order[key]` |
//! | `truncate` | nothing (a truncate names no rows; avoid it, or reproject) |
//!
//! Views: `Order/list` (every order, by key) and the derived `Order/open`
//! (orders whose `status` is `open`, by `id`): an update that closes an
//! order, or a delete, removes it there.
//!
//! An order whose `status` is not one of [`STATUSES`] is refused: the
//! transaction that wrote it becomes a dead letter and the source goes on
//! (the host's `GET /admin/dead-letters` shows it).

use serde::Deserialize;
use vista_plugin_api::view::{eq, view};
use vista_plugin_api::{json, Manifest, Map, Mutation, Plugin, ProjectError, StateView, Value};

/// The statuses an order may have.
pub const STATUSES: [&str; 4] = ["open", "paid", "shipped", "cancelled"];

/// The plugin; stateless.
pub struct Orders;

/// A row change from the PostgreSQL source.
#[derive(Debug, Deserialize)]
struct RowChange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    table: String,
    #[serde(default)]
    key: Map<String, Value>,
    #[serde(default)]
    row: Option<Map<String, Value>>,
}

/// The entity key of a row: its primary key values joined by `:`.
fn key_of(key: &Map<String, Value>) -> String {
    key.values()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(":")
}

impl Plugin for Orders {
    fn manifest() -> Manifest {
        Manifest::new("orders", env!("CARGO_PKG_VERSION"))
            .entity("Order")
            .stream("orders")
            .view(
                view("Order/open")
                    .from("Order")
                    .filter(eq("status", "open"))
                    .sort_asc("id"),
            )
    }

    fn project(
        _state: &StateView<'_>,
        _stream: &str,
        event: &Value,
    ) -> Result<Vec<Mutation>, ProjectError> {
        let change = RowChange::deserialize(event)?;
        if !change.table.is_empty() && !change.table.ends_with(".orders") {
            return Ok(Vec::new());
        }
        Ok(match change.kind.as_str() {
            "insert" | "update" => {
                let row = change
                    .row
                    .ok_or_else(|| ProjectError::new("an insert or update without a row"))?;
                if let Some(status) = row.get("status").and_then(Value::as_str) {
                    if !STATUSES.contains(&status) {
                        return Err(ProjectError::new(format!(
                            "order {}: unknown status {status:?}",
                            key_of(&change.key)
                        )));
                    }
                }
                vec![Mutation::patch("Order", key_of(&change.key), json!(row)).add("changes", 1)]
            }
            "delete" => vec![Mutation::delete("Order", key_of(&change.key))],
            _ => Vec::new(),
        })
    }
}

vista_plugin_api::export_plugin!(Orders);

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::{MemoryState, StateSource};

    #[test]
    fn rows_follow_the_table() {
        let mut state = MemoryState::new();
        state
            .ingest::<Orders>(
                "orders",
                &[
                    json!({"type": "insert", "table": "public.orders", "key": {"id": 1}, "row": {"id": 1, "status": "open", "amount": 5}, "snapshot": true}),
                    json!({"type": "insert", "table": "public.orders", "key": {"id": 2}, "row": {"id": 2, "status": "open", "amount": 7}}),
                    json!({"type": "update", "table": "public.orders", "key": {"id": 1}, "row": {"id": 1, "status": "paid", "amount": 5}}),
                    json!({"type": "delete", "table": "public.orders", "key": {"id": 2}, "old": {"id": 2}}),
                ],
            )
            .unwrap();
        assert_eq!(state.get("Order", "1").unwrap()["status"], "paid");
        assert_eq!(state.get("Order", "1").unwrap()["changes"], 2);
        assert!(state.get("Order", "2").is_none());
        let err = state
            .ingest::<Orders>(
                "orders",
                &[json!({"type": "insert", "table": "public.orders", "key": {"id": 3}, "row": {"id": 3, "status": "lost"}})],
            )
            .unwrap_err();
        assert!(err.message().contains("unknown status"), "{err}");
    }

    #[test]
    fn the_manifest_is_valid() {
        Orders::manifest().validate().unwrap();
    }
}
