//! End-to-end: rate limits, circuit breakers, least-connection balancing,
//! health checks and failover, with real mocks and a real redis-server.

mod support;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

fn gateway(providers: &str, plugins: &str, route: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\nproviders:\n{providers}\nplugins:\n{plugins}\nroutes:\n{route}\n"
    )
}

fn provider(name: &str, mock: &Mock, extra: &str) -> String {
    format!("  {name}: {{ url: \"{}\", models: [m]{extra} }}", mock.url())
}

/// Requests per provider from `clients` threads looping for `secs`.
fn load(weir: &Weir, clients: usize, secs: u64) -> HashMap<String, usize> {
    let url = weir.url("/v1/chat/completions");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut seen: HashMap<String, usize> = HashMap::new();
                while Instant::now() < deadline {
                    let r = post(&url, &chat("m", false), &[]);
                    assert_eq!(r.status, 200, "{}", r.body);
                    *seen
                        .entry(r.header("x-weir-provider").unwrap().to_string())
                        .or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[test]
fn least_connections_prefers_the_fast_provider_and_splits_equals_evenly() {
    let slow = spawn_mock(&["--ttft", "200ms"]);
    let fast = spawn_mock(&["--ttft", "20ms"]);
    let cfg = gateway(
        &format!("{}\n{}", provider("slow", &slow, ""), provider("fast", &fast, "")),
        "  balance: { type: least_connections }",
        "  - { name: chat, plugins: [balance], providers: [slow, fast] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let counts = load(&weir, 20, 3);
    let (s, f) = (
        counts.get("slow").copied().unwrap_or(0),
        counts.get("fast").copied().unwrap_or(0),
    );
    assert!(f >= 3 * s, "fast {f} vs slow {s}");

    let a = spawn_mock(&["--ttft", "30ms"]);
    let b = spawn_mock(&["--ttft", "30ms"]);
    let cfg = gateway(
        &format!("{}\n{}", provider("a", &a, ""), provider("b", &b, "")),
        "  balance: { type: least_connections }",
        "  - { name: chat, plugins: [balance], providers: [a, b] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let counts = load(&weir, 10, 2);
    let (x, y) = (counts["a"] as f64, counts["b"] as f64);
    assert!((x - y).abs() / x.max(y) <= 0.2, "a {x} vs b {y}");
}

#[test]
fn breaker_opens_retries_hide_the_failure_then_probes_close_it() {
    let bad = spawn_mock(&["--fail-rate", "1", "--fail-status", "500"]);
    let good = spawn_mock(&[]);
    let cfg = gateway(
        &format!("{}\n{}", provider("bad", &bad, ""), provider("good", &good, "")),
        "  breaker: { type: circuit_breaker, consecutive_failures: 3, open_for: 1s, half_open_probes: 2 }",
        "  - { name: chat, plugins: [breaker], providers: [bad, good], retries: 1 }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    for _ in 0..10 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "retries hide the failing provider: {}", r.body);
        assert_eq!(r.header("x-weir-provider"), Some("good"));
    }
    assert_eq!(
        bad.requests(),
        3,
        "the breaker opened at the threshold and kept traffic away"
    );
    let m = weir.metrics();
    assert_eq!(metric(&m, "weir_circuit_state", &[("provider", "bad")]), Some(2.0));
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "bad"), ("to", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(&weir.admin("/status"), &[]).json()["providers"]["bad"]["breaker"],
        "open"
    );

    // The provider recovers; after open_for, probes go out and close the breaker.
    mock_config(&bad, r#"{"fail_rate": 0}"#);
    std::thread::sleep(Duration::from_millis(1100));
    let mut served_by_bad = 0;
    for _ in 0..6 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200);
        served_by_bad += (r.header("x-weir-provider") == Some("bad")) as usize;
    }
    assert!(served_by_bad >= 2, "probes went to the recovered provider");
    let m = weir.metrics();
    assert_eq!(metric(&m, "weir_circuit_state", &[("provider", "bad")]), Some(0.0));
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "bad"), ("to", "half_open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", "bad"), ("to", "closed")]
        ),
        Some(1.0)
    );
}

#[test]
fn every_candidate_open_is_503_circuit_open() {
    let bad = spawn_mock(&["--fail-rate", "1", "--fail-status", "503"]);
    let cfg = gateway(
        &provider("bad", &bad, ""),
        "  breaker: { type: circuit_breaker, consecutive_failures: 2, open_for: 30s }",
        "  - { name: chat, plugins: [breaker], providers: [bad] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    for _ in 0..2 {
        assert_eq!(
            post(&url, &chat("m", false), &[]).status,
            503,
            "the provider's own 503 passes through"
        );
    }
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!((r.status, r.error_type().as_str()), (503, "circuit_open"));
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&ra), "retry-after {ra} is the time until half-open");
    assert_eq!(bad.requests(), 2);
}

#[test]
fn request_limit_burst_then_429_with_headers() {
    let mock = spawn_mock(&[]);
    let cfg = gateway(
        &provider("m1", &mock, ""),
        "  limits: { type: rate_limit, key: global, requests: { per_second: 10, burst: 10 } }",
        "  - { name: chat, plugins: [limits], providers: [m1] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let results = concurrent(30, move |_| post(&url, &chat("m", false), &[]));
    let ok: Vec<&Resp> = results.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Resp> = results.iter().filter(|r| r.status == 429).collect();
    // A token may refill while the 30 arrive (10/s), hence the small allowance.
    assert!((10..=11).contains(&ok.len()), "{} passed", ok.len());
    assert_eq!(ok.len() + limited.len(), 30);
    for r in &limited {
        assert_eq!(r.error_type(), "rate_limit_exceeded");
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10"));
        assert_eq!(r.header("x-weir-queue"), Some("ratelimit:limits:requests"));
    }
    assert!(ok.iter().all(|r| r.header("x-ratelimit-remaining-requests").is_some()));
    let m = weir.metrics();
    assert_eq!(
        metric(
            &m,
            "weir_rate_limited_total",
            &[("plugin", "limits"), ("dimension", "requests")]
        ),
        Some(limited.len() as f64)
    );
    assert_eq!(mock.requests() as usize, ok.len());
}

#[test]
fn token_budget_is_reserved_at_admission_and_settled_from_usage() {
    // Each request reserves its prompt (~12 tokens) + max_tokens 100; the mock uses 5.
    let mock = spawn_mock(&["--completion-tokens", "5", "--ttft", "300ms"]);
    let cfg = gateway(
        &provider("m1", &mock, ""),
        "  limits: { type: rate_limit, key: global, tokens: { per_minute: 1000, burst: 1000 } }",
        "  - { name: chat, plugins: [limits], providers: [m1] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let body = |_| {
        serde_json::to_vec(
            &serde_json::json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap()
    };
    let u = url.clone();
    let results = concurrent(20, move |i| post(&u, &body(i), &[]));
    let admitted = results.iter().filter(|r| r.status == 200).count();
    assert!(
        (1..=10).contains(&admitted),
        "{admitted} admitted: a concurrent burst cannot overshoot"
    );
    assert!(results.iter().filter(|r| r.status == 429).all(
        |r| r.error_type() == "rate_limit_exceeded" && r.header("x-weir-queue") == Some("ratelimit:limits:tokens")
    ));
    // Settled: each admitted request used ~5+9 tokens, not 109, so more fit now.
    for _ in 0..5 {
        let r = post(&url, &body(0), &[]);
        assert_eq!(r.status, 200, "unused reservations were returned: {}", r.body);
    }
    let r = post(&url, &body(0), &[]);
    let remaining: u64 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert!(remaining >= 500, "remaining {remaining}");
}

#[test]
fn streamed_usage_is_requested_settled_and_hidden_from_the_client() {
    let mock = spawn_mock(&["--completion-tokens", "7"]);
    let cfg = gateway(
        &provider("m1", &mock, ""),
        "  limits: { type: rate_limit, key: global, tokens: { per_minute: 100000, burst: 100000 } }",
        "  - { name: chat, plugins: [limits], providers: [m1] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", true), &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data: [DONE]"));
    assert!(
        !r.body.contains("\"usage\":{"),
        "the usage chunk weir asked for is removed:\n{}",
        r.body
    );
    let labels = [("provider", "m1"), ("kind", "completion")];
    assert_eq!(metric_settles(&weir, "weir_llm_tokens_total", &labels, 7.0), Some(7.0));
    // A client that asks for usage still gets it.
    let body = serde_json::to_vec(
        &serde_json::json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let r = post(&weir.url("/v1/chat/completions"), &body, &[]);
    assert!(r.body.contains("\"usage\":{"));
}

fn redis_limits(redis: &Redis, policy: &str) -> String {
    format!(
        "  limits: {{ type: rate_limit, key: global, requests: {{ per_minute: 1, burst: 20 }}, store: \"{}\", on_store_error: {policy} }}",
        redis.url()
    )
}

#[test]
fn redis_store_shares_the_limit_and_survives_an_outage() {
    let redis = spawn_redis();
    let mock = spawn_mock(&[]);
    let route = "  - { name: chat, plugins: [limits], providers: [m1] }";
    let a = spawn_weir(
        &gateway(&provider("m1", &mock, ""), &redis_limits(&redis, "fail_open"), route),
        &[],
    );
    let b = spawn_weir(
        &gateway(&provider("m1", &mock, ""), &redis_limits(&redis, "fail_closed"), route),
        &[],
    );
    let mut ok = 0;
    for i in 0..40 {
        let w = if i % 2 == 0 { &a } else { &b };
        ok += (post(&w.url("/v1/chat/completions"), &chat("m", false), &[]).status == 200) as usize;
    }
    assert!((20..=21).contains(&ok), "{ok} passed across two instances");

    drop(redis); // Redis goes away mid-test.
    let r = post(&a.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200, "fail_open keeps serving on a local bucket: {}", r.body);
    let errs = metric(
        &a.metrics(),
        "weir_rate_limit_store_errors_total",
        &[("plugin", "limits")],
    )
    .unwrap();
    assert!(errs >= 1.0);
    let r = post(&b.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 503, "fail_closed refuses: {}", r.body);
    assert_eq!(r.error_type(), "plugin_error");
}

#[test]
fn health_checks_keep_traffic_off_a_dead_provider() {
    let alive = spawn_mock(&[]);
    let doomed = spawn_mock(&[]);
    let hc = ", health_check: { path: /models, interval: 100ms }";
    let cfg = gateway(
        &format!("{}\n{}", provider("alive", &alive, hc), provider("doomed", &doomed, hc)),
        "  balance: { type: least_connections }",
        "  - { name: chat, plugins: [balance], providers: [doomed, alive] }",
    );
    let weir = spawn_weir(&cfg, &[]);
    drop(doomed);
    assert!(eventually(Duration::from_secs(5), || {
        get(&weir.admin("/status"), &[]).json()["providers"]["doomed"]["health"] == "unhealthy"
    }));
    for _ in 0..10 {
        let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-weir-provider"), Some("alive"));
    }
    assert_eq!(
        metric(&weir.metrics(), "weir_provider_healthy", &[("provider", "doomed")]),
        Some(0.0)
    );
}

/// Breaker state (0 closed, 1 half-open, 2 open) of `provider`, and its
/// transitions to `to` so far.
fn breaker_metrics(weir: &Weir, provider: &str, to: &str) -> (Option<f64>, Option<f64>) {
    let m = weir.metrics();
    (
        metric(&m, "weir_circuit_state", &[("provider", provider)]),
        metric(
            &m,
            "weir_circuit_transitions_total",
            &[("provider", provider), ("to", to)],
        ),
    )
}

#[test]
fn a_passing_health_check_half_opens_the_breaker_long_before_open_for() {
    // Two providers go down and come back; only `checked` has a health check.
    let checked = spawn_mock(&[]);
    let unchecked = spawn_mock(&[]);
    let good = spawn_mock(&[]);
    let hc = ", health_check: { path: /models, interval: 200ms }";
    let cfg = gateway(
        &format!(
            "{}\n{}\n{}",
            provider("checked", &checked, hc),
            provider("unchecked", &unchecked, ""),
            provider("good", &good, "")
        ),
        "  breaker: { type: circuit_breaker, consecutive_failures: 2, open_for: 30s, half_open_probes: 1 }",
        "  - { name: chat, plugins: [breaker], providers: [checked, unchecked, good], retries: 2 }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let status = || get(&weir.admin("/status"), &[]).json();
    let (checked_port, unchecked_port) = (checked.port, unchecked.port);
    drop(checked);
    drop(unchecked);

    // Failing health checks alone open no breaker.
    assert!(eventually(Duration::from_secs(5), || status()["providers"]["checked"]
        ["health"]
        == "unhealthy"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status()["providers"]["checked"]["breaker"], "none");

    // Real failures open both breakers; retries hide them.
    for _ in 0..2 {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-weir-provider"), Some("good"));
    }
    for p in ["checked", "unchecked"] {
        assert_eq!(breaker_metrics(&weir, p, "open"), (Some(2.0), Some(1.0)), "{p}");
        assert_eq!(
            metric(&weir.metrics(), "weir_circuit_open_seconds", &[("provider", p)]),
            Some(30.0)
        );
    }
    // Failing health checks alone do not move an open breaker either.
    std::thread::sleep(Duration::from_millis(600));
    // (Transition counts start at 0 with the breaker.)
    assert_eq!(breaker_metrics(&weir, "checked", "half_open"), (Some(2.0), Some(0.0)));

    // Both come back. The health check passes within its interval, so the
    // next request probes `checked` and closes its breaker, 30 s early.
    let _checked = spawn_mock_on(checked_port, &[]);
    let unchecked = spawn_mock_on(unchecked_port, &[]);
    let back = Instant::now();
    let mut served_by = String::new();
    assert!(
        eventually(Duration::from_secs(3), || {
            let r = post(&url, &chat("m", false), &[]);
            assert_eq!(r.status, 200, "{}", r.body);
            served_by = r.header("x-weir-provider").unwrap_or_default().to_string();
            served_by == "checked"
        }),
        "the recovered provider was tried again (last served by {served_by})"
    );
    let took = back.elapsed();
    assert!(took < Duration::from_millis(1500), "recovered in {took:?}");
    assert_eq!(breaker_metrics(&weir, "checked", "half_open"), (Some(0.0), Some(1.0)));
    assert_eq!(breaker_metrics(&weir, "checked", "closed"), (Some(0.0), Some(1.0)));
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!(
        r.header("x-weir-provider"),
        Some("checked"),
        "closed: first in line again"
    );

    // Without a health check, the breaker waits out open_for.
    assert_eq!(breaker_metrics(&weir, "unchecked", "half_open"), (Some(2.0), Some(0.0)));
    assert_eq!(status()["providers"]["unchecked"]["breaker"], "open");
    assert_eq!(
        unchecked.requests(),
        0,
        "no traffic reached the provider without a check"
    );
}

#[test]
fn each_failed_probe_doubles_the_open_period_up_to_max_open_for_and_closing_resets_it() {
    let bad = spawn_mock(&["--fail-rate", "1", "--fail-status", "500"]);
    let good = spawn_mock(&[]);
    let cfg = gateway(
        &format!("{}\n{}", provider("bad", &bad, ""), provider("good", &good, "")),
        "  breaker: { type: circuit_breaker, consecutive_failures: 2, open_for: 400ms, max_open_for: 1s, half_open_probes: 1 }",
        "  - { name: chat, plugins: [breaker], providers: [bad, good], retries: 1 }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let served = || {
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "retries hide the failing provider: {}", r.body);
        r.header("x-weir-provider").unwrap_or_default().to_string()
    };
    let open_seconds = || metric(&weir.metrics(), "weir_circuit_open_seconds", &[("provider", "bad")]);

    for _ in 0..2 {
        served();
    }
    assert_eq!(bad.requests(), 2);
    assert_eq!(breaker_metrics(&weir, "bad", "open"), (Some(2.0), Some(1.0)));
    assert_eq!(open_seconds(), Some(0.4), "first opening: open_for");

    // Each period waited out lets one probe through; it fails and the
    // breaker reopens for twice as long, then for max_open_for.
    for (opens, waited, period) in [(2.0, 450, 0.8), (3.0, 850, 1.0)] {
        assert_eq!(served(), "good", "still open");
        std::thread::sleep(Duration::from_millis(waited));
        assert_eq!(served(), "good", "the probe failed; the retry went on");
        assert_eq!(breaker_metrics(&weir, "bad", "open"), (Some(2.0), Some(opens)));
        assert_eq!(open_seconds(), Some(period), "after {opens} openings");
    }
    assert_eq!(bad.requests(), 4, "one probe per period");

    // Healed: the next probe closes the breaker; its next opening lasts
    // open_for again.
    mock_config(&bad, r#"{"fail_rate": 0}"#);
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(served(), "bad", "the probe succeeded");
    assert_eq!(breaker_metrics(&weir, "bad", "closed"), (Some(0.0), Some(1.0)));
    mock_config(&bad, r#"{"fail_rate": 1}"#);
    for _ in 0..2 {
        served();
    }
    assert_eq!(breaker_metrics(&weir, "bad", "open"), (Some(2.0), Some(4.0)));
    assert_eq!(open_seconds(), Some(0.4), "reset by closing");
}
