//! Server-to-client frames: JSON encoding, JavaScript-safe integers and gzip.
//!
//! A [`Frame`] is the finished bytes of one WebSocket message. Entity frames
//! are encoded once per broadcast and the `Bytes` are shared by every
//! recipient; frames of [`GZIP_THRESHOLD`] bytes or more are gzipped once,
//! before sharing. Socket-issue frames are text (the TypeScript client only
//! recognises them as text); everything else is a binary message holding
//! UTF-8 JSON or gzip of it, which both published clients accept.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Frames at least this long are sent gzipped.
pub const GZIP_THRESHOLD: usize = 1024;

/// Largest integer JavaScript represents exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// One encoded WebSocket message, cheap to clone.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The payload: JSON, or gzip of JSON when `binary` and large.
    pub bytes: Bytes,
    /// Sent as a text message (socket issues) rather than binary.
    pub text: bool,
}

impl Frame {
    /// Encodes a data frame as binary JSON, gzipped when large.
    pub fn data(frame: &impl Serialize) -> Frame {
        let json = serde_json::to_vec(frame).expect("frames always serialize");
        let bytes = if json.len() >= GZIP_THRESHOLD {
            gzip(&json)
        } else {
            Bytes::from(json)
        };
        Frame { bytes, text: false }
    }

    /// Encodes a text frame (socket issues, auth replies).
    pub fn text(frame: &impl Serialize) -> Frame {
        let json = serde_json::to_vec(frame).expect("frames always serialize");
        Frame {
            bytes: Bytes::from(json),
            text: true,
        }
    }

    /// Payload length on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty (never true for encoded frames).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn gzip(json: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    encoder
        .write_all(json)
        .expect("writing to a Vec cannot fail");
    Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
}

/// Serializes a JSON value with integers beyond +-(2^53-1) as strings, so
/// JavaScript clients never lose precision. Borrowed: no copy of the value.
pub struct SafeJson<'a>(pub &'a Value);

impl Serialize for SafeJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    if u > MAX_SAFE_INTEGER {
                        return serializer.collect_str(&u);
                    }
                } else if let Some(i) = n.as_i64() {
                    if i.unsigned_abs() > MAX_SAFE_INTEGER {
                        return serializer.collect_str(&i);
                    }
                }
                n.serialize(serializer)
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&SafeJson(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, &SafeJson(v))?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Streaming mode of a view, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Many entities, snapshot then changes.
    List,
    /// One entity by key.
    State,
    /// New events only, no snapshot.
    Append,
}

/// `{"op":"subscribed",...}`: first frame of every subscription.
#[derive(serde::Serialize)]
pub struct Subscribed<'a> {
    /// Always `subscribed`.
    pub op: &'static str,
    /// The view id subscribed to.
    pub view: &'a str,
    /// The view's mode.
    pub mode: Mode,
    /// The view's order, for list views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<WireSort>,
}

/// The `sort` of a `subscribed` frame: `{"field":["path","parts"],"order":"desc"}`.
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct WireSort {
    /// The sort path split at dots.
    pub field: Vec<String>,
    /// `asc` or `desc`.
    pub order: vista_plugin_api::view::Order,
}

/// One `{"key":K,"data":D}` entry of a snapshot batch.
pub struct SnapshotEntry {
    /// Entity key.
    pub key: String,
    /// The full entity.
    pub data: Arc<Value>,
}

#[derive(serde::Serialize)]
struct SnapshotItem<'a> {
    key: &'a str,
    data: SafeJson<'a>,
}

/// Encodes one snapshot batch frame.
pub fn snapshot_frame(view: &str, mode: Mode, entries: &[SnapshotEntry], complete: bool) -> Frame {
    #[derive(serde::Serialize)]
    struct Snapshot<'a> {
        op: &'static str,
        mode: Mode,
        entity: &'a str,
        data: Vec<SnapshotItem<'a>>,
        complete: bool,
    }
    Frame::data(&Snapshot {
        op: "snapshot",
        mode,
        entity: view,
        data: entries
            .iter()
            .map(|e| SnapshotItem {
                key: &e.key,
                data: SafeJson(&e.data),
            })
            .collect(),
        complete,
    })
}

/// Snapshot batch sizes: 50 first, then 100 each.
pub fn snapshot_batches(total: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut start = 0;
    let mut first = true;
    std::iter::from_fn(move || {
        if start >= total && !(first && total == 0) {
            return None;
        }
        let size = if first { 50 } else { 100 };
        first = false;
        let end = (start + size).min(total);
        let range = start..end;
        start = end.max(start + 1);
        Some(range)
    })
}

/// Kinds of entity frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Partial state, deep-merged by the client.
    Patch,
    /// Full entity, replacing the client's copy.
    Upsert,
    /// The key leaves the view.
    Delete,
}

/// Encodes a `patch`/`upsert`/`delete` frame.
pub fn entity_frame(
    view: &str,
    mode: Mode,
    op: Op,
    key: &str,
    data: Option<&Value>,
    append: &[String],
    seq: Option<&str>,
) -> Frame {
    #[derive(serde::Serialize)]
    struct Entity<'a> {
        op: Op,
        mode: Mode,
        entity: &'a str,
        key: &'a str,
        data: Option<SafeJson<'a>>,
        append: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<&'a str>,
    }
    Frame::data(&Entity {
        op,
        mode,
        entity: view,
        key,
        data: data.map(SafeJson),
        append,
        seq,
    })
}

/// A socket issue: a text frame the TypeScript client recognises by shape.
pub fn socket_issue(code: &str, message: &str, fatal: bool) -> Frame {
    #[derive(serde::Serialize)]
    struct Issue<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: &'a str,
        message: &'a str,
        code: &'a str,
        retryable: bool,
        fatal: bool,
    }
    Frame::text(&Issue {
        kind: "error",
        error: code,
        message,
        code,
        retryable: false,
        fatal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn big_integers_become_strings() {
        let v = json!({"a": 9007199254740991u64, "b": 9007199254740992u64, "c": [-9007199254740993i64], "d": 1.5});
        let text = serde_json::to_string(&SafeJson(&v)).unwrap();
        assert_eq!(
            text,
            r#"{"a":9007199254740991,"b":"9007199254740992","c":["-9007199254740993"],"d":1.5}"#
        );
    }

    #[test]
    fn batches_are_50_then_100() {
        let sizes = |n| snapshot_batches(n).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(0), vec![0]);
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(50), vec![50]);
        assert_eq!(sizes(51), vec![50, 1]);
        assert_eq!(sizes(150), vec![50, 100]);
        assert_eq!(sizes(151), vec![50, 100, 1]);
        assert_eq!(sizes(250), vec![50, 100, 100]);
    }

    #[test]
    fn large_frames_are_gzipped_once() {
        let big = json!({"blob": "x".repeat(2000)});
        let frame = entity_frame(
            "T/list",
            Mode::List,
            Op::Patch,
            "k",
            Some(&big),
            &[],
            Some("1"),
        );
        assert_eq!(&frame.bytes[..2], &[0x1f, 0x8b]);
        let small = entity_frame("T/list", Mode::List, Op::Delete, "k", None, &[], None);
        assert_eq!(small.bytes[0], b'{');
    }
}
