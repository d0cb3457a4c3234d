//! Active health checks: for each provider with `health_check`, a GET of
//! `{url}{path}` every `interval`, with pingora-load-balancing's
//! `HttpHealthCheck` doing the request. Results live in the provider's
//! `health` record (carried across reloads): the healthy flag the balancer
//! reads, and the count of passing checks that lets a circuit breaker
//! half-open early. A failing check never touches a breaker.

use crate::metrics;
use crate::provider::Provider;
use crate::runtime::Gateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::Backend;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The background service.
pub struct HealthChecks {
    pub gateway: Arc<Gateway>,
}

/// Check one provider once.
pub async fn check(p: &Provider, path: &str) -> bool {
    let mut hc = HttpHealthCheck::new(&p.endpoint.authority(), p.endpoint.tls);
    let full = p.endpoint.upstream_path(&format!("/v1{path}"));
    hc.req
        .set_uri(full.parse().unwrap_or_else(|_| http::Uri::from_static("/")));
    for (name, value) in &p.auth {
        let _ = hc.req.insert_header(*name, value.clone());
    }
    hc.peer_template = p.peer.clone();
    let timeout = p.conf.timeouts.connect.0 + Duration::from_secs(1);
    hc.peer_template.options.read_timeout = Some(timeout);
    let backend = Backend {
        addr: p.peer._address.clone(),
        weight: 1,
        ext: Default::default(),
    };
    matches!(tokio::time::timeout(timeout * 2, hc.check(&backend)).await, Ok(Ok(())))
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let rt = self.gateway.current();
            for p in rt.providers.values() {
                let Some(hc) = &p.conf.health_check else { continue };
                let due = last.get(&p.name).is_none_or(|t| t.elapsed() >= hc.interval.0);
                if !due {
                    continue;
                }
                last.insert(p.name.clone(), Instant::now());
                let ok = check(p, &hc.path).await;
                metrics::PROVIDER_HEALTHY.with_label_values(&[&p.name]).set(ok as i64);
                if p.health.record(ok) {
                    if ok {
                        log::info!("provider '{}' is healthy again", p.name);
                    } else {
                        log::warn!("provider '{}' failed its health check ({})", p.name, hc.path);
                    }
                }
            }
        }
    }
}
