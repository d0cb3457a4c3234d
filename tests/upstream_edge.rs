//! End-to-end: misbehaving providers and edge-case headers through the real
//! gateway. Providers here are small raw TCP servers (the mock cannot send
//! interim heads or reset after reading a request); each records what it got.

mod support;
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// One request as a raw provider read it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    /// The value of a request header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// What a raw provider does with a request it read whole.
enum Act {
    /// Write these bytes and keep the connection for the next request.
    Write(Vec<u8>),
    /// Write these parts 100 ms apart, keep the connection.
    WriteParts(Vec<Vec<u8>>),
    /// Write these bytes, idle `Duration` (long enough to be pooled), close.
    WriteThenClose(Vec<u8>, Duration),
    /// Reset the connection (RST, no answer).
    Reset,
    /// Close the connection cleanly (FIN) without answering.
    Close,
}

/// A provider on a raw socket: `act(n, req)` decides, `n` counting the
/// requests on that connection from 0.
struct RawProvider {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawProvider {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

fn raw_provider(act: impl Fn(usize, &Seen) -> Act + Send + Sync + 'static) -> RawProvider {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let act = Arc::new(act);
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (act, record) = (act.clone(), record.clone());
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                for n in 0.. {
                    let Some(req) = read_request(&mut conn) else { return };
                    record.lock().push(req.clone());
                    match act(n, &req) {
                        Act::Write(bytes) => {
                            if conn.write_all(&bytes).is_err() {
                                return;
                            }
                        }
                        Act::WriteParts(parts) => {
                            for part in parts {
                                if conn.write_all(&part).is_err() {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                        Act::WriteThenClose(bytes, idle) => {
                            let _ = conn.write_all(&bytes);
                            std::thread::sleep(idle);
                            return;
                        }
                        Act::Reset => {
                            reset(conn);
                            return;
                        }
                        Act::Close => return,
                    }
                }
            });
        }
    });
    RawProvider { port, seen }
}

/// Close with SO_LINGER 0: the peer gets a RST, not a FIN.
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// Read one request (head, then a Content-Length body); `None` at EOF.
fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut req = Seen { head, body: Vec::new() };
    let len: usize = req.header("content-length").map_or(0, |v| v.parse().unwrap());
    req.body = vec![0; len];
    conn.read_exact(&mut req.body).ok()?;
    Some(req)
}

/// A complete JSON 200.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// A gateway whose stderr goes to a file, so a test can look for panics.
struct Gateway {
    weir: Weir,
    log: std::path::PathBuf,
}

impl Gateway {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "weir panicked:\n{log}");
    }
}

fn gateway(providers: &[(&str, &str, &str)], route_extra: &str) -> Gateway {
    let mut conf = String::from(
        "server:\n  listen: [\"127.0.0.1:{PORT}\"]\n  threads: 2\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nproviders:\n",
    );
    for (name, url, extra) in providers {
        conf += &format!(
            "  {name}:\n    url: {url}\n    api_key: sk-upstream\n    models: [m1]\n    timeouts: {{ first_byte: 5s, idle: 5s }}\n{extra}"
        );
    }
    let names: Vec<&str> = providers.iter().map(|p| p.0).collect();
    conf += &format!(
        "routes:\n  - name: chat\n    match: {{ path_prefix: /v1/ }}\n    providers: [{}]\n{route_extra}",
        names.join(", ")
    );
    let (weir, log) = spawn_weir_logged(&conf, &[]);
    Gateway { weir, log }
}

fn chat_url(g: &Gateway) -> String {
    g.weir.url("/v1/chat/completions")
}

// ---- interim (1xx) responses from providers ----

#[test]
fn provider_interim_heads_are_skipped() {
    let p = raw_provider(|_, _| {
        let mut out =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n".to_vec();
        out.extend(ok(ANSWER));
        Act::Write(out)
    });
    let g = gateway(&[("raw", &p.url(), "")], "");
    for _ in 0..3 {
        let r = post(&chat_url(&g), &chat("m1", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, ANSWER);
    }
    assert_eq!(p.seen().len(), 3);
    g.assert_no_panic();
}

#[test]
fn provider_interim_head_in_its_own_packet_is_skipped() {
    // The 100 arrives alone, the final answer later: two separate reads.
    let p = raw_provider(|_, _| Act::WriteParts(vec![b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), ok(ANSWER)]));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, ANSWER);
    g.assert_no_panic();
}

#[test]
fn endless_interim_heads_are_a_502_not_a_hang() {
    let p = raw_provider(|_, _| Act::Write(b"HTTP/1.1 100 Continue\r\n\r\n".repeat(50)));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let started = Instant::now();
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_type(), "upstream_error");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The process still serves.
    let r = get(&g.weir.url("/v1/models"), &[]);
    assert_eq!(r.status, 200);
    g.assert_no_panic();
}

// ---- a client sending Expect: 100-continue ----

/// Read one response head from a raw client connection.
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed after {buf:?}");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

/// Read one response (head and Content-Length body) from a raw client connection.
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let head = read_head(s);
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn client_expect_continue_gets_100_at_once_then_the_answer() {
    let p = raw_provider(|_, _| Act::Write(ok(ANSWER)));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let body = chat("m1", false);
    let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Twice on one connection: the 100 must not cost the client its keep-alive.
    for i in 0..2 {
        let started = Instant::now();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 100"), "{head}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        s.write_all(&body).unwrap();
        let (head, answer) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(answer, ANSWER.as_bytes());
        let seen = p.seen();
        assert_eq!(seen.len(), i + 1);
        assert_eq!(seen[i].body, body);
        // weir has the whole body before it sends: Expect is not forwarded.
        assert_eq!(seen[i].header("expect"), None, "{}", seen[i].head);
    }

    // Without a body: the answer itself, at once, and no 100.
    for req in [
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        s.write_all(req.as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 400"), "{head}");
    }
    g.assert_no_panic();
}

#[test]
fn client_expect_continue_refused_before_the_body_gets_no_100() {
    // A declared body over the limit: the 413 comes at once, no 100 before it.
    let p = raw_provider(|_, _| Act::Write(ok(ANSWER)));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert!(p.seen().is_empty());
}

// ---- no silent replay of a request the provider may have received ----

#[test]
fn reset_after_a_full_request_on_a_pooled_connection_is_not_replayed() {
    pooled_failure_is_not_replayed(|| Act::Reset);
}

#[test]
fn close_after_a_full_request_on_a_pooled_connection_is_not_replayed() {
    pooled_failure_is_not_replayed(|| Act::Close);
}

/// Each connection: the first request is answered, the second one is read
/// whole and then the connection fails with `fail`.
fn pooled_failure_is_not_replayed(fail: fn() -> Act) {
    let p = raw_provider(move |n, _| if n == 0 { Act::Write(ok(ANSWER)) } else { fail() });
    let g = gateway(&[("raw", &p.url(), "")], "    retries: 0\n");
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.seen().len(), 1);
    // Reuses the pooled connection (threads: 2, so allow for the other pool).
    let mut resets = 0;
    for _ in 0..4 {
        let before = p.seen().len();
        let r = post(&chat_url(&g), &chat("m1", false), &[]);
        let after = p.seen().len();
        assert_eq!(after, before + 1, "one request, one arrival at the provider");
        if r.status == 502 {
            assert_eq!(r.error_type(), "upstream_error", "{}", r.body);
            resets += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    assert!(resets >= 1, "a pooled connection was reused at least once");
    g.assert_no_panic();
}

#[test]
fn reset_after_a_full_request_on_a_new_connection_is_seen_once() {
    let p = raw_provider(|_, _| Act::Reset);
    let g = gateway(&[("raw", &p.url(), "")], "    retries: 0\n");
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_type(), "upstream_error");
    assert_eq!(p.seen().len(), 1);
}

#[test]
fn reset_with_a_retry_goes_to_the_next_provider_and_counts() {
    let bad = raw_provider(|_, _| Act::Reset);
    let good = raw_provider(|_, _| Act::Write(ok(ANSWER)));
    let g = gateway(
        &[("bad", &bad.url(), ""), ("good", &good.url(), "")],
        "    retries: 1\n",
    );
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-provider"), Some("good"));
    assert_eq!(bad.seen().len(), 1);
    assert_eq!(good.seen().len(), 1);
    let m = g.weir.metrics();
    assert_eq!(
        metric(&m, "weir_retries_total", &[("route", "chat"), ("reason", "reset")]),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn a_pooled_connection_closed_while_idle_is_replaced_transparently() {
    // Every connection answers once, idles (weir pools it), then is closed.
    let p = raw_provider(|_, _| Act::WriteThenClose(ok(ANSWER), Duration::from_millis(100)));
    let g = gateway(&[("raw", &p.url(), "")], "    retries: 0\n");
    for i in 1..=4 {
        let r = post(&chat_url(&g), &chat("m1", false), &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(p.seen().len(), i, "each request seen once");
        std::thread::sleep(Duration::from_millis(300));
    }
    g.assert_no_panic();
}

/// weir's sockets to `port` in CLOSE_WAIT: the provider closed them and
/// weir has not (from /proc/net/tcp and tcp6: state 08).
fn half_closed_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f[3] == "08"
        })
        .count()
}

#[test]
fn a_pooled_connection_its_provider_closed_is_closed_without_waiting_for_a_request() {
    // Answered, pooled, then closed by the provider: weir's pool notices by
    // itself (its sweep runs every second) instead of keeping a half-closed
    // socket until the next request to that provider.
    let p = raw_provider(|_, _| Act::WriteThenClose(ok(ANSWER), Duration::from_millis(100)));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let r = post(&chat_url(&g), &chat("m1", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    while half_closed_to(p.port) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(half_closed_to(p.port), 0, "weir kept a connection its provider closed");
    g.assert_no_panic();
}

// ---- headers ----

#[test]
fn connection_named_headers_and_client_org_are_not_forwarded() {
    let p = raw_provider(|_, _| Act::Write(ok(ANSWER)));
    let g = gateway(&[("raw", &p.url(), "")], "");
    let r = post(
        &chat_url(&g),
        &chat("m1", false),
        &[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "s3cret"),
            ("x-kept", "yes"),
            ("openai-organization", "org-client"),
            ("openai-project", "proj-client"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &p.seen()[0];
    assert_eq!(seen.header("x-secret-hop"), None, "{}", seen.head);
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(seen.header("openai-organization"), None, "{}", seen.head);
    assert_eq!(seen.header("openai-project"), None, "{}", seen.head);
    assert_eq!(seen.header("authorization").as_deref(), Some("Bearer sk-upstream"));
}

#[test]
fn client_org_is_forwarded_with_forward_client_org() {
    let p = raw_provider(|_, _| Act::Write(ok(ANSWER)));
    let g = gateway(&[("raw", &p.url(), "    forward_client_org: true\n")], "");
    let r = post(
        &chat_url(&g),
        &chat("m1", false),
        &[("openai-organization", "org-client"), ("openai-project", "proj-client")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &p.seen()[0];
    assert_eq!(seen.header("openai-organization").as_deref(), Some("org-client"));
    assert_eq!(seen.header("openai-project").as_deref(), Some("proj-client"));
}
