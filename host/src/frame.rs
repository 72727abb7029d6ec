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
use serde_json::value::RawValue;
use serde_json::Value;

use crate::codes::IssueCode;
use crate::entity::{is_unsafe_integer, Stored};
use crate::ids::Seq;

pub use crate::vocab::{Mode, Op};

/// Frames at least this long are sent gzipped.
pub const GZIP_THRESHOLD: usize = 1024;

/// Bytes reserved for a data frame's JSON before it is written.
const FRAME_CAPACITY: usize = 256;

/// One encoded WebSocket message, cheap to clone.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The payload: JSON, or gzip of JSON when `binary` and large.
    pub bytes: Bytes,
    /// Sent as a text message (socket issues) rather than binary.
    pub text: bool,
    /// For entity frames: what the frame says, so a slow client's outbox
    /// can merge it with later frames for the same key (conflation).
    pub update: Option<Arc<EntityUpdate>>,
}

impl Frame {
    /// Encodes a data frame as binary JSON, gzipped when large.
    pub fn data(frame: &impl Serialize) -> Frame {
        // Sized for a typical entity frame: `to_vec` starts at 128 bytes and
        // grew once for nearly every live frame.
        let mut json = Vec::with_capacity(FRAME_CAPACITY);
        serde_json::to_writer(&mut json, frame).expect("frames always serialize");
        let bytes = if json.len() >= GZIP_THRESHOLD {
            gzip(&json)
        } else {
            Bytes::from(json)
        };
        Frame {
            bytes,
            text: false,
            update: None,
        }
    }

    /// Encodes a text frame (socket issues, auth replies).
    pub fn text(frame: &impl Serialize) -> Frame {
        let json = serde_json::to_vec(frame).expect("frames always serialize");
        Frame {
            bytes: Bytes::from(json),
            text: true,
            update: None,
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
            Value::Number(n) if is_unsafe_integer(n) => serializer.collect_str(n),
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

/// What one queued snapshot entry is charged against a client's outbox
/// bound before it is encoded: the entry itself plus a typical entity's
/// encoded size. The real size is known only once encoded, and encoding on
/// the engine thread to measure it would cost more than the snapshot.
pub const SNAPSHOT_ENTRY_ESTIMATE: usize = 128;

/// A snapshot captured by the engine and encoded off it, once, on a
/// blocking thread: the first writer that sends it encodes the batches (50,
/// then 100, ...), and every other subscriber that got the same snapshot
/// (same view, same store version) shares the bytes.
pub struct Snapshot {
    /// View id (the frames' `entity`).
    pub view: Arc<str>,
    /// Mode of the view.
    pub mode: Mode,
    /// Entities in view order.
    pub entries: Vec<SnapshotEntry>,
    estimated_bytes: usize,
    encoded: tokio::sync::OnceCell<Vec<Frame>>,
}

impl Snapshot {
    /// A snapshot not encoded yet.
    pub fn new(view: Arc<str>, mode: Mode, entries: Vec<SnapshotEntry>) -> Self {
        let estimated_bytes = entries
            .iter()
            .map(|e| e.key.len() + SNAPSHOT_ENTRY_ESTIMATE)
            .sum::<usize>()
            + 64;
        Self {
            view,
            mode,
            entries,
            estimated_bytes,
            encoded: tokio::sync::OnceCell::new(),
        }
    }

    /// What the snapshot counts against an outbox bound while queued.
    pub fn estimated_bytes(&self) -> usize {
        self.estimated_bytes
    }

    /// The batch frames, encoding them (JSON and gzip) on a blocking thread
    /// on first use: async workers never compress.
    pub async fn frames(self: &Arc<Self>) -> &[Frame] {
        self.encoded
            .get_or_init(|| async {
                let snapshot = self.clone();
                tokio::task::spawn_blocking(move || snapshot.encode())
                    .await
                    .expect("snapshot encoding does not panic")
            })
            .await
    }

    fn encode(&self) -> Vec<Frame> {
        let total = self.entries.len();
        snapshot_batches(total)
            .map(|range| {
                let complete = range.end == total;
                snapshot_frame(&self.view, self.mode, &self.entries[range], complete)
            })
            .collect()
    }
}

/// One `{"key":K,"data":D}` entry of a snapshot batch.
pub struct SnapshotEntry {
    /// Entity key.
    pub key: String,
    /// The full entity.
    pub data: Stored,
}

#[derive(serde::Serialize)]
struct SnapshotItem<'a> {
    key: &'a str,
    data: WireEntity<'a>,
}

/// An entity as frames send it: the store's text as it is (it has no
/// unsafe integer, see [`crate::entity`]), a tree through [`SafeJson`].
enum WireEntity<'a> {
    Tree(&'a Value),
    Text(&'a RawValue),
}

impl<'a> WireEntity<'a> {
    fn of(stored: &'a Stored) -> Self {
        match stored {
            Stored::Tree(value) => WireEntity::Tree(value),
            Stored::Text(text) => WireEntity::Text(text),
        }
    }
}

impl Serialize for WireEntity<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WireEntity::Tree(value) => SafeJson(value).serialize(serializer),
            WireEntity::Text(text) => text.serialize(serializer),
        }
    }
}

/// Encodes one snapshot batch frame.
pub fn snapshot_frame(view: &str, mode: Mode, entries: &[SnapshotEntry], complete: bool) -> Frame {
    #[derive(serde::Serialize)]
    // `complete` before `data`: a client can tell the last batch from the
    // first bytes of the frame.
    struct Snapshot<'a> {
        op: &'static str,
        mode: Mode,
        entity: &'a str,
        complete: bool,
        data: Vec<SnapshotItem<'a>>,
    }
    Frame::data(&Snapshot {
        op: "snapshot",
        mode,
        entity: view,
        data: entries
            .iter()
            .map(|e| SnapshotItem {
                key: &e.key,
                data: WireEntity::of(&e.data),
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

/// The content of a `patch`/`upsert`/`delete` frame.
#[derive(Debug, Clone)]
pub struct EntityUpdate {
    /// View id (the frame's `entity`).
    pub view: Arc<str>,
    /// Mode of the view.
    pub mode: Mode,
    /// Frame kind.
    pub op: Op,
    /// Entity key.
    pub key: String,
    /// Patch data, full entity, or `None` for a delete.
    pub data: Option<Arc<Value>>,
    /// `data` as the text the store keeps it as, when it does (a new
    /// entity): the frame carries it as it is instead of writing `data`
    /// out again. Dropped whenever `data` changes.
    pub text: Option<Arc<RawValue>>,
    /// Append paths of a patch.
    pub append: Vec<String>,
    /// `_seq` of the change.
    pub seq: Option<Seq>,
}

impl EntityUpdate {
    /// Encodes the frame, keeping the update alongside the bytes.
    pub fn into_frame(self) -> Frame {
        #[derive(serde::Serialize)]
        struct Entity<'a> {
            op: Op,
            mode: Mode,
            entity: &'a str,
            key: &'a str,
            data: Option<WireEntity<'a>>,
            // Optional in the protocol and in both published clients
            // (`frame.append ?? []`, `#[serde(default)]`): 12 bytes saved
            // on every frame of a plain patch, which the kernel pays per
            // byte per subscriber.
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            append: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            seq: Option<Seq>,
        }
        let mut frame = Frame::data(&Entity {
            op: self.op,
            mode: self.mode,
            entity: &self.view,
            key: &self.key,
            data: match (&self.text, &self.data) {
                (Some(text), _) => Some(WireEntity::Text(text)),
                (None, Some(value)) => Some(WireEntity::Tree(value)),
                (None, None) => None,
            },
            append: &self.append,
            seq: self.seq,
        });
        frame.update = Some(Arc::new(self));
        frame
    }

    /// Whether later updates of the same key may replace or merge into this
    /// one: everything but append-mode views, whose every event matters.
    pub fn conflatable(&self) -> bool {
        self.mode != Mode::Append
    }

    /// Folds a later update of the same (view, key) into this one, so that
    /// sending only the result leaves the client in the same state as
    /// sending both: a later upsert or delete replaces; a patch after a
    /// delete becomes an upsert of the patch; a patch merges into an earlier
    /// upsert or patch (append paths concatenate).
    pub fn absorb(&mut self, later: &EntityUpdate) {
        match (self.op, later.op) {
            (_, Op::Upsert | Op::Delete) => *self = later.clone(),
            (Op::Delete, Op::Patch) => {
                *self = later.clone();
                self.op = Op::Upsert;
                self.append.clear();
            }
            (Op::Upsert | Op::Patch, Op::Patch) => {
                let Some(Value::Object(patch)) = later.data.as_deref() else {
                    return;
                };
                let earlier = self.data.clone().unwrap_or_else(|| Arc::new(Value::Null));
                if self.op == Op::Patch {
                    // Paths the earlier patch appended to stay appended unless the
                    // later one replaces them; paths the later one appends to are
                    // appended unless the earlier one had replaced them.
                    let replaced_later = |p: &String| {
                        vista_plugin_api::view::lookup(&later.data_or_null(), p).is_some()
                            && !later.append.contains(p)
                    };
                    let mut append: Vec<String> = self
                        .append
                        .iter()
                        .filter(|p| !replaced_later(p))
                        .cloned()
                        .collect();
                    for path in &later.append {
                        let replaced_earlier = vista_plugin_api::view::lookup(&earlier, path)
                            .is_some()
                            && !self.append.contains(path);
                        if !replaced_earlier && !append.contains(path) {
                            append.push(path.clone());
                        }
                    }
                    self.append = append;
                }
                let mut data = Arc::unwrap_or_clone(earlier);
                vista_plugin_api::merge_patch(&mut data, patch, &later.append);
                self.data = Some(Arc::new(data));
                self.text = None;
                self.seq = later.seq;
            }
        }
    }

    fn data_or_null(&self) -> Value {
        self.data.as_deref().cloned().unwrap_or(Value::Null)
    }
}

/// A socket issue: a text frame the TypeScript client recognises by shape.
pub fn socket_issue(code: IssueCode, message: &str, fatal: bool) -> Frame {
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
        error: code.as_str(),
        message,
        code: code.as_str(),
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
        let frame = patch(big, &[]).into_frame();
        assert_eq!(&frame.bytes[..2], &[0x1f, 0x8b]);
        let small = EntityUpdate {
            op: Op::Delete,
            data: None,
            ..patch(json!({}), &[])
        }
        .into_frame();
        assert_eq!(small.bytes[0], b'{');
        assert!(
            small.update.is_some(),
            "entity frames keep their update for conflation"
        );
    }

    fn patch(data: Value, append: &[&str]) -> EntityUpdate {
        EntityUpdate {
            view: "T/list".into(),
            mode: Mode::List,
            op: Op::Patch,
            key: "k".into(),
            data: Some(Arc::new(data)),
            text: None,
            append: append.iter().map(|s| s.to_string()).collect(),
            seq: Some(Seq(1)),
        }
    }

    #[test]
    fn an_upsert_with_the_stores_text_sends_it_and_a_merge_drops_it() {
        let text: Arc<RawValue> = RawValue::from_string(r#"{"a":1,"s":"x"}"#.into())
            .unwrap()
            .into();
        let mut upsert = EntityUpdate {
            op: Op::Upsert,
            text: Some(text),
            ..patch(json!({"a": 1, "s": "x"}), &[])
        };
        let frame: Value = serde_json::from_slice(&upsert.clone().into_frame().bytes).unwrap();
        assert_eq!(frame["data"], json!({"a": 1, "s": "x"}));
        // The text is what is sent: a tree differing from it would not be.
        let mut differing = upsert.clone();
        differing.data = Some(Arc::new(json!({"a": 2})));
        let frame: Value = serde_json::from_slice(&differing.into_frame().bytes).unwrap();
        assert_eq!(frame["data"]["a"], 1);
        // A later patch folded in changes the data: the text goes.
        upsert.absorb(&patch(json!({"b": 2}), &[]));
        assert!(upsert.text.is_none());
        let frame: Value = serde_json::from_slice(&upsert.into_frame().bytes).unwrap();
        assert_eq!(frame["data"], json!({"a": 1, "s": "x", "b": 2}));
    }

    /// What a client holds after applying `updates` to `start`.
    fn client_apply(start: Option<Value>, updates: &[EntityUpdate]) -> Option<Value> {
        updates.iter().fold(start, |held, u| match u.op {
            Op::Delete => None,
            Op::Upsert => u.data.as_deref().cloned(),
            Op::Patch => {
                let mut entity = held.unwrap_or(json!({}));
                let data = u.data.as_deref().unwrap().as_object().unwrap();
                vista_plugin_api::merge_patch(&mut entity, data, &u.append);
                Some(entity)
            }
        })
    }

    #[test]
    fn conflated_updates_leave_the_client_in_the_same_state() {
        let start = Some(json!({"a": 1, "list": [1], "log": [0]}));
        let delete = EntityUpdate {
            op: Op::Delete,
            data: None,
            append: vec![],
            ..patch(json!({}), &[])
        };
        let sequences: Vec<Vec<EntityUpdate>> = vec![
            vec![
                patch(json!({"a": 2, "log": [1]}), &["log"]),
                patch(json!({"b": 3, "log": [2]}), &["log"]),
            ],
            vec![
                patch(json!({"log": [9]}), &[]),
                patch(json!({"log": [1]}), &["log"]),
            ],
            vec![
                patch(json!({"log": [1]}), &["log"]),
                patch(json!({"log": [7]}), &[]),
            ],
            vec![
                patch(json!({"list": [5]}), &["list"]),
                delete.clone(),
                patch(json!({"a": 9}), &[]),
            ],
            vec![
                delete.clone(),
                patch(json!({"a": 1, "log": [4]}), &["log"]),
                patch(json!({"log": [5]}), &["log"]),
            ],
            vec![
                patch(json!({"n": {"x": 1}}), &[]),
                patch(json!({"n": {"y": 2}}), &[]),
            ],
            vec![patch(json!({"a": 5}), &[]), delete.clone()],
        ];
        for updates in sequences {
            let mut merged = updates[0].clone();
            for later in &updates[1..] {
                merged.absorb(later);
            }
            assert_eq!(
                client_apply(start.clone(), std::slice::from_ref(&merged)),
                client_apply(start.clone(), &updates),
                "{updates:?} merged into {merged:?}"
            );
        }
    }
}
