//! The admin API (admin.listen): metrics, health, status, config, reload.

use crate::metrics;
use crate::runtime::Gateway;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// Serves the admin endpoints for one gateway.
pub struct Admin {
    pub gateway: Arc<Gateway>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("valid response")
}

fn json_reply(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    )
}

impl Admin {
    /// Set the gauges that describe current state, then render everything.
    fn metrics(&self) -> Vec<u8> {
        let rt = self.gateway.current();
        let queues = rt
            .providers
            .values()
            .map(|p| &p.bulkhead)
            .chain(rt.plugins.values().map(|p| &p.bulkhead));
        for b in queues {
            let s = b.snapshot();
            metrics::QUEUE_DEPTH
                .with_label_values(&[b.name()])
                .set(s.waiting as i64);
            metrics::QUEUE_OLDEST_WAIT
                .with_label_values(&[b.name()])
                .set(s.oldest_wait.as_secs_f64());
            metrics::QUEUE_CAPACITY
                .with_label_values(&[b.name()])
                .set(b.limits().queue as i64);
        }
        for p in rt.plugins.values() {
            p.plugin.refresh_metrics();
        }
        metrics::render()
    }

    fn status(&self) -> serde_json::Value {
        let rt = self.gateway.current();
        let providers: serde_json::Map<String, serde_json::Value> = rt
            .providers
            .iter()
            .map(|(name, p)| {
                let s = p.bulkhead.snapshot();
                let l = p.bulkhead.limits();
                (
                    name.clone(),
                    json!({
                        "url": p.conf.url,
                        "in_flight": s.in_flight,
                        "queued": s.waiting,
                        "oldest_wait_ms": s.oldest_wait.as_millis() as u64,
                        "max_concurrent": l.max_concurrent,
                        "queue": l.queue,
                        "breaker": rt.plugins.values().find_map(|pl| pl.plugin.breaker_state(name)).map_or("none", |s| s.name()),
                        "health": if p.conf.health_check.is_none() { "unchecked" } else if p.is_healthy() { "healthy" } else { "unhealthy" },
                    }),
                )
            })
            .collect();
        let plugins: serde_json::Map<String, serde_json::Value> = rt
            .plugins
            .iter()
            .map(|(name, p)| {
                let s = p.bulkhead.snapshot();
                let l = p.bulkhead.limits();
                (
                    name.clone(),
                    json!({
                        "type": p.conf.type_name,
                        "in_flight": s.in_flight,
                        "queued": s.waiting,
                        "oldest_wait_ms": s.oldest_wait.as_millis() as u64,
                        "max_concurrent": l.max_concurrent,
                        "queue": l.queue,
                    }),
                )
            })
            .collect();
        json!({
            "generation": rt.generation,
            "last_reload": self.gateway.last_reload(),
            "config": rt.config.source.display().to_string(),
            "routes": rt.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "providers": providers,
            "plugins": plugins,
        })
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let rt = self.gateway.current();
        let Some(token) = rt.config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        use subtle::ConstantTimeEq;
        presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => reply(200, "text/plain; version=0.0.4", self.metrics()),
            ("GET", "/healthz") => reply(200, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                let rt = self.gateway.current();
                if !rt.providers.values().any(|p| p.is_healthy()) {
                    reply(503, "text/plain", b"no provider usable\n".to_vec())
                } else {
                    reply(200, "text/plain", b"ready\n".to_vec())
                }
            }
            ("GET", "/status") => json_reply(200, self.status()),
            ("GET", "/config") => {
                let rt = self.gateway.current();
                json_reply(200, serde_json::to_value(rt.config.as_ref()).unwrap_or_default())
            }
            ("POST", "/reload") => {
                if !self.authorized(session) {
                    return json_reply(401, json!({"error": "admin token required"}));
                }
                let gw = self.gateway.clone();
                match tokio::task::spawn_blocking(move || gw.reload()).await {
                    Ok(Ok(g)) => json_reply(200, json!({"generation": g})),
                    Ok(Err(e)) => json_reply(
                        422,
                        json!({"generation": self.gateway.current().generation,
                               "errors": e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
                    ),
                    Err(e) => json_reply(500, json!({"error": e.to_string()})),
                }
            }
            _ => json_reply(404, json!({"error": format!("no admin endpoint {method} {path}")})),
        }
    }
}
