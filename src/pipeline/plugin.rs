//! What a plugin is: the [`Plugin`] trait, whose methods are the phases of a
//! request in the order they run, and what passes between it and the
//! pipeline (flows, attempts, capabilities).

use super::context::RequestCtx;
use crate::error::{ErrorKind, WeirError};
use crate::provider::Provider;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::Duration;

/// A response a plugin gives instead of the provider's.
pub struct LocalResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
}

/// What a request phase decided.
pub enum Flow {
    /// Go on to the next plugin / phase.
    Continue,
    /// Answer the client with this response. Later request phases are
    /// skipped; the response goes through the response phases of the
    /// plugins that ran before this one.
    Respond(Box<LocalResponse>),
}

/// Whether a plugin lets an attempt at a provider go ahead.
pub enum Admission {
    /// Go; the hold (if any) is told how the attempt ended.
    Go(Option<Box<dyn AttemptHold>>),
    /// Skip this provider (as an open breaker does), without counting a retry.
    Skip,
}

/// A plugin's stake in one attempt (a breaker's half-open probe, say). The
/// pipeline calls [`AttemptHold::end`] exactly once: with the outcome, or
/// with [`Attempt::Aborted`] if the attempt was abandoned on any path (the
/// client left, the future was dropped).
pub trait AttemptHold: Send + Sync {
    fn end(&mut self, attempt: &Attempt);
}

/// How one attempt at a provider went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attempt {
    /// The provider answered with this status after `ttfb`.
    Answered { status: u16, ttfb: Duration },
    /// It failed before answering (unreachable, reset, timeout).
    Failed(ErrorKind),
    /// Abandoned before an outcome was known: says nothing about the provider.
    Aborted,
}

/// What a plugin needs from the pipeline, declared once at build time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The provider's token `usage` on streams, even when the client did not
    /// ask for it: weir asks the provider and removes the extra chunk
    /// before the client sees it.
    pub stream_usage: bool,
}

/// How a plugin takes part in a request phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It does no work here: no call, no slot.
    Skip,
    /// It works here and never waits (no store round trip, no pause): no
    /// slot of its bulkhead. Such a phase runs from start to end on one
    /// worker thread, so no more requests than there are threads are ever
    /// in it at once: its bulkhead could not fill or queue.
    Run,
    /// It works here and may wait (a store's round trip, a coalesced miss,
    /// a paused filter): it holds a slot of its bulkhead meanwhile. In the
    /// body phase a plugin may say per request that it will not
    /// ([`Plugin::request_body_waits`]).
    Wait,
}

/// Which of the phases that cost the pipeline something a plugin works in
/// (declared once, at build time). A phase a plugin does not work in is
/// skipped for it: no slot of its bulkhead taken, no call made. The
/// default is every phase, waiting, so a plugin that declares nothing
/// loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub request_headers: Phase,
    pub request_body: Phase,
    /// No slot here: `Run` calls [`Plugin::response_headers`] at once,
    /// `Wait` [`Plugin::response_headers_held`] (which may hold the header).
    pub response_headers: Phase,
}

impl Phases {
    pub const ALL: Phases = Phases {
        request_headers: Phase::Wait,
        request_body: Phase::Wait,
        response_headers: Phase::Wait,
    };
    /// A plugin that only chooses among providers and admits attempts.
    pub const NONE: Phases = Phases {
        request_headers: Phase::Skip,
        request_body: Phase::Skip,
        response_headers: Phase::Skip,
    };
}

/// Whether `p`'s body phase may wait for a request with this body
/// ([`Plugin::request_body_waits`]), for plugins' own tests.
#[cfg(test)]
pub(crate) fn body_waits(p: &dyn Plugin, body: Bytes) -> bool {
    let mut ctx = RequestCtx::default();
    ctx.body = body;
    p.request_body_waits(&ctx)
}

/// A pipeline stage. Every method has a default that does nothing, so a
/// plugin implements only the phases it cares about. Request phases run in
/// route order; response phases in reverse route order (the first plugin
/// of a route sees the request first and the response last).
#[async_trait]
pub trait Plugin: Send + Sync {
    /// What this plugin needs of the pipeline (asked once, when built).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The request and response-header phases this plugin works in: one
    /// that implements [`Plugin::request_headers`], [`Plugin::request_body`]
    /// or a response-header phase must say so here (the default says all).
    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// 1. Request headers, before the body is read. May change the header
    ///    sent upstream, refuse (`Err`), or answer locally.
    async fn request_headers(&self, _req: &mut RequestHeader, _ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        Ok(Flow::Continue)
    }

    /// 2. Request body, complete and parsed once (`ctx.head`). May replace
    ///    the body with [`RequestCtx::set_body`]; the model rewrite happens
    ///    after this phase.
    async fn request_body(&self, _ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        Ok(Flow::Continue)
    }

    /// 2 (as the pipeline asks, per request). Whether this request's body
    ///    phase may wait, for a plugin whose declared `request_body` phase is
    ///    [`Phase::Wait`]: one that waits for some requests only (a large
    ///    prompt counted off the workers) says `false` for the others, which
    ///    then run as [`Phase::Run`], taking no slot of its bulkhead.
    fn request_body_waits(&self, _ctx: &RequestCtx) -> bool {
        true
    }

    /// 3. Upstream choice: filter or reorder `ctx.candidates`. An empty list
    ///    after this phase is the plugin's refusal (it should return `Err`).
    fn upstream_choice(&self, _ctx: &mut RequestCtx) -> Result<(), WeirError> {
        Ok(())
    }

    /// 3b. Before each attempt at a provider (this request's, or a wasm
    ///     filter's `http_call` on this route).
    fn attempt_start(&self, _provider: &Arc<Provider>) -> Admission {
        Admission::Go(None)
    }

    /// 4. Response header, before it is sent to the client: the provider's,
    ///    a local response or weir's own error. Reverse route order.
    fn response_headers(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestCtx) {}

    /// 4 (as the pipeline calls it when the plugin's `response_headers`
    /// phase is [`Phase::Wait`]). May hold the header until it decides
    /// (a wasm filter paused on an `http_call`); the default is
    /// [`Plugin::response_headers`], at once.
    async fn response_headers_held(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        self.response_headers(resp, ctx)
    }

    /// 5. A response body chunk, before it is sent; `end` marks the last.
    ///    Reverse route order; never buffered by the pipeline.
    fn response_body(&self, _chunk: &mut Bytes, _end: bool, _ctx: &mut RequestCtx) {}

    /// 6. The request is over (answered, refused or failed). Route order.
    fn log(&self, _ctx: &mut RequestCtx) {}

    /// A config generation with these providers was built with this plugin
    /// in it (a wasm filter's root context reaches providers by name).
    fn providers_ready(&self, _generation: u64, _providers: &Arc<crate::provider::Providers>) {}

    /// Update this plugin's state gauges (called when `/metrics` is scraped).
    fn refresh_metrics(&self) {}

    /// What `/status` shows of this plugin's own state (a budget's spend per
    /// key), if it keeps any worth showing. Bounded in size and time: it may
    /// ask a shared store, with a short timeout.
    async fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Breaker state of a provider, if this plugin keeps one (for `/status`).
    fn breaker_state(&self, _provider: &str) -> Option<crate::traffic::breaker::State> {
        None
    }
}
