//! Wire formats at weir's two edges. Inside, a request is OpenAI's chat
//! completions whatever the client spoke; here is where that stops being
//! true:
//! - at the client: [`AnthropicClient`] wraps the client connection of a
//!   `POST /v1/messages` request and writes every answer — a provider's,
//!   a cache hit, weir's own error — in Anthropic's format (unless the
//!   answer came natively from an Anthropic provider);
//! - at a provider: [`FromAnthropic`] reads an Anthropic provider's answer
//!   as OpenAI's, so failover, stream recovery, usage and every plugin see
//!   one format.
//!
//! The field-by-field mapping is `llm::anthropic`'s; this file only frames
//! it (whole bodies, SSE events, statuses and headers).

use super::downstream::Downstream;
use crate::llm::anthropic::{self, StreamFromOpenAi, StreamToOpenAi};
use crate::llm::sse::{event_data, event_name, SseSplitter};
use crate::upstream::AnswerMap;
use bytes::{Bytes, BytesMut};
use pingora_http::{RequestHeader, ResponseHeader};

/// Largest whole answer (JSON or error) translated; a larger one is a failure.
const MAX_TRANSLATED: usize = 32 << 20;

/// `POST …/messages` or `…/messages/count_tokens`: an Anthropic client.
pub(super) fn is_anthropic_client(req: &RequestHeader) -> bool {
    req.method == http::Method::POST && {
        let p = req.uri.path().trim_end_matches('/');
        p.ends_with("/messages") || p.ends_with("/messages/count_tokens")
    }
}

fn is_sse(h: &ResponseHeader) -> bool {
    h.headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Run each whole event `splitter` holds through `f` (its `event:` name
/// and its data); `Err` when an event is oversized or `f` refuses one.
fn each_event(splitter: &mut SseSplitter, mut f: impl FnMut(&str, &[u8]) -> bool) -> Result<(), &'static str> {
    loop {
        match splitter.next_event() {
            Ok(Some(ev)) => {
                let Some(data) = event_data(&ev) else { continue };
                let name = event_name(&ev).and_then(|n| std::str::from_utf8(n).ok()).unwrap_or("");
                if !f(name, &data) {
                    return Err("sent a malformed stream event");
                }
            }
            Ok(None) => return Ok(()),
            Err(_) => return Err("sent a stream event over 1 MiB"),
        }
    }
}

/// What is left in a splitter at the end of a stream, as one last event
/// (a stream whose last event lacks its blank line).
fn last_event(splitter: &mut SseSplitter) -> SseSplitter {
    let rest = splitter.take_rest();
    let mut s = SseSplitter::default();
    if !rest.is_empty() {
        s.push(&rest);
        s.push(b"\n\n");
    }
    s
}

// ---- a provider's answer: Anthropic -> OpenAI ----

/// An Anthropic provider's answer read as OpenAI's: a stream event by
/// event, a message or an error whole; `529 overloaded_error` becomes 503
/// (an overload every retry policy knows), its `retry-after` kept.
pub(super) struct FromAnthropic {
    body: Inbound,
}

enum Inbound {
    Stream(SseSplitter, StreamToOpenAi),
    Whole { status: u16, buf: BytesMut },
}

impl FromAnthropic {
    /// `include_usage`: the OpenAI request asked for a usage chunk.
    pub(super) fn new(head: &ResponseHeader, include_usage: bool) -> FromAnthropic {
        let status = head.status.as_u16();
        let body = if status == 200 && is_sse(head) {
            Inbound::Stream(SseSplitter::default(), StreamToOpenAi::new(include_usage))
        } else {
            Inbound::Whole {
                status,
                buf: BytesMut::new(),
            }
        };
        FromAnthropic { body }
    }
}

impl AnswerMap for FromAnthropic {
    fn head(&mut self, head: &mut ResponseHeader) {
        if head.status.as_u16() == 529 {
            let _ = head.set_status(503);
        }
        head.remove_header("content-length");
        // Anthropic's names for the counts an adaptive limit reads.
        for (from, to) in [
            (
                "anthropic-ratelimit-requests-remaining",
                "x-ratelimit-remaining-requests",
            ),
            ("anthropic-ratelimit-requests-limit", "x-ratelimit-limit-requests"),
        ] {
            if let Some(v) = head.headers.get(from).cloned() {
                if !head.headers.contains_key(to) {
                    let _ = head.insert_header(to, v);
                }
            }
        }
    }

    fn chunk(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), String> {
        match &mut self.body {
            Inbound::Stream(splitter, tr) => {
                splitter.push(chunk);
                each_event(splitter, |name, data| tr.event(name, data, out)).map_err(String::from)
            }
            Inbound::Whole { buf, .. } => {
                if buf.len() + chunk.len() > MAX_TRANSLATED {
                    return Err(format!("answered with a body over {MAX_TRANSLATED} bytes to translate"));
                }
                buf.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    fn end(&mut self, out: &mut BytesMut) -> Result<(), String> {
        match &mut self.body {
            Inbound::Stream(splitter, tr) => {
                each_event(&mut last_event(splitter), |name, data| tr.event(name, data, out)).map_err(String::from)
            }
            Inbound::Whole { status: 200, buf } => {
                let body =
                    anthropic::response_to_openai(buf).ok_or("answered 200 with something other than a message")?;
                out.extend_from_slice(&body);
                Ok(())
            }
            Inbound::Whole { status, buf } => {
                out.extend_from_slice(&anthropic::error_to_openai(*status, buf).1);
                Ok(())
            }
        }
    }
}

// ---- the client: OpenAI -> Anthropic ----

/// The connection of an Anthropic client: what the pipeline writes in
/// OpenAI's format reaches it in Anthropic's — a stream event by event
/// (never buffered), a completion or an error whole (statuses mapped:
/// weir's `queue_full` 503 is Anthropic's `overloaded_error` 529). An
/// answer the pipeline marks native (an Anthropic provider's) passes as is.
pub(super) struct AnthropicClient<'d, D> {
    d: &'d mut D,
    native: bool,
    out: Outbound,
}

enum Outbound {
    /// Before the header, or passing bytes as they are.
    Pass,
    Stream(SseSplitter, StreamFromOpenAi),
    /// A whole answer held until its end, to be translated at once.
    Whole(Box<ResponseHeader>, BytesMut),
}

impl<'d, D: Downstream> AnthropicClient<'d, D> {
    pub(super) fn new(d: &'d mut D) -> Self {
        AnthropicClient {
            d,
            native: false,
            out: Outbound::Pass,
        }
    }

    /// The held answer, translated, with its length.
    async fn flush_whole(&mut self, mut head: ResponseHeader, body: BytesMut) -> Result<(), ()> {
        let status = head.status.as_u16();
        let body = if status == 200 {
            anthropic::response_from_openai(&body).unwrap_or_else(|| body.freeze())
        } else {
            let (to, body) = anthropic::error_from_openai(status, &body);
            let _ = head.set_status(to);
            let _ = head.insert_header("content-type", "application/json");
            body
        };
        head.remove_header("transfer-encoding");
        let _ = head.insert_header("content-length", body.len().to_string());
        self.d.write_header(head, false).await?;
        self.d.write_body(body, true).await
    }
}

impl<D: Downstream> Downstream for AnthropicClient<'_, D> {
    fn req_header(&self) -> &RequestHeader {
        self.d.req_header()
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.d.req_header_mut()
    }
    fn body_empty(&mut self) -> bool {
        self.d.body_empty()
    }
    fn body_done(&mut self) -> bool {
        self.d.body_done()
    }
    async fn read_body(&mut self) -> Result<Option<Bytes>, ()> {
        self.d.read_body().await
    }
    async fn gone(&mut self) {
        self.d.gone().await
    }

    async fn write_header(&mut self, mut h: ResponseHeader, end: bool) -> Result<(), ()> {
        let status = h.status.as_u16();
        if self.native || status < 200 {
            self.out = Outbound::Pass;
            return self.d.write_header(h, end).await;
        }
        if status == 200 && is_sse(&h) {
            h.remove_header("content-length");
            self.out = Outbound::Stream(SseSplitter::default(), StreamFromOpenAi::new());
            return self.d.write_header(h, end).await;
        }
        if end {
            self.out = Outbound::Pass;
            return self.flush_whole(h, BytesMut::new()).await;
        }
        self.out = Outbound::Whole(Box::new(h), BytesMut::new());
        Ok(())
    }

    async fn write_body(&mut self, b: Bytes, end: bool) -> Result<(), ()> {
        match std::mem::replace(&mut self.out, Outbound::Pass) {
            Outbound::Pass => self.d.write_body(b, end).await,
            Outbound::Stream(mut splitter, mut tr) => {
                let mut out = BytesMut::new();
                splitter.push(&b);
                // An OpenAI chunk the translator cannot read is dropped: the
                // stream's own end (or its absence) still tells the client.
                let mut translate = |_: &str, data: &[u8]| {
                    let _ = tr.event(data, &mut out);
                    true
                };
                let _ = each_event(&mut splitter, &mut translate);
                if end {
                    let _ = each_event(&mut last_event(&mut splitter), &mut translate);
                }
                self.out = Outbound::Stream(splitter, tr);
                if out.is_empty() && !end {
                    return Ok(());
                }
                self.d.write_body(out.freeze(), end).await
            }
            Outbound::Whole(head, mut buf) => {
                buf.extend_from_slice(&b);
                if end {
                    return self.flush_whole(*head, buf).await;
                }
                self.out = Outbound::Whole(head, buf);
                Ok(())
            }
        }
    }

    fn no_keepalive(&mut self) {
        self.d.no_keepalive()
    }

    fn response_started(&self) -> bool {
        self.d.response_started() || matches!(self.out, Outbound::Whole(..))
    }

    fn native_answer(&mut self, native: bool) {
        self.native = native;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A client connection that records what is written to it.
    struct Recorder {
        req: RequestHeader,
        head: Option<ResponseHeader>,
        body: Vec<u8>,
    }

    impl Recorder {
        fn new() -> Recorder {
            Recorder {
                req: RequestHeader::build("POST", b"/v1/messages", None).unwrap(),
                head: None,
                body: Vec::new(),
            }
        }
    }

    impl Downstream for Recorder {
        fn req_header(&self) -> &RequestHeader {
            &self.req
        }
        fn req_header_mut(&mut self) -> &mut RequestHeader {
            &mut self.req
        }
        fn body_empty(&mut self) -> bool {
            true
        }
        fn body_done(&mut self) -> bool {
            true
        }
        async fn read_body(&mut self) -> Result<Option<Bytes>, ()> {
            Ok(None)
        }
        async fn gone(&mut self) {
            std::future::pending::<()>().await
        }
        async fn write_header(&mut self, h: ResponseHeader, _end: bool) -> Result<(), ()> {
            self.head = Some(h);
            Ok(())
        }
        async fn write_body(&mut self, b: Bytes, _end: bool) -> Result<(), ()> {
            self.body.extend_from_slice(&b);
            Ok(())
        }
        fn no_keepalive(&mut self) {}
        fn response_started(&self) -> bool {
            self.head.is_some()
        }
    }

    fn head(status: u16, content_type: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        h.insert_header("content-type", content_type).unwrap();
        h.insert_header("content-length", "123").unwrap();
        h
    }

    /// The JSON data of each event in an SSE body.
    fn data(body: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn an_anthropic_overload_reads_as_a_503_with_its_headers() {
        let mut h = head(529, "application/json");
        h.insert_header("retry-after", "7").unwrap();
        h.insert_header("anthropic-ratelimit-requests-remaining", "3").unwrap();
        let mut map = FromAnthropic::new(&h, false);
        map.head(&mut h);
        assert_eq!(h.status.as_u16(), 503);
        assert_eq!(h.headers.get("retry-after").unwrap(), "7");
        assert_eq!(h.headers.get("x-ratelimit-remaining-requests").unwrap(), "3");
        assert!(h.headers.get("content-length").is_none(), "the length changes");
        let mut out = BytesMut::new();
        map.chunk(br#"{"type":"error","error":{"type":"overloaded_error","#, &mut out)
            .unwrap();
        map.chunk(br#""message":"Overloaded"}}"#, &mut out).unwrap();
        assert!(out.is_empty(), "an error is translated whole");
        map.end(&mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["code"], "overloaded");
    }

    #[test]
    fn an_anthropic_stream_reads_as_openai_chunks_across_any_split() {
        let stream = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"c\",\"usage\":{\"input_tokens\":4}}}\r\n\r\nevent: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\nevent: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\r\n\r\nevent: message_stop\r\ndata: {\"type\":\"message_stop\"}";
        for split in [1, 7, 64, stream.len()] {
            let h = head(200, "text/event-stream");
            let mut map = FromAnthropic::new(&h, true);
            let mut out = BytesMut::new();
            for piece in stream.chunks(split) {
                map.chunk(piece, &mut out).unwrap();
            }
            // The last event lacks its blank line: the end still reads it.
            map.end(&mut out).unwrap();
            let text = String::from_utf8_lossy(&out);
            assert!(text.ends_with("data: [DONE]\n\n"), "split {split}: {text}");
            let chunks = data(&out);
            assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi", "split {split}");
            assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 4);
            assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 1);
        }
        let h = head(200, "text/event-stream");
        let mut map = FromAnthropic::new(&h, false);
        assert!(map.chunk(b"data: {not json\n\n", &mut BytesMut::new()).is_err());
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn an_anthropic_client_gets_anthropic_answers_unless_native() {
        block_on(async {
            // weir's own queue_full: 503 -> 529 overloaded_error, headers kept.
            let mut rec = Recorder::new();
            let mut c = AnthropicClient::new(&mut rec);
            let mut h = head(503, "application/json");
            h.insert_header("retry-after", "2").unwrap();
            c.write_header(h, false).await.unwrap();
            assert!(c.response_started(), "the head is held, the response has begun");
            let body = br#"{"error":{"message":"queue 'provider:p' is full","type":"queue_full","code":"queue_full","param":null}}"#;
            c.write_body(Bytes::from_static(body), true).await.unwrap();
            let h = rec.head.unwrap();
            assert_eq!(h.status.as_u16(), 529);
            assert_eq!(h.headers.get("retry-after").unwrap(), "2");
            assert_eq!(
                h.headers.get("content-length").unwrap().to_str().unwrap(),
                rec.body.len().to_string()
            );
            let v: Value = serde_json::from_slice(&rec.body).unwrap();
            assert_eq!(v["error"]["type"], "overloaded_error");

            // An OpenAI stream, event by event (an event split across writes).
            let mut rec = Recorder::new();
            let mut c = AnthropicClient::new(&mut rec);
            c.write_header(head(200, "text/event-stream"), false).await.unwrap();
            let role = b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel";
            c.write_body(Bytes::from_static(role), false).await.unwrap();
            let rest = b"lo\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            c.write_body(Bytes::from_static(rest), true).await.unwrap();
            assert!(rec.head.unwrap().headers.get("content-length").is_none());
            let events = data(&rec.body);
            let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(
                kinds,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ]
            );
            assert_eq!(events[2]["delta"]["text"], "Hello");
            assert_eq!(events[4]["delta"]["stop_reason"], "end_turn");

            // Native: the bytes as they are.
            let mut rec = Recorder::new();
            let mut c = AnthropicClient::new(&mut rec);
            c.native_answer(true);
            c.write_header(head(529, "application/json"), false).await.unwrap();
            c.write_body(Bytes::from_static(b"{\"type\":\"error\"}"), true)
                .await
                .unwrap();
            assert_eq!(rec.head.unwrap().status.as_u16(), 529);
            assert_eq!(rec.body, b"{\"type\":\"error\"}");
        });
    }
}
