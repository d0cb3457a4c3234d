//! The LLM wire format: the OpenAI request head (model, stream, max_tokens),
//! rewriting the model in place, and reading `usage` from JSON and SSE answers.

use bytes::{Bytes, BytesMut};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::HashSet;

pub mod anthropic;
pub mod assemble;
pub mod sse;
pub mod tokens;
pub mod usage;

pub use assemble::{assemble_stream, replay_as_sse};
pub use usage::{usage_of_json, usage_of_object};

/// What weir needs from an OpenAI request body, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub model: String,
    /// Byte range of the model's JSON string in the body (quotes included).
    pub model_span: std::ops::Range<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The body has a top-level `stream_options` (any value, `null` too).
    pub has_stream_options: bool,
    pub max_tokens: Option<u64>,
    /// Choices asked for (`n`, 1 when absent): completion tokens are billed per choice.
    pub n: u64,
    /// Byte range of the top-level `messages` value in the body, if any: the
    /// prompt is counted from it without parsing the body again.
    pub messages_span: Option<std::ops::Range<usize>>,
}

/// The largest `max_tokens` / `max_completion_tokens` weir forwards. No model
/// completes anywhere near this many tokens; larger values are mistakes or
/// attempts to overflow token arithmetic.
pub const MAX_TOKENS_LIMIT: u64 = 1 << 24;
/// The largest `n` weir forwards (OpenAI's own limit).
pub const MAX_N: u64 = 128;

/// Why a request body is refused: a client-facing message and, when one
/// field is to blame, its name (the envelope's `param`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub message: String,
    pub param: Option<&'static str>,
    /// A top-level key appears twice (refused on every path weir inspects).
    pub duplicate: bool,
}

impl HeadError {
    fn new(message: impl Into<String>) -> HeadError {
        HeadError {
            message: message.into(),
            param: None,
            duplicate: false,
        }
    }
    fn at(param: &'static str, message: impl Into<String>) -> HeadError {
        HeadError {
            message: message.into(),
            param: Some(param),
            duplicate: false,
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The fields weir reads, as raw JSON borrowed from the body, plus the first
/// top-level key seen twice. One pass over the body: every other value is
/// skipped without being built.
#[derive(Default)]
struct RawHead<'a> {
    model: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    n: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    duplicate: Option<String>,
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawHead<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHead<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHead<'de>, A::Error> {
                let mut head = RawHead::default();
                // serde_json keeps the last of duplicate keys while a provider
                // may keep the first: weir would route one model and bill
                // another. Every top-level key is remembered (borrowed, so
                // no copy of the body) to refuse any duplicate: inline and
                // scanned for the usual handful, hashed past that.
                let mut few: SmallVec<[Cow<'de, str>; 16]> = SmallVec::new();
                let mut many: Option<HashSet<Cow<'de, str>>> = None;
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let slot = match k.as_ref() {
                        "model" => Some(&mut head.model),
                        "stream" => Some(&mut head.stream),
                        "stream_options" => Some(&mut head.stream_options),
                        "max_tokens" => Some(&mut head.max_tokens),
                        "max_completion_tokens" => Some(&mut head.max_completion_tokens),
                        "n" => Some(&mut head.n),
                        // Kept as a span (skipped as any other value is).
                        "messages" => Some(&mut head.messages),
                        _ => None,
                    };
                    match slot {
                        Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    if head.duplicate.is_some() {
                        continue;
                    }
                    let repeated = match &mut many {
                        Some(set) => !set.insert(k.clone()),
                        None if few.contains(&k) => true,
                        None => {
                            few.push(k.clone());
                            if few.len() > 32 {
                                many = Some(few.drain(..).collect());
                            }
                            false
                        }
                    };
                    if repeated {
                        head.duplicate = Some(k.into_owned());
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V)
    }
}

/// A token count or choice count: a non-negative integer up to `max`; `null` is absent.
fn count(raw: Option<&RawValue>, param: &'static str, max: u64) -> Result<Option<u64>, HeadError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    match serde_json::from_str::<u64>(raw.get()) {
        Ok(v) if v <= max => Ok(Some(v)),
        _ => Err(HeadError::at(
            param,
            format!("`{param}` must be an integer from 0 to {max}, got {}", clip(raw.get())),
        )),
    }
}

/// A value quoted in an error, cut short.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parse the head of a JSON request body. Errors are client-facing; a
/// duplicate top-level key, a non-string model, or a negative or absurd
/// `max_tokens`, `max_completion_tokens` or `n` is refused.
pub fn parse_head(body: &[u8]) -> Result<RequestHead, HeadError> {
    if body.is_empty() {
        return Err(HeadError::new("request body is empty; expected a JSON object"));
    }
    // serde skips the fields weir ignores without checking their UTF-8 or
    // depth: refuse here what the provider would refuse after taking a slot.
    if std::str::from_utf8(body).is_err() {
        return Err(HeadError::new("request body is not valid JSON: it is not UTF-8"));
    }
    if too_deep(body) {
        return Err(HeadError::new(format!(
            "request body is not valid JSON: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let head: RawHead = serde_json::from_slice(body).map_err(|e| {
        HeadError::new(if e.classify() == serde_json::error::Category::Data {
            format!("request body is not a valid OpenAI request: {e}")
        } else {
            format!("request body is not valid JSON: {e}")
        })
    })?;
    if let Some(k) = head.duplicate {
        let param = [
            "model",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "n",
        ]
        .into_iter()
        .find(|p| *p == k);
        return Err(HeadError {
            message: format!("request body has the key `{}` more than once", clip(&k)),
            param,
            duplicate: true,
        });
    }
    let raw = head
        .model
        .ok_or_else(|| HeadError::at("model", "request body has no `model`"))?;
    let model: String =
        serde_json::from_str(raw.get()).map_err(|_| HeadError::at("model", "`model` must be a string"))?;
    if model.is_empty() {
        return Err(HeadError::at("model", "`model` is empty"));
    }
    let stream = match head.stream {
        None => None,
        Some(r) => serde_json::from_str::<Option<bool>>(r.get())
            .map_err(|_| HeadError::at("stream", "`stream` must be a boolean"))?,
    };
    let options = match head.stream_options {
        None => None,
        Some(r) => serde_json::from_str::<Option<StreamOptions>>(r.get())
            .map_err(|e| HeadError::at("stream_options", format!("`stream_options` is invalid: {e}")))?,
    };
    let max_tokens = count(head.max_tokens, "max_tokens", MAX_TOKENS_LIMIT)?;
    let max_completion_tokens = count(head.max_completion_tokens, "max_completion_tokens", MAX_TOKENS_LIMIT)?;
    let n = count(head.n, "n", MAX_N)?;
    if n == Some(0) {
        return Err(HeadError::at("n", "`n` must be at least 1"));
    }
    // Where a raw value lies in the body (it borrows from it).
    let span_of = |r: &RawValue| {
        let at = r.get().as_ptr() as usize - body.as_ptr() as usize;
        at..at + r.get().len()
    };
    Ok(RequestHead {
        messages_span: head.messages.map(span_of),
        model,
        model_span: span_of(raw),
        stream: stream.unwrap_or(false),
        include_usage: options.and_then(|o| o.include_usage).unwrap_or(false),
        has_stream_options: head.stream_options.is_some(),
        max_tokens: max_completion_tokens.or(max_tokens),
        n: n.unwrap_or(1),
    })
}

/// serde_json's own recursion limit, which providers parsing the whole body hit.
const MAX_DEPTH: usize = 128;

/// Whether arrays and objects nest deeper than `MAX_DEPTH` (brackets inside
/// strings don't count). One pass, no allocation.
fn too_deep(body: &[u8]) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The body with the model's value replaced, every other byte unchanged.
pub fn rewrite_model(body: &Bytes, head: &RequestHead, new_model: &str) -> Bytes {
    if new_model == head.model {
        return body.clone();
    }
    let quoted = serde_json::to_string(new_model).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..head.model_span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[head.model_span.end..]);
    out.freeze()
}

/// Token counts a provider reported (read from each API's shape by
/// [`usage::UsageReport`]; deserializing one requires at least one count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Of `prompt_tokens`, those written to the provider's prompt cache.
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Both counts added (saturating: the numbers are the provider's, and may be absurd).
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(o.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(o.completion_tokens),
            cached_tokens: self.cached_tokens.saturating_add(o.cached_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_add(o.cache_write_tokens),
        }
    }

    pub fn total(self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The body with `stream_options.include_usage` set, so the provider reports
/// usage on a stream, and its head. Inserted in place when the client sent no
/// `stream_options` (the head follows without a parse: only the model moved);
/// otherwise the JSON is rewritten and parsed again.
pub fn with_stream_usage(body: &Bytes, head: &RequestHead) -> Result<(Bytes, RequestHead), HeadError> {
    const INSERT: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if head.include_usage {
        return Ok((body.clone(), head.clone()));
    }
    if !head.has_stream_options {
        // parse_head accepted the body: it is an object, `{` comes before the model.
        if let Some(open) = body.iter().position(|b| *b == b'{') {
            let mut out = BytesMut::with_capacity(body.len() + INSERT.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(INSERT);
            out.extend_from_slice(&body[open + 1..]);
            let moved = |s: &std::ops::Range<usize>| s.start + INSERT.len()..s.end + INSERT.len();
            let head = RequestHead {
                model_span: moved(&head.model_span),
                messages_span: head.messages_span.as_ref().map(moved),
                include_usage: true,
                has_stream_options: true,
                ..head.clone()
            };
            return Ok((out.freeze(), head));
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            let out = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            let head = parse_head(&out)?;
            Ok((out, head))
        }
        Err(_) => Ok((body.clone(), head.clone())),
    }
}

/// The body that asks a provider to continue `text`, an answer another
/// provider streamed in part (`pieces` content chunks): the original
/// messages plus an assistant message holding `text`, for `model`, streamed
/// with usage, `max_tokens` lowered by what was already generated. `None`
/// when the body is not a chat request.
pub fn prefill_body(body: &[u8], model: &str, text: &str, pieces: u64) -> Option<Bytes> {
    use serde_json::{json, Value};
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    o.get_mut("messages")?
        .as_array_mut()?
        .push(json!({"role": "assistant", "content": text}));
    o.insert("model".into(), json!(model));
    o.insert("stream".into(), json!(true));
    o.insert("stream_options".into(), json!({"include_usage": true}));
    o.remove("n");
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(max) = o.get(key).and_then(Value::as_u64) {
            o.insert(key.into(), json!(max.saturating_sub(pieces).max(1)));
        }
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_rewrite_keep_other_bytes() {
        let body = Bytes::from_static(
            br#"{ "messages": [{"role":"user","content":"hi"}],  "model" : "fast", "stream":true, "max_tokens": 7 }"#,
        );
        let h = parse_head(&body).unwrap();
        assert_eq!(h.model, "fast");
        assert!(h.stream);
        assert_eq!(h.max_tokens, Some(7));
        let out = rewrite_model(&body, &h, "gpt-4o-mini");
        let expected = String::from_utf8(body.to_vec())
            .unwrap()
            .replace("\"fast\"", "\"gpt-4o-mini\"");
        assert_eq!(out, Bytes::from(expected));
    }

    #[test]
    fn head_errors() {
        assert!(parse_head(b"{not json").unwrap_err().message.contains("not valid JSON"));
        assert!(parse_head(br#"{"messages":[]}"#)
            .unwrap_err()
            .message
            .contains("no `model`"));
        assert!(parse_head(br#"{"model": 3}"#)
            .unwrap_err()
            .message
            .contains("must be a string"));
        assert!(parse_head(b"[1,2]").is_err());
        assert!(parse_head(b"").is_err());
        let bad_utf8 = b"{\"messages\":\"\xff\",\"model\":\"m\"}";
        assert!(parse_head(bad_utf8).unwrap_err().message.contains("not UTF-8"));
        let deep = |n| format!("{{\"m\":{}{},\"model\":\"m\"}}", "[".repeat(n), "]".repeat(n));
        assert!(parse_head(deep(127).as_bytes()).is_ok());
        assert!(parse_head(deep(128).as_bytes())
            .unwrap_err()
            .message
            .contains("deeper than 128"));
        // Brackets and escaped quotes inside strings are not nesting.
        let in_str = format!(r#"{{"x":"\"{}","model":"m"}}"#, "[".repeat(500));
        assert!(parse_head(in_str.as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_keys_refused() {
        for (body, key) in [
            (&br#"{"model":"a","model":"b"}"#[..], "model"),
            (br#"{"model":"a","mod\u0065l":"b"}"#, "model"),
            (br#"{"model":"a","x":1,"max_tokens":1,"x":2}"#, "x"),
            (br#"{"model":"a","stream":true,"stream":false}"#, "stream"),
        ] {
            let e = parse_head(body).unwrap_err();
            assert!(e.duplicate && e.message.contains(&format!("`{key}`")), "{e:?}");
            assert_eq!(e.param, Some(key).filter(|k| *k != "x"));
        }
        // Past the inline few, still found.
        let mut many = String::from(r#"{"model":"a""#);
        for i in 0..100 {
            many.push_str(&format!(r#","k{i}":{i}"#));
        }
        assert!(parse_head(format!("{many}}}").as_bytes()).is_ok());
        let e = parse_head(format!(r#"{many},"k7":1}}"#).as_bytes()).unwrap_err();
        assert!(e.duplicate && e.message.contains("`k7`"), "{e:?}");
        let e = parse_head(format!(r#"{many},"k70":1}}"#).as_bytes()).unwrap_err();
        assert!(e.duplicate && e.message.contains("`k70`"), "{e:?}");
        // Nested duplicates are the provider's business; top-level ones only.
        assert!(parse_head(br#"{"model":"a","messages":[{"x":1,"x":2}]}"#).is_ok());
    }

    #[test]
    fn counts_checked_with_param() {
        for (body, param) in [
            (&br#"{"model":"a","max_tokens":-1}"#[..], "max_tokens"),
            (br#"{"model":"a","max_tokens":18446744073709551615}"#, "max_tokens"),
            (br#"{"model":"a","max_tokens":1e30}"#, "max_tokens"),
            (br#"{"model":"a","max_tokens":"5"}"#, "max_tokens"),
            (br#"{"model":"a","max_completion_tokens":-5}"#, "max_completion_tokens"),
            (
                br#"{"model":"a","max_completion_tokens":99999999999}"#,
                "max_completion_tokens",
            ),
            (br#"{"model":"a","n":0}"#, "n"),
            (br#"{"model":"a","n":-1}"#, "n"),
            (br#"{"model":"a","n":1000}"#, "n"),
            (br#"{"model":"a","stream":"yes"}"#, "stream"),
            (br#"{"model":7}"#, "model"),
            (br#"{"max_tokens":7}"#, "model"),
        ] {
            let e = parse_head(body).unwrap_err();
            assert_eq!(e.param, Some(param), "{}: {e:?}", String::from_utf8_lossy(body));
        }
        let h = parse_head(br#"{"model":"a","max_tokens":16777216,"n":128,"max_completion_tokens":null}"#).unwrap();
        assert_eq!((h.max_tokens, h.n), (Some(MAX_TOKENS_LIMIT), 128));
        assert_eq!(parse_head(br#"{"model":"a"}"#).unwrap().n, 1);
    }

    #[test]
    fn escaped_model_rewrites() {
        let body = Bytes::from_static(br#"{"model":"a\"b"}"#);
        let h = parse_head(&body).unwrap();
        assert_eq!(h.model, "a\"b");
        assert_eq!(rewrite_model(&body, &h, "x"), Bytes::from_static(br#"{"model":"x"}"#));
    }

    #[test]
    fn stream_usage_inserted_in_place() {
        let body = Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let h = parse_head(&body).unwrap();
        let (out, head) = with_stream_usage(&body, &h).unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        let h2 = parse_head(&out).unwrap();
        assert!(h2.include_usage);
        assert_eq!(head, h2, "the head given back is the body's");
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#);
        let (out, head) = with_stream_usage(&body, &parse_head(&body).unwrap()).unwrap();
        assert!(parse_head(&out).unwrap().include_usage);
        assert_eq!(head, parse_head(&out).unwrap());
    }

    #[test]
    fn prefill_appends_the_text_so_far() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":60,"n":1}"#;
        let out = prefill_body(body, "up-m", "tok0 tok1", 2).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "up-m");
        assert_eq!(
            v["messages"][1],
            serde_json::json!({"role": "assistant", "content": "tok0 tok1"})
        );
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 58);
        assert!(v.get("n").is_none());
        assert_eq!(prefill_body(br#"{"model":"m","prompt":"x"}"#, "m", "t", 1), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A short string of any characters (cheaper than `any::<String>()`).
    fn text() -> impl Strategy<Value = String> {
        vec(any::<char>(), 0..10).prop_map(String::from_iter)
    }

    /// A JSON object's text built from keys weir reads (and others), values of
    /// every shape (valid or not for that key), and odd whitespace.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("model".to_string()),
            Just("stream".to_string()),
            Just("stream_options".to_string()),
            Just("max_tokens".to_string()),
            Just("max_completion_tokens".to_string()),
            Just("n".to_string()),
            Just("mod\\u0065l".to_string()),
            text(),
        ];
        let value = prop_oneof![
            text().prop_map(|s| serde_json::to_string(&s).unwrap()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just(r#"{"include_usage":true}"#.to_string()),
            Just(r#"[{"role":"user","content":"hi"}]"#.to_string()),
        ];
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t ")];
        (vec((key, value, ws.clone()), 0..6), ws).prop_map(|(fields, ws)| {
            let inner: Vec<String> = fields
                .iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            format!("{{{ws}{}}}", inner.join(",")).into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000.max(ProptestConfig::default().cases)))]

        #[test]
        fn parse_head_never_panics_on_bytes(b in vec(any::<u8>(), 0..200)) {
            let _ = parse_head(&b);
        }

        #[test]
        fn parse_head_never_panics_on_near_json(mut b in body(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
            let _ = parse_head(&b);
            // And with one byte changed.
            if !b.is_empty() {
                let i = cut.index(b.len());
                b[i] = junk;
                let _ = parse_head(&b);
            }
        }

        #[test]
        fn rewrite_keeps_every_other_byte(b in body(), new_model in text()) {
            let Ok(head) = parse_head(&b) else { return Ok(()) };
            let body = Bytes::from(b);
            let out = rewrite_model(&body, &head, &new_model);
            let (start, end) = (head.model_span.start, head.model_span.end);
            let tail = body.len() - end;
            prop_assert_eq!(&out[..start], &body[..start]);
            prop_assert_eq!(&out[out.len() - tail..], &body[end..]);
            let value: String = serde_json::from_slice(&out[start..out.len() - tail]).unwrap();
            prop_assert_eq!(&value, &new_model);
            if !new_model.is_empty() {
                let again = parse_head(&out).unwrap();
                prop_assert_eq!(again.model, new_model);
                prop_assert_eq!(again.max_tokens, head.max_tokens);
                prop_assert_eq!(again.n, head.n);
            }
        }

        #[test]
        fn counts_are_bounded_or_refused(b in body()) {
            if let Ok(h) = parse_head(&b) {
                prop_assert!(h.max_tokens.unwrap_or(0) <= MAX_TOKENS_LIMIT);
                prop_assert!((1..=MAX_N).contains(&h.n));
            }
        }
    }
}
