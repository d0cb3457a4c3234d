//! OpenTelemetry traces: one span per request, with a child span for each
//! wait in a bulkhead's queue, each plugin phase, each attempt at
//! a provider and the stream to the client; W3C `traceparent` read from the
//! client and sent to providers; head sampling; OTLP/HTTP export
//! (`trace::export`).
//!
//! weir's request is a set of Pingora callbacks sharing one context, not a
//! single call tree, so spans are made with the OpenTelemetry API directly,
//! with explicit start and end times (a queue wait is known once the slot
//! is granted), rather than through `tracing`'s entered spans.
//!
//! Off (no `tracing:` section) costs one `Option` check per phase. On, a
//! request that is not sampled costs the sampling decision and nothing
//! after: it carries no `RequestTrace`.

pub mod export;

use crate::config::TracingConf;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
pub use opentelemetry_sdk::trace::Span;

/// Traces as configured: the SDK's provider (its batch exporter thread)
/// and the tracer every request's spans come from. Kept across reloads
/// while its settings are unchanged; a replaced one is shut down (its
/// last spans sent) on a thread of its own.
pub struct Tracing {
    conf: TracingConf,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.conf.endpoint)
            .finish()
    }
}

impl Tracing {
    /// Whether this was built from `c` (a reload keeps it).
    pub fn is_for(&self, c: &TracingConf) -> bool {
        self.conf == *c
    }

    /// Send what has finished now, waiting at most the export timeout
    /// (weir calls it as it exits).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            log::warn!("tracing: could not send the last spans: {e}");
        }
    }

    /// Start a request's trace, the client's `traceparent` as its parent.
    /// `None` when the sampler leaves this request out.
    pub fn begin(self: &Arc<Self>, req: &RequestHeader, started: Instant) -> Option<Box<RequestTrace>> {
        let parent = TraceContextPropagator::new().extract(&Headers(req));
        let now = SystemTime::now();
        let t0 = now.checked_sub(started.elapsed()).unwrap_or(now);
        // Named and attributed once sampled: a request left out allocates nothing.
        let mut span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .with_start_time(t0)
            .start_with_context(&self.tracer, &parent);
        if !span.span_context().is_sampled() {
            return None;
        }
        span.update_name(format!("{} {}", req.method, req.uri.path()));
        span.set_attributes([
            KeyValue::new("http.request.method", req.method.as_str().to_string()),
            KeyValue::new("url.path", req.uri.path().to_string()),
        ]);
        Some(Box::new(RequestTrace {
            tracing: self.clone(),
            root: Context::new().with_span(span),
            started,
            t0,
        }))
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Shutting down waits for the last export: never on an async worker.
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("weir-trace-stop".into())
            .spawn(move || {
                let _ = provider.shutdown();
            });
    }
}

/// A sampled request's trace: its root span (in a `Context`, the parent of
/// every other span of the request).
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    root: Context,
    /// The request's start by the monotonic clock and by the wall clock.
    started: Instant,
    t0: SystemTime,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &self.root.span().span_context().trace_id())
            .finish()
    }
}

/// Attributes, built only for a sampled request.
pub type Attrs = Vec<KeyValue>;

/// One attribute.
pub fn kv(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(key, value)
}

impl RequestTrace {
    /// The wall-clock time of a monotonic instant of this request.
    fn at(&self, i: Instant) -> SystemTime {
        match i.checked_duration_since(self.started) {
            Some(d) => self.t0 + d,
            None => self.t0 - self.started.duration_since(i),
        }
    }

    /// A child span of the request, started at `start` and left open.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind, start: Instant, attrs: Attrs) -> Span {
        let tracer = &self.tracing.tracer;
        tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(self.at(start))
            .with_attributes(attrs)
            .start_with_context(tracer, &self.root)
    }

    /// A child span from `start` to now, marked failed with `error` if given.
    pub fn done(&self, name: impl Into<Cow<'static, str>>, start: Instant, attrs: Attrs, error: Option<&str>) {
        let mut span = self.child(name, SpanKind::Internal, start, attrs);
        if let Some(e) = error {
            fail(&mut span, e);
        }
        span.end();
    }

    /// Rename the request's span (once its route is known).
    pub fn rename(&self, name: String) {
        self.root.span().update_name(name);
    }

    /// Set attributes of the request's span.
    pub fn set(&self, attrs: Attrs) {
        self.root.span().set_attributes(attrs);
    }

    /// End the request's span now, failed with `error` if given.
    pub fn end(self, error: Option<&str>) {
        let span = self.root.span();
        if let Some(e) = error {
            span.set_attribute(kv("error.type", e.to_string()));
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }
}

/// Mark a span failed: `error.type` and an error status.
pub fn fail(span: &mut Span, error: &str) {
    span.set_attribute(kv("error.type", error.to_string()));
    span.set_status(Status::error(error.to_string()));
}

/// Put `span`'s W3C `traceparent` (and the trace's `tracestate`) on a
/// request to a provider, replacing the client's.
pub fn inject(span: &Span, req: &mut RequestHeader) {
    let cx = Context::new().with_remote_span_context(span.span_context().clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(req));
}

/// An attempt's span learns the provider's status (4xx and 5xx fail it).
pub fn answered(span: &mut Span, status: u16) {
    span.set_attribute(kv("http.response.status_code", status as i64));
    if status >= 400 {
        fail(span, &status.to_string());
    }
}

struct Headers<'a>(&'a RequestHeader);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut RequestHeader);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let _ = self.0.insert_header(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};
    use std::time::Duration;

    fn tracing(sample: f64) -> (Arc<Tracing>, InMemorySpanExporter) {
        let mem = InMemorySpanExporter::default();
        let conf = TracingConf {
            endpoint: "http://127.0.0.1:4318".into(),
            sample,
            service_name: "weir".into(),
            headers: Default::default(),
            timeout: crate::config::Dur(Duration::from_secs(1)),
            interval: crate::config::Dur(Duration::from_secs(1)),
            queue: 16,
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(mem.clone()))
            .with_sampler(export::sampler(sample))
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "weir");
        (Arc::new(Tracing { conf, provider, tracer }), mem)
    }

    fn request(traceparent: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        if let Some(tp) = traceparent {
            r.insert_header("traceparent", tp).unwrap();
        }
        r
    }

    #[test]
    fn a_clients_trace_is_continued_and_passed_on() {
        let (t, mem) = tracing(0.0);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        // Sampled by the client: traced although the ratio is 0.
        let rt = t
            .begin(&request(Some(tp)), Instant::now())
            .expect("the client's decision is followed");
        let mut attempt = rt.child("chat m", SpanKind::Client, Instant::now(), vec![]);
        let mut up = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        up.insert_header("traceparent", tp).unwrap();
        inject(&attempt, &mut up);
        let sent = up.headers.get("traceparent").unwrap().to_str().unwrap().to_string();
        let attempt_id = attempt.span_context().span_id();
        assert_eq!(sent, format!("00-0af7651916cd43dd8448eb211c80319c-{attempt_id}-01"));
        attempt.end();
        rt.end(None);
        let spans = mem.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        let root = spans.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
        assert_eq!(root.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(spans[0].parent_span_id, root.span_context.span_id());
        // Not sampled by the client, and the ratio is 0: no trace.
        let off = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert!(t.begin(&request(Some(off)), Instant::now()).is_none());
        assert!(t.begin(&request(None), Instant::now()).is_none());
    }

    #[test]
    fn the_ratio_samples_new_traces() {
        let (all, _) = tracing(1.0);
        assert!(all.begin(&request(None), Instant::now()).is_some());
        let (some, _) = tracing(0.25);
        let n = (0..4000)
            .filter(|_| some.begin(&request(None), Instant::now()).is_some())
            .count();
        assert!((700..1300).contains(&n), "{n} of 4000 at 25%");
    }

    /// How long ago `d` was, as an instant.
    fn since(d: Duration) -> Instant {
        let now = Instant::now();
        now.checked_sub(d).unwrap_or(now)
    }

    #[test]
    fn child_spans_keep_their_times() {
        let (t, mem) = tracing(1.0);
        let started = Instant::now() - Duration::from_millis(50);
        let rt = t.begin(&request(None), started).unwrap();
        rt.done(
            "queue p",
            since(Duration::from_millis(30)),
            vec![kv("weir.bulkhead", "p")],
            Some("queue_full"),
        );
        rt.end(None);
        let spans = mem.get_finished_spans().unwrap();
        let q = spans.iter().find(|s| s.name == "queue p").unwrap();
        let root = spans.iter().find(|s| s.name != "queue p").unwrap();
        let waited = q.end_time.duration_since(q.start_time).unwrap();
        assert!(waited >= Duration::from_millis(29), "{waited:?}");
        assert!(q.start_time >= root.start_time);
        assert!(root.end_time.duration_since(root.start_time).unwrap() >= Duration::from_millis(49));
        assert!(matches!(q.status, Status::Error { .. }));
    }
}
