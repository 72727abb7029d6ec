//! The projector process's quick look at a plugin's output: is it plain
//! patches and deletes of the plugin's own entities, and which keys do
//! they write?
//!
//! The process asks this of every event's output ([`super::child`]): a
//! plain output is passed on as text, unparsed, and the host parses it
//! once. Asked of serde (a borrowed struct with a `RawValue` for `data`),
//! the question took a quarter of the process's time: serde's generic
//! visitor walks the text a few bytes at a time. This scanner is written
//! by hand for the one shape the plugin API writes (compact
//! `[{"entity":..,"key":..,"op":"patch","data":{..}}]`) and checks it in
//! a single pass, validating `data` as JSON on the way, since the host
//! parses it later and must not meet text that is not.
//!
//! It answers only "plain" or "not sure": anything unusual (an escape in
//! a name, a `\u` escape, an exponent, deep nesting, an unknown field, a
//! delete with `data`) is left to the serde check, which gives the exact
//! answer (and the full parse after it the exact error). So a "plain"
//! from here is never wrong, and the only cost of its caution is speed.

use std::collections::HashSet;

use super::wire::key_hash;

/// Nesting this deep is left to serde (whose own limit is 128 levels).
const MAX_DEPTH: usize = 64;

/// Digits in one number beyond which serde decides (a number of more
/// digits can overflow an `f64`, which serde refuses).
const MAX_DIGITS: usize = 300;

/// If `text` is certainly a JSON array of plain patches (with an object
/// `data`) and deletes (without `data`) of entities in `owned`, each with
/// a non-empty key, appends the [`key_hash`] of each key it writes to
/// `keys` and returns true. False means "not sure": `keys` is as it was.
pub fn plain_keys(owned: &HashSet<String>, text: &str, keys: &mut Vec<u64>) -> bool {
    let before = keys.len();
    let plain = Scan {
        bytes: text.as_bytes(),
        at: 0,
    }
    .mutations(owned, keys)
    .is_some();
    if !plain {
        keys.truncate(before);
    }
    plain
}

/// A cursor over the text; every method returns `None` for "not sure".
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn mutations(&mut self, owned: &HashSet<String>, keys: &mut Vec<u64>) -> Option<()> {
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                self.mutation(owned, keys)?;
                match self.next_byte()? {
                    b',' => {}
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.skip_whitespace();
        (self.at == self.bytes.len()).then_some(())
    }

    fn mutation(&mut self, owned: &HashSet<String>, keys: &mut Vec<u64>) -> Option<()> {
        self.expect(b'{')?;
        let (mut entity, mut key, mut op, mut data) = (None, None, None, false);
        loop {
            let field = self.plain_string()?;
            self.expect(b':')?;
            let slot = match field {
                "entity" => &mut entity,
                "key" => &mut key,
                "op" => &mut op,
                "data" if !data => {
                    data = true;
                    self.skip_whitespace();
                    // Only an object: a patch's data (a delete's is left to serde).
                    if self.peek() != Some(b'{') {
                        return None;
                    }
                    self.value(1)?;
                    match self.next_byte()? {
                        b',' => continue,
                        b'}' => break,
                        _ => return None,
                    }
                }
                _ => return None,
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(self.plain_string()?);
            match self.next_byte()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        let (entity, key) = (entity?, key?);
        let plain_op = match op? {
            "patch" => data,
            "delete" => !data,
            _ => false,
        };
        (plain_op && !key.is_empty() && owned.contains(entity)).then(|| {
            keys.push(key_hash(entity, key));
        })
    }

    /// A string without escapes or control characters, as it is.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        // The text is a `&str` and both ends are ASCII quotes.
        std::str::from_utf8(&self.bytes[start..self.at - 1]).ok()
    }

    /// Skips one JSON value, checking it is valid.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.next_byte()? {
            b'{' => {
                if self.peek_after_whitespace() == Some(b'}') {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_whitespace();
                    if self.next_byte_raw()? != b'"' {
                        return None;
                    }
                    self.string_rest()?;
                    self.expect(b':')?;
                    self.value(depth + 1)?;
                    match self.next_byte()? {
                        b',' => {}
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if self.peek_after_whitespace() == Some(b']') {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.next_byte()? {
                        b',' => {}
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'"' => self.string_rest(),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            b'-' => self.number_rest(self.at),
            b'0'..=b'9' => self.number_rest(self.at - 1),
            _ => None,
        }
    }

    /// The rest of a string after its opening quote.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    match *self.bytes.get(self.at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        _ => return None, // `\u` (surrogates) and bad escapes
                    }
                    self.at += 2;
                }
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    /// The rest of a number whose digits start at `digits` (after any
    /// minus sign): an integer or a decimal fraction, no exponent.
    fn number_rest(&mut self, digits: usize) -> Option<()> {
        self.at = digits;
        match *self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let fraction = self.at;
            self.skip_digits();
            if self.at == fraction {
                return None;
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E' | b'0'..=b'9'))
            || self.at - digits > MAX_DIGITS
        {
            return None;
        }
        Some(())
    }

    fn skip_digits(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at + rest.len();
        (self.bytes.get(self.at..end)? == rest).then(|| self.at = end)
    }

    fn skip_whitespace(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn peek_after_whitespace(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.peek()
    }

    /// The next byte after any whitespace, consumed.
    fn next_byte(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.next_byte_raw()
    }

    fn next_byte_raw(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vista_plugin_api::Mutation;

    fn owned() -> HashSet<String> {
        ["Tick".to_string(), "Token".to_string()].into()
    }

    fn scan(text: &str) -> Option<Vec<u64>> {
        let mut keys = vec![7];
        let plain = plain_keys(&owned(), text, &mut keys);
        assert_eq!(keys[0], 7, "keys already there stay");
        if plain {
            Some(keys[1..].to_vec())
        } else {
            assert_eq!(keys, [7], "nothing is added when not sure");
            None
        }
    }

    #[test]
    fn the_plugin_apis_own_output_is_plain_with_its_keys() {
        let mutations = vec![
            Mutation::patch(
                "Tick",
                "k1",
                json!({"id": "k1", "t": 17, "v": -2.5, "ok": true, "no": null,
                       "nested": {"a": [1, "x\"y\\z\n", {}, []], "b": 0}}),
            ),
            Mutation::delete("Token", "m1"),
        ];
        let text = serde_json::to_string(&mutations).unwrap();
        assert_eq!(
            scan(&text),
            Some(vec![key_hash("Tick", "k1"), key_hash("Token", "m1")])
        );
        assert_eq!(scan("[]"), Some(vec![]));
        assert_eq!(
            scan(" [ { \"op\" : \"patch\" , \"data\" : { } , \"key\" : \"k\" , \"entity\" : \"Tick\" } ] "),
            Some(vec![key_hash("Tick", "k")])
        );
    }

    #[test]
    fn what_is_not_certainly_plain_is_left_to_serde() {
        let unsure = [
            // not the plugin's entity, an empty key, other ops and fields
            r#"[{"entity":"Game","key":"k","op":"patch","data":{}}]"#,
            r#"[{"entity":"Tick","key":"","op":"patch","data":{}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"replace","data":{}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{},"append":["a"]}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch"}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":[1]}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":null}]"#,
            r#"[{"entity":"Tick","key":"k","op":"delete","data":{}}]"#,
            r#"[{"entity":"Tick","key":"k","key":"j","op":"delete"}]"#,
            r#"[{"entity":"Tick","op":"delete"}]"#,
            // escapes in names, numbers serde may refuse, deep nesting
            r#"[{"entity":"Ti\u0063k","key":"k","op":"delete"}]"#,
            r#"[{"entity":"Tick","key":"k\n","op":"delete"}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"s":"\ud800"}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":1e999}}]"#,
            // not JSON
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":01}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":1.}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":-}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":tru}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":1,}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n" 1}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"n":[1 2]}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"s":"a	b"}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"s":"a\qb"}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{"s":"ab}}]"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{}}"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{}}] x"#,
            r#"[{"entity":"Tick","key":"k","op":"patch","data":{}},]"#,
            "",
        ];
        for text in unsure {
            assert_eq!(scan(text), None, "{text}");
        }
        let nested = |depth: usize| {
            format!(
                r#"[{{"entity":"Tick","key":"k","op":"patch","data":{{"a":{}1{}}}}}]"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert_eq!(scan(&nested(MAX_DEPTH)), None);
        assert_eq!(
            scan(&nested(MAX_DEPTH - 2)),
            Some(vec![key_hash("Tick", "k")])
        );
    }

    /// Every text this scanner calls plain parses as the mutations it
    /// says: checked against serde on variations of valid and broken
    /// outputs (each prefix of a valid text, and each byte replaced).
    #[test]
    fn whatever_it_calls_plain_serde_parses_to_plain_mutations_of_those_keys() {
        let text = r#"[{"entity":"Tick","key":"k1","op":"patch","data":{"id":"k1","t":1733,"v":-0.25,"a":[true,false,null,{"x":"y\"z"}]}},{"entity":"Token","key":"m","op":"delete"}]"#;
        let mut variants: Vec<String> =
            (0..text.len()).map(|end| text[..end].to_string()).collect();
        for at in 0..text.len() {
            for byte in [
                b'"', b'{', b'}', b'[', b']', b',', b':', b'1', b'.', b'-', b'\\', b'x', b' ',
            ] {
                let mut bytes = text.as_bytes().to_vec();
                bytes[at] = byte;
                variants.extend(String::from_utf8(bytes).ok());
            }
        }
        let mut plain_count = 0;
        for variant in &variants {
            if let Some(keys) = scan(variant) {
                plain_count += 1;
                let parsed: Vec<Mutation> = serde_json::from_str(variant)
                    .unwrap_or_else(|err| panic!("called plain but serde says {err}: {variant}"));
                let expected: Vec<u64> =
                    parsed.iter().map(|m| key_hash(&m.entity, &m.key)).collect();
                assert_eq!(keys, expected, "{variant}");
            }
        }
        assert!(
            plain_count > 10,
            "the valid variants are plain: {plain_count}"
        );
    }
}
