//! `weir mock` fault modes over real HTTP on loopback: the real binary,
//! a raw client that sees exactly which bytes came and when the connection
//! closed.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Send one request (`Connection: close`, so the answer ends with the connection).
fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// Everything the mock sends until it closes the connection (5 s at most).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("the mock did not close the connection ({e}); got {bytes:?}"));
    bytes
}

/// What the mock sends until it falls silent for 300 ms; it must not close.
fn until_quiet(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("the connection closed; held ones stay open. Got {seen:?}"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return seen,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A raw response: status line and headers, and the body bytes as sent.
struct Raw {
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn parse(bytes: &[u8]) -> Raw {
        let end = find(bytes, b"\r\n\r\n").unwrap_or_else(|| panic!("no complete header in {bytes:?}"));
        Raw {
            head: String::from_utf8(bytes[..end].to_vec()).unwrap(),
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The decoded chunked body, and whether it ended with the last chunk.
    fn dechunk(&self) -> (String, bool) {
        let mut rest = self.body.as_slice();
        let mut out = Vec::new();
        loop {
            let Some(eol) = find(rest, b"\r\n") else {
                return (String::from_utf8(out).unwrap(), false);
            };
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                return (String::from_utf8(out).unwrap(), rest == b"\r\n");
            }
            assert!(rest.len() >= size + 2, "a chunk was cut short: {rest:?}");
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `data:` payloads of an SSE body, in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE event: {e:?}"))
        })
        .collect()
}

/// The content pieces of a chat stream's events (the role chunk's empty one left out).
fn pieces(events: &[&str]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .filter(|p| !p.is_empty())
        .collect()
}

const CHAT: &str = "/v1/chat/completions";

#[test]
fn reset_closes_without_a_byte() {
    let mock = spawn_mock(&[]);
    let mut s = send(mock.port, "POST", CHAT, &[("x-mock-fault", "reset")], &chat("m", false));
    assert_eq!(read_to_close(&mut s), b"");
    assert_eq!(mock.stats()["faults"]["reset"], 1);
}

#[test]
fn cut_stream_sends_exactly_n_tokens_then_drops() {
    let mock = spawn_mock(&["--completion-tokens", "8"]);
    let mut s = send(
        mock.port,
        "POST",
        CHAT,
        &[("x-mock-fault", "cut:after=3")],
        &chat("m", true),
    );
    let raw = Raw::parse(&read_to_close(&mut s));
    assert_eq!(raw.status(), 200);
    let (body, complete) = raw.dechunk();
    assert!(!complete, "no terminating chunk after a cut: {body:?}");
    let events = events(&body);
    assert_eq!(pieces(&events), ["tok0", " tok1", " tok2"]);
    assert_eq!(events.len(), 4, "role chunk and 3 tokens: {events:?}");
    assert!(
        !body.contains("[DONE]") && !body.contains("finish_reason\":\"stop"),
        "{body}"
    );
    assert_eq!(mock.stats()["completions"], 0);
}

#[test]
fn cut_answer_is_shorter_than_its_content_length() {
    let mock = spawn_mock(&[]);
    let mut s = send(mock.port, "POST", CHAT, &[("x-mock-fault", "cut")], &chat("m", false));
    let raw = Raw::parse(&read_to_close(&mut s));
    let length: usize = raw.header("content-length").unwrap().parse().unwrap();
    assert_eq!(raw.status(), 200);
    assert!(
        !raw.body.is_empty() && raw.body.len() < length,
        "{} of {length}",
        raw.body.len()
    );
}

#[test]
fn status_first_then_normal_answers() {
    let mock = spawn_mock(&[]);
    let spec = [("x-mock-fault", "status:code=429,first=1,retry_after=1")];
    let first = post(&format!("{}/chat/completions", mock.url()), &chat("m", false), &spec);
    assert_eq!(first.status, 429, "{}", first.body);
    assert_eq!(first.header("retry-after"), Some("1"));
    assert_eq!(first.error_type(), "rate_limit_exceeded");
    let second = post(&format!("{}/chat/completions", mock.url()), &chat("m", false), &spec);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("retry-after"), None);
    assert_eq!(
        mock.stats()["faults"],
        json!({"status:code=429,first=1,retry_after=1": 2})
    );

    let dated = [("x-mock-fault", "status:code=503,retry_after_date=120")];
    let r = post(&format!("{}/chat/completions", mock.url()), &chat("m", false), &dated);
    assert_eq!(r.status, 503);
    let date = r.header("retry-after").expect("Retry-After");
    assert!(date.ends_with(" GMT") && date.len() == 29, "an IMF-fixdate: {date}");
}

#[test]
fn cli_specs_per_model_global_and_header_override() {
    let mock = spawn_mock(&["--fault", "broken=status:code=503", "--fault", "context_length"]);
    let url = format!("{}/chat/completions", mock.url());
    let broken = post(&url, &chat("broken", false), &[]);
    assert_eq!(broken.status, 503, "{}", broken.body);
    assert_eq!(broken.error_type(), "server_error");
    let other = post(&url, &chat("other", false), &[]);
    assert_eq!(other.status, 400);
    assert_eq!(other.json()["error"]["code"], "context_length_exceeded");
    // The header wins over both; `none` answers normally.
    let healed = post(&url, &chat("broken", false), &[("x-mock-fault", "none")]);
    assert_eq!(healed.status, 200, "{}", healed.body);
    // Health checks (GET /models) only heed `flap`.
    assert_eq!(get(&format!("{}/models", mock.url()), &[]).status, 200);
    let stats = mock.stats();
    assert_eq!(stats["faults"]["broken=status:code=503"], Value::Null);
    assert_eq!(stats["faults"]["status:code=503"], 1);
    assert_eq!(stats["faults"]["context_length"], 1);
    assert_eq!(stats["faults"]["none"], 1);
}

#[test]
fn fault_header_name_is_configurable() {
    let mock = spawn_mock(&["--fault-header", "X-Fault-A"]);
    let url = format!("{}/chat/completions", mock.url());
    let ignored = post(&url, &chat("m", false), &[("x-mock-fault", "status:code=502")]);
    assert_eq!(ignored.status, 200, "{}", ignored.body);
    let heeded = post(&url, &chat("m", false), &[("x-fault-a", "status:code=502")]);
    assert_eq!(heeded.status, 502, "{}", heeded.body);
}

#[test]
fn bad_specs_are_refused() {
    let mock = spawn_mock(&[]);
    let r = post(
        &format!("{}/chat/completions", mock.url()),
        &chat("m", false),
        &[("x-mock-fault", "cut:after=many")],
    );
    assert_eq!(r.status, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("x-mock-fault") && message.contains("after"),
        "{message}"
    );

    let (code, stderr) = run_until_exit(
        Command::new(WEIR)
            .args(["mock", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--fault", "gpt=explode:now=1"]),
        Duration::from_secs(10),
        "weir mock started with a bad --fault",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("gpt=explode:now=1") && stderr.contains("unknown fault `explode`"),
        "{stderr}"
    );
}

#[test]
fn hang_and_stall_hold_the_connection_until_the_client_leaves() {
    let mock = spawn_mock(&[]);
    let mut hung = send(mock.port, "POST", CHAT, &[("x-mock-fault", "hang")], &chat("m", false));
    let mut stalled = send(
        mock.port,
        "POST",
        CHAT,
        &[("x-mock-fault", "stall:after=2")],
        &chat("m", true),
    );
    let mut stalled_answer = send(mock.port, "POST", CHAT, &[("x-mock-fault", "stall")], &chat("m", false));
    assert_eq!(until_quiet(&mut hung), b"", "a hung request gets nothing");

    // The stalled stream shows its header and two tokens, then nothing.
    let raw = Raw::parse(&until_quiet(&mut stalled));
    assert_eq!(raw.status(), 200);
    let (body, complete) = raw.dechunk();
    assert!(!complete);
    assert_eq!(pieces(&events(&body)), ["tok0", " tok1"]);
    // A stalled answer shows its header (Pingora would keep it buffered) and no body.
    let raw = Raw::parse(&until_quiet(&mut stalled_answer));
    assert_eq!(raw.status(), 200);
    assert!(raw.header("content-length").is_some_and(|l| l != "0"));
    assert_eq!(raw.body, b"");
    assert_eq!(mock.stats()["in_flight"], 3, "held requests stay in flight");

    drop((hung, stalled, stalled_answer));
    assert!(
        eventually(Duration::from_secs(3), || mock.stats()["in_flight"] == 0),
        "the mock notices the clients left: {}",
        mock.stats()
    );
}

#[test]
fn no_done_and_malformed_end_the_body_cleanly_early() {
    let mock = spawn_mock(&["--completion-tokens", "4"]);
    let mut s = send(
        mock.port,
        "POST",
        CHAT,
        &[("x-mock-fault", "no_done")],
        &chat("m", true),
    );
    let (body, complete) = Raw::parse(&read_to_close(&mut s)).dechunk();
    assert!(complete, "a clean end: {body:?}");
    assert_eq!(pieces(&events(&body)).concat(), "tok0 tok1 tok2 tok3");
    assert!(
        !body.contains("[DONE]") && !body.contains("finish_reason\":\"stop"),
        "{body}"
    );

    let mut s = send(
        mock.port,
        "POST",
        CHAT,
        &[("x-mock-fault", "malformed:after=1")],
        &chat("m", true),
    );
    let (body, complete) = Raw::parse(&read_to_close(&mut s)).dechunk();
    assert!(complete, "a clean end: {body:?}");
    let events = events(&body);
    assert_eq!(pieces(&events), ["tok0"]);
    assert_eq!(events.last(), Some(&r#"{"choices": [ not json"#));
    assert!(!body.contains("[DONE]"));
}

#[test]
fn slow_first_token_sends_the_role_chunk_first() {
    let mock = spawn_mock(&["--completion-tokens", "2"]);
    let start = Instant::now();
    let mut s = send(
        mock.port,
        "POST",
        CHAT,
        &[("x-mock-fault", "slow_first_token:delay=400ms")],
        &chat("m", true),
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut role_at = None;
    let mut token_at = None;
    while token_at.is_none() {
        let n = s.read(&mut buf).expect("the stream goes on");
        assert!(n > 0, "closed early: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if role_at.is_none() && text.contains("\"role\":\"assistant\"") {
            role_at = Some(start.elapsed());
        }
        if text.contains("tok0") {
            token_at = Some(start.elapsed());
        }
    }
    let (role_at, token_at) = (role_at.expect("role chunk before the first token"), token_at.unwrap());
    assert!(
        token_at - role_at >= Duration::from_millis(350),
        "{role_at:?} then {token_at:?}"
    );
}

#[test]
fn flap_answers_503_also_to_health_checks() {
    let mock = spawn_mock(&["--fault", "flap:down=30s"]);
    let models = get(&format!("{}/models", mock.url()), &[]);
    assert_eq!(models.status, 503, "{}", models.body);
    let chat_r = post(&format!("{}/chat/completions", mock.url()), &chat("m", false), &[]);
    assert_eq!(chat_r.status, 503);
    // A header flap is timed from its own first request.
    let header = [("x-mock-fault", "flap:down=400ms")];
    assert_eq!(get(&format!("{}/models", mock.url()), &header).status, 503);
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(get(&format!("{}/models", mock.url()), &header).status, 200);
}

#[test]
fn prefill_is_continued_or_rejected() {
    let mock = spawn_mock(&["--completion-tokens", "5"]);
    let body = serde_json::to_vec(&json!({
        "model": "m",
        "stream": true,
        "messages": [
            {"role": "user", "content": "count"},
            {"role": "assistant", "content": "tok0 tok1"},
        ],
    }))
    .unwrap();
    let mut s = send(mock.port, "POST", CHAT, &[], &body);
    let (text, complete) = Raw::parse(&read_to_close(&mut s)).dechunk();
    assert!(complete);
    let events = events(&text);
    assert_eq!(
        format!("tok0 tok1{}", pieces(&events).concat()),
        "tok0 tok1 tok2 tok3 tok4"
    );
    assert_eq!(events.last(), Some(&"[DONE]"));

    let refused = post(
        &format!("{}/chat/completions", mock.url()),
        &body,
        &[("x-mock-fault", "reject_prefill")],
    );
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "prefill_unsupported");
    let plain = post(
        &format!("{}/chat/completions", mock.url()),
        &chat("m", false),
        &[("x-mock-fault", "reject_prefill")],
    );
    assert_eq!(plain.status, 200);
    let stats = mock.stats();
    assert_eq!(stats["prefills"], 1);
    assert_eq!(stats["faults"]["reject_prefill"], 2);

    let reset = post(&format!("http://127.0.0.1:{}/mock/stats/reset", mock.port), b"", &[]);
    assert_eq!(reset.json()["prefills"], 0);
    assert_eq!(reset.json()["faults"], json!({}));
}

#[test]
fn a_mock_on_a_port_in_use_stops_at_once_naming_it() {
    let port = free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let (code, stderr) = run_until_exit(
        Command::new(WEIR).args(["mock", "--listen", &listen]),
        Duration::from_secs(10),
        "weir mock on a port in use",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with(&format!("cannot listen on {listen}: ")), "{stderr}");
}
