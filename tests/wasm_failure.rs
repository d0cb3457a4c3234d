//! A filter that fails on the response, under `on_error: fail_closed`,
//! never lets the response it could not vet through; under `fail_open` the
//! response passes unchanged. Other requests are served throughout.

mod support;
use std::io::Read;
use std::time::Duration;
use support::*;

fn gateway(mock: &Mock, phase: &str, on_error: &str) -> Weir {
    let module = wasm_module("fault");
    let cfg = format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"] }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m: {{ url: \"{}\", models: [m] }}\n\
         plugins:\n  boom: {{ type: wasm, module: \"{}\", on_error: {on_error}, vms: 2,\n\
         \x20   config: {{ fault: panic, when_header: x-boom, phase: {phase} }} }}\n\
         routes:\n  - {{ name: chat, plugins: [boom], providers: [m] }}\n",
        mock.url(),
        module
    );
    spawn_weir(&cfg, &[])
}

/// Everything the connection delivers until weir closes it.
fn raw_exchange(port: u16, boom: bool) -> String {
    let body = chat("m", false);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{}\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        if boom { "x-boom: 1\r\n" } else { "" },
        body.len()
    );
    use std::io::Write;
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn fail_closed_response_headers_fault_answers_500_not_the_provider() {
    let mock = spawn_mock(&[]);
    let weir = gateway(&mock, "response_headers", "fail_closed");
    let out = raw_exchange(weir.port, true);
    assert!(out.starts_with("HTTP/1.1 500"), "{out}");
    assert!(out.contains("plugin_error"), "{out}");
    assert!(!out.contains("choices"), "the provider's answer is withheld: {out}");
    // Requests that do not trip the filter are served as usual.
    let out = raw_exchange(weir.port, false);
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("choices"), "{out}");
}

#[test]
fn fail_closed_response_body_fault_never_releases_the_body() {
    let mock = spawn_mock(&[]);
    let weir = gateway(&mock, "response_body", "fail_closed");
    let out = raw_exchange(weir.port, true);
    // The header went out before the body failed: the connection is cut and
    // the body the filter held back is never sent.
    assert!(!out.contains("choices"), "the unvetted body is withheld: {out}");
    let m = weir.metrics();
    assert!(
        metric(&m, "weir_plugin_errors_total", &[("plugin", "boom"), ("kind", "trap")]).unwrap_or(0.0) >= 1.0,
        "the fault is counted"
    );
    let out = raw_exchange(weir.port, false);
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("choices"), "{out}");
}

#[test]
fn fail_open_response_fault_passes_the_response_unchanged() {
    let mock = spawn_mock(&[]);
    for phase in ["response_headers", "response_body"] {
        let weir = gateway(&mock, phase, "fail_open");
        let out = raw_exchange(weir.port, true);
        assert!(
            out.starts_with("HTTP/1.1 200") && out.contains("choices"),
            "{phase}: {out}"
        );
    }
}
