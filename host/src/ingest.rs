//! An ingest request's body, split into events once, on a blocking thread,
//! before it reaches the engine.
//!
//! The body's bytes are kept as they arrived and each event is a byte range
//! into them: nothing is re-serialized, and the same [`IngestBody`] is
//! shared (`Arc`) by every projector thread that consumes the stream.

use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::durable::SourceMark;

/// The events of one request.
pub struct IngestBody {
    text: Bytes,
    /// (1-based line or item number, byte range of the event's JSON object).
    events: Vec<(usize, Range<usize>)>,
    /// Set when a source produced the request: where the source stands once
    /// it is applied, logged with it ([`crate::sources`]).
    source: Option<SourceMark>,
}

/// Why a body was refused, with the 1-based line (or item) it failed at.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedBody {
    /// Line (NDJSON) or item (JSON array) number.
    pub position: usize,
    /// What is wrong with it.
    pub message: String,
}

impl IngestBody {
    /// Splits a body into events: a JSON array of objects, or NDJSON (one
    /// object per non-blank line).
    pub fn parse(body: Bytes) -> Result<IngestBody, MalformedBody> {
        let text = std::str::from_utf8(&body).map_err(|err| MalformedBody {
            position: 1 + body[..err.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            message: "body is not UTF-8".into(),
        })?;
        let base = text.as_ptr() as usize;
        let range_of = |raw: &RawValue| {
            let start = raw.get().as_ptr() as usize - base;
            start..start + raw.get().len()
        };
        let mut events = Vec::new();
        if text.trim_start().starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| MalformedBody {
                position: e.line(),
                message: format!("invalid JSON array: {e}"),
            })?;
            for (i, raw) in items.into_iter().enumerate() {
                if !raw.get().starts_with('{') {
                    return Err(MalformedBody {
                        position: i + 1,
                        message: format!("item {} is not a JSON object", i + 1),
                    });
                }
                events.push((i + 1, range_of(raw)));
            }
        } else {
            for (index, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let raw: &RawValue = serde_json::from_str(line).map_err(|e| MalformedBody {
                    position: index + 1,
                    message: format!("invalid JSON: {e}"),
                })?;
                if !raw.get().starts_with('{') {
                    return Err(MalformedBody {
                        position: index + 1,
                        message: "event is not a JSON object".into(),
                    });
                }
                events.push((index + 1, range_of(raw)));
            }
        }
        Ok(IngestBody {
            text: body,
            events,
            source: None,
        })
    }

    /// A body of already-serialized events (the demo feed).
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a str>) -> IngestBody {
        let mut text = String::new();
        let mut ranges = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            ranges.push((i + 1, text.len()..text.len() + event.len()));
            text.push_str(event);
            text.push('\n');
        }
        IngestBody {
            text: Bytes::from(text),
            events: ranges,
            source: None,
        }
    }

    /// The same body, produced by a source that stands at `mark` once it is
    /// applied.
    pub fn with_source(mut self, mark: SourceMark) -> IngestBody {
        self.source = Some(mark);
        self
    }

    /// The source position the request carries, if a source produced it.
    pub fn source(&self) -> Option<&SourceMark> {
        self.source.as_ref()
    }

    /// The body as received.
    pub fn raw(&self) -> &Bytes {
        &self.text
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The event table in a compact binary form, 12 bytes an event (its
    /// position, start and end, little-endian `u32`s): sent to a projector
    /// process with the body, so that it need not split the body again
    /// ([`IngestBody::with_table`]), a scan of every event's JSON on the
    /// request's path. `None` for a body too large for `u32` offsets.
    pub fn table(&self) -> Option<Vec<u8>> {
        u32::try_from(self.text.len()).ok()?;
        let mut table = Vec::with_capacity(self.events.len() * 12);
        for (position, range) in &self.events {
            for n in [*position, range.start, range.end] {
                table.extend_from_slice(&u32::try_from(n).ok()?.to_le_bytes());
            }
        }
        Some(table)
    }

    /// The body the host split: `text` and its [`IngestBody::table`].
    /// `None` if the text is not UTF-8 or the table does not fit it.
    pub fn with_table(text: Bytes, table: &[u8]) -> Option<IngestBody> {
        let checked = std::str::from_utf8(&text).ok()?;
        if !table.len().is_multiple_of(12) {
            return None;
        }
        let word = |at: &[u8]| u32::from_le_bytes(at.try_into().expect("4 bytes")) as usize;
        let mut events = Vec::with_capacity(table.len() / 12);
        for entry in table.chunks_exact(12) {
            let (position, start, end) = (word(&entry[..4]), word(&entry[4..8]), word(&entry[8..]));
            if start > end || !checked.is_char_boundary(start) || !checked.is_char_boundary(end) {
                return None;
            }
            events.push((position, start..end));
        }
        Some(IngestBody {
            text,
            events,
            source: None,
        })
    }

    /// The events: (position, JSON text).
    pub fn events(&self) -> impl Iterator<Item = (usize, &str)> {
        self.events.iter().map(|(position, range)| {
            let bytes = &self.text[range.clone()];
            // SAFETY-free: the ranges were cut from a validated `str` at
            // JSON value boundaries, which are char boundaries.
            let text = std::str::from_utf8(bytes).expect("event ranges lie on char boundaries");
            (*position, text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IngestBody, MalformedBody> {
        IngestBody::parse(Bytes::from(text.to_owned()))
    }

    #[test]
    fn ndjson_errors_name_the_line() {
        let err = parse("{\"a\":1}\n\n{\"b\":\n").err().unwrap();
        assert_eq!(err.position, 3);
        assert!(err.message.contains("invalid JSON"));
        assert_eq!(parse("{\"a\":1}\n[1]").err().unwrap().position, 2);
    }

    #[test]
    fn arrays_and_ndjson_both_parse() {
        let body = parse(" [{\"a\":1}, {\"b\":2}]").unwrap();
        let events: Vec<(usize, &str)> = body.events().collect();
        assert_eq!(events, vec![(1, "{\"a\":1}"), (2, "{\"b\":2}")]);
        assert_eq!(parse("{\"a\":1}\r\n{\"b\":2}\n").unwrap().len(), 2);
        assert_eq!(parse("[{\"a\":1}, 3]").err().unwrap().position, 2);
    }

    #[test]
    fn a_table_gives_back_the_same_events_and_a_bad_one_is_refused() {
        let body = parse("\n{\"a\":\"é\"}\n\n  {\"b\":2}\n").unwrap();
        let table = body.table().unwrap();
        let again = IngestBody::with_table(body.raw().clone(), &table).unwrap();
        assert_eq!(
            again.events().collect::<Vec<_>>(),
            body.events().collect::<Vec<_>>()
        );
        assert_eq!(
            again.events().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert!(IngestBody::with_table(body.raw().clone(), &table[..11]).is_none());
        let mut beyond = table.clone();
        beyond[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(IngestBody::with_table(body.raw().clone(), &beyond).is_none());
        // An end inside the two bytes of `é` is no event.
        let mut inside = table.clone();
        inside[8..12].copy_from_slice(&8u32.to_le_bytes());
        assert!(IngestBody::with_table(body.raw().clone(), &inside).is_none());
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let err = IngestBody::parse(Bytes::from_static(b"{\"a\":1}\n{\"b\":\"\xff\"}"))
            .err()
            .unwrap();
        assert_eq!(err.position, 2);
    }
}
