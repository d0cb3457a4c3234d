//! `weir check` on broken configs: exit 1, and the message names file, line
//! and field; `weir serve` on an address it cannot listen on, the same.

mod support;
use std::process::Command;
use std::time::Duration;
use support::*;

const GOOD: &str = r#"server:
  listen: ["127.0.0.1:8080"]
providers:
  m:
    url: http://127.0.0.1:9000/v1
    models: [a]
    bulkhead: { max_concurrent: 2, queue: 2, queue_timeout: 2s }
plugins:
  keys: { type: api_key, keys_file: keys.yaml }
routes:
  - name: chat
    plugins: [keys]
    providers: [m]
"#;

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.yaml"), "keys: []\n").unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(WEIR)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("WEIR_UNSET_FOR_TEST")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap(),
        text.replace(&dir.path().display().to_string(), "DIR"),
    )
}

#[test]
fn good_config_passes() {
    let (code, out) = check(GOOD);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn broken_configs_name_line_and_field() {
    let cases: &[(&str, String, &str)] = &[
        (
            "bad yaml",
            GOOD.replace("  listen: [\"127.0.0.1:8080\"]", "  listen: [\"127.0.0.1:8080\""),
            "DIR/weir.yaml:",
        ),
        (
            "unknown field",
            GOOD.replace("    models: [a]", "    models: [a]\n    colour: red"),
            "DIR/weir.yaml:7: providers.m.colour: unknown field `colour`",
        ),
        (
            "missing env var",
            GOOD.replace(
                "    models: [a]",
                "    models: [a]\n    api_key: ${WEIR_UNSET_FOR_TEST}",
            ),
            "DIR/weir.yaml:7: providers.m.api_key: environment variable WEIR_UNSET_FOR_TEST is not set",
        ),
        (
            "unknown plugin",
            GOOD.replace("plugins: [keys]", "plugins: [keys, nope]"),
            "DIR/weir.yaml:12: routes[0].plugins[1]: unknown plugin 'nope'",
        ),
        (
            "unknown provider",
            GOOD.replace("providers: [m]", "providers: [m, x]"),
            "DIR/weir.yaml:13: routes[0].providers[1]: unknown provider 'x'",
        ),
        (
            "bad duration",
            GOOD.replace("queue_timeout: 2s", "queue_timeout: 2 fortnights"),
            "DIR/weir.yaml:7: providers.m.bulkhead.queue_timeout: invalid duration",
        ),
        (
            "duplicate provider",
            GOOD.replace(
                "plugins:\n",
                "  m:\n    url: http://127.0.0.1:1/v1\n    models: [b]\nplugins:\n",
            ),
            "DIR/weir.yaml:8: providers.m: duplicate name (first defined at line 4)",
        ),
        (
            "duplicate route",
            GOOD.to_string() + "  - name: chat\n    providers: [m]\n",
            "DIR/weir.yaml:14: routes[1].name: duplicate name 'chat'",
        ),
        (
            "unknown plugin type",
            GOOD.replace("type: api_key", "type: magic"),
            "DIR/weir.yaml:9: plugins.keys.type: unknown variant `magic`",
        ),
        (
            "missing keys file",
            GOOD.replace("keys_file: keys.yaml", "keys_file: nope.yaml"),
            "DIR/weir.yaml:9: plugins.keys.keys_file: cannot read keys file",
        ),
        (
            "adaptive floor above the ceiling",
            GOOD.replace("    models: [a]", "    models: [a]\n    adaptive: { floor: 3 }"),
            "providers.m.adaptive.floor: must be at most the bulkhead's max_concurrent (2)",
        ),
        (
            "adaptive backoff out of range",
            GOOD.replace("    models: [a]", "    models: [a]\n    adaptive: { backoff: 1.5 }"),
            "providers.m.adaptive.backoff: must be between 0 and 1",
        ),
        (
            "adaptive tolerance at most 1",
            GOOD.replace("    models: [a]", "    models: [a]\n    adaptive: { tolerance: 0.5 }"),
            "providers.m.adaptive.tolerance: must be above 1",
        ),
    ];
    for (what, text, expected) in cases {
        let (code, out) = check(text);
        assert_eq!(code, 1, "{what}: exit code; output:\n{out}");
        assert!(out.contains(expected), "{what}: expected '{expected}' in:\n{out}");
    }
}

#[test]
fn usage_error_exits_2() {
    let out = Command::new(WEIR).args(["serve", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Pingora alone would try a port in use for 30 s, then panic in its thread
/// and leave the process up with nothing listening.
#[test]
fn serve_on_an_address_in_use_stops_at_once_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.yaml"), "keys: []\n").unwrap();
    let path = dir.path().join("weir.yaml");
    for field in ["server.listen[0]", "admin.listen"] {
        let (port, admin) = (free_port(), free_port());
        let busy = if field == "admin.listen" { admin } else { port };
        let _taken = std::net::TcpListener::bind(("127.0.0.1", busy)).unwrap();
        let text = GOOD.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            + &format!("admin:\n  listen: 127.0.0.1:{admin}\n");
        std::fs::write(&path, &text).unwrap();
        let (code, stderr) = run_until_exit(
            Command::new(WEIR).args(["serve", "-c"]).arg(&path),
            Duration::from_secs(15),
            "weir serve on an address in use",
        );
        assert_eq!(code, Some(1), "{field}: {stderr}");
        let listen_line = format!("127.0.0.1:{busy}");
        let line = 1 + text.lines().position(|l| l.contains(&listen_line)).unwrap();
        let expected = format!(
            "{}:{line}: {field}: cannot listen on 127.0.0.1:{busy}: ",
            path.display()
        );
        assert!(
            stderr.contains(&expected),
            "{field}: expected '{expected}' in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
