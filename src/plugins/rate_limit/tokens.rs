//! Counting prompt tokens with OpenAI's BPE (o200k_base, bundled offline), so
//! token budgets can be reserved before a request goes out.

use once_cell::sync::Lazy;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

static BPE: Lazy<CoreBPE> = Lazy::new(|| tiktoken_rs::o200k_base().expect("bundled o200k_base encoding"));

/// Load the encoding now (it takes a moment), not on the first request.
pub fn warm_up() {
    Lazy::force(&BPE);
}

fn count_text(s: &str) -> u64 {
    BPE.encode_ordinary(s).len() as u64
}

fn count_content(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(t)) => count_text(t),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Prompt tokens of a chat, completion or embedding request body, counted the
/// way OpenAI bills chat messages (content plus a few tokens per message).
pub fn prompt_tokens(body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    if let Some(Value::Array(messages)) = v.get("messages") {
        let per_message: u64 = messages
            .iter()
            .map(|m| 4 + m.get("content").map_or(0, count_content) + m.get("name").map_or(0, count_content))
            .sum();
        return per_message + 3;
    }
    for field in ["prompt", "input"] {
        match v.get(field) {
            Some(Value::String(s)) => return count_text(s),
            Some(Value::Array(items)) => return items.iter().map(count_content).sum(),
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
    fn counts_prompt_and_input() {
        assert_eq!(prompt_tokens(br#"{"prompt":"hello world"}"#), 2);
        assert_eq!(prompt_tokens(br#"{"input":["hello","world"]}"#), 2);
        assert_eq!(prompt_tokens(b"not json"), 0);
    }
}
