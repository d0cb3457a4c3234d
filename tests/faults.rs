//! Providers that misbehave the way real ones do — 429 with `Retry-After`,
//! 500s, resets, silence, slow first tokens, streams cut or stalled
//! mid-answer, context-length errors, a primary that flaps — against the
//! real `weir` binary and `weir mock` providers with fault modes.
//!
//! Each test prints one `FIGURE` line (scenario, outcome, attempts per
//! provider, wall time) that `benches/faults.sh` collects into a table.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const MODEL: &str = "m";

/// A provider entry for `mock`.
fn provider(name: &str, mock: &Mock, extra: &str) -> String {
    format!(
        "  {name}:\n    url: {}\n    models: [{MODEL}, big]\n    timeouts: {{ connect: 1s, first_token: 1s, stream_idle: 1s, idle: 2s }}\n{extra}",
        mock.url()
    )
}

/// A gateway over `providers` (name, mock, extra provider YAML), one route
/// with `route_extra`, and `plugins`.
fn gateway(providers: &[(&str, &Mock, &str)], route_extra: &str, plugins: &str) -> Weir {
    let mut conf = String::from(
        "server:\n  listen: [\"127.0.0.1:{PORT}\"]\n  threads: 2\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nproviders:\n",
    );
    for (name, mock, extra) in providers {
        conf += &provider(name, mock, extra);
    }
    if !plugins.is_empty() {
        conf += &format!("plugins:\n{plugins}\n");
    }
    let names: Vec<&str> = providers.iter().map(|p| p.0).collect();
    conf += &format!(
        "routes:\n  - name: chat\n    match: {{ path_prefix: /v1/ }}\n    providers: [{}]\n{route_extra}",
        names.join(", ")
    );
    spawn_weir(&conf, &[])
}

fn figure(scenario: &str, outcome: &str, attempts: &[(&str, &Mock)], wall: Duration) {
    let per: Vec<String> = attempts.iter().map(|(n, m)| format!("{n}={}", m.requests())).collect();
    println!(
        "FIGURE | {scenario} | {outcome} | {} | {:.2}s",
        per.join(" "),
        wall.as_secs_f64()
    );
}

fn retries(w: &Weir, reason: &str) -> f64 {
    metric(
        &w.metrics(),
        "weir_retries_total",
        &[("route", "chat"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

fn recoveries(w: &Weir, outcome: &str) -> f64 {
    metric(&w.metrics(), "weir_stream_recoveries_total", &[("outcome", outcome)]).unwrap_or(0.0)
}

fn chat_body(stream: bool, include_usage: bool) -> Vec<u8> {
    let mut v = serde_json::json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "count for me"}],
    });
    if include_usage {
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    serde_json::to_vec(&v).unwrap()
}

/// The JSON payloads of an SSE body, `[DONE]` as a string.
fn events(body: &str) -> Vec<serde_json::Value> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            if d == "[DONE]" {
                serde_json::Value::String(d.into())
            } else {
                serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d}: {e}"))
            }
        })
        .collect()
}

/// The streamed text of choice 0.
fn content(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/delta/content")?.as_str())
        .collect()
}

fn tokens(n: u32) -> String {
    (0..n)
        .map(|i| if i == 0 { "tok0".to_string() } else { format!(" tok{i}") })
        .collect()
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

// ---- Retry-After, 429, 5xx ----

#[test]
fn retry_after_once_is_waited_out_on_the_same_provider() {
    let a = spawn_mock(&["--fault", "status:code=429,first=1,retry_after=1"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-weir-provider"),
        Some("a"),
        "the same provider, once it allowed"
    );
    assert!(
        wall >= Duration::from_secs(1),
        "never sooner than Retry-After: {wall:?}"
    );
    assert_eq!((a.requests(), b.requests()), (2, 0));
    assert_eq!(retries(&w, "status_429"), 1.0);
    figure(
        "429 + Retry-After: 1, once",
        "200 from a",
        &[("a", &a), ("b", &b)],
        wall,
    );
}

#[test]
fn a_persistent_429_fails_over_and_a_long_retry_after_is_not_waited() {
    let a = spawn_mock(&["--fault", "status:code=429,retry_after=1"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    assert_eq!(
        (a.requests(), b.requests()),
        (2, 1),
        "per_provider: 2 sends to a at most"
    );
    figure(
        "429 + Retry-After: 1, always",
        "200 from b",
        &[("a", &a), ("b", &b)],
        wall,
    );

    // A Retry-After past max_retry_after (5s): a is out at once, b answers.
    let a = spawn_mock(&["--fault", "status:code=429,retry_after=30"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    assert!(wall < Duration::from_secs(5), "did not wait for a: {wall:?}");
    assert_eq!((a.requests(), b.requests()), (1, 1));
    figure("429 + Retry-After: 30", "200 from b", &[("a", &a), ("b", &b)], wall);

    // Alone, the provider's 429 and its Retry-After go back to the client.
    let a = spawn_mock(&["--fault", "status:code=429,retry_after=30"]);
    let w = gateway(&[("a", &a, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(a.requests(), 1);
    figure(
        "429 + Retry-After: 30, one provider",
        "429, Retry-After: 30",
        &[("a", &a)],
        wall,
    );
}

#[test]
fn a_500_once_is_retried_on_the_same_provider() {
    let a = spawn_mock(&["--fault", "status:code=500,first=1"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("a"));
    assert_eq!((a.requests(), b.requests()), (2, 0));
    assert_eq!(retries(&w, "status_5xx"), 1.0);
    figure("500 once", "200 from a", &[("a", &a), ("b", &b)], wall);

    // A route that asks for no retries gets the 500 as it is.
    let a = spawn_mock(&["--fault", "status:code=500,first=1"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "    retry: { attempts: 1 }\n", "");
    let r = post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]);
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(a.requests(), 1);
}

// ---- no answer at all ----

#[test]
fn reset_and_silence_fail_over_within_one_timeout() {
    let a = spawn_mock(&["--fault", "reset"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    assert!(
        a.requests() >= 1 && a.requests() <= 2,
        "reset: a at most per_provider times"
    );
    assert!(retries(&w, "reset") >= 1.0);
    figure("reset before headers", "200 from b", &[("a", &a), ("b", &b)], wall);

    let a = spawn_mock(&["--fault", "hang"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    assert!(wall >= Duration::from_secs(1), "first_token: 1s was waited: {wall:?}");
    assert!(wall < Duration::from_secs(4), "one timeout, then b: {wall:?}");
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "a silent provider is not tried again first"
    );
    assert_eq!(retries(&w, "timeout"), 1.0);
    figure("no answer at all", "200 from b", &[("a", &a), ("b", &b)], wall);
}

#[test]
fn a_slow_first_token_fails_over_and_the_slow_stream_is_cancelled() {
    let a = spawn_mock(&["--fault", "slow_first_token:delay=10s"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(true, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    let ev = events(&r.body);
    assert_eq!(content(&ev), tokens(16));
    // At least the first-token deadline, and well short of a's 10 s: weir
    // gave up on a rather than waiting it out (the margin is for loaded
    // runners; 5 s was once missed by 0.17 s with both cores busy).
    assert!(
        wall >= Duration::from_secs(1) && wall < Duration::from_secs(8),
        "{wall:?}"
    );
    assert!(
        eventually(Duration::from_secs(3), || a.stats()["in_flight"] == 0),
        "the slow stream was cancelled: {}",
        a.stats()
    );
    figure(
        "slow first token (10s > first_token 1s)",
        "stream from b",
        &[("a", &a), ("b", &b)],
        wall,
    );
}

#[test]
fn a_non_stream_answer_cut_mid_body_is_retried_whole() {
    let a = spawn_mock(&["--fault", "cut:after=5"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("b"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], tokens(16));
    assert_eq!((a.requests(), b.requests()), (2, 1));
    figure("non-stream cut mid-body", "200 from b", &[("a", &a), ("b", &b)], wall);
}

// ---- streams that die mid-answer ----

#[test]
fn a_cut_stream_is_continued_by_a_prefill_fallback() {
    let a = spawn_mock(&["--completion-tokens", "60", "--fault", "cut:after=40"]);
    let b = spawn_mock(&["--completion-tokens", "60"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(true, true), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-weir-provider"),
        Some("a"),
        "the header went out with a's first token"
    );
    let ev = events(&r.body);
    assert_eq!(content(&ev), tokens(60), "a's 40 tokens, then b's continuation");
    let done = ev.iter().filter(|e| *e == "[DONE]").count();
    assert_eq!(done, 1, "one [DONE]");
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let ids: std::collections::HashSet<_> = ev.iter().filter_map(|e| e.get("id")?.as_str()).collect();
    assert_eq!(ids.len(), 1, "one id: {ids:?}");
    let roles = ev
        .iter()
        .filter(|e| e.pointer("/choices/0/delta/role").is_some())
        .count();
    assert_eq!(roles, 1, "no second role chunk");
    let fin = ev
        .iter()
        .find(|e| e.pointer("/choices/0/finish_reason").is_some_and(|f| !f.is_null()))
        .unwrap();
    assert_eq!(fin["x_weir_provider"], "a,b");
    let usage = ev.iter().find_map(|e| e.get("usage").filter(|u| !u.is_null())).unwrap();
    assert_eq!(usage["completion_tokens"], 60, "40 streamed by a + 20 by b: {usage}");
    assert_eq!(b.stats()["prefills"], 1);
    assert_eq!(recoveries(&w, "continued"), 1.0);
    figure(
        "stream cut after 40 of 60",
        "continued on b, one stream",
        &[("a", &a), ("b", &b)],
        wall,
    );
}

/// Run the official `openai` SDK on a stream through weir; its stdout.
fn openai_stream(w: &Weir) -> String {
    let python = repo().join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./dev test, which installs the official SDKs (tests/sdk/requirements.txt)",
        python.display()
    );
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0)
try:
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "count for me"}], stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    print("RETURNED", len(text.split()))
except openai.APIError as e:
    print("RAISED", type(e).__name__, e.message)
"#;
    let out = Command::new(python)
        .args(["-c", script, &w.url("/v1")])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn without_a_fallback_the_openai_sdk_raises_instead_of_returning_a_truncated_answer() {
    let a = spawn_mock(&["--completion-tokens", "60", "--fault", "cut:after=40"]);
    let b = spawn_mock(&["--completion-tokens", "60"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (out, wall) = time(|| openai_stream(&w));
    assert!(out.starts_with("RAISED APIError"), "{out}");
    assert!(
        out.contains("provider 'a'") && out.contains("40 content chunks"),
        "{out}"
    );
    assert_eq!(b.requests(), 0, "b does not continue streams");
    assert_eq!(recoveries(&w, "no_fallback"), 1.0);
    figure(
        "stream cut, no prefill fallback (openai SDK)",
        "SDK raises APIError",
        &[("a", &a), ("b", &b)],
        wall,
    );

    // The raw stream: the error event last, no [DONE].
    let r = post(&w.url("/v1/chat/completions"), &chat_body(true, false), &[]);
    let ev = events(&r.body);
    assert_eq!(content(&ev), tokens(40));
    assert!(!ev.iter().any(|e| e == "[DONE]"));
    let last = ev.last().unwrap();
    assert_eq!(last["error"]["type"], "upstream_error");
    assert_eq!(last["error"]["code"], "stream_interrupted");

    // With the fallback the SDK returns all 60 words.
    let a = spawn_mock(&["--completion-tokens", "60", "--fault", "cut:after=40"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
    let out = openai_stream(&w);
    assert_eq!(out.trim(), "RETURNED 60");
}

#[test]
fn a_stalled_stream_is_continued_after_stream_idle_and_other_deaths_too() {
    let a = spawn_mock(&["--completion-tokens", "30", "--fault", "stall:after=10"]);
    let b = spawn_mock(&["--completion-tokens", "30"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(true, false), &[]));
    let ev = events(&r.body);
    assert_eq!(content(&ev), tokens(30));
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert!(wall >= Duration::from_secs(1), "stream_idle: 1s was waited: {wall:?}");
    figure(
        "stream stalls after 10 of 30",
        "continued on b after stream_idle",
        &[("a", &a), ("b", &b)],
        wall,
    );

    for (fault, what) in [
        ("no_done:after=10", "ends without [DONE]"),
        ("malformed:after=10", "malformed chunk"),
    ] {
        let a = spawn_mock(&["--completion-tokens", "30", "--fault", fault]);
        let b = spawn_mock(&["--completion-tokens", "30"]);
        let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
        let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(true, false), &[]));
        let ev = events(&r.body);
        assert_eq!(content(&ev), tokens(30), "{fault}: {}", r.body);
        assert_eq!(ev.last().unwrap(), "[DONE]", "{fault}");
        figure(
            &format!("stream {what} after 10 of 30"),
            "continued on b",
            &[("a", &a), ("b", &b)],
            wall,
        );
    }
}

#[test]
fn a_fallback_that_rejects_the_prefill_does_not_become_the_clients_error() {
    let a = spawn_mock(&["--completion-tokens", "60", "--fault", "cut:after=40"]);
    let b = spawn_mock(&["--completion-tokens", "60", "--fault", "reject_prefill"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(true, false), &[]));
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(content(&ev), tokens(40));
    let err = &ev.last().unwrap()["error"];
    let message = err["message"].as_str().unwrap();
    assert!(message.starts_with("provider 'a'"), "the original cut first: {message}");
    assert_eq!(err["type"], "upstream_error", "not b's invalid_request_error");
    assert_eq!(b.requests(), 1);
    assert_eq!(recoveries(&w, "failed"), 1.0);
    figure(
        "stream cut, fallback rejects prefill",
        "error event naming a's cut",
        &[("a", &a), ("b", &b)],
        wall,
    );
}

#[test]
fn tool_call_streams_are_not_continued() {
    // The mock streams a tool call when the request forces one.
    let a = spawn_mock(&["--completion-tokens", "60", "--fault", "cut:after=40"]);
    let b = spawn_mock(&["--completion-tokens", "60"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "    continuation: prefill\n")], "", "");
    let body = serde_json::json!({
        "model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": "call it"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    });
    let r = post(&w.url("/v1/chat/completions"), &serde_json::to_vec(&body).unwrap(), &[]);
    let ev = events(&r.body);
    if !ev.iter().any(|e| e.pointer("/choices/0/delta/tool_calls").is_some()) {
        panic!("the mock did not stream a tool call: {}", r.body);
    }
    assert_eq!(ev.last().unwrap()["error"]["code"], "stream_interrupted");
    assert_eq!(b.requests(), 0);
    assert_eq!(recoveries(&w, "not_continuable"), 1.0);
}

// ---- errors not to be retried blindly ----

#[test]
fn context_length_goes_to_the_larger_model_once() {
    let a = spawn_mock(&["--fault", "m=context_length"]);
    let b = spawn_mock(&[]);
    let w = gateway(
        &[("a", &a, ""), ("b", &b, "")],
        "    context_fallbacks: { m: big }\n",
        "",
    );
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("a"), "a serves big too");
    assert_eq!(r.json()["model"], "big");
    assert_eq!(a.requests(), 2);
    assert_eq!(b.requests(), 0, "m was not sent anywhere else");
    assert_eq!(retries(&w, "context_length"), 1.0);
    figure(
        "400 context_length_exceeded, fallback model",
        "200 from big",
        &[("a", &a), ("b", &b)],
        wall,
    );

    let a = spawn_mock(&["--fault", "context_length"]);
    let b = spawn_mock(&[]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!((a.requests(), b.requests()), (1, 0), "returned once, unretried");
    figure(
        "400 context_length_exceeded, no fallback",
        "400 once",
        &[("a", &a), ("b", &b)],
        wall,
    );

    let a = spawn_mock(&["--fault", "content_filter"]);
    let w = gateway(&[("a", &a, ""), ("b", &b, "")], "", "");
    let (r, wall) = time(|| post(&w.url("/v1/chat/completions"), &chat_body(false, false), &[]));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "content_filter");
    assert_eq!((a.requests(), b.requests()), (1, 0), "a refusal is not routed around");
    figure("400 content_filter", "400 once", &[("a", &a), ("b", &b)], wall);
}

// ---- a primary that flaps ----

#[test]
fn a_flapping_primary_is_covered_by_the_fallback_and_serves_again_soon_after() {
    let down = Duration::from_secs(15);
    let a = spawn_mock(&["--fault", "flap:down=15s"]);
    let a_started = Instant::now();
    let b = spawn_mock(&[]);
    let w = gateway(
        &[("a", &a, "    health_check: { interval: 500ms }\n"), ("b", &b, "")],
        "    plugins: [breaker]\n",
        "  breaker: { type: circuit_breaker, consecutive_failures: 2, open_for: 2s }",
    );
    let url = w.url("/v1/chat/completions");
    let mut back_at = None;
    while a_started.elapsed() < down + Duration::from_secs(6) {
        let r = post(&url, &chat_body(false, false), &[]);
        assert_eq!(r.status, 200, "at {:?}: {}", a_started.elapsed(), r.body);
        if r.header("x-weir-provider") == Some("a") && a_started.elapsed() > down && back_at.is_none() {
            back_at = Some(a_started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_at = back_at.expect("a served again after it recovered");
    assert!(back_at < down + Duration::from_secs(5), "back at {back_at:?}");
    let m = w.metrics();
    assert!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "a"), ("to", "open")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "a"), ("to", "closed")]
        ),
        Some(1.0)
    );
    figure(
        "primary down 15s, breaker + health check",
        &format!(
            "all 200; a serves again {:.1}s after recovering",
            (back_at - down).as_secs_f64()
        ),
        &[("a", &a), ("b", &b)],
        a_started.elapsed(),
    );
}
