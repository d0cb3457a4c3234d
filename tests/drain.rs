//! Graceful termination: SIGTERM while 20 streams are in flight. The
//! listeners close at once (a new connection is refused), every stream
//! finishes whole, and weir exits as soon as the last one has — well
//! before `server.shutdown_grace`. A connection accepted before the
//! signal whose request has not arrived yet is answered too, not reset.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn sigterm_lets_twenty_streams_finish_and_refuses_new_connections() {
    // Each stream: 40 tokens at 20/s, about two seconds.
    let mock = spawn_mock(&["--tokens-per-sec", "20", "--completion-tokens", "40"]);
    let config = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2, shutdown_grace: 20s }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  p: {{ url: "{}", models: [m] }}
routes:
  - {{ name: chat, providers: [p] }}
"#,
        mock.url()
    );
    let mut weir = spawn_weir(&config, &[]);
    let port = weir.port;
    let streams: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = raw_request(port, "POST", "/v1/chat/completions", &chat("m", true));
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                got
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || mock.stats()["in_flight"] == 20),
        "all 20 streams under way: {}",
        mock.stats()
    );

    let signalled = Instant::now();
    let pid = weir.proc.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The listener closes: a new connection is refused.
    assert!(
        eventually(Duration::from_secs(2), || TcpStream::connect(("127.0.0.1", port))
            .is_err()),
        "a new connection was still accepted after SIGTERM"
    );

    for (i, t) in streams.into_iter().enumerate() {
        let body = t.join().unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "stream {i}: {body}");
        assert!(
            body.contains("tok39") && body.contains("data: [DONE]"),
            "stream {i} finished whole: {body}"
        );
    }
    // And weir exits once they are done, not at the end of the grace period.
    let exited = loop {
        if let Some(status) = weir.proc.child.try_wait().unwrap() {
            break Some(status);
        }
        if signalled.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = exited.expect("weir still running 15 s after SIGTERM (grace 20 s)");
    assert!(status.success(), "{status:?}");
    println!(
        "FIGURE | drain | 20 streams of ~2 s finished; weir exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}

#[test]
fn a_connection_accepted_before_sigterm_is_answered_not_reset() {
    let mock = spawn_mock(&[]);
    let config = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2, shutdown_grace: 20s }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  p: {{ url: \"{}\", models: [m] }}\nroutes:\n  - {{ name: chat, providers: [p] }}\n",
        mock.url()
    );
    let mut weir = spawn_weir(&config, &[]);
    // Accepted, with half a request header sent: no request is in flight yet.
    let mut s = TcpStream::connect(("127.0.0.1", weir.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    assert_eq!(
        unsafe { libc::kill(weir.proc.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    // Longer than weir idles at zero requests before it exits.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        weir.proc.child.try_wait().unwrap().is_none(),
        "weir exited with a connection open whose request was on its way"
    );
    let body = chat("m", false);
    let rest = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(rest.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).expect("the answer, not a reset");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"choices\""), "{got}");
    // The connection closes after it (shutting down), and weir exits soon.
    let exited = eventually(Duration::from_secs(10), || {
        weir.proc.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "weir still running {:?} after SIGTERM", signalled.elapsed());
}
