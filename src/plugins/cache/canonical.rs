//! The canonical form of a request body, the part of the cache key that
//! makes JSON key order and whitespace not matter.
//!
//! The body is read into a tree that borrows its strings from the body (a
//! string is copied only when it has escapes), each object's members are
//! sorted by key (the last of duplicate keys wins, as in `serde_json`'s
//! map), and the tree is written back as compact JSON. The output is the
//! bytes `serde_json` writes for the same body parsed into a `Value`, which
//! the tests hold it to; building that `Value` (a `String` per key and per
//! string, a map node per member) cost more than the rest of a cache hit.
//!
//! One exception, on purpose: with serde_json's `raw_value` feature (on in
//! this crate), a `Value` reads an object whose first key is
//! `$serde_json::private::RawValue` as the JSON in that key's string, so two
//! different bodies could share a key. Here it is an ordinary key.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use std::borrow::Cow;
use std::fmt;

/// The canonical request: sorted keys, compact, without the fields that do
/// not change the answer (`stream`, `stream_options`) and without `model`
/// (the key names the upstream model itself). `None`: not a JSON object.
pub(super) fn canonical(body: &[u8]) -> Option<Vec<u8>> {
    let J::Obj(mut members) = serde_json::from_slice::<J>(body).ok()? else {
        return None;
    };
    members.retain(|(k, _)| !matches!(&**k, "stream" | "stream_options" | "model"));
    let mut out = Vec::with_capacity(body.len());
    write_obj(&mut members, &mut out);
    Some(out)
}

/// A JSON value borrowing from the body it was read from.
enum J<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
}

fn write(j: &mut J, out: &mut Vec<u8>) {
    match j {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        // Neither can fail writing to a Vec.
        J::Num(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        J::Str(s) => {
            let _ = serde_json::to_writer(&mut *out, &**s);
        }
        J::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter_mut().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        J::Obj(members) => write_obj(members, out),
    }
}

fn write_obj(members: &mut Vec<(Cow<str>, J)>, out: &mut Vec<u8>) {
    // Stable, so that among equal keys the last read stays last: it is the
    // one kept.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'{');
    let mut first = true;
    for i in 0..members.len() {
        if members.get(i + 1).is_some_and(|next| next.0 == members[i].0) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let (k, v) = &mut members[i];
        let _ = serde_json::to_writer(&mut *out, &**k);
        out.push(b':');
        write(v, out);
    }
    out.push(b'}');
}

impl<'de> Deserialize<'de> for J<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<J<'de>, E> {
        Ok(J::Num(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<J<'de>, E> {
        Ok(J::Num(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<J<'de>, E> {
        // JSON has no NaN or infinity; `serde_json::Value` makes them null.
        Ok(Number::from_f64(n).map_or(J::Null, J::Num))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<J>()? {
            let J::Str(key) = key else {
                return Err(serde::de::Error::custom("object key is not a string"));
            };
            members.push((key, map.next_value()?));
        }
        Ok(J::Obj(members))
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use proptest::prelude::*;

    /// What the cache keyed on before: `serde_json`'s own round trip.
    fn by_value(body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object_mut()?;
        obj.remove("stream");
        obj.remove("stream_options");
        obj.remove("model");
        serde_json::to_vec(&v).ok()
    }

    #[test]
    fn equals_serde_json_round_trip() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            br#"{ "temperature": 0.0, "stream": true, "stream_options": {"include_usage": true},
                  "messages": [ {"content": "h\u00e9 \"q\" \\ \n\t\u0001 \ud83d\ude00", "role": "user"} ], "model": "alias" }"#,
            br#"{"b":1,"a":{"z":[1,-2,3.5e10,1e300,null,true,false,"s",[],{}],"y":{}},"a":2,"c":[{"k":1,"k":2}]}"#,
            br#"{"n":18446744073709551615,"m":-9223372036854775808,"f":0.1,"g":-0.0,"e":1E-7}"#,
            b"{\"\\u0061\":\"escaped key\",\"a\":\"plain key\",\"\xc3\xa9\":\"unicode key\",\"Z\":\"upper\"}",
            br#"{}"#,
        ];
        for b in bodies {
            assert_eq!(canonical(b), by_value(b), "{}", String::from_utf8_lossy(b));
            assert!(canonical(b).is_some());
        }
    }

    /// JSON text of random values: nested, keys repeated and unordered,
    /// strings with escapes and non-ASCII, numbers of every kind.
    fn json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|f| format!("{f:e}")),
            "[a-c\\\"é\u{1F600}\n]{0,4}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u0041\ud83d\ude00""#.to_string()),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(" , "))),
                prop::collection::vec(("[a-d]{1,2}|model|stream", inner), 0..6).prop_map(|m| {
                    let m: Vec<String> = m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{ {} }}", m.join(","))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn equals_serde_json_round_trip_on_random_bodies(members in prop::collection::vec(("[a-d]{1,2}|model|stream", json()), 0..6)) {
            let m: Vec<String> = members.into_iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let body = format!("{{{}}}", m.join(", "));
            prop_assert!(canonical(body.as_bytes()).is_some(), "{}", body);
            prop_assert_eq!(canonical(body.as_bytes()), by_value(body.as_bytes()));
        }
    }

    #[test]
    fn serde_json_raw_value_marker_is_an_ordinary_key() {
        let marked = br#"{"messages":[{"$serde_json::private::RawValue":"{\"a\":1}"}]}"#;
        let plain = br#"{"messages":[{"a":1}]}"#;
        // The Value round trip took the marked object for its string's JSON.
        assert_eq!(by_value(marked), by_value(plain));
        assert_eq!(canonical(marked).unwrap(), marked.to_vec());
        assert_ne!(canonical(marked), canonical(plain));
    }

    #[test]
    fn not_an_object_or_not_json_is_none() {
        for b in [
            &b"[1,2]"[..],
            b"\"s\"",
            b"3",
            b"null",
            b"{\"a\":",
            b"{\"a\":1}x",
            b"",
            b"{\"a\":1,}",
            b"{\"a\":1e400}",
        ] {
            assert_eq!(canonical(b), None, "{}", String::from_utf8_lossy(b));
            assert_eq!(by_value(b), None);
        }
    }
}
