//! End-to-end: an HTTPS provider (mock with a self-signed certificate).

mod support;
use support::*;

fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn https_provider_with_custom_ca_and_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "mock");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let mock = spawn_mock(&["--tls-cert", &cert, "--tls-key", &key]);
    let cfg = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"] }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  good: {{ url: "https://localhost:{port}/v1", models: [m], tls: {{ ca_file: "{cert}" }} }}
  bad:  {{ url: "https://localhost:{port}/v1", models: [n], tls: {{ ca_file: "{other_ca}" }} }}
routes:
  - {{ name: chat, providers: [good, bad] }}
"#,
        port = mock.port
    );
    let weir = spawn_weir(&cfg, &[]);
    let r = post(&weir.url("/v1/chat/completions"), &chat("m", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "m");
    let r = post(&weir.url("/v1/chat/completions"), &chat("n", false), &[]);
    assert_eq!(
        (r.status, r.error_type().as_str()),
        (502, "upstream_error"),
        "{}",
        r.body
    );
}
