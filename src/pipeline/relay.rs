//! The provider's answer on its way to the client: header and body through
//! the response phases (reverse route order), usage read as it passes.
//!
//! A stream is forwarded event by event (whole events only, so nothing
//! weir adds can land inside one). When it dies after content reached the
//! client — a reset, a gap past `stream_idle`, an end without
//! `finish_reason`/`[DONE]`, a malformed event — weir either continues it
//! on a provider that declares `continuation: prefill` (sent the text so
//! far as an assistant message; its deltas spliced into the same stream)
//! or ends it with an in-band error event and no `[DONE]`, so an SDK
//! raises instead of returning a truncated answer.

use super::attempt::AttemptGuard;
use super::chain::Route;
use super::context::RequestCtx;
use super::downstream::Downstream;
use super::failover::{cut, take_events, Job, Leg, PrepareError, Ready, StartError, StreamStart};
use super::plugin::Attempt;
use super::run::{finish_local, response_header_phases, Failure, Pipeline};
use crate::config::{Continuation, ProviderKind};
use crate::error::{ErrorKind, WeirError};
use crate::llm::sse::{data_event, Splice, StreamWatch, UsageStripper};
use crate::llm::usage::{usage_of_body, BodyUsage, Encoding};
use crate::llm::{self, tokens, Usage};
use crate::metrics;
use crate::provider::Provider;
use crate::upstream::{timed_out, Exchange, Fault, SendError};
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use std::sync::Arc;

/// Headers the response phases usually add (`x-ratelimit-*`, a budget's).
const PLUGIN_HEADER_ROOM: usize = 8;

/// The client's response header from the provider's.
pub(super) fn client_header(up: &ResponseHeader, p: &Provider, ctx: &RequestCtx) -> ResponseHeader {
    use http::header::{HeaderName, HeaderValue};
    // No map of the provider's spellings: Pingora writes a standard name
    // title-cased and any other in lowercase. The provider's names are moved
    // over as they were parsed, not parsed again. Room for weir's three
    // and for the plugins' (a rate limit's six): no map grows on the way out.
    super::build_headers(up.status, up.headers.len() + 3 + PLUGIN_HEADER_ROOM, |h| {
        for (name, value) in up.headers.iter() {
            if matches!(name.as_str(), "connection" | "keep-alive") {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        if let Ok(v) = HeaderValue::from_str(&p.name) {
            h.insert(HeaderName::from_static("x-weir-provider"), v);
        }
        if !ctx.dropped.is_empty() {
            // What the provider's wire format could not carry of the request.
            if let Ok(v) = HeaderValue::from_str(&ctx.dropped.join(", ")) {
                h.insert(HeaderName::from_static("x-weir-dropped"), v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
    })
}

/// Whether a response is an event stream.
pub(super) fn is_sse(h: &ResponseHeader) -> bool {
    h.headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// How a response body is encoded.
pub(super) fn encoding(h: &ResponseHeader) -> Encoding {
    Encoding::of(h.headers.get("content-encoding").map(|v| v.as_bytes()))
}

/// Run the response body phases (reverse route order) on one chunk.
fn body_phase(route: &Route, ctx: &mut RequestCtx, chunk: &mut Bytes, end: bool) {
    for i in (0..ctx.entered).rev() {
        ctx.enter(i);
        route.plugins[i].plugin.response_body(chunk, end, ctx);
    }
}

fn count_recovery(outcome: &str) {
    metrics::STREAM_RECOVERIES.with_label_values(&[outcome]).inc();
}

impl Pipeline {
    /// Send a ready answer to the client and the rest of it as it comes.
    pub(super) async fn relay<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        leg: Leg,
        ready: Ready,
    ) -> Result<(), Failure> {
        match ready {
            Ready::Whole(body) => {
                let Leg {
                    provider: p,
                    attempt,
                    ex,
                } = leg;
                let status = ex.header().status.as_u16();
                let head = client_header(ex.header(), &p, ctx);
                self.upstream.finish(ex).await;
                self.relay_whole(d, ctx, attempt, head, body, status).await
            }
            // Boxed: a pass-through or a stream is a large future, and the
            // whole answer (the common non-stream case) should not carry it.
            Ready::Pass(prefix) => Box::pin(self.relay_pass(d, ctx, job, leg, prefix)).await,
            Ready::Stream(s) => Box::pin(self.relay_stream(d, ctx, job, leg, *s)).await,
        }
    }

    /// An answer read whole: through every response phase, then sent with
    /// its exact length.
    pub(super) async fn relay_whole<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        mut attempt: AttemptGuard,
        head: ResponseHeader,
        body: Bytes,
        status: u16,
    ) -> Result<(), Failure> {
        attempt.end(&Attempt::Answered {
            status,
            ttfb: ctx.upstream_ttfb.unwrap_or_default(),
        });
        self.send_whole(d, ctx, head, body, status).await
    }

    /// A whole answer (the attempt it came from already ended).
    pub(super) async fn send_whole<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        mut head: ResponseHeader,
        body: Bytes,
        status: u16,
    ) -> Result<(), Failure> {
        if status == 200 && ctx.head.is_some() {
            record(ctx, usage_of_body(&body, is_sse(&head), encoding(&head)));
        }
        head.remove_header("transfer-encoding");
        let _ = head.insert_header("content-length", body.len().to_string());
        let body = finish_local(ctx, &mut head, body, None).await;
        d.write_header(head, false).await.map_err(|_| Failure::ClientGone)?;
        d.write_body(body, true).await.map_err(|_| Failure::ClientGone)
    }

    /// Header phases, then the header to the client. On failure the
    /// exchange is the caller's to abort.
    async fn commit<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Route,
        mut resp: ResponseHeader,
    ) -> Result<(), Failure> {
        response_header_phases(ctx, route, &mut resp, None).await;
        if let Some(e) = ctx.failed.take() {
            return Err(Failure::Refuse(e, None));
        }
        ctx.status = resp.status.as_u16();
        d.write_header(resp, false).await.map_err(|_| Failure::ClientGone)
    }

    /// Forward an answer as it comes (large non-stream bodies, error
    /// answers, event streams weir does not hold — Responses API, compressed
    /// — and paths weir does not read): usage read on the way, from the tail
    /// of a large JSON body, from the events of a stream, through a
    /// decompressed copy of a compressed body.
    async fn relay_pass<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        leg: Leg,
        prefix: Bytes,
    ) -> Result<(), Failure> {
        let Leg {
            provider: p,
            mut attempt,
            mut ex,
        } = leg;
        let route = job.route;
        let up = ex.header();
        let (status, ttfb) = (up.status.as_u16(), ex.ttfb);
        let sse = is_sse(up);
        let encoding = encoding(up);
        let reads_usage = status == 200 && ctx.head.is_some();
        let resp = client_header(up, &p, ctx);
        if let Err(f) = self.commit(d, ctx, route, resp).await {
            ex.abort().await;
            return Err(f);
        }
        let _stream = ctx.trace_stream(sse);
        attempt.end(&Attempt::Answered { status, ttfb });
        // Until the answer is read to its end, the provider's work is unseen.
        let spent = ctx.spent;
        if reads_usage {
            ctx.spent.unknown();
        }
        // Usage read from a copy as it passes (decompressed if it must be);
        // the client gets the bytes as sent. A compressed stream keeps its
        // usage event: it cannot be cut out without re-encoding.
        let mut usage = reads_usage.then(|| BodyUsage::new(sse, encoding));
        let mut strip = (sse && job.strip_usage && encoding == Encoding::Identity).then(UsageStripper::default);
        let mut pending = (!prefix.is_empty()).then_some(prefix);
        loop {
            let chunk = match pending.take() {
                Some(c) => Some(c),
                None => match ex.chunk(&p.name).await {
                    Ok(c) => c,
                    Err(e) => {
                        ex.abort().await;
                        return Err(Failure::Aborted(e.error));
                    }
                },
            };
            let end = chunk.is_none() || ex.done();
            let Some(mut chunk) = chunk else {
                // End of body: send the terminating chunk.
                let mut last = strip.as_mut().map_or_else(Bytes::new, UsageStripper::finish);
                body_phase(route, ctx, &mut last, true);
                if let Some(e) = ctx.failed.take() {
                    return Err(Failure::Aborted(e));
                }
                if d.write_body(last, true).await.is_err() {
                    return Err(Failure::ClientGone);
                }
                break;
            };
            if let Some(u) = usage.as_mut() {
                u.feed(&chunk);
            }
            if let Some(s) = strip.as_mut() {
                // Whole events go out as soon as they are complete.
                chunk = s.filter(chunk);
                if end {
                    let rest = s.finish();
                    if !rest.is_empty() {
                        let mut joined = BytesMut::from(&chunk[..]);
                        joined.extend_from_slice(&rest);
                        chunk = joined.freeze();
                    }
                }
            }
            body_phase(route, ctx, &mut chunk, end);
            if let Some(e) = ctx.failed.take() {
                ex.abort().await;
                return Err(Failure::Aborted(e));
            }
            if chunk.is_empty() && !end {
                continue;
            }
            if d.write_body(chunk, end).await.is_err() {
                ex.abort().await;
                return Err(Failure::ClientGone);
            }
            if end {
                break;
            }
        }
        ctx.spent = spent;
        if let Some(u) = usage {
            record(ctx, u.finish());
        }
        self.upstream.finish(ex).await;
        Ok(())
    }

    /// Write forwarded events (through the body phases), if any.
    async fn flush<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Route,
        out: &mut BytesMut,
        end: bool,
    ) -> Result<(), Failure> {
        if out.is_empty() && !end {
            return Ok(());
        }
        let mut chunk = out.split().freeze();
        body_phase(route, ctx, &mut chunk, end);
        if let Some(e) = ctx.failed.take() {
            return Err(Failure::Aborted(e));
        }
        if chunk.is_empty() && !end {
            return Ok(());
        }
        d.write_body(chunk, end).await.map_err(|_| Failure::ClientGone)
    }

    /// Read the next stream chunk within `stream_idle`, leaving if the client does.
    async fn next_chunk<D: Downstream>(d: &mut D, ex: &mut Exchange, p: &Provider) -> Result<Option<Bytes>, Next> {
        let limit = p.conf.timeouts.stream_idle.0;
        let r = tokio::select! {
            r = ex.chunk_within(&p.name, limit) => r,
            _ = d.gone() => return Err(Next::ClientGone),
        };
        r.map_err(|e| match e.fault {
            Fault::Timeout => Next::Died(timed_out(&p.name, "stalled mid-stream: sent nothing", limit)),
            _ => Next::Died(e),
        })
    }

    /// A stream whose first content arrived: forward it event by event;
    /// if it dies, recover. A client that leaves is charged the prompt and
    /// the text sent so far.
    async fn relay_stream<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        leg: Leg,
        mut s: StreamStart,
    ) -> Result<(), Failure> {
        let Leg {
            provider: p,
            mut attempt,
            mut ex,
        } = leg;
        let route = job.route;
        let (status, ttfb) = (ex.header().status.as_u16(), ex.ttfb);
        let resp = client_header(ex.header(), &p, ctx);
        if let Err(f) = self.commit(d, ctx, route, resp).await {
            ex.abort().await;
            ctx.spent.unknown();
            return Err(f);
        }
        let _stream = ctx.trace_stream(true);
        let died = match self.forward(d, ctx, job, &p, &mut ex, &mut s).await {
            Err(f) => {
                ex.abort().await;
                settle_stream(ctx, &s.watch).await;
                return Err(f);
            }
            Ok(Some(died)) => died,
            Ok(None) => {
                attempt.end(&Attempt::Answered { status, ttfb });
                settle_stream(ctx, &s.watch).await;
                attempt.output_tokens(ctx.usage.map(|u| u.completion_tokens));
                self.upstream.finish(ex).await;
                return self.flush(d, ctx, route, &mut s.held, true).await;
            }
        };
        // Events that arrived whole before the failure still go out.
        let flushed = self.flush(d, ctx, route, &mut s.held, false).await;
        attempt.end(&Attempt::Failed(died.error.kind));
        ex.abort().await;
        if let Err(f) = flushed {
            settle_stream(ctx, &s.watch).await;
            return Err(f);
        }
        self.recover(d, ctx, job, &p, s.watch, died).await
    }

    /// Forward a stream's events (rewritten by its splice, if it continues
    /// another) until it ends: `Ok(None)` complete (its last events still
    /// in `s.held`), `Ok(Some(_))` it died, `Err` the client left or a
    /// fail-closed filter failed.
    async fn forward<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        p: &Provider,
        ex: &mut Exchange,
        s: &mut StreamStart,
    ) -> Result<Option<SendError>, Failure> {
        let strip = job.strip_usage && s.splice.is_none();
        loop {
            self.flush(d, ctx, job.route, &mut s.held, false).await?;
            match Self::next_chunk(d, ex, p).await {
                Err(Next::ClientGone) => return Err(Failure::ClientGone),
                Err(Next::Died(e)) => return Ok(Some(e)),
                Ok(None) if s.watch.complete() => {
                    // Whatever trails the last event (a comment without its blank line).
                    if s.splice.is_none() {
                        s.held.extend_from_slice(&s.splitter.take_rest());
                    }
                    return Ok(None);
                }
                Ok(None) => return Ok(Some(cut(&p.name, "ended the stream without finishing the answer"))),
                Ok(Some(c)) => {
                    s.splitter.push(&c);
                    let taken = match s.splice.as_mut() {
                        None => take_events(&mut s.splitter, &mut s.watch, strip, &mut s.held, &p.name),
                        Some(splice) => {
                            // The watch checks each event; the splice makes what goes out.
                            let mut plain = BytesMut::new();
                            let r = take_events(&mut s.splitter, &mut s.watch, false, &mut plain, &p.name);
                            splice.rewrite(&plain, &mut s.held);
                            r
                        }
                    };
                    if let Err(e) = taken {
                        return Ok(Some(e));
                    }
                }
            }
        }
    }

    /// A stream died after content reached the client: continue it on a
    /// `continuation: prefill` provider, or end it with an error event.
    async fn recover<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        dead: &Provider,
        primary: StreamWatch,
        cause: SendError,
    ) -> Result<(), Failure> {
        let (route, model) = (job.route, job.model);
        let what = format!(
            "{} after {} content chunks had reached the client",
            cause.error.message, primary.content_events
        );
        log::warn!("request {}: {what}", ctx.request_id);
        settle_stream(ctx, &primary).await;
        let chat = d.req_header().uri.path().ends_with("/chat/completions");
        if primary.tool_calls || primary.not_continuable || primary.text.is_empty() || !chat {
            count_recovery("not_continuable");
            let why = if primary.tool_calls {
                "tool-call streams are not continued"
            } else {
                "this stream cannot be continued"
            };
            return self.end_with_error(d, ctx, route, format!("{what}; {why}")).await;
        }
        let fallbacks: Vec<Arc<Provider>> = route
            .candidates(model)
            .into_iter()
            .filter(|f| f.name != dead.name && f.conf.continuation == Continuation::Prefill)
            .collect();
        if fallbacks.is_empty() {
            count_recovery("no_fallback");
            return self
                .end_with_error(
                    d,
                    ctx,
                    route,
                    format!("{what}; no provider with continuation: prefill serves '{model}'"),
                )
                .await;
        }
        let client_usage = !job.strip_usage && ctx.head.as_ref().is_some_and(|h| h.include_usage);
        let mut notes = Vec::new();
        for f in fallbacks {
            let Some(mut body) = f
                .upstream_model(model)
                .and_then(|up| llm::prefill_body(&ctx.body, up, &primary.text, primary.content_events))
            else {
                notes.push(format!("'{}': the request has no messages to continue", f.name));
                continue;
            };
            if f.conf.kind == ProviderKind::Anthropic {
                // Anthropic continues a final assistant message natively.
                match llm::anthropic::request_from_openai(&body, super::failover::ANTHROPIC_MAX_TOKENS) {
                    Ok(t) => body = t.body,
                    Err(e) => {
                        notes.push(format!("'{}': {e}", f.name));
                        continue;
                    }
                }
            }
            // Never native: the stream being continued is read as OpenAI's.
            let mut leg = match self.start(d, ctx, route, &f, &body, false).await {
                Ok(s) => s,
                Err(StartError::ClientGone | StartError::LeftAfterSend) => return Err(Failure::ClientGone),
                Err(StartError::Refused(e)) => {
                    notes.push(e.message);
                    continue;
                }
                Err(StartError::Failed(e)) => {
                    notes.push(e.error.message);
                    continue;
                }
            };
            let (status, ttfb) = (leg.ex.header().status.as_u16(), leg.ex.ttfb);
            if status != 200 {
                // A fallback that rejects the prefill is not the client's error.
                notes.push(format!("'{}' answered {status} to the continuation", f.name));
                leg.attempt.end(&Attempt::Answered { status, ttfb });
                leg.ex.abort().await;
                continue;
            }
            match self.prepare(d, &mut leg.ex, &f, true, false).await {
                Ok(Ready::Stream(s)) => {
                    let splice = Splice::new(&primary, &dead.name, &f.name, client_usage);
                    return self.splice(d, ctx, job, leg, *s, splice).await;
                }
                Ok(_) => notes.push(format!("'{}' did not stream the continuation", f.name)),
                Err(PrepareError::ClientGone) => return Err(Failure::ClientGone),
                Err(PrepareError::Failed(e)) => {
                    leg.attempt.end(&Attempt::Failed(e.error.kind));
                    notes.push(e.error.message);
                }
            }
            leg.ex.abort().await;
        }
        count_recovery("failed");
        let notes = notes.join("; ");
        self.end_with_error(d, ctx, route, format!("{what}; continuing it failed ({notes})"))
            .await
    }

    /// Forward a continuation as part of the stream that died: its events
    /// rewritten to the original `id`, no second role chunk, usage summed.
    async fn splice<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        job: Job<'_>,
        leg: Leg,
        mut s: StreamStart,
        mut splice: Splice,
    ) -> Result<(), Failure> {
        let Leg {
            provider: f,
            mut attempt,
            mut ex,
        } = leg;
        let route = job.route;
        let (status, ttfb) = (ex.header().status.as_u16(), ex.ttfb);
        // What the continuation sent before its first content, rewritten.
        let held = s.held.split();
        splice.rewrite(&held, &mut s.held);
        let from = splice.from.clone();
        s.splice = Some(splice);
        ctx.provider = Some(f.clone());
        let ended = self.forward(d, ctx, job, &f, &mut ex, &mut s).await;
        // The first provider's part was counted in `recover`; the
        // continuation's is its own report, or weir's count of its text.
        let reported = s.splice.as_ref().and_then(|x| x.continuation_usage);
        match ended {
            Err(fail) => {
                ex.abort().await;
                settle_continuation(ctx, reported, &s.watch).await;
                Err(fail)
            }
            Ok(None) => {
                attempt.end(&Attempt::Answered { status, ttfb });
                count_recovery("continued");
                log::info!(
                    "request {}: stream continued on provider '{}' after '{from}' failed",
                    ctx.request_id,
                    f.name
                );
                settle_continuation(ctx, reported, &s.watch).await;
                ctx.usage = s.splice.as_ref().and_then(|x| x.usage).or(ctx.usage);
                self.upstream.finish(ex).await;
                self.flush(d, ctx, route, &mut s.held, true).await
            }
            Ok(Some(died)) => {
                settle_continuation(ctx, reported, &s.watch).await;
                self.flush(d, ctx, route, &mut s.held, false).await?;
                attempt.end(&Attempt::Failed(died.error.kind));
                ex.abort().await;
                count_recovery("failed");
                self.end_with_error(
                    d,
                    ctx,
                    route,
                    format!(
                        "the stream from '{from}' died and its continuation on '{}' died too: {}",
                        f.name, died.error.message
                    ),
                )
                .await
            }
        }
    }

    /// End a stream with an error event in OpenAI's envelope and no
    /// `[DONE]`: an SDK raises it rather than return a truncated answer.
    async fn end_with_error<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Route,
        message: String,
    ) -> Result<(), Failure> {
        let event = serde_json::json!({
            "error": {
                "message": message,
                "type": "upstream_error",
                "code": "stream_interrupted",
                "param": null,
            }
        });
        let mut out = BytesMut::from(&data_event(&serde_json::to_vec(&event).unwrap_or_default())[..]);
        ctx.error = Some(WeirError::new(ErrorKind::Upstream, message));
        self.flush(d, ctx, route, &mut out, true).await
    }
}

/// A finished answer's usage: for metrics, and for budgets (an answer from
/// an LLM endpoint without usage: the provider's work is unknown).
fn record(ctx: &mut RequestCtx, usage: Option<Usage>) {
    ctx.usage = usage;
    match usage {
        Some(u) => ctx.spent.reported(u),
        None => ctx.spent.unknown(),
    }
}

/// A stream's part of the bill: the provider's usage if it reported one,
/// else weir's count of its prompt and everything it generated (choice 0's
/// text, other choices, refusals, reasoning, tool calls).
async fn settle_stream(ctx: &mut RequestCtx, watch: &StreamWatch) {
    if let Some(u) = watch.usage {
        return record(ctx, Some(u));
    }
    let u = Usage {
        prompt_tokens: ctx.prompt_tokens().await,
        completion_tokens: generated_tokens(watch).await,
        ..Usage::default()
    };
    ctx.usage = Some(u);
    ctx.spent.counted(u);
}

/// A continuation's part of the bill: its own report, else its text
/// counted (its prompt, the original one plus the first provider's text,
/// was counted with the first provider's share).
async fn settle_continuation(ctx: &mut RequestCtx, reported: Option<Usage>, watch: &StreamWatch) {
    match reported {
        Some(u) => ctx.spent.reported(u),
        None => ctx.spent.counted(Usage {
            completion_tokens: generated_tokens(watch).await,
            ..Usage::default()
        }),
    }
}

/// Tokens of all a stream generated.
async fn generated_tokens(watch: &StreamWatch) -> u64 {
    text_tokens(&watch.text)
        .await
        .saturating_add(text_tokens(&watch.other_text).await)
}

/// Tokens of streamed text, off the async workers when it is long.
async fn text_tokens(text: &str) -> u64 {
    if tokens::counted_inline(text.as_bytes()) {
        return tokens::text_tokens(text);
    }
    let owned = text.to_string();
    tokio::task::spawn_blocking(move || tokens::text_tokens(&owned))
        .await
        .unwrap_or(text.len() as u64)
}

/// Why reading a stream stopped.
enum Next {
    ClientGone,
    Died(SendError),
}
