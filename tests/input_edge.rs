//! End-to-end: hostile and absurd input at the edge. Client-chosen rate-limit
//! keys cannot grow weir's memory, a megabytes-long prompt cannot stall the
//! other requests, and overflowing or ambiguous request bodies are refused
//! with a 400 naming the field.

mod support;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn config(mock: &Mock, server_extra: &str, plugin: &str) -> String {
    format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"]{server_extra} }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  m: {{ url: "{url}", models: [m] }}
plugins:
  limits: {plugin}
routes:
  - {{ name: chat, plugins: [limits], providers: [m] }}
"#,
        url = mock.url()
    )
}

#[test]
fn a_flood_of_tenant_keys_stays_bounded() {
    let mock = spawn_mock(&[]);
    let cfg = config(
        &mock,
        "",
        "{ type: rate_limit, key: \"header:x-tenant\", requests: { per_minute: 60, burst: 3 }, max_keys: 50 }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");

    // One tenant is limited as configured.
    let codes: Vec<u16> = (0..4)
        .map(|_| post(&url, &chat("m", false), &[("x-tenant", "hot")]).status)
        .collect();
    assert_eq!(codes, [200, 200, 200, 429]);

    // 400 distinct tenants (some with long values), 8 at a time: every one is
    // answered (each has its own full bucket), and weir holds at most 50.
    let u = url.clone();
    let results = concurrent(8, move |t| {
        let mut last = None;
        for i in 0..50 {
            let tenant = if i % 10 == 0 {
                format!("{t}-{i}-{}", "x".repeat(4000))
            } else {
                format!("tenant-{t}-{i}")
            };
            let r = post(&u, &chat("m", false), &[("x-tenant", &tenant)]);
            assert_eq!(r.status, 200, "tenant {tenant:.40}: {}", r.body);
            last = Some(r);
        }
        last.unwrap()
    });
    assert_eq!(results.len(), 8);
    let keys = metric(&weir.metrics(), "weir_rate_limit_keys", &[("plugin", "limits")]).unwrap();
    assert!((1.0..=50.0).contains(&keys), "{keys} keys held, bounded at 50");
    assert_eq!(mock.requests(), 3 + 400);
}

#[test]
fn an_8_mib_prompt_is_decided_without_stalling_other_requests() {
    let mock = spawn_mock(&[]);
    // One worker thread: had the count run inline, every other request would wait for it.
    let cfg = config(
        &mock,
        ", threads: 1",
        "{ type: rate_limit, key: global, tokens: { per_minute: 10000000, burst: 10000000 } }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let big = {
        // One long run of letters: the costliest shape for the BPE (seconds
        // for 8 MiB in a debug build).
        let text: String = (0..8 * 1024 * 1024 - 200)
            .map(|i: usize| (b'a' + ((i * 7 + i / 3) % 26) as u8) as char)
            .collect();
        serde_json::to_vec(
            &serde_json::json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": text}]}),
        )
        .unwrap()
    };
    assert!(big.len() <= 8 * 1024 * 1024);
    let big = std::sync::Arc::new(big);

    let (b, u) = (big.clone(), url.clone());
    let first = std::thread::spawn(move || {
        let t = Instant::now();
        (post(&u, &b, &[]), t.elapsed())
    });
    // Small requests while the big one is uploaded and counted.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = post(&url, &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, big_took) = first.join().unwrap();
    // A sanity bound, not a benchmark: no small request waited anywhere near
    // as long as a full BPE of 8 MiB takes.
    assert!(
        slowest < Duration::from_secs(5),
        "small request took {slowest:?} (big one {big_took:?})"
    );

    // Reserved at its byte-count bound (~8.4M tokens): fits in 10M.
    assert_eq!(r.status, 200, "{}", r.body);
    let remaining: u64 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert!(
        remaining < 10_000_000 - 8_000_000,
        "reserved at least the bytes: {remaining}"
    );

    // With room for its completion on top it no longer fits (the first one
    // was settled at its real usage): a prompt 429, not a stall.
    let mut v: serde_json::Value = serde_json::from_slice(&big).unwrap();
    v["max_tokens"] = serde_json::json!(5_000_000);
    let t = Instant::now();
    let r = post(&url, &serde_json::to_vec(&v).unwrap(), &[]);
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (429, "rate_limit_exceeded"),
        "{}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn absurd_counts_and_duplicate_keys_are_400_with_param() {
    let mock = spawn_mock(&[]);
    let cfg = config(
        &mock,
        "",
        "{ type: rate_limit, key: global, tokens: { per_minute: 100000, burst: 100000 } }",
    );
    let weir = spawn_weir(&cfg, &[]);
    let url = weir.url("/v1/chat/completions");
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases = [
        // prompt + max_tokens would wrap a u64 into a tiny reservation.
        (
            format!(r#"{{"model":"m",{msgs},"max_tokens":18446744073709551615}}"#),
            Some("max_tokens"),
        ),
        (
            format!(r#"{{"model":"m",{msgs},"max_tokens":18446744073709551610}}"#),
            Some("max_tokens"),
        ),
        (format!(r#"{{"model":"m",{msgs},"max_tokens":-1}}"#), Some("max_tokens")),
        (
            format!(r#"{{"model":"m",{msgs},"max_tokens":1e300}}"#),
            Some("max_tokens"),
        ),
        (
            format!(r#"{{"model":"m",{msgs},"max_completion_tokens":-100}}"#),
            Some("max_completion_tokens"),
        ),
        (
            format!(r#"{{"model":"m",{msgs},"max_completion_tokens":99999999999}}"#),
            Some("max_completion_tokens"),
        ),
        (format!(r#"{{"model":"m",{msgs},"n":0}}"#), Some("n")),
        (format!(r#"{{"model":"m",{msgs},"n":-3}}"#), Some("n")),
        (format!(r#"{{"model":"m",{msgs},"n":1000000}}"#), Some("n")),
        // Ambiguous bodies: weir would route one model, a provider might bill another.
        (format!(r#"{{"model":"m",{msgs},"model":"other"}}"#), Some("model")),
        (format!(r#"{{"model":"m",{msgs},"mod\u0065l":"other"}}"#), Some("model")),
        (
            format!(r#"{{"model":"m",{msgs},"max_tokens":1,"max_tokens":100000000}}"#),
            Some("max_tokens"),
        ),
        (format!(r#"{{"model":"m",{msgs},"user":"a","user":"b"}}"#), None),
    ];
    for (body, param) in &cases {
        let r = post(&url, body.as_bytes(), &[]);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}");
        assert_eq!(e["param"].as_str(), *param, "{body}: {}", r.body);
    }
    // The same on embeddings and completions.
    for path in ["/v1/embeddings", "/v1/completions"] {
        let r = post(&weir.url(path), br#"{"model":"m","input":"x","model":"m2"}"#, &[]);
        assert_eq!(
            (r.status, r.json()["error"]["param"].as_str()),
            (400, Some("model")),
            "{path}"
        );
    }
    assert_eq!(mock.requests(), 0, "refused bodies never reach the provider");

    // The largest accepted counts multiply without wrapping: 2^24 tokens x 128
    // choices is refused by the budget, not reserved as a few tokens.
    let body = format!(r#"{{"model":"m",{msgs},"max_tokens":16777216,"n":128}}"#);
    let r = post(&url, body.as_bytes(), &[]);
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (429, "rate_limit_exceeded"),
        "{}",
        r.body
    );
    // And a plain request still goes through.
    let body = format!(r#"{{"model":"m",{msgs},"max_tokens":5,"n":2}}"#);
    assert_eq!(post(&url, body.as_bytes(), &[]).status, 200);
}

#[test]
fn duplicate_names_in_a_keys_file_fail_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "keys:\n  - name: alice\n    sha256: {}\n  - name: bob\n    sha256: {}\n  - name: alice\n    sha256: {}\n",
        weir::plugins::api_key::digest_hex("sk-1"),
        weir::plugins::api_key::digest_hex("sk-2"),
        weir::plugins::api_key::digest_hex("sk-3"),
    );
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let cfg = r#"server:
  listen: ["127.0.0.1:8080"]
providers:
  m: { url: "http://127.0.0.1:9000/v1", models: [a] }
plugins:
  keys: { type: api_key, keys_file: keys.yaml }
routes:
  - { name: chat, plugins: [keys], providers: [m] }
"#;
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(WEIR).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let keys_path = dir.path().join("keys.yaml").display().to_string();
    assert!(
        text.contains("plugins.keys.keys_file") && text.contains(&keys_path) && text.contains("'alice'"),
        "{text}"
    );
}

#[test]
fn max_keys_zero_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"server:
  listen: ["127.0.0.1:8080"]
providers:
  m: { url: "http://127.0.0.1:9000/v1", models: [a] }
plugins:
  limits: { type: rate_limit, key: "header:x-tenant", requests: { per_second: 1, burst: 1 }, max_keys: 0 }
routes:
  - { name: chat, plugins: [limits], providers: [m] }
"#;
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(WEIR).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("weir.yaml:6: plugins.limits.max_keys: must be at least 1"),
        "{text}"
    );
}
