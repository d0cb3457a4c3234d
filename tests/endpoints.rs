//! Only the endpoints weir reads go upstream with the operator's key;
//! anything else needs the route's `passthrough`. Dot segments are refused.

mod support;
use std::io::Read;
use support::*;

fn gateway(mock: &Mock, passthrough: &str) -> Weir {
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"] }}\n\
         admin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m], api_key: sk-operator }}\n\
         routes:\n  - {{ name: chat, providers: [m]{passthrough} }}\n",
        mock.url()
    );
    spawn_weir(&cfg, &[])
}

/// Status line of a raw request's answer.
fn raw_status(port: u16, method: &str, path: &str) -> String {
    let mut s = raw_request(port, method, path, b"");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().unwrap_or_default().to_string() + "\n" + &text
}

#[test]
fn unknown_endpoints_are_not_forwarded_unless_listed() {
    let mock = spawn_mock(&[]);
    let weir = gateway(&mock, "");
    for (method, path) in [
        ("GET", "/v1/files"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/files/f-1/content"),
    ] {
        let out = raw_status(weir.port, method, path);
        assert!(out.starts_with("HTTP/1.1 404"), "{method} {path}: {out}");
        assert!(out.contains("passthrough"), "the error says how to allow it: {out}");
    }
    assert_eq!(mock.requests(), 0, "nothing reached the provider");
    // The endpoints weir reads still go through.
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.requests(), 1);

    // Listed under passthrough (GET only): forwarded; other methods still not.
    let weir = gateway(&mock, ", passthrough: [{ path_prefix: /v1/files, methods: [GET] }]");
    let out = raw_status(weir.port, "GET", "/v1/files");
    assert!(!out.contains("passthrough"), "forwarded, not refused by weir: {out}");
    assert!(
        out.to_ascii_lowercase().contains("x-weir-provider: m"),
        "the provider answered: {out}"
    );
    let out = raw_status(weir.port, "POST", "/v1/files");
    assert!(out.starts_with("HTTP/1.1 404") && out.contains("passthrough"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("x-weir-provider"), "{out}");
}

#[test]
fn dot_segments_are_refused() {
    let mock = spawn_mock(&[]);
    let weir = gateway(&mock, ", passthrough: [{ path_prefix: /v1/ }]");
    for path in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/.%2E/x",
        "/v1/./chat/completions",
    ] {
        let out = raw_status(weir.port, "GET", path);
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
    }
    assert_eq!(mock.requests(), 0);
}
