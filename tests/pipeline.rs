//! End-to-end: the plugin pipeline run both ways (src/pipeline/). Request
//! phases in route order, response phases in reverse route order, local
//! responses (cache hits, weir's own errors) through the response phases of
//! the plugins that ran before the one that answered, and attempts at
//! providers that give back everything they hold on every path.

mod support;
use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};
use support::*;

fn module(name: &str) -> String {
    wasm_module(name)
}

fn gateway(providers: &str, plugins: &str, routes: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n{providers}\nplugins:\n{plugins}\nroutes:\n{routes}\n"
    )
}

fn chat_about(model: &str, content: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": content}]
    }))
    .unwrap()
}

/// A sample of `weir_upstream_in_flight` for `provider`.
fn in_flight(weir: &Weir, provider: &str) -> Option<f64> {
    metric(&weir.metrics(), "weir_upstream_in_flight", &[("provider", provider)])
}

/// `/status` as JSON.
fn status(weir: &Weir) -> serde_json::Value {
    get(&weir.admin("/status"), &[]).json()
}

/// Close a raw client connection both ways, then drop it.
fn hang_up(s: TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
}

/// Read from a raw connection until `needle` has arrived (bounded).
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "connection closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no {needle:?} within 10s ({e}): {}", String::from_utf8_lossy(&seen)),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The data of each SSE event of a stream, checked to end with `[DONE]`.
fn sse_events(r: &Resp) -> Vec<String> {
    assert_eq!(r.header("content-type"), Some("text/event-stream"), "{r:?}");
    let events: Vec<String> = r
        .body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE event: {e:?}"))
                .to_string()
        })
        .collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "the stream ends with [DONE]: {}",
        r.body
    );
    events
}

/// The concatenated content deltas of a stream.
fn sse_content(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .flat_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
            v["choices"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c["delta"]["content"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// (a) A client that leaves while its request is the only half-open probe
/// gives the probe back: the next request probes and closes the breaker.
#[test]
fn a_half_open_probe_given_back_when_its_client_leaves() {
    let mock = spawn_mock(&[]);
    let cfg = gateway(
        &format!("  p: {{ url: \"{}\", models: [m] }}", mock.url()),
        "  breaker: { type: circuit_breaker, consecutive_failures: 2, open_for: 1s, half_open_probes: 1, min_requests: 100 }",
        // One send per request: each failure below is one breaker outcome.
        "  - { name: chat, plugins: [breaker], providers: [p], retry: { attempts: 1 } }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let state = || metric(&weir.metrics(), "weir_circuit_state", &[("provider", "p")]);
    let breaker = || status(&weir)["providers"]["p"]["breaker"].clone();

    // Two failures open the breaker; the third request never reaches the mock.
    mock_config(&mock, r#"{"fail_rate": 1, "fail_status": 500}"#);
    for _ in 0..2 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 500, "the provider's own 500 passes through: {}", r.body);
    }
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!((r.status, r.error_type().as_str()), (503, "circuit_open"), "{}", r.body);
    assert_eq!(mock.requests(), 2);
    assert_eq!(state(), Some(2.0));
    assert_eq!(breaker(), "open");

    // Healthy but slow. After open_for, a request takes the only probe and
    // waits for the slow answer...
    mock_config(&mock, r#"{"fail_rate": 0, "ttft_ms": 5000}"#);
    std::thread::sleep(Duration::from_millis(1100));
    let probe_sent = Instant::now();
    let probe = raw_request(weir.port, "POST", "/v1/chat/completions", &chat("m", false));
    assert!(
        eventually(Duration::from_secs(3), || mock.stats()["in_flight"] == 1),
        "the probe reached the provider"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(), Some(1.0), "half-open");
    assert_eq!(in_flight(&weir, "p"), Some(1.0));
    // ...so nothing else gets through while it is out.
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (503, "circuit_open"),
        "the only probe is taken: {}",
        r.body
    );
    assert_eq!(mock.requests(), 3);

    // ...then its client leaves mid-wait. The attempt ends there, long
    // before the provider would have answered (5 s).
    hang_up(probe);
    assert!(
        eventually(Duration::from_secs(2), || in_flight(&weir, "p") == Some(0.0)),
        "the abandoned attempt ended when its client left (in flight: {:?})",
        in_flight(&weir, "p")
    );

    // The probe was given back: the next request is admitted as the probe,
    // succeeds, and closes the breaker.
    mock_config(&mock, r#"{"ttft_ms": 0}"#);
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!(
        r.status, 200,
        "admitted as the probe, not refused as circuit_open: {}",
        r.body
    );
    assert_eq!(r.header("x-weir-provider"), Some("p"));
    assert!(
        probe_sent.elapsed() < Duration::from_millis(4900),
        "the new probe was answered before the abandoned one could have been ({:?})",
        probe_sent.elapsed()
    );
    assert_eq!(
        metric_settles(&weir, "weir_circuit_state", &[("provider", "p")], 0.0),
        Some(0.0)
    );
    assert_eq!(breaker(), "closed");
    for _ in 0..3 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "closed: {}", r.body);
    }
    let m = weir.metrics();
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "p"), ("to", "closed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "p"), ("to", "open")]
        ),
        Some(1.0),
        "it never reopened"
    );
}

/// JSON then a stream, each a miss then a hit, through a route whose chain
/// holds `cache` and `secret` (selected by the `on` headers): every answer
/// redacted, each hit reading like its miss.
fn redacted_miss_then_hit(weir: &Weir, mock: &Mock, on: &[(&str, &str)], chain: &str) {
    let url = weir.url("/v1/chat/completions");
    let before = mock.requests();

    // JSON: miss, then hit.
    let body = chat_about("secret-model", "what is a weir?", false);
    let miss = post(&url, &body, on);
    assert_eq!(
        (miss.status, miss.header("x-weir-cache")),
        (200, Some("miss")),
        "{chain}: {}",
        miss.body
    );
    assert!(
        miss.body.contains("******-model") && !miss.body.contains("secret"),
        "{chain}: miss redacted: {}",
        miss.body
    );
    assert!(
        miss.json()["choices"].is_array(),
        "{chain}: still valid JSON: {}",
        miss.body
    );
    let hit = post(&url, &body, on);
    assert_eq!(
        (hit.status, hit.header("x-weir-cache")),
        (200, Some("hit")),
        "{chain}: {}",
        hit.body
    );
    assert_eq!(hit.body, miss.body, "{chain}: the hit reads exactly like the miss");
    assert!(
        hit.body.contains("******") && !hit.body.contains("secret"),
        "{chain}: hit redacted: {}",
        hit.body
    );
    assert_eq!(
        mock.requests(),
        before + 1,
        "{chain}: the hit never reached the provider"
    );

    // Stream: miss, then hit; every event redacted.
    let body = chat_about("secret-model", "and a stream of it?", true);
    let miss = post(&url, &body, on);
    assert_eq!(
        (miss.status, miss.header("x-weir-cache")),
        (200, Some("miss")),
        "{chain}: {}",
        miss.body
    );
    let miss_events = sse_events(&miss);
    assert!(
        miss.body.contains("******-model") && !miss.body.contains("secret"),
        "{chain}: streamed miss redacted: {}",
        miss.body
    );
    let hit = post(&url, &body, on);
    assert_eq!(
        (hit.status, hit.header("x-weir-cache")),
        (200, Some("hit")),
        "{chain}: {}",
        hit.body
    );
    let hit_events = sse_events(&hit);
    assert!(hit_events.len() > 2, "{chain}: a proper event stream: {}", hit.body);
    for e in hit_events.iter().filter(|e| e.as_str() != "[DONE]") {
        let v: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{chain}: {e}");
        assert_eq!(v["model"], "******-model", "{chain}: each event redacted: {e}");
    }
    assert!(
        !hit.body.contains("secret"),
        "{chain}: streamed hit redacted: {}",
        hit.body
    );
    assert_eq!(
        sse_content(&hit_events),
        sse_content(&miss_events),
        "{chain}: the same answer"
    );
    assert_eq!(
        mock.requests(),
        before + 2,
        "{chain}: the streamed hit never reached the provider"
    );
}

/// (b) A cache hit goes through the response phases of the plugins that ran
/// before the cache answered (here a wasm filter that redacts the response
/// body), so it reads exactly like the miss did, JSON and stream alike.
#[test]
fn a_cache_hit_is_redacted_like_the_miss() {
    let mock = spawn_mock(&[]);
    let cfg = gateway(
        &format!("  m1: {{ url: \"{}\", models: [secret-model] }}", mock.url()),
        &format!(
            "  cache: {{ type: cache, ttl: 10m }}\n  secret: {{ type: wasm, module: \"{}\", config: {{}} }}",
            module("secret-redact")
        ),
        "  - { name: plain, match: { path_prefix: /plain/ }, providers: [m1] }\n  \
         - { name: late, match: { headers: { x-chain: late } }, plugins: [secret, cache], providers: [m1] }\n  \
         - { name: chat, plugins: [cache, secret], providers: [m1] }",
    );
    let weir = spawn_weir(&cfg, &[]);

    // Without the filter, the mock's answer names the model.
    let raw = post(
        &weir.url("/plain/v1/chat/completions"),
        &chat_about("secret-model", "unfiltered", false),
        &[],
    );
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert!(raw.body.contains("secret-model"), "{}", raw.body);

    // The filter after the cache: it redacts the miss before the cache
    // stores it, and the hit again.
    redacted_miss_then_hit(&weir, &mock, &[], "[cache, secret]");
    // The filter before the cache: the cache stores the provider's answer as
    // it came, so a hit is redacted only if it goes through the filter.
    redacted_miss_then_hit(&weir, &mock, &[("x-chain", "late")], "[secret, cache]");
}

/// (c) Two plugins setting the same response header: the one listed first
/// runs last on the response and wins, on a provider's answer, on weir's own
/// local answer and on weir's error after the route matched.
#[test]
fn response_headers_of_two_plugins_apply_in_reverse_route_order() {
    let mock = spawn_mock(&[]);
    let header = |name: &str| {
        format!(
            "  {name}: {{ type: wasm, module: \"{}\", config: {{ header: x-config, value: {name} }} }}",
            module("config-header")
        )
    };
    let cfg = gateway(
        &format!("  m1: {{ url: \"{}\", models: [m] }}", mock.url()),
        &format!("{}\n{}", header("first"), header("second")),
        "  - { name: fwd, match: { headers: { x-order: fwd } }, plugins: [first, second], providers: [m1] }\n  \
         - { name: rev, match: { headers: { x-order: rev } }, plugins: [second, first], providers: [m1] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    for (route, winner) in [("fwd", "first"), ("rev", "second")] {
        let on = [("x-order", route)];
        let r = post(&url, &chat("m", false), &on);
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        assert_eq!(r.header("x-weir-provider"), Some("m1"));
        assert_eq!(r.header("x-config"), Some(winner), "{route}: provider's answer");

        let r = post(&url, &chat("not-served-here", false), &on);
        assert_eq!(
            (r.status, r.error_type().as_str()),
            (404, "model_not_found"),
            "{route}: {}",
            r.body
        );
        assert_eq!(r.header("x-config"), Some(winner), "{route}: weir's error");

        let r = get(&weir.url("/v1/models"), &on);
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        assert_eq!(r.json()["data"][0]["id"], "m");
        assert_eq!(r.header("x-config"), Some(winner), "{route}: weir's local answer");
    }
    assert_eq!(mock.requests(), 2, "only the two served requests reached the provider");
}

/// (d) Completed, refused, failed-over and client-aborted requests (mid-wait
/// and mid-stream) on one route: afterwards no provider counts a request in
/// flight and no bulkhead holds a slot.
#[test]
fn in_flight_returns_to_zero_after_a_mixed_run() {
    // Non-stream answers take 2 s + 10 tokens at 10/s; streams start after 2 s.
    let slow = ["--ttft", "2s", "--tokens-per-sec", "10", "--completion-tokens", "10"];
    let mock_a = spawn_mock(&slow);
    let mock_b = spawn_mock(&slow);
    let cfg = gateway(
        &format!(
            "  A: {{ url: \"{}\", models: [m], bulkhead: {{ max_concurrent: 2, queue: 1, queue_timeout: 200ms }} }}\n  \
             B: {{ url: \"{}\", models: [m], bulkhead: {{ max_concurrent: 4, queue: 1, queue_timeout: 200ms }} }}",
            mock_a.url(),
            mock_b.url()
        ),
        "  {}",
        "  - { name: chat, providers: [A, B], retries: 1 }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let path = "/v1/chat/completions";

    // 1. Two clients leave while A works on their requests (mid-wait).
    let waiting: Vec<TcpStream> = (0..2)
        .map(|_| raw_request(weir.port, "POST", path, &chat("m", false)))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || mock_a.stats()["in_flight"] == 2),
        "both reached A"
    );
    assert_eq!(in_flight(&weir, "A"), Some(2.0));
    waiting.into_iter().for_each(hang_up);
    assert!(
        eventually(Duration::from_secs(1), || in_flight(&weir, "A") == Some(0.0)),
        "A's attempts ended with their clients (in flight: {:?})",
        in_flight(&weir, "A")
    );
    assert_eq!(
        mock_a.stats()["in_flight"],
        2,
        "weir let go before A answered (A still works on both)"
    );

    // 2. Two streams on A, whose clients leave after the first event
    // (mid-stream), while a burst overloads both bulkheads.
    let streams: Vec<std::thread::JoinHandle<String>> = (0..2)
        .map(|_| {
            let port = weir.port;
            std::thread::spawn(move || {
                let mut s = raw_request(port, "POST", path, &chat("m", true));
                let seen = read_until(&mut s, "data: ");
                hang_up(s);
                seen
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || in_flight(&weir, "A") == Some(2.0)),
        "both streams are at A"
    );
    let u = url.clone();
    let burst = concurrent(10, move |_| post(&u, &chat("m", false), &[]));
    for s in streams {
        let seen = s.join().unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("http/1.1 200"), "{seen}");
        assert!(seen.contains("x-weir-provider: a\r\n"), "{seen}");
        assert!(!seen.contains("[done]"), "left mid-stream: {seen}");
    }
    let completed: Vec<&Resp> = burst.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Resp> = burst.iter().filter(|r| r.status == 503).collect();
    assert_eq!(completed.len() + refused.len(), 10, "{burst:?}");
    assert!(!completed.is_empty(), "some completed: {burst:?}");
    assert!(
        completed.iter().all(|r| r.header("x-weir-provider") == Some("B")),
        "A was full, B served: {completed:?}"
    );
    assert!(!refused.is_empty(), "some were refused: {burst:?}");
    for r in &refused {
        assert!(
            matches!(r.error_type().as_str(), "queue_full" | "queue_timeout"),
            "{}",
            r.body
        );
        assert_eq!(r.header("x-weir-queue"), Some("provider:B"), "{}", r.body);
    }

    for p in ["A", "B"] {
        assert_eq!(
            metric_settles(&weir, "weir_upstream_in_flight", &[("provider", p)], 0.0),
            Some(0.0),
            "{p} in flight once the streams' clients left and the burst was answered"
        );
    }

    // 3. A fails half the time, fast: those requests fail over to B.
    mock_config(
        &mock_a,
        r#"{"fail_rate": 0.5, "fail_status": 500, "ttft_ms": 0, "tokens_per_sec": 0}"#,
    );
    mock_config(&mock_b, r#"{"ttft_ms": 0, "tokens_per_sec": 0}"#);
    let a_before = mock_a.requests();
    let mut failed_over = 0;
    for _ in 0..30 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        failed_over += (r.header("x-weir-provider") == Some("B")) as usize;
    }
    assert_eq!(mock_a.requests() - a_before, 30, "every request went to A first");
    assert!(failed_over >= 1, "some failed over from A to B");
    let m = weir.metrics();
    assert_eq!(
        metric(&m, "weir_retries_total", &[("route", "chat"), ("reason", "status_5xx")]),
        Some(failed_over as f64),
        "each answer from B was a retry after A's 500"
    );

    // Every kind of outcome happened; nothing is left in flight.
    let gone = || {
        metric(
            &weir.metrics(),
            "weir_requests_total",
            &[("route", "chat"), ("provider", "A"), ("status", "499")],
        )
    };
    assert!(
        eventually(Duration::from_secs(3), || gone() == Some(4.0)),
        "four clients left (mid-wait and mid-stream): {:?}",
        gone()
    );
    for p in ["A", "B"] {
        assert_eq!(
            metric_settles(&weir, "weir_upstream_in_flight", &[("provider", p)], 0.0),
            Some(0.0),
            "{p} in flight"
        );
    }
    let s = status(&weir);
    for p in ["A", "B"] {
        assert_eq!(s["providers"][p]["in_flight"], 0, "{p}: {}", s["providers"][p]);
        assert_eq!(s["providers"][p]["queued"], 0, "{p}: {}", s["providers"][p]);
    }
    // The slots are really free: A takes two requests at once again.
    mock_config(&mock_a, r#"{"fail_rate": 0}"#);
    let u = url.clone();
    let again = concurrent(2, move |_| post(&u, &chat("m", false), &[]));
    assert!(
        again
            .iter()
            .all(|r| r.status == 200 && r.header("x-weir-provider") == Some("A")),
        "{again:?}"
    );
}
