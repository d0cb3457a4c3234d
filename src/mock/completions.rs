//! Chat and legacy text completions: prompt and completion token counts, the
//! full answer and the chunks of a streamed one (pure JSON builders).

use serde_json::{json, Value};

/// Whitespace-separated words: the mock's stand-in for a tokenizer.
pub(super) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Words of a chat message content: a string, or an array of parts whose
/// `text` fields count (images and other parts count nothing).
fn content_words(content: &Value) -> u64 {
    match content {
        Value::String(s) => count_words(s),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => count_words(s),
                _ => part.get("text").and_then(Value::as_str).map_or(0, count_words),
            })
            .sum(),
        _ => 0,
    }
}

/// Deterministic prompt size of a chat request: words of every message
/// content plus 3 per message (role and separators, like OpenAI's overhead).
fn chat_prompt_tokens(request: &Value) -> u64 {
    request.get("messages").and_then(Value::as_array).map_or(0, |messages| {
        messages
            .iter()
            .map(|m| 3 + m.get("content").map_or(0, content_words))
            .sum()
    })
}

/// Prompt size of a legacy completion / embedding input: words of strings,
/// one per token id.
fn text_prompt_tokens(prompt: &Value) -> u64 {
    match prompt {
        Value::String(s) => count_words(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(text_prompt_tokens).sum(),
        _ => 0,
    }
}

/// The smaller of `max_tokens` / `max_completion_tokens`, when present.
fn requested_max_tokens(request: &Value) -> Option<u64> {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|key| request.get(key).and_then(Value::as_u64))
        .min()
}

/// Tokens to generate and the finish reason.
fn completion_budget(configured: u32, max_tokens: Option<u64>) -> (u32, &'static str) {
    match max_tokens {
        Some(max) if max < u64::from(configured) => {
            // `max < configured <= u32::MAX`, so the conversion cannot fail.
            (u32::try_from(max).unwrap_or(configured), "length")
        }
        _ => (configured, "stop"),
    }
}

/// The text of token `index` as streamed: words separated by a space, so the
/// concatenated deltas equal the non-streamed content.
pub(super) fn token_piece(index: u32) -> String {
    if index == 0 {
        "tok0".to_string()
    } else {
        format!(" tok{index}")
    }
}

/// `tok0 tok1 … tok{n-1}`: each word is one token.
pub(super) fn completion_text(tokens: u32) -> String {
    (0..tokens).map(token_piece).collect()
}

/// Chat completion or legacy text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Chat,
    Text,
}

/// Everything needed to answer one (chat) completion, streamed or not.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Generation {
    pub(super) kind: Kind,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) tokens: u32,
    pub(super) finish_reason: &'static str,
    pub(super) prompt_tokens: u64,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

impl Generation {
    /// Decide the answer to `request`: `serial` numbers its id, `created` is a Unix time.
    pub(super) fn plan(
        kind: Kind,
        request: &Value,
        model: &str,
        completion_tokens: u32,
        serial: u64,
        created: u64,
    ) -> Self {
        let (tokens, finish_reason) = completion_budget(completion_tokens, requested_max_tokens(request));
        let (id, prompt_tokens) = match kind {
            Kind::Chat => (format!("chatcmpl-mock-{serial}"), chat_prompt_tokens(request)),
            Kind::Text => (
                format!("cmpl-mock-{serial}"),
                request.get("prompt").map_or(0, text_prompt_tokens),
            ),
        };
        Generation {
            kind,
            id,
            created,
            model: model.to_string(),
            tokens,
            finish_reason,
            prompt_tokens,
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + u64::from(self.tokens),
        })
    }

    /// The non-streamed answer.
    pub(super) fn full_answer(&self) -> Value {
        let text = completion_text(self.tokens);
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
            Kind::Text => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// A streamed chunk around `choices`. Like OpenAI, chunks carry
    /// `"usage": null` when the client asked for a usage chunk.
    fn chunk(&self, choices: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The first chat chunk announcing the assistant role (text completions have none).
    pub(super) fn role_chunk(&self) -> Option<Value> {
        (self.kind == Kind::Chat).then(|| {
            self.chunk(json!([{
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            }]))
        })
    }

    /// The chunk carrying token `index`.
    pub(super) fn token_chunk(&self, index: u32) -> Value {
        self.piece_chunk(&token_piece(index), None)
    }

    /// The chunk carrying the finish reason.
    pub(super) fn finish_chunk(&self) -> Value {
        self.piece_chunk("", Some(self.finish_reason))
    }

    /// A chunk carrying `piece` of text, or the end of the answer with `finish_reason`.
    pub(super) fn piece_chunk(&self, piece: &str, finish_reason: Option<&str>) -> Value {
        let choice = match (self.kind, finish_reason) {
            (Kind::Chat, None) => {
                json!({"index": 0, "delta": {"content": piece}, "finish_reason": null})
            }
            (Kind::Chat, Some(reason)) => {
                json!({"index": 0, "delta": {}, "finish_reason": reason})
            }
            (Kind::Text, reason) => {
                json!({"index": 0, "text": piece, "logprobs": null, "finish_reason": reason})
            }
        };
        self.chunk(json!([choice]))
    }

    /// The final usage chunk, only when `stream_options.include_usage` is true.
    pub(super) fn usage_chunk(&self) -> Option<Value> {
        self.include_usage.then(|| {
            let mut chunk = self.chunk(json!([]));
            chunk["usage"] = self.usage();
            chunk
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(request: Value, kind: Kind, configured: u32) -> Generation {
        Generation::plan(kind, &request, "gpt-test", configured, 7, 1_700_000_000)
    }

    #[test]
    fn chat_prompt_estimate_counts_words_and_messages() {
        let request = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "hello  there\nfriend"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                ]},
                {"role": "assistant", "content": null},
            ]
        });
        // 2 + 3 words, 3 messages.
        assert_eq!(chat_prompt_tokens(&request), 5 + 9);
        assert_eq!(chat_prompt_tokens(&json!({})), 0);
    }

    #[test]
    fn text_prompt_estimate() {
        assert_eq!(text_prompt_tokens(&json!("one two three")), 3);
        assert_eq!(text_prompt_tokens(&json!(["a b", "c"])), 3);
        assert_eq!(text_prompt_tokens(&json!([1, 2, 3, 4])), 4);
    }

    #[test]
    fn max_tokens_truncates() {
        assert_eq!(completion_budget(16, None), (16, "stop"));
        assert_eq!(completion_budget(16, Some(16)), (16, "stop"));
        assert_eq!(completion_budget(16, Some(100)), (16, "stop"));
        assert_eq!(completion_budget(16, Some(4)), (4, "length"));
        assert_eq!(completion_budget(16, Some(0)), (0, "length"));
        let request = json!({"max_tokens": 10, "max_completion_tokens": 3});
        assert_eq!(requested_max_tokens(&request), Some(3));
        assert_eq!(requested_max_tokens(&json!({"max_tokens": -1})), None);
    }

    #[test]
    fn chat_answer_shape() {
        let request = json!({
            "model": "gpt-test",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi there"}],
        });
        let answer = generation(request, Kind::Chat, 16).full_answer();
        assert_eq!(answer["id"], "chatcmpl-mock-7");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["created"], 1_700_000_000u64);
        assert_eq!(answer["model"], "gpt-test");
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        assert_eq!(answer["choices"][0]["message"]["content"], "tok0 tok1 tok2");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert_eq!(
            answer["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
        );
    }

    #[test]
    fn text_completion_answer_shape() {
        let answer = generation(json!({"prompt": "say it"}), Kind::Text, 2).full_answer();
        assert_eq!(answer["id"], "cmpl-mock-7");
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"], "tok0 tok1");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
    }

    #[test]
    fn no_usage_chunk_unless_requested() {
        let g = generation(json!({"stream": true}), Kind::Chat, 1);
        assert!(g.usage_chunk().is_none());
        assert!(g.token_chunk(0).get("usage").is_none());
        let t = generation(json!({"stream": true}), Kind::Text, 2);
        assert!(t.role_chunk().is_none());
        assert_eq!(t.token_chunk(1)["choices"][0]["text"], " tok1");
        assert_eq!(t.finish_chunk()["choices"][0]["finish_reason"], "stop");
    }
}
