//! A streamed answer made whole, and a whole answer streamed again: what
//! the cache stores from a stream, and how it replays a hit to a client
//! that streams. Per choice, whatever the deltas carried: text, refusal,
//! tool calls (by their `index`: id, type, function name, argument
//! fragments joined), a legacy `function_call`, logprobs (their arrays
//! joined) and the finish reason; `n > 1` choices each on their own.
//! Replaying an assembled answer and assembling the replay gives the same
//! answer back.

use super::sse::{event_data, SseSplitter};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Top-level fields of the chunks kept in the whole answer (with `id`,
/// `created` and `model`), when present.
const KEPT: &[&str] = &["system_fingerprint", "service_tier"];

/// A tool call (or legacy function call) as its deltas built it.
#[derive(Debug, Default)]
struct Call {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

impl Call {
    /// One delta of it: `{"id", "type", "function": {"name", "arguments"}}`
    /// (a legacy `function_call` delta is the inner object itself).
    fn add(&mut self, delta: &Value, function: Option<&Value>) {
        if let Some(id) = delta.get("id").filter(|v| !v.is_null()) {
            self.id = Some(id.clone());
        }
        if let Some(t) = delta.get("type").filter(|v| !v.is_null()) {
            self.kind = Some(t.clone());
        }
        let f = function.unwrap_or(delta);
        if let Some(n) = f.get("name").and_then(Value::as_str) {
            self.name.push_str(n);
        }
        if let Some(a) = f.get("arguments").and_then(Value::as_str) {
            self.arguments.push_str(a);
        }
    }
}

/// One choice as its deltas built it.
#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    calls: BTreeMap<u64, Call>,
    function_call: Option<Call>,
    logprobs: Option<Map<String, Value>>,
    finish: Value,
    /// A legacy text completion choice (`text`, not `delta`).
    text: bool,
}

impl Choice {
    fn add(&mut self, c: &Value) {
        if let Some(d) = c.get("delta") {
            if let Some(r) = d.get("role").and_then(Value::as_str) {
                self.role = Some(r.to_string());
            }
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                self.content.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(t) = d.get("refusal").and_then(Value::as_str) {
                self.refusal.get_or_insert_with(String::new).push_str(t);
            }
            for (pos, call) in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
                self.calls.entry(i).or_default().add(call, call.get("function"));
            }
            if let Some(f) = d.get("function_call").filter(|f| f.is_object()) {
                self.function_call.get_or_insert_with(Call::default).add(f, None);
            }
        }
        if let Some(t) = c.get("text").and_then(Value::as_str) {
            self.text = true;
            self.content.get_or_insert_with(String::new).push_str(t);
        }
        if let Some(lp) = c.get("logprobs").and_then(Value::as_object) {
            let into = self.logprobs.get_or_insert_with(Map::new);
            for (k, v) in lp {
                match (into.get_mut(k), v) {
                    (Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
                    (Some(_), Value::Null) => {}
                    _ => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
            self.finish = f.clone();
        }
    }

    fn into_json(self, index: u64) -> Value {
        let logprobs = self.logprobs.map_or(Value::Null, Value::Object);
        if self.text {
            return json!({"index": index, "text": self.content.unwrap_or_default(),
                          "logprobs": logprobs, "finish_reason": self.finish});
        }
        let mut m = Map::new();
        m.insert("role".into(), json!(self.role.as_deref().unwrap_or("assistant")));
        m.insert("content".into(), self.content.map_or(Value::Null, Value::String));
        if let Some(r) = self.refusal {
            m.insert("refusal".into(), Value::String(r));
        }
        if !self.calls.is_empty() {
            let calls: Vec<Value> = self
                .calls
                .into_values()
                .map(|c| {
                    json!({"id": c.id.unwrap_or(Value::Null), "type": c.kind.unwrap_or(json!("function")),
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(f) = self.function_call {
            m.insert(
                "function_call".into(),
                json!({"name": f.name, "arguments": f.arguments}),
            );
        }
        json!({"index": index, "message": Value::Object(m), "logprobs": logprobs, "finish_reason": self.finish})
    }
}

/// Rebuild a complete (non-streaming) answer from a finished event stream,
/// `usage` included when present. `None` when the stream did not end with
/// `[DONE]` (cut off), holds no chunk, has an event that is not JSON or an
/// error event.
pub fn assemble_stream(stream: &[u8]) -> Option<Value> {
    let mut splitter = SseSplitter::default();
    splitter.push(stream);
    let mut done = false;
    let mut head: Option<Map<String, Value>> = None;
    let mut usage = Value::Null;
    let mut choices: BTreeMap<u64, Choice> = BTreeMap::new();
    let mut event = |e: &[u8]| -> Option<()> {
        let Some(data) = event_data(e) else { return Some(()) };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            done = true;
            return Some(());
        }
        let v: Value = serde_json::from_slice(data).ok()?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return None;
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        for (pos, c) in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let i = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            choices.entry(i).or_default().add(c);
        }
        if head.is_none() {
            let mut h = Map::new();
            for k in ["id", "created", "model"].iter().chain(KEPT) {
                if let Some(x) = v.get(*k).filter(|x| !x.is_null()) {
                    h.insert((*k).to_string(), x.clone());
                }
            }
            head = Some(h);
        }
        Some(())
    };
    loop {
        match splitter.next_event() {
            Ok(Some(e)) => event(&e)?,
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    let rest = splitter.take_rest();
    if !rest.is_empty() {
        event(&rest)?;
    }
    let mut head = head?;
    if !done {
        return None;
    }
    let is_text = choices.values().any(|c| c.text);
    let out: Vec<Value> = choices.into_iter().map(|(i, c)| c.into_json(i)).collect();
    let mut m = Map::new();
    m.insert("id".into(), head.remove("id").unwrap_or(Value::Null));
    m.insert(
        "object".into(),
        json!(if is_text { "text_completion" } else { "chat.completion" }),
    );
    m.insert("created".into(), head.remove("created").unwrap_or(json!(0)));
    m.insert("model".into(), head.remove("model").unwrap_or(Value::Null));
    m.insert("choices".into(), Value::Array(out));
    if !usage.is_null() {
        m.insert("usage".into(), usage);
    }
    m.extend(head);
    Some(Value::Object(m))
}

/// Cut text into the pieces a stream sends: about four words each
/// (spaces kept), so a replay looks like a provider's stream.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut spaces) = (0, 0);
    for (i, ch) in text.char_indices() {
        if ch == ' ' {
            spaces += 1;
            if spaces % 4 == 0 {
                out.push(&text[start..i + 1]);
                start = i + 1;
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Cut tool-call arguments (JSON, often without spaces) into pieces of at
/// most `max` bytes, on character boundaries.
fn fragments(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// Writes the chunks of one replayed stream.
struct Replay<'a> {
    answer: &'a Value,
    object: &'static str,
    out: BytesMut,
}

impl Replay<'_> {
    fn chunk(&mut self, choices: Value, usage: Option<&Value>) {
        let mut v = json!({"id": self.answer["id"], "object": self.object, "created": self.answer["created"],
                           "model": self.answer["model"]});
        for k in KEPT {
            if let Some(x) = self.answer.get(*k).filter(|x| !x.is_null()) {
                v[*k] = x.clone();
            }
        }
        v["choices"] = choices;
        if let Some(u) = usage {
            v["usage"] = u.clone();
        }
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        self.out.extend_from_slice(b"\n\n");
    }

    fn delta(&mut self, idx: &Value, delta: Value) {
        self.chunk(json!([{"index": idx, "delta": delta, "finish_reason": null}]), None);
    }

    fn chat_choice(&mut self, c: &Value, idx: &Value) {
        let msg = c.get("message").cloned().unwrap_or(Value::Null);
        let content = msg.get("content").and_then(Value::as_str);
        let role = msg.get("role").cloned().unwrap_or(json!("assistant"));
        // Null content stays null (a tool call's message); text starts empty.
        let opening = if content.is_some() { json!("") } else { Value::Null };
        self.delta(idx, json!({"role": role, "content": opening}));
        for piece in words(content.unwrap_or("")) {
            self.delta(idx, json!({"content": piece}));
        }
        if let Some(r) = msg.get("refusal").and_then(Value::as_str) {
            self.delta(idx, json!({"refusal": ""}));
            for piece in words(r) {
                self.delta(idx, json!({"refusal": piece}));
            }
        }
        for (i, call) in msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = call.get("function").cloned().unwrap_or(Value::Null);
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            self.delta(
                idx,
                json!({"tool_calls": [{"index": i, "id": call["id"], "type": call["type"],
                "function": {"name": f["name"], "arguments": ""}}]}),
            );
            for piece in fragments(args, 32) {
                self.delta(
                    idx,
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                );
            }
        }
        if let Some(f) = msg.get("function_call").filter(|f| f.is_object()) {
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            self.delta(idx, json!({"function_call": {"name": f["name"], "arguments": ""}}));
            for piece in fragments(args, 32) {
                self.delta(idx, json!({"function_call": {"arguments": piece}}));
            }
        }
    }

    fn text_choice(&mut self, c: &Value, idx: &Value) {
        for piece in words(c.get("text").and_then(Value::as_str).unwrap_or("")) {
            self.chunk(
                json!([{"index": idx, "text": piece, "logprobs": null, "finish_reason": null}]),
                None,
            );
        }
    }
}

/// Replay a complete answer as a proper event stream: per choice, the
/// text, refusal and tool-call arguments split into deltas, then a chunk
/// with the logprobs and `finish_reason`; `usage` when the client asked for
/// it, and `[DONE]` last.
pub fn replay_as_sse(answer: &Value, include_usage: bool) -> Bytes {
    let is_text = answer.get("object").and_then(Value::as_str) == Some("text_completion");
    let mut r = Replay {
        answer,
        object: if is_text {
            "text_completion"
        } else {
            "chat.completion.chunk"
        },
        out: BytesMut::new(),
    };
    for (pos, c) in answer
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let idx = c.get("index").cloned().unwrap_or(json!(pos));
        if is_text {
            r.text_choice(c, &idx);
        } else {
            r.chat_choice(c, &idx);
        }
        let finish = c.get("finish_reason").cloned().unwrap_or(json!("stop"));
        let mut last = if is_text {
            json!({"index": idx, "text": "", "finish_reason": finish})
        } else {
            json!({"index": idx, "delta": {}, "finish_reason": finish})
        };
        if let Some(lp) = c.get("logprobs").filter(|l| !l.is_null()) {
            last["logprobs"] = lp.clone();
        }
        r.chunk(json!([last]), None);
    }
    if include_usage {
        if let Some(u) = answer.get("usage").filter(|u| !u.is_null()) {
            r.chunk(json!([]), Some(u));
        }
    }
    r.out.extend_from_slice(b"data: [DONE]\n\n");
    r.out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(answer: &Value) {
        let sse = replay_as_sse(answer, true);
        assert_eq!(
            assemble_stream(&sse).as_ref(),
            Some(answer),
            "{}",
            String::from_utf8_lossy(&sse)
        );
    }

    #[test]
    fn text_answer_round_trips() {
        let answer = json!({"id": "c1", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five six"},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}});
        let sse = replay_as_sse(&answer, true);
        let text = std::str::from_utf8(&sse).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(
            text.matches("data: ").count() >= 5,
            "content split into chunks:\n{text}"
        );
        round_trip(&answer);
        // Without [DONE] the stream was cut off: nothing to assemble.
        assert!(assemble_stream(&sse[..sse.len() - 14]).is_none());
        // Usage only when asked.
        assert!(!std::str::from_utf8(&replay_as_sse(&answer, false))
            .unwrap()
            .contains("usage"));
    }

    /// OpenAI's stream of two parallel tool calls, CRLF-framed.
    fn tool_stream() -> Vec<u8> {
        let events = [
            r#"{"id":"c9","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"c9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c9","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c9","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c9","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#,
            "[DONE]",
        ];
        events
            .iter()
            .map(|e| format!("data: {e}\r\n\r\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn tool_calls_assembled_and_replayed() {
        let whole = assemble_stream(&tool_stream()).expect("assembled");
        let msg = &whole["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null);
        assert_eq!(msg["tool_calls"][0]["id"], "call_a");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(msg["tool_calls"][0]["function"]["arguments"], r#"{"city": "Paris"}"#);
        assert_eq!(msg["tool_calls"][1]["function"]["name"], "get_time");
        assert_eq!(msg["tool_calls"][1]["type"], "function");
        assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(whole["system_fingerprint"], "fp");
        assert_eq!(whole["usage"]["completion_tokens"], 9);
        round_trip(&whole);
        // Long arguments go out in fragments, and come back whole.
        let mut long = whole.clone();
        let args = format!(r#"{{"text":"{}é"}}"#, "tok ".repeat(40));
        long["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!(args);
        let sse = replay_as_sse(&long, false);
        assert!(std::str::from_utf8(&sse).unwrap().matches("\"arguments\"").count() > 5);
        round_trip(&long);
    }

    #[test]
    fn refusal_logprobs_and_choices() {
        let lp = |t: &str| json!({"content": [{"token": t, "logprob": -0.5, "bytes": [1], "top_logprobs": []}], "refusal": null});
        let stream = [
            json!({"id": "x", "created": 1, "model": "m", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null},
                {"index": 1, "delta": {"role": "assistant", "content": "", "refusal": null}}]}),
            json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": lp("a")}]}),
            json!({"id": "x", "choices": [{"index": 1, "delta": {"refusal": "I can't"}}]}),
            json!({"id": "x", "choices": [{"index": 0, "delta": {"content": " b"}, "logprobs": lp(" b")}]}),
            json!({"id": "x", "choices": [{"index": 1, "delta": {"refusal": " help."}, "finish_reason": "stop"}]}),
            json!({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ];
        let mut sse: String = stream.iter().map(|e| format!("data: {e}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        let whole = assemble_stream(sse.as_bytes()).unwrap();
        assert_eq!(whole["choices"][0]["message"]["content"], "a b");
        assert_eq!(whole["choices"][0]["logprobs"]["content"][1]["token"], " b");
        assert_eq!(whole["choices"][0]["logprobs"]["refusal"], Value::Null);
        assert_eq!(whole["choices"][1]["message"]["refusal"], "I can't help.");
        assert_eq!(whole["choices"][1]["logprobs"], Value::Null);
        round_trip(&whole);
    }

    #[test]
    fn legacy_completions_and_function_call() {
        let mut s = String::new();
        for piece in ["tok0", " tok1"] {
            let lp = json!({"tokens": [piece], "token_logprobs": [-1.0], "top_logprobs": null, "text_offset": [0]});
            s += &format!(
                "data: {}\n\n",
                json!({"id": "t", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": piece, "logprobs": lp, "finish_reason": null}]})
            );
        }
        s += "data: {\"id\":\"t\",\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
        let whole = assemble_stream(s.as_bytes()).unwrap();
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], "tok0 tok1");
        assert_eq!(whole["choices"][0]["logprobs"]["tokens"], json!(["tok0", " tok1"]));
        round_trip(&whole);

        let legacy = json!({"id": "f", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "function_call": {"name": "f", "arguments": "{\"a\":1}"}}, "logprobs": null, "finish_reason": "function_call"}]});
        round_trip(&legacy);
    }

    #[test]
    fn broken_streams_are_not_assembled() {
        assert!(assemble_stream(b"data: [DONE]\n\n").is_none(), "no chunk");
        assert!(assemble_stream(b"data: {\"choices\":[]}\n\ndata: nope\n\ndata: [DONE]\n\n").is_none());
        assert!(assemble_stream(
            b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n"
        )
        .is_none());
        // Comments and CR line ends are fine; the last event may lack its blank line.
        let ok = b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\r\r: ping\r\rdata: [DONE]";
        assert_eq!(assemble_stream(ok).unwrap()["choices"][0]["message"]["content"], "hi");
    }
}
