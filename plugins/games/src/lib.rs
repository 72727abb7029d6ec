//! Example Vista plugin: games, with derived views.
//!
//! Consumes the ingest stream `games` and owns the entity type `Game`
//! (keyed by game id):
//!
//! | event `type`   | effect |
//! |----------------|--------|
//! | `game_started` | `Game[game] = {id, players, status: "active", startedAt, score: 0, events: []}` |
//! | `attack`       | appends `{type: "attack", player, damage}` to `events` (append path) and adds `damage` to `score` (an `add` aggregate: the host adds) |
//! | `game_ended`   | `status: "ended"`, `winner` |
//! | `game_removed` | deletes `Game[game]` |
//!
//! Derived views, maintained incrementally by the host:
//! - `ActiveGame/latest`: games whose `status` is `"active"`, newest
//!   `startedAt` first, at most 10;
//! - `Game/top`: the 3 games with the highest `score`;
//! - `Game/decided`: games that have a `winner` (a comparison on a missing
//!   field never matches, so undecided games are not in it), newest first.
//!
//! [`Game`] describes the entity as written above; the manifest carries its
//! JSON Schema, from which `vista plugin types` writes a client's
//! TypeScript types (`ActiveGame/latest` and the other derived views hold
//! `Game`s). The unit tests read the games they produce back into it
//! (unknown fields refused), so schema and projector cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vista_plugin_api::view::{and, eq, ge, ne, view};
use vista_plugin_api::{json, Manifest, Mutation, Plugin, ProjectError, StateView, Value};

/// The plugin; stateless, as every projector is.
pub struct Games;

/// `Game[id]`, as the projector writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Game {
    /// The game id; the key.
    pub id: String,
    /// Player names, as the game started.
    pub players: Vec<String>,
    /// `active` until `game_ended`.
    pub status: GameStatus,
    /// When the game started (the event's `startedAt`).
    pub started_at: i64,
    /// Damage dealt so far (times the build's damage factor).
    pub score: i64,
    /// Every attack, oldest first.
    pub events: Vec<Attack>,
    /// The winner, once the game ended.
    pub winner: Option<String>,
}

/// `Game.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GameStatus {
    /// Being played.
    Active,
    /// Over; `winner` is set.
    Ended,
}

/// One item of `Game.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    /// Always `attack` (the only kind of game event so far).
    #[serde(rename = "type")]
    pub kind: AttackKind,
    /// Who attacked.
    pub player: String,
    /// Damage dealt.
    pub damage: i64,
}

/// The `type` tag of [`Attack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    /// An attack.
    Attack,
}

/// Events of the `games` stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum GameEvent {
    GameStarted {
        game: String,
        players: Vec<String>,
        #[serde(rename = "startedAt")]
        started_at: i64,
    },
    Attack {
        game: String,
        player: String,
        damage: i64,
    },
    GameEnded {
        game: String,
        winner: String,
    },
    GameRemoved {
        game: String,
    },
}

/// Points scored per point of damage (2 in the `double-score` and
/// `double-score-forward` builds).
const DAMAGE_FACTOR: i64 = if cfg!(any(
    feature = "double-score",
    feature = "double-score-forward"
)) {
    2
} else {
    1
};

impl Plugin for Games {
    fn manifest() -> Manifest {
        if cfg!(feature = "alt-views") {
            return alternative_manifest();
        }
        let version = if cfg!(feature = "double-score") {
            concat!(env!("CARGO_PKG_VERSION"), "+double-score")
        } else if cfg!(feature = "double-score-forward") {
            concat!(env!("CARGO_PKG_VERSION"), "+double-score-forward")
        } else {
            env!("CARGO_PKG_VERSION")
        };
        let manifest = Manifest::new("games", version)
            .entity_schema::<Game>("Game")
            .stream("games")
            .view(
                view("ActiveGame/latest")
                    .from("Game")
                    .filter(eq("status", "active"))
                    .sort_desc("startedAt")
                    .take(10),
            )
            .view(view("Game/top").from("Game").sort_desc("score").take(3))
            .view(
                view("Game/decided")
                    .from("Game")
                    .filter(ne("winner", ""))
                    .sort_desc("startedAt"),
            );
        // The double-score build computes scores differently: history must
        // be recomputed by it, not kept from the old build.
        if cfg!(feature = "double-score") {
            manifest.reproject_on_swap()
        } else {
            manifest
        }
    }

    fn project(
        state: &StateView<'_>,
        _stream: &str,
        event: &Value,
    ) -> Result<Vec<Mutation>, ProjectError> {
        Ok(match GameEvent::deserialize(event)? {
            GameEvent::GameStarted {
                game,
                players,
                started_at,
            } => vec![Mutation::patch(
                "Game",
                game.clone(),
                json!({"id": game, "players": players, "status": "active", "startedAt": started_at, "score": 0, "events": []}),
            )],
            GameEvent::Attack {
                game,
                player,
                damage,
            } => {
                if !state.exists("Game", &game) {
                    return Err(ProjectError::new(format!("attack: unknown game {game}")));
                }
                vec![Mutation::patch(
                    "Game",
                    game,
                    json!({"events": [{"type": "attack", "player": player, "damage": damage}]}),
                )
                .append("events")
                .add("score", DAMAGE_FACTOR * damage)]
            }
            GameEvent::GameRemoved { game } => vec![Mutation::delete("Game", game)],
            GameEvent::GameEnded { game, winner } => {
                if state.get("Game", &game).is_none() {
                    return Err(ProjectError::new(format!(
                        "game_ended: unknown game {game}"
                    )));
                }
                vec![Mutation::patch(
                    "Game",
                    game,
                    json!({"status": "ended", "winner": winner}),
                )]
            }
        })
    }
}

/// A second build of this plugin (`--features alt-views`), used to show
/// hot reload: `ActiveGame/latest` also requires `score >= 10` and keeps 5,
/// `Game/top` ranks by `startedAt` ascending instead of score,
/// `Game/decided` is gone and `Game/ended` is new.
fn alternative_manifest() -> Manifest {
    Manifest::new("games", concat!(env!("CARGO_PKG_VERSION"), "+alt-views"))
        .entity_schema::<Game>("Game")
        .stream("games")
        .view(
            view("ActiveGame/latest")
                .from("Game")
                .filter(and([eq("status", "active"), ge("score", 10)]))
                .sort_desc("startedAt")
                .take(5),
        )
        .view(view("Game/top").from("Game").sort_asc("startedAt").take(3))
        .view(
            view("Game/ended")
                .from("Game")
                .filter(eq("status", "ended"))
                .sort_desc("startedAt"),
        )
}

vista_plugin_api::export_plugin!(Games);

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::{MemoryState, StateSource};

    #[test]
    fn attacks_accumulate_score_and_events() {
        let mut state = MemoryState::new();
        state
            .ingest::<Games>(
                "games",
                &[
                    json!({"type": "game_started", "game": "g1", "players": ["ann", "bob"], "startedAt": 100}),
                    json!({"type": "attack", "game": "g1", "player": "ann", "damage": 7}),
                    json!({"type": "attack", "game": "g1", "player": "bob", "damage": 5}),
                    json!({"type": "game_ended", "game": "g1", "winner": "ann"}),
                ],
            )
            .unwrap();
        assert_eq!(
            state.get("Game", "g1").unwrap(),
            json!({"id": "g1", "players": ["ann", "bob"], "status": "ended", "winner": "ann", "startedAt": 100, "score": 12,
                   "events": [{"type": "attack", "player": "ann", "damage": 7}, {"type": "attack", "player": "bob", "damage": 5}]})
        );
        // The game has the shape the manifest's schema declares.
        let game = Game::deserialize(state.get("Game", "g1").unwrap()).unwrap();
        assert_eq!((game.status, game.events[1].damage), (GameStatus::Ended, 5));
        let mut fresh = MemoryState::new();
        fresh
            .ingest::<Games>(
                "games",
                &[json!({"type": "game_started", "game": "g", "players": [], "startedAt": 1})],
            )
            .unwrap();
        let game = Game::deserialize(fresh.get("Game", "g").unwrap()).unwrap();
        assert_eq!((game.status, game.winner), (GameStatus::Active, None));
    }

    #[test]
    fn the_manifest_carries_the_game_schema() {
        let schema = Games::manifest().entities[0].schema.clone().unwrap();
        assert_eq!(schema["properties"]["startedAt"]["type"], "integer");
        assert!(!schema["required"]
            .as_array()
            .unwrap()
            .contains(&json!("winner")));
    }

    #[test]
    fn the_manifest_declares_valid_derived_views() {
        let manifest = Games::manifest();
        manifest.validate().unwrap();
        let active = &manifest.views[0];
        assert!(active.matches(&json!({"status": "active"})));
        assert!(!active.matches(&json!({"status": "ended"})));
        assert!(!active.matches(&json!({})), "a missing field never matches");
    }

    #[test]
    fn attacking_an_unknown_game_is_an_error() {
        let err = MemoryState::new()
            .ingest::<Games>(
                "games",
                &[json!({"type": "attack", "game": "nope", "player": "x", "damage": 1})],
            )
            .unwrap_err();
        assert!(err.message().contains("unknown game nope"));
    }
}
