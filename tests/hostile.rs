//! Hostile clients against the real gateway and a real `weir mock`: each gets
//! a precise answer (a 4xx from weir or Pingora) or a closed connection,
//! none takes a provider slot it does not use, and weir never panics.
//! Cases with dedicated tests elsewhere (client_timeouts.rs, upstream_edge.rs)
//! get a compact one here too, so this file is the edge checklist. Run with
//! `--nocapture` to see each case's outcome and timing (`[hostile]` lines).

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// A gateway whose stderr goes to a file, so a test can look for panics.
struct Gateway {
    weir: Weir,
    log: std::path::PathBuf,
    _mocks: Vec<Mock>,
}

impl Gateway {
    fn assert_no_panic(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "weir panicked:\n{log}");
    }
    fn in_flight(&self, provider: &str) -> f64 {
        metric(
            &self.weir.metrics(),
            "weir_upstream_in_flight",
            &[("provider", provider)],
        )
        .unwrap_or(0.0)
    }
    /// The gateway's resident set, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.weir.proc.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    /// A plain chat request through the gateway succeeds.
    fn served(&self) {
        let r = post(&self.weir.url("/v1/chat/completions"), &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Provider `m` (one slot, no queue: a request that held it would make the
/// next one a 503) and provider `big` (14 MB answers, for slow readers).
fn gateway() -> Gateway {
    let m = spawn_mock(&[]);
    let big = spawn_mock(&["--completion-tokens", "1500000"]);
    let conf = format!(
        "server:\n  listen: [\"127.0.0.1:{{PORT}}\"]\n  threads: 2\n  timeouts: {{ request_headers: 2s, request_body: 1s, client_write: 1s }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m], bulkhead: {{ max_concurrent: 1, queue: 0 }} }}\n  big: {{ url: \"{}\", models: [big] }}\n\
         routes:\n  - {{ name: chat, providers: [m, big] }}\n",
        m.url(),
        big.url()
    );
    let (weir, log) = spawn_weir_logged(&conf, &[]);
    Gateway {
        weir,
        log,
        _mocks: vec![m, big],
    }
}

/// What a raw exchange got back.
#[derive(Debug)]
struct Outcome {
    text: String,
    /// The gateway closed the connection (EOF or reset).
    closed: bool,
    /// Until the first byte of the answer, if any.
    first: Option<Duration>,
    /// Until the close, or the end of the quiet wait.
    took: Duration,
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
    /// The body of the (last) response.
    fn body(&self) -> &str {
        self.text.rsplit_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Read whatever comes until the gateway closes, or `quiet` passes without a byte.
fn drain(mut s: TcpStream, started: Instant, quiet: Duration) -> Outcome {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first = None;
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                got.extend_from_slice(&buf[..n]);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Err(_) => break true,
        }
    };
    Outcome {
        text: String::from_utf8_lossy(&got).into_owned(),
        closed,
        first,
        took: started.elapsed(),
    }
}

/// Send `bytes` on a fresh connection and collect the answer.
fn exchange(port: u16, bytes: &[u8]) -> Outcome {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    drain(s, started, Duration::from_millis(1500))
}

fn chat_head(extra: &str, body_len: usize) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {body_len}\r\n\r\n")
}

fn report(case: &str, o: &Outcome) {
    eprintln!(
        "[hostile] {case}: status {:?} after {:?}, closed {} ({:?})",
        o.status(),
        o.first,
        o.closed,
        o.took
    );
}

/// Request smuggling and malformed heads: Pingora's parser answers 400 and
/// closes, before weir or any provider sees them.
#[test]
fn malformed_heads_get_400_and_a_closed_connection() {
    let g = gateway();
    let body = chat("m", false);
    let body_s = String::from_utf8(body.clone()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "two different Content-Lengths",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body_s}",
                body.len()
            )
            .into_bytes(),
        ),
        (
            "obs-fold",
            format!("{}{body_s}", chat_head("X-Folded: a\r\n  b\r\n", body.len())).into_bytes(),
        ),
        (
            "CR inside a header value",
            format!("{}{body_s}", chat_head("X-Bad: a\rb\r\n", body.len())).into_bytes(),
        ),
        (
            "NUL inside a header value",
            format!("{}{body_s}", chat_head("X-Bad: a\0b\r\n", body.len())).into_bytes(),
        ),
    ];
    for (case, bytes) in cases {
        let o = exchange(g.weir.port, &bytes);
        report(case, &o);
        assert_eq!(o.status(), Some(400), "{case}: {o:?}");
        assert!(o.closed, "{case}: connection kept open: {o:?}");
    }
    assert_eq!(g._mocks[0].requests(), 0, "nothing reached the provider");
    g.served();
    g.assert_no_panic();
}

/// Framing that Pingora accepts per RFC 9112 but that could smuggle a second
/// request: the body is read by the framing that wins, and the connection is
/// not reused for whatever follows.
#[test]
fn ambiguous_framing_is_never_reused() {
    let g = gateway();
    let body = chat("m", false);
    // CL + TE: chunked wins (RFC 9112 6.3); a request hidden after the
    // chunked body must not be served on the same connection.
    let mut bytes = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    let o = exchange(g.weir.port, &bytes);
    report("CL+TE", &o);
    assert_eq!(o.status(), Some(200), "{o:?}");
    assert_eq!(
        o.text.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request was served: {o:?}"
    );
    assert!(o.closed, "CL+TE connection kept open: {o:?}");
    g.assert_no_panic();
}

/// Bodies that are not what they claim: a clear 400 envelope, no provider call.
#[test]
fn hostile_bodies_get_400_envelopes() {
    let g = gateway();
    // The hostile part comes before `model`, so weir's own parse meets it.
    let mut invalid_utf8 = b"{\"messages\":[{\"role\":\"user\",\"content\":\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend_from_slice(b"\"}],\"model\":\"m\"}");
    let depth = 100_000;
    let mut nested = b"{\"messages\":".to_vec();
    nested.extend(std::iter::repeat_n(b'[', depth));
    nested.extend(std::iter::repeat_n(b']', depth));
    nested.extend_from_slice(b",\"model\":\"m\"}");
    for (case, body) in [("invalid UTF-8 body", invalid_utf8), ("100k-deep JSON body", nested)] {
        let mut bytes = chat_head("", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        let o = exchange(g.weir.port, &bytes);
        report(case, &o);
        assert!(o.body().contains("not valid JSON"), "{case}: {o:?}");
        assert_eq!(o.status(), Some(400), "{case}: {o:?}");
        let v: serde_json::Value = serde_json::from_str(o.body()).unwrap_or_else(|e| panic!("{case}: {e}: {o:?}"));
        assert_eq!(v["error"]["type"], "invalid_request_error", "{case}: {o:?}");
    }
    assert_eq!(g._mocks[0].requests(), 0, "nothing reached the provider");
    g.served();
    g.assert_no_panic();
}

/// A 64 KiB header is within Pingora's limit (1 MiB); one past the limit is
/// a 400. Either way the gateway stays up and serves the next client.
#[test]
fn huge_headers() {
    let g = gateway();
    let body = chat("m", false);
    let big = "a".repeat(64 * 1024);
    let mut bytes = chat_head(&format!("X-Big: {big}\r\n"), body.len()).into_bytes();
    bytes.extend_from_slice(&body);
    let o = exchange(g.weir.port, &bytes);
    report("64 KiB header", &o);
    assert_eq!(o.status(), Some(200), "{o:?}");
    let huge = "a".repeat(1 << 20);
    let o = exchange(
        g.weir.port,
        chat_head(&format!("X-Big: {huge}\r\n"), body.len()).as_bytes(),
    );
    report("1 MiB header", &o);
    assert_eq!(o.status(), Some(400), "{o:?}");
    assert!(o.closed, "{o:?}");
    g.served();
    g.assert_no_panic();
}

/// `Expect: 100-continue`: a 100 at once, then the answer.
#[test]
fn expect_continue() {
    let g = gateway();
    let body = chat("m", false);
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
    s.write_all(chat_head("Expect: 100-continue\r\n", body.len()).as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    s.write_all(&body).unwrap();
    let o = drain(s, started, Duration::from_millis(500));
    report("Expect: 100-continue", &o);
    assert_eq!(o.status(), Some(200), "{o:?}");
    assert!(!o.closed, "keep-alive survives the 100: {o:?}");
    g.assert_no_panic();
}

/// Slow clients: a trickled body gets a 408 after `request_body`, a reader
/// that stops reading loses its connection after `client_write`; neither
/// keeps a provider slot. Slowloris headers: see below.
#[test]
fn slow_clients_are_cut_off() {
    let g = gateway();
    // Slow body: a byte every 200 ms of a 1000-byte body.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
    s.write_all(chat_head("", 1000).as_bytes()).unwrap();
    s.write_all(b"{\"model\":").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(4) {
        let _ = s.write_all(b" ");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if got.is_empty() => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    eprintln!(
        "[hostile] slow body: {:?} after {:?}",
        text.lines().next(),
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Slow reader: asks for 14 MB and reads nothing.
    let body = chat("big", false);
    let mut c = tiny_window_client(g.weir.port);
    c.write_all(chat_head("", body.len()).as_bytes()).unwrap();
    c.write_all(&body).unwrap();
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || g.in_flight("big") == 1.0),
        "the slow reader's request reached the provider"
    );
    assert!(
        eventually(Duration::from_secs(12), || g.in_flight("big") == 0.0),
        "the slow reader's slot is released"
    );
    let o = drain(c, started, Duration::from_secs(3));
    eprintln!(
        "[hostile] slow reader: slot released and connection closed {} after {:?} ({} bytes read)",
        o.closed,
        o.took,
        o.text.len()
    );
    assert!(o.closed, "the slow reader's connection is closed");
    assert!(o.text.len() < 10_000_000, "{} bytes", o.text.len());
    g.served();
    g.assert_no_panic();
}

/// Trickle `head` a few bytes every 300 ms, then wait: the outcome once the
/// gateway closes (or 6 s pass). `started` is when the first byte went out.
fn trickle(mut s: TcpStream, head: &[u8]) -> Outcome {
    let started = Instant::now();
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    for piece in head.chunks(8) {
        if s.write_all(piece).is_err() {
            break; // closed under us: drain tells
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    drain(s, started, Duration::from_secs(6))
}

/// Slowloris: a header trickled a few bytes at a time. Pingora bounds each
/// read (60 s), not the whole; weir closes the connection once the header
/// is not whole `request_headers` (here 2 s) after its first byte (a new
/// connection's: after the accept), with no answer. Meanwhile it holds no
/// provider slot and others are served; idle keep-alive time is not counted.
#[test]
fn slowloris_headers_are_cut_at_request_headers() {
    let g = gateway();
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow-1: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nX-Slow-2: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 2\r\n\r\n{}";
    let port = g.weir.port;
    // A fresh connection trickling its header.
    let fresh = std::thread::spawn(move || trickle(TcpStream::connect(("127.0.0.1", port)).unwrap(), head));
    // A fresh connection that never sends a byte.
    let silent = std::thread::spawn(move || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drain(s, Instant::now(), Duration::from_secs(6))
    });
    // A kept-alive connection: served, idle past the deadline, served again
    // (the idle time is not the header's), then trickling.
    let kept = std::thread::spawn(move || {
        // Weir answers this one itself (404): `m`'s one slot is the probe's.
        let request = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut statuses = Vec::new();
        for pause in [Duration::ZERO, Duration::from_millis(2500)] {
            std::thread::sleep(pause);
            s.write_all(request).unwrap();
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap();
            statuses.push(String::from_utf8_lossy(&buf[..n]).get(9..12).unwrap_or("").to_string());
        }
        (statuses, trickle(s, head))
    });
    // Meanwhile `m`'s single slot stays free: a held slot would make this a 503.
    for _ in 0..4 {
        g.served();
        // (released just after the answer is written)
        assert!(eventually(Duration::from_secs(1), || g.in_flight("m") == 0.0));
        std::thread::sleep(Duration::from_millis(300));
    }
    let cut = Duration::from_secs(2)..Duration::from_millis(3500);
    for (case, o) in [
        ("slowloris headers (new connection)", fresh.join().unwrap()),
        ("silent new connection", silent.join().unwrap()),
    ] {
        report(case, &o);
        assert!(o.closed && o.text.is_empty(), "{case}: {o:?}");
        assert!(cut.contains(&o.took), "{case}: closed after {:?}", o.took);
    }
    let (statuses, o) = kept.join().unwrap();
    report("slowloris headers (kept-alive connection)", &o);
    assert_eq!(statuses, ["404", "404"], "keep-alive idle past request_headers is fine");
    assert!(o.closed && o.text.is_empty(), "{o:?}");
    assert!(cut.contains(&o.took), "closed after {:?}", o.took);
    assert_eq!(
        g._mocks[0].stats()["completions"],
        4,
        "only whole requests reached the provider"
    );
    g.assert_no_panic();
}

/// 2,000 idle keep-alive connections: memory stays bounded and a new client
/// is served while they all stay open.
#[test]
fn two_thousand_idle_keepalive_connections() {
    const N: usize = 2000;
    raise_fd_limit(2 * N as u64 + 512);
    let g = gateway();
    g.served();
    let before = g.rss_kib();
    let started = Instant::now();
    let request = b"GET /healthz-nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(("127.0.0.1", g.weir.port)).unwrap();
        s.write_all(request).unwrap();
        conns.push(s);
    }
    // Every one is answered and kept alive.
    let mut statuses = std::collections::BTreeMap::new();
    let mut buf = [0u8; 4096];
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        *statuses.entry(head.get(9..12).unwrap_or("").to_string()).or_insert(0) += 1;
    }
    let opened = started.elapsed();
    let after = g.rss_kib();
    eprintln!(
        "[hostile] {N} idle keep-alive connections: statuses {statuses:?}, opened in {opened:?}, weir RSS {before} KiB -> {after} KiB"
    );
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    // Measured ~45 KiB per idle connection with the debug build (Pingora's
    // per-connection task and buffers); twice that means something grew.
    assert!(
        after < before + N as u64 * 96,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // They are still open past `request_headers` (2 s: idle keep-alive time
    // is not a header's), and a new client is served meanwhile.
    std::thread::sleep(Duration::from_millis(2500));
    g.served();
    for s in conns.iter_mut().step_by(97) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            other => panic!("an idle keep-alive connection was not kept: {other:?}"),
        }
    }
    drop(conns);
    g.served();
    g.assert_no_panic();
}

/// Both ends of each connection live on this host: make room for them.
fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            assert!(lim.rlim_max >= want, "fd hard limit {} < {want}", lim.rlim_max);
            lim.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}
