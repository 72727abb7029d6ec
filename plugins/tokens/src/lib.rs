//! Example Vista plugin: tokens, their supply and their trades.
//!
//! Consumes the ingest stream `tokens` and owns the entity types `Token`
//! (keyed by mint) and `Trade` (keyed by trade id):
//!
//! | event `type`      | effect |
//! |-------------------|--------|
//! | `token_created`   | `Token[mint] = {mint, symbol, decimals, supply}` |
//! | `supply_changed`  | `Token[mint].supply += delta` (an `add` aggregate, evaluated by the host; the token must exist) |
//! | `trade`           | `Trade[id] = {id, mint, price, amount}`; `Token[mint].lastPrice = price`; `{id, price, amount}` appended to `Token[mint].recentTrades`, which keeps the last [`RECENT_TRADES`] |
//! | `token_closed`    | deletes `Token[mint]` |
//!
//! Any other `type` is a projector error, so a typo in a feed fails loudly
//! (HTTP 422) instead of being skipped.
//!
//! [`Token`] and [`Trade`] describe the entities as written above; the
//! manifest carries their JSON Schemas, from which `vista plugin types`
//! writes a client's TypeScript types. The unit tests read every entity
//! they produce back into these types (unknown fields refused), so a field
//! the projector writes and the schema lacks fails here, not in a client.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use vista_plugin_api::serde_json::{self, value::RawValue};
use vista_plugin_api::{
    json, Manifest, Mutation, MutationsJson, Number, Plugin, ProjectError, StateView, Value,
};

/// How many trades `Token.recentTrades` keeps (the oldest are dropped).
pub const RECENT_TRADES: usize = 50;

/// The plugin; stateless, as every projector is.
pub struct Tokens;

/// `Token[mint]`: created by `token_created`; `lastPrice` and
/// `recentTrades` appear with its first trade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Token {
    /// The mint address; the key.
    pub mint: String,
    /// Ticker symbol.
    pub symbol: String,
    /// Decimal places of the supply.
    pub decimals: u8,
    /// Current supply: the created supply plus every `supply_changed` delta
    /// (the host adds them exactly, so it may leave the `u64` range).
    pub supply: i128,
    /// Price of the latest trade.
    pub last_price: Option<f64>,
    /// The last [`RECENT_TRADES`] trades, oldest first.
    pub recent_trades: Option<Vec<RecentTrade>>,
}

/// One item of `Token.recentTrades`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecentTrade {
    /// The trade's id (the key of its `Trade`).
    pub id: String,
    /// Price paid.
    pub price: f64,
    /// Amount traded.
    pub amount: f64,
}

/// `Trade[id]`: one trade, as ingested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    /// The trade id; the key.
    pub id: String,
    /// The traded token's mint.
    pub mint: String,
    /// Price paid.
    pub price: f64,
    /// Amount traded.
    pub amount: f64,
}

/// Events of the `tokens` stream, told apart by their `type`.
#[derive(Debug)]
enum TokenEvent {
    TokenCreated(TokenCreated),
    SupplyChanged(SupplyChanged),
    Trade(TradeEvent),
    TokenClosed(TokenClosed),
}

/// Also the new token's patch, as it is: `{mint, symbol, decimals, supply}`.
#[derive(Debug, Deserialize, Serialize)]
struct TokenCreated {
    mint: String,
    symbol: String,
    decimals: u8,
    supply: u64,
}

#[derive(Debug, Deserialize)]
struct SupplyChanged {
    mint: String,
    delta: i64,
}

#[derive(Debug, Deserialize)]
struct TradeEvent {
    id: String,
    mint: String,
    price: Number,
    amount: Number,
}

#[derive(Debug, Deserialize)]
struct TokenClosed {
    mint: String,
}

impl TokenEvent {
    /// Reads the event straight from its text as the host hands it over.
    /// serde's internally tagged enums (`#[serde(tag = "type")]`) copy the
    /// whole event into an intermediate tree before choosing the variant,
    /// and a `Value` of the event builds a map of every field: a tenth and
    /// a quarter of this projector's time on `token_created`.
    ///
    /// Feeds write `type` first: one pass then ([`Self::read_type_first`]).
    /// Anything else (another order, a malformed event) takes two passes
    /// ([`Self::read_any_order`]), which also word every refusal. One pass
    /// instead of two took `token_created` ingest from 349k to 412k events/s
    /// (BENCHMARKS.md, "Tenth session").
    fn read(text: &str) -> Result<TokenEvent, ProjectError> {
        match Self::read_type_first(text) {
            Ok(event) => Ok(event),
            Err(_) => Self::read_any_order(text),
        }
    }

    /// One pass over an event whose first field is `type`: the tag, then
    /// the rest of the same object straight into the variant's struct.
    fn read_type_first(text: &str) -> Result<TokenEvent, serde_json::Error> {
        use serde::de::{value::MapAccessDeserializer, Error, MapAccess, Visitor};
        struct TypeFirst;
        impl<'de> Visitor<'de> for TypeFirst {
            type Value = TokenEvent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object whose first field is `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenEvent, A::Error> {
                if map.next_key::<Cow<'de, str>>()?.as_deref() != Some("type") {
                    return Err(A::Error::custom("`type` is not first"));
                }
                let rest = |map| MapAccessDeserializer::new(map);
                Ok(match &*map.next_value::<Cow<'de, str>>()? {
                    "token_created" => {
                        TokenEvent::TokenCreated(Deserialize::deserialize(rest(map))?)
                    }
                    "supply_changed" => {
                        TokenEvent::SupplyChanged(Deserialize::deserialize(rest(map))?)
                    }
                    "trade" => TokenEvent::Trade(Deserialize::deserialize(rest(map))?),
                    "token_closed" => TokenEvent::TokenClosed(Deserialize::deserialize(rest(map))?),
                    _ => return Err(A::Error::custom("unknown `type`")),
                })
            }
        }
        let mut reader = serde_json::Deserializer::from_str(text);
        let event = serde::Deserializer::deserialize_map(&mut reader, TypeFirst)?;
        reader.end()?;
        Ok(event)
    }

    /// `type` wherever it is (every other field skipped unread), then the
    /// variant's fields.
    fn read_any_order(text: &str) -> Result<TokenEvent, ProjectError> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow, default, deserialize_with = "present")]
            kind: Option<&'a RawValue>,
        }
        /// A `type` of `null` is there (and not a string), not missing.
        fn present<'de, D: serde::Deserializer<'de>>(
            field: D,
        ) -> Result<Option<&'de RawValue>, D::Error> {
            <&RawValue>::deserialize(field).map(Some)
        }
        let Some(kind) = serde_json::from_str::<Kind<'_>>(text)?.kind else {
            return Err(ProjectError::new("missing field `type`"));
        };
        Ok(
            match serde_json::from_str::<Cow<'_, str>>(kind.get()).as_deref() {
                Ok("token_created") => TokenEvent::TokenCreated(serde_json::from_str(text)?),
                Ok("supply_changed") => TokenEvent::SupplyChanged(serde_json::from_str(text)?),
                Ok("trade") => TokenEvent::Trade(serde_json::from_str(text)?),
                Ok("token_closed") => TokenEvent::TokenClosed(serde_json::from_str(text)?),
                Ok(other) => {
                    return Err(ProjectError::new(format!(
                        "unknown variant `{other}`, expected one of `token_created`, \
                         `supply_changed`, `trade`, `token_closed`"
                    )))
                }
                Err(_) => {
                    return Err(ProjectError::new(format!(
                        "`type` is not a string: {}",
                        kind.get()
                    )))
                }
            },
        )
    }

    /// The mutations of one event.
    fn project(self, state: &StateView<'_>) -> Result<Vec<Mutation>, ProjectError> {
        Ok(match self {
            // The struct is the patch, here as in `project_json`.
            TokenEvent::TokenCreated(created) => vec![Mutation::patch(
                "Token",
                created.mint.clone(),
                serde_json::to_value(&created)?,
            )],
            TokenEvent::SupplyChanged(SupplyChanged { mint, delta }) => {
                if !state.exists("Token", &mint) {
                    return Err(ProjectError::new(format!(
                        "supply_changed: unknown token {mint}"
                    )));
                }
                // The host adds: no read of the supply, and integers stay
                // exact however large.
                vec![Mutation::patch("Token", mint, json!({})).add("supply", delta)]
            }
            TokenEvent::Trade(TradeEvent {
                id,
                mint,
                price,
                amount,
            }) => {
                if !state.exists("Token", &mint) {
                    return Err(ProjectError::new(format!(
                        "trade {id}: unknown token {mint}"
                    )));
                }
                vec![
                    Mutation::patch(
                        "Trade",
                        id.clone(),
                        json!({"id": id, "mint": mint, "price": price, "amount": amount}),
                    ),
                    Mutation::patch(
                        "Token",
                        mint,
                        json!({
                            "lastPrice": price,
                            "recentTrades": [{"id": id, "price": price, "amount": amount}],
                        }),
                    )
                    .append_capped("recentTrades", RECENT_TRADES),
                ]
            }
            TokenEvent::TokenClosed(TokenClosed { mint }) => vec![Mutation::delete("Token", mint)],
        })
    }
}

impl Plugin for Tokens {
    fn manifest() -> Manifest {
        Manifest::new("tokens", env!("CARGO_PKG_VERSION"))
            .entity_schema::<Token>("Token")
            .entity_schema::<Trade>("Trade")
            .stream("tokens")
    }

    /// Only for a caller holding a `Value`: the host hands over text.
    fn project(
        state: &StateView<'_>,
        stream: &str,
        event: &Value,
    ) -> Result<Vec<Mutation>, ProjectError> {
        Self::project_text(state, stream, &event.to_string())
    }

    fn project_text(
        state: &StateView<'_>,
        _stream: &str,
        event: &str,
    ) -> Result<Vec<Mutation>, ProjectError> {
        TokenEvent::read(event)?.project(state)
    }

    /// What the host calls: a new token's patch is written from the event's
    /// own fields, without a `Value` map of them (the other events, rarer,
    /// go through [`TokenEvent::project`]).
    fn project_json(
        state: &StateView<'_>,
        _stream: &str,
        event: &str,
        out: &mut MutationsJson,
    ) -> Result<(), ProjectError> {
        match TokenEvent::read(event)? {
            TokenEvent::TokenCreated(created) => out.patch("Token", &created.mint, &created),
            other => {
                out.extend(other.project(state)?);
                Ok(())
            }
        }
    }
}

vista_plugin_api::export_plugin!(Tokens);

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::{MemoryState, StateSource};

    #[test]
    fn supply_and_trades_accumulate() {
        let mut state = MemoryState::new();
        state
            .ingest::<Tokens>(
                "tokens",
                &[
                    json!({"type": "token_created", "mint": "m1", "symbol": "ABC", "decimals": 6, "supply": 100}),
                    json!({"type": "supply_changed", "mint": "m1", "delta": -40}),
                    json!({"type": "trade", "id": "t1", "mint": "m1", "price": 1.5, "amount": 2}),
                    json!({"type": "trade", "id": "t2", "mint": "m1", "price": 1.75, "amount": 3}),
                ],
            )
            .unwrap();
        assert_eq!(
            state.get("Token", "m1").unwrap(),
            json!({"mint": "m1", "symbol": "ABC", "decimals": 6, "supply": 60, "lastPrice": 1.75,
                   "recentTrades": [{"id": "t1", "price": 1.5, "amount": 2}, {"id": "t2", "price": 1.75, "amount": 3}]})
        );
        assert_eq!(state.get("Trade", "t2").unwrap()["mint"], "m1");
        // The entities have the shape the manifest's schemas declare.
        let token = Token::deserialize(state.get("Token", "m1").unwrap()).unwrap();
        assert_eq!(token.recent_trades.unwrap()[1].price, 1.75);
        let trade = Trade::deserialize(state.get("Trade", "t1").unwrap()).unwrap();
        assert_eq!(trade.amount, 2.0);
        let mut created = MemoryState::new();
        created
            .ingest::<Tokens>(
                "tokens",
                &[json!({"type": "token_created", "mint": "m", "symbol": "S", "decimals": 0, "supply": 1})],
            )
            .unwrap();
        let fresh = Token::deserialize(created.get("Token", "m").unwrap()).unwrap();
        assert_eq!((fresh.last_price, fresh.recent_trades), (None, None));
    }

    #[test]
    fn the_manifest_carries_the_entity_schemas() {
        let manifest = Tokens::manifest();
        manifest.validate().unwrap();
        let token = manifest.entities[0].schema.as_ref().unwrap();
        assert_eq!(token["properties"]["supply"]["type"], "integer");
        assert_eq!(
            token["required"],
            json!(["mint", "symbol", "decimals", "supply"])
        );
        assert!(manifest.entities[1].schema.is_some());
    }

    #[test]
    fn recent_trades_keep_the_last_fifty() {
        let mut state = MemoryState::new();
        let mut events = vec![
            json!({"type": "token_created", "mint": "m", "symbol": "S", "decimals": 0, "supply": 1}),
        ];
        events.extend((0..120).map(|i| {
            json!({"type": "trade", "id": format!("t{i}"), "mint": "m", "price": i, "amount": 1})
        }));
        state.ingest::<Tokens>("tokens", &events).unwrap();
        let token = state.get("Token", "m").unwrap();
        let recent = token["recentTrades"].as_array().unwrap();
        assert_eq!(recent.len(), RECENT_TRADES);
        assert_eq!(recent[0]["id"], "t70");
        assert_eq!(recent[49]["id"], "t119");
    }

    #[test]
    fn unknown_event_type_is_an_error() {
        let err = MemoryState::new()
            .ingest::<Tokens>("tokens", &[json!({"type": "nonsense", "mint": "m"})])
            .unwrap_err();
        assert!(
            err.message().contains("unknown variant `nonsense`"),
            "{err}"
        );
    }

    #[test]
    fn supply_changes_are_added_exactly_by_the_host() {
        let mut state = MemoryState::new();
        state
            .ingest::<Tokens>(
                "tokens",
                &[
                    json!({"type": "token_created", "mint": "m", "symbol": "S", "decimals": 0, "supply": u64::MAX - 1}),
                    json!({"type": "supply_changed", "mint": "m", "delta": 3}),
                    json!({"type": "supply_changed", "mint": "m", "delta": -5}),
                ],
            )
            .unwrap();
        // u64::MAX + 2 exists only in between; the result is exact.
        assert_eq!(
            state.get("Token", "m").unwrap()["supply"],
            json!(u64::MAX - 3)
        );
        let err = state
            .ingest::<Tokens>(
                "tokens",
                &[json!({"type": "supply_changed", "mint": "ghost", "delta": 1})],
            )
            .unwrap_err();
        assert!(err.message().contains("unknown token ghost"), "{err}");
    }

    #[test]
    fn closing_deletes_the_token() {
        let mut state = MemoryState::new();
        state
            .ingest::<Tokens>(
                "tokens",
                &[
                    json!({"type": "token_created", "mint": "m", "symbol": "S", "decimals": 0, "supply": 1}),
                    json!({"type": "token_closed", "mint": "m"}),
                ],
            )
            .unwrap();
        assert!(state.get("Token", "m").is_none());
    }

    /// Events are read from their text (`type` first): each malformed one
    /// is refused naming what is wrong with it.
    #[test]
    fn type_first_is_read_in_one_pass_and_reads_as_any_order_does() {
        let events = [
            r#"{"type":"token_created","mint":"m1","symbol":"S","decimals":6,"supply":7}"#,
            r#"{"type":"supply_changed","mint":"m1","delta":-3}"#,
            r#"{"type":"trade","id":"t1","mint":"m1","price":1.5,"amount":2,"extra":[1]}"#,
            r#"{"type":"token_closed","mint":"m1"}"#,
        ];
        let mut state = MemoryState::new();
        for event in events {
            let one_pass = TokenEvent::read_type_first(event).expect("`type` is first");
            let two_passes = TokenEvent::read_any_order(event).unwrap();
            assert_eq!(format!("{one_pass:?}"), format!("{two_passes:?}"));
            // Moved to the end, `type` is read by the second path, the same.
            let mut fields: Vec<&str> = event[1..event.len() - 1].splitn(2, ',').collect();
            fields.rotate_left(1);
            let type_last = format!("{{{}}}", fields.join(","));
            assert!(
                TokenEvent::read_type_first(&type_last).is_err(),
                "{type_last}"
            );
            let view = StateView::new(&state);
            let returned = Tokens::project_text(&view, "tokens", event).unwrap();
            assert_eq!(
                returned,
                Tokens::project_text(&view, "tokens", &type_last).unwrap()
            );
            // What the host calls writes the same mutations.
            let mut out = MutationsJson::new();
            Tokens::project_json(&view, "tokens", event, &mut out).unwrap();
            let written: Vec<Mutation> = serde_json::from_str(&out.into_json()).unwrap();
            assert_eq!(written, returned, "{event}");
            state
                .ingest::<Tokens>("tokens", &[serde_json::from_str(event).unwrap()])
                .unwrap();
        }
    }

    #[test]
    fn a_malformed_event_is_refused_naming_what_is_wrong() {
        let state = MemoryState::new();
        let view = StateView::new(&state);
        let refusal = |event: &str| {
            Tokens::project_text(&view, "tokens", event)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(refusal(r#"{"mint":"m"}"#), "missing field `type`");
        assert_eq!(refusal(r#"{"type":null}"#), "`type` is not a string: null");
        assert_eq!(refusal(r#"{"type":7}"#), "`type` is not a string: 7");
        assert!(refusal(r#"{"type":"nonsense"}"#).starts_with("unknown variant `nonsense`"));
        let bad_decimals = refusal(
            r#"{"type":"token_created","mint":"m","symbol":"S","decimals":"two","supply":1}"#,
        );
        assert!(
            bad_decimals.starts_with("invalid event: invalid type: string \"two\", expected u8"),
            "{bad_decimals}"
        );
        assert!(
            refusal(r#"{"type":"token_closed"}"#).contains("missing field `mint`"),
            "a variant's own fields are required"
        );
        // `type` later than first: the same refusals, from the second path.
        assert_eq!(
            refusal(r#"{"mint":"m","type":"nonsense"}"#)
                .split(',')
                .next(),
            Some("unknown variant `nonsense`")
        );
        assert!(refusal(r#"{"mint":"m","type":"token_closed","mint":"n"}"#)
            .contains("duplicate field `mint`"));
        // A caller holding a `Value` gets the same answer.
        let created = json!({"type": "token_created", "mint": "m", "symbol": "S", "decimals": 2, "supply": 5});
        assert_eq!(
            Tokens::project(&view, "tokens", &created).unwrap(),
            Tokens::project_text(&view, "tokens", &created.to_string()).unwrap()
        );
    }
}
