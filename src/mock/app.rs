//! The mock as a Pingora [`HttpServerApp`]: read one request, answer it on
//! the session (JSON or a timed SSE stream), hand the connection back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER, TRANSFER_ENCODING,
};
use http::{HeaderValue, Version};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::behaviour::{parse_config_update, Behaviour, Settings, MAX_DELAY};
use super::completions::{Generation, Kind};
use super::embeddings::embeddings_answer;
use super::errors::{error_body, failure_body, invalid_request, model_not_found};
use super::options::MockOptions;
use super::routes::{route, Api, Route};
use super::sse::{sse_event, TokenEvents, SSE_DONE};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// Never preallocate more than this for a request body, whatever Content-Length claims.
const MAX_BODY_PREALLOC: usize = 64 << 20;

/// What the mock received, echoed in `x-mock-*` headers of every API answer.
struct Echo {
    body_sha256: String,
    body_len: usize,
    authorization: HeaderValue,
    request_id: HeaderValue,
    model: HeaderValue,
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
        }
    }

    fn set_model(&mut self, model: &str) {
        // A model name with control characters cannot be a header value.
        self.model = HeaderValue::from_bytes(model.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    }
}

/// A fully read request body and its SHA-256.
struct ReceivedBody {
    bytes: Bytes,
    sha256_hex: String,
}

/// The mock provider as a Pingora [`HttpServerApp`].
pub struct MockApp {
    behaviour: Behaviour,
    models: Vec<String>,
    listen: HeaderValue,
}

impl MockApp {
    /// Build the application from the options (listening is up to the service).
    pub fn new(opts: &MockOptions) -> Result<Self, String> {
        let listen =
            HeaderValue::from_str(&opts.listen).map_err(|_| format!("invalid listen address `{}`", opts.listen))?;
        Ok(MockApp {
            behaviour: Behaviour::new(opts),
            models: opts.models.iter().filter(|m| !m.is_empty()).cloned().collect(),
            listen,
        })
    }

    /// Answer one request; `false` means the connection must not be reused.
    async fn handle(&self, session: &mut ServerSession) -> bool {
        let request = session.req_header();
        let route = route(&request.method, request.uri.path());
        if expects_continue(request) {
            if route == Route::NotFound {
                // The client may never send the body: close rather than wait to drain it.
                session.set_keepalive(None);
            } else if session.write_continue_response().await.is_err() {
                // Without the 100, curl waits a second before sending large bodies.
                return false;
            }
        }
        match route {
            Route::Api(api) => self.serve_api(session, api).await,
            Route::GetConfig => {
                let settings = self.behaviour.settings().to_json();
                self.respond(session, 200, None, &settings, false).await
            }
            Route::SetConfig => {
                let Some(body) = read_body(session).await else {
                    return false;
                };
                match parse_config_update(&body.bytes) {
                    Ok(update) => {
                        self.behaviour.apply(&update);
                        let settings = self.behaviour.settings().to_json();
                        self.respond(session, 200, None, &settings, false).await
                    }
                    Err(message) => {
                        let error = invalid_request(&message);
                        self.respond(session, 400, None, &error, false).await
                    }
                }
            }
            Route::Stats => {
                let stats = self.behaviour.stats_json();
                self.respond(session, 200, None, &stats, false).await
            }
            Route::StatsReset => {
                self.behaviour.reset_stats();
                let stats = self.behaviour.stats_json();
                self.respond(session, 200, None, &stats, false).await
            }
            Route::NotFound => {
                let message = format!(
                    "Unknown request URL: {} {}",
                    session.req_header().method,
                    session.req_header().uri.path()
                );
                let error = error_body(&message, "invalid_request_error", Some("unknown_url"));
                self.respond(session, 404, None, &error, false).await
            }
        }
    }

    async fn serve_api(&self, session: &mut ServerSession, api: Api) -> bool {
        let _in_flight = self.behaviour.begin_request();
        let Some(body) = read_body(session).await else {
            return false;
        };
        let mut echo = Echo::new(session.req_header(), &body);
        let settings = self.behaviour.settings();

        let request = if api == Api::Models {
            Value::Null
        } else {
            let request = match serde_json::from_slice::<Value>(&body.bytes) {
                Ok(v) if v.is_object() => v,
                Ok(_) => {
                    let error = invalid_request("The request body must be a JSON object.");
                    return self.respond(session, 400, Some(&echo), &error, false).await;
                }
                Err(e) => {
                    let error = invalid_request(&format!("We could not parse the JSON body of your request: {e}"));
                    return self.respond(session, 400, Some(&echo), &error, false).await;
                }
            };
            let Some(model) = request.get("model").and_then(Value::as_str) else {
                let error = invalid_request("You must provide a model parameter.");
                return self.respond(session, 400, Some(&echo), &error, false).await;
            };
            echo.set_model(model);
            if !self.serves(model) {
                let error = model_not_found(model);
                return self.respond(session, 404, Some(&echo), &error, false).await;
            }
            request
        };

        if settings.should_fail() {
            let (error, retry_after) = failure_body(settings.fail_status);
            return self
                .respond(session, settings.fail_status, Some(&echo), &error, retry_after)
                .await;
        }

        let model = request.get("model").and_then(Value::as_str).unwrap_or("");
        match api {
            Api::Chat | Api::Completions => {
                let kind = if api == Api::Chat { Kind::Chat } else { Kind::Text };
                let generation = Generation::plan(
                    kind,
                    &request,
                    model,
                    settings.completion_tokens,
                    self.behaviour.next_id(),
                    unix_now(),
                );
                let done = if generation.stream {
                    self.stream(session, &echo, &generation, &settings).await
                } else {
                    pause(settings.generation_time(generation.tokens)).await;
                    let answer = generation.full_answer();
                    self.respond(session, 200, Some(&echo), &answer, false).await
                };
                if done {
                    self.behaviour.completed();
                }
                done
            }
            Api::Embeddings => match embeddings_answer(&request, model) {
                Ok(answer) => {
                    // Embeddings have latency but no decoding phase.
                    pause(settings.ttft).await;
                    self.respond(session, 200, Some(&echo), &answer, false).await
                }
                Err(message) => {
                    let error = invalid_request(&message);
                    self.respond(session, 400, Some(&echo), &error, false).await
                }
            },
            Api::Models => {
                let answer = models_answer(&self.models);
                self.respond(session, 200, Some(&echo), &answer, false).await
            }
        }
    }

    fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
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
        retry_after: bool,
    ) -> bool {
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let Ok(mut header) = self.header(status, JSON, echo) else {
            return false;
        };
        if header.insert_header(CONTENT_LENGTH, body.len()).is_err()
            || (retry_after && header.insert_header(RETRY_AFTER, "1").is_err())
        {
            return false;
        }
        session.write_response_header(Box::new(header)).await.is_ok()
            && session.write_response_body(body, true).await.is_ok()
    }

    /// Stream a generation as server-sent events, one write per event, so
    /// the gateway sees tokens exactly when they are "generated". Returns
    /// `false` as soon as a write fails (client gone).
    async fn stream(
        &self,
        session: &mut ServerSession,
        echo: &Echo,
        generation: &Generation,
        settings: &Settings,
    ) -> bool {
        // Headers go out with the first event, so time to first byte == ttft.
        pause(settings.ttft).await;
        let start = tokio::time::Instant::now();
        let Ok(mut header) = self.header(200, EVENT_STREAM, Some(echo)) else {
            return false;
        };
        if header.insert_header(CACHE_CONTROL, "no-cache").is_err() {
            return false;
        }
        let http11 = session.req_header().version == Version::HTTP_11;
        if !session.is_http2() {
            if http11 {
                if header.insert_header(TRANSFER_ENCODING, "chunked").is_err() {
                    return false;
                }
            } else {
                // HTTP/1.0 has no chunked encoding: the body ends with the connection.
                session.set_keepalive(None);
            }
        }
        if session.write_response_header(Box::new(header)).await.is_err() {
            return false;
        }

        if let Some(role) = generation.role_chunk() {
            if !send_event(session, sse_event(&role)).await {
                return false;
            }
        }
        let interval = settings.token_interval();
        let tokens = TokenEvents::new(generation);
        for index in 0..generation.tokens {
            if let (Some(interval), true) = (interval, index > 0) {
                // Deadlines from the start, so sleep overshoot does not accumulate.
                let deadline = start + (interval * index).min(MAX_DELAY);
                if deadline > tokio::time::Instant::now() {
                    tokio::time::sleep_until(deadline).await;
                }
            }
            if !send_event(session, tokens.event(generation, index)).await {
                return false;
            }
        }
        if !send_event(session, sse_event(&generation.finish_chunk())).await {
            return false;
        }
        if let Some(usage) = generation.usage_chunk() {
            if !send_event(session, sse_event(&usage)).await {
                return false;
            }
        }
        session
            .write_response_body(Bytes::from_static(SSE_DONE), true)
            .await
            .is_ok()
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
        if !self.handle(&mut session).await {
            return None;
        }
        let persistent_settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent_settings)),
            _ => None,
        }
    }
}

async fn send_event(session: &mut ServerSession, event: Bytes) -> bool {
    session.write_response_body(event, false).await.is_ok()
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
