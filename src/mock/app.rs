//! The mock as a Pingora [`HttpServerApp`]: read one request, answer it on
//! the session (JSON or a timed SSE stream), hand the connection back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER,
    TRANSFER_ENCODING, VARY,
};
use http::{HeaderName, HeaderValue, Version};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::behaviour::{parse_config_update, Behaviour, Generated, InFlight, Settings, MAX_DELAY};
use super::capacity::{Admission, Refusal, Slot};
use super::completions::{prefill_words, Generation, Kind};
use super::embeddings::embeddings_answer;
use super::errors::{
    capacity_exceeded, content_filtered, context_length_exceeded, error_body, failure_body, invalid_request,
    model_not_found, prefill_unsupported,
};
use super::faults::{parse_spec, CliFaults, Fault, FaultSpec, StreamBreak};
use super::messages;
use super::options::{fault_header_name, Flavor, Gzip, MockOptions};
use super::responses::ResponsePlan;
use super::routes::{route, Api, Route};
use super::sse::{gzip, sse_event, Framing, TokenEvents, SSE_DONE};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// The event of a `malformed` fault: JSON cut short.
const MALFORMED_EVENT: &[u8] = b"data: {\"choices\": [ not json\n\n";

/// Never preallocate more than this for a request body, whatever Content-Length claims.
const MAX_BODY_PREALLOC: usize = 64 << 20;

/// What the mock received, echoed in `x-mock-*` headers of every API answer.
struct Echo {
    body_sha256: String,
    body_len: usize,
    authorization: HeaderValue,
    request_id: HeaderValue,
    model: HeaderValue,
    /// Its 200 answer goes out gzip-compressed (`--gzip`).
    gzip: bool,
    /// `x-ratelimit-limit-requests` and `x-ratelimit-remaining-requests`,
    /// with `--capacity`.
    rate_limit: Option<(u32, u64)>,
    /// An Anthropic API request: answered in its format, its `x-api-key`
    /// and `anthropic-version` echoed.
    anthropic: bool,
    api_key: HeaderValue,
    anthropic_version: HeaderValue,
    /// The W3C `traceparent` received, if any.
    traceparent: Option<HeaderValue>,
}

impl Echo {
    fn new(request: &RequestHeader, body: &ReceivedBody) -> Self {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("none"))
        };
        Echo {
            body_sha256: body.sha256_hex.clone(),
            body_len: body.bytes.len(),
            authorization: header(AUTHORIZATION.as_str()),
            request_id: header("x-request-id"),
            model: HeaderValue::from_static("none"),
            gzip: false,
            rate_limit: None,
            anthropic: false,
            api_key: header("x-api-key"),
            anthropic_version: header("anthropic-version"),
            traceparent: request.headers.get("traceparent").cloned(),
        }
    }

    fn set_model(&mut self, model: &str) {
        // A model name with control characters cannot be a header value.
        self.model = HeaderValue::from_bytes(model.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    }
}

/// Whether a request's `Accept-Encoding` allows gzip (named without `q=0`).
fn accepts_gzip(request: &RequestHeader) -> bool {
    request.headers.get_all(ACCEPT_ENCODING).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|coding| {
            let mut parts = coding.split(|b| *b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let refused = parts.any(|p| {
                let p = p.trim_ascii();
                p.strip_prefix(b"q=")
                    .is_some_and(|q| q.iter().all(|b| matches!(b, b'0' | b'.')))
            });
            name.eq_ignore_ascii_case(b"gzip") && !refused
        })
    })
}

/// A fully read request body and its SHA-256.
struct ReceivedBody {
    bytes: Bytes,
    sha256_hex: String,
}

/// How an exchange leaves its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Answered: the connection may serve another request.
    Reuse,
    /// The exchange failed (client gone, write error): drop the connection.
    Close,
    /// A fault: send what was written, then drop the connection.
    Cut,
    /// A fault: send what was written, then keep the connection open and
    /// silent until the client leaves (at most [`MAX_DELAY`]).
    Hold,
}

impl Ending {
    /// `Reuse` when every write went out, else `Close`.
    fn of(written: bool) -> Self {
        if written {
            Ending::Reuse
        } else {
            Ending::Close
        }
    }
}

/// What an API exchange holds until its connection is done with: its place
/// among the requests in flight and, once admitted, its slot.
struct Claims<'a> {
    _in_flight: InFlight<'a>,
    _slot: Option<Slot<'a>>,
}

/// The mock provider as a Pingora [`HttpServerApp`].
pub struct MockApp {
    behaviour: Behaviour,
    models: Vec<String>,
    listen: HeaderValue,
    faults: CliFaults,
    fault_header: HeaderName,
    gzip: Option<Gzip>,
    crlf: bool,
    flavor: Flavor,
}

impl MockApp {
    /// Build the application from the options (listening is up to the service).
    pub fn new(opts: &MockOptions) -> Result<Self, String> {
        let listen =
            HeaderValue::from_str(&opts.listen).map_err(|_| format!("invalid listen address `{}`", opts.listen))?;
        let faults = CliFaults::parse(&opts.faults)?;
        Ok(MockApp {
            behaviour: Behaviour::new(opts, &faults),
            models: opts.models.iter().filter(|m| !m.is_empty()).cloned().collect(),
            listen,
            faults,
            fault_header: fault_header_name(&opts.fault_header)?,
            gzip: opts.gzip,
            crlf: opts.crlf,
            flavor: opts.flavor,
        })
    }

    /// Answer one request. An API request stays counted in flight and keeps
    /// its slot (the returned claims) until its connection is done with,
    /// also while a fault holds it.
    async fn handle(&self, session: &mut ServerSession) -> (Ending, Option<Claims<'_>>) {
        let request = session.req_header();
        let route = match route(&request.method, request.uri.path()) {
            // Not this flavor's API.
            Route::Api(api) if !self.speaks(api) => Route::NotFound,
            r => r,
        };
        if expects_continue(request) {
            if route == Route::NotFound {
                // The client may never send the body: close rather than wait to drain it.
                session.set_keepalive(None);
            } else if session.write_continue_response().await.is_err() {
                // Without the 100, curl waits a second before sending large bodies.
                return (Ending::Close, None);
            }
        }
        if let Route::Api(api) = route {
            let in_flight = self.behaviour.begin_request();
            let mut slot = None;
            let ending = self.serve_api(session, api, &mut slot).await;
            let claims = Claims {
                _in_flight: in_flight,
                _slot: slot,
            };
            return (ending, Some(claims));
        }
        (self.serve_control(session, route).await, None)
    }

    /// The control endpoints, and the 404 of an unknown URL.
    async fn serve_control(&self, session: &mut ServerSession, route: Route) -> Ending {
        match route {
            Route::GetConfig => {
                let settings = self.behaviour.config_json();
                self.respond(session, 200, None, &settings, None).await
            }
            Route::SetConfig => {
                let Some(body) = read_body(session).await else {
                    return Ending::Close;
                };
                match parse_config_update(&body.bytes) {
                    Ok(update) => {
                        self.behaviour.apply(&update);
                        let settings = self.behaviour.config_json();
                        self.respond(session, 200, None, &settings, None).await
                    }
                    Err(message) => {
                        let error = invalid_request(&message);
                        self.respond(session, 400, None, &error, None).await
                    }
                }
            }
            Route::Stats => {
                let stats = self.behaviour.stats_json();
                self.respond(session, 200, None, &stats, None).await
            }
            Route::StatsReset => {
                self.behaviour.reset_stats();
                let stats = self.behaviour.stats_json();
                self.respond(session, 200, None, &stats, None).await
            }
            // API routes never come here (`handle` serves them).
            Route::NotFound | Route::Api(_) => {
                let message = format!(
                    "Unknown request URL: {} {}",
                    session.req_header().method,
                    session.req_header().uri.path()
                );
                let error = error_body(&message, "invalid_request_error", Some("unknown_url"));
                self.respond(session, 404, None, &error, None).await
            }
        }
    }

    /// Answer an API request; `slot` receives the slot it is admitted to
    /// (all but `GET /models`, which health checks call), for the caller to
    /// hold until the connection is done with.
    async fn serve_api<'a>(&'a self, session: &mut ServerSession, api: Api, slot: &mut Option<Slot<'a>>) -> Ending {
        let Some(body) = read_body(session).await else {
            return Ending::Close;
        };
        let mut echo = Echo::new(session.req_header(), &body);
        echo.anthropic = api.is_anthropic();
        echo.gzip = match self.gzip {
            None => false,
            Some(Gzip::Always) => true,
            Some(Gzip::Requested) => accepts_gzip(session.req_header()),
        };
        let header_spec = match self.header_fault(session.req_header()) {
            Ok(spec) => spec,
            Err(message) => {
                let error = error_body(&message, "invalid_request_error", Some("invalid_fault_spec"));
                return self.respond(session, 400, Some(&echo), &error, None).await;
            }
        };

        let request = if api == Api::Models {
            Value::Null
        } else {
            let request = match serde_json::from_slice::<Value>(&body.bytes) {
                Ok(v) if v.is_object() => v,
                Ok(_) => {
                    let error = invalid_request("The request body must be a JSON object.");
                    return self.respond(session, 400, Some(&echo), &error, None).await;
                }
                Err(e) => {
                    let error = invalid_request(&format!("We could not parse the JSON body of your request: {e}"));
                    return self.respond(session, 400, Some(&echo), &error, None).await;
                }
            };
            let Some(model) = request.get("model").and_then(Value::as_str) else {
                let error = invalid_request("You must provide a model parameter.");
                return self.respond(session, 400, Some(&echo), &error, None).await;
            };
            echo.set_model(model);
            if !self.serves(model) {
                let error = model_not_found(model);
                return self.respond(session, 404, Some(&echo), &error, None).await;
            }
            if api.is_anthropic() {
                // Answered as the chat request it amounts to.
                let chat = match messages::chat_request(&body.bytes, api == Api::Messages) {
                    Ok(chat) => chat,
                    Err(message) => {
                        let error = invalid_request(&message);
                        return self.respond(session, 400, Some(&echo), &error, None).await;
                    }
                };
                if api == Api::CountTokens {
                    let n = Generation::plan(Kind::Chat, &chat, model, 0, 0, 0).prompt_tokens;
                    let answer = serde_json::json!({ "input_tokens": n });
                    echo.anthropic = false; // already Anthropic's shape
                    return self.respond(session, 200, Some(&echo), &answer, None).await;
                }
                chat
            } else {
                request
            }
        };

        if api != Api::Models {
            match self.admit(session, &mut echo).await {
                Ok(admitted) => *slot = Some(admitted),
                Err(ending) => return ending,
            }
        }
        // Taken once admitted: a change made while it waited applies.
        let settings = match slot {
            Some(slot) => self.behaviour.settings().slowed(slot.slowdown()),
            None => self.behaviour.settings(),
        };

        let model = request.get("model").and_then(Value::as_str);
        let fault = match self.fault_for(api, header_spec.as_ref(), model) {
            Ok(fault) => fault,
            Err(message) => {
                let error = invalid_request(&message);
                return self.respond(session, 400, Some(&echo), &error, None).await;
            }
        };
        if let Some(ending) = self.refuse(session, &echo, api, &request, fault).await {
            return ending;
        }

        if settings.should_fail() {
            let (error, retry_after) = failure_body(settings.fail_status);
            let retry_after = retry_after.then_some("1");
            return self
                .respond(session, settings.fail_status, Some(&echo), &error, retry_after)
                .await;
        }

        let model = model.unwrap_or("");
        match api {
            Api::Chat | Api::Completions | Api::Messages | Api::CountTokens => {
                let kind = if api == Api::Completions {
                    Kind::Text
                } else {
                    Kind::Chat
                };
                self.complete(session, &echo, kind, &request, &settings, fault).await
            }
            Api::Responses => self.respond_to(session, &echo, &request, &settings, fault).await,
            Api::Embeddings => match embeddings_answer(&request, model) {
                Ok(answer) => {
                    // Embeddings have latency but no decoding phase.
                    pause(fault.and_then(Fault::first_token_delay).unwrap_or(settings.ttft)).await;
                    let mut tally = self.behaviour.generated();
                    tally.prompt = answer
                        .pointer("/usage/prompt_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    self.answer(session, &echo, &answer, fault).await
                }
                Err(message) => {
                    let error = invalid_request(&message);
                    self.respond(session, 400, Some(&echo), &error, None).await
                }
            },
            Api::Models => {
                let answer = models_answer(&self.models);
                self.respond(session, 200, Some(&echo), &answer, None).await
            }
        }
    }

    /// Answer a (chat) completion, streamed or not, shaped by `fault`.
    async fn complete(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        kind: Kind,
        request: &Value,
        settings: &Settings,
        fault: Option<Fault>,
    ) -> Ending {
        let model = request.get("model").and_then(Value::as_str).unwrap_or("");
        let generation = Generation::plan(
            kind,
            request,
            model,
            settings.completion_tokens,
            self.behaviour.next_id(),
            unix_now(),
        );
        if generation.prefill {
            self.behaviour.prefilled();
        }
        let mut tally = self.behaviour.generated();
        let ending = if generation.stream {
            self.stream(session, echo, &generation, settings, fault, &mut tally)
                .await
        } else {
            pause(answer_time(settings, fault, generation.tokens)).await;
            // Generated whole, whatever becomes of the answer.
            tally.prompt = generation.prompt_tokens;
            tally.completion = generation.completion_tokens();
            self.answer(session, echo, &generation.full_answer(), fault).await
        };
        // A stream that a fault ends early may end cleanly, yet it is not a full answer.
        let broken = generation.stream && fault.and_then(Fault::stream_break).is_some();
        if ending == Ending::Reuse && !broken {
            self.behaviour.completed();
        }
        ending
    }

    /// A slot for this request, after waiting in the queue if need be; else
    /// the ending of its 429 (slots and queue full) or of the client leaving
    /// while it waited.
    async fn admit<'a>(&'a self, session: &mut ServerSession, echo: &mut Echo) -> Result<Slot<'a>, Ending> {
        let slot = match self.behaviour.capacity().admit() {
            Admission::Admitted(slot) => slot,
            Admission::Queued(waiting) => tokio::select! {
                slot = waiting.admitted() => slot,
                // Dropping the wait gives its place (or a slot just granted) back.
                _ = session.read_body_or_idle(true) => return Err(Ending::Close),
            },
            Admission::Refused(refusal) => return Err(self.refuse_over_capacity(session, echo, refusal).await),
        };
        echo.rate_limit = slot.rate_limit();
        Ok(slot)
    }

    /// 429 `rate_limit_exceeded`: every slot busy and the queue full.
    async fn refuse_over_capacity(&self, session: &mut ServerSession, echo: &mut Echo, refusal: Refusal) -> Ending {
        echo.rate_limit = Some((refusal.capacity, 0));
        let error = capacity_exceeded(refusal.capacity, refusal.queue);
        let retry_after = refusal.retry_after_secs.to_string();
        self.respond(session, 429, Some(echo), &error, Some(&retry_after)).await
    }

    fn speaks(&self, api: Api) -> bool {
        match self.flavor {
            Flavor::Both => true,
            Flavor::Openai => !api.is_anthropic(),
            Flavor::Anthropic => api.is_anthropic() || api == Api::Models,
        }
    }

    fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// The spec of the fault header, if the request has one.
    fn header_fault(&self, request: &RequestHeader) -> Result<Option<FaultSpec>, String> {
        let Some(value) = request.headers.get(&self.fault_header) else {
            return Ok(None);
        };
        let name = &self.fault_header;
        let text = value
            .to_str()
            .map_err(|_| format!("invalid {name} header: a fault spec is visible ASCII"))?;
        parse_spec(text.trim())
            .map(Some)
            .map_err(|e| format!("invalid {name} header: {e}"))
    }

    /// The fault acting on this request: the header's spec, else the
    /// request model's `--fault`, else the global one, when its counters say
    /// it acts now. `GET /models` (health checks) only heeds `flap`.
    /// Without a spec nothing is locked or counted. `Err`: too many specs.
    fn fault_for(&self, api: Api, header: Option<&FaultSpec>, model: Option<&str>) -> Result<Option<Fault>, String> {
        let Some(spec) = header.or_else(|| self.faults.select(model)) else {
            return Ok(None);
        };
        if api == Api::Models && !matches!(spec.fault, Fault::Flap { .. }) {
            return Ok(None);
        }
        Ok(self.behaviour.record_fault(spec)?.then_some(spec.fault))
    }

    /// Answer a fault that takes the place of the answer; `None` when the
    /// request gets its answer (perhaps shaped by the fault).
    async fn refuse(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        api: Api,
        request: &Value,
        fault: Option<Fault>,
    ) -> Option<Ending> {
        let (status, body, retry_after) = match fault? {
            Fault::Reset => return Some(Ending::Cut),
            Fault::Hang => return Some(Ending::Hold),
            Fault::Status { code, retry_after } => (code, failure_body(code).0, retry_after),
            Fault::ContextLength => (400, context_length_exceeded(), None),
            Fault::ContentFilter => (400, content_filtered(), None),
            Fault::Flap { .. } => (503, failure_body(503).0, None),
            Fault::RejectPrefill if matches!(api, Api::Chat | Api::Messages) && prefill_words(request).is_some() => {
                (400, prefill_unsupported(), None)
            }
            _ => return None,
        };
        let retry_after = retry_after.map(|r| r.value(SystemTime::now()));
        Some(
            self.respond(session, status, Some(echo), &body, retry_after.as_deref())
                .await,
        )
    }

    /// Response header shared by every answer.
    fn header(
        &self,
        status: u16,
        content_type: &'static str,
        echo: Option<&Echo>,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut header = ResponseHeader::build(status, Some(10))?;
        header.insert_header(CONTENT_TYPE, content_type)?;
        header.insert_header("x-mock-listen", self.listen.clone())?;
        if let Some(echo) = echo {
            header.insert_header("x-mock-body-sha256", echo.body_sha256.as_str())?;
            header.insert_header("x-mock-body-len", echo.body_len)?;
            header.insert_header("x-mock-authorization", echo.authorization.clone())?;
            header.insert_header("x-mock-request-id", echo.request_id.clone())?;
            header.insert_header("x-mock-model", echo.model.clone())?;
            if let Some(tp) = &echo.traceparent {
                header.insert_header("x-mock-traceparent", tp.clone())?;
            }
            if echo.anthropic {
                header.insert_header("x-mock-api-key", echo.api_key.clone())?;
                header.insert_header("x-mock-anthropic-version", echo.anthropic_version.clone())?;
            }
            if let Some((limit, remaining)) = echo.rate_limit {
                header.insert_header("x-ratelimit-limit-requests", limit)?;
                header.insert_header("x-ratelimit-remaining-requests", remaining)?;
            }
        }
        Ok(header)
    }

    /// The header of a JSON answer of `len` bytes.
    fn json_header(
        &self,
        status: u16,
        echo: Option<&Echo>,
        len: usize,
        retry_after: Option<&str>,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut header = self.header(status, JSON, echo)?;
        header.insert_header(CONTENT_LENGTH, len)?;
        if let Some(retry_after) = retry_after {
            header.insert_header(RETRY_AFTER, retry_after)?;
        }
        Ok(header)
    }

    /// Send a complete JSON answer with a content-length.
    async fn respond(
        &self,
        session: &mut ServerSession,
        status: u16,
        echo: Option<&Echo>,
        body: &Value,
        retry_after: Option<&str>,
    ) -> Ending {
        let mut body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut status = status;
        if echo.is_some_and(|e| e.anthropic) {
            (status, body) = messages::answer(status, body);
        }
        let compress = status == 200 && echo.is_some_and(|e| e.gzip);
        if compress {
            body = gzip(&body);
        }
        let Ok(mut header) = self.json_header(status, echo, body.len(), retry_after) else {
            return Ending::Close;
        };
        if compress
            && (header.insert_header(CONTENT_ENCODING, "gzip").is_err()
                || header.append_header(VARY, "accept-encoding").is_err())
        {
            return Ending::Close;
        }
        Ending::of(
            session.write_response_header(Box::new(header)).await.is_ok()
                && session.write_response_body(body, true).await.is_ok(),
        )
    }

    /// A 200 JSON answer, or what a fault leaves of it: `cut` sends the
    /// header (with the full content-length) and half the body, then drops
    /// the connection; `stall` sends the header alone and holds it.
    async fn answer(&self, session: &mut ServerSession, echo: &Echo, body: &Value, fault: Option<Fault>) -> Ending {
        let ending = match fault {
            Some(Fault::Cut { .. }) => Ending::Cut,
            Some(Fault::Stall { .. }) => Ending::Hold,
            _ => return self.respond(session, 200, Some(echo), body, None).await,
        };
        let mut body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        if echo.anthropic {
            body = messages::answer(200, body).1;
        }
        let Ok(header) = self.json_header(200, Some(echo), body.len(), None) else {
            return Ending::Close;
        };
        let part = if ending == Ending::Cut {
            body.slice(..body.len() / 2)
        } else {
            Bytes::new()
        };
        // Pingora buffers both until the connection is abandoned (which flushes).
        if session.write_response_header(Box::new(header)).await.is_err()
            || session.write_response_body(part, false).await.is_err()
        {
            return Ending::Close;
        }
        ending
    }

    /// Send the header of an event stream, after `--ttft` unless a fault
    /// delays the first token instead. `None`: the client is gone.
    async fn open_stream(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        settings: &Settings,
        fault: Option<Fault>,
    ) -> Option<Framing> {
        if fault.and_then(Fault::first_token_delay).is_none() {
            // Headers go out with the first event, so time to first byte ==
            // ttft. A client that leaves meanwhile frees its slot at once.
            if !settings.ttft.is_zero() {
                tokio::select! {
                    _ = pause(settings.ttft) => {}
                    _ = session.read_body_or_idle(true) => return None,
                }
            }
        }
        let mut header = self.header(200, EVENT_STREAM, Some(echo)).ok()?;
        header.insert_header(CACHE_CONTROL, "no-cache").ok()?;
        if echo.gzip {
            header.insert_header(CONTENT_ENCODING, "gzip").ok()?;
        }
        let http11 = session.req_header().version == Version::HTTP_11;
        if !session.is_http2() {
            if http11 {
                header.insert_header(TRANSFER_ENCODING, "chunked").ok()?;
            } else {
                // HTTP/1.0 has no chunked encoding: the body ends with the connection.
                session.set_keepalive(None);
            }
        }
        session.write_response_header(Box::new(header)).await.ok()?;
        Some(Framing::new(self.crlf, echo.gzip).anthropic(echo.anthropic))
    }

    /// Stream a generation as server-sent events, one write per event, so
    /// the gateway sees tokens exactly when they are "generated" (with `n`
    /// choices, one event per choice per token). Ends `Close` as soon as a
    /// write fails (client gone), or where `fault` breaks the stream.
    /// `tally` counts the prompt once the stream starts and each token
    /// event written.
    async fn stream(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        generation: &Generation,
        settings: &Settings,
        fault: Option<Fault>,
        tally: &mut Generated<'_>,
    ) -> Ending {
        let Some(mut out) = self.open_stream(session, echo, settings, fault).await else {
            return Ending::Close;
        };
        tally.prompt = generation.prompt_tokens;
        for choice in 0..generation.choices {
            if let Some(role) = generation.role_chunk(choice) {
                if !send_event(session, out.event(sse_event(&role))).await {
                    return Ending::Close;
                }
            }
        }
        if !late_first_token(session, fault).await {
            return Ending::Close;
        }
        let pace = Pace::new(settings);
        let tokens = TokenEvents::new(generation);
        let stop = fault.and_then(Fault::stream_break);
        for (sent, index) in (0u32..).zip(generation.indices()) {
            if let Some((after, how)) = stop {
                if sent == after {
                    return break_stream(session, how, &mut out).await;
                }
            }
            pace.wait(sent).await;
            for choice in 0..generation.choices {
                if !send_event(session, out.event(tokens.event(generation, choice, index))).await {
                    return Ending::Close;
                }
                tally.completion += 1;
            }
        }
        if let Some((_, how)) = stop {
            // `after` is at least the tokens generated: break after the last one.
            return break_stream(session, how, &mut out).await;
        }
        for choice in 0..generation.choices {
            if !send_event(session, out.event(sse_event(&generation.finish_chunk(choice)))).await {
                return Ending::Close;
            }
        }
        if let Some(usage) = generation.usage_chunk() {
            if !send_event(session, out.event(sse_event(&usage))).await {
                return Ending::Close;
            }
        }
        let mut last = BytesMut::from(&out.event(Bytes::from_static(SSE_DONE))[..]);
        last.extend_from_slice(&out.end());
        Ending::of(session.write_response_body(last.freeze(), true).await.is_ok())
    }

    /// Answer a Responses API request, streamed or not, shaped by `fault`.
    async fn respond_to(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        request: &Value,
        settings: &Settings,
        fault: Option<Fault>,
    ) -> Ending {
        let model = request.get("model").and_then(Value::as_str).unwrap_or("");
        let plan = ResponsePlan::plan(
            request,
            model,
            settings.completion_tokens,
            self.behaviour.next_id(),
            unix_now(),
        );
        let mut tally = self.behaviour.generated();
        let ending = if plan.stream {
            self.stream_response(session, echo, &plan, settings, fault, &mut tally)
                .await
        } else {
            pause(answer_time(settings, fault, plan.tokens)).await;
            tally.prompt = plan.input_tokens;
            tally.completion = u64::from(plan.tokens);
            self.answer(session, echo, &plan.full_answer(), fault).await
        };
        let broken = plan.stream && fault.and_then(Fault::stream_break).is_some();
        if ending == Ending::Reuse && !broken {
            self.behaviour.completed();
        }
        ending
    }

    /// Stream a Responses API answer: its opening events, one delta per
    /// token (paced like a chat stream, broken where `fault` says), its
    /// closing events with `response.completed` last.
    async fn stream_response(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        plan: &ResponsePlan,
        settings: &Settings,
        fault: Option<Fault>,
        tally: &mut Generated<'_>,
    ) -> Ending {
        let Some(mut out) = self.open_stream(session, echo, settings, fault).await else {
            return Ending::Close;
        };
        tally.prompt = plan.input_tokens;
        for event in plan.opening_events() {
            if !send_event(session, out.event(event)).await {
                return Ending::Close;
            }
        }
        if !late_first_token(session, fault).await {
            return Ending::Close;
        }
        let pace = Pace::new(settings);
        let stop = fault.and_then(Fault::stream_break);
        for (sent, index) in (0u32..).zip(plan.indices()) {
            if let Some((after, how)) = stop {
                if sent == after {
                    return break_stream(session, how, &mut out).await;
                }
            }
            pace.wait(sent).await;
            if !send_event(session, out.event(plan.delta_event(sent, index))).await {
                return Ending::Close;
            }
            tally.completion += 1;
        }
        if let Some((_, how)) = stop {
            return break_stream(session, how, &mut out).await;
        }
        let mut last = BytesMut::new();
        for event in plan.closing_events() {
            last.extend_from_slice(&out.event(event));
        }
        last.extend_from_slice(&out.end());
        Ending::of(session.write_response_body(last.freeze(), true).await.is_ok())
    }
}

/// How long a non-streamed answer of `tokens` takes, a fault's first-token delay included.
fn answer_time(settings: &Settings, fault: Option<Fault>, tokens: u32) -> Duration {
    match fault.and_then(Fault::first_token_delay) {
        Some(delay) => (delay + settings.decode_time(tokens)).min(MAX_DELAY),
        None => settings.generation_time(tokens),
    }
}

/// Token deadlines of one stream, from its start, so sleep overshoot does
/// not accumulate.
struct Pace {
    start: tokio::time::Instant,
    interval: Option<Duration>,
}

impl Pace {
    fn new(settings: &Settings) -> Self {
        Pace {
            start: tokio::time::Instant::now(),
            interval: settings.token_interval(),
        }
    }

    /// Wait until token step `sent` is due (the first at once).
    async fn wait(&self, sent: u32) {
        if let (Some(interval), true) = (self.interval, sent > 0) {
            let deadline = self.start + (interval * sent).min(MAX_DELAY);
            if deadline > tokio::time::Instant::now() {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for MockApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Ok(false) is a client closing an idle keep-alive connection: not an error.
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        let keepalive = if *shutdown.borrow() { None } else { Some(60) };
        session.set_keepalive(keepalive);
        let (ending, _claims) = self.handle(&mut session).await;
        match ending {
            Ending::Reuse => {}
            Ending::Close => return None,
            Ending::Cut | Ending::Hold => {
                abandon(session, ending == Ending::Hold).await;
                return None;
            }
        }
        let persistent_settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent_settings)),
            _ => None,
        }
    }
}

async fn send_event(session: &mut ServerSession, event: Bytes) -> bool {
    // An empty chunk would end a chunked body.
    event.is_empty() || session.write_response_body(event, false).await.is_ok()
}

/// End a stream where a fault breaks it.
async fn break_stream(session: &mut ServerSession, how: StreamBreak, out: &mut Framing) -> Ending {
    match how {
        StreamBreak::Cut => Ending::Cut,
        StreamBreak::Stall => Ending::Hold,
        StreamBreak::NoDone => end_body(session, out).await,
        StreamBreak::Malformed => {
            if !send_event(session, out.event(Bytes::from_static(MALFORMED_EVENT))).await {
                return Ending::Close;
            }
            end_body(session, out).await
        }
    }
}

/// End the body cleanly where it stands: the terminating chunk (HTTP/1.1)
/// or the end of the stream, with no finish chunk and no `[DONE]`.
async fn end_body(session: &mut ServerSession, out: &mut Framing) -> Ending {
    Ending::of(session.write_response_body(out.end(), true).await.is_ok())
}

/// Leave the connection of an exchange a fault ends: push out what was
/// written (Pingora buffers a header, and a body short of its
/// content-length, until more comes), then drop the connection, or with
/// `hold` keep it until the client leaves, at most [`MAX_DELAY`].
async fn abandon(session: ServerSession, hold: bool) {
    let leave = async move {
        match session {
            ServerSession::H1(h1) => {
                let mut stream = h1.into_inner();
                if stream.flush().await.is_ok() && hold {
                    // Whatever the client sends is ignored; EOF or an error means it left.
                    let mut scratch = [0u8; 1024];
                    while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
                }
            }
            // HTTP/2 writes are not buffered, and dropping the session resets the stream.
            mut other => {
                if hold {
                    let _ = other.read_body_or_idle(true).await;
                }
            }
        }
    };
    // The connection closes when the stream drops, on time-out too.
    let _ = tokio::time::timeout(MAX_DELAY, leave).await;
}

/// A `slow_first_token` fault: the header and the opening events are out,
/// only the first token is late. `false`: the client left meanwhile (the
/// exchange ends at once).
async fn late_first_token(session: &mut ServerSession, fault: Option<Fault>) -> bool {
    let Some(delay) = fault.and_then(Fault::first_token_delay) else {
        return true;
    };
    tokio::select! {
        _ = pause(delay) => true,
        _ = session.read_body_or_idle(true) => false,
    }
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn expects_continue(request: &RequestHeader) -> bool {
    request.version == Version::HTTP_11
        && request
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Read the whole request body, hashing it on the way. `None` on a read error.
async fn read_body(session: &mut ServerSession) -> Option<ReceivedBody> {
    let expected = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    let mut buffer = BytesMut::with_capacity(expected.min(MAX_BODY_PREALLOC));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                buffer.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    Some(ReceivedBody {
        bytes: buffer.freeze(),
        sha256_hex: hex::encode(hasher.finalize()),
    })
}

/// `GET /models`: the configured models.
fn models_answer(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "weir-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// `created` of an answer: seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
