//! Attempts at providers until one answers, by the route's retry policy
//! (`retry.rs`). Nothing reaches the client before an answer is ready:
//! a stream's first token, or a whole non-stream body (up to a bound), so a
//! provider that fails before then — reset, silent past `first_token`, cut
//! mid-body — is one more failed attempt, not a broken response.
//!
//! Answers that must not be retried blindly are returned as they are
//! (4xx), except `context_length_exceeded`, which goes once to the
//! route's larger-context model when `context_fallbacks` names one.

use super::attempt::{self, AttemptGuard};
use super::chain::Route;
use super::context::RequestCtx;
use super::context::Wire;
use super::downstream::Downstream;
use super::plugin::Attempt;
use super::relay::{client_header, encoding, is_sse};
use super::retry::{self, Outcome, Schedule};
use super::run::{wait, Failure, Pipeline};
use super::wire::FromAnthropic;
use crate::config::ProviderKind;
use crate::error::{ErrorKind, WeirError};
use crate::llm;
use crate::llm::sse::{event_data, Seen, Splice, SseSplitter, StreamWatch};
use crate::llm::usage::Encoding;
use crate::metrics;
use crate::provider::Provider;
use crate::traffic::retry_budget::RetryGuard;
use crate::upstream::{timed_out, Exchange, Fault, SendError, Target};
use bytes::{Bytes, BytesMut};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A non-stream answer up to this size is read whole before the client
/// sees anything (so a provider dying mid-body can be retried); a larger
/// one is forwarded as it comes.
pub(super) const MAX_WHOLE: usize = 1 << 20;

/// An error answer read to decide whether it is `context_length_exceeded`.
const MAX_ERROR_BODY: usize = 64 << 10;

/// A provider's error answer kept while other attempts are made.
struct Held {
    head: ResponseHeader,
    body: Bytes,
    provider: Arc<Provider>,
}

/// An attempt under way: the provider, the attempt's guard, and the
/// exchange whose response head has arrived.
pub(super) struct Leg {
    pub provider: Arc<Provider>,
    pub attempt: AttemptGuard,
    pub ex: Exchange,
}

/// What the attempts of one request share once an answer is chosen.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub route: &'a Arc<Route>,
    /// The public model asked for (after a context-length fallback, the larger one).
    pub model: &'a str,
    /// weir asked for a usage chunk the client did not: take it out again.
    pub strip_usage: bool,
}

pub(super) enum StartError {
    /// The provider's bulkhead refused, or a plugin skipped it: no send.
    Refused(WeirError),
    Failed(SendError),
    /// The client left before anything was sent.
    ClientGone,
    /// The client left while the request was with the provider, which may
    /// work on it regardless.
    LeftAfterSend,
}

/// An answer ready to go to the client.
pub(super) enum Ready {
    /// An event stream whose first content has arrived; `held` is what
    /// came before it and with it, ready to forward.
    Stream(Box<StreamStart>),
    /// The whole body.
    Whole(Bytes),
    /// Forward as it comes, starting with these bytes.
    Pass(Bytes),
}

/// A stream up to its first content.
pub(super) struct StreamStart {
    pub splitter: SseSplitter,
    pub watch: StreamWatch,
    /// Events read and ready to forward.
    pub held: BytesMut,
    /// Set when this stream continues another one that died.
    pub splice: Option<Splice>,
}

pub(super) enum PrepareError {
    Failed(SendError),
    ClientGone,
}

/// Headers never copied from client to provider: hop-by-hop ones, the
/// framing weir sets itself, and `expect` (weir has the whole body before it
/// sends; a provider's `100 Continue` would only be an interim head to skip).
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
    "expect",
];

/// Client credentials for weir itself, never forwarded.
const CLIENT_KEYS: &[&str] = &["authorization", "api-key", "x-api-key"];

/// Headers that choose which organization or project the operator's key
/// bills; forwarded only with the provider's `forward_client_org`.
const CLIENT_ORG: &[&str] = &["openai-organization", "openai-project"];

/// Whether the client's `Connection` header names `name` (lowercase): such
/// a header is hop-by-hop too (RFC 9110 §7.6.1).
fn named_in_connection(client: &RequestHeader, name: &str) -> bool {
    client.headers.get_all("connection").iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// Whether the request is a chat completion (an Anthropic client's
/// included, translated on arrival).
fn is_chat(client: &RequestHeader) -> bool {
    client.uri.path().ends_with("/chat/completions")
}

/// Headers of Anthropic's API, for an Anthropic provider only.
fn is_anthropic_header(name: &str) -> bool {
    name.starts_with("anthropic-")
}

/// The request header as the provider gets it.
/// `native`: the body is an Anthropic client's own, to an Anthropic provider.
fn upstream_request(
    client: &RequestHeader,
    p: &Provider,
    request_id: &str,
    body_len: usize,
    native: bool,
) -> RequestHeader {
    let anthropic = p.conf.kind == ProviderKind::Anthropic;
    let path = if anthropic && is_chat(client) {
        format!("{}/messages", p.endpoint.base_path)
    } else {
        p.endpoint
            .upstream_path(client.uri.path_and_query().map_or("/", |pq| pq.as_str()))
    };
    // Without a map of the client's header-name spellings (HTTP's names are
    // case-insensitive): Pingora writes a standard name title-cased and any
    // other in lowercase, and the header costs half as much to build, copy
    // and drop.
    let mut req = RequestHeader::build_no_case(client.method.clone(), path.as_bytes(), Some(client.headers.len() + 4))
        .expect("method and path come from a valid request");
    let has_connection = client.headers.contains_key("connection");
    for (name, value) in client.headers.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || (!p.conf.forward_client_auth && CLIENT_KEYS.contains(&n))
            || (!p.conf.forward_client_org && CLIENT_ORG.contains(&n))
            || (has_connection && named_in_connection(client, n))
            || (!native && is_anthropic_header(n))
        {
            continue;
        }
        let _ = req.append_header(name.clone(), value.clone());
    }
    let _ = req.insert_header(http::header::HOST, p.host.clone());
    let _ = req.insert_header("x-request-id", request_id);
    for (name, value) in &p.auth {
        // A native client's own API version (and betas) stand.
        if native && *name == "anthropic-version" && req.headers.contains_key(*name) {
            continue;
        }
        let _ = req.insert_header(*name, value.clone());
    }
    if body_len > 0 || client.method != http::Method::GET {
        let _ = req.insert_header(http::header::CONTENT_LENGTH, http::HeaderValue::from(body_len));
    }
    if super::run::reads_usage(client.uri.path()) {
        // weir reads usage from the answer: ask for it uncompressed (the
        // client may still get it compressed from anyone in between; a
        // provider that compresses anyway is read through a copy).
        let _ = req.insert_header(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
    }
    req
}

/// `max_tokens` sent to an Anthropic provider (which requires it) when an
/// OpenAI client set none.
pub(super) const ANTHROPIC_MAX_TOKENS: u64 = 4096;

/// The body for `provider`, in its wire format: the public `model` renamed
/// to its upstream name. An Anthropic provider gets an Anthropic client's
/// own bytes (unless a plugin changed the request) or the OpenAI request
/// translated; `ctx.dropped` says what the translation left out.
fn body_for(ctx: &mut RequestCtx, provider: &Provider, model: &str, chat: bool) -> Result<Bytes, WeirError> {
    let up = provider.upstream_model(model);
    ctx.dropped.clear();
    if provider.conf.kind == ProviderKind::Anthropic {
        if let Some((bytes, head)) = &ctx.client_body {
            return Ok(up.map_or_else(|| bytes.clone(), |up| llm::rewrite_model(bytes, head, up)));
        }
        if chat {
            // Renamed in the OpenAI request (its head is parsed already), then
            // translated: no second parse of the translation.
            let t = llm::anthropic::request_from_openai(&renamed(ctx, up), ANTHROPIC_MAX_TOKENS)
                .map_err(|m| WeirError::invalid(format!("provider '{}' speaks Anthropic's API: {m}", provider.name)))?;
            ctx.dropped = t.dropped;
            return Ok(t.body);
        }
    }
    if ctx.wire == Wire::Anthropic {
        ctx.dropped = ctx.wire_dropped.clone();
    }
    Ok(renamed(ctx, up))
}

/// The request body with the model renamed to `up` (unchanged without one).
fn renamed(ctx: &RequestCtx, up: Option<&str>) -> Bytes {
    match (&ctx.head, up) {
        (Some(h), Some(up)) => llm::rewrite_model(&ctx.body, h, up),
        _ => ctx.body.clone(),
    }
}

/// Is this error answer OpenAI's `context_length_exceeded`?
fn is_context_length(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")?
                .as_str()
                .map(|c| c == "context_length_exceeded")
        })
        .unwrap_or(false)
}

fn count_retry(route: &Route, reason: &str) {
    metrics::RETRIES.with_label_values(&[&route.name, reason]).inc();
}

impl Pipeline {
    /// Admit and send one attempt at `provider`: its bulkhead slot, the
    /// chain's admission, the request, the response head.
    pub(super) async fn start<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Route,
        provider: &Arc<Provider>,
        body: &Bytes,
        native: bool,
    ) -> Result<Leg, StartError> {
        let permit = match wait(d, &provider.bulkhead, ctx, true).await {
            Ok(p) => p,
            Err(Failure::Refuse(e, _)) => return Err(StartError::Refused(e)),
            Err(_) => return Err(StartError::ClientGone),
        };
        let Some(mut attempt) = AttemptGuard::admit(&route.plugins, provider, permit) else {
            return Err(StartError::Refused(attempt::skipped_error(provider)));
        };
        ctx.tried.push(provider.clone());
        let mut req = upstream_request(d.req_header(), provider, &ctx.request_id, body.len(), native);
        attempt.span = ctx.trace_attempt(provider, &mut req).map(Box::new);
        let target = Target::provider(provider);
        let sent = tokio::select! {
            r = self.upstream.send(&target, &req, body) => Some(r),
            _ = d.gone() => None,
        };
        match sent {
            // The attempt guard gives back what it holds.
            None => Err(StartError::LeftAfterSend),
            Some(Err(e)) => {
                attempt.end(&Attempt::Failed(e.error.kind));
                Err(StartError::Failed(e))
            }
            Some(Ok(mut ex)) => {
                // An Anthropic provider's answer, read as OpenAI's by all
                // but a native client.
                if provider.conf.kind == ProviderKind::Anthropic && is_chat(d.req_header()) && !native {
                    let include_usage = ctx.head.as_ref().is_some_and(|h| h.include_usage);
                    let map = FromAnthropic::new(ex.header(), include_usage);
                    ex.map_answer(Box::new(map));
                }
                attempt.head(ex.header(), ex.ttfb);
                Ok(Leg {
                    provider: provider.clone(),
                    attempt,
                    ex,
                })
            }
        }
    }

    /// Try candidates by the route's retry policy until one answer is
    /// ready, then relay it.
    pub(super) async fn attempts<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
        strip_usage: bool,
    ) -> Result<(), Failure> {
        let policy = &route.retry;
        let mut candidates = std::mem::take(&mut ctx.candidates);
        let mut model = ctx.model().unwrap_or_default().to_string();
        let mut switched = false;
        let mut schedule = Schedule::new(policy, candidates.len(), Instant::now());
        let mut next = schedule.first().map(|i| (i, Duration::ZERO));
        let mut last_err: Option<WeirError> = None;
        // The last provider answer retried (its header and error body): the
        // client's if no later attempt answers, rather than weir's own error.
        // A 429 whose Retry-After was too long to wait out comes first, so
        // the client learns when to come back.
        let mut held: Option<Held> = None;
        let mut rate_limited: Option<Held> = None;
        // Held from the first retry to the end of the request.
        let mut retrying = None;
        while let Some((i, pause)) = next.take() {
            let provider = candidates[i].clone();
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = d.gone() => return Err(Failure::ClientGone),
                }
            }
            ctx.provider = Some(provider.clone());
            let body = match body_for(ctx, &provider, &model, is_chat(d.req_header())) {
                Ok(b) => b,
                Err(e) => {
                    // This provider cannot take the request as it is; another may.
                    last_err = Some(e);
                    next = schedule.skip(i, Instant::now());
                    continue;
                }
            };
            let native = ctx.native_from(&provider);
            let Leg {
                mut attempt, mut ex, ..
            } = match self.start(d, ctx, route, &provider, &body, native).await {
                Ok(s) => s,
                Err(StartError::ClientGone) => return Err(Failure::ClientGone),
                Err(StartError::LeftAfterSend) => {
                    ctx.spent.unknown();
                    return Err(Failure::ClientGone);
                }
                Err(StartError::Refused(e)) => {
                    last_err = Some(e);
                    next = schedule.skip(i, Instant::now());
                    continue;
                }
                Err(StartError::Failed(e)) => {
                    schedule.sent(i);
                    log::warn!("request {}: {e}", ctx.request_id);
                    next = self.retry_at(&mut schedule, i, Outcome::Fault(e.fault), route, &mut retrying);
                    last_err = Some(e.error);
                    continue;
                }
            };
            schedule.sent(i);
            d.native_answer(native);
            let status = ex.header().status.as_u16();
            let ttfb = ex.ttfb;
            if status == 429 || status >= 500 {
                let ra = ex
                    .header()
                    .headers
                    .get("retry-after")
                    .and_then(|v| retry::retry_after(v.as_bytes(), SystemTime::now()));
                let outcome = Outcome::Status(status, ra);
                if let Some(n) = self.retry_at(&mut schedule, i, outcome, route, &mut retrying) {
                    log::warn!(
                        "request {}: provider '{}' answered {status}; trying again",
                        ctx.request_id,
                        provider.name
                    );
                    attempt.end(&Attempt::Answered { status, ttfb });
                    let head = client_header(ex.header(), &provider, ctx);
                    // Read the (small) error body: the connection goes back
                    // to the pool and the answer can still be the client's.
                    let read = self.upstream.read_whole(ex, &provider.name, MAX_ERROR_BODY);
                    if let Ok(body) = read.await {
                        let answer = Held {
                            head,
                            body,
                            provider: provider.clone(),
                        };
                        if status == 429 && ra.is_some_and(|ra| ra > policy.max_retry_after.0) {
                            rate_limited = Some(answer);
                        } else {
                            held = Some(answer);
                        }
                    }
                    last_err = Some(WeirError::new(
                        ErrorKind::Upstream,
                        format!("provider '{}' answered {status}", provider.name),
                    ));
                    next = Some(n);
                    continue;
                }
            }
            let bigger = route.context_fallbacks.get(&model).filter(|_| !switched);
            if let (400, Some(bigger)) = (status, bigger) {
                ctx.upstream_ttfb = Some(ttfb);
                let head = client_header(ex.header(), &provider, ctx);
                let body = match self.upstream.read_whole(ex, &provider.name, MAX_ERROR_BODY).await {
                    Ok(b) => b,
                    Err(e) => {
                        attempt.end(&Attempt::Failed(e.error.kind));
                        return Err(e.error.into());
                    }
                };
                attempt.end(&Attempt::Answered { status, ttfb });
                if is_context_length(&body) {
                    log::info!(
                        "request {}: '{model}' is over its context length at '{}'; trying '{bigger}'",
                        ctx.request_id,
                        provider.name
                    );
                    count_retry(route, "context_length");
                    model = bigger.clone();
                    ctx.served_model = Some(model.clone());
                    switched = true;
                    candidates = route.candidates(&model);
                    schedule = Schedule::new(policy, candidates.len(), Instant::now());
                    next = schedule.first().map(|i| (i, Duration::ZERO));
                    continue;
                }
                // Another 400: the client's to see. Its connection went back to the pool.
                return self.relay_whole(d, ctx, attempt, head, body, status).await;
            }
            let ready = if status == 200 && ctx.head.is_some() {
                let path = d.req_header().uri.path();
                // A native Anthropic stream is forwarded as it comes (weir
                // reads OpenAI's chunks event by event, not Anthropic's).
                let chat = (path.ends_with("/chat/completions") || path.ends_with("/completions")) && !native;
                let stream = chat && ctx.head.as_ref().is_some_and(|h| h.stream);
                match self.prepare(d, &mut ex, &provider, stream, strip_usage).await {
                    Ok(r) => {
                        if let Ready::Stream(_) = r {
                            attempt.first_token(ex.sent_at.elapsed());
                        }
                        r
                    }
                    Err(PrepareError::ClientGone) => {
                        // Gone before the answer was ready: what the provider
                        // made of it is unknown.
                        ctx.spent.unknown();
                        return Err(Failure::ClientGone);
                    }
                    Err(PrepareError::Failed(e)) => {
                        log::warn!("request {}: {e}", ctx.request_id);
                        // It accepted the request (200): it may have generated,
                        // and billed, what never arrived.
                        ctx.spent.unknown();
                        attempt.end(&Attempt::Failed(e.error.kind));
                        ex.abort().await;
                        next = self.retry_at(&mut schedule, i, Outcome::Fault(e.fault), route, &mut retrying);
                        last_err = Some(e.error);
                        continue;
                    }
                }
            } else {
                Ready::Pass(Bytes::new())
            };
            ctx.upstream_ttfb = Some(ttfb);
            return self
                .relay(
                    d,
                    ctx,
                    Job {
                        route,
                        model: &model,
                        strip_usage,
                    },
                    Leg { provider, attempt, ex },
                    ready,
                )
                .await;
        }
        if let Some(h) = rate_limited.or(held) {
            d.native_answer(ctx.native_from(&h.provider));
            ctx.provider = Some(h.provider);
            let status = h.head.status.as_u16();
            return self.send_whole(d, ctx, h.head, h.body, status).await;
        }
        Err(last_err
            .unwrap_or_else(|| WeirError::new(ErrorKind::Upstream, "no provider answered"))
            .into())
    }

    /// The policy's next candidate after a failed attempt, if the retry
    /// budget allows one more retry in progress; counted.
    fn retry_at<'a>(
        &'a self,
        s: &mut Schedule,
        i: usize,
        outcome: Outcome,
        route: &Route,
        retrying: &mut Option<RetryGuard<'a>>,
    ) -> Option<(usize, Duration)> {
        let next = s.after(i, outcome, Instant::now())?;
        if retrying.is_none() {
            match self.retry_budget.try_retry() {
                Some(g) => *retrying = Some(g),
                None => {
                    count_retry(route, "budget_exhausted");
                    return None;
                }
            }
        }
        count_retry(route, outcome.reason());
        Some(next)
    }

    /// Read an answer up to the point where it can go to the client: a
    /// chat stream's first content (within `first_token` of sending), or a
    /// non-stream body whole (up to [`MAX_WHOLE`]). `stream`: the client
    /// asked for a chat or completions stream.
    pub(super) async fn prepare<D: Downstream>(
        &self,
        d: &mut D,
        ex: &mut Exchange,
        p: &Provider,
        stream: bool,
        strip_usage: bool,
    ) -> Result<Ready, PrepareError> {
        if is_sse(ex.header()) {
            if !stream || encoding(ex.header()) != Encoding::Identity {
                // Not a chat stream weir reads event by event (a Responses
                // API stream, a passthrough path, or one a provider
                // compressed although weir asked for identity): forwarded
                // as it comes, its usage read from a (decompressed) copy.
                return Ok(Ready::Pass(Bytes::new()));
            }
            return self
                .first_token(d, ex, p, strip_usage)
                .await
                .map(|s| Ready::Stream(Box::new(s)));
        }
        let mut buf = BytesMut::new();
        loop {
            let chunk = tokio::select! {
                c = ex.chunk(&p.name) => c,
                _ = d.gone() => return Err(PrepareError::ClientGone),
            };
            match chunk.map_err(PrepareError::Failed)? {
                None => return Ok(Ready::Whole(buf.freeze())),
                Some(c) => {
                    buf.extend_from_slice(&c);
                    if buf.len() > MAX_WHOLE {
                        return Ok(Ready::Pass(buf.freeze()));
                    }
                }
            }
        }
    }

    /// Read a stream until its first content, holding what came before.
    async fn first_token<D: Downstream>(
        &self,
        d: &mut D,
        ex: &mut Exchange,
        p: &Provider,
        strip_usage: bool,
    ) -> Result<StreamStart, PrepareError> {
        let limit = p.conf.timeouts.first_token.0;
        let deadline = ex.sent_at + limit;
        let mut s = StreamStart {
            splitter: SseSplitter::default(),
            watch: StreamWatch::default(),
            held: BytesMut::new(),
            splice: None,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PrepareError::Failed(timed_out(&p.name, "sent no first token", limit)));
            }
            let chunk = tokio::select! {
                c = ex.chunk_within(&p.name, left) => c,
                _ = d.gone() => return Err(PrepareError::ClientGone),
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if e.fault == Fault::Timeout => {
                    return Err(PrepareError::Failed(timed_out(&p.name, "sent no first token", limit)))
                }
                Err(e) => return Err(PrepareError::Failed(e)),
            };
            let Some(chunk) = chunk else {
                if s.watch.complete() {
                    return Ok(s);
                }
                return Err(PrepareError::Failed(cut(
                    &p.name,
                    "ended the stream before any content",
                )));
            };
            s.splitter.push(&chunk);
            if take_events(&mut s.splitter, &mut s.watch, strip_usage, &mut s.held, &p.name)
                .map_err(PrepareError::Failed)?
            {
                return Ok(s);
            }
        }
    }
}

/// A stream that broke off.
pub(super) fn cut(provider: &str, what: &str) -> SendError {
    SendError {
        error: WeirError::new(ErrorKind::Upstream, format!("provider '{provider}' {what}")),
        fault: Fault::Reset,
    }
}

/// Move the whole events buffered in `splitter` to `out`, read by `watch`
/// (a usage-only event dropped when weir asked for it, not the client).
/// Returns whether the answer is under way (content, `[DONE]` or an error
/// event seen); a malformed or oversized event is the provider's fault.
pub(super) fn take_events(
    splitter: &mut SseSplitter,
    watch: &mut StreamWatch,
    strip_usage: bool,
    out: &mut BytesMut,
    provider: &str,
) -> Result<bool, SendError> {
    let mut under_way = false;
    loop {
        let event = match splitter.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(under_way),
            Err(_) => return Err(cut(provider, "sent an event over 1 MiB")),
        };
        let seen = match event_data(&event) {
            Some(data) => watch.observe(&data),
            None => Seen::Preamble,
        };
        match seen {
            Seen::Malformed => return Err(cut(provider, "sent a malformed stream event")),
            Seen::UsageOnly if strip_usage => {}
            Seen::Content | Seen::Done | Seen::Error => {
                under_way = true;
                out.extend_from_slice(&event);
            }
            Seen::UsageOnly | Seen::Preamble => out.extend_from_slice(&event),
        }
    }
}
