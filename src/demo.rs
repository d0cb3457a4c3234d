//! `weir demo`: mock providers for every loopback provider in the demo config,
//! the gateway in front of them, and curl commands that work as printed.

use crate::config;
use crate::mock::{mock_service, MockOptions};
use crate::provider::Endpoint;
use pingora_core::services::ServiceWithDependents;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Run the demo until interrupted.
pub fn run(path: &Path) -> Result<(), String> {
    let (cfg, _) = config::load(path).map_err(|e| e.to_string())?;
    let mut extra: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
    for (name, p) in &cfg.providers {
        let ep = Endpoint::parse(&p.url)?;
        if !(ep.host == "127.0.0.1" || ep.host == "localhost" || ep.host == "::1") || ep.tls {
            continue;
        }
        let opts = MockOptions {
            listen: format!("{}:{}", ep.host, ep.port),
            ttft: Duration::from_millis(150),
            tokens_per_sec: 40.0,
            completion_tokens: 24,
            fail_rate: 0.0,
            fail_status: 503,
            models: p.models.pairs().into_iter().map(|(_, up)| up).collect(),
            ..MockOptions::default()
        };
        crate::listen::check(&opts.listen).map_err(|e| format!("mock provider '{name}': {e}"))?;
        println!("mock provider '{name}' on {}", opts.listen);
        extra.push(Box::new(mock_service(opts)?));
    }
    let listen = cfg.server.listen[0].replace("0.0.0.0", "127.0.0.1");
    let model = cfg
        .providers
        .values()
        .next()
        .and_then(|p| p.models.pairs().into_iter().next())
        .map(|(m, _)| m);
    let model = model.unwrap_or_default();
    let auth = if cfg.plugins.values().any(|p| p.type_name == "api_key") {
        " -H 'Authorization: Bearer sk-demo'"
    } else {
        ""
    };
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello"}}]}}"#);
    let stream_body =
        format!(r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"Say hello"}}]}}"#);
    println!("\nweir demo: gateway on http://{listen}\n\nTry:\n");
    println!("curl -s http://{listen}/v1/models{auth}");
    println!("curl -s http://{listen}/v1/chat/completions{auth} -H 'Content-Type: application/json' -d '{body}'");
    println!(
        "curl -sN http://{listen}/v1/chat/completions{auth} -H 'Content-Type: application/json' -d '{stream_body}'"
    );
    if let Some(a) = &cfg.admin {
        println!("curl -s http://{}/metrics", a.listen);
        println!("curl -s http://{}/status", a.listen);
    }
    println!();
    let _ = std::io::stdout().flush();
    crate::server::run(path, false, extra)
}
