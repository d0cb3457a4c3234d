//! End-to-end: the response cache.

mod support;
use std::time::Duration;
use support::*;

fn gateway(mock: &Mock, cache: &str, extra_plugins: &str, chain: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m1: {{ url: \"{}\", models: {{ fast: up-model }} }}\nplugins:\n  cache: {cache}\n{extra_plugins}\
         routes:\n  - {{ name: chat, plugins: [{chain}], providers: [m1] }}\n",
        mock.url()
    )
}

fn body(temperature: f64, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "fast", "temperature": temperature, "stream": stream,
        "messages": [{"role": "user", "content": "what is a weir?"}]
    }))
    .unwrap()
}

/// Content of a chat answer, JSON or SSE (parsed event by event).
fn content(r: &Resp) -> String {
    if r.header("content-type") == Some("text/event-stream") {
        let mut out = String::new();
        let mut done = false;
        for event in r.body.split("\n\n").filter(|e| !e.is_empty()) {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE event: {event:?}"));
            if data == "[DONE]" {
                done = true;
                continue;
            }
            assert!(!done, "[DONE] must be last");
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            for c in v["choices"].as_array().unwrap() {
                out.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            }
        }
        assert!(done, "stream ends with [DONE]");
        out
    } else {
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[test]
fn hit_after_miss_key_order_and_parameters() {
    let mock = spawn_mock(&["--completion-tokens", "12"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache, ttl: 10m }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let first = post(&url, &body(0.0, false), &[]);
    assert_eq!((first.status, first.header("x-weir-cache")), (200, Some("miss")));
    let second = post(&url, &body(0.0, false), &[]);
    assert_eq!((second.status, second.header("x-weir-cache")), (200, Some("hit")));
    assert_eq!(second.body, first.body, "identical answer");
    assert_eq!(mock.requests(), 1);

    let reordered = br#"{ "messages": [ {"content": "what is a weir?", "role": "user"} ],
                         "stream": false, "temperature": 0.0, "model": "fast" }"#;
    assert_eq!(post(&url, reordered, &[]).header("x-weir-cache"), Some("hit"));
    assert_eq!(post(&url, &body(0.7, false), &[]).header("x-weir-cache"), Some("miss"));
    assert_eq!(mock.requests(), 2);

    // Directives: no-cache skips the lookup (but stores); no-store bypasses.
    let r = post(&url, &body(0.0, false), &[("cache-control", "no-cache")]);
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    let r = post(&url, &body(0.0, false), &[("cache-control", "no-store")]);
    assert_eq!(r.header("x-weir-cache"), Some("bypass"));
    assert_eq!(mock.requests(), 4);
    let m = weir.metrics();
    assert_eq!(
        metric(
            &m,
            "weir_cache_lookups_total",
            &[("plugin", "cache"), ("result", "hit")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "weir_cache_lookups_total",
            &[("plugin", "cache"), ("result", "bypass")]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "weir_llm_tokens_total",
            &[("provider", "cache"), ("kind", "cached")]
        )
        .unwrap()
            > 0.0
    );
}

#[test]
fn json_entry_replays_as_sse_and_streamed_entry_serves_json() {
    let mock = spawn_mock(&["--completion-tokens", "20"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let json_fill = post(&url, &body(0.0, false), &[]);
    let sse_hit = post(&url, &body(0.0, true), &[]);
    assert_eq!(sse_hit.header("x-weir-cache"), Some("hit"));
    assert_eq!(sse_hit.header("content-type"), Some("text/event-stream"));
    assert!(sse_hit.body.matches("data: ").count() > 3, "split into chunks");
    assert_eq!(content(&sse_hit), content(&json_fill));

    let sse_fill = post(&url, &body(0.5, true), &[]);
    assert_eq!(sse_fill.header("x-weir-cache"), Some("miss"));
    let json_hit = post(&url, &body(0.5, false), &[]);
    assert_eq!(json_hit.header("x-weir-cache"), Some("hit"));
    assert_eq!(json_hit.json()["object"], "chat.completion");
    assert_eq!(json_hit.json()["model"], "up-model");
    assert_eq!(content(&json_hit), content(&sse_fill));
    assert_eq!(mock.requests(), 2);
}

#[test]
fn errors_and_cut_streams_are_never_stored() {
    let mock = spawn_mock(&["--fail-rate", "1", "--fail-status", "500"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    assert_eq!(post(&url, &body(0.0, false), &[]).status, 500);
    mock_config(&mock, r#"{"fail_rate": 1, "fail_status": 429}"#);
    assert_eq!(post(&url, &body(0.0, false), &[]).status, 429);
    mock_config(&mock, r#"{"fail_rate": 0}"#);
    let r = post(&url, &body(0.0, false), &[]);
    assert_eq!(
        (r.status, r.header("x-weir-cache")),
        (200, Some("miss")),
        "no error was cached"
    );
    // Each error answer was tried twice (the default retry policy), the 200 once.
    assert_eq!(mock.requests(), 5);

    // A stream cut off by the provider mid-way is not stored either.
    let slow = spawn_mock(&["--tokens-per-sec", "10", "--completion-tokens", "50"]);
    let port = slow.port;
    let weir = spawn_weir(&gateway(&slow, "{ type: cache }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let u = url.clone();
    let client = std::thread::spawn(move || {
        let r = ureq::post(&u)
            .set("content-type", "application/json")
            .send_bytes(&body(0.0, true))
            .unwrap();
        let mut s = String::new();
        let read = std::io::Read::read_to_string(&mut r.into_reader(), &mut s);
        (read.is_ok(), s)
    });
    std::thread::sleep(Duration::from_millis(800));
    drop(slow); // the provider dies mid-stream
    let (clean_end, text) = client.join().unwrap();
    assert!(
        !clean_end || !text.contains("[DONE]"),
        "the client never sees a clean, complete stream"
    );
    let again = spawn_mock_on(port, &["--completion-tokens", "5"]);
    let r = post(&url, &body(0.0, true), &[]);
    assert_eq!(
        (r.status, r.header("x-weir-cache")),
        (200, Some("miss")),
        "the cut stream was not cached"
    );
    assert_eq!(again.requests(), 1);
}

#[test]
fn concurrent_identical_misses_make_one_upstream_call() {
    let mock = spawn_mock(&["--ttft", "400ms"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let results = concurrent(100, move |_| post(&url, &body(0.0, false), &[]));
    assert!(results.iter().all(|r| r.status == 200));
    assert_eq!(mock.requests(), 1, "one upstream call for 100 identical requests");
    let first = &results[0].json()["choices"];
    assert!(results.iter().all(|r| &r.json()["choices"] == first));
    let coalesced = metric(&weir.metrics(), "weir_cache_coalesced_total", &[("plugin", "cache")]).unwrap();
    assert!(coalesced >= 90.0, "{coalesced}");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn max_bytes_bounds_memory_and_counts_evictions() {
    // ~12 KiB answers; 450 distinct ones is over 5 MiB.
    let mock = spawn_mock(&["--completion-tokens", "2000"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache, max_bytes: 1MiB }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let before = rss_kib(weir.proc.child.id());
    let mut stored = 0usize;
    for i in 0..450 {
        let b = serde_json::to_vec(
            &serde_json::json!({"model": "fast", "messages": [{"role": "user", "content": format!("q{i}")}]}),
        )
        .unwrap();
        let r = post(&url, &b, &[]);
        assert_eq!(r.status, 200, "request {i}: {}", &r.body[..r.body.len().min(300)]);
        stored += r.body.len();
    }
    assert!(stored > 5 << 20, "{stored} bytes of answers");
    let m = weir.metrics();
    let bytes = metric(&m, "weir_cache_bytes", &[("plugin", "cache")]).unwrap();
    assert!(bytes <= (1 << 20) as f64, "cache holds {bytes} bytes");
    assert!(metric(&m, "weir_cache_evictions_total", &[("plugin", "cache")]).unwrap() > 0.0);
    let grown = rss_kib(weir.proc.child.id()).saturating_sub(before);
    assert!(grown < 48 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn key_by_api_key_isolates_tenants() {
    let mock = spawn_mock(&[]);
    let keys = format!(
        "keys:\n  - {{ name: a, sha256: {} }}\n  - {{ name: b, sha256: {} }}\n",
        weir::plugins::api_key::digest_hex("sk-a"),
        weir::plugins::api_key::digest_hex("sk-b")
    );
    let weir = spawn_weir(
        &gateway(
            &mock,
            "{ type: cache, key_by: api_key }",
            "  keys: { type: api_key, keys_file: keys.yaml }\n",
            "keys, cache",
        ),
        &[("keys.yaml", &keys)],
    );
    let url = weir.url("/v1/chat/completions");
    let a = [("authorization", "Bearer sk-a")];
    let b = [("authorization", "Bearer sk-b")];
    assert_eq!(post(&url, &body(0.0, false), &a).header("x-weir-cache"), Some("miss"));
    assert_eq!(post(&url, &body(0.0, false), &a).header("x-weir-cache"), Some("hit"));
    assert_eq!(
        post(&url, &body(0.0, false), &b).header("x-weir-cache"),
        Some("miss"),
        "B never sees A's entry"
    );
    assert_eq!(mock.requests(), 2);
}

#[test]
fn redis_store_is_shared_and_an_outage_means_misses() {
    let redis = spawn_redis();
    let mock = spawn_mock(&[]);
    let cache = format!("{{ type: cache, store: \"{}\" }}", redis.url());
    let a = spawn_weir(&gateway(&mock, &cache, "", "cache"), &[]);
    let b = spawn_weir(&gateway(&mock, &cache, "", "cache"), &[]);
    let r = post(&a.url("/v1/chat/completions"), &body(0.0, false), &[]);
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    // The write to Redis happens off the request path: wait until it landed.
    let port = redis.port.to_string();
    assert!(eventually(Duration::from_secs(3), || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "--scan", "--pattern", "weir:cache:*"])
            .output();
        out.is_ok_and(|o| !o.stdout.is_empty())
    }));
    let r = post(&b.url("/v1/chat/completions"), &body(0.0, false), &[]);
    assert_eq!(r.header("x-weir-cache"), Some("hit"), "B is served what A stored");
    assert_eq!(mock.requests(), 1);
    drop(redis);
    let r = post(&b.url("/v1/chat/completions"), &body(0.0, false), &[]);
    assert_eq!((r.status, r.header("x-weir-cache")), (200, Some("miss")));
    assert!(metric(&b.metrics(), "weir_cache_store_errors_total", &[("plugin", "cache")]).unwrap() >= 1.0);
}

/// Two providers for `fast` (a first), b also serving `other` under the same
/// upstream name, one retry (so a failing a leaves the answer to b).
fn two_providers(a: &Mock, b: &Mock, cache: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  a: {{ url: \"{}\", models: {{ fast: ua }} }}\n  b: {{ url: \"{}\", models: {{ fast: ub, other: ub }} }}\n\
         plugins:\n  cache: {cache}\n\
         routes:\n  - {{ name: chat, plugins: [cache], providers: [a, b], retries: 1 }}\n",
        a.url(),
        b.url()
    )
}

fn body_for(model: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": model, "temperature": 0,
        "messages": [{"role": "user", "content": "what is a weir?"}]
    }))
    .unwrap()
}

#[test]
fn stored_under_the_provider_and_model_that_answered() {
    let redis = spawn_redis();
    for store in ["memory".to_string(), redis.url()] {
        let a = spawn_mock(&["--fault", "status:code=503"]);
        let b = spawn_mock(&[]);
        let weir = spawn_weir(
            &two_providers(&a, &b, &format!("{{ type: cache, store: \"{store}\" }}")),
            &[],
        );
        let url = weir.url("/v1/chat/completions");
        // a fails, b answers: the answer is b's, as `ub`.
        let first = post(&url, &body_for("fast"), &[]);
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.header("x-weir-provider"), Some("b"));
        assert_eq!(first.header("x-weir-cache"), Some("miss"));
        let redis_written = || {
            store == "memory"
                || eventually(Duration::from_secs(3), || {
                    let out = std::process::Command::new("redis-cli")
                        .args(["-p", &redis.port.to_string(), "--scan", "--pattern", "weir:cache:*"])
                        .output();
                    out.is_ok_and(|o| !o.stdout.is_empty())
                })
        };
        assert!(redis_written());
        // Another public model b serves as the same upstream model finds it:
        // it was stored under (b, ub), not under the first candidate's model.
        let other = post(&url, &body_for("other"), &[]);
        assert_eq!(other.header("x-weir-cache"), Some("hit"), "{store}");
        assert_eq!(other.json()["choices"], first.json()["choices"]);
        // The original request looks up a's key, then b's: a hit, a untouched.
        let again = post(&url, &body_for("fast"), &[]);
        assert_eq!(again.header("x-weir-cache"), Some("hit"), "{store}");
        assert_eq!((a.requests(), b.requests()), (1, 1), "{store}");
    }
}

/// A streamed chat answer assembled by the client: content, and each tool
/// call's (id, name, arguments), and the finish reason.
fn assemble_sse(r: &Resp) -> (Option<String>, Vec<(String, String, String)>, String) {
    let (mut content, mut calls, mut finish) = (None::<String>, Vec::<(String, String, String)>::new(), String::new());
    let mut done = false;
    for event in r.body.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").expect("an SSE data event");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let d = &c["delta"];
            if let Some(t) = d["content"].as_str() {
                content.get_or_insert_with(String::new).push_str(t);
            }
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let i = t["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                if let Some(id) = t["id"].as_str() {
                    calls[i].0 = id.to_string();
                }
                calls[i].1.push_str(t["function"]["name"].as_str().unwrap_or(""));
                calls[i].2.push_str(t["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
    }
    assert!(done, "stream ends with [DONE]");
    (content, calls, finish)
}

#[test]
fn streamed_tool_call_is_cached_and_replayed_as_sse_and_json() {
    let mock = spawn_mock(&["--completion-tokens", "30"]);
    let weir = spawn_weir(&gateway(&mock, "{ type: cache }", "", "cache"), &[]);
    let url = weir.url("/v1/chat/completions");
    let body = |stream: bool| {
        serde_json::to_vec(&serde_json::json!({
            "model": "fast", "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "call it"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }))
        .unwrap()
    };
    let fill = post(&url, &body(true), &[]);
    assert_eq!(fill.header("x-weir-cache"), Some("miss"));
    let (content, calls, finish) = assemble_sse(&fill);
    let words: Vec<String> = (0..30).map(|i| format!("tok{i}")).collect();
    let arguments = format!(r#"{{"text":"{}"}}"#, words.join(" "));
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].1.as_str(), calls[0].2.as_str()), ("f", arguments.as_str()));
    assert_eq!((content, finish.as_str()), (None, "tool_calls"));

    // Replayed to a streaming client: the same call, as deltas.
    let sse_hit = post(&url, &body(true), &[]);
    assert_eq!(sse_hit.header("x-weir-cache"), Some("hit"));
    assert!(
        sse_hit.body.matches("\"arguments\"").count() > 3,
        "arguments replayed in fragments"
    );
    assert_eq!(assemble_sse(&sse_hit), (None, calls.clone(), "tool_calls".to_string()));

    // And as JSON: message.tool_calls.
    let json_hit = post(&url, &body(false), &[]);
    assert_eq!(json_hit.header("x-weir-cache"), Some("hit"));
    let v = json_hit.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], calls[0].0.as_str());
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "f");
    assert_eq!(call["function"]["arguments"], arguments.as_str());
    assert_eq!(v["choices"][0]["message"]["content"], serde_json::Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(mock.requests(), 1);
}
