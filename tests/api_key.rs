//! End-to-end: the api_key plugin.

mod support;
use support::*;

#[test]
fn api_key_statuses() {
    let mock = spawn_mock(&[]);
    let keys = format!(
        "keys:\n  - name: limited\n    sha256: {}\n    models: [fast]\n  - name: any\n    sha256: {}\n",
        weir::plugins::api_key::digest_hex("sk-limited"),
        weir::plugins::api_key::digest_hex("sk-any"),
    );
    let cfg = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"] }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  m: {{ url: "{url}", api_key: sk-upstream, models: [fast, slow] }}
plugins:
  keys: {{ type: api_key, keys_file: keys.yaml }}
routes:
  - {{ name: chat, plugins: [keys], providers: [m] }}
"#,
        url = mock.url()
    );
    let weir = spawn_weir(&cfg, &[("keys.yaml", &keys)]);
    let url = weir.url("/v1/chat/completions");

    let r = post(&url, &chat("fast", false), &[]);
    assert_eq!((r.status, r.error_type().as_str()), (401, "authentication_error"));
    let r = post(&url, &chat("fast", false), &[("authorization", "Bearer sk-wrong")]);
    assert_eq!((r.status, r.error_type().as_str()), (401, "authentication_error"));
    let r = post(&url, &chat("slow", false), &[("authorization", "Bearer sk-limited")]);
    assert_eq!((r.status, r.error_type().as_str()), (403, "permission_error"));
    assert_eq!(mock.requests(), 0, "refusals never reach the provider");

    let r = post(&url, &chat("fast", false), &[("authorization", "Bearer sk-limited")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-mock-authorization"), Some("Bearer sk-upstream"));
    let r = post(&url, &chat("slow", false), &[("x-api-key", "sk-any")]);
    assert_eq!(r.status, 200);

    // /v1/models shows what the key may use.
    let r = get(&weir.url("/v1/models"), &[("authorization", "Bearer sk-limited")]);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["fast"]);
    assert_eq!(get(&weir.url("/v1/models"), &[]).status, 401);
}
