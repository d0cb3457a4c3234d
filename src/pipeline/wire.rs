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
