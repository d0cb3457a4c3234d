//! Chat and legacy text completions: prompt and completion token counts, the
//! full answer and the chunks of a streamed one (pure JSON builders).

use std::ops::Range;

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

/// Words already written by an assistant prefill: `Some` when the last
/// message of a chat request has role `assistant`, whose text the answer
/// then continues.
pub(super) fn prefill_words(request: &Value) -> Option<u64> {
    let last = request.get("messages")?.as_array()?.last()?;
    (last.get("role")?.as_str()? == "assistant").then(|| last.get("content").map_or(0, content_words))
}

/// Choices asked for (`n`): 1 when absent or not a number, at most 128 (OpenAI's limit).
fn requested_choices(request: &Value) -> u32 {
    request
        .get("n")
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, MAX_CHOICES as u64) as u32)
}

/// OpenAI's largest `n`.
const MAX_CHOICES: u32 = 128;

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
#[cfg(test)]
pub(super) fn completion_text(tokens: u32) -> String {
    tokens_text(0..tokens)
}

/// The text of tokens `indices`: from a start past 0 it begins with a space,
/// as it continues earlier text.
fn tokens_text(indices: Range<u32>) -> String {
    indices.map(token_piece).collect()
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
    /// Index of the first token generated: the words of an assistant prefill
    /// (0 without one), so the answer continues `tok0 … tok{first-1}`.
    pub(super) first: u32,
    /// Tokens generated per choice (a continuation counts only its own).
    pub(super) tokens: u32,
    /// Choices (`n`): each generates `tokens`; usage counts them all.
    pub(super) choices: u32,
    /// Whether the answer continues an assistant prefill.
    pub(super) prefill: bool,
    pub(super) finish_reason: &'static str,
    pub(super) prompt_tokens: u64,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// The function a chat request forces with `tool_choice`: the answer is
    /// a call to it, its arguments `{"text":"tok0 …"}` streamed piece by piece.
    pub(super) tool: Option<String>,
}

/// The function name of `tool_choice: {"type": "function", "function": {"name": …}}`.
fn forced_tool(request: &Value) -> Option<String> {
    let choice = request.get("tool_choice")?;
    (choice.get("type")?.as_str()? == "function")
        .then(|| choice.pointer("/function/name")?.as_str().map(str::to_string))
        .flatten()
}

/// What a tool call's streamed arguments open and close with, around the text.
const ARGS_OPEN: &str = "{\"text\":\"";
const ARGS_CLOSE: &str = "\"}";

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
        let (total, finish_reason) = completion_budget(completion_tokens, requested_max_tokens(request));
        let prefill = match kind {
            Kind::Chat => prefill_words(request),
            Kind::Text => None,
        };
        let first = prefill.map_or(0, |words| u32::try_from(words).unwrap_or(u32::MAX).min(total));
        let (id, prompt_tokens) = match kind {
            Kind::Chat => (format!("chatcmpl-mock-{serial}"), chat_prompt_tokens(request)),
            Kind::Text => (
                format!("cmpl-mock-{serial}"),
                request.get("prompt").map_or(0, text_prompt_tokens),
            ),
        };
        let tool = match kind {
            Kind::Chat => forced_tool(request),
            Kind::Text => None,
        };
        let forced = tool.is_some();
        Generation {
            tool,
            choices: requested_choices(request),
            kind,
            id,
            created,
            model: model.to_string(),
            first,
            tokens: total - first,
            prefill: prefill.is_some(),
            finish_reason: if forced && finish_reason == "stop" {
                "tool_calls"
            } else {
                finish_reason
            },
            prompt_tokens,
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
        }
    }

    /// Indices of the tokens generated.
    pub(super) fn indices(&self) -> Range<u32> {
        self.first..self.first + self.tokens
    }

    /// Completion tokens of all choices.
    pub(super) fn completion_tokens(&self) -> u64 {
        u64::from(self.tokens) * u64::from(self.choices)
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens(),
            "total_tokens": self.prompt_tokens + self.completion_tokens(),
        })
    }

    /// The non-streamed answer: `choices` alike choices.
    pub(super) fn full_answer(&self) -> Value {
        let text = tokens_text(self.indices());
        let choice = |index: u32| match self.kind {
            Kind::Chat if self.tool.is_some() => json!({
                "index": index,
                "message": {"role": "assistant", "content": null, "tool_calls": [{
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": self.tool, "arguments": format!("{ARGS_OPEN}{text}{ARGS_CLOSE}")},
                }]},
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }),
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }),
            Kind::Text => json!({
                "index": index,
                "text": text,
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }),
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": (0..self.choices).map(choice).collect::<Vec<_>>(),
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

    /// The id of choice `choice`'s tool call.
    fn call_id(&self, choice: u32) -> String {
        match choice {
            0 => format!("call_{}", self.id),
            c => format!("call_{}_{c}", self.id),
        }
    }

    /// The first chat chunk of choice `choice`, announcing the assistant
    /// role (text completions have none); with a forced tool, the call's
    /// id, name and the opening of its arguments.
    pub(super) fn role_chunk(&self, choice: u32) -> Option<Value> {
        if let (Kind::Chat, Some(name)) = (self.kind, &self.tool) {
            return Some(self.chunk(json!([{
                "index": choice,
                "delta": {"role": "assistant", "content": null, "tool_calls": [{
                    "index": 0, "id": self.call_id(choice), "type": "function",
                    "function": {"name": name, "arguments": ARGS_OPEN},
                }]},
                "finish_reason": null,
            }])));
        }
        (self.kind == Kind::Chat).then(|| {
            self.chunk(json!([{
                "index": choice,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            }]))
        })
    }

    /// The chunk carrying token `index` of choice `choice`.
    pub(super) fn token_chunk(&self, choice: u32, index: u32) -> Value {
        self.piece_chunk(choice, &token_piece(index), None)
    }

    /// The chunk carrying choice `choice`'s finish reason.
    pub(super) fn finish_chunk(&self, choice: u32) -> Value {
        self.piece_chunk(choice, "", Some(self.finish_reason))
    }

    /// A chunk of choice `choice` carrying `piece` of text, or the end of
    /// its answer with `finish_reason`.
    pub(super) fn piece_chunk(&self, choice: u32, piece: &str, finish_reason: Option<&str>) -> Value {
        let c = choice;
        let choice = match (self.kind, finish_reason) {
            (Kind::Chat, None) if self.tool.is_some() => {
                json!({"index": c, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, "finish_reason": null})
            }
            (Kind::Chat, Some(reason)) if self.tool.is_some() => {
                json!({"index": c, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ARGS_CLOSE}}]}, "finish_reason": reason})
            }
            (Kind::Chat, None) => {
                json!({"index": c, "delta": {"content": piece}, "finish_reason": null})
            }
            (Kind::Chat, Some(reason)) => {
                json!({"index": c, "delta": {}, "finish_reason": reason})
            }
            (Kind::Text, reason) => {
                json!({"index": c, "text": piece, "logprobs": null, "finish_reason": reason})
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

    fn prefilled(prefill: Value, max_tokens: Option<u64>) -> Value {
        let mut request = json!({
            "model": "gpt-test",
            "messages": [
                {"role": "user", "content": "count"},
                {"role": "assistant", "content": prefill},
            ],
        });
        if let Some(max) = max_tokens {
            request["max_tokens"] = json!(max);
        }
        request
    }

    #[test]
    fn a_prefill_is_continued() {
        let g = generation(prefilled(json!("tok0 tok1 tok2"), None), Kind::Chat, 5);
        assert!(g.prefill);
        assert_eq!((g.first, g.tokens, g.indices()), (3, 2, 3..5));
        let answer = g.full_answer();
        let continuation = answer["choices"][0]["message"]["content"].as_str().expect("text");
        assert_eq!(continuation, " tok3 tok4");
        assert_eq!(format!("tok0 tok1 tok2{continuation}"), completion_text(5));
        // Prompt tokens count the prefill words; completion tokens only what was generated.
        assert_eq!(
            answer["usage"],
            json!({"prompt_tokens": 1 + 3 + 6, "completion_tokens": 2, "total_tokens": 12})
        );
        let pieces: String = g.indices().map(token_piece).collect();
        assert_eq!(pieces, continuation);
        assert_eq!(g.token_chunk(0, 3)["choices"][0]["delta"]["content"], " tok3");
    }

    #[test]
    fn a_forced_tool_is_called_with_the_text_as_arguments() {
        let request = json!({
            "messages": [{"role": "user", "content": "x"}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        });
        let g = generation(request, Kind::Chat, 3);
        let answer = g.full_answer();
        let call = &answer["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "f");
        assert_eq!(call["function"]["arguments"], r#"{"text":"tok0 tok1 tok2"}"#);
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        // Streamed: the role chunk opens the arguments, pieces follow, the finish closes them.
        let mut args = g.role_chunk(0).unwrap()["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .to_string();
        for i in g.indices() {
            args += g.token_chunk(0, i)["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap();
        }
        let fin = g.finish_chunk(0);
        args += fin["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(args, r#"{"text":"tok0 tok1 tok2"}"#);
        assert_eq!(fin["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn prefill_arithmetic_edges() {
        // An empty prefill continues from the start, without a leading space.
        let g = generation(prefilled(json!(""), None), Kind::Chat, 3);
        assert!(g.prefill);
        assert_eq!(g.full_answer()["choices"][0]["message"]["content"], "tok0 tok1 tok2");
        // Parts count their text; a prefill past the budget leaves nothing to generate.
        let parts = json!([{"type": "text", "text": "a b"}, {"type": "text", "text": "c d e f"}]);
        let g = generation(prefilled(parts, None), Kind::Chat, 4);
        assert_eq!((g.first, g.tokens), (4, 0));
        assert_eq!(g.full_answer()["choices"][0]["message"]["content"], "");
        assert_eq!(g.full_answer()["usage"]["completion_tokens"], 0);
        // max_tokens caps the total, as without a prefill.
        let g = generation(prefilled(json!("tok0"), Some(3)), Kind::Chat, 16);
        assert_eq!((g.first, g.tokens, g.finish_reason), (1, 2, "length"));
        assert_eq!(g.full_answer()["choices"][0]["message"]["content"], " tok1 tok2");
        // Null content is zero words.
        let g = generation(prefilled(Value::Null, None), Kind::Chat, 2);
        assert_eq!((g.first, g.tokens), (0, 2));
    }

    #[test]
    fn only_a_trailing_assistant_message_is_a_prefill() {
        let user_last = json!({"messages": [
            {"role": "assistant", "content": "tok0"},
            {"role": "user", "content": "go on"},
        ]});
        assert_eq!(prefill_words(&user_last), None);
        let g = generation(user_last, Kind::Chat, 2);
        assert!(!g.prefill);
        assert_eq!((g.first, g.tokens), (0, 2));
        assert_eq!(prefill_words(&json!({})), None);
        assert_eq!(prefill_words(&json!({"messages": []})), None);
        assert_eq!(prefill_words(&prefilled(json!("x y"), None)), Some(2));
        // Text completions have no messages to continue.
        let text = generation(prefilled(json!("tok0"), None), Kind::Text, 2);
        assert!(!text.prefill);
        assert_eq!(text.first, 0);
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
    fn n_choices_and_usage_summed() {
        let request = json!({"n": 3, "messages": [{"role": "user", "content": "x"}]});
        let g = generation(request, Kind::Chat, 4);
        let answer = g.full_answer();
        let choices = answer["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        assert_eq!(choices[2]["index"], 2);
        assert_eq!(choices[2]["message"]["content"], "tok0 tok1 tok2 tok3");
        assert_eq!(answer["usage"]["completion_tokens"], 12);
        assert_eq!(g.token_chunk(2, 1)["choices"][0]["index"], 2);
        assert_eq!(requested_choices(&json!({"n": 0})), 1);
        assert_eq!(requested_choices(&json!({"n": 1000})), 128);
        assert_eq!(requested_choices(&json!({"n": "2"})), 1);
        // Tool calls get an id per choice.
        let forced = json!({"n": 2, "tool_choice": {"type": "function", "function": {"name": "f"}}});
        let a = generation(forced, Kind::Chat, 2).full_answer();
        assert_ne!(
            a["choices"][0]["message"]["tool_calls"][0]["id"],
            a["choices"][1]["message"]["tool_calls"][0]["id"]
        );
    }

    #[test]
    fn no_usage_chunk_unless_requested() {
        let g = generation(json!({"stream": true}), Kind::Chat, 1);
        assert!(g.usage_chunk().is_none());
        assert!(g.token_chunk(0, 0).get("usage").is_none());
        let t = generation(json!({"stream": true}), Kind::Text, 2);
        assert!(t.role_chunk(0).is_none());
        assert_eq!(t.token_chunk(0, 1)["choices"][0]["text"], " tok1");
        assert_eq!(t.finish_chunk(0)["choices"][0]["finish_reason"], "stop");
    }
}
