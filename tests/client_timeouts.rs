//! Clients that stall never hold a slot: one that stops reading loses its
//! connection after `server.timeouts.client_write`, one that trickles its
//! body gets a 408 after `server.timeouts.request_body`.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

fn in_flight(weir: &Weir, provider: &str) -> f64 {
    metric(&weir.metrics(), "weir_upstream_in_flight", &[("provider", provider)]).unwrap_or(0.0)
}

#[test]
fn a_client_that_stops_reading_loses_its_slot() {
    // ~14 MB answers: more than the kernel buffers hold (a socket's send
    // buffer grows to 4 MiB here; the tiny window takes almost nothing).
    let mock = spawn_mock(&["--completion-tokens", "1500000"]);
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], timeouts: {{ client_write: 1s }} }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m], bulkhead: {{ max_concurrent: 2, queue: 2, queue_timeout: 2s }} }}\n\
         routes:\n  - {{ name: chat, providers: [m] }}\n",
        mock.url()
    );
    let weir = spawn_weir(&cfg, &[]);
    let body = chat("m", false);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // Two clients take both slots, then never read.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = tiny_window_client(weir.port);
        c.write_all(request.as_bytes()).unwrap();
        c.write_all(&body).unwrap();
        stalled.push(c);
    }
    assert!(
        eventually(Duration::from_secs(5), || in_flight(&weir, "m") == 2.0),
        "both stalled clients hold a slot"
    );
    let stalled_at = Instant::now();
    // Once the buffers are full, within the write timeout (plus the time the
    // mock takes to produce 14 MB), both slots are free again.
    assert!(
        eventually(Duration::from_secs(15), || in_flight(&weir, "m") == 0.0),
        "slots of clients that stopped reading are released"
    );
    let released_after = stalled_at.elapsed();
    eprintln!("slots released {released_after:?} after both were taken");
    // Others are served, and the stalled clients' connections are gone.
    for _ in 0..4 {
        let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match c.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("connection should have been closed, got {e} after {total} bytes"),
            }
        }
        assert!(
            total < 10_000_000,
            "the stalled client did not get the whole answer ({total} bytes)"
        );
    }
}

#[test]
fn a_trickled_body_gets_408_and_takes_no_slot() {
    let mock = spawn_mock(&[]);
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], timeouts: {{ request_body: 1s }} }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m] }}\n\
         routes:\n  - {{ name: chat, providers: [m] }}\n",
        mock.url()
    );
    let weir = spawn_weir(&cfg, &[]);
    let mut c = TcpStream::connect(("127.0.0.1", weir.port)).unwrap();
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"model\":")
        .unwrap();
    let started = Instant::now();
    // Trickle a byte every 300 ms: each read is quick, the whole is not.
    let mut answer = Vec::new();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(5) {
        let _ = c.write_all(b" ");
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(mock.requests(), 0, "nothing reached the provider");
    // Others are served as usual.
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keepalive_idle() {
    let mock = spawn_mock(&[]);
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], timeouts: {{ keepalive_idle: 1s }} }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m] }}\n\
         routes:\n  - {{ name: chat, providers: [m] }}\n",
        mock.url()
    );
    let weir = spawn_weir(&cfg, &[]);
    let mut c = raw_request(weir.port, "POST", "/v1/chat/completions", &chat("m", false));
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Read the whole answer (its content-length says where it ends).
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok());
        len.is_some_and(|n| body.len() >= n)
    };
    while !complete(&got) {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the answer was complete");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    // Kept alive, then closed once idle past keepalive_idle.
    let idle_from = Instant::now();
    let n = c.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "nothing more is sent");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(800), "kept alive a while first: {idle:?}");
    assert!(idle < Duration::from_secs(4), "closed after keepalive_idle: {idle:?}");
}

#[test]
fn connections_past_max_connections_get_503_at_once() {
    let mock = spawn_mock(&[]);
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], max_connections: 2 }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m] }}\n\
         routes:\n  - {{ name: chat, providers: [m] }}\n",
        mock.url()
    );
    let weir = spawn_weir(&cfg, &[]);
    let listener = weir.port.to_string();
    let open = || metric(&weir.metrics(), "weir_client_connections", &[("listener", &listener)]);
    // The readiness probe's connection is gone first (it counts while open).
    assert!(
        eventually(Duration::from_secs(5), || open().unwrap_or(0.0) == 0.0),
        "{:?}",
        open()
    );
    // Two idle connections take the listener's two places.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", weir.port)).unwrap())
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || open() == Some(2.0)),
        "both idle connections are counted: {:?}",
        open()
    );
    let refused_at = Instant::now();
    let mut third = TcpStream::connect(("127.0.0.1", weir.port)).unwrap();
    let body = chat("m", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // weir may answer (and close) before the request is written: a failed
    // write is part of being refused at once.
    let _ = third.write_all(head.as_bytes()).and_then(|_| third.write_all(&body));
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = third.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("queue_full") && text.contains("max_connections"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-weir-queue: connections:{}", weir.port)),
        "{text}"
    );
    assert!(
        refused_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        refused_at.elapsed()
    );
    assert_eq!(mock.requests(), 0, "the refused request went nowhere");
    // A place frees when a connection closes.
    drop(idle);
    assert!(
        eventually(Duration::from_secs(5), || open() == Some(0.0)),
        "closed connections are counted down: {:?}",
        open()
    );
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200, "served again once connections closed: {}", r.body);
    let queue = format!("connections:{}", weir.port);
    assert_eq!(
        metric(
            &weir.metrics(),
            "weir_queue_rejected_total",
            &[("queue", &queue), ("reason", "full")]
        ),
        Some(1.0)
    );
}
