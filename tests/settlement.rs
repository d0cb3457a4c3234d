//! Settling token reservations on what providers did: a client that leaves
//! mid-stream is charged its prompt and the tokens streamed so far (not
//! nothing, not the whole reservation), with the real weir binary, a real
//! `weir mock` and the `rate_limit` plugin's token bucket as the ledger.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const BURST: f64 = 100_000.0;

fn ledger_gateway(mock: &Mock) -> Weir {
    let conf = format!(
        "server:\n  listen: [\"127.0.0.1:{{PORT}}\"]\n  threads: 2\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\n\
         providers:\n  p: {{ url: \"{}\", models: [m] }}\n\
         plugins:\n  limits: {{ type: rate_limit, key: global, tokens: {{ per_minute: 1, burst: {BURST} }} }}\n\
         routes:\n  - {{ name: chat, plugins: [limits], providers: [p] }}\n",
        mock.url()
    );
    spawn_weir(&conf, &[])
}

fn body(stream: bool, max_tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "m", "stream": stream, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "count slowly for me please"}],
    }))
    .unwrap()
}

/// Wait until `n` requests have ended (their log phase, which settles
/// first, then counts them).
fn ended(w: &Weir, n: usize) {
    let count = || {
        w.metrics()
            .lines()
            .filter(|l| l.starts_with("weir_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        eventually(Duration::from_secs(5), || count() >= n as f64),
        "{n} requests did not end"
    );
}

fn tokens(w: &Weir, kind: &str) -> f64 {
    metric(
        &w.metrics(),
        "weir_llm_tokens_total",
        &[("provider", "p"), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_client_that_leaves_mid_stream_is_charged_its_prompt_and_what_was_streamed() {
    let mock = spawn_mock(&["--tokens-per-sec", "20", "--completion-tokens", "1000"]);
    let w = ledger_gateway(&mock);

    // Read the stream until a few tokens arrived, then hang up.
    let mut s: TcpStream = raw_request(w.port, "POST", "/v1/chat/completions", &body(true, 1000));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Token pieces in the body (the header has `x-ratelimit-*-tokens`).
    let pieces = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.split_once("\r\n\r\n")
            .map_or(0, |(_, body)| body.matches("\"content\":\"").count())
    };
    while pieces(&seen) < 6 {
        let n = s.read(&mut buf).expect("stream data");
        assert!(n > 0, "stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // The role chunk has `"content":""` too.
    let streamed = (pieces(&seen) - 1) as f64;
    let _ = s.write_all(b"");
    drop(s);

    // weir notices, stops the upstream stream and settles.
    assert!(
        eventually(Duration::from_secs(5), || mock.stats()["in_flight"] == 0),
        "the provider's stream was stopped"
    );
    assert!(
        eventually(Duration::from_secs(5), || tokens(&w, "completion") > 0.0),
        "the aborted stream was counted"
    );
    let (prompt, completion) = (tokens(&w, "prompt"), tokens(&w, "completion"));
    assert!(prompt > 0.0, "the prompt is charged");
    assert!(
        completion >= streamed && completion < 200.0,
        "charged what was streamed ({streamed} pieces seen), not the reservation: {completion}"
    );

    // The bucket holds exactly what was charged: the next request's
    // reservation (its prompt + 1) comes off BURST − (prompt + completion).
    let r = post(&w.url("/v1/chat/completions"), &body(false, 1), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let remaining: f64 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    let expected = BURST - (prompt + completion) - (prompt + 1.0);
    assert!(
        (remaining - expected).abs() <= 2.0,
        "remaining {remaining}, expected {expected} (prompt {prompt}, completion {completion})"
    );
}

#[test]
fn an_answer_the_provider_refused_costs_nothing_and_one_it_reported_costs_its_usage() {
    let mock = spawn_mock(&["--completion-tokens", "7"]);
    let w = ledger_gateway(&mock);
    let url = w.url("/v1/chat/completions");
    let remaining = |r: &Resp| {
        r.header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    // A: answered; its reservation (prompt + 100) shows in the header, its usage is what settles.
    let a = post(&url, &body(false, 100), &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    let reservation = BURST - remaining(&a);
    let usage = &a.json()["usage"];
    let used = usage["prompt_tokens"].as_f64().unwrap() + usage["completion_tokens"].as_f64().unwrap();
    ended(&w, 1);
    // B: the provider refuses it (400): nothing to charge.
    let b = post(&url, &body(false, 100), &[("x-mock-fault", "status:code=400")]);
    assert_eq!(b.status, 400, "{}", b.body);
    ended(&w, 2);
    // C: what is left shows what A and B were charged.
    let c = post(&url, &body(false, 100), &[]);
    let charged_b = BURST - used - reservation - remaining(&c);
    assert!(charged_b.abs() <= 2.0, "the refused request was charged {charged_b}");
    assert!(
        used < reservation,
        "A settled at its usage ({used}), under its reservation ({reservation})"
    );
}
