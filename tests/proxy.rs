//! End-to-end: OpenAI routing through the real gateway to a real `weir mock`.

mod support;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};
use support::*;

fn config(mock: &Mock) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{PORT}}"]
  threads: 2
  max_request_body: 8MiB
admin:
  listen: 127.0.0.1:{{ADMIN}}
providers:
  m:
    url: {url}
    api_key: sk-upstream
    models: {{ fast: mock-large, other: mock-small }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    providers: [m]
"#,
        url = mock.url()
    )
}

fn setup(mock_args: &[&str]) -> (Mock, Weir) {
    let mut args = vec!["--models", "mock-large,mock-small"];
    args.extend_from_slice(mock_args);
    let mock = spawn_mock(&args);
    let weir = spawn_weir(&config(&mock), &[]);
    (mock, weir)
}

#[test]
fn chat_completion_rewrites_alias_injects_key_and_keeps_request_id() {
    let (_mock, weir) = setup(&[]);
    let r = post(
        &weir.url("/v1/chat/completions"),
        &chat("fast", false),
        &[
            ("authorization", "Bearer client-secret"),
            ("x-request-id", "req-abc-123"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["model"], "mock-large", "the mock saw the upstream name");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r.header("x-weir-provider"), Some("m"));
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(r.header("x-mock-request-id"), Some("req-abc-123"));
    assert_eq!(
        r.header("x-mock-authorization"),
        Some("Bearer sk-upstream"),
        "client's key is never forwarded"
    );

    // Without a request id, weir makes one and sends it both ways.
    let r = post(&weir.url("/v1/chat/completions"), &chat("other", false), &[]);
    assert_eq!(r.json()["model"], "mock-small");
    let id = r.header("x-request-id").unwrap();
    assert!(id.len() >= 16);
    assert_eq!(r.header("x-mock-request-id"), Some(id));

    let labels = [("route", "chat"), ("provider", "m"), ("status", "200")];
    assert_eq!(metric_settles(&weir, "weir_requests_total", &labels, 2.0), Some(2.0));
    let m = weir.metrics();
    assert!(
        metric(
            &m,
            "weir_llm_tokens_total",
            &[("provider", "m"), ("kind", "completion")]
        )
        .unwrap()
            > 0.0
    );
}

#[test]
fn streaming_passes_chunks_through_unbuffered() {
    // 40 tokens at 20/s: the mock takes about two seconds to finish.
    let (_mock, weir) = setup(&["--ttft", "50ms", "--tokens-per-sec", "20", "--completion-tokens", "40"]);
    let started = Instant::now();
    let resp = ureq::post(&weir.url("/v1/chat/completions"))
        .set("content-type", "application/json")
        .send_bytes(&chat("fast", true))
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut lines = BufReader::new(resp.into_reader()).lines();
    let mut first_chunk_at = None;
    let mut events = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            first_chunk_at.get_or_insert(started.elapsed());
            events.push(data.to_string());
        }
    }
    let total = started.elapsed();
    let first = first_chunk_at.expect("at least one event");
    assert!(
        total >= Duration::from_millis(1500),
        "the mock streams for ~2s, took {total:?}"
    );
    assert!(
        first < total / 2,
        "first chunk at {first:?} of {total:?}: the stream was buffered"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunk: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(chunk["model"], "mock-large");
    assert!(events.len() >= 40);
}

#[test]
fn models_lists_exactly_the_configured_models() {
    let (_mock, weir) = setup(&[]);
    let r = get(&weir.url("/v1/models"), &[]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["fast", "other"]);
}

fn big_body(size: usize) -> Vec<u8> {
    let filler = "lorem ipsum ".repeat(size / 12 + 1);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"fast","temperature":0.5}}"#,
        &filler[..size - 80]
    );
    body.into_bytes()
}

#[test]
fn large_bodies_arrive_byte_for_byte_after_the_rewrite() {
    let (_mock, weir) = setup(&[]);
    for size in [1 << 20, 7 << 20] {
        let body = big_body(size);
        let expected =
            String::from_utf8(body.clone())
                .unwrap()
                .replacen(r#""model":"fast""#, r#""model":"mock-large""#, 1);
        let r = post(&weir.url("/v1/chat/completions"), &body, &[]);
        assert_eq!(r.status, 200, "size {size}: {}", &r.body[..r.body.len().min(300)]);
        assert_eq!(r.header("x-mock-body-len"), Some(expected.len().to_string().as_str()));
        assert_eq!(
            r.header("x-mock-body-sha256"),
            Some(hex::encode(Sha256::digest(expected.as_bytes())).as_str())
        );
    }
}

#[test]
fn body_over_max_request_body_is_refused_with_the_envelope() {
    let (mock, weir) = setup(&[]);
    let r = post(&weir.url("/v1/chat/completions"), &big_body(9 << 20), &[]);
    assert_eq!(r.status, 413);
    assert_eq!(r.error_type(), "invalid_request_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_request_body"));
    assert_eq!(mock.requests(), 0, "nothing went upstream");
    assert_eq!(
        post(&weir.url("/v1/chat/completions"), &chat("fast", false), &[]).status,
        200
    );
}

#[test]
fn bad_requests_get_openai_errors_and_weir_keeps_serving() {
    let (mock, weir) = setup(&[]);
    let url = weir.url("/v1/chat/completions");
    let r = post(&url, b"{not json", &[]);
    assert_eq!((r.status, r.error_type().as_str()), (400, "invalid_request_error"));
    let r = post(&url, br#"{"messages":[]}"#, &[]);
    assert_eq!((r.status, r.error_type().as_str()), (400, "invalid_request_error"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("model"));
    let r = post(&url, &chat("no-such-model", false), &[]);
    assert_eq!((r.status, r.error_type().as_str()), (404, "model_not_found"));
    assert_eq!(r.json()["error"]["param"], "model");
    let r = post(&weir.url("/elsewhere"), b"{}", &[]);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no route"));
    assert_eq!(mock.requests(), 0);
    assert_eq!(post(&url, &chat("fast", false), &[]).status, 200);
}

#[test]
fn provider_errors_pass_through_unchanged() {
    let (_mock, weir) = setup(&["--fail-rate", "1", "--fail-status", "500"]);
    let r = post(&weir.url("/v1/chat/completions"), &chat("fast", false), &[]);
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-weir-provider"), Some("m"));
    assert_eq!(r.error_type(), "server_error", "the provider's own envelope");
}

#[test]
fn unreachable_provider_is_502_upstream_error() {
    let port = free_port();
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"] }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\nproviders:\n  gone: {{ url: \"http://127.0.0.1:{port}/v1\", models: [x] }}\nroutes:\n  - {{ name: r, providers: [gone] }}\n"
    );
    let weir = spawn_weir(&cfg, &[]);
    let r = post(&weir.url("/v1/chat/completions"), &chat("x", false), &[]);
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (502, "upstream_error"),
        "{}",
        r.body
    );
}

#[test]
fn admin_api_reports_health_status_and_redacted_config() {
    let (_mock, weir) = setup(&["--ttft", "1s"]);
    assert_eq!(get(&weir.admin("/healthz"), &[]).status, 200);
    assert_eq!(get(&weir.admin("/readyz"), &[]).status, 200);
    let u = weir.url("/v1/chat/completions");
    let t = std::thread::spawn(move || post(&u, &chat("fast", false), &[]));
    assert!(eventually(Duration::from_secs(5), || {
        get(&weir.admin("/status"), &[]).json()["providers"]["m"]["in_flight"] == 1
    }));
    let s = get(&weir.admin("/status"), &[]).json();
    assert_eq!(s["generation"], 1);
    assert_eq!(s["providers"]["m"]["queued"], 0);
    assert_eq!(
        metric(&weir.metrics(), "weir_upstream_in_flight", &[("provider", "m")]),
        Some(1.0)
    );
    assert_eq!(t.join().unwrap().status, 200);
    let c = get(&weir.admin("/config"), &[]);
    assert!(!c.body.contains("sk-upstream"), "secrets are redacted: {}", c.body);
    assert_eq!(c.json()["providers"]["m"]["api_key"], "<redacted>");
    assert_eq!(get(&weir.admin("/nope"), &[]).status, 404);
}
