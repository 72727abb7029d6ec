//! Decoding PostgreSQL's `pgoutput` logical replication messages (protocol
//! version 1, text values) into Vista events, and PostgreSQL's text form of
//! a value into JSON, the same for the initial snapshot and the stream.
//!
//! Ours rather than a crate's: `pgwire-replication` (the replication
//! connection, see [`super::postgres`]) hands the messages over raw apart
//! from Begin/Commit, and the relation, insert, update, delete and truncate
//! messages are a page of the protocol docs; a crate for them would bring
//! a second model of rows to convert from.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A table as a `Relation` message (or the catalog, for the snapshot)
/// describes it.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    /// `schema.table`.
    pub name: String,
    /// (column name, type oid, part of the replica identity).
    pub columns: Vec<(String, u32, bool)>,
}

/// One decoded change.
#[derive(Debug)]
pub(crate) enum Change {
    /// A `Relation` message was cached (nothing to apply).
    Relation,
    /// An event for the transaction.
    Event(Value),
    /// Nothing of interest (types, origins).
    Skip,
}

/// The relations seen on this connection (PostgreSQL sends each before
/// its first change, and again when it changes).
#[derive(Default)]
pub(crate) struct Decoder {
    relations: HashMap<u32, Relation>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("pgoutput: truncated message".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or("pgoutput: unterminated string")?;
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

/// A tuple's columns: `None` for an unchanged TOASTed value (not sent).
type Tuple = Vec<Option<Value>>;

impl Decoder {
    /// Decodes one message of a transaction.
    pub(crate) fn decode(&mut self, data: &[u8]) -> Result<Change, String> {
        let mut r = Reader(data);
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push((name, type_oid, flags & 1 == 1));
                }
                self.relations.insert(
                    oid,
                    Relation {
                        name: format!("{schema}.{table}"),
                        columns,
                    },
                );
                Ok(Change::Relation)
            }
            b'I' => {
                let relation = self.relation(r.u32()?)?;
                expect(r.u8()?, b'N')?;
                let row = tuple(&mut r, relation)?;
                Ok(Change::Event(event("insert", relation, Some(&row), None)))
            }
            b'U' => {
                let relation = self.relation(r.u32()?)?;
                let mut old = None;
                let mut tag = r.u8()?;
                if tag == b'K' || tag == b'O' {
                    old = Some(tuple(&mut r, relation)?);
                    tag = r.u8()?;
                }
                expect(tag, b'N')?;
                let row = tuple(&mut r, relation)?;
                Ok(Change::Event(event(
                    "update",
                    relation,
                    Some(&row),
                    old.as_ref(),
                )))
            }
            b'D' => {
                let relation = self.relation(r.u32()?)?;
                let tag = r.u8()?;
                if tag != b'K' && tag != b'O' {
                    return Err(format!("pgoutput: delete with tuple tag {tag}"));
                }
                let old = tuple(&mut r, relation)?;
                Ok(Change::Event(event("delete", relation, None, Some(&old))))
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                let mut tables = Vec::new();
                for _ in 0..count {
                    tables.push(Value::String(self.relation(r.u32()?)?.name.clone()));
                }
                Ok(Change::Event(serde_json::json!({
                    "type": "truncate",
                    "tables": tables,
                })))
            }
            _ => Ok(Change::Skip),
        }
    }

    fn relation(&self, oid: u32) -> Result<&Relation, String> {
        self.relations
            .get(&oid)
            .ok_or_else(|| format!("pgoutput: change of relation {oid} before its description"))
    }
}

fn expect(tag: u8, wanted: u8) -> Result<(), String> {
    if tag == wanted {
        Ok(())
    } else {
        Err(format!(
            "pgoutput: expected tuple tag {:?}, got {:?}",
            wanted as char, tag as char
        ))
    }
}

fn tuple(r: &mut Reader<'_>, relation: &Relation) -> Result<Tuple, String> {
    let count = r.u16()? as usize;
    let mut values = Vec::with_capacity(count);
    for i in 0..count {
        let type_oid = relation.columns.get(i).map_or(25, |c| c.1);
        values.push(match r.u8()? {
            b'n' => Some(Value::Null),
            b'u' => None,
            b't' => {
                let len = r.u32()? as usize;
                let text = String::from_utf8_lossy(r.take(len)?);
                Some(to_json(&text, type_oid))
            }
            other => return Err(format!("pgoutput: value kind {:?}", other as char)),
        });
    }
    Ok(values)
}

/// `{"type", "table", "key", "row", "old"}`: `key` from the replica
/// identity columns (of the new row, else of the old); unchanged TOASTed
/// values are left out of `row`.
pub(crate) fn event(
    kind: &str,
    relation: &Relation,
    row: Option<&Tuple>,
    old: Option<&Tuple>,
) -> Value {
    let object = |tuple: &Tuple, only_key: bool| {
        let mut map = Map::new();
        for ((name, _, key), value) in relation.columns.iter().zip(tuple) {
            if only_key && !key {
                continue;
            }
            if let Some(value) = value {
                map.insert(name.clone(), value.clone());
            }
        }
        map
    };
    let mut out = Map::new();
    out.insert("type".into(), Value::String(kind.to_owned()));
    out.insert("table".into(), Value::String(relation.name.clone()));
    let key = match (row, old) {
        (Some(row), _) => object(row, true),
        (None, Some(old)) => object(old, true),
        (None, None) => Map::new(),
    };
    out.insert("key".into(), Value::Object(key));
    if let Some(row) = row {
        out.insert("row".into(), Value::Object(object(row, false)));
    }
    if let Some(old) = old {
        let old = object(old, false);
        // A delete under REPLICA IDENTITY DEFAULT sends only the key,
        // the other columns as null: `old` is then the key alone.
        let old: Map<String, Value> = old
            .into_iter()
            .filter(|(name, value)| {
                !value.is_null() || relation.columns.iter().any(|(n, _, key)| n == name && *key)
            })
            .collect();
        out.insert("old".into(), Value::Object(old));
    }
    Value::Object(out)
}

// Type oids (pg_type.dat).
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

/// Largest integer a double holds exactly.
const MAX_SAFE: i64 = (1 << 53) - 1;

/// PostgreSQL's text form of a value of type `type_oid` as JSON: booleans
/// and numbers as JSON ones unless a double cannot hold them exactly (then
/// the text), `json`/`jsonb` as their value, timestamps as RFC 3339 (a
/// `timestamp` without time zone is taken as UTC), anything else as its
/// text. The sessions run with `DateStyle=ISO` and `TimeZone=UTC`.
pub(crate) fn to_json(text: &str, type_oid: u32) -> Value {
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => match text.parse::<i64>() {
            Ok(n) if (-MAX_SAFE..=MAX_SAFE).contains(&n) => Value::from(n),
            _ => Value::String(text.to_owned()),
        },
        FLOAT4 | FLOAT8 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(text.to_owned())),
            _ => Value::String(text.to_owned()),
        },
        NUMERIC => numeric(text),
        JSON | JSONB => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        TIMESTAMPTZ => Value::String(rfc3339(text, false)),
        TIMESTAMP => Value::String(rfc3339(text, true)),
        _ => Value::String(text.to_owned()),
    }
}

/// A `numeric` as a JSON number when a double holds it exactly (at most 15
/// significant digits), else as its text.
fn numeric(text: &str) -> Value {
    let digits = text.trim_start_matches('-');
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Value::String(text.to_owned()); // NaN, Infinity
    }
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if significant > 15 {
        return Value::String(text.to_owned());
    }
    if frac.is_empty() {
        if let Ok(n) = text.split('.').next().unwrap_or(text).parse::<i64>() {
            return Value::from(n);
        }
    }
    match text.parse::<f64>() {
        Ok(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        Err(_) => Value::String(text.to_owned()),
    }
}

/// `2024-05-01 12:00:00.5+00` (ISO DateStyle) as `2024-05-01T12:00:00.5+00:00`;
/// `utc`: no offset in the text, `Z` appended. `infinity` stays.
fn rfc3339(text: &str, utc: bool) -> String {
    if !text.as_bytes().first().is_some_and(u8::is_ascii_digit) || text.len() < 19 {
        return text.to_owned();
    }
    let mut out = text.replacen(' ', "T", 1);
    if utc {
        out.push('Z');
        return out;
    }
    // The offset: the last '+' or '-' after the time.
    if let Some(at) = out[19..].rfind(['+', '-']).map(|i| i + 19) {
        let offset = &out[at + 1..];
        let fixed = match offset.len() {
            2 => format!("{offset}:00"),
            _ => offset.to_owned(),
        };
        out = format!("{}{}", &out[..=at], fixed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_json_as_documented() {
        assert_eq!(to_json("t", BOOL), json!(true));
        assert_eq!(to_json("42", INT8), json!(42));
        assert_eq!(to_json("9007199254740993", INT8), json!("9007199254740993"));
        assert_eq!(to_json("12.50", NUMERIC), json!(12.5));
        assert_eq!(to_json("100", NUMERIC), json!(100));
        assert_eq!(
            to_json("1234567890.1234567890", NUMERIC),
            json!("1234567890.1234567890")
        );
        assert_eq!(to_json("NaN", NUMERIC), json!("NaN"));
        assert_eq!(to_json("{\"a\": [1]}", JSONB), json!({"a": [1]}));
        assert_eq!(
            to_json("2024-05-01 12:00:00.5+00", TIMESTAMPTZ),
            json!("2024-05-01T12:00:00.5+00:00")
        );
        assert_eq!(
            to_json("2024-05-01 12:00:00+05:30", TIMESTAMPTZ),
            json!("2024-05-01T12:00:00+05:30")
        );
        assert_eq!(
            to_json("2024-05-01 12:00:00", TIMESTAMP),
            json!("2024-05-01T12:00:00Z")
        );
        assert_eq!(to_json("infinity", TIMESTAMPTZ), json!("infinity"));
        assert_eq!(to_json("hello", 25), json!("hello"));
    }

    #[test]
    fn changes_decode_into_events() {
        let mut decoder = Decoder::default();
        let mut relation = vec![b'R'];
        relation.extend(16384u32.to_be_bytes());
        relation.extend(b"public\0orders\0");
        relation.push(b'd');
        relation.extend(2u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", INT4), (0, "status", 25)] {
            relation.push(flags);
            relation.extend(name.as_bytes());
            relation.push(0);
            relation.extend(oid.to_be_bytes());
            relation.extend((-1i32).to_be_bytes());
        }
        assert!(matches!(
            decoder.decode(&relation).unwrap(),
            Change::Relation
        ));
        let text = |s: &str| {
            let mut v = vec![b't'];
            v.extend((s.len() as u32).to_be_bytes());
            v.extend(s.as_bytes());
            v
        };
        let mut insert = vec![b'I'];
        insert.extend(16384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(2u16.to_be_bytes());
        insert.extend(text("7"));
        insert.extend(text("open"));
        let Change::Event(event) = decoder.decode(&insert).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            event,
            json!({"type": "insert", "table": "public.orders", "key": {"id": 7}, "row": {"id": 7, "status": "open"}})
        );
        let mut delete = vec![b'D'];
        delete.extend(16384u32.to_be_bytes());
        delete.push(b'K');
        delete.extend(2u16.to_be_bytes());
        delete.extend(text("7"));
        delete.push(b'n');
        let Change::Event(event) = decoder.decode(&delete).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            event,
            json!({"type": "delete", "table": "public.orders", "key": {"id": 7}, "old": {"id": 7}})
        );
    }
}
