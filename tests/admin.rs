//! The admin API at the edge: `/config` never shows a credential, the token
//! guards every endpoint but the probes, and `weir check` refuses an empty
//! token or an open admin listener off loopback.

mod support;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn module(name: &str) -> String {
    let p = repo().join(format!("plugins/{name}/{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `bash plugins/build.sh`", p.display());
    p.display().to_string()
}

/// A gateway on `mock` with `admin` as the admin section's flow mapping body.
fn config(mock: &Mock, admin: &str) -> String {
    format!(
        r#"server:
  listen: ["127.0.0.1:{{PORT}}"]
admin: {{ listen: "127.0.0.1:{{ADMIN}}"{admin} }}
providers:
  m:
    url: {url}
    api_key: sk-upstream-secret
    models: [mock-large]
routes:
  - name: chat
    providers: [m]
"#,
        url = mock.url()
    )
}

const TOKEN: &str = "adm-7f3c9e1d";

#[test]
fn config_and_status_redact_every_credential() {
    let mock = spawn_mock(&[]);
    let with_user = mock.url().replace("http://", "http://bob:url-pass-1@");
    let text = format!(
        r#"server:
  listen: ["127.0.0.1:{{PORT}}"]
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  m:
    url: {with_user}
    api_key: sk-upstream-secret
    models: [mock-large]
    health_check: {{ path: /models, interval: 10s }}
plugins:
  lim: {{ type: rate_limit, key: api_key, store: "redis://:redis-pass-2@127.0.0.1:1/0",
         requests: {{ per_second: 5, burst: 5 }} }}
  cache: {{ type: cache, store: "redis://cacheuser:redis-pass-3@127.0.0.1:1/0?password=redis-pass-4&db=0" }}
  tag: {{ type: wasm, module: "{module}",
         config: {{ header: x-config, value: wasm-secret-5 }} }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/, headers: {{ authorization: Bearer route-secret-7 }} }}
    plugins: [lim, cache, tag]
    providers: [m]
"#,
        module = module("config-header")
    );
    let weir = spawn_weir(&text, &[]);
    let c = get(&weir.admin("/config"), &[]);
    assert_eq!(c.status, 200, "{}", c.body);
    for secret in [
        "url-pass-1",
        "bob",
        "redis-pass-2",
        "cacheuser",
        "redis-pass-3",
        "redis-pass-4",
        "wasm-secret-5",
        "route-secret-7",
        "sk-upstream-secret",
    ] {
        assert!(!c.body.contains(secret), "{secret} leaks through /config: {}", c.body);
    }
    let j = c.json();
    let port = mock.port;
    assert_eq!(j["providers"]["m"]["api_key"], "<redacted>");
    assert_eq!(
        j["providers"]["m"]["url"],
        format!("http://<redacted>@127.0.0.1:{port}/v1")
    );
    assert_eq!(j["plugins"]["lim"]["store"], "redis://<redacted>@127.0.0.1:1/0");
    assert_eq!(
        j["plugins"]["cache"]["store"],
        "redis://<redacted>@127.0.0.1:1/0?password=<redacted>&db=0"
    );
    assert_eq!(
        j["plugins"]["tag"]["config"], "<redacted>",
        "a wasm config is hidden whole"
    );
    assert_eq!(j["routes"][0]["match"]["headers"]["authorization"], "<redacted>");
    // What is not a credential still shows.
    assert_eq!(j["plugins"]["lim"]["requests"]["per_second"], 5.0);
    assert_eq!(
        j["plugins"]["lim"]["key"], "<redacted>",
        "a field named `key` is hidden by rule"
    );
    assert!(j["plugins"]["tag"]["module"]
        .as_str()
        .unwrap()
        .ends_with("config-header.wasm"));
    assert_eq!(j["providers"]["m"]["health_check"]["path"], "/models");

    let s = get(&weir.admin("/status"), &[]);
    assert!(!s.body.contains("url-pass-1"), "{}", s.body);
    assert_eq!(
        s.json()["providers"]["m"]["url"],
        format!("http://<redacted>@127.0.0.1:{port}/v1")
    );
}

#[test]
fn token_guards_every_endpoint_but_the_probes() {
    let mock = spawn_mock(&["--models", "mock-large"]);
    let weir = spawn_weir(&config(&mock, &format!(", token: {TOKEN}")), &[]);
    let good = format!("Bearer {TOKEN}");
    let wrong_same_length = format!("Bearer {}", TOKEN.replace('7', "8"));
    let bad: [&[(&str, &str)]; 5] = [
        &[],
        &[("authorization", "Bearer wrong")],
        &[("authorization", &wrong_same_length)],
        &[("authorization", TOKEN)],
        &[("authorization", &format!("Basic {TOKEN}"))],
    ];
    for path in ["/status", "/config", "/metrics"] {
        for h in bad {
            let r = get(&weir.admin(path), h);
            assert_eq!(r.status, 401, "GET {path} with {h:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weir admin\""));
            assert!(!r.body.contains("sk-upstream"), "{}", r.body);
        }
        let r = get(&weir.admin(path), &[("authorization", &good)]);
        assert_eq!(r.status, 200, "GET {path} with the token: {}", r.body);
        // The scheme is case-insensitive (RFC 9110).
        let lower = format!("bearer {TOKEN}");
        assert_eq!(get(&weir.admin(path), &[("authorization", &lower)]).status, 200);
    }
    for h in bad {
        let r = post(&weir.admin("/reload"), b"", h);
        assert_eq!(r.status, 401, "POST /reload with {h:?}: {}", r.body);
    }
    let r = post(&weir.admin("/reload"), b"", &[("authorization", &good)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"], 2);
    // Unknown paths give nothing away without the token.
    assert_eq!(get(&weir.admin("/nope"), &[]).status, 401);
    assert_eq!(get(&weir.admin("/nope"), &[("authorization", &good)]).status, 404);
    // Probes carry no credentials.
    assert_eq!(get(&weir.admin("/healthz"), &[]).status, 200);
    assert_eq!(get(&weir.admin("/readyz"), &[]).status, 200);
}

#[test]
fn metrics_open_opens_only_metrics() {
    let mock = spawn_mock(&["--models", "mock-large"]);
    let weir = spawn_weir(&config(&mock, &format!(", token: {TOKEN}, metrics_open: true")), &[]);
    let m = get(&weir.admin("/metrics"), &[]);
    assert_eq!(m.status, 200);
    assert!(m.body.contains("weir_"), "{}", m.body);
    assert_eq!(get(&weir.admin("/status"), &[]).status, 401);
    assert_eq!(get(&weir.admin("/config"), &[]).status, 401);
    assert_eq!(post(&weir.admin("/reload"), b"", &[]).status, 401);
    assert_eq!(get(&weir.admin("/healthz"), &[]).status, 200);
}

#[test]
fn without_a_token_loopback_admin_stays_open() {
    let mock = spawn_mock(&["--models", "mock-large"]);
    let weir = spawn_weir(&config(&mock, ""), &[]);
    for path in ["/status", "/config", "/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(&weir.admin(path), &[]).status, 200, "GET {path}");
    }
    assert_eq!(post(&weir.admin("/reload"), b"", &[]).status, 200);
}

/// An empty token (an unset-but-empty `${WEIR_ADMIN_TOKEN}`) no longer means
/// "anyone may reload": a reload to it is refused and the old token holds.
#[test]
fn reload_to_an_empty_token_is_refused_and_the_old_token_holds() {
    let mock = spawn_mock(&["--models", "mock-large"]);
    let weir = spawn_weir(&config(&mock, &format!(", token: {TOKEN}")), &[]);
    let original = std::fs::read_to_string(&weir.config).unwrap();
    let good = format!("Bearer {TOKEN}");
    let reload = || post(&weir.admin("/reload"), b"", &[("authorization", &good)]);
    std::fs::write(
        &weir.config,
        original.replace(&format!("token: {TOKEN}"), "token: \"\""),
    )
    .unwrap();
    let r = reload();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("admin.token: must not be empty"), "{}", r.body);
    // Errors that quote a URL lose its user-info too.
    std::fs::write(
        &weir.config,
        original.replace(
            "routes:",
            "plugins:\n  lim: { type: rate_limit, store: \"redis://:leaky-pass@127.0.0.1:notaport/0\" }\nroutes:",
        ),
    )
    .unwrap();
    let r = reload();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body
            .contains("plugins.lim.store: bad redis url 'redis://<redacted>@127.0.0.1:notaport/0'"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("leaky-pass"), "{}", r.body);
    assert_eq!(post(&weir.admin("/reload"), b"", &[]).status, 401);
    let s = get(&weir.admin("/status"), &[("authorization", &good)]);
    assert_eq!(s.json()["generation"], 1);
}

/// Environment variables for `weir check`.
type Env = &'static [(&'static str, &'static str)];

fn check(text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(WEIR)
        .args(["check", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap(),
        text.replace(&dir.path().display().to_string(), "DIR"),
    )
}

fn check_config(admin: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:8080\"]\nadmin:\n{admin}providers:\n  m:\n    url: http://127.0.0.1:9000/v1\n    models: [a]\nroutes:\n  - name: chat\n    providers: [m]\n"
    )
}

#[test]
fn check_refuses_an_empty_token_and_an_open_admin_off_loopback() {
    let cases: &[(&str, String, Env, &str)] = &[
        (
            "empty token",
            check_config("  listen: 127.0.0.1:9901\n  token: \"\"\n"),
            &[],
            "DIR/weir.yaml:5: admin.token: must not be empty",
        ),
        (
            "empty variable",
            check_config("  listen: 127.0.0.1:9901\n  token: ${WEIR_TEST_EMPTY_TOKEN}\n"),
            &[("WEIR_TEST_EMPTY_TOKEN", "")],
            "DIR/weir.yaml:5: admin.token: must not be empty",
        ),
        (
            "blank token",
            check_config("  listen: 127.0.0.1:9901\n  token: \"  \"\n"),
            &[],
            "DIR/weir.yaml:5: admin.token: must not be empty",
        ),
        (
            "all interfaces, no token",
            check_config("  listen: 0.0.0.0:9901\n"),
            &[],
            "DIR/weir.yaml:4: admin.listen: '0.0.0.0:9901' is not a loopback address, so admin.token is required",
        ),
        (
            "public v6, no token",
            check_config("  listen: \"[::]:9901\"\n  metrics_open: true\n"),
            &[],
            "DIR/weir.yaml:4: admin.listen: '[::]:9901' is not a loopback address",
        ),
    ];
    for (what, text, env, expected) in cases {
        let (code, out) = check(text, env);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(expected), "{what}: expected {expected:?} in\n{out}");
    }
    for ok in [
        check_config("  listen: 0.0.0.0:9901\n  token: s3cret\n"),
        check_config("  listen: \"[::1]:9901\"\n"),
        check_config("  listen: 127.0.0.1:9901\n"),
    ] {
        let (code, out) = check(&ok, &[]);
        assert_eq!(code, 0, "{ok}\n{out}");
    }
}

#[test]
fn serve_refuses_an_empty_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let port = free_port();
    let text = check_config("  listen: 127.0.0.1:9901\n  token: \"\"\n")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(WEIR)
        .args(["serve", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("weir serve started with an empty admin token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("admin.token: must not be empty"), "{err}");
}
