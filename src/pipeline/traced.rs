//! What a request's trace records, read from the pipeline's own state: the
//! route and model, each wait in a bulkhead's queue, each plugin phase, each
//! attempt (with the `traceparent` the provider gets), the stream, and at
//! the end the answer (GenAI semantic conventions: `gen_ai.*`).
//!
//! Every function here is a no-op for a request that is not traced.

use super::context::{RequestCtx, Wire};
use crate::bulkhead::Bulkhead;
use crate::config::ProviderKind;
use crate::error::WeirError;
use crate::provider::Provider;
use crate::trace::{self, kv, Span, SpanKind};
use pingora_http::RequestHeader;
use std::time::{Duration, Instant};

/// The GenAI operation a request path names.
fn operation(path: &str) -> &'static str {
    if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        "text_completion"
    } else {
        "chat"
    }
}

/// `gen_ai.provider.name` of a provider: the API it speaks.
fn provider_system(p: &Provider) -> &'static str {
    match p.conf.kind {
        ProviderKind::Anthropic => "anthropic",
        _ => "openai",
    }
}

impl RequestCtx {
    /// When a traced phase starts (`None`: not traced, nothing measured).
    pub(super) fn trace_clock(&self) -> Option<Instant> {
        self.trace.as_ref().map(|_| Instant::now())
    }

    /// The route matched and the body read: name the request's span and say
    /// what was asked.
    pub(super) fn trace_request(&self, path: &str) {
        let Some(t) = &self.trace else { return };
        let route = self.route_name().to_string();
        let op = operation(path);
        let mut attrs = vec![
            kv("weir.route", route.clone()),
            kv("weir.request_id", self.request_id.clone()),
        ];
        if let Some(h) = &self.head {
            t.rename(format!("{op} {}", h.model));
            attrs.push(kv("gen_ai.operation.name", op));
            attrs.push(kv("gen_ai.request.model", h.model.clone()));
            attrs.push(kv("weir.stream", h.stream));
        } else {
            t.rename(route);
        }
        if let Some(i) = &self.identity {
            attrs.push(kv("weir.key", i.name.to_string()));
        }
        if self.wire == Wire::Anthropic {
            attrs.push(kv("weir.client_api", "anthropic"));
        }
        t.set(attrs);
    }

    /// A bulkhead admission that queued (a free slot is no span): the wait
    /// from `start`, refused with `refused`.
    pub(super) fn trace_queue(
        &self,
        b: &Bulkhead,
        start: Option<Instant>,
        waited: Duration,
        refused: Option<&WeirError>,
    ) {
        let (Some(t), Some(start)) = (&self.trace, start) else {
            return;
        };
        if waited.is_zero() && refused.is_none() {
            return;
        }
        let attrs = vec![
            kv("weir.bulkhead", b.name().to_string()),
            kv("weir.priority", self.ticket.class.to_string()),
            kv("weir.queue.waited_ms", waited.as_secs_f64() * 1e3),
        ];
        t.done(
            format!("queue {}", b.name()),
            start,
            attrs,
            refused.map(|e| e.kind.code()),
        );
    }

    /// Plugin `i` of the route ran `phase` from `start`.
    pub(super) fn trace_plugin(
        &self,
        name: &str,
        phase: &'static str,
        start: Option<Instant>,
        error: Option<&WeirError>,
    ) {
        let (Some(t), Some(start)) = (&self.trace, start) else {
            return;
        };
        let attrs = vec![kv("weir.plugin", name.to_string()), kv("weir.phase", phase)];
        t.done(
            format!("plugin {name} {phase}"),
            start,
            attrs,
            error.map(|e| e.kind.code()),
        );
    }

    /// An attempt at `p` (the latest in `tried`) starts: its span (a client
    /// span, named and attributed as a GenAI inference call), whose context
    /// the provider gets as its `traceparent`.
    pub(super) fn trace_attempt(&self, p: &Provider, req: &mut RequestHeader) -> Option<Span> {
        let t = self.trace.as_ref()?;
        let (model, n) = (self.served_model().unwrap_or_default(), self.tried.len());
        let op = operation(req.uri.path());
        let up = p.upstream_model(model).unwrap_or(model).to_string();
        let attrs = vec![
            kv("gen_ai.operation.name", op),
            kv("gen_ai.provider.name", provider_system(p)),
            kv("gen_ai.request.model", up.clone()),
            kv("server.address", p.endpoint.host.clone()),
            kv("server.port", p.endpoint.port as i64),
            kv("weir.provider", p.name.clone()),
            kv("weir.attempt", n as i64),
        ];
        let span = t.child(format!("{op} {up}"), SpanKind::Client, Instant::now(), attrs);
        trace::inject(&span, req);
        Some(span)
    }

    /// The answer's body starts towards the client.
    pub(super) fn trace_stream(&self, sse: bool) -> Option<Span> {
        let t = self.trace.as_ref()?;
        let name = if sse { "stream" } else { "response body" };
        Some(t.child(name, SpanKind::Internal, Instant::now(), vec![kv("weir.sse", sse)]))
    }

    /// The request is over: what was answered, by whom, and what it used.
    pub fn finish_trace(&mut self) {
        let Some(t) = self.trace.take() else { return };
        let mut attrs = vec![kv("http.response.status_code", self.status as i64)];
        if let Some(p) = &self.provider {
            attrs.push(kv("gen_ai.provider.name", provider_system(p)));
            attrs.push(kv("weir.provider", p.name.clone()));
        }
        if let Some(m) = self.served_model() {
            attrs.push(kv("gen_ai.response.model", m.to_string()));
        }
        if let Some(u) = self.usage {
            attrs.push(kv("gen_ai.usage.input_tokens", u.prompt_tokens as i64));
            attrs.push(kv("gen_ai.usage.output_tokens", u.completion_tokens as i64));
        }
        if let Some(c) = self.cache {
            attrs.push(kv("weir.cache", c));
        }
        attrs.push(kv("weir.attempts", self.tried.len() as i64));
        if let Some(ttfb) = self.upstream_ttfb {
            attrs.push(kv("weir.upstream_ttfb_ms", ttfb.as_secs_f64() * 1e3));
        }
        t.set(attrs);
        let error = self.error.as_ref().map(|e| e.kind.code()).or(match self.status {
            499 => Some("client_gone"),
            s if s >= 500 => Some("upstream_error"),
            _ => None,
        });
        t.end(error);
    }
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn operations_by_path() {
        assert_eq!(operation("/v1/chat/completions"), "chat");
        assert_eq!(operation("/v1/completions"), "text_completion");
        assert_eq!(operation("/openai/v1/embeddings"), "embeddings");
        assert_eq!(operation("/v1/responses"), "chat");
    }
}
