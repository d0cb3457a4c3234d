//! Traces: a real weir exports OTLP/HTTP to a receiver in this test, which
//! decodes each export with the published OpenTelemetry protobuf types.
//! One streamed request that fails over from one provider to another and
//! queues for the second is one trace: the request's span with the GenAI
//! attributes, and under it a span per wait in a bulkhead's queue,
//! per phase a plugin works in, per attempt (client spans, whose context each
//! provider gets as `traceparent`) and the stream.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// An OTLP/HTTP receiver: every span of every export, with its resource's
/// `service.name`.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    /// Requests that were not a valid OTLP/HTTP protobuf export.
    bad: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (spans.clone(), bad.clone());
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let protobuf = req
                    .headers()
                    .iter()
                    .any(|h| h.field.equiv("content-type") && h.value.as_str() == "application/x-protobuf");
                let decoded = ExportTraceServiceRequest::decode(&body[..]);
                match (req.url(), protobuf, decoded) {
                    ("/v1/traces", true, Ok(export)) => {
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                                    Value::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    s.lock().unwrap().push((service.clone(), span));
                                }
                            }
                        }
                        let _ = req.respond(tiny_http::Response::from_data(Vec::new()));
                    }
                    (url, protobuf, decoded) => {
                        b.lock()
                            .unwrap()
                            .push(format!("{url} protobuf={protobuf} decoded={:?}", decoded.err()));
                        let _ = req.respond(tiny_http::Response::empty(400));
                    }
                }
            }
        });
        Receiver { port, spans, bad }
    }

    /// The spans of trace `trace_id` (hex) once `n` of them have arrived.
    fn trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let mut got = Vec::new();
        let arrived = eventually(Duration::from_secs(10), || {
            got = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .map(|(_, s)| s.clone())
                .collect();
            got.len() >= n
        });
        assert!(
            arrived,
            "{} spans of trace {trace_id} arrived, {n} expected: {:?}; bad exports: {:?}",
            got.len(),
            got.iter().map(|s| &s.name).collect::<Vec<_>>(),
            self.bad.lock().unwrap()
        );
        got
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text<'a>(s: &'a Span, key: &str) -> &'a str {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("span '{}': {key} is {other:?}", s.name),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("span '{}': {key} is {other:?}", s.name),
    }
}

fn float(s: &Span, key: &str) -> f64 {
    match attr(s, key) {
        Some(Value::DoubleValue(v)) => *v,
        other => panic!("span '{}': {key} is {other:?}", s.name),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn gateway(rx: &Receiver, a: &Mock, b: &Mock, sample: f64) -> Weir {
    let keys = keys_file(&[("alice", "standard", 1, false)]);
    let config = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
tracing: {{ endpoint: "http://127.0.0.1:{otlp}", sample: {sample}, service_name: weir-under-test, interval: 100ms }}
providers:
  a: {{ url: "{a}", models: [m] }}
  b: {{ url: "{b}", models: [m], bulkhead: {{ max_concurrent: 1, queue: 4, queue_timeout: 20s }} }}
plugins:
  auth: {{ type: api_key, keys_file: keys.yaml }}
routes:
  - {{ name: chat, plugins: [auth], providers: [a, b], retry: {{ attempts: 2, per_provider: 1 }} }}
"#,
        otlp = rx.port,
        a = a.url(),
        b = b.url(),
    );
    spawn_weir(&config, &[("keys.yaml", &keys)])
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn a_streamed_request_with_a_failover_is_one_trace() {
    let rx = Receiver::start();
    // `a` fails the requests that ask it to; `b` streams 20 tokens in ~0.5 s.
    let a = spawn_mock(&["--fault-header", "x-fault-a"]);
    let b = spawn_mock(&["--ttft", "50ms", "--tokens-per-sec", "40", "--completion-tokens", "20"]);
    let w = gateway(&rx, &a, &b, 1.0);
    let url = w.url("/v1/chat/completions");
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "trace me"}]
    }))
    .unwrap();

    // Another request takes `b`'s only slot first, so ours queues for it.
    let (u, bd) = (url.clone(), body.clone());
    let blocker = std::thread::spawn(move || {
        post(
            &u,
            &bd,
            &[("authorization", "Bearer sk-alice"), ("x-fault-a", "status:code=503")],
        )
    });
    assert!(
        eventually(Duration::from_secs(10), || b.stats()["in_flight"] == 1),
        "the first request reached b"
    );
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let r = post(
        &url,
        &body,
        &[
            ("authorization", "Bearer sk-alice"),
            ("x-fault-a", "status:code=503"),
            ("traceparent", &traceparent),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("[DONE]"), "a whole stream: {}", r.body);
    assert_eq!(blocker.join().unwrap().status, 200);

    // The provider that answered got the trace, with its attempt as parent.
    let sent = r.header("x-mock-traceparent").expect("b received a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "the client's trace, sampled: {sent}"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "weir's own span is the provider's parent: {sent}"
    );

    // request + plugin (api_key works in no response phase, and in no body
    // phase when no key has `models`) + attempt a + queue provider:b +
    // attempt b + stream
    let spans = rx.trace(TRACE, 6);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no server span: {names:?}"));
    assert_eq!(
        hex(&root.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(root.name, "chat m");
    assert_eq!(text(root, "gen_ai.operation.name"), "chat");
    assert_eq!(text(root, "gen_ai.request.model"), "m");
    assert_eq!(text(root, "gen_ai.response.model"), "m");
    assert_eq!(text(root, "gen_ai.provider.name"), "openai");
    assert_eq!(int(root, "gen_ai.usage.output_tokens"), 20);
    assert!(int(root, "gen_ai.usage.input_tokens") > 0);
    assert_eq!(int(root, "http.response.status_code"), 200);
    assert_eq!(int(root, "weir.attempts"), 2);
    assert_eq!(
        (
            text(root, "weir.route"),
            text(root, "weir.provider"),
            text(root, "weir.key")
        ),
        ("chat", "b", "alice")
    );
    for s in &spans {
        if s.span_id != root.span_id {
            assert_eq!(s.parent_span_id, root.span_id, "'{}' is a child of the request", s.name);
            assert!(
                s.start_time_unix_nano >= root.start_time_unix_nano && s.end_time_unix_nano <= root.end_time_unix_nano,
                "'{}' lies within the request",
                s.name
            );
        }
    }
    let service = rx
        .spans
        .lock()
        .unwrap()
        .iter()
        .find(|(_, s)| s.span_id == root.span_id)
        .unwrap()
        .0
        .clone();
    assert_eq!(service, "weir-under-test");

    // Two attempts: a's 503, then b's answer, whose span b got as parent.
    let attempts = named(&spans, "chat m")
        .into_iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect::<Vec<_>>();
    assert_eq!(attempts.len(), 2, "{names:?}");
    let (first, second) = if text(attempts[0], "weir.provider") == "a" {
        (attempts[0], attempts[1])
    } else {
        (attempts[1], attempts[0])
    };
    assert_eq!(text(first, "weir.provider"), "a");
    assert_eq!(int(first, "http.response.status_code"), 503);
    assert_eq!(first.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(text(second, "weir.provider"), "b");
    assert_eq!(int(second, "http.response.status_code"), 200);
    assert_eq!((int(first, "weir.attempt"), int(second, "weir.attempt")), (1, 2));
    assert_eq!(text(second, "gen_ai.provider.name"), "openai");
    assert_eq!(text(second, "gen_ai.request.model"), "m");
    assert_eq!(text(second, "server.address"), "127.0.0.1");
    assert_eq!(int(second, "server.port"), b.port as i64);
    assert_eq!(hex(&second.span_id), parts[2], "b's traceparent names its attempt");
    assert!(
        first.end_time_unix_nano <= second.start_time_unix_nano,
        "one after the other"
    );

    // Queue waits: b's, a real one; the free slots of auth and a are no span.
    assert_eq!(
        spans.iter().filter(|s| s.name.starts_with("queue ")).count(),
        1,
        "{names:?}"
    );
    let qb = named(&spans, "queue provider:b");
    assert_eq!(qb.len(), 1, "{names:?}");
    let waited = float(qb[0], "weir.queue.waited_ms");
    assert!(waited > 50.0, "b's queue wait: {waited} ms");
    let span_ms = (qb[0].end_time_unix_nano - qb[0].start_time_unix_nano) as f64 / 1e6;
    assert!(
        (span_ms - waited).abs() < 5.0,
        "the span is the wait: {span_ms} vs {waited}"
    );
    assert!(qb[0].end_time_unix_nano <= second.start_time_unix_nano);
    assert_eq!(text(qb[0], "weir.priority"), "standard");

    // Each phase the plugin works in, and none it does not (api_key has no
    // response phase, and no body phase when no key has `models`: each is
    // skipped, span and all).
    let p = named(&spans, "plugin auth request_headers");
    assert_eq!(p.len(), 1, "{names:?}");
    assert_eq!(text(p[0], "weir.plugin"), "auth");
    for phase in ["request_body", "response_headers"] {
        assert!(
            named(&spans, &format!("plugin auth {phase}")).is_empty(),
            "{phase}: {names:?}"
        );
    }

    // The stream, within b's attempt, lasting as the tokens came.
    let stream = named(&spans, "stream");
    assert_eq!(stream.len(), 1, "{names:?}");
    assert!(stream[0].start_time_unix_nano >= second.start_time_unix_nano);
    let stream_ms = (stream[0].end_time_unix_nano - stream[0].start_time_unix_nano) / 1_000_000;
    assert!(stream_ms >= 200, "20 tokens at 40/s after the first: {stream_ms} ms");
}

#[test]
fn sampling_follows_the_client_then_the_ratio() {
    let rx = Receiver::start();
    let a = spawn_mock(&[]);
    let b = spawn_mock(&[]);
    // Ratio 0: only a client's sampled trace is traced.
    let w = gateway(&rx, &a, &b, 0.0);
    let url = w.url("/v1/chat/completions");
    let body = chat("m", false);
    let auth = ("authorization", "Bearer sk-alice");

    // Not sampled by the client: passed on as it came, no spans.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let r = post(&url, &body, &[auth, ("traceparent", unsampled)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-mock-traceparent"), Some(unsampled));
    // No trace from the client, and the ratio is 0: none is started.
    let r = post(&url, &body, &[auth]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-mock-traceparent"), None);

    // Sampled by the client: traced, and continued to the provider.
    let sampled = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let r = post(&url, &body, &[auth, ("traceparent", &sampled)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = r.header("x-mock-traceparent").unwrap();
    assert!(
        sent.starts_with(&format!("00-{TRACE}-")) && sent.ends_with("-01"),
        "{sent}"
    );
    // request + plugin (its header phase) + attempt a
    let spans = rx.trace(TRACE, 3);
    assert!(spans
        .iter()
        .any(|s| s.kind == SpanKind::Server as i32 && s.name == "chat m"));
    // The sampled request's spans came after the others': nothing else was sent.
    let all = rx.spans.lock().unwrap();
    assert!(
        all.iter().all(|(_, s)| hex(&s.trace_id) == TRACE),
        "only the client's sampled trace: {:?}",
        all.iter().map(|(_, s)| (hex(&s.trace_id), &s.name)).collect::<Vec<_>>()
    );
}
