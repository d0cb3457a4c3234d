//! End-to-end: weir reads the usage each provider reports — Responses API,
//! embeddings, `n > 1`, a multi-megabyte answer, compressed answers — and
//! settles exactly that (`weir_llm_tokens_total`); the wire details around
//! it: identity asked upstream, CRLF streams relayed event by event with
//! the usage chunk weir asked for removed.

mod support;
use std::io::Read;
use std::time::{Duration, Instant};
use support::*;

/// One provider `p` serving `m` (upstream `up`), one route, `plugins` on it.
fn gateway(mock: &Mock, plugins: &str, chain: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  p: {{ url: \"{}\", models: {{ m: up }} }}\nplugins:\n{plugins}\
         routes:\n  - {{ name: r, plugins: [{chain}], providers: [p] }}\n",
        mock.url()
    )
}

/// The tokens weir counted for provider `p`, model `m`, once they reach `expected`.
fn settled(weir: &Weir, kind: &str, expected: u64) -> Option<u64> {
    let labels = [("provider", "p"), ("model", "m"), ("kind", kind)];
    metric_settles(weir, "weir_llm_tokens_total", &labels, expected as f64).map(|v| v as u64)
}

/// What the mock generated: (prompt, completion), once nothing is in flight.
fn generated(mock: &Mock) -> (u64, u64) {
    let mut s = mock.stats();
    eventually(Duration::from_secs(3), || {
        s = mock.stats();
        s["in_flight"] == 0
    });
    let u = &s["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// Assert weir settled what the mock generated, and return it.
fn settles_exactly(weir: &Weir, mock: &Mock) -> (u64, u64) {
    let (prompt, completion) = generated(mock);
    assert!(prompt > 0 && completion + prompt > 0);
    assert_eq!(settled(weir, "prompt", prompt), Some(prompt), "prompt tokens");
    assert_eq!(
        settled(weir, "completion", completion),
        Some(completion),
        "completion tokens"
    );
    (prompt, completion)
}

#[test]
fn responses_api_usage_settles_streamed_and_not() {
    let mock = spawn_mock(&["--completion-tokens", "9"]);
    let weir = spawn_weir(&gateway(&mock, "", ""), &[]);
    let url = weir.url("/v1/responses");
    let body = |stream: bool| {
        serde_json::to_vec(&serde_json::json!({
            "model": "m", "stream": stream, "instructions": "be brief",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "what is a weir"}]}],
        }))
        .unwrap()
    };
    let r = post(&url, &body(false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "response");
    let (input, output) = (v["usage"]["input_tokens"].as_u64().unwrap(), 9);
    assert_eq!(v["usage"]["output_tokens"], output);
    assert_eq!(settles_exactly(&weir, &mock), (input, output));

    // Streamed: usage comes in `response.completed`; weir adds no stream_options.
    let r = post(&url, &body(true), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.body.contains("event: response.output_text.delta"));
    let completed = r
        .body
        .split("\n\n")
        .find(|e| e.starts_with("event: response.completed"))
        .expect("response.completed");
    assert!(completed.contains("\"output_tokens\":9"), "{completed}");
    assert_eq!(settles_exactly(&weir, &mock), (2 * input, 2 * output));
    assert_eq!(
        mock.stats()["requests"],
        2,
        "a Responses stream is not refused for an unknown stream option"
    );
}

#[test]
fn responses_stream_with_a_token_limit_is_not_sent_stream_options() {
    // A tokens bucket makes weir ask chat streams for usage; a Responses
    // stream reports it anyway and must reach the provider unchanged.
    let mock = spawn_mock(&["--completion-tokens", "4"]);
    let plugins = "  lim: { type: rate_limit, key: global, tokens: { per_minute: 100000, burst: 100000 } }\n";
    let weir = spawn_weir(&gateway(&mock, plugins, "lim"), &[]);
    let body = br#"{"model":"m","stream":true,"input":"hello there"}"#;
    let r = post(&weir.url("/v1/responses"), body, &[]);
    assert_eq!(r.status, 200);
    let sent = br#"{"model":"up","stream":true,"input":"hello there"}"#;
    assert_eq!(
        r.header("x-mock-body-sha256"),
        Some(sha2_hex(sent).as_str()),
        "the body reached the provider with only the model renamed"
    );
    assert_eq!(settles_exactly(&weir, &mock).1, 4);
}

/// SHA-256 in hex (the mock's `x-mock-body-sha256`).
fn sha2_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn embeddings_usage_has_no_completion() {
    let mock = spawn_mock(&[]);
    let weir = spawn_weir(&gateway(&mock, "", ""), &[]);
    let r = post(
        &weir.url("/v1/embeddings"),
        br#"{"model":"m","input":["one two three","four five"]}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["prompt_tokens"], 5);
    assert_eq!(settles_exactly(&weir, &mock), (5, 0));
}

#[test]
fn n_choices_settle_the_providers_total() {
    let mock = spawn_mock(&["--completion-tokens", "6"]);
    let weir = spawn_weir(&gateway(&mock, "", ""), &[]);
    let url = weir.url("/v1/chat/completions");
    let body = |stream: bool| {
        serde_json::to_vec(&serde_json::json!({
            "model": "m", "n": 4, "stream": stream, "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
            "messages": [{"role": "user", "content": "four ways"}],
        }))
        .unwrap()
    };
    let r = post(&url, &body(false), &[]);
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 4);
    assert_eq!(r.json()["usage"]["completion_tokens"], 24);
    assert_eq!(settles_exactly(&weir, &mock), (5, 24));
    let r = post(&url, &body(true), &[]);
    assert_eq!(r.status, 200);
    for i in 0..4 {
        assert!(r.body.contains(&format!("\"index\":{i}")), "choice {i} streamed");
    }
    assert_eq!(settles_exactly(&weir, &mock), (10, 48));
}

#[test]
fn a_five_megabyte_answer_settles_its_usage() {
    let mock = spawn_mock(&["--completion-tokens", "550000"]);
    let weir = spawn_weir(&gateway(&mock, "", ""), &[]);
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 5_000_000, "{} bytes", r.body.len());
    assert_eq!(r.json()["usage"]["completion_tokens"], 550_000);
    assert_eq!(settles_exactly(&weir, &mock), (5, 550_000));
}

/// A chat request asking for gzip.
fn post_gzip(url: &str, body: &[u8]) -> (u16, Option<String>, Vec<u8>) {
    let r = ureq::post(url)
        .set("content-type", "application/json")
        .set("accept-encoding", "gzip")
        .timeout(Duration::from_secs(30))
        .send_bytes(body)
        .unwrap();
    let (status, enc) = (r.status(), r.header("content-encoding").map(str::to_string));
    let mut raw = Vec::new();
    r.into_reader().read_to_end(&mut raw).unwrap();
    (status, enc, raw)
}

fn gunzip(b: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(b).read_to_string(&mut out).unwrap();
    out
}

#[test]
fn weir_asks_for_identity_and_reads_usage_through_compression_anyway() {
    // A provider that compresses only when asked: weir never asks.
    let polite = spawn_mock(&["--gzip", "--completion-tokens", "8"]);
    let weir = spawn_weir(&gateway(&polite, "", ""), &[]);
    let (status, enc, raw) = post_gzip(&weir.url("/v1/chat/completions"), &chat("m", false));
    assert_eq!((status, enc), (200, None), "weir sent accept-encoding: identity");
    assert!(String::from_utf8(raw).unwrap().contains("tok7"));
    assert_eq!(settles_exactly(&weir, &polite), (5, 8));
    drop(weir);

    // A provider that compresses regardless: the client gets its bytes as
    // sent, weir reads usage from a decompressed copy.
    let rude = spawn_mock(&["--gzip=always", "--completion-tokens", "8"]);
    let weir = spawn_weir(&gateway(&rude, "", ""), &[]);
    let (status, enc, raw) = post_gzip(&weir.url("/v1/chat/completions"), &chat("m", false));
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    let answer: serde_json::Value = serde_json::from_str(&gunzip(&raw)).unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 8);
    assert_eq!(settles_exactly(&weir, &rude), (5, 8));

    // Large enough to be forwarded as it comes: read through the copy too.
    mock_config(&rude, r#"{"completion_tokens": 600000}"#);
    let (status, enc, raw) = post_gzip(&weir.url("/v1/chat/completions"), &chat("m", false));
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    assert!(raw.len() > (1 << 20), "over weir's whole-answer bound compressed");
    assert!(gunzip(&raw).contains("tok599999"));
    assert_eq!(settles_exactly(&weir, &rude), (10, 600_008));

    // A compressed stream passes through whole and readable; its usage counts.
    mock_config(&rude, r#"{"completion_tokens": 5}"#);
    let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]}"#;
    let (status, enc, raw) = post_gzip(&weir.url("/v1/chat/completions"), body);
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    let text = gunzip(&raw);
    assert!(text.contains(" tok4") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(settles_exactly(&weir, &rude), (15, 600_013));
}

/// POST `body` and read the answer as it comes: when `needle` first
/// arrived, when the answer ended, and the answer.
fn timed_stream(url: &str, body: &[u8], needle: &[u8]) -> (Duration, Duration, String) {
    let started = Instant::now();
    let r = ureq::post(url)
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_bytes(body)
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut reader = r.into_reader();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut first = None;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first.is_none() && got.windows(needle.len()).any(|w| w == needle) {
            first = Some(started.elapsed());
        }
    }
    let first = first.expect("the first token arrived");
    let all = started.elapsed();
    assert!(all >= Duration::from_millis(850), "the stream took {all:?}");
    assert!(
        first + Duration::from_millis(500) < all,
        "the first token came at {first:?}, not held until the end ({all:?})"
    );
    (first, all, String::from_utf8(got).unwrap())
}

#[test]
fn crlf_streams_relayed_as_they_come_with_weirs_usage_chunk_removed() {
    let mock = spawn_mock(&["--crlf", "--tokens-per-sec", "10", "--completion-tokens", "10"]);
    let plugins = "  lim: { type: rate_limit, key: global, tokens: { per_minute: 100000, burst: 100000 } }\n";
    let weir = spawn_weir(&gateway(&mock, plugins, "lim"), &[]);
    // A chat stream: weir asked for usage, the client did not.
    let (_, _, text) = timed_stream(&weir.url("/v1/chat/completions"), &chat("m", true), b"tok0");
    assert!(text.ends_with("data: [DONE]\r\n\r\n"), "{text}");
    let events: Vec<&str> = text.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(
        events.len(),
        1 + 10 + 1 + 1,
        "role, tokens, finish, [DONE]: {events:#?}"
    );
    assert!(
        !text.contains("\"usage\":{"),
        "the usage chunk weir asked for is removed"
    );
    assert_eq!(settles_exactly(&weir, &mock), (5, 10));
    // A Responses API stream (forwarded as it comes, not held by a splitter
    // waiting for LF-only blank lines); its usage read from `response.completed`.
    let body = br#"{"model":"m","stream":true,"input":"hello there"}"#;
    let (_, _, text) = timed_stream(&weir.url("/v1/responses"), body, b"tok0");
    assert!(text.contains("\r\n\r\nevent: response.completed\r\n"), "{text}");
    assert_eq!(settles_exactly(&weir, &mock), (10, 20));
}

#[test]
fn mock_counts_what_it_streamed_to_a_client_that_left() {
    let mock = spawn_mock(&["--tokens-per-sec", "50", "--completion-tokens", "1000"]);
    let mut s = raw_request(mock.port, "POST", "/v1/chat/completions", &chat("m", true));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"tok10") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let (prompt, completion) = generated(&mock);
    assert_eq!(prompt, 5);
    assert!(
        (11..100).contains(&completion),
        "counted the {completion} tokens written before the client left, not the 1000 planned"
    );
}
