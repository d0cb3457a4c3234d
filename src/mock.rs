//! A mock OpenAI-compatible provider.
//!
//! Used by `weir demo`, integration tests and load benchmarks. It speaks just
//! enough of the OpenAI API (`/chat/completions`, `/completions`,
//! `/embeddings`, `/models`, under any path prefix) to exercise a gateway:
//! latency shaping (time to first token, tokens per second), failure
//! injection that can be switched at runtime, and `x-mock-*` response headers
//! that echo what the gateway forwarded.
//!
//! The mock must never be the bottleneck of a benchmark, so it implements
//! [`HttpServerApp`] directly: responses are streamed straight onto the
//! session, nothing is logged per request and keep-alive connections are
//! handed back to Pingora for reuse.
//!
//! Control endpoints (exact paths, no prefix):
//! - `GET /mock/config`, `POST /mock/config` with any subset of
//!   `{"fail_rate": 1.0, "fail_status": 500, "ttft_ms": 10,
//!   "tokens_per_sec": 100, "completion_tokens": 16}`;
//! - `GET /mock/stats` → `{"requests", "in_flight", "max_in_flight", "completions"}`;
//! - `POST /mock/stats/reset`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RETRY_AFTER, TRANSFER_ENCODING,
};
use http::{HeaderValue, Method, Version};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Run a mock OpenAI-compatible provider (options of `weir mock`).
#[derive(Debug, Clone, clap::Args)]
pub struct MockOptions {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Time to first token (e.g. 50ms)
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub ttft: Duration,
    /// Completion tokens per second when streaming/generating (0 = instant)
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Completion tokens in each answer
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u32,
    /// Share of requests that fail (0.0..=1.0)
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Status of an injected failure
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,
    /// Models served, comma separated; others get 404 (empty = any model)
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Serve TLS with this PEM certificate chain
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// PEM private key matching --tls-cert
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Worker threads
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl Default for MockOptions {
    /// The same values as the command line defaults.
    fn default() -> Self {
        MockOptions {
            listen: "127.0.0.1:9000".to_string(),
            ttft: Duration::ZERO,
            tokens_per_sec: 0.0,
            completion_tokens: 16,
            fail_rate: 0.0,
            fail_status: 503,
            models: Vec::new(),
            tls_cert: None,
            tls_key: None,
            threads: 1,
        }
    }
}

/// Parse a human readable duration such as `50ms`, `1s` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

/// Build a Pingora listening service serving the mock, so that another
/// [`Server`] (e.g. the one of `weir demo`) can host it.
///
/// The service keeps its own thread count (`opts.threads`). With
/// `tls_cert`/`tls_key` it listens with TLS (rustls, HTTP/1.1); the files are
/// checked here because Pingora would only panic once the server starts.
pub fn mock_service(opts: MockOptions) -> Result<Service<MockApp>, String> {
    validate_options(&opts)?;
    let app = MockApp::new(&opts)?;
    let mut service = Service::new("weir-mock".to_string(), app);
    service.threads = Some(opts.threads);
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            check_tls_files(cert, key)?;
            service
                .add_tls(&opts.listen, cert, key)
                .map_err(|e| format!("cannot serve TLS on {}: {e}", opts.listen))?;
        }
        (None, None) => service.add_tcp(&opts.listen),
        _ => return Err("--tls-cert and --tls-key must be given together".to_string()),
    }
    Ok(service)
}

/// Run a mock until the process is killed (SIGINT/SIGTERM).
///
/// Uses its own Pingora [`Server`] (no daemon, `opts.threads` threads, no
/// grace period). Once the listener accepts connections it prints
/// `weir mock listening on ADDR` on stdout and flushes, so scripts and tests
/// can wait for that line.
pub fn run(opts: MockOptions) -> Result<(), String> {
    let listen = opts.listen.clone();
    let threads = opts.threads;
    let service = mock_service(opts)?;
    // Pingora panics inside its runtime when it cannot bind; check first to
    // give a readable error (the tiny race with another process is acceptable).
    let probe = check_bindable(&listen)?;

    let conf = ServerConf {
        threads,
        daemon: false,
        // A killed mock should go away at once, not linger for Pingora's
        // default 5 minute grace period.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(service);
    announce_when_listening(listen, probe);
    server.run(RunArgs::default());
    Ok(())
}

// ---------------------------------------------------------------------------
// Options and live behaviour
// ---------------------------------------------------------------------------

/// Upper bound for any artificial delay, so a typo cannot park a request forever.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Largest `dimensions` accepted for embeddings.
const MAX_DIMENSIONS: u64 = 4096;
/// Dimensions of an embedding when the request does not ask for a number.
const DEFAULT_DIMENSIONS: usize = 8;
/// Never preallocate more than this for a request body, whatever Content-Length claims.
const MAX_BODY_PREALLOC: usize = 64 << 20;

fn validate_options(opts: &MockOptions) -> Result<(), String> {
    resolve(&opts.listen)?;
    check_fail_rate(opts.fail_rate)?;
    check_fail_status(u64::from(opts.fail_status))?;
    check_tokens_per_sec(opts.tokens_per_sec)?;
    if opts.threads == 0 {
        return Err("--threads must be at least 1".to_string());
    }
    Ok(())
}

fn check_fail_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("fail_rate must be between 0.0 and 1.0, got {rate}"))
    }
}

fn check_fail_status(status: u64) -> Result<u16, String> {
    // Only final error statuses make sense: a 1xx would break HTTP framing and
    // a 2xx/3xx is not a failure.
    match u16::try_from(status) {
        Ok(s) if (400..=599).contains(&s) => Ok(s),
        _ => Err(format!("fail_status must be within 400..=599, got {status}")),
    }
}

fn check_tokens_per_sec(tps: f64) -> Result<f64, String> {
    if tps.is_finite() && tps >= 0.0 {
        Ok(tps)
    } else {
        Err(format!("tokens_per_sec must be >= 0, got {tps}"))
    }
}

/// Seconds as a [`Duration`], clamped to `0..=MAX_DELAY`.
fn clamped_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(MAX_DELAY).min(MAX_DELAY)
}

/// A consistent snapshot of the live settings, taken once per request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    fail_rate: f64,
    fail_status: u16,
    ttft: Duration,
    tokens_per_sec: f64,
    completion_tokens: u32,
}

impl Settings {
    /// Roll the dice for failure injection (no RNG call when it cannot fail).
    fn should_fail(&self) -> bool {
        self.fail_rate >= 1.0 || (self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate)
    }

    /// Spacing between two streamed tokens, `None` when tokens are instant.
    fn token_interval(&self) -> Option<Duration> {
        (self.tokens_per_sec > 0.0).then(|| clamped_secs(1.0 / self.tokens_per_sec))
    }

    /// How long a non-streamed answer of `tokens` tokens takes.
    fn generation_time(&self, tokens: u32) -> Duration {
        let decode = if self.tokens_per_sec > 0.0 {
            clamped_secs(f64::from(tokens) / self.tokens_per_sec)
        } else {
            Duration::ZERO
        };
        (self.ttft + decode).min(MAX_DELAY)
    }

    fn to_json(self) -> Value {
        json!({
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "ttft_ms": self.ttft.as_secs_f64() * 1000.0,
            "tokens_per_sec": self.tokens_per_sec,
            "completion_tokens": self.completion_tokens,
        })
    }
}

/// A change requested through `POST /mock/config`.
#[derive(Debug, Default, Clone, PartialEq)]
struct ConfigUpdate {
    fail_rate: Option<f64>,
    fail_status: Option<u16>,
    ttft: Option<Duration>,
    tokens_per_sec: Option<f64>,
    completion_tokens: Option<u32>,
}

/// Parse and validate a `POST /mock/config` body. Unknown keys are rejected
/// so that a typo in a test fails loudly instead of silently doing nothing.
fn parse_config_update(body: &[u8]) -> Result<ConfigUpdate, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "body must be a JSON object".to_string())?;
    let mut update = ConfigUpdate::default();
    for (key, v) in object {
        let number = || v.as_f64().ok_or_else(|| format!("`{key}` must be a number"));
        let integer = || {
            v.as_u64()
                .ok_or_else(|| format!("`{key}` must be a non-negative integer"))
        };
        match key.as_str() {
            "fail_rate" => update.fail_rate = Some(check_fail_rate(number()?)?),
            "fail_status" => update.fail_status = Some(check_fail_status(integer()?)?),
            "ttft_ms" => {
                let ms = number()?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(format!("ttft_ms must be >= 0, got {ms}"));
                }
                update.ttft = Some(clamped_secs(ms / 1000.0));
            }
            "tokens_per_sec" => update.tokens_per_sec = Some(check_tokens_per_sec(number()?)?),
            "completion_tokens" => {
                let n = integer()?;
                let n = u32::try_from(n).map_err(|_| format!("completion_tokens is too large: {n}"))?;
                update.completion_tokens = Some(n);
            }
            other => {
                return Err(format!(
                    "unknown setting `{other}` (known: fail_rate, fail_status, ttft_ms, \
                     tokens_per_sec, completion_tokens)"
                ))
            }
        }
    }
    Ok(update)
}

/// Settings that can change at runtime plus counters, all lock-free so the
/// hot path never contends on a mutex.
#[derive(Debug)]
struct Behaviour {
    /// `f64` bit pattern.
    fail_rate: AtomicU64,
    fail_status: AtomicU16,
    ttft_us: AtomicU64,
    /// `f64` bit pattern.
    tokens_per_sec: AtomicU64,
    completion_tokens: AtomicU32,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    completions: AtomicU64,
    next_id: AtomicU64,
}

impl Behaviour {
    fn new(opts: &MockOptions) -> Self {
        Behaviour {
            fail_rate: AtomicU64::new(opts.fail_rate.to_bits()),
            fail_status: AtomicU16::new(opts.fail_status),
            ttft_us: AtomicU64::new(duration_us(opts.ttft.min(MAX_DELAY))),
            tokens_per_sec: AtomicU64::new(opts.tokens_per_sec.to_bits()),
            completion_tokens: AtomicU32::new(opts.completion_tokens),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            fail_rate: f64::from_bits(self.fail_rate.load(Ordering::Relaxed)),
            fail_status: self.fail_status.load(Ordering::Relaxed),
            ttft: Duration::from_micros(self.ttft_us.load(Ordering::Relaxed)),
            tokens_per_sec: f64::from_bits(self.tokens_per_sec.load(Ordering::Relaxed)),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }

    fn apply(&self, update: &ConfigUpdate) {
        if let Some(rate) = update.fail_rate {
            self.fail_rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        if let Some(status) = update.fail_status {
            self.fail_status.store(status, Ordering::Relaxed);
        }
        if let Some(ttft) = update.ttft {
            self.ttft_us.store(duration_us(ttft), Ordering::Relaxed);
        }
        if let Some(tps) = update.tokens_per_sec {
            self.tokens_per_sec.store(tps.to_bits(), Ordering::Relaxed);
        }
        if let Some(n) = update.completion_tokens {
            self.completion_tokens.store(n, Ordering::Relaxed);
        }
    }

    /// Count an API request; the returned guard keeps it in flight until dropped
    /// (also when the client goes away mid-answer).
    fn begin_request(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    fn completed(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn stats_json(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "max_in_flight": self.max_in_flight.load(Ordering::Relaxed),
            "completions": self.completions.load(Ordering::Relaxed),
        })
    }

    /// Zero the counters. `in_flight` cannot be zeroed (the running requests
    /// still decrement it), so the high-water mark restarts from it instead.
    fn reset_stats(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.completions.store(0, Ordering::Relaxed);
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Guard of one in-flight API request.
struct InFlight<'a>(&'a Behaviour);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

/// The OpenAI endpoints the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Embeddings,
    Models,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Api(Api),
    GetConfig,
    SetConfig,
    Stats,
    StatsReset,
    NotFound,
}

/// API endpoints match on the path suffix so any prefix (`/v1`, `/openai/v1`) works.
fn route(method: &Method, path: &str) -> Route {
    let path = path.trim_end_matches('/');
    match *method {
        Method::GET => match path {
            "/mock/config" => Route::GetConfig,
            "/mock/stats" => Route::Stats,
            p if p.ends_with("/models") => Route::Api(Api::Models),
            _ => Route::NotFound,
        },
        Method::POST => match path {
            "/mock/config" => Route::SetConfig,
            "/mock/stats/reset" => Route::StatsReset,
            p if p.ends_with("/chat/completions") => Route::Api(Api::Chat),
            p if p.ends_with("/completions") => Route::Api(Api::Completions),
            p if p.ends_with("/embeddings") => Route::Api(Api::Embeddings),
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

// ---------------------------------------------------------------------------
// Answers (pure JSON builders)
// ---------------------------------------------------------------------------

/// OpenAI's error envelope.
fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

/// The envelope of an injected failure, and whether it carries `retry-after`.
fn failure_body(status: u16) -> (Value, bool) {
    match status {
        429 => (
            error_body(
                "Rate limit reached (injected by weir mock)",
                "rate_limit_exceeded",
                Some("rate_limit_exceeded"),
            ),
            true,
        ),
        500..=599 => (
            error_body(
                "The server had an error while processing your request (injected by weir mock)",
                "server_error",
                None,
            ),
            false,
        ),
        _ => (
            error_body("Request failed (injected by weir mock)", "invalid_request_error", None),
            false,
        ),
    }
}

fn model_not_found(model: &str) -> Value {
    error_body(
        &format!("The model `{model}` does not exist"),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

fn invalid_request(message: &str) -> Value {
    error_body(message, "invalid_request_error", None)
}

fn count_words(text: &str) -> u64 {
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
fn token_piece(index: u32) -> String {
    if index == 0 {
        "tok0".to_string()
    } else {
        format!(" tok{index}")
    }
}

/// `tok0 tok1 … tok{n-1}`: each word is one token.
fn completion_text(tokens: u32) -> String {
    (0..tokens).map(token_piece).collect()
}

/// One server-sent event carrying a JSON payload.
fn sse_event(payload: &Value) -> Bytes {
    let mut event = b"data: ".to_vec();
    // Serialising a `Value` cannot fail (keys are strings).
    if serde_json::to_writer(&mut event, payload).is_err() {
        event.truncate(6);
        event.extend_from_slice(b"{}");
    }
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The stream terminator OpenAI sends.
const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Chat completion or legacy text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// Everything needed to answer one (chat) completion, streamed or not.
#[derive(Debug, Clone, PartialEq)]
struct Generation {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    tokens: u32,
    finish_reason: &'static str,
    prompt_tokens: u64,
    stream: bool,
    include_usage: bool,
}

impl Generation {
    fn plan(kind: Kind, request: &Value, model: &str, completion_tokens: u32, serial: u64, created: u64) -> Self {
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
    fn full_answer(&self) -> Value {
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
    fn role_chunk(&self) -> Option<Value> {
        (self.kind == Kind::Chat).then(|| {
            self.chunk(json!([{
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            }]))
        })
    }

    fn token_chunk(&self, index: u32) -> Value {
        self.piece_chunk(&token_piece(index), None)
    }

    fn finish_chunk(&self) -> Value {
        self.piece_chunk("", Some(self.finish_reason))
    }

    fn piece_chunk(&self, piece: &str, finish_reason: Option<&str>) -> Value {
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
    fn usage_chunk(&self) -> Option<Value> {
        self.include_usage.then(|| {
            let mut chunk = self.chunk(json!([]));
            chunk["usage"] = self.usage();
            chunk
        })
    }
}

/// Pre-rendered token events of one generation.
///
/// Every token chunk is the same JSON except for the token text, so the
/// event is rendered once around a marker and each token costs a copy rather
/// than building and serialising a JSON tree (streaming benchmarks write
/// tens of thousands of events per second).
struct TokenEvents {
    /// `(before, after)` the token text; `None` falls back to full rendering.
    template: Option<(Vec<u8>, Vec<u8>)>,
}

impl TokenEvents {
    /// Stands for the token text; token pieces (` tokN`) never need escaping.
    const MARKER: &'static str = "@@weir-mock-token@@";

    fn new(generation: &Generation) -> Self {
        let rendered = sse_event(&generation.piece_chunk(Self::MARKER, None));
        let marker = Self::MARKER.as_bytes();
        let positions: Vec<usize> = rendered
            .windows(marker.len())
            .enumerate()
            .filter_map(|(at, window)| (window == marker).then_some(at))
            .collect();
        // The model name is client controlled and could contain the marker:
        // only use the template when the marker is unambiguous.
        let template = match positions.as_slice() {
            [at] => Some((rendered[..*at].to_vec(), rendered[at + marker.len()..].to_vec())),
            _ => None,
        };
        TokenEvents { template }
    }

    fn event(&self, generation: &Generation, index: u32) -> Bytes {
        match &self.template {
            Some((before, after)) => {
                let piece = token_piece(index);
                let mut event = Vec::with_capacity(before.len() + piece.len() + after.len());
                event.extend_from_slice(before);
                event.extend_from_slice(piece.as_bytes());
                event.extend_from_slice(after);
                Bytes::from(event)
            }
            None => sse_event(&generation.token_chunk(index)),
        }
    }
}

/// One embedding input: the bytes its vector derives from and its token count.
#[derive(Debug, Clone, PartialEq)]
struct EmbeddingInput {
    seed: Vec<u8>,
    tokens: u64,
}

/// Split `input` (string, array of strings, token array or array of token
/// arrays) into the items that each get an embedding.
fn embedding_inputs(input: &Value) -> Result<Vec<EmbeddingInput>, String> {
    let shape_error = || "'input' must be a string, an array of strings or an array of token arrays".to_string();
    let item = |v: &Value| -> Result<EmbeddingInput, String> {
        match v {
            Value::String(s) => Ok(EmbeddingInput {
                seed: s.as_bytes().to_vec(),
                tokens: count_words(s),
            }),
            Value::Array(ids) if ids.iter().all(Value::is_number) => Ok(EmbeddingInput {
                seed: v.to_string().into_bytes(),
                tokens: ids.len() as u64,
            }),
            _ => Err(shape_error()),
        }
    };
    match input {
        Value::String(_) => Ok(vec![item(input)?]),
        Value::Array(items) if items.is_empty() => Err("'input' must not be empty".to_string()),
        // A flat array of numbers is a single tokenised input.
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![item(input)?]),
        Value::Array(items) => items.iter().map(item).collect(),
        _ => Err(shape_error()),
    }
}

/// A deterministic pseudo-embedding in `[-1, 1)`, derived from SHA-256 so the
/// same input always gets the same vector.
fn embedding_vector(seed: &[u8], dimensions: usize) -> Vec<f32> {
    let mut vector = Vec::with_capacity(dimensions);
    let mut block: u32 = 0;
    while vector.len() < dimensions {
        let digest = Sha256::new()
            .chain_update(seed)
            .chain_update(block.to_le_bytes())
            .finalize();
        for word in digest.chunks_exact(4) {
            if vector.len() == dimensions {
                break;
            }
            let raw = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            // 24 bits are exactly representable in an f32.
            vector.push((raw >> 8) as f32 / (1u32 << 23) as f32 - 1.0);
        }
        block = block.wrapping_add(1);
    }
    vector
}

/// Standard base64 of the little-endian f32s, as OpenAI returns for
/// `"encoding_format": "base64"` (the default of the official Python SDK).
fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The embeddings answer, or the message of a 400.
fn embeddings_answer(request: &Value, model: &str) -> Result<Value, String> {
    let input = request
        .get("input")
        .ok_or_else(|| "'input' is a required property".to_string())?;
    let inputs = embedding_inputs(input)?;
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| format!("'dimensions' must be an integer in 1..={MAX_DIMENSIONS}"))?,
    };
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(&input.seed, dimensions);
            let embedding = if base64 {
                Value::String(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|i| i.tokens).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// `GET /models`: the configured models.
fn models_answer(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "weir-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// The Pingora application
// ---------------------------------------------------------------------------

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

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

// ---------------------------------------------------------------------------
// Listening helpers
// ---------------------------------------------------------------------------

fn resolve(listen: &str) -> Result<SocketAddr, String> {
    listen
        .to_socket_addrs()
        .map_err(|e| format!("invalid listen address `{listen}`: {e}"))?
        .next()
        .ok_or_else(|| format!("listen address `{listen}` resolves to nothing"))
}

/// Check the address can be bound; return where to connect to probe it.
fn check_bindable(listen: &str) -> Result<SocketAddr, String> {
    let addr = resolve(listen)?;
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// Pingora binds inside its runtime and has no "listening" hook, so a
/// side thread polls the port and announces readiness once it accepts.
fn announce_when_listening(listen: String, probe: SocketAddr) {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
                let mut out = std::io::stdout().lock();
                // Nothing sensible to do if stdout is closed.
                let _ = writeln!(out, "weir mock listening on {listen}");
                let _ = out.flush();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("weir mock: {listen} did not start listening within 30s");
    });
}

/// Check the TLS files up front: Pingora's rustls listener panics at start-up
/// on unreadable or mismatched files.
fn check_tls_files(cert: &str, key: &str) -> Result<(), String> {
    use pingora_core::tls::{self as rustls, version};

    for (what, path) in [("certificate", cert), ("private key", key)] {
        if !Path::new(path).is_file() {
            return Err(format!("TLS {what} file `{path}` does not exist"));
        }
    }
    let (certs, private_key) = rustls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot read TLS files `{cert}` / `{key}`: {e}"))?
        .ok_or_else(|| format!("`{cert}` holds no PEM certificate or `{key}` holds no PEM private key"))?;
    rustls::install_default_crypto_provider();
    rustls::ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| format!("TLS certificate `{cert}` and key `{key}` are unusable: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(request: Value, kind: Kind, configured: u32) -> Generation {
        Generation::plan(kind, &request, "gpt-test", configured, 7, 1_700_000_000)
    }

    fn parse_sse(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).expect("utf-8");
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("framed as one SSE event");
        serde_json::from_str(json).expect("json payload")
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn routes_match_any_prefix() {
        assert_eq!(route(&Method::POST, "/v1/chat/completions"), Route::Api(Api::Chat));
        assert_eq!(
            route(&Method::POST, "/openai/v1/completions/"),
            Route::Api(Api::Completions)
        );
        assert_eq!(route(&Method::POST, "/completions"), Route::Api(Api::Completions));
        assert_eq!(route(&Method::POST, "/v1/embeddings"), Route::Api(Api::Embeddings));
        assert_eq!(route(&Method::GET, "/v1/models"), Route::Api(Api::Models));
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/v1/xcompletions"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/mock/config"), Route::SetConfig);
        assert_eq!(route(&Method::GET, "/mock/config"), Route::GetConfig);
        assert_eq!(route(&Method::GET, "/mock/stats"), Route::Stats);
        assert_eq!(route(&Method::POST, "/mock/stats/reset"), Route::StatsReset);
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
    fn streamed_chunks_rebuild_the_answer() {
        let request = json!({
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "x"}],
        });
        let g = generation(request, Kind::Chat, 4);
        assert!(g.stream && g.include_usage);

        let role = g.role_chunk().expect("chat has a role chunk");
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(
            role["choices"],
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
        );
        assert!(role["usage"].is_null());

        let text: String = (0..g.tokens)
            .map(|i| {
                let chunk = parse_sse(&sse_event(&g.token_chunk(i)));
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string()
            })
            .collect();
        assert_eq!(text, completion_text(4));

        let finish = g.finish_chunk();
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");

        let usage = g.usage_chunk().expect("usage requested");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 4);
        assert_eq!(usage["usage"]["prompt_tokens"], 4);
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

    #[test]
    fn token_template_matches_full_rendering() {
        for (kind, request) in [
            (Kind::Chat, json!({"stream": true})),
            (
                Kind::Chat,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
            (Kind::Text, json!({"stream": true})),
        ] {
            let g = generation(request, kind, 12);
            let events = TokenEvents::new(&g);
            assert!(events.template.is_some());
            for i in 0..g.tokens {
                assert_eq!(events.event(&g, i), sse_event(&g.token_chunk(i)));
            }
        }
        // A model name containing the marker falls back to full rendering.
        let tricky = Generation::plan(Kind::Chat, &json!({}), TokenEvents::MARKER, 3, 1, 0);
        let events = TokenEvents::new(&tricky);
        assert!(events.template.is_none());
        assert_eq!(events.event(&tricky, 2), sse_event(&tricky.token_chunk(2)));
    }

    #[test]
    fn sse_event_framing() {
        let event = sse_event(&json!({"a": 1}));
        assert_eq!(&event[..], b"data: {\"a\":1}\n\n");
        assert_eq!(SSE_DONE, b"data: [DONE]\n\n");
    }

    #[test]
    fn embeddings_one_per_input() {
        let request = json!({"model": "emb", "input": ["a b", "c"]});
        let answer = embeddings_answer(&request, "emb").expect("valid");
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(answer["data"][1]["index"], 1);
        assert_eq!(answer["data"][0]["object"], "embedding");
        assert_eq!(answer["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
        assert_eq!(answer["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

        let single = embeddings_answer(&json!({"input": "a b"}), "emb").expect("valid");
        assert_eq!(single["data"][0]["embedding"], answer["data"][0]["embedding"]);
        let tokens = embeddings_answer(&json!({"input": [1, 2, 3]}), "emb").expect("valid");
        assert_eq!(tokens["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(tokens["usage"]["prompt_tokens"], 3);

        assert!(embeddings_answer(&json!({}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": []}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": [{}]}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": "x", "dimensions": 0}), "emb").is_err());
    }

    #[test]
    fn embedding_vectors_are_deterministic_and_bounded() {
        let a = embedding_vector(b"hello", 20);
        assert_eq!(a.len(), 20);
        assert_eq!(a, embedding_vector(b"hello", 20));
        assert_ne!(a, embedding_vector(b"hellp", 20));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn base64_matches_reference() {
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]), "AAAAAAAAAAAAAAAA");
    }

    #[test]
    fn error_envelopes() {
        let (body, retry) = failure_body(429);
        assert!(retry);
        assert_eq!(body["error"]["type"], "rate_limit_exceeded");
        let (body, retry) = failure_body(503);
        assert!(!retry);
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["code"].is_null());
        assert!(body["error"]["param"].is_null());
        let body = model_not_found("nope");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["message"], "The model `nope` does not exist");
    }

    #[test]
    fn config_updates_validate() {
        let update = parse_config_update(br#"{"fail_rate": 1.0, "fail_status": 500, "ttft_ms": 10}"#).expect("valid");
        assert_eq!(
            update,
            ConfigUpdate {
                fail_rate: Some(1.0),
                fail_status: Some(500),
                ttft: Some(Duration::from_millis(10)),
                ..ConfigUpdate::default()
            }
        );
        assert!(parse_config_update(br#"{"fail_rate": 2}"#).is_err());
        assert!(parse_config_update(br#"{"fail_status": 200}"#).is_err());
        assert!(parse_config_update(br#"{"failrate": 0.5}"#).is_err());
        assert!(parse_config_update(b"nope").is_err());

        let behaviour = Behaviour::new(&MockOptions::default());
        behaviour.apply(&update);
        let settings = behaviour.settings();
        assert_eq!(settings.fail_rate, 1.0);
        assert_eq!(settings.fail_status, 500);
        assert_eq!(settings.ttft, Duration::from_millis(10));
        assert!(settings.should_fail());
    }

    #[test]
    fn timing() {
        let settings = Settings {
            fail_rate: 0.0,
            fail_status: 503,
            ttft: Duration::from_millis(50),
            tokens_per_sec: 100.0,
            completion_tokens: 16,
        };
        assert!(!settings.should_fail());
        assert_eq!(settings.token_interval(), Some(Duration::from_millis(10)));
        assert_eq!(settings.generation_time(10), Duration::from_millis(150));
        let instant = Settings {
            tokens_per_sec: 0.0,
            ..settings
        };
        assert_eq!(instant.token_interval(), None);
        assert_eq!(instant.generation_time(10), Duration::from_millis(50));
    }

    #[test]
    fn stats_track_in_flight() {
        let behaviour = Behaviour::new(&MockOptions::default());
        {
            let _a = behaviour.begin_request();
            let _b = behaviour.begin_request();
            behaviour.completed();
        }
        let _c = behaviour.begin_request();
        assert_eq!(
            behaviour.stats_json(),
            json!({"requests": 3, "in_flight": 1, "max_in_flight": 2, "completions": 1})
        );
        behaviour.reset_stats();
        assert_eq!(
            behaviour.stats_json(),
            json!({"requests": 0, "in_flight": 1, "max_in_flight": 1, "completions": 0})
        );
    }

    #[test]
    fn options_are_validated() {
        // `weir demo` hosts the mock in its own server as a boxed service.
        let service = mock_service(MockOptions::default()).expect("valid defaults");
        let _boxed: Box<dyn pingora_core::services::ServiceWithDependents> = Box::new(service);
        let bad_rate = MockOptions {
            fail_rate: 1.5,
            ..MockOptions::default()
        };
        assert!(mock_service(bad_rate).is_err());
        let missing_tls = MockOptions {
            tls_cert: Some("/nonexistent/cert.pem".to_string()),
            tls_key: Some("/nonexistent/key.pem".to_string()),
            ..MockOptions::default()
        };
        let error = mock_service(missing_tls).err().expect("must fail");
        assert!(error.contains("does not exist"), "{error}");
    }
}
