//! The LLM wire format: the OpenAI request head (model, stream, max_tokens),
//! rewriting the model in place, and reading `usage` from JSON and SSE answers.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What weir needs from an OpenAI request body, parsed once.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub model: String,
    /// Byte range of the model's JSON string in the body (quotes included).
    pub model_span: std::ops::Range<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parse the head of a JSON request body. Errors are client-facing messages.
pub fn parse_head(body: &[u8]) -> Result<RequestHead, String> {
    if body.is_empty() {
        return Err("request body is empty; expected a JSON object".into());
    }
    // serde skips the fields weir ignores without checking their UTF-8 or
    // depth: refuse here what the provider would refuse after taking a slot.
    if std::str::from_utf8(body).is_err() {
        return Err("request body is not valid JSON: it is not UTF-8".into());
    }
    if too_deep(body) {
        return Err(format!(
            "request body is not valid JSON: nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            format!("request body is not a valid OpenAI request: {e}")
        } else {
            format!("request body is not valid JSON: {e}")
        }
    })?;
    let raw = head.model.ok_or("request body has no `model`")?;
    let model: String = serde_json::from_str(raw.get()).map_err(|_| "`model` must be a string")?;
    if model.is_empty() {
        return Err("`model` is empty".into());
    }
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    Ok(RequestHead {
        model,
        model_span: start..start + raw.get().len(),
        stream: head.stream.unwrap_or(false),
        include_usage: head.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        max_tokens: head.max_completion_tokens.or(head.max_tokens),
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

/// Token counts a provider reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// `usage` of a complete JSON answer.
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// Finds `usage` in a server-sent event stream fed chunk by chunk. Keeps only
/// the unfinished tail line, so memory stays bounded whatever the stream's length.
#[derive(Debug, Default)]
pub struct SseUsageScanner {
    partial: Vec<u8>,
    pub usage: Option<Usage>,
}

/// Lines longer than this are not usage lines worth buffering.
const MAX_SSE_LINE: usize = 64 * 1024;

impl SseUsageScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let line_end = &rest[..nl];
            if self.partial.is_empty() {
                self.line(line_end);
            } else {
                self.partial.extend_from_slice(line_end);
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
                self.partial = line;
                self.partial.clear();
            }
            rest = &rest[nl + 1..];
        }
        if self.partial.len() + rest.len() <= MAX_SSE_LINE {
            self.partial.extend_from_slice(rest);
        } else {
            self.partial.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Cheap filter before parsing: only the usage chunk mentions it.
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return;
        }
        if let Some(u) = usage_of_json(data.trim_ascii()) {
            self.usage = Some(u);
        }
    }
}

/// The body with `stream_options.include_usage` set, so the provider reports
/// usage on a stream. Inserted in place when the client sent no
/// `stream_options`; otherwise the JSON is rewritten.
pub fn with_stream_usage(body: &Bytes, head: &RequestHead) -> Bytes {
    if head.include_usage {
        return body.clone();
    }
    #[derive(Deserialize)]
    struct HasOptions {
        #[serde(default)]
        stream_options: Option<serde::de::IgnoredAny>,
    }
    let has_options = serde_json::from_slice::<HasOptions>(body)
        .map(|h| h.stream_options.is_some())
        .unwrap_or(true);
    if !has_options {
        if let Some(open) = body.iter().position(|b| *b == b'{') {
            let mut out = BytesMut::with_capacity(body.len() + 48);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            return out.freeze();
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        Err(_) => body.clone(),
    }
}

/// Removes the usage-only event (`"choices":[]` with `usage`) from an SSE
/// stream, for clients that did not ask for it. Holds back at most one
/// unfinished event.
#[derive(Debug, Default)]
pub struct UsageChunkStripper {
    partial: Vec<u8>,
}

impl UsageChunkStripper {
    /// Whole events of `chunk` (plus what was held back), usage event removed.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        self.partial.extend_from_slice(chunk);
        let Some(last_end) = find_last(&self.partial, b"\n\n") else {
            return Bytes::new();
        };
        let complete: Vec<u8> = self.partial.drain(..last_end + 2).collect();
        let mut out = BytesMut::with_capacity(complete.len());
        for event in complete.split_inclusive_events() {
            let is_usage_only =
                find_last(event, b"\"choices\":[]").is_some() && find_last(event, b"\"usage\":{").is_some();
            if !is_usage_only {
                out.extend_from_slice(event);
            }
        }
        out.freeze()
    }

    /// Whatever is held back at the end of the stream.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.partial))
    }
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

trait SplitEvents {
    fn split_inclusive_events(&self) -> Vec<&[u8]>;
}

impl SplitEvents for Vec<u8> {
    /// Split after each blank line (`\n\n`), keeping the separator.
    fn split_inclusive_events(&self) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i + 1 < self.len() {
            if self[i] == b'\n' && self[i + 1] == b'\n' {
                out.push(&self[start..i + 2]);
                start = i + 2;
                i += 2;
            } else {
                i += 1;
            }
        }
        if start < self.len() {
            out.push(&self[start..]);
        }
        out
    }
}

/// Rebuild a complete (non-streaming) answer from a finished SSE stream:
/// content and tool-call deltas joined per choice, with `usage` when present.
/// `None` when the stream did not end with `[DONE]` (cut off) or holds no chunk.
pub fn assemble_stream(stream: &[u8]) -> Option<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let text = std::str::from_utf8(stream).ok()?;
    let mut done = false;
    let mut first: Option<Value> = None;
    let mut usage = Value::Null;
    // index -> (role, content, finish_reason, text (completions))
    let mut choices: std::collections::BTreeMap<u64, (String, String, Value, bool)> = Default::default();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).ok()?;
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let e = choices
                .entry(idx)
                .or_insert_with(|| ("assistant".into(), String::new(), Value::Null, false));
            if let Some(d) = c.get("delta") {
                if let Some(r) = d.get("role").and_then(Value::as_str) {
                    e.0 = r.to_string();
                }
                if let Some(t) = d.get("content").and_then(Value::as_str) {
                    e.1.push_str(t);
                }
            }
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                e.1.push_str(t);
                e.3 = true;
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                e.2 = f.clone();
            }
        }
        if first.is_none() {
            first = Some(v);
        }
    }
    let first = first?;
    if !done {
        return None;
    }
    let is_text = choices.values().any(|c| c.3);
    let out_choices: Vec<Value> = choices
        .into_iter()
        .map(|(i, (role, content, finish, _))| {
            if is_text {
                json!({"index": i, "text": content, "finish_reason": finish, "logprobs": null})
            } else {
                json!({"index": i, "message": {"role": role, "content": content}, "finish_reason": finish, "logprobs": null})
            }
        })
        .collect();
    let mut m = Map::new();
    m.insert("id".into(), first.get("id").cloned().unwrap_or(Value::Null));
    m.insert(
        "object".into(),
        json!(if is_text { "text_completion" } else { "chat.completion" }),
    );
    m.insert("created".into(), first.get("created").cloned().unwrap_or(json!(0)));
    m.insert("model".into(), first.get("model").cloned().unwrap_or(Value::Null));
    m.insert("choices".into(), Value::Array(out_choices));
    if !usage.is_null() {
        m.insert("usage".into(), usage);
    }
    Some(Value::Object(m))
}

/// Replay a complete answer as a proper event stream: the content split into
/// chunks, a final chunk with `finish_reason`, `usage` when the client asked
/// for it, and `[DONE]` last.
pub fn replay_as_sse(answer: &serde_json::Value, include_usage: bool) -> Bytes {
    use serde_json::{json, Value};
    let is_text = answer.get("object").and_then(Value::as_str) == Some("text_completion");
    let object = if is_text {
        "text_completion"
    } else {
        "chat.completion.chunk"
    };
    let (id, created, model) = (&answer["id"], &answer["created"], &answer["model"]);
    let mut out = BytesMut::new();
    let mut event = |v: Value| {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    };
    for c in answer.get("choices").and_then(Value::as_array).into_iter().flatten() {
        let idx = c.get("index").cloned().unwrap_or(json!(0));
        let content = if is_text {
            c.get("text").and_then(Value::as_str).unwrap_or("")
        } else {
            c.pointer("/message/content").and_then(Value::as_str).unwrap_or("")
        };
        if !is_text {
            let role = c.pointer("/message/role").cloned().unwrap_or(json!("assistant"));
            event(json!({"id": id, "object": object, "created": created, "model": model,
                "choices": [{"index": idx, "delta": {"role": role, "content": ""}, "finish_reason": null}]}));
        }
        // Split on whitespace boundaries, keeping the spaces, a few words per chunk.
        let mut start = 0;
        let mut words = 0;
        for (i, ch) in content.char_indices() {
            if ch == ' ' {
                words += 1;
                if words % 4 == 0 {
                    let piece = &content[start..i + 1];
                    event(piece_chunk(is_text, id, object, created, model, &idx, piece));
                    start = i + 1;
                }
            }
        }
        if start < content.len() {
            event(piece_chunk(
                is_text,
                id,
                object,
                created,
                model,
                &idx,
                &content[start..],
            ));
        }
        let finish = c.get("finish_reason").cloned().unwrap_or(json!("stop"));
        let last = if is_text {
            json!({"index": idx, "text": "", "finish_reason": finish})
        } else {
            json!({"index": idx, "delta": {}, "finish_reason": finish})
        };
        event(json!({"id": id, "object": object, "created": created, "model": model, "choices": [last]}));
    }
    if include_usage {
        if let Some(u) = answer.get("usage") {
            event(json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": u}));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out.freeze()
}

fn piece_chunk(
    is_text: bool,
    id: &serde_json::Value,
    object: &str,
    created: &serde_json::Value,
    model: &serde_json::Value,
    idx: &serde_json::Value,
    piece: &str,
) -> serde_json::Value {
    let choice = if is_text {
        serde_json::json!({"index": idx, "text": piece, "finish_reason": null})
    } else {
        serde_json::json!({"index": idx, "delta": {"content": piece}, "finish_reason": null})
    };
    serde_json::json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
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
        assert!(parse_head(b"{not json").unwrap_err().contains("not valid JSON"));
        assert!(parse_head(br#"{"messages":[]}"#).unwrap_err().contains("no `model`"));
        assert!(parse_head(br#"{"model": 3}"#).unwrap_err().contains("must be a string"));
        assert!(parse_head(b"[1,2]").is_err());
        assert!(parse_head(b"").is_err());
        let bad_utf8 = b"{\"messages\":\"\xff\",\"model\":\"m\"}";
        assert!(parse_head(bad_utf8).unwrap_err().contains("not UTF-8"));
        let deep = |n| format!("{{\"m\":{}{},\"model\":\"m\"}}", "[".repeat(n), "]".repeat(n));
        assert!(parse_head(deep(127).as_bytes()).is_ok());
        assert!(parse_head(deep(128).as_bytes())
            .unwrap_err()
            .contains("deeper than 128"));
        // Brackets and escaped quotes inside strings are not nesting.
        let in_str = format!(r#"{{"x":"\"{}","model":"m"}}"#, "[".repeat(500));
        assert!(parse_head(in_str.as_bytes()).is_ok());
    }

    #[test]
    fn escaped_model_rewrites() {
        let body = Bytes::from_static(br#"{"model":"a\"b"}"#);
        let h = parse_head(&body).unwrap();
        assert_eq!(h.model, "a\"b");
        assert_eq!(rewrite_model(&body, &h, "x"), Bytes::from_static(br#"{"model":"x"}"#));
    }

    #[test]
    fn usage_from_sse_split_across_chunks() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"total_tokens\":14}}\n\ndata: [DONE]\n\n";
        for split in [1, 7, 40, 80, stream.len() - 3] {
            let mut s = SseUsageScanner::default();
            s.feed(&stream[..split]);
            s.feed(&stream[split..]);
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 9
                }),
                "split {split}"
            );
        }
    }

    #[test]
    fn stream_usage_inserted_in_place() {
        let body = Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let h = parse_head(&body).unwrap();
        let out = with_stream_usage(&body, &h);
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        let h2 = parse_head(&out).unwrap();
        assert!(h2.include_usage);
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#);
        let out = with_stream_usage(&body, &parse_head(&body).unwrap());
        assert!(parse_head(&out).unwrap().include_usage);
    }

    #[test]
    fn usage_chunk_stripped_across_splits() {
        let stream = b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        for split in [1, 10, 30, 50, stream.len() - 1] {
            let mut s = UsageChunkStripper::default();
            let mut out = s.filter(&stream[..split]).to_vec();
            out.extend_from_slice(&s.filter(&stream[split..]));
            out.extend_from_slice(&s.finish());
            assert_eq!(
                out,
                b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n".to_vec(),
                "split {split}"
            );
        }
    }

    #[test]
    fn stream_assembled_and_replayed_round_trip() {
        let answer = serde_json::json!({"id": "c1", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five six"},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}});
        let sse = replay_as_sse(&answer, true);
        let text = std::str::from_utf8(&sse).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(
            text.matches("data: ").count() >= 5,
            "content split into chunks:\n{text}"
        );
        let back = assemble_stream(&sse).unwrap();
        assert_eq!(back, answer);
        // Without [DONE] the stream was cut off: nothing to assemble.
        assert!(assemble_stream(&sse[..sse.len() - 14]).is_none());
        // Usage only when asked.
        assert!(!std::str::from_utf8(&replay_as_sse(&answer, false))
            .unwrap()
            .contains("usage"));
    }

    #[test]
    fn usage_from_json() {
        let u = usage_of_json(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#);
        assert_eq!(
            u,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(usage_of_json(b"{}"), None);
    }
}
