//! Proxy-Wasm conformance: weir as a host behaves as Envoy documents, for
//! each gap of issue 14, checked with `plugins/conformance` (a header-driven
//! filter built with the proxy-wasm Rust SDK: `x-conf` names the case, the
//! filter reports what it saw in `x-seen-*` / `x-prop-*` headers) and
//! `plugins/abi010` (a filter written against ABI 0.1.0).

mod support;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

/// Providers `m1` (the mock the routes use) and `auth` (a second mock only
/// the tick-driven root context calls); one route per plugin set.
fn config(mock: &Mock, auth: &Mock) -> String {
    let conf = wasm_module("conformance");
    let plugins = [
        format!(
            "  conf_str: {{ type: wasm, module: \"{conf}\", config: \"The secret to life\", vm_config: vm-text,\n\
             \x20   root_id: my_root, limits: {{ pause: 300ms }} }}"
        ),
        format!("  conf_json_str: {{ type: wasm, module: \"{conf}\", config: '{{\"a\": 1}}' }}"),
        format!(
            "  conf_tick: {{ type: wasm, module: \"{conf}\", vms: 1,\n\
             \x20   config: {{ tick_ms: 20, tick_upstream: auth, queue: q1 }} }}"
        ),
        format!("  conf_other: {{ type: wasm, module: \"{conf}\", vm_id: other }}"),
        format!(
            "  confh: {{ type: wasm, module: \"{}\", config: {{ header: x-config, value: from-config }} }}",
            wasm_module("config-header")
        ),
        format!("  abi: {{ type: wasm, module: \"{}\" }}", wasm_module("abi010")),
        format!(
            "  stamp: {{ type: wasm, module: \"{}\", root_id: as_stamp, config: stamped }}",
            wasm_module("as-stamp")
        ),
    ]
    .join("\n");
    let route = |name: &str, plugins: &str| {
        format!("  - {{ name: {name}, match: {{ path_prefix: /{name}/ }}, plugins: [{plugins}], providers: [m1] }}\n")
    };
    format!(
        "server: {{ listen: [\"127.0.0.1:{{PORT}}\"] }}\nadmin: {{ listen: \"127.0.0.1:{{ADMIN}}\" }}\n\
         providers:\n  m1: {{ url: \"{}\", models: [m, secret-model] }}\n  auth: {{ url: \"{}\", models: [unused] }}\n\
         plugins:\n{plugins}\nroutes:\n{}{}{}{}{}{}{}",
        mock.url(),
        auth.url(),
        route("str", "conf_str"),
        route("json", "conf_json_str"),
        route("tick", "conf_tick"),
        route("other", "conf_other"),
        route("outer", "confh, conf_str"),
        route("abi", "abi, conf_str"),
        route("as", "stamp"),
    )
}

struct Env {
    mock: Mock,
    auth: Mock,
    weir: Weir,
    log: std::path::PathBuf,
}

fn start() -> Env {
    let mock = spawn_mock(&[]);
    let auth = spawn_mock(&["--models", "unused"]);
    let (weir, log) = spawn_weir_logged(&config(&mock, &auth), &[]);
    Env { mock, auth, weir, log }
}

impl Env {
    fn chat(&self, route: &str, case: &str, extra: &[(&str, &str)]) -> Resp {
        let mut headers = vec![("x-conf", case)];
        headers.extend_from_slice(extra);
        post(
            &self.weir.url(&format!("/{route}/v1/chat/completions")),
            &chat("m", false),
            &headers,
        )
    }
}

/// Gap 1: a string configuration arrives as its bytes, an object as JSON;
/// `vm_config` reaches `on_vm_start`.
#[test]
fn configuration_is_passed_as_given_and_vm_config_reaches_on_vm_start() {
    let env = start();
    let r = env.chat("str", "config", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-plugin-config"), Some("The secret to life"));
    assert_eq!(r.header("x-vm-config"), Some("vm-text"));
    let r = env.chat("json", "config", &[]);
    assert_eq!(
        r.header("x-plugin-config"),
        Some(r#"{"a": 1}"#),
        "a JSON string is not re-quoted"
    );
    assert_eq!(r.header("x-vm-config"), Some(""));
    let r = env.chat("tick", "config", &[]);
    let v: serde_json::Value = serde_json::from_str(r.header("x-plugin-config").unwrap()).unwrap();
    assert_eq!(v["tick_ms"], 20, "an object arrives as JSON: {v}");
}

/// Gap 2: filters with the same `vm_id` (default empty) share data and
/// queues; another `vm_id` does not see them unless it names the `vm_id`.
#[test]
fn shared_data_and_queues_are_scoped_by_vm_id() {
    let env = start();
    let r = env.chat("str", "shared-set", &[("x-key", "k1"), ("x-value", "v1")]);
    assert_eq!(r.header("x-set"), Some("Ok(())"), "{}", r.body);
    assert_eq!(
        env.chat("tick", "shared-get", &[("x-key", "k1")]).header("x-value"),
        Some("v1")
    );
    assert_eq!(
        env.chat("json", "shared-get", &[("x-key", "k1")]).header("x-value"),
        Some("v1")
    );
    assert_eq!(
        env.chat("other", "shared-get", &[("x-key", "k1")]).header("x-value"),
        Some("<none>")
    );
    // conf_tick registered q1 in vm_id "".
    assert_eq!(
        env.chat("str", "queue", &[("x-queue", "q1")]).header("x-queue"),
        Some("found")
    );
    assert_eq!(
        env.chat("other", "queue", &[("x-queue", "q1")]).header("x-queue"),
        Some("found")
    );
    let r = env.chat("str", "queue", &[("x-queue", "q1"), ("x-vm-id", "other")]);
    assert_eq!(r.header("x-queue"), Some("missing"));
}

/// Gap 3: Envoy's attribute names and encodings.
#[test]
fn properties_follow_envoy_attribute_names_and_encodings() {
    let env = start();
    let body = chat("m", false);
    let r = post(
        &env.weir.url("/str/v1/chat/completions"),
        &body,
        &[
            ("x-conf", "props"),
            ("user-agent", "conf-agent/1"),
            ("referer", "http://ref.example/"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let p = |name: &str| r.header(&format!("x-prop-{name}")).unwrap_or("<missing>").to_string();
    assert_eq!(p("route_name"), "str");
    assert_eq!(p("cluster_name"), "m1");
    assert_eq!(p("plugin_name"), "conf_str");
    assert_eq!(p("plugin_root_id"), "my_root");
    // An empty value is a zero-length answer, which the Rust SDK reads as
    // None (as it does from Envoy, which hands no buffer for it either).
    assert_eq!(p("plugin_vm_id"), "<none>");
    assert_ne!(p("node-id"), "<none>");
    assert_eq!(p("upstream-address"), format!("127.0.0.1:{}", env.mock.port));
    assert_eq!(p("upstream-port"), env.mock.port.to_string());
    assert_eq!(p("destination-address"), format!("127.0.0.1:{}", env.weir.port));
    assert_eq!(p("destination-port"), env.weir.port.to_string());
    assert!(p("source-port").parse::<u16>().unwrap() > 0);
    assert_eq!(p("connection-requested_server_name"), "<none>");
    assert_eq!(p("connection-mtls"), "[0]");
    assert_eq!(p("connection-id-len"), "8");
    assert_eq!(p("node-metadata-len"), "", "an empty Struct: no bytes");
    assert_eq!(p("request-useragent"), "conf-agent/1");
    assert_eq!(p("request-referer"), "http://ref.example/");
    assert_eq!(p("request-id"), r.header("x-request-id").unwrap());
    assert_eq!(p("request-size"), body.len().to_string());
    assert!(p("request-total_size").parse::<usize>().unwrap() > body.len());
    assert_eq!(p("response-code"), "200");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    let t: i64 = p("request-time").parse().unwrap();
    assert!(
        (now - t).abs() < 60_000_000_000,
        "request.time is ns since the epoch: {t}"
    );

    // Sizes are complete in on_log (a log line the filter writes).
    let r = env.chat("str", "sizes", &[]);
    assert_eq!(r.status, 200);
    let want = format!("response.size={}", r.body.len());
    let found = eventually(Duration::from_secs(3), || {
        std::fs::read_to_string(&env.log).unwrap_or_default().contains(&want)
    });
    assert!(
        found,
        "on_log saw {want}: {}",
        std::fs::read_to_string(&env.log).unwrap_or_default()
    );
}

/// Gap 7: a tick-driven root context calls a provider by name from start-up,
/// before any request reached the gateway, and keeps its answer in shared data.
#[test]
fn root_context_calls_a_provider_by_name_before_the_first_request() {
    let env = start();
    assert!(
        eventually(Duration::from_secs(5), || env.auth.requests() >= 1),
        "the tick's http_call reached provider 'auth' with no request sent to weir"
    );
    assert_eq!(env.mock.requests(), 0);
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        last = env
            .chat("str", "shared-get", &[("x-key", "tick-status")])
            .header("x-value")
            .map(String::from);
        last.as_deref() == Some("200")
    });
    assert!(ok, "tick-status in shared data: {last:?}");
}

/// Gap 9: a module exporting ABI 0.1.0 (two-argument header callbacks) runs
/// beside a 0.2.1 one.
#[test]
fn abi_0_1_0_modules_load_alongside_0_2_x() {
    let env = start();
    let r = env.chat("abi", "", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let n: usize = r.header("x-abi-headers").unwrap().parse().unwrap();
    assert!(n >= 4, "on_request_headers(context, headers) was told {n} headers");
    assert_eq!(r.header("x-seen-status"), Some("200"), "the 0.2.1 filter ran too");
}

/// Gap 8: a Pause with nothing pending waits for `resume` (here from the
/// root context's tick); without one it ends after `limits.pause`, not at once.
#[test]
fn pause_with_nothing_pending_waits_for_resume() {
    let env = start();
    let r = env.chat("tick", "pause-resume", &[]);
    assert_eq!(r.status, 200, "resumed by the tick: {}", r.body);
    let started = Instant::now();
    let r = env.chat("str", "pause-resume", &[]);
    assert_eq!((r.status, r.error_type().as_str()), (500, "plugin_error"), "{}", r.body);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited for limits.pause"
    );
}

/// Gap 8: response headers touched in a request phase answer BadArgument
/// (Envoy's status: the map does not exist yet) and nothing is added;
/// Content-Length survives a filter; filters see x-request-id and
/// x-forwarded-proto.
#[test]
fn response_map_before_response_length_and_request_id() {
    let env = start();
    let r = env.chat("str", "early-response-header", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-early-status"), Some("2"), "BAD_ARGUMENT");
    assert_eq!(r.header("x-early"), None);
    let r = env.chat("str", "", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("x-seen-request-id"), r.header("x-request-id"));
    assert_eq!(r.header("x-seen-proto"), Some("http"));
}

/// Gap 4: a local reply goes through the sending filter's own response
/// callbacks (headers and body) and those of filters before it, with a
/// Content-Length; the first `send_local_response` wins.
#[test]
fn local_replies_run_the_response_phases_and_the_first_wins() {
    let env = start();
    let r = env.chat("outer", "local", &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body, "LOCAL BODY\n", "the filter's own on_http_response_body ran");
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("x-local"), Some("1"));
    assert_eq!(
        r.header("x-seen-status"),
        Some("201"),
        "its own on_http_response_headers ran"
    );
    assert_eq!(r.header("x-config"), Some("from-config"), "the filter before it ran");
    assert_eq!(env.mock.requests(), 0);

    let r = env.chat("str", "local-twice", &[]);
    assert_eq!((r.status, r.body.as_str()), (401, "first\n"));
    assert_eq!(r.header("x-which"), Some("first"));
}

/// Gap 6: request header changes made in on_http_request_body reach the
/// provider (the mock answers a 418 when told to by the header).
#[test]
fn request_header_changes_in_the_body_phase_are_kept() {
    let env = start();
    let r = env.chat("str", "body-header", &[]);
    assert_eq!(r.status, 418, "{}", r.body);
    assert_eq!(env.mock.requests(), 1);
}

/// Gap 10: gRPC calls are not offered; a call answers ParseFailure, which
/// is Envoy's status for an unknown cluster, and the filter carries on.
#[test]
fn grpc_call_answers_envoys_unknown_cluster_status() {
    let env = start();
    let r = env.chat("str", "grpc", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-grpc"), Some("Err(ParseFailure)"));
}

/// SDK style: body redaction after buffering (Pause until end of stream).
#[test]
fn buffered_body_redaction() {
    let env = start();
    let r = post(
        &env.weir.url("/str/v1/chat/completions"),
        &chat("secret-model", false),
        &[("x-conf", "redact")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("******-model") && !r.body.contains("secret"),
        "{}",
        r.body
    );
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
}

/// Gap 5: a Pause from on_http_response_headers holds the response head
/// until the filter resumes (after its call answers, or from the root
/// context's tick) or answers locally instead.
#[test]
fn pause_in_response_headers_holds_the_head() {
    let env = start();
    let r = env.chat("str", "response-pause", &[("x-upstream", "auth")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-decided"), Some("200"), "set after the call answered");
    assert!(
        r.json()["choices"].is_array(),
        "the provider's body follows: {}",
        r.body
    );
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));

    let r = env.chat("str", "response-pause-local", &[("x-upstream", "auth")]);
    assert_eq!((r.status, r.body.as_str()), (451, "decided locally\n"));
    assert_eq!(r.header("x-decided"), Some("200"));

    let r = env.chat("tick", "response-pause-tick", &[]);
    assert_eq!(r.status, 200, "resumed by the tick: {}", r.body);
    assert_eq!(r.header("x-seen-status"), Some("200"));
    let started = Instant::now();
    let r = env.chat("str", "response-pause-tick", &[]);
    assert_eq!((r.status, r.error_type().as_str()), (500, "plugin_error"), "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(300), "held for limits.pause");
}

/// A filter built with another language's SDK (AssemblyScript,
/// `plugins/as-stamp`): it finds its root context by `root_id`, reads its
/// configuration and stamps responses. Without the `root_id` it expects,
/// the SDK aborts at start-up, and the plugin is refused (Envoy refuses it too).
#[test]
fn assemblyscript_sdk_filter_runs_and_finds_its_root_by_root_id() {
    let env = start();
    let r = env.chat("as", "", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-as-config"), Some("stamped"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {{ listen: [\"127.0.0.1:1\"] }}\nproviders:\n  m1: {{ url: \"{}\", models: [m] }}\n\
             plugins:\n  stamp: {{ type: wasm, module: \"{}\", config: stamped }}\n\
             routes:\n  - {{ name: r, plugins: [stamp], providers: [m1] }}\n",
            env.mock.url(),
            wasm_module("as-stamp")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(WEIR)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Missing root context factory"),
        "the SDK's own words: {text}"
    );
    assert!(text.contains("plugins.stamp"), "located: {text}");
}
