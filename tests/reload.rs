//! End-to-end: live reload (admin API, file change, SIGHUP) with state carried
//! over by identity, failed reloads changing nothing, in-flight requests
//! finishing on the generation they started with.

mod support;
use std::io::{BufRead, BufReader};
use std::time::Duration;
use support::*;

fn config(a: &Mock, b: &Mock, limit_burst: u32, route_providers: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  a: {{ url: \"{}\", models: [m] }}\n  b: {{ url: \"{}\", models: [m] }}\n\
         plugins:\n  limits: {{ type: rate_limit, key: global, requests: {{ per_minute: 1, burst: {limit_burst} }} }}\n  cache: {{ type: cache }}\n\
         routes:\n  - {{ name: chat, plugins: [limits, cache], providers: [{route_providers}] }}\n  - {{ name: free, match: {{ path_prefix: /free/ }}, providers: [a] }}\n",
        a.url(),
        b.url()
    )
}

/// Rewrite the config with `{PORT}`/`{ADMIN}` filled from the running weir.
fn write_config(weir: &Weir, text: &str) {
    let text = text
        .replace("{PORT}", &weir.port.to_string())
        .replace("{ADMIN}", &weir.admin_port.to_string());
    std::fs::write(&weir.config, text).unwrap();
}

fn generation(weir: &Weir) -> u64 {
    get(&weir.admin("/status"), &[]).json()["generation"].as_u64().unwrap()
}

/// A request body no earlier request had (so the cache stays out of it).
fn fresh(tag: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": tag}]})).unwrap()
}

fn reload(weir: &Weir) -> Resp {
    post(&weir.admin("/reload"), b"", &[])
}

#[test]
fn admin_reload_swaps_generations_and_a_bad_config_changes_nothing() {
    let (a, b) = (spawn_mock(&[]), spawn_mock(&[]));
    let weir = spawn_weir(&config(&a, &b, 100, "a"), &[]);
    let url = weir.url("/v1/chat/completions");
    assert_eq!(post(&url, &chat("m", false), &[]).header("x-weir-provider"), Some("a"));

    write_config(&weir, &config(&a, &b, 100, "b"));
    let r = reload(&weir);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(generation(&weir), 2);
    let r = post(&url, &fresh("after reload"), &[]);
    assert_eq!(r.header("x-weir-provider"), Some("b"), "the new route serves");

    for broken in [
        "server: [",
        &config(&a, &b, 100, "b").replace("plugins: [limits, cache]", "plugins: [limits, nope]"),
        &config(&a, &b, 100, "b").replace("burst: 100", "burst: 100, colour: red"),
    ] {
        write_config(&weir, broken);
        let r = reload(&weir);
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(!r.json()["errors"].as_array().unwrap().is_empty());
        assert_eq!(generation(&weir), 2, "a failed reload changes nothing");
        assert_eq!(
            post(&url, &chat("m", false), &[]).status,
            200,
            "the old config keeps serving"
        );
    }
    let status = get(&weir.admin("/status"), &[]).json();
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(status["last_reload"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("weir.yaml"));
    let m = weir.metrics();
    assert_eq!(
        metric(&m, "weir_config_reloads_total", &[("result", "error")]),
        Some(3.0)
    );
    assert_eq!(metric(&m, "weir_config_reloads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(metric(&m, "weir_config_generation", &[]), Some(2.0));
}

#[test]
fn file_change_and_sighup_trigger_reloads() {
    let (a, b) = (spawn_mock(&[]), spawn_mock(&[]));
    let weir = spawn_weir(&config(&a, &b, 100, "a"), &[]);
    write_config(&weir, &config(&a, &b, 100, "b"));
    assert!(
        eventually(Duration::from_secs(5), || generation(&weir) == 2),
        "a file change reloads"
    );
    let pid = weir.proc.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(Duration::from_secs(5), || generation(&weir) == 3),
        "SIGHUP reloads"
    );
}

#[test]
fn state_carries_over_by_identity() {
    let (a, b) = (spawn_mock(&[]), spawn_mock(&[]));
    let weir = spawn_weir(&config(&a, &b, 3, "a, b"), &[]);
    let url = weir.url("/v1/chat/completions");
    // Drain the bucket (3 requests, distinct bodies so the cache stays out of it)...
    for i in 0..3 {
        let body = serde_json::to_vec(
            &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": format!("x{i}")}]}),
        )
        .unwrap();
        assert_eq!(post(&url, &body, &[]).status, 200);
    }
    let cached = post(&url, &chat("m", false), &[]);
    assert_eq!(cached.status, 429);
    // ...and fill the cache through the unlimited route's twin: a hit needs no token.
    // An unrelated change (a route's provider list) keeps the bucket drained.
    write_config(&weir, &config(&a, &b, 3, "b, a"));
    assert_eq!(reload(&weir).status, 200);
    assert_eq!(
        post(&url, &chat("m", false), &[]).status,
        429,
        "the drained bucket stays drained"
    );
    // Changing the plugin itself gives it fresh buckets.
    write_config(&weir, &config(&a, &b, 5, "b, a"));
    assert_eq!(reload(&weir).status, 200);
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!(r.status, 200, "a changed plugin starts fresh: {}", r.body);
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    // The cache entry survives an unrelated reload.
    write_config(&weir, &config(&a, &b, 5, "a, b"));
    assert_eq!(reload(&weir).status, 200);
    assert_eq!(post(&url, &chat("m", false), &[]).header("x-weir-cache"), Some("hit"));
}

#[test]
fn in_flight_requests_finish_on_their_generation() {
    // 30 tokens at 15/s: a two-second stream that starts before the reload.
    let a = spawn_mock(&["--tokens-per-sec", "15", "--completion-tokens", "30"]);
    let b = spawn_mock(&[]);
    let weir = spawn_weir(&config(&a, &b, 1000, "a"), &[]);
    let url = weir.url("/v1/chat/completions");
    let u = url.clone();
    let stream = std::thread::spawn(move || {
        let r = ureq::post(&u)
            .set("content-type", "application/json")
            .send_bytes(&chat("m", true))
            .unwrap();
        let provider = r.header("x-weir-provider").unwrap_or("").to_string();
        let lines: Vec<String> = BufReader::new(r.into_reader()).lines().map(|l| l.unwrap()).collect();
        (provider, lines)
    });
    let u = url.clone();
    let plain = std::thread::spawn(move || post(&u, &fresh("in flight"), &[]));
    // Both requests, the stream and the plain one, must be in flight on `a`
    // before the reload: waiting for one let a slow-starting stream thread
    // send after the reload and reach `b` (seen once in CI under load).
    assert!(eventually(Duration::from_secs(5), || a.stats()["in_flight"].as_u64() >= Some(2)));
    // Remove provider `a` while its requests are in flight.
    write_config(
        &weir,
        &config(&a, &b, 1000, "b")
            .replace("  a: {", "  gone: {")
            .replace("providers: [a] }", "providers: [b] }"),
    );
    assert_eq!(reload(&weir).status, 200);
    let r = post(&url, &fresh("after removal"), &[]);
    assert_eq!(r.header("x-weir-provider"), Some("b"), "new requests go elsewhere");
    let (provider, lines) = stream.join().unwrap();
    assert_eq!(provider, "a");
    assert_eq!(
        lines.iter().rev().find(|l| l.starts_with("data: ")).map(String::as_str),
        Some("data: [DONE]")
    );
    assert!(
        lines.iter().filter(|l| l.starts_with("data: {")).count() >= 31,
        "the stream completed intact"
    );
    assert_eq!(
        plain.join().unwrap().status,
        200,
        "the in-flight request to the removed provider finished"
    );
}

/// Two valid configs that differ in routes, providers and plugin settings.
fn load_config(a: &Mock, b: &Mock, variant: usize) -> String {
    let (providers, burst, ttl, extra_route) = if variant.is_multiple_of(2) {
        ("a, b", 100000, "10m", "")
    } else {
        (
            "b",
            200000,
            "5m",
            "\n  - { name: extra, match: { path_prefix: /extra/ }, providers: [a] }",
        )
    };
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  a: {{ url: \"{}\", models: [m] }}\n  b: {{ url: \"{}\", models: [m] }}\n\
         plugins:\n  limits: {{ type: rate_limit, key: global, requests: {{ per_second: 100000, burst: {burst} }} }}\n  \
         cache: {{ type: cache, ttl: {ttl} }}\n  guard: {{ type: wasm, module: \"{}\", config: {{ patterns: [\"forbidden words\"] }} }}\n\
         routes:\n  - {{ name: chat, plugins: [limits, guard, cache], providers: [{providers}] }}{extra_route}\n",
        a.url(),
        b.url(),
        repo().join("plugins/prompt-guard/prompt-guard.wasm").display()
    )
}

#[test]
fn reloads_under_load_fail_no_request() {
    let a = spawn_mock(&["--tokens-per-sec", "200", "--completion-tokens", "20"]);
    let b = spawn_mock(&["--tokens-per-sec", "200", "--completion-tokens", "20"]);
    let weir = spawn_weir(&load_config(&a, &b, 0), &[]);
    let url = weir.url("/v1/chat/completions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let stream = i.is_multiple_of(2);
                    // Some repeat (cache hits), most are new (misses).
                    let body = serde_json::to_vec(&serde_json::json!({"model": "m", "stream": stream,
                        "messages": [{"role": "user", "content": format!("c{c} q{}", i % 7)}]}))
                    .unwrap();
                    let r = post(&url, &body, &[]);
                    if r.status == 200 && (!stream || r.body.contains("data: [DONE]")) {
                        ok += 1;
                    } else {
                        failed.push(format!("{} {}", r.status, &r.body[..r.body.len().min(200)]));
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut expected_generation = 1;
    // 24 steps over 20+ s: 21 valid reloads and 3 broken configs (steps 8, 16, 24).
    for step in 1..=24usize {
        let invalid = step.is_multiple_of(8);
        if invalid {
            write_config(
                &weir,
                &load_config(&a, &b, step).replace("type: cache", "type: cache, colour: red"),
            );
            let r = reload(&weir);
            assert_eq!(r.status, 422, "step {step}: {}", r.body);
        } else {
            write_config(&weir, &load_config(&a, &b, step));
            let r = reload(&weir);
            assert_eq!(r.status, 200, "step {step}: {}", r.body);
            expected_generation += 1;
        }
        assert_eq!(generation(&weir), expected_generation, "step {step}");
        std::thread::sleep(Duration::from_millis(850));
    }
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    eprintln!(
        "{ok} requests in {elapsed:?} ({:.0}/s) across {} generations",
        ok as f64 / elapsed.as_secs_f64(),
        expected_generation
    );
    assert!(elapsed >= Duration::from_secs(20));
    assert!(ok > 2000, "{ok} requests served during the reloads");
    assert_eq!(expected_generation, 22, "21 valid reloads after generation 1");
}

#[test]
fn reload_needs_the_admin_token_and_reports_upgrade_only_changes() {
    let (a, b) = (spawn_mock(&[]), spawn_mock(&[]));
    let with_token = |c: String| {
        c.replace(
            "admin: { listen: \"127.0.0.1:{ADMIN}\" }",
            "admin: { listen: \"127.0.0.1:{ADMIN}\", token: s3cret }",
        )
    };
    let weir = spawn_weir(&with_token(config(&a, &b, 100, "a")), &[]);
    assert_eq!(reload(&weir).status, 401, "POST /reload needs the token");
    assert_eq!(
        post(&weir.admin("/reload"), b"", &[("authorization", "Bearer wrong")]).status,
        401
    );
    // A listen-address change is applied only by an upgrade: reported, not ignored.
    let moved = with_token(config(&a, &b, 100, "a")).replace("threads: 2", "threads: 3");
    write_config(&weir, &moved);
    let r = post(&weir.admin("/reload"), b"", &[("authorization", "Bearer s3cret")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let auth = [("authorization", "Bearer s3cret")];
    let status = get(&weir.admin("/status"), &auth).json();
    let needs = status["last_reload"]["needs_upgrade"].as_array().unwrap();
    assert!(
        needs.iter().any(|n| n.as_str().unwrap().contains("server.threads")),
        "{status}"
    );
    assert!(
        !get(&weir.admin("/config"), &auth).body.contains("s3cret"),
        "the token is redacted"
    );
}
