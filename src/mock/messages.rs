//! Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).
//! The mock answers it as it answers a chat request — same knobs, faults,
//! capacity and `x-mock-*` headers — and writes the answer in Anthropic's
//! format: a message, `{"type":"error",…}` errors (503 and 529 as
//! `overloaded_error` 529), and a stream of `message_start`, `ping`,
//! `content_block_*`, `message_delta` and `message_stop` events.
//! The field mapping is `llm::anthropic`'s.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::llm::anthropic::{self, StreamFromOpenAi};
use crate::llm::sse::event_data;

/// The chat request an Anthropic request asks for, or the 400 message.
/// `generates`: a Messages request (a token count needs no `max_tokens`).
pub(super) fn chat_request(body: &[u8], generates: bool) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    // Anthropic requires it; an OpenAI-translated request must carry one.
    if generates && v.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("max_tokens: Field required".into());
    }
    let t = anthropic::request_to_openai(body)?;
    serde_json::from_slice(&t.body).map_err(|e| e.to_string())
}

/// A JSON answer as an Anthropic provider sends it: a message for a 200,
/// its error shape otherwise (with the status it uses).
pub(super) fn answer(status: u16, body: Bytes) -> (u16, Bytes) {
    if status == 200 {
        return (200, anthropic::response_from_openai(&body).unwrap_or(body));
    }
    anthropic::error_from_openai(status, &body)
}

/// Chat stream events rewritten as Anthropic's, a `ping` after `message_start`
/// as the real API sends. Events that are not chat chunks (a fault's
/// malformed event) pass as they are.
#[derive(Default)]
pub(super) struct Events {
    tr: StreamFromOpenAi,
    pinged: bool,
}

impl Events {
    pub(super) fn event(&mut self, event: Bytes) -> Bytes {
        let mut out = BytesMut::new();
        match event_data(&event) {
            Some(data) if self.tr.event(&data, &mut out) => {}
            _ => return event,
        }
        if !self.pinged && !out.is_empty() {
            self.pinged = true;
            out.extend_from_slice(b"event: ping\ndata: {\"type\": \"ping\"}\n\n");
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_need_max_tokens() {
        let e = chat_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, true).unwrap_err();
        assert!(chat_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, false).is_ok());
        assert!(e.contains("max_tokens"), "{e}");
        let v = chat_request(
            br#"{"model":"m","max_tokens":5,"system":"be brief","messages":[{"role":"user","content":"hi"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn overload_is_529() {
        let (status, body) = answer(
            503,
            Bytes::from_static(br#"{"error":{"message":"busy","type":"server_error"}}"#),
        );
        assert_eq!(status, 529);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
    }

    #[test]
    fn a_stream_opens_with_message_start_then_ping() {
        let mut e = Events::default();
        let first = e.event(Bytes::from_static(
            b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        ));
        let text = String::from_utf8_lossy(&first);
        assert!(text.starts_with("event: message_start\n"), "{text}");
        assert!(text.ends_with("event: ping\ndata: {\"type\": \"ping\"}\n\n"), "{text}");
        let odd = Bytes::from_static(b"data: {\"choices\": [ not json\n\n");
        assert_eq!(e.event(odd.clone()), odd);
    }
}
