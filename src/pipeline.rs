//! The plugin pipeline: the [`Plugin`] trait, whose methods are the phases of a
//! request in the order they run, and [`RequestCtx`], the one place a request's
//! state lives. `proxy.rs` drives the phases; each plugin lives in `plugins/`.
//!
//! Run order for a route with plugins `[a, b]`:
//! 1. `request_headers`: a, b  — before the body is read; may refuse cheaply.
//! 2. `request_body`:    a, b  — the JSON head is parsed, the model known.
//! 3. `upstream_choice`: a, b  — may filter or reorder the candidate providers.
//!    Then, for each provider tried (the first and any failover):
//!    `attempt_start` (may skip it) and `attempt_end` (how it went).
//! 4. `response_headers`: a, b — the provider's (or a local) response header.
//! 5. `response_body`:   a, b  — each chunk as it passes, never buffered here.
//! 6. `log`:             a, b  — after the last byte, whatever the outcome.
//!
//! A plugin holds a slot of its own bulkhead while one of its request phases
//! runs (including any wait inside it, such as a wasm `http_call`), so its
//! bulkhead bounds the requests it is working on at once.

use crate::error::WeirError;
use crate::llm::{RequestHead, Usage};
use crate::provider::Provider;
use crate::runtime::{Route, Runtime};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

/// A response a plugin gives instead of the provider's.
pub struct LocalResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
}

/// What a request phase decided.
pub enum Flow {
    /// Go on to the next plugin / phase.
    Continue,
    /// Answer the client with this response; later phases are skipped.
    Respond(Box<LocalResponse>),
}

/// A pipeline stage. Every method has a default that does nothing, so a
/// plugin implements only the phases it cares about.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// 1. Request headers, before the body is read. May change the header
    ///    sent upstream, refuse (`Err`), or answer locally.
    async fn request_headers(&self, _req: &mut RequestHeader, _ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        Ok(Flow::Continue)
    }

    /// 2. Request body, complete and parsed once (`ctx.head`). May replace
    ///    `ctx.body`; the model rewrite happens after this phase.
    async fn request_body(&self, _ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        Ok(Flow::Continue)
    }

    /// 3. Upstream choice: filter or reorder `ctx.candidates`. An empty list
    ///    after this phase is the plugin's refusal (it should return `Err`).
    fn upstream_choice(&self, _ctx: &mut RequestCtx) -> Result<(), WeirError> {
        Ok(())
    }

    /// 3b. Before each attempt at a provider: `false` skips this provider
    ///     (as an open breaker does) without counting as a retry.
    fn attempt_start(&self, _provider: &Provider, _ctx: &mut RequestCtx) -> bool {
        true
    }

    /// 3c. After each attempt: the provider's response status, or the failure.
    fn attempt_end(&self, _provider: &Provider, _attempt: &Attempt, _ctx: &mut RequestCtx) {}

    /// 4. Response header, before it is sent to the client (also weir's own
    ///    error responses once a route has matched).
    fn response_headers(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestCtx) {}

    /// 5. A response body chunk, before it is sent; `end` marks the last.
    fn response_body(&self, _chunk: &mut Bytes, _end: bool, _ctx: &mut RequestCtx) {}

    /// 6. The request is over (answered, refused or failed).
    fn log(&self, _ctx: &mut RequestCtx) {}

    /// Update this plugin's state gauges (called when `/metrics` is scraped).
    fn refresh_metrics(&self) {}

    /// Breaker state of a provider, if this plugin keeps one (for `/status`).
    fn breaker_state(&self, _provider: &str) -> Option<crate::traffic::breaker::State> {
        None
    }
}

/// How one attempt at a provider went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attempt {
    /// The provider answered with this status after `ttfb`.
    Answered { status: u16, ttfb: std::time::Duration },
    /// It failed before answering (unreachable, reset, timeout).
    Failed(crate::error::ErrorKind),
}

/// Who the client is, once an auth plugin has said so.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The key's name from the keys file (never the key itself).
    pub name: Arc<str>,
    /// Models this key may use; `None` = any.
    pub models: Option<Arc<[String]>>,
}

/// Per-request state: one value per request, owned by Pingora's session.
pub struct RequestCtx {
    pub started: Instant,
    /// The config generation this request started on and finishes on.
    pub runtime: Option<Arc<Runtime>>,
    /// Index of the matched route in `runtime.routes`.
    pub route: Option<usize>,
    pub request_id: String,
    /// The client's address.
    pub client_addr: Option<std::net::SocketAddr>,
    pub identity: Option<Identity>,
    /// Parsed head of a JSON body (LLM endpoints).
    pub head: Option<RequestHead>,
    /// The request body as it will be sent (after plugins, before the model rewrite).
    pub body: Bytes,
    /// Providers that may serve this request, in the order they will be tried.
    pub candidates: Vec<Arc<Provider>>,
    /// The provider that answered (or was last tried).
    pub provider: Option<Arc<Provider>>,
    /// Status sent to the client (0 until a header is written).
    pub status: u16,
    /// What went wrong, if weir answered with an error.
    pub error: Option<WeirError>,
    /// Token usage the provider reported.
    pub usage: Option<Usage>,
    /// Time the provider took to send its response header.
    pub upstream_ttfb: Option<std::time::Duration>,
    /// Per-plugin state, indexed like the route's plugin list.
    pub plugin_state: Vec<Option<Box<dyn Any + Send + Sync>>>,
    /// Which plugin's hook runs now (index into the route's plugins).
    pub plugin_index: usize,
    /// A plugin needs `usage` on a stream the client did not ask it for:
    /// weir asks the provider and removes the extra chunk before the client.
    pub want_stream_usage: bool,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            route: None,
            request_id: String::new(),
            client_addr: None,
            identity: None,
            head: None,
            body: Bytes::new(),
            candidates: Vec::new(),
            provider: None,
            status: 0,
            error: None,
            usage: None,
            upstream_ttfb: None,
            plugin_state: Vec::new(),
            plugin_index: 0,
            want_stream_usage: false,
        }
    }
}

impl RequestCtx {
    /// The matched route.
    pub fn route(&self) -> Option<&Route> {
        Some(&self.runtime.as_ref()?.routes[self.route?])
    }

    /// The running plugin's own per-request state.
    pub fn state<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.plugin_state.get_mut(self.plugin_index)?.as_mut()?.downcast_mut()
    }

    /// Set the running plugin's per-request state.
    pub fn set_state<T: Any + Send + Sync>(&mut self, v: T) {
        if let Some(slot) = self.plugin_state.get_mut(self.plugin_index) {
            *slot = Some(Box::new(v));
        }
    }
}
