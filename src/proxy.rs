//! The Pingora glue. Pingora owns the client connection and HTTP parsing; weir
//! answers every request from `request_filter` (returning `Ok(true)`), running
//! the plugin phases in the order `pipeline.rs` documents and driving the
//! upstream exchange itself (`upstream.rs`), so bodies of any size can be read,
//! rewritten and replayed on failover.
//!
//! Pingora phase      -> weir
//! `request_filter`   -> route match, request_headers, body read + parse,
//!                       request_body, upstream_choice, provider bulkhead,
//!                       upstream exchange, response_headers, response_body
//! `logging`          -> log phase, metrics

use crate::bulkhead::{Bulkhead, Permit, Refusal};
use crate::error::{ErrorKind, WeirError};
use crate::llm::{self, SseUsageScanner};
use crate::metrics;
use crate::pipeline::{Attempt, Flow, LocalResponse, RequestCtx};
use crate::plugins::PluginInstance;
use crate::provider::Provider;
use crate::runtime::{Gateway, Runtime};
use crate::traffic::retry_budget::RetryBudget;
use crate::upstream::{Exchange, Upstream};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// Weir's `ProxyHttp`.
pub struct WeirProxy {
    pub gateway: Arc<Gateway>,
    pub upstream: Upstream,
    retry_budget: RetryBudget,
}

/// How a request ended when it did not end in a response weir could write.
enum Failure {
    /// An error weir answers with its envelope.
    Refuse(WeirError),
    /// The client went away; nothing more to write.
    ClientGone,
    /// The response had started when the provider failed: close the
    /// connection so the client sees a truncated body, never a clean end.
    Aborted(WeirError),
}

impl From<WeirError> for Failure {
    fn from(e: WeirError) -> Self {
        Failure::Refuse(e)
    }
}

/// Headers never copied from client to provider.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "content-length",
    "host",
];

/// Client credentials for weir itself, never forwarded.
const CLIENT_KEYS: &[&str] = &["authorization", "api-key", "x-api-key"];

/// LLM endpoints whose body must be an OpenAI JSON request.
fn is_llm_endpoint(path: &str) -> bool {
    path.ends_with("/chat/completions") || path.ends_with("/completions") || path.ends_with("/embeddings")
}

fn refusal_error(r: Refusal, b: &Bulkhead) -> WeirError {
    match r {
        Refusal::Full { waiting, retry_after } => WeirError::new(
            ErrorKind::QueueFull,
            format!(
                "queue '{}' is full ({waiting} waiting); retry in {retry_after}s",
                b.name()
            ),
        )
        .with_queue(b.name(), retry_after),
        Refusal::Timeout { waited, retry_after } => WeirError::new(
            ErrorKind::QueueTimeout,
            format!(
                "waited {}ms in queue '{}' without a free slot; retry in {retry_after}s",
                waited.as_millis(),
                b.name()
            ),
        )
        .with_queue(b.name(), retry_after),
    }
}

/// Wait for a bulkhead slot, leaving the queue at once if the client goes away.
/// `watch_client` only when the request body has been read completely.
async fn acquire(session: &mut Session, b: &Arc<Bulkhead>, watch_client: bool) -> Result<Permit, Failure> {
    if !watch_client {
        return b.acquire().await.map_err(|r| Failure::Refuse(refusal_error(r, b)));
    }
    tokio::select! {
        r = b.acquire() => r.map_err(|r| Failure::Refuse(refusal_error(r, b))),
        _ = session.downstream_session.read_body_or_idle(true) => Err(Failure::ClientGone),
    }
}

fn request_id(req: &RequestHeader) -> String {
    match req.headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

impl WeirProxy {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        WeirProxy {
            gateway,
            upstream: Upstream::default(),
            // Envoy's default: retries at most 20% of active requests, at least 3.
            retry_budget: RetryBudget::new(0.2, 3),
        }
    }

    /// The whole request, start to finish. See the module doc for the order.
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Failure> {
        let rt = ctx.runtime.clone().expect("set in request_filter");
        let Some(ri) = rt.route_for(session.req_header()) else {
            return Err(WeirError::new(
                ErrorKind::NotFound,
                format!(
                    "no route for {} {}",
                    session.req_header().method,
                    session.req_header().uri.path()
                ),
            )
            .into());
        };
        ctx.route = Some(ri);
        let route = &rt.routes[ri];
        ctx.plugin_state.resize_with(route.plugins.len(), || None);

        // Phase 1: request headers. A plugin holds a slot of its bulkhead
        // while it works on the request (not while the body is read).
        let no_body = session.downstream_session.is_body_empty();
        for (i, p) in route.plugins.iter().enumerate() {
            let _slot = acquire(session, &p.bulkhead, no_body).await?;
            ctx.plugin_index = i;
            match p.plugin.request_headers(session.req_header_mut(), ctx).await? {
                Flow::Continue => {}
                Flow::Respond(r) => return self.respond_local(session, ctx, *r).await,
            }
        }

        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if method == http::Method::GET && path == "/v1/models" {
            return self.list_models(session, ctx, &rt).await;
        }

        // Read the body, bounded.
        ctx.body = self.read_body(session, rt.max_request_body).await?;
        let llm = method == http::Method::POST && is_llm_endpoint(&path);
        if llm {
            let head = llm::parse_head(&ctx.body).map_err(WeirError::invalid)?;
            ctx.head = Some(head);
        } else if !ctx.body.is_empty() {
            // Other routed paths: use a model if the body names one, else forward as is.
            ctx.head = llm::parse_head(&ctx.body).ok();
        }
        ctx.candidates = match &ctx.head {
            Some(h) => route.candidates(&h.model),
            None => route.providers.clone(),
        };
        if ctx.candidates.is_empty() {
            let model = ctx.head.as_ref().map(|h| h.model.as_str()).unwrap_or_default();
            return Err(WeirError::new(
                ErrorKind::ModelNotFound,
                format!("model '{model}' is not served on route '{}'", route.name),
            )
            .with_param("model")
            .into());
        }

        // Phase 2: request body.
        for (i, p) in route.plugins.iter().enumerate() {
            let _slot = acquire(session, &p.bulkhead, true).await?;
            ctx.plugin_index = i;
            match p.plugin.request_body(ctx).await? {
                Flow::Continue => {}
                Flow::Respond(r) => return self.respond_local(session, ctx, *r).await,
            }
        }
        if ctx.want_stream_usage {
            if let Some(head) = &ctx.head {
                ctx.body = llm::with_stream_usage(&ctx.body, head);
                ctx.head = Some(llm::parse_head(&ctx.body).map_err(WeirError::invalid)?);
            }
        }

        // Phase 3: upstream choice.
        for (i, p) in route.plugins.iter().enumerate() {
            ctx.plugin_index = i;
            p.plugin.upstream_choice(ctx)?;
        }
        self.attempts(session, ctx, &rt).await
    }

    /// Try the candidates in order: the first, then up to `retries` others
    /// (within the retry budget), only while nothing has reached the client.
    /// A provider whose bulkhead refuses, or that a plugin skips, costs no retry.
    async fn attempts(&self, session: &mut Session, ctx: &mut RequestCtx, rt: &Runtime) -> Result<(), Failure> {
        let route = &rt.routes[ctx.route.expect("set")];
        let max_sends = route.retries as usize + 1;
        let candidates = std::mem::take(&mut ctx.candidates);
        let mut sends = 0;
        let mut last_err = None;
        let mut _retry = None;
        for (ci, provider) in candidates.iter().enumerate() {
            if sends >= max_sends {
                break;
            }
            if sends > 0 {
                match self.retry_budget.try_retry() {
                    Some(g) => {
                        _retry = Some(g);
                        metrics::RETRIES.with_label_values(&[&route.name, "tried"]).inc();
                    }
                    None => {
                        metrics::RETRIES
                            .with_label_values(&[&route.name, "budget_exhausted"])
                            .inc();
                        break;
                    }
                }
            }
            ctx.provider = Some(provider.clone());
            let permit = match acquire(session, &provider.bulkhead, true).await {
                Ok(p) => p,
                Err(Failure::Refuse(e)) => {
                    last_err = Some(e);
                    continue;
                }
                Err(f) => return Err(f),
            };
            if !self.each_plugin_until(rt, ctx, |p, ctx| p.plugin.attempt_start(provider, ctx)) {
                last_err.get_or_insert_with(|| {
                    WeirError::new(
                        ErrorKind::CircuitOpen,
                        format!("provider '{}' is not taking requests", provider.name),
                    )
                    .with_queue("circuit_breaker", 1)
                });
                continue;
            }
            let body = match (
                &ctx.head,
                provider.upstream_model(ctx.head.as_ref().map_or("", |h| h.model.as_str())),
            ) {
                (Some(h), Some(up)) => llm::rewrite_model(&ctx.body, h, up),
                _ => ctx.body.clone(),
            };
            let req = self.upstream_request(session.req_header(), provider, ctx, body.len());
            provider.in_flight.inc();
            sends += 1;
            let sent = tokio::select! {
                r = self.upstream.send(provider, &req, &body) => Some(r),
                _ = session.downstream_session.read_body_or_idle(true) => None,
            };
            let ex = match sent {
                None => {
                    provider.in_flight.dec();
                    return Err(Failure::ClientGone);
                }
                Some(Err(e)) => {
                    provider.in_flight.dec();
                    log::warn!("request {}: {e}", ctx.request_id);
                    let attempt = Attempt::Failed(e.kind);
                    self.each_plugin(rt, ctx, |p, ctx| p.plugin.attempt_end(provider, &attempt, ctx));
                    last_err = Some(e);
                    continue;
                }
                Some(Ok(ex)) => ex,
            };
            let status = ex.header().status.as_u16();
            let attempt = Attempt::Answered { status, ttfb: ex.ttfb };
            self.each_plugin(rt, ctx, |p, ctx| p.plugin.attempt_end(provider, &attempt, ctx));
            let another = ci + 1 < candidates.len() && sends < max_sends;
            if (status == 429 || status >= 500) && another {
                provider.in_flight.dec();
                log::warn!(
                    "request {}: provider '{}' answered {status}; trying another",
                    ctx.request_id,
                    provider.name
                );
                ex.abort().await;
                continue;
            }
            ctx.upstream_ttfb = Some(ex.ttfb);
            let r = self.relay(session, ctx, provider, ex).await;
            provider.in_flight.dec();
            drop(permit);
            return r;
        }
        Err(last_err
            .unwrap_or_else(|| WeirError::new(ErrorKind::Upstream, "no provider answered"))
            .into())
    }

    /// Run a synchronous hook of every plugin of the route, in order.
    fn each_plugin(&self, rt: &Runtime, ctx: &mut RequestCtx, mut f: impl FnMut(&PluginInstance, &mut RequestCtx)) {
        let Some(ri) = ctx.route else { return };
        for (i, p) in rt.routes[ri].plugins.iter().enumerate() {
            ctx.plugin_index = i;
            f(p, ctx);
        }
    }

    /// Like `each_plugin`, stopping at the first hook that answers `false`.
    fn each_plugin_until(
        &self,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        mut f: impl FnMut(&PluginInstance, &mut RequestCtx) -> bool,
    ) -> bool {
        let Some(ri) = ctx.route else { return true };
        for (i, p) in rt.routes[ri].plugins.iter().enumerate() {
            ctx.plugin_index = i;
            if !f(p, ctx) {
                return false;
            }
        }
        true
    }

    /// Read the request body up to `max` bytes.
    async fn read_body(&self, session: &mut Session, max: usize) -> Result<Bytes, Failure> {
        let declared = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(self.refuse_large_body(session, max, 0).await);
        }
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
        loop {
            match session.downstream_session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > max {
                        let seen = buf.len() + chunk.len();
                        drop(buf);
                        return Err(self.refuse_large_body(session, max, seen).await);
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(_) => return Err(Failure::ClientGone),
            }
        }
    }

    /// A body over `max`: most clients send the whole body before reading the
    /// answer, so discard it (bounded in bytes and time, never buffered) to let
    /// them see the 413; past the bound the connection is simply closed.
    async fn refuse_large_body(&self, session: &mut Session, max: usize, mut seen: usize) -> Failure {
        const DRAIN_LIMIT: usize = 64 << 20;
        let expects_continue = session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects_continue {
            let drain = async {
                while seen <= DRAIN_LIMIT.max(2 * max) {
                    match session.downstream_session.read_request_body().await {
                        Ok(Some(c)) => seen += c.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
        }
        Failure::Refuse(WeirError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than max_request_body ({max} bytes)"),
        ))
    }

    /// The request header as the provider gets it.
    fn upstream_request(
        &self,
        client: &RequestHeader,
        p: &Provider,
        ctx: &RequestCtx,
        body_len: usize,
    ) -> RequestHeader {
        let path = p
            .endpoint
            .upstream_path(client.uri.path_and_query().map_or("/", |pq| pq.as_str()));
        let mut req = RequestHeader::build(client.method.clone(), path.as_bytes(), Some(client.headers.len() + 4))
            .expect("method and path come from a valid request");
        for (name, value) in client.headers.iter() {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n) || (!p.conf.forward_client_auth && CLIENT_KEYS.contains(&n)) {
                continue;
            }
            let _ = req.append_header(name.clone(), value.clone());
        }
        let _ = req.insert_header("host", p.endpoint.authority());
        let _ = req.insert_header("x-request-id", ctx.request_id.as_str());
        if let Some(auth) = &p.authorization {
            let _ = req.insert_header("authorization", auth.as_str());
        }
        if body_len > 0 || client.method != http::Method::GET {
            let _ = req.insert_header("content-length", body_len.to_string());
        }
        req
    }

    /// Stream the provider's response to the client, chunk by chunk.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        p: &Arc<Provider>,
        mut ex: Exchange,
    ) -> Result<(), Failure> {
        let rt = ctx.runtime.clone().expect("set");
        let up = ex.header();
        let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 3)).expect("valid status");
        for (name, value) in up.headers.iter() {
            if matches!(name.as_str(), "connection" | "keep-alive") {
                continue;
            }
            let _ = resp.append_header(name.clone(), value.clone());
        }
        let _ = resp.insert_header("x-weir-provider", p.name.as_str());
        let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
        let is_sse = resp
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let collect_json = !is_sse && resp.status.as_u16() == 200 && ctx.head.is_some();
        self.each_plugin(&rt, ctx, |pl, ctx| pl.plugin.response_headers(&mut resp, ctx));
        ctx.status = resp.status.as_u16();
        if session.write_response_header(Box::new(resp), false).await.is_err() {
            ex.abort().await;
            return Err(Failure::ClientGone);
        }
        let mut scanner = SseUsageScanner::default();
        // weir asked for usage the client did not: take that chunk out again.
        let mut strip = (is_sse && ctx.want_stream_usage).then(llm::UsageChunkStripper::default);
        let mut json = Vec::new();
        loop {
            let chunk = match ex.chunk(&p.name).await {
                Ok(c) => c,
                Err(e) => {
                    ex.abort().await;
                    return Err(Failure::Aborted(e));
                }
            };
            let end = chunk.is_none() || ex.done();
            let Some(mut chunk) = chunk else {
                // End of body: send the terminating chunk.
                let mut last = strip.as_mut().map_or_else(Bytes::new, |s| s.finish());
                self.each_plugin(&rt, ctx, |pl, ctx| pl.plugin.response_body(&mut last, true, ctx));
                if session.write_response_body(Some(last), true).await.is_err() {
                    return Err(Failure::ClientGone);
                }
                break;
            };
            if is_sse {
                scanner.feed(&chunk);
                if let Some(s) = strip.as_mut() {
                    chunk = s.filter(&chunk);
                    if end {
                        let rest = s.finish();
                        if !rest.is_empty() {
                            let mut joined = BytesMut::from(&chunk[..]);
                            joined.extend_from_slice(&rest);
                            chunk = joined.freeze();
                        }
                    }
                }
            } else if collect_json && json.len() + chunk.len() <= 1 << 20 {
                json.extend_from_slice(&chunk);
            }
            self.each_plugin(&rt, ctx, |pl, ctx| pl.plugin.response_body(&mut chunk, end, ctx));
            if chunk.is_empty() && !end {
                continue;
            }
            if session.write_response_body(Some(chunk), end).await.is_err() {
                ex.abort().await;
                return Err(Failure::ClientGone);
            }
            if end {
                break;
            }
        }
        ctx.usage = if is_sse {
            scanner.usage
        } else {
            llm::usage_of_json(&json)
        };
        self.upstream.finish(ex, p).await;
        Ok(())
    }

    /// `GET /v1/models`: the models this route (and this key) may use.
    async fn list_models(&self, session: &mut Session, ctx: &mut RequestCtx, rt: &Runtime) -> Result<(), Failure> {
        let route = &rt.routes[ctx.route.expect("set")];
        let allowed = ctx.identity.as_ref().and_then(|i| i.models.clone());
        let data: Vec<serde_json::Value> = route
            .models
            .iter()
            .filter(|(m, _)| allowed.as_ref().is_none_or(|a| a.contains(m)))
            .map(|(m, provider)| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": provider}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default();
        let mut h = ResponseHeader::build(200, Some(3)).expect("200");
        let _ = h.insert_header("content-type", "application/json");
        self.respond_local(
            session,
            ctx,
            LocalResponse {
                header: h,
                body: body.into(),
            },
        )
        .await
    }

    async fn respond_local(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut r: LocalResponse,
    ) -> Result<(), Failure> {
        let _ = r.header.insert_header("content-length", r.body.len().to_string());
        let _ = r.header.insert_header("x-request-id", ctx.request_id.as_str());
        if let Some(rt) = ctx.runtime.clone() {
            self.each_plugin(&rt, ctx, |pl, ctx| pl.plugin.response_headers(&mut r.header, ctx));
        }
        ctx.status = r.header.status.as_u16();
        session
            .write_response_header(Box::new(r.header), false)
            .await
            .map_err(|_| Failure::ClientGone)?;
        session
            .write_response_body(Some(r.body), true)
            .await
            .map_err(|_| Failure::ClientGone)
    }

    /// Answer with weir's error envelope.
    async fn respond_error(&self, session: &mut Session, ctx: &mut RequestCtx, e: WeirError) {
        // Refusing must stay cheap: don't drain a large unread body, close instead.
        if !session.downstream_session.is_body_done() {
            let declared = session
                .req_header()
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            if declared.is_none_or(|n| n > 64 * 1024) {
                session.set_keepalive(None);
            }
        }
        let body = e.body();
        let mut h = e.response_header(body.len(), &ctx.request_id);
        if let Some(rt) = ctx.runtime.clone() {
            self.each_plugin(&rt, ctx, |pl, ctx| pl.plugin.response_headers(&mut h, ctx));
        }
        ctx.status = e.status();
        ctx.error = Some(e);
        if session.write_response_header(Box::new(h), false).await.is_ok() {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }
}

#[async_trait]
impl ProxyHttp for WeirProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.runtime = Some(self.gateway.current());
        ctx.request_id = request_id(session.req_header());
        ctx.client_addr = session.client_addr().and_then(|a| a.as_inet()).copied();
        let _active = self.retry_budget.request();
        match self.serve(session, ctx).await {
            Ok(()) => Ok(true),
            Err(Failure::Refuse(e)) => {
                if session.response_written().is_some() {
                    ctx.error = Some(e);
                    return Error::e_explain(ErrorType::WriteError, "response already started");
                }
                if e.status() >= 500 {
                    log::warn!("request {}: {e}", ctx.request_id);
                }
                self.respond_error(session, ctx, e).await;
                Ok(true)
            }
            Err(Failure::ClientGone) => {
                ctx.status = 499;
                Error::e_explain(ErrorType::ConnectionClosed, "client went away")
            }
            Err(Failure::Aborted(e)) => {
                log::warn!("request {}: response cut short: {e}", ctx.request_id);
                ctx.error = Some(e);
                Error::e_explain(ErrorType::WriteError, "upstream failed mid-response")
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every request.
        Error::e_explain(ErrorType::InternalError, "weir drives upstreams itself")
    }

    async fn fail_to_proxy(&self, _session: &mut Session, _e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The response (if any) was already handled; just don't reuse the connection.
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(rt) = ctx.runtime.clone() else {
            return;
        };
        let route_name = ctx.route.map_or("", |i| rt.routes[i].name.as_str());
        self.each_plugin(&rt, ctx, |p, ctx| p.plugin.log(ctx));
        let provider = ctx.provider.as_ref().map_or("", |p| p.name.as_str());
        let mut status_buf = itoa_status(ctx.status);
        metrics::REQUESTS
            .with_label_values(&[route_name, provider, status_str(&mut status_buf)])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[route_name, provider])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(t) = ctx.upstream_ttfb {
            metrics::UPSTREAM_TTFB
                .with_label_values(&[provider])
                .observe(t.as_secs_f64());
        }
        if let (Some(u), Some(h), Some(_)) = (ctx.usage, &ctx.head, &ctx.provider) {
            metrics::LLM_TOKENS
                .with_label_values(&[provider, &h.model, "prompt"])
                .inc_by(u.prompt_tokens);
            metrics::LLM_TOKENS
                .with_label_values(&[provider, &h.model, "completion"])
                .inc_by(u.completion_tokens);
        }
        log::debug!(
            "{} route={route_name} provider={provider} status={} ms={}",
            ctx.request_id,
            ctx.status,
            ctx.started.elapsed().as_millis()
        );
    }
}

fn itoa_status(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

fn status_str(b: &mut [u8; 3]) -> &str {
    std::str::from_utf8(b).unwrap_or("000")
}
