//! The JSON access log: one line per request with what operators look
//! for — route, key name, model, every provider tried, status, error, queue
//! waits, time to first byte, duration, tokens, cost, cache outcome — and
//! never a key or a prompt unless `prompts: true`.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            got = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            got.len() >= n
        }),
        "{} lines of {n}",
        got.len()
    );
    got
}

fn gateway(a: &Mock, b: &Mock, log: &std::path::Path, prompts: bool) -> Weir {
    let keys = keys_file(&[("alice", "standard", 1, false)]);
    let config = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
access_log: {{ to: "{log}", prompts: {prompts} }}
providers:
  a: {{ url: "{a}", models: [m], prices: {{ m: {{ input: 1, output: 2 }} }},
       bulkhead: {{ max_concurrent: 1, queue: 4, queue_timeout: 10s }} }}
  b: {{ url: "{b}", models: [m], prices: {{ m: {{ input: 1, output: 2 }} }} }}
plugins:
  auth: {{ type: api_key, keys_file: keys.yaml }}
  cache: {{ type: cache, ttl: 1m }}
routes:
  - {{ name: chat, plugins: [auth, cache], providers: [a, b], retry: {{ attempts: 2, per_provider: 1 }} }}
"#,
        log = log.display(),
        a = a.url(),
        b = b.url(),
    );
    spawn_weir(&config, &[("keys.yaml", &keys)])
}

#[test]
fn one_line_per_request_with_what_operators_need_and_no_secrets() {
    // Only `a` heeds `x-fault-a`.
    let a = spawn_mock(&["--ttft", "300ms", "--fault-header", "x-fault-a"]);
    let b = spawn_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let w = gateway(&a, &b, &log, false);
    let auth = [("authorization", "Bearer sk-alice")];
    let secret_prompt = "my secret prompt text";
    let body = |s: &str| {
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": s}]})).unwrap()
    };

    // 1. Two at once on `a` (one slot): one of them queues.
    let url = w.url("/v1/chat/completions");
    let (u2, b1, b2) = (
        url.clone(),
        body(&format!("{secret_prompt} 1")),
        body(&format!("{secret_prompt} 2")),
    );
    let t = std::thread::spawn(move || post(&u2, &b1, &[("authorization", "Bearer sk-alice")]));
    assert_eq!(post(&url, &b2, &auth).status, 200);
    assert_eq!(t.join().unwrap().status, 200);
    // 3. A cache hit.
    assert_eq!(post(&url, &b2, &auth).header("x-weir-cache"), Some("hit"));
    // 4. A provider 503, retried on b.
    let r = post(&url, &body("fails over"), &[auth[0], ("x-fault-a", "status:code=503")]);
    assert_eq!(r.status, 200, "{}", r.body);
    // 5. A refused key.
    assert_eq!(
        post(&url, &body("who am I"), &[("authorization", "Bearer sk-mallory")]).status,
        401
    );
    // 6. An Anthropic client.
    let anthropic = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hello"}]}"#;
    assert_eq!(
        post(&w.url("/v1/messages"), anthropic, &[("x-api-key", "sk-alice")]).status,
        200
    );

    let got = lines(&log, 6);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(secret_prompt), "a prompt in the log: {text}");
    assert!(
        !text.contains("sk-alice") && !text.contains("sk-mallory"),
        "a key in the log: {text}"
    );
    for l in &got {
        for field in [
            "time",
            "request_id",
            "method",
            "path",
            "client_format",
            "status",
            "duration_ms",
        ] {
            assert!(l.get(field).is_some(), "{field} missing: {l}");
        }
    }
    let served: Vec<&Value> = got.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(served.len(), 5, "{got:#?}");
    for l in &served {
        assert_eq!(l["route"], "chat");
        assert_eq!(l["key"], "alice");
        assert_eq!(l["model"], "m");
        assert!(l["cache"].is_string(), "{l}");
        if l["cache"] != "hit" {
            assert!(l["tokens"]["completion"].as_u64().is_some_and(|n| n > 0), "{l}");
            assert!(l["cost"].as_f64().is_some_and(|c| c > 0.0), "{l}");
        }
    }
    assert!(
        served
            .iter()
            .any(|l| l["queue_waits_ms"]["provider:a"].as_f64().is_some_and(|ms| ms > 0.0)),
        "one request queued for a's slot: {served:#?}"
    );
    assert!(served
        .iter()
        .any(|l| l["cache"] == "hit" && l.get("providers").is_none()));
    let failover = served
        .iter()
        .find(|l| l["providers"] == serde_json::json!(["a", "b"]))
        .expect("a then b");
    assert_eq!(failover["provider"], "b");
    assert!(failover["ttfb_ms"].as_f64().is_some());
    let refused = got.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(refused["error"], "authentication_error");
    assert!(refused.get("key").is_none());
    let from_anthropic = got.iter().find(|l| l["client_format"] == "anthropic").unwrap();
    assert_eq!(from_anthropic["path"], "/v1/messages");

    // With prompts: true the client's body is there.
    let log2 = dir.path().join("with-prompts.log");
    let w2 = gateway(&a, &b, &log2, true);
    assert_eq!(
        post(&w2.url("/v1/chat/completions"), &body(secret_prompt), &auth).status,
        200
    );
    let got = lines(&log2, 1);
    assert!(
        got[0]["request_body"].as_str().unwrap().contains(secret_prompt),
        "{}",
        got[0]
    );
}
