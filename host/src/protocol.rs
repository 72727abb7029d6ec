//! Client-to-server messages: parsing both the SDK form (`"type"`) and the
//! documented legacy form (`"op"`, or a bare `{"view":..}` subscribe).
//!
//! Anything malformed is an [`InvalidMessage`] whose text goes back to the
//! client in an `invalid-message` socket issue (`invalid-filter` for a bad
//! `filters` map); the connection stays open. A malformed `after` cursor
//! alone does not refuse the subscribe: it comes with an `invalid-cursor`
//! issue to send first, and the subscription starts from a full snapshot.

use serde_json::{Map, Value};

use crate::codes::IssueCode;
use crate::filters::Filters;
use crate::ids::Seq;
use crate::vocab::SubscribeRequest;

/// One message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Start (or restart) a subscription, with a non-fatal issue to report
    /// first (`invalid-cursor`: the `after` given was malformed, and the
    /// request has none).
    Subscribe(SubscribeRequest, Option<InvalidMessage>),
    /// Stop the subscription to (view, key).
    Unsubscribe {
        /// View id.
        view: String,
        /// Key, `None` for all keys.
        key: Option<String>,
    },
    /// Keep-alive; no reply.
    Ping,
    /// In-band token refresh with the new token.
    RefreshAuth {
        /// The new token.
        token: Option<String>,
    },
}

/// Why a client message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidMessage {
    /// The socket issue code: `invalid-message`, `invalid-filter` or
    /// (a subscribe still made) `invalid-cursor`.
    pub code: IssueCode,
    /// What was wrong.
    pub message: String,
}

fn invalid(message: impl Into<String>) -> InvalidMessage {
    InvalidMessage {
        code: IssueCode::InvalidMessage,
        message: message.into(),
    }
}

/// Parses one text message.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, InvalidMessage> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("message is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(invalid("message must be a JSON object"));
    };
    let kind = match (fields.get("type"), fields.get("op")) {
        (Some(Value::String(t)), _) => t.as_str(),
        (None, Some(Value::String(op))) => op.as_str(),
        (None, None) if fields.contains_key("view") => "subscribe",
        (Some(_), _) | (None, Some(_)) => return Err(invalid("\"type\" must be a string")),
        (None, None) => return Err(invalid("message has no \"type\"")),
    };
    match kind {
        "subscribe" => {
            let (request, issue) = parse_subscribe(&fields)?;
            Ok(ClientMessage::Subscribe(request, issue))
        }
        "unsubscribe" => Ok(ClientMessage::Unsubscribe {
            view: view_field(&fields)?,
            key: key_field(&fields)?,
        }),
        "ping" => Ok(ClientMessage::Ping),
        "refresh_auth" => Ok(ClientMessage::RefreshAuth {
            token: fields
                .get("token")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        other => Err(invalid(format!("unknown message type {other:?}"))),
    }
}

fn view_field(fields: &Map<String, Value>) -> Result<String, InvalidMessage> {
    match fields.get("view") {
        Some(Value::String(view)) if !view.is_empty() => Ok(view.clone()),
        Some(_) => Err(invalid("\"view\" must be a non-empty string")),
        None => Err(invalid("missing \"view\"")),
    }
}

fn key_field(fields: &Map<String, Value>) -> Result<Option<String>, InvalidMessage> {
    match fields.get("key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(key)) if key == "*" => Ok(None),
        Some(Value::String(key)) => Ok(Some(key.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid("\"key\" must be a string")),
    }
}

fn count_field(fields: &Map<String, Value>, name: &str) -> Result<Option<usize>, InvalidMessage> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(format!("\"{name}\" must be a non-negative integer"))),
        Some(_) => Err(invalid(format!(
            "\"{name}\" must be a non-negative integer"
        ))),
    }
}

/// The request, and the `invalid-cursor` issue of a malformed `after`.
fn parse_subscribe(
    fields: &Map<String, Value>,
) -> Result<(SubscribeRequest, Option<InvalidMessage>), InvalidMessage> {
    let with_snapshot = match fields.get("withSnapshot") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("\"withSnapshot\" must be a boolean")),
    };
    let after = match fields.get("after") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse::<Seq>().map(Some).map_err(|e| e.to_string()),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(Seq(n)))
            .ok_or_else(|| format!("{n} is not a sequence number (a non-negative integer)")),
        Some(_) => return Err(invalid("\"after\" must be a sequence string")),
    };
    let (after, issue) = match after {
        Ok(after) => (after, None),
        Err(why) => (
            None,
            Some(InvalidMessage {
                code: IssueCode::InvalidCursor,
                message: format!("\"after\": {why}; the subscription starts from a full snapshot"),
            }),
        ),
    };
    let request = SubscribeRequest {
        view: view_field(fields)?,
        key: key_field(fields)?,
        take: count_field(fields, "take")?,
        skip: count_field(fields, "skip")?,
        with_snapshot,
        after,
        snapshot_limit: count_field(fields, "snapshotLimit")?,
        filters: Filters::parse(fields.get("filters")).map_err(|err| InvalidMessage {
            code: IssueCode::InvalidFilter,
            message: err.to_string(),
        })?,
    };
    Ok((request, issue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_subscribe_forms() {
        let sdk =
            parse_client_message(r#"{"type":"subscribe","view":"Token/list","take":5,"skip":1}"#)
                .unwrap();
        let ClientMessage::Subscribe(sdk, None) = sdk else {
            panic!()
        };
        assert_eq!(
            (sdk.view.as_str(), sdk.key, sdk.take, sdk.skip),
            ("Token/list", None, Some(5), Some(1))
        );
        let legacy = parse_client_message(r#"{"view":"Token/state","key":"m1"}"#).unwrap();
        let ClientMessage::Subscribe(legacy, None) = legacy else {
            panic!()
        };
        assert_eq!(legacy.key.as_deref(), Some("m1"));
        let star = parse_client_message(r#"{"view":"Token/list","key":"*"}"#).unwrap();
        assert!(matches!(
            star,
            ClientMessage::Subscribe(SubscribeRequest { key: None, .. }, None)
        ));
    }

    #[test]
    fn both_unsubscribe_and_ping_forms() {
        assert_eq!(
            parse_client_message(r#"{"op":"unsubscribe","view":"A/list"}"#).unwrap(),
            ClientMessage::Unsubscribe {
                view: "A/list".into(),
                key: None
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(
            parse_client_message(r#"{"op":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
    }

    #[test]
    fn malformed_messages_are_explained() {
        assert!(parse_client_message("{nope")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(parse_client_message("[1]")
            .unwrap_err()
            .message
            .contains("object"));
        assert!(parse_client_message(r#"{"type":"dance"}"#)
            .unwrap_err()
            .message
            .contains("dance"));
        assert!(parse_client_message(r#"{"type":"subscribe"}"#)
            .unwrap_err()
            .message
            .contains("view"));
        assert!(parse_client_message(r#"{"type":"subscribe","view":"A/list","take":-1}"#).is_err());
        let bad =
            parse_client_message(r#"{"type":"subscribe","view":"A/list","filters":{"a":[1]}}"#)
                .unwrap_err();
        assert_eq!(bad.code, IssueCode::InvalidFilter);
    }

    #[test]
    fn filters_are_parsed_from_the_subscribe() {
        let ClientMessage::Subscribe(request, None) = parse_client_message(
            r#"{"type":"subscribe","view":"Token/list","filters":{"symbol":"SOL"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let filters = request.filters.unwrap();
        assert!(filters.matches(&serde_json::json!({"symbol": "SOL"})));
    }

    #[test]
    fn after_is_a_cursor_and_a_malformed_one_is_reported_not_refused() {
        let after = |value: &str| {
            let text = format!(r#"{{"type":"subscribe","view":"Token/list","after":{value}}}"#);
            match parse_client_message(&text).unwrap() {
                ClientMessage::Subscribe(request, issue) => (request.after, issue),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(after(r#""0000000000000042""#), (Some(Seq(42)), None));
        assert_eq!(after(r#""42""#), (Some(Seq(42)), None));
        assert_eq!(after("42"), (Some(Seq(42)), None));
        assert_eq!(after("null"), (None, None));
        for malformed in [r#""""#, r#""latest""#, r#""-1""#, "-1", "4.2"] {
            let (cursor, issue) = after(malformed);
            assert_eq!(cursor, None, "{malformed}");
            let issue = issue.expect(malformed);
            assert_eq!(issue.code, IssueCode::InvalidCursor);
            assert!(issue.message.contains("full snapshot"), "{}", issue.message);
        }
        // Not a string or a number at all: the message is not understood.
        let err = parse_client_message(r#"{"type":"subscribe","view":"A/list","after":true}"#)
            .unwrap_err();
        assert_eq!(err.code, IssueCode::InvalidMessage);
    }
}
