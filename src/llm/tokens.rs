//! Counting tokens with OpenAI's BPE (o200k_base, bundled offline, counted
//! by `bpe-openai`: the same counts as OpenAI's tiktoken, faster): a
//! prompt's, so token budgets can be reserved before a request goes out, and
//! streamed text's, so a stream that ends early is charged what it produced.

use super::RequestHead;
use bytes::Bytes;
use serde_json::Value;
use std::ops::Range;

/// Load the encoding now (it takes a moment), not on the first request.
pub fn warm_up() {
    bpe_openai::o200k_base();
}

/// Bodies up to this size are counted inline: the BPE over a few KiB takes
/// well under a millisecond (about 1 µs a byte unoptimised, far less in release).
pub const INLINE_MAX: usize = 4 * 1024;
/// Bodies above this are not run through the BPE at all (seconds of CPU for
/// megabytes): their prompt is bounded from above by its byte count instead.
pub const EXACT_MAX: usize = 1024 * 1024;

/// Whether a body (or text) this long is counted on the calling thread, at
/// once ([`reserve_prompt_tokens`] never waits for it), not on the blocking pool.
pub fn counted_inline(body: &[u8]) -> bool {
    body.len() <= INLINE_MAX
}

/// Bodies on either side of [`INLINE_MAX`], for tests of what waits: a small
/// chat, counted inline, and one counted on the blocking pool.
#[cfg(test)]
pub(crate) fn inline_and_pooled_bodies() -> [Bytes; 2] {
    [
        Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
        Bytes::from(vec![b' '; INLINE_MAX + 1]),
    ]
}

fn bpe(s: &str) -> u64 {
    bpe_openai::o200k_base().count(s) as u64
}

/// Tokens of generated text (what a stream sent before it ended early).
/// Texts over [`EXACT_MAX`] are bounded by their byte count instead.
pub fn text_tokens(s: &str) -> u64 {
    if s.len() <= EXACT_MAX {
        bpe(s)
    } else {
        bytes(s)
    }
}

/// Every o200k_base token stands for at least one byte of the UTF-8 text (the
/// tokens of a text concatenate back to exactly its bytes), so a text never
/// has more tokens than bytes.
fn bytes(s: &str) -> u64 {
    s.len() as u64
}

fn count_content(v: &Value, count_text: fn(&str) -> u64) -> u64 {
    match v {
        Value::String(s) => count_text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(t)) => count_text(t),
                _ => 0,
            })
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

/// Prompt tokens of a chat, completion or embedding request body, counted the
/// way OpenAI bills chat messages (content plus a few tokens per message):
/// what [`reserve_prompt_tokens`] counts up to [`EXACT_MAX`], from the whole body.
#[cfg(test)]
fn prompt_tokens(body: &[u8]) -> u64 {
    count(body, bpe)
}

/// At least [`prompt_tokens`] of the body, in time linear in its size and
/// without the BPE: the same sum with each text counted as its byte length
/// (what [`reserve_prompt_tokens`] reserves above [`EXACT_MAX`]).
#[cfg(test)]
fn prompt_tokens_upper_bound(body: &[u8]) -> u64 {
    count(body, bytes)
}

/// [`count`] of a body whose head was parsed: a chat's messages are read
/// from their span in these very bytes (`messages`, the head's
/// `messages_span`) alone, not the whole body again.
fn count_in(body: &[u8], messages: Option<Range<usize>>, count_text: fn(&str) -> u64) -> u64 {
    if let Some(m) = messages.and_then(|s| body.get(s)) {
        if let Ok(messages) = serde_json::from_slice::<Vec<PlainMessage>>(m) {
            return plain_chat_tokens(&messages, count_text);
        }
    }
    count(body, count_text)
}

/// The prompt tokens to reserve for a body, counted the way OpenAI bills
/// chat messages (content plus a few tokens per message), never fewer than
/// the exact count; `head` is the body's parsed head, if it has one.
/// Small bodies are counted exactly here; larger ones on the blocking pool,
/// so no async worker spends milliseconds in the BPE or the JSON parse;
/// bodies above [`EXACT_MAX`] get the byte-count bound.
pub async fn reserve_prompt_tokens(body: &Bytes, head: Option<&RequestHead>) -> u64 {
    let messages = head.and_then(|h| h.messages_span.clone());
    if counted_inline(body) {
        return count_in(body, messages, bpe);
    }
    let b = body.clone();
    let counted = tokio::task::spawn_blocking(move || {
        if b.len() <= EXACT_MAX {
            count_in(&b, messages, bpe)
        } else {
            count_in(&b, messages, bytes)
        }
    })
    .await;
    // If the count could not run, a cruder bound that needs no parse: the
    // texts fit in the body, and each message costs 4 tokens in at least
    // the 2 bytes of its `{}`.
    counted.unwrap_or_else(|_| (body.len() as u64).saturating_mul(2).saturating_add(3))
}

/// A chat body whose messages' `content` and `name` are plain strings (or
/// null), read without building a JSON tree: the common case, counted
/// without an allocation per value. Any other shape fails to parse here and
/// is counted through [`Value`] instead, with the same result.
#[derive(serde::Deserialize)]
struct PlainChat<'a> {
    #[serde(borrow)]
    messages: Vec<PlainMessage<'a>>,
}

#[derive(serde::Deserialize)]
struct PlainMessage<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

/// OpenAI's count for chat messages, from each one's (content, name) tokens:
/// 4 per message plus both, and 3 for the reply's priming.
fn chat_tokens(messages: impl Iterator<Item = (u64, u64)>) -> u64 {
    messages
        .map(|(content, name)| 4u64.saturating_add(content).saturating_add(name))
        .fold(0, u64::saturating_add)
        .saturating_add(3)
}

fn plain_chat_tokens(messages: &[PlainMessage], count_text: fn(&str) -> u64) -> u64 {
    let text = |t: &Option<std::borrow::Cow<str>>| t.as_deref().map_or(0, count_text);
    chat_tokens(messages.iter().map(|m| (text(&m.content), text(&m.name))))
}

fn count(body: &[u8], count_text: fn(&str) -> u64) -> u64 {
    if let Ok(chat) = serde_json::from_slice::<PlainChat>(body) {
        return plain_chat_tokens(&chat.messages, count_text);
    }
    count_tree(body, count_text)
}

/// [`count`] over the whole JSON tree: any shape.
fn count_tree(body: &[u8], count_text: fn(&str) -> u64) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    if let Some(Value::Array(messages)) = v.get("messages") {
        let text = |m: &Value, field| m.get(field).map_or(0, |c| count_content(c, count_text));
        return chat_tokens(messages.iter().map(|m| (text(m, "content"), text(m, "name"))));
    }
    for field in ["prompt", "input"] {
        match v.get(field) {
            Some(Value::String(s)) => return count_text(s),
            Some(Value::Array(items)) => {
                return items
                    .iter()
                    .map(|c| count_content(c, count_text))
                    .fold(0, u64::saturating_add)
            }
            _ => {}
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chat_messages() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#;
        // "hello world" is 2 tokens in o200k_base; + 4 per message + 3.
        assert_eq!(prompt_tokens(body), 9);
    }

    #[test]
    fn plain_chats_count_as_the_tree_does() {
        for body in [
            &br#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#[..],
            br#"{"messages":[{"role":"user","content":"caf\u00e9 \"quoted\"\n","name":"bob"},{"role":"assistant","content":null}]}"#,
            br#"{"messages":[],"prompt":"ignored"}"#,
            br#"{"model":"m","temperature":0.2,"messages":[{"content":"a","extra":{"x":[1,2]}}],"tools":[{"a":1}]}"#,
        ] {
            assert!(serde_json::from_slice::<PlainChat>(body).is_ok(), "{}", String::from_utf8_lossy(body));
            assert_eq!(count(body, bpe), count_tree(body, bpe), "{}", String::from_utf8_lossy(body));
        }
        // Shapes the plain reading refuses go through the tree, with the same result.
        for body in [
            &br#"{"messages":[{"content":[{"type":"text","text":"hello"},{"type":"image_url"}]}]}"#[..],
            br#"{"messages":[{"content":"a"},"not an object"]}"#,
            br#"{"messages":"not a list","prompt":"hello world"}"#,
            br#"{"messages":[{"content":"a","content":"b"}]}"#,
        ] {
            assert!(
                serde_json::from_slice::<PlainChat>(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(count(body, bpe), count_tree(body, bpe));
        }
        assert_eq!(count(br#"{"messages":"not a list","prompt":"hello world"}"#, bpe), 2);
    }

    #[test]
    fn counts_prompt_and_input() {
        assert_eq!(prompt_tokens(br#"{"prompt":"hello world"}"#), 2);
        assert_eq!(prompt_tokens(br#"{"input":["hello","world"]}"#), 2);
        assert_eq!(prompt_tokens(b"not json"), 0);
    }

    #[test]
    fn messages_span_counts_as_the_whole_body_does() {
        for body in [
            &br#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#[..],
            br#"{"messages":[{"role":"user","content":"caf\u00e9 \"q\"","name":"bob"},{"role":"assistant","content":null}],"model":"m"}"#,
            br#"{"model":"m","messages":[{"content":[{"type":"text","text":"hello"},{"type":"image_url"}]}]}"#,
            br#"{"model":"m","messages":"not a list","prompt":"hello world"}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","prompt":"no messages here"}"#,
            br#"{"model":"m","stream":true,"messages":[{"content":"a"}],"tools":[{"a":[1,{"b":2}]}]}"#,
        ] {
            let head = crate::llm::parse_head(body).unwrap();
            assert_eq!(
                count_in(body, head.messages_span.clone(), bpe),
                count(body, bpe),
                "{}",
                String::from_utf8_lossy(body)
            );
            // Moved with the body when weir asks for stream usage.
            let (moved, moved_head) = crate::llm::with_stream_usage(&Bytes::copy_from_slice(body), &head).unwrap();
            assert_eq!(moved_head.messages_span, crate::llm::parse_head(&moved).unwrap().messages_span);
            assert_eq!(count_in(&moved, moved_head.messages_span, bpe), count(body, bpe));
        }
    }

    #[test]
    fn upper_bound_is_at_least_the_count() {
        for body in [
            &br#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#[..],
            br#"{"model":"m","messages":[{},{},{"content":[{"text":"\u00e9t\u00e9 \ud83d\ude00"}]}]}"#,
            br#"{"prompt":"  a  b   c \n\n\t x"}"#,
            br#"{"input":["hello","world", "\u4f60\u597d"]}"#,
        ] {
            assert!(
                prompt_tokens_upper_bound(body) >= prompt_tokens(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn reserve_counts_exactly_up_to_exact_max_and_bounds_above() {
        let mid = format!(r#"{{"model":"m","prompt":"{}"}}"#, "hello world ".repeat(2000));
        let mid = Bytes::from(mid);
        assert!(mid.len() > INLINE_MAX && mid.len() <= EXACT_MAX);
        assert_eq!(reserve_prompt_tokens(&mid, None).await, prompt_tokens(&mid));
        let text = "ab ".repeat(EXACT_MAX / 3 + 1);
        let big = Bytes::from(format!(r#"{{"model":"m","prompt":"{text}"}}"#));
        assert_eq!(reserve_prompt_tokens(&big, None).await, text.len() as u64);
        // With the head: the same counts, read from the messages' span.
        let chat = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}],"n":1}}"#,
            "hello world ".repeat(2000)
        );
        let chat = Bytes::from(chat);
        let head = crate::llm::parse_head(&chat).unwrap();
        assert!(head.messages_span.is_some());
        assert_eq!(reserve_prompt_tokens(&chat, Some(&head)).await, prompt_tokens(&chat));
    }

    /// OpenAI's tokenizer (tiktoken, as ported to Rust) on `s`.
    fn tiktoken(s: &str) -> u64 {
        static T: std::sync::OnceLock<tiktoken_rs::CoreBPE> = std::sync::OnceLock::new();
        T.get_or_init(|| tiktoken_rs::o200k_base().unwrap())
            .encode_ordinary(s)
            .len() as u64
    }

    #[test]
    fn counts_as_tiktoken_does() {
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        for s in [
            "",
            "hello",
            "hello world",
            "  leading spaces\n\n and   trailing  ",
            "caf\u{e9} \"quoted\"\n",
            "日本語のテキスト、絵文字🎉も",
            "x = 12345678901234; y=[1,2,3]\r\n",
            "I'm You'RE they'll WE'VE",
            "\t\t tabs\u{a0}nbsp\u{2028}line",
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
            "ÀÉÎÕÜ ß ǅ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
            &long,
        ] {
            assert_eq!(bpe(s), tiktoken(s), "{s:?}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000.max(ProptestConfig::default().cases)))]

            #[test]
            fn counts_as_tiktoken_does_on_any_text(
                text in proptest::collection::vec(
                    prop_oneof![
                        any::<char>(),
                        proptest::sample::select(vec![' ', ' ', '\n', '\t', '\'', 'a', 'S', '1', '.', '\u{a0}']),
                    ],
                    0..48,
                ),
            ) {
                let text = String::from_iter(text);
                prop_assert_eq!(bpe(&text), super::tiktoken(&text), "{:?}", text);
            }

            #[test]
            fn byte_bound_never_under_counts(
                texts in proptest::collection::vec(proptest::collection::vec(any::<char>(), 0..24), 0..4),
                chat in any::<bool>(),
            ) {
                let texts: Vec<String> = texts.into_iter().map(String::from_iter).collect();
                let body = if chat {
                    let msgs: Vec<_> = texts.iter().map(|t| serde_json::json!({"role": "user", "content": t})).collect();
                    serde_json::json!({"model": "m", "messages": msgs})
                } else {
                    serde_json::json!({"model": "m", "input": texts})
                };
                let body = serde_json::to_vec(&body).unwrap();
                prop_assert!(prompt_tokens_upper_bound(&body) >= prompt_tokens(&body));
            }
        }
    }
}
