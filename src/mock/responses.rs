//! The Responses API (`POST /v1/responses`): the response object, and the
//! events of a streamed one in OpenAI's shapes — `response.created`,
//! `response.in_progress`, the output item and content part opened,
//! one `response.output_text.delta` per token, the text, part and item
//! done, and `response.completed` (or `response.incomplete` when
//! `max_output_tokens` cut it) carrying `usage` (`input_tokens`,
//! `output_tokens`, their details). No `[DONE]`: the Responses API ends
//! with the final event. Pure JSON builders, like `completions`.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{json, Value};

use super::completions::{count_words, token_piece};

/// Words of an input item's content: a string, or parts whose `text` counts.
fn content_words(content: &Value) -> u64 {
    match content {
        Value::String(s) => count_words(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.get("text").and_then(Value::as_str).map_or(0, count_words))
            .sum(),
        _ => 0,
    }
}

/// Prompt size: words of `instructions` and of `input` (a string, or
/// items whose content counts, plus 3 per item as for chat messages).
fn input_tokens(request: &Value) -> u64 {
    let instructions = request
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, |s| 3 + count_words(s));
    let input = match request.get("input") {
        Some(Value::String(s)) => 3 + count_words(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| 3 + i.get("content").map_or(0, content_words))
            .sum(),
        _ => 0,
    };
    instructions + input
}

/// Everything needed to answer one Responses API request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResponsePlan {
    pub(super) id: String,
    item_id: String,
    created: u64,
    model: String,
    /// Tokens generated.
    pub(super) tokens: u32,
    pub(super) input_tokens: u64,
    /// `max_output_tokens` cut the answer short.
    incomplete: bool,
    pub(super) stream: bool,
}

impl ResponsePlan {
    /// Decide the answer to `request`: `serial` numbers its id, `created` is a Unix time.
    pub(super) fn plan(request: &Value, model: &str, completion_tokens: u32, serial: u64, created: u64) -> Self {
        let max = request.get("max_output_tokens").and_then(Value::as_u64);
        let (tokens, incomplete) = match max {
            Some(m) if m < u64::from(completion_tokens) => (m as u32, true),
            _ => (completion_tokens, false),
        };
        ResponsePlan {
            id: format!("resp_mock{serial}"),
            item_id: format!("msg_mock{serial}"),
            created,
            model: model.to_string(),
            tokens,
            input_tokens: input_tokens(request),
            incomplete,
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
        }
    }

    pub(super) fn indices(&self) -> Range<u32> {
        0..self.tokens
    }

    fn text(&self) -> String {
        self.indices().map(token_piece).collect()
    }

    fn usage(&self) -> Value {
        let out = u64::from(self.tokens);
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + out,
        })
    }

    fn item(&self, done: bool) -> Value {
        let content = if done {
            json!([{"type": "output_text", "text": self.text(), "annotations": [], "logprobs": []}])
        } else {
            json!([])
        };
        json!({"id": self.item_id, "type": "message", "status": if done { "completed" } else { "in_progress" },
               "role": "assistant", "content": content})
    }

    /// The response object: finished (`done`) with its output and usage, or
    /// as `response.created` shows it.
    fn response(&self, done: bool) -> Value {
        let status = match (done, self.incomplete) {
            (false, _) => "in_progress",
            (true, false) => "completed",
            (true, true) => "incomplete",
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": if done && self.incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null,
            "model": self.model,
            "output": if done { json!([self.item(true)]) } else { json!([]) },
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": [],
            "usage": if done { self.usage() } else { Value::Null },
            "metadata": {},
        })
    }

    /// The non-streamed answer.
    pub(super) fn full_answer(&self) -> Value {
        self.response(true)
    }

    /// The events before the first token, numbered from 0.
    pub(super) fn opening_events(&self) -> Vec<Bytes> {
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        vec![
            named("response.created", json!({"response": self.response(false)}), 0),
            named("response.in_progress", json!({"response": self.response(false)}), 1),
            named(
                "response.output_item.added",
                json!({"output_index": 0, "item": self.item(false)}),
                2,
            ),
            named(
                "response.content_part.added",
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "part": part}),
                3,
            ),
        ]
    }

    /// Sequence number of the first delta.
    const FIRST_DELTA: u64 = 4;

    /// The delta of token `index` (the `sent`-th delta). Rendered by hand:
    /// ids and token pieces never need escaping, and a stream writes many.
    pub(super) fn delta_event(&self, sent: u32, index: u32) -> Bytes {
        let seq = Self::FIRST_DELTA + u64::from(sent);
        Bytes::from(format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{seq},\"item_id\":\"{}\",\"output_index\":0,\"content_index\":0,\"delta\":\"{}\",\"logprobs\":[]}}\n\n",
            self.item_id,
            token_piece(index)
        ))
    }

    /// The events after the last token, `response.completed` last.
    pub(super) fn closing_events(&self) -> Vec<Bytes> {
        let seq = Self::FIRST_DELTA + u64::from(self.tokens);
        let text = self.text();
        let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
        let last = if self.incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        vec![
            named(
                "response.output_text.done",
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                seq,
            ),
            named(
                "response.content_part.done",
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "part": part}),
                seq + 1,
            ),
            named(
                "response.output_item.done",
                json!({"output_index": 0, "item": self.item(true)}),
                seq + 2,
            ),
            named(last, json!({"response": self.response(true)}), seq + 3),
        ]
    }
}

/// A named event: `event: TYPE` and the payload with its `type` and `sequence_number`.
fn named(kind: &str, mut payload: Value, seq: u64) -> Bytes {
    payload["type"] = json!(kind);
    payload["sequence_number"] = json!(seq);
    let mut out = format!("event: {kind}\ndata: ").into_bytes();
    if serde_json::to_writer(&mut out, &payload).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn answer_and_stream_agree() {
        let request = json!({"model": "m", "instructions": "be brief", "stream": true,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]});
        let p = ResponsePlan::plan(&request, "m", 3, 9, 100);
        assert!(p.stream);
        assert_eq!(p.input_tokens, 5 + 5);
        let full = p.full_answer();
        assert_eq!(full["object"], "response");
        assert_eq!(full["status"], "completed");
        assert_eq!(full["output"][0]["content"][0]["text"], "tok0 tok1 tok2");
        assert_eq!(full["usage"]["input_tokens"], 10);
        assert_eq!(full["usage"]["output_tokens"], 3);

        let mut events = p.opening_events();
        events.extend(p.indices().map(|i| p.delta_event(i, i)));
        events.extend(p.closing_events());
        let parsed: Vec<Value> = events.iter().map(data).collect();
        for (i, e) in parsed.iter().enumerate() {
            assert_eq!(e["sequence_number"], i, "{e}");
            let named = std::str::from_utf8(&events[i]).unwrap();
            assert!(named.starts_with(&format!("event: {}\n", e["type"].as_str().unwrap())));
        }
        assert_eq!(parsed[0]["type"], "response.created");
        assert!(parsed[0]["response"]["usage"].is_null());
        let text: String = parsed
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, "tok0 tok1 tok2");
        let last = parsed.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"], full);
    }

    #[test]
    fn max_output_tokens_makes_it_incomplete() {
        let p = ResponsePlan::plan(&json!({"input": "a b c", "max_output_tokens": 2}), "m", 16, 1, 0);
        assert_eq!((p.tokens, p.input_tokens), (2, 6));
        let full = p.full_answer();
        assert_eq!(full["status"], "incomplete");
        assert_eq!(full["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(data(p.closing_events().last().unwrap())["type"], "response.incomplete");
    }
}
