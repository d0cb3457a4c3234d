//! `weir demo` starts, and the curl commands it prints work as printed.

mod support;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::*;

#[test]
fn demo_prints_curl_commands_that_work() {
    // The demo config, on free ports so tests can run anywhere.
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(repo().join("conf/demo.yaml")).unwrap();
    for fixed in ["8080", "9901", "9001", "9002"] {
        text = text.replace(&format!("127.0.0.1:{fixed}"), &format!("127.0.0.1:{}", free_port()));
    }
    std::fs::write(dir.path().join("demo.yaml"), &text).unwrap();
    std::fs::copy(repo().join("conf/demo-keys.yaml"), dir.path().join("demo-keys.yaml")).unwrap();

    let mut child = Command::new(WEIR)
        .args(["demo", "-c"])
        .arg(dir.path().join("demo.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _proc = Proc {
        child,
        name: "weir demo".into(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut curls = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.starts_with("curl ") {
            curls.push(line);
        } else if !curls.is_empty() && line.trim().is_empty() {
            break;
        }
    }
    assert!(curls.len() >= 3, "demo printed {curls:?}");
    let gateway_port: u16 = curls[0].split("127.0.0.1:").nth(1).unwrap()[..5]
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap();
    wait_port(gateway_port, "demo gateway");

    for cmd in &curls {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} --max-time 20 -w '\\n%{{http_code}}'"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} failed: {text}");
        assert!(text.trim_end().ends_with("200"), "{cmd} answered: {text}");
        if cmd.contains("\"stream\":true") {
            assert!(text.contains("data: [DONE]"), "{cmd}: {text}");
        } else if cmd.contains("chat/completions") {
            assert!(text.contains("\"choices\""), "{cmd}: {text}");
        } else if cmd.contains("/metrics") {
            assert!(text.contains("weir_requests_total"), "{cmd}: {text}");
        }
    }
}
