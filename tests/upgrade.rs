//! Binary upgrade: a new `weir serve --upgrade` takes the listening sockets
//! over from a running weir (Pingora's hand-off on SIGQUIT) while clients keep
//! connecting; no connection is refused or reset.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// One request on a new connection; `Ok` only for a complete 200.
fn one_request(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let body = chat("m", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| format!("write: {e}"))?;
    s.write_all(&body).map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
    if out.starts_with("HTTP/1.1 200") && out.contains("\"choices\"") {
        Ok(())
    } else {
        Err(format!("answer: {}", &out[..out.len().min(120)]))
    }
}

#[test]
fn upgrade_hands_sockets_over_with_no_refused_connection() {
    let mock = spawn_mock(&[]);
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"], threads: 2 }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m1: {{ url: \"{}\", models: [m] }}\nroutes:\n  - {{ name: chat, providers: [m1] }}\n",
        mock.url()
    );
    let mut old = spawn_weir(&cfg, &[]);
    let port = old.port;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut errors) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match one_request(port) {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push(e),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let new = Command::new(WEIR)
        .args(["serve", "--upgrade", "-c"])
        .arg(&old.config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _new = Proc {
        child: new,
        name: "weir (new)".into(),
    };
    std::thread::sleep(Duration::from_millis(500));
    let old_pid = old.proc.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-QUIT", &old_pid])
        .status()
        .unwrap()
        .success());
    // The old process drains and exits; the new one keeps serving.
    assert!(
        eventually(Duration::from_secs(15), || old
            .proc
            .child
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "old weir exited"
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for c in clients {
        let (o, e) = c.join().unwrap();
        ok += o;
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} failed of {}: {:?}",
        errors.len(),
        ok as usize + errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(ok > 100, "{ok} requests");
    assert_eq!(one_request(port), Ok(()), "the new process serves");
    assert_eq!(
        get(&old.admin("/healthz"), &[]).status,
        200,
        "and its admin API took over too"
    );
}
