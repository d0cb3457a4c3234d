//! The chain, run both ways. Request phases go through the route's plugins
//! in order, each holding a slot of its plugin's bulkhead; then the body is
//! read and parsed, candidates chosen, and providers tried (`attempts`).
//! Every response — the provider's, a plugin's local answer, weir's own
//! error once a route matched — goes back through the response phases of
//! the plugins that ran, in reverse route order, the one that answered
//! excepted.

use super::attempt;
use super::chain::{PluginInstance, Route};
use super::context::{RequestCtx, Wire};
use super::downstream::Downstream;
use super::plugin::{Flow, LocalResponse, Phase};
use super::wire;
use crate::bulkhead::{Bulkhead, Permit};
use crate::error::{ErrorKind, WeirError};
use crate::llm;
use crate::traffic::retry_budget::RetryBudget;
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::Duration;

/// What runs requests: the connection pools to providers and the retry
/// budget, shared by every config generation.
pub struct Pipeline {
    pub(super) upstream: Upstream,
    pub(super) retry_budget: RetryBudget,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            upstream: Upstream::default(),
            // Envoy's default: retries at most 20% of active requests, at least 3.
            retry_budget: RetryBudget::new(0.2, 3),
        }
    }
}

impl Pipeline {
    /// Requests being served now (from the route's match to the last byte).
    pub fn in_flight(&self) -> usize {
        self.retry_budget.active()
    }
}

/// How a request ended, for the Pingora glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A complete response was written.
    Answered,
    /// The client went away; nothing more to write.
    ClientGone,
    /// The response had started when it failed: close the connection so the
    /// client sees a truncated body, never a clean end.
    Aborted,
}

/// How a request ended when it did not end in a response weir could write.
pub(super) enum Failure {
    /// An error weir answers with its envelope; `by` is the plugin that
    /// refused, if one did (its own response phases do not run).
    Refuse(WeirError, Option<usize>),
    ClientGone,
    Aborted(WeirError),
}

impl From<WeirError> for Failure {
    fn from(e: WeirError) -> Self {
        Failure::Refuse(e, None)
    }
}

/// LLM endpoints whose body must be an OpenAI JSON request.
/// A refused request body as the client sees it: 400, with the field to blame.
fn head_error(e: llm::HeadError) -> WeirError {
    WeirError {
        param: e.param,
        ..WeirError::invalid(e.message)
    }
}

fn is_llm_endpoint(path: &str) -> bool {
    path.ends_with("/chat/completions") || path.ends_with("/completions") || path.ends_with("/embeddings")
}

/// Endpoints whose answers weir reads usage from (and asks for uncompressed).
pub(super) fn reads_usage(path: &str) -> bool {
    is_llm_endpoint(path) || path.ends_with("/responses")
}

/// Whether weir may add `stream_options` to a streamed request on `path`:
/// only chat and text completions know it (the Responses API reports
/// usage in `response.completed` unasked, and refuses unknown options).
fn takes_stream_options(path: &str) -> bool {
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

/// Endpoints weir reads and forwards by default; anything else reaches a
/// provider (with the operator's key) only if the route lists it.
fn is_known_endpoint(method: &http::Method, path: &str) -> bool {
    match *method {
        http::Method::POST => reads_usage(path),
        http::Method::GET => path.ends_with("/models"),
        _ => false,
    }
}

/// A `.` or `..` path segment, written plainly or percent-encoded: refused,
/// so no provider can be made to resolve a path outside the one routed.
fn has_dot_segment(path: &str) -> bool {
    // One dot, plain or `%2e` (any case), off the front of a segment.
    fn dot(s: &[u8]) -> Option<&[u8]> {
        s.strip_prefix(b".")
            .or_else(|| (s.len() >= 3 && s[..3].eq_ignore_ascii_case(b"%2e")).then(|| &s[3..]))
    }
    path.as_bytes()
        .split(|b| *b == b'/')
        .any(|seg| dot(seg).is_some_and(|rest| rest.is_empty() || dot(rest).is_some_and(<[u8]>::is_empty)))
}

/// Wait for a bulkhead slot, leaving the queue at once if the client goes
/// away. `watch_client` only when the request body has been read completely.
/// The slot (or the refusal) is noted on the request: its queue wait, its span.
pub(super) async fn wait<D: Downstream>(
    d: &mut D,
    b: &Arc<Bulkhead>,
    ctx: &mut RequestCtx,
    watch_client: bool,
) -> Result<Permit, Failure> {
    let clock = ctx.trace_clock();
    let r = if !watch_client {
        attempt::acquire(b, &ctx.ticket).await.map_err(Failure::from)
    } else {
        tokio::select! {
            r = attempt::acquire(b, &ctx.ticket) => r.map_err(Failure::from),
            _ = d.gone() => Err(Failure::ClientGone),
        }
    };
    match &r {
        Ok(permit) => {
            ctx.note_slot(permit);
            ctx.trace_queue(b, clock, permit.waited(), None);
        }
        Err(Failure::Refuse(e, _)) => {
            let waited = clock.map(|c| c.elapsed()).unwrap_or_default();
            ctx.trace_queue(b, clock, waited, Some(e));
        }
        Err(_) => {}
    }
    r
}

/// The slot plugin `p` holds while it works in a phase it takes part in
/// as `phase`: one of its bulkhead when the phase may wait, none otherwise.
async fn slot<D: Downstream>(
    d: &mut D,
    p: &PluginInstance,
    phase: Phase,
    ctx: &mut RequestCtx,
    watch_client: bool,
) -> Result<Option<Permit>, Failure> {
    match phase {
        Phase::Wait => wait(d, &p.bulkhead, ctx, watch_client).await.map(Some),
        Phase::Run | Phase::Skip => Ok(None),
    }
}

/// The client sent `Expect: 100-continue`.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

impl Pipeline {
    /// Serve one request: `route` is the matched one (`None`: no route took
    /// it). Always ends with a response written or the connection to drop.
    pub async fn serve<D: Downstream>(&self, route: Option<Arc<Route>>, d: &mut D, ctx: &mut RequestCtx) -> Ended {
        if wire::is_anthropic_client(d.req_header()) {
            ctx.wire = Wire::Anthropic;
            return self.serve_on(route, &mut wire::AnthropicClient::new(d), ctx).await;
        }
        self.serve_on(route, d, ctx).await
    }

    /// [`Pipeline::serve`] on a connection that speaks the client's format.
    async fn serve_on<D: Downstream>(&self, route: Option<Arc<Route>>, d: &mut D, ctx: &mut RequestCtx) -> Ended {
        let _active = self.retry_budget.request();
        let result = match route {
            _ if has_dot_segment(d.req_header().uri.path()) => {
                Err(WeirError::invalid("the path has a '.' or '..' segment").into())
            }
            None => Err(WeirError::new(
                ErrorKind::NotFound,
                format!("no route for {} {}", d.req_header().method, d.req_header().uri.path()),
            )
            .into()),
            Some(route) => {
                ctx.route = Some(route.clone());
                self.run(&route, d, ctx).await
            }
        };
        match result {
            Ok(()) => Ended::Answered,
            Err(Failure::Refuse(e, by)) => {
                if d.response_started() {
                    ctx.error = Some(e);
                    return Ended::Aborted;
                }
                // Designed load shedding is counted in metrics: under a
                // flood a log line each would cost more than the refusal.
                if e.kind.is_load_shedding() {
                    log::debug!("request {}: {e}", ctx.request_id);
                } else if e.status() >= 500 {
                    log::warn!("request {}: {e}", ctx.request_id);
                }
                self.respond_error(d, ctx, e, by).await;
                Ended::Answered
            }
            Err(Failure::ClientGone) => {
                ctx.status = 499;
                Ended::ClientGone
            }
            Err(Failure::Aborted(e)) => {
                log::warn!("request {}: response cut short: {e}", ctx.request_id);
                ctx.error = Some(e);
                Ended::Aborted
            }
        }
    }

    /// The log phase, route order, whatever the outcome.
    pub fn log(&self, ctx: &mut RequestCtx) {
        let Some(route) = ctx.route.clone() else { return };
        for (i, p) in route.plugins.iter().enumerate() {
            ctx.enter(i);
            p.plugin.log(ctx);
        }
    }

    async fn run<D: Downstream>(&self, route: &Arc<Route>, d: &mut D, ctx: &mut RequestCtx) -> Result<(), Failure> {
        // Phase 1: request headers. A plugin holds a slot of its bulkhead
        // while it works on the request (not while the body is read).
        let no_body = d.body_empty();
        for (i, p) in route.plugins.iter().enumerate() {
            if p.phases.request_headers == Phase::Skip {
                // Nothing to do here: it has entered all the same.
                ctx.entered = ctx.entered.max(i + 1);
                continue;
            }
            let _slot = slot(d, p, p.phases.request_headers, ctx, no_body).await?;
            ctx.enter(i);
            ctx.entered = ctx.entered.max(i + 1);
            let clock = ctx.trace_clock();
            let r = p.plugin.request_headers(d.req_header_mut(), ctx).await;
            ctx.trace_plugin(&p.name, "request_headers", clock, r.as_ref().err());
            match r {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(r)) => return self.respond_local(d, ctx, *r, Some(i)).await,
                Err(e) => return Err(Failure::Refuse(e, Some(i))),
            }
        }

        let method = d.req_header().method.clone();
        let path = d.req_header().uri.path();
        // An Anthropic client: `/messages` is a chat request (translated
        // once the body is read), `/messages/count_tokens` is answered by an
        // Anthropic provider or counted here.
        let count_tokens = ctx.wire == Wire::Anthropic && path.trim_end_matches('/').ends_with("/count_tokens");
        let messages = ctx.wire == Wire::Anthropic && !count_tokens;
        let llm = method == http::Method::POST && (is_llm_endpoint(path) || messages);
        if method == http::Method::GET && path == "/v1/models" {
            return self.list_models(d, ctx, route).await;
        }
        if ctx.wire == Wire::Openai && !is_known_endpoint(&method, path) && !route.passes_through(&method, path) {
            return Err(WeirError::new(
                ErrorKind::NotFound,
                format!(
                    "weir does not forward {method} {path} on route '{}' (list it under the route's passthrough)",
                    route.name
                ),
            )
            .into());
        }

        // Read the body, bounded. A client waiting for `100 Continue` gets it
        // now that the request passed its header checks (one over the size
        // limit gets the 413 instead, in read_body); without it the client
        // would stall about a second before sending anyway.
        let over_limit = declared_length(d.req_header()).is_some_and(|n| n > ctx.max_request_body);
        if expects_continue(d.req_header()) && !no_body && !over_limit {
            let head = ResponseHeader::build(100, Some(0)).expect("100");
            d.write_header(head, false).await.map_err(|_| Failure::ClientGone)?;
        }
        ctx.body = read_body(d, ctx.max_request_body, ctx.request_body_timeout).await?;
        if count_tokens {
            return self.count_tokens(d, ctx, route).await;
        }
        if messages {
            self.anthropic_request(d, ctx).await?;
        }
        if llm {
            let head = parse_head(&ctx.body).await.map_err(head_error)?;
            ctx.head = Some(head);
        } else if !ctx.body.is_empty() {
            // Other routed paths: use a model if the body names one, else
            // forward as is; but never a body whose keys are ambiguous.
            ctx.head = match parse_head(&ctx.body).await {
                Ok(h) => Some(h),
                Err(e) if e.duplicate => return Err(head_error(e).into()),
                Err(_) => None,
            };
        }
        ctx.candidates = match &ctx.head {
            Some(h) => route.candidates(&h.model),
            None => route.providers.clone(),
        };
        if ctx.candidates.is_empty() {
            return Err(route.model_not_found(ctx.model().unwrap_or_default()).into());
        }

        // Phase 2: request body.
        ctx.trace_request(d.req_header().uri.path());
        for (i, p) in route.plugins.iter().enumerate() {
            let phase = match p.phases.request_body {
                Phase::Skip => continue,
                Phase::Wait if !p.plugin.request_body_waits(ctx) => Phase::Run,
                phase => phase,
            };
            let _slot = slot(d, p, phase, ctx, true).await?;
            ctx.enter(i);
            let clock = ctx.trace_clock();
            let r = p.plugin.request_body(ctx).await;
            ctx.trace_plugin(&p.name, "request_body", clock, r.as_ref().err());
            match r {
                Ok(Flow::Continue) => {
                    if let Some(edit) = ctx.take_header_edit() {
                        edit(d.req_header_mut());
                    }
                }
                Ok(Flow::Respond(r)) => return self.respond_local(d, ctx, *r, Some(i)).await,
                Err(e) => return Err(Failure::Refuse(e, Some(i))),
            }
        }
        // A plugin needs usage the client did not ask for: ask the provider.
        let strip_usage = route.stream_usage
            && takes_stream_options(d.req_header().uri.path())
            && ctx.head.as_ref().is_some_and(|h| h.stream && !h.include_usage);
        if strip_usage {
            if let Some(head) = &ctx.head {
                let (body, head) = llm::with_stream_usage(&ctx.body, head).map_err(head_error)?;
                ctx.body = body;
                ctx.head = Some(head);
            }
        }

        // Phase 3: upstream choice.
        for (i, p) in route.plugins.iter().enumerate() {
            ctx.enter(i);
            p.plugin.upstream_choice(ctx).map_err(|e| Failure::Refuse(e, Some(i)))?;
        }
        self.attempts(d, ctx, route, strip_usage).await
    }

    /// An Anthropic client's Messages request becomes the OpenAI chat
    /// request everything inside weir reads; its own bytes are kept for an
    /// Anthropic provider (sent as they came, but for the model's name).
    async fn anthropic_request<D: Downstream>(&self, d: &mut D, ctx: &mut RequestCtx) -> Result<(), Failure> {
        let client_head = parse_head(&ctx.body).await.map_err(head_error)?;
        let t = llm::anthropic::request_to_openai(&ctx.body).map_err(WeirError::invalid)?;
        ctx.client_body = Some((std::mem::replace(&mut ctx.body, t.body), client_head));
        ctx.wire_dropped = t.dropped;
        let req = d.req_header_mut();
        let path = req.uri.path().trim_end_matches('/');
        let chat = format!("{}/chat/completions", path.strip_suffix("/messages").unwrap_or(path));
        req.set_uri(
            chat.parse()
                .map_err(|_| WeirError::invalid("the request path is not valid"))?,
        );
        Ok(())
    }

    /// `POST /v1/messages/count_tokens`: passed through to the route's first
    /// Anthropic provider of the model, else counted with weir's tokenizer
    /// (`{"input_tokens": n}`; an estimate, as for budgets).
    async fn count_tokens<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
    ) -> Result<(), Failure> {
        let head = parse_head(&ctx.body).await.map_err(head_error)?;
        let all = route.candidates(&head.model);
        if all.is_empty() {
            return Err(route.model_not_found(&head.model).into());
        }
        let candidates: Vec<_> = all
            .into_iter()
            .filter(|p| p.conf.kind == crate::config::ProviderKind::Anthropic)
            .collect();
        if candidates.is_empty() {
            let t = llm::anthropic::request_to_openai(&ctx.body).map_err(WeirError::invalid)?;
            let n = llm::tokens::reserve_prompt_tokens(&t.body, None).await;
            let body = serde_json::to_vec(&serde_json::json!({ "input_tokens": n })).unwrap_or_default();
            let mut h = ResponseHeader::build(200, Some(3)).expect("200");
            let _ = h.insert_header("content-type", "application/json");
            let r = LocalResponse {
                header: h,
                body: body.into(),
            };
            return self.respond_local(d, ctx, r, None).await;
        }
        // Native: no usage to read (`ctx.head` stays empty), the model renamed in the client's bytes.
        ctx.client_body = Some((ctx.body.clone(), head));
        ctx.candidates = candidates;
        self.attempts(d, ctx, route, false).await
    }

    /// `GET /v1/models`: the models this route (and this key) may use.
    async fn list_models<D: Downstream>(&self, d: &mut D, ctx: &mut RequestCtx, route: &Route) -> Result<(), Failure> {
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
        let r = LocalResponse {
            header: h,
            body: body.into(),
        };
        self.respond_local(d, ctx, r, None).await
    }

    /// A complete response made by weir or a plugin (`by`), through the
    /// response phases, body included.
    async fn respond_local<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        r: LocalResponse,
        by: Option<usize>,
    ) -> Result<(), Failure> {
        d.native_answer(false);
        let LocalResponse { mut header, body } = r;
        let _ = header.insert_header("content-length", http::HeaderValue::from(body.len()));
        let _ = header.insert_header("x-request-id", ctx.request_id.as_str());
        let body = finish_local(ctx, &mut header, body, by).await;
        d.write_header(header, false).await.map_err(|_| Failure::ClientGone)?;
        d.write_body(body, true).await.map_err(|_| Failure::ClientGone)
    }

    /// Answer with weir's error envelope.
    async fn respond_error<D: Downstream>(&self, d: &mut D, ctx: &mut RequestCtx, e: WeirError, by: Option<usize>) {
        // Refusing must stay cheap: don't drain a large unread body, close instead.
        if !d.body_done() {
            let declared = declared_length(d.req_header());
            if declared.is_none_or(|n| n > 64 * 1024) || expects_continue(d.req_header()) {
                d.no_keepalive();
            }
        }
        d.native_answer(false);
        let body = e.body();
        let mut header = error_header(&e, body.len(), &ctx.request_id);
        ctx.error = Some(e);
        let body = finish_local(ctx, &mut header, body, by).await;
        if d.write_header(header, false).await.is_ok() {
            let _ = d.write_body(body, true).await;
        }
    }
}

/// The response header of weir's answer for `e`.
fn error_header(e: &WeirError, body_len: usize, request_id: &str) -> ResponseHeader {
    let status = http::StatusCode::from_u16(e.status()).expect("weir's statuses are valid");
    super::build_headers(status, e.header_count(), |h| e.fill_headers(h, body_len, request_id))
}

/// Run a complete local response through the response phases (reverse
/// route order, over the plugins that ran, `by` excepted) and fix its
/// length; a fail-closed filter that failed on it replaces it with its error.
/// The header already carries the body's length and the request id.
pub(super) async fn finish_local(
    ctx: &mut RequestCtx,
    header: &mut ResponseHeader,
    mut body: Bytes,
    by: Option<usize>,
) -> Bytes {
    if let Some(route) = ctx.route.clone() {
        let entered = ctx.entered;
        let order = || (0..entered).rev().filter(|i| Some(*i) != by);
        response_header_phases(ctx, &route, header, by).await;
        ctx.status = header.status.as_u16();
        let len = body.len();
        for i in order() {
            ctx.enter(i);
            route.plugins[i].plugin.response_body(&mut body, true, ctx);
        }
        if body.len() != len {
            let _ = header.insert_header("content-length", http::HeaderValue::from(body.len()));
        }
    }
    if let Some(e) = ctx.failed.take() {
        // A fail-closed filter could not vet this answer: send its error, unfiltered.
        body = e.body();
        *header = error_header(&e, body.len(), &ctx.request_id);
        ctx.error = Some(e);
    }
    ctx.status = header.status.as_u16();
    body
}

/// The response-header phase, in reverse route order over the plugins that
/// entered and work in it, `by` (the plugin that answered) excepted.
pub(super) async fn response_header_phases(
    ctx: &mut RequestCtx,
    route: &Route,
    header: &mut ResponseHeader,
    by: Option<usize>,
) {
    let takes = |i: &usize| Some(*i) != by && route.plugins[*i].phases.response_headers != Phase::Skip;
    for i in (0..ctx.entered).rev().filter(takes) {
        let p = &route.plugins[i];
        ctx.enter(i);
        let clock = ctx.trace_clock();
        match p.phases.response_headers {
            // Called at once: no future to box for a phase that never waits.
            Phase::Run => p.plugin.response_headers(header, ctx),
            _ => p.plugin.response_headers_held(header, ctx).await,
        }
        ctx.trace_plugin(&p.name, "response_headers", clock, None);
    }
}

fn declared_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
}

/// Bodies up to this size are parsed on the worker; larger ones on the
/// blocking pool, so a multi-megabyte body never stalls other requests.
const INLINE_PARSE_MAX: usize = 64 << 10;

/// `llm::parse_head`, off the async workers for large bodies.
async fn parse_head(body: &Bytes) -> Result<llm::RequestHead, llm::HeadError> {
    if body.len() <= INLINE_PARSE_MAX {
        return llm::parse_head(body);
    }
    let owned = body.clone();
    match tokio::task::spawn_blocking(move || llm::parse_head(&owned)).await {
        Ok(r) => r,
        // The blocking pool is gone (shutting down): parse here.
        Err(_) => llm::parse_head(body),
    }
}

/// Read the whole request body within `limit`: a client trickling its body
/// gets a 408 and loses the connection, whatever each read's own timeout.
async fn read_body<D: Downstream>(d: &mut D, max: usize, limit: Duration) -> Result<Bytes, Failure> {
    match pingora_timeout::fast_timeout::fast_timeout(limit, read_body_bounded(d, max)).await {
        Ok(r) => r,
        Err(_) => {
            d.no_keepalive();
            Err(WeirError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request body did not arrive within {} (server.timeouts.request_body)",
                    humantime::format_duration(limit)
                ),
            )
            .into())
        }
    }
}

/// Read the request body up to `max` bytes.
async fn read_body_bounded<D: Downstream>(d: &mut D, max: usize) -> Result<Bytes, Failure> {
    let declared = declared_length(d.req_header());
    if declared.is_some_and(|n| n > max) {
        return Err(refuse_large_body(d, max, 0).await);
    }
    // A body that comes in one chunk (most do) is kept as it came: copied
    // into one buffer only when a second chunk follows.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        match d.read_body().await {
            Ok(Some(chunk)) => {
                let seen = first.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len();
                if seen > max {
                    drop((first, buf));
                    return Err(refuse_large_body(d, max, seen).await);
                }
                if first.is_none() && buf.is_empty() {
                    first = Some(chunk);
                    continue;
                }
                if let Some(f) = first.take() {
                    buf.reserve(declared.unwrap_or(0).max(seen));
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(first.unwrap_or_else(|| buf.freeze())),
            Err(()) => return Err(Failure::ClientGone),
        }
    }
}

/// A body over `max`: most clients send the whole body before reading the
/// answer, so discard it (bounded in bytes and time, never buffered) to let
/// them see the 413; past the bound the connection is simply closed.
async fn refuse_large_body<D: Downstream>(d: &mut D, max: usize, mut seen: usize) -> Failure {
    const DRAIN_LIMIT: usize = 64 << 20;
    // A client waiting for `100 Continue` sends nothing more unless it got
    // one (it did once part of the body arrived): don't wait for a body.
    if !expects_continue(d.req_header()) || seen > 0 {
        let drain = async {
            while seen <= DRAIN_LIMIT.max(2 * max) {
                match d.read_body().await {
                    Ok(Some(c)) => seen += c.len(),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    }
    Failure::Refuse(
        WeirError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than max_request_body ({max} bytes)"),
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client sending its body in the given chunks.
    struct Chunks(RequestHeader, std::collections::VecDeque<&'static [u8]>);

    impl Downstream for Chunks {
        fn req_header(&self) -> &RequestHeader {
            &self.0
        }
        fn req_header_mut(&mut self) -> &mut RequestHeader {
            &mut self.0
        }
        fn body_empty(&mut self) -> bool {
            false
        }
        fn body_done(&mut self) -> bool {
            self.1.is_empty()
        }
        async fn read_body(&mut self) -> Result<Option<Bytes>, ()> {
            Ok(self.1.pop_front().map(Bytes::from_static))
        }
        async fn gone(&mut self) {}
        async fn write_header(&mut self, _h: ResponseHeader, _end: bool) -> Result<(), ()> {
            Ok(())
        }
        async fn write_body(&mut self, _b: Bytes, _end: bool) -> Result<(), ()> {
            Ok(())
        }
        fn no_keepalive(&mut self) {}
        fn response_started(&self) -> bool {
            false
        }
    }

    fn read(chunks: &[&'static [u8]], max: usize) -> Result<Bytes, Failure> {
        let req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        let mut d = Chunks(req, chunks.iter().copied().collect());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(read_body_bounded(&mut d, max))
    }

    #[test]
    fn a_body_reads_whole_in_one_chunk_or_many_and_not_past_its_bound() {
        assert_eq!(&read(&[b"abc"], 10).ok().unwrap()[..], b"abc");
        assert_eq!(&read(&[b"ab", b"", b"cd", b"ef"], 10).ok().unwrap()[..], b"abcdef");
        assert_eq!(&read(&[b"", b"xy"], 10).ok().unwrap()[..], b"xy");
        assert_eq!(&read(&[], 10).ok().unwrap()[..], b"");
        for chunks in [&[&b"0123456789ab"[..]][..], &[b"01234", b"56789", b"a"]] {
            match read(chunks, 10) {
                Err(Failure::Refuse(e, None)) => assert_eq!(e.kind, ErrorKind::PayloadTooLarge),
                _ => panic!("{chunks:?} passed a 10-byte bound"),
            }
        }
    }

    #[test]
    fn dot_segments_in_any_spelling() {
        for p in [
            "/v1/../x",
            "/v1/./x",
            "/v1/%2e%2e/x",
            "/v1/%2E%2e/x",
            "/v1/.%2e/x",
            "/..",
            "/v1/%2e",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in ["/v1/chat/completions", "/v1/...", "/v1/a.b", "/v1/%2e%2e%2e", "/"] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn known_endpoints() {
        use http::Method;
        assert!(is_known_endpoint(&Method::POST, "/v1/chat/completions"));
        assert!(is_known_endpoint(&Method::POST, "/openai/v1/embeddings"));
        assert!(is_known_endpoint(&Method::POST, "/v1/responses"));
        assert!(is_known_endpoint(&Method::GET, "/v1/models"));
        assert!(!is_known_endpoint(&Method::GET, "/v1/files"));
        assert!(!is_known_endpoint(&Method::POST, "/v1/batches"));
        assert!(!is_known_endpoint(&Method::GET, "/v1/chat/completions"));
        assert!(!is_known_endpoint(&Method::DELETE, "/v1/models"));
    }
}
