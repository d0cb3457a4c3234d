//! What operators plug in (`deploy/`), checked against the real thing:
//! - `promtool check rules` and `promtool test rules` on the alert rules;
//! - a real Prometheus scraping a real weir under a short load evaluates
//!   every dashboard panel's query and every alert's `annotations.query`
//!   (its quantity before the threshold): each parses and returns a series;
//! - the Kubernetes manifests parse, their probes and ports match the weir
//!   config the ConfigMap mounts (which weir's own parser accepts), and the
//!   Dockerfile runs `weir` as a non-root user on those ports.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is missing: run ./dev test, which installs Debian's prometheus package");
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = need("promtool");
    for args in [
        vec!["check", "rules", "weir-rules.yaml"],
        vec!["test", "rules", "weir-rules.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every PromQL expression of the dashboard (`targets[].expr` of every
/// panel, nested rows included) and of the rules (`annotations.query`),
/// with the dashboard's variables as `deploy/README.md` says to substitute.
fn expressions() -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push((format!("panel '{title}'"), e.clone()));
                }
                for (k, v) in m {
                    if k != "templating" {
                        walk(v, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/weir.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&dashboard, "", &mut out);
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy("prometheus/weir-rules.yaml")).unwrap()).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let q = rule["annotations"]["query"]
                .as_str()
                .unwrap_or_else(|| panic!("alert {name} has no annotations.query"));
            out.push((format!("alert {name}"), q.to_string()));
        }
    }
    out.into_iter()
        .map(|(what, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("${route}", ".*")
                .replace("$route", ".*")
                .replace("${provider}", ".*")
                .replace("$provider", ".*")
                .replace("${queue}", ".*")
                .replace("$queue", ".*");
            (what, e)
        })
        .collect()
}

#[test]
fn every_panel_and_alert_query_returns_series_from_a_live_weir() {
    let prometheus = need("prometheus");
    let mock = spawn_mock(&["--completion-tokens", "8"]);
    let keys = keys_file(&[("ops", "standard", 1, false)]);
    let config = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  p:
    url: {url}
    models: [m]
    prices: {{ m: {{ input: 1, output: 2 }} }}
    bulkhead: {{ max_concurrent: 8, queue: 8, queue_timeout: 2s }}
    adaptive: {{ floor: 1 }}
    health_check: {{ path: /models, interval: 1s }}
plugins:
  auth: {{ type: api_key, keys_file: keys.yaml }}
  budget: {{ type: budget, limits: [ {{ name: daily, per: key, window: 1d, tokens: 1000000 }} ] }}
  breaker: {{ type: circuit_breaker }}
  cache: {{ type: cache, ttl: 1m }}
  filter: {{ type: wasm, module: {wasm} }}
routes:
  - {{ name: chat, plugins: [auth, budget, breaker, cache, filter], providers: [p] }}
"#,
        url = mock.url(),
        wasm = wasm_module("noop"),
    );
    let weir = spawn_weir(&config, &[("keys.yaml", &keys)]);

    // Prometheus, scraping weir's admin listener every second.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: weir\n    static_configs: [ {{ targets: ['127.0.0.1:{}'] }} ]\n",
            weir.admin_port
        ),
    )
    .unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Proc {
        child,
        name: "prometheus".into(),
    };
    wait_port(port, "prometheus");

    // A short load: answers streamed and not, cache hits, a refused key,
    // and a provider 503 that is retried.
    let auth = [("authorization", "Bearer sk-ops")];
    let retried = post(
        &weir.url("/v1/chat/completions"),
        &chat("m", false),
        &[auth[0], ("x-mock-fault", "status:code=503,first=1")],
    );
    assert_eq!(retried.status, 200, "{}", retried.body);
    let load_until = std::time::Instant::now() + Duration::from_secs(6);
    let mut i = 0u32;
    while std::time::Instant::now() < load_until {
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "m", "stream": i.is_multiple_of(2),
            "messages": [{"role": "user", "content": format!("question {}", i % 5)}],
        }))
        .unwrap();
        let r = post(&weir.url("/v1/chat/completions"), &body, &auth);
        assert_eq!(r.status, 200, "{}", r.body);
        if i.is_multiple_of(10) {
            assert_eq!(post(&weir.url("/v1/chat/completions"), &body, &[]).status, 401);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));

    let query = |e: &str| -> Value {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let r = ureq::get(&url).query("query", e).call();
        let body = match r {
            Ok(r) => r.into_string().unwrap(),
            Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
            Err(e) => panic!("prometheus: {e}"),
        };
        serde_json::from_str(&body).unwrap()
    };
    let exprs = expressions();
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut empty = Vec::new();
    for (what, e) in &exprs {
        let v = query(e);
        assert_eq!(v["status"], "success", "{what}: {e}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{what}: {e}"));
        }
    }
    assert!(empty.is_empty(), "queries with no series:\n{}", empty.join("\n"));
    println!(
        "FIGURE | deploy | {} dashboard and alert queries each returned series",
        exprs.len()
    );
}

#[test]
fn kubernetes_manifests_and_dockerfile_match_the_config_they_mount() {
    let docs = |file: &str| -> Vec<serde_yaml_ng::Value> {
        let text = std::fs::read_to_string(deploy("kubernetes").join(file)).unwrap();
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
            .collect()
    };
    let kustomization = &docs("kustomization.yaml")[0];
    for r in kustomization["resources"].as_sequence().unwrap() {
        docs(r.as_str().unwrap());
    }

    // The weir.yaml the ConfigMap mounts, through weir's own parser.
    let configmap = &docs("configmap.yaml")[0];
    let text = configmap["data"]["weir.yaml"].as_str().unwrap();
    std::env::set_var("WEIR_ADMIN_TOKEN", "t");
    std::env::set_var("OPENAI_API_KEY", "k");
    let (config, _) = weir::config::parse(text, Path::new("configmap.yaml:weir.yaml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's weir.yaml: {e}"));
    let port_of = |addr: &str| -> i64 { addr.rsplit(':').next().unwrap().parse().unwrap() };
    let http_port = port_of(&config.server.listen[0]);
    let admin_port = port_of(&config.admin.as_ref().expect("an admin listener for the probes").listen);

    let deployment = &docs("deployment.yaml")[0];
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let ports: Vec<(String, i64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    let named = |n: &str| ports.iter().find(|(name, _)| name == n).map(|(_, p)| *p);
    assert_eq!(named("http"), Some(http_port), "{ports:?}");
    assert_eq!(named("admin"), Some(admin_port), "{ports:?}");
    let probe = |kind: &str| {
        let get = &container[kind]["httpGet"];
        (get["path"].as_str().unwrap().to_string(), get["port"].clone())
    };
    let admin = serde_yaml_ng::Value::from("admin");
    assert_eq!(probe("readinessProbe"), ("/readyz".to_string(), admin.clone()));
    assert_eq!(probe("livenessProbe"), ("/healthz".to_string(), admin));
    // Kubernetes waits longer than weir drains (plus the preStop sleep).
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace as f64 > pre_stop as f64 + config.server.shutdown_grace.0.as_secs_f64(),
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + shutdown_grace"
    );
    let service = &docs("service.yaml")[0];
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(named(target).is_some(), "the Service targets port '{target}'");
    }
    let monitor = &docs("servicemonitor.yaml")[0];
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert!(config.admin.as_ref().unwrap().metrics_open, "the scraper has no token");

    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let line = |prefix: &str| {
        dockerfile
            .lines()
            .rev()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
    };
    assert!(
        dockerfile.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(line("ENTRYPOINT").contains("weir"), "{}", line("ENTRYPOINT"));
    assert!(
        !line("USER").is_empty() && !line("USER").contains("root"),
        "{}",
        line("USER")
    );
    let expose = line("EXPOSE");
    for p in [http_port, admin_port] {
        assert!(expose.contains(&p.to_string()), "{expose} lacks {p}");
    }
}
