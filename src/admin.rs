//! The admin API (admin.listen): metrics, health, status, config, reload.
//!
//! Access: `/healthz` and `/readyz` are always open (probes carry no
//! credentials). When `admin.token` is set every other endpoint needs
//! `Authorization: Bearer <token>` (`/metrics` too, unless
//! `admin.metrics_open`); without a token the API is open, which config
//! allows only on a loopback listener.

use crate::bulkhead::Bulkhead;
use crate::config::redact;
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

/// A bulkhead's priority classes for `/status`, by name, highest first.
fn classes_json(b: &Bulkhead) -> serde_json::Value {
    let classes: serde_json::Map<String, serde_json::Value> = b
        .classes()
        .into_iter()
        .map(|c| {
            let v = json!({
                "in_flight": c.in_flight,
                "queued": c.waiting,
                "oldest_wait_ms": c.oldest_wait.as_millis() as u64,
                "reserved": c.reserved,
                "drain_per_sec": (c.drain_per_sec * 100.0).round() / 100.0,
                "keys_waiting": c.keys_waiting,
                "shedding": c.shedding,
            });
            (c.class.to_string(), v)
        })
        .collect();
    serde_json::Value::Object(classes)
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
            for c in b.classes() {
                let labels = [b.name(), &c.class.to_string()];
                metrics::QUEUE_CLASS_DEPTH
                    .with_label_values(&labels)
                    .set(c.waiting as i64);
                metrics::QUEUE_CLASS_IN_FLIGHT
                    .with_label_values(&labels)
                    .set(c.in_flight as i64);
                metrics::QUEUE_CLASS_OLDEST_WAIT
                    .with_label_values(&labels)
                    .set(c.oldest_wait.as_secs_f64());
                metrics::QUEUE_CLASS_DRAIN
                    .with_label_values(&labels)
                    .set(c.drain_per_sec);
            }
        }
        for p in rt.plugins.values() {
            p.plugin.refresh_metrics();
        }
        metrics::render()
    }

    async fn status(&self) -> serde_json::Value {
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
                        "url": redact::redact_urls(&p.conf.url),
                        "in_flight": s.in_flight,
                        "queued": s.waiting,
                        "oldest_wait_ms": s.oldest_wait.as_millis() as u64,
                        "max_concurrent": l.max_concurrent,
                        "limit": s.limit,
                        "adaptive": p.adaptive.is_some(),
                        "queue": l.queue,
                        "classes": classes_json(&p.bulkhead),
                        "breaker": rt.plugins.values().find_map(|pl| pl.plugin.breaker_state(name)).map_or("none", |s| s.name()),
                        "health": if p.conf.health_check.is_none() { "unchecked" } else if p.is_healthy() { "healthy" } else { "unhealthy" },
                    }),
                )
            })
            .collect();
        let mut plugins = serde_json::Map::new();
        for (name, p) in &rt.plugins {
            let s = p.bulkhead.snapshot();
            let l = p.bulkhead.limits();
            let mut entry = json!({
                "type": p.conf.type_name,
                "in_flight": s.in_flight,
                "queued": s.waiting,
                "oldest_wait_ms": s.oldest_wait.as_millis() as u64,
                "max_concurrent": l.max_concurrent,
                "queue": l.queue,
                "classes": classes_json(&p.bulkhead),
            });
            if let Some(state) = p.plugin.status().await {
                entry["state"] = state;
            }
            plugins.insert(name.clone(), entry);
        }
        json!({
            "generation": rt.generation,
            "last_reload": self.gateway.last_reload(),
            "config": rt.config.source.display().to_string(),
            "routes": rt.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "providers": providers,
            "plugins": plugins,
        })
    }

    /// Whether the request may reach `path`: open probes, then the token.
    fn authorized(&self, session: &ServerSession, path: &str) -> bool {
        if matches!(path, "/healthz" | "/readyz") {
            return true;
        }
        let rt = self.gateway.current();
        let Some(admin) = rt.config.admin.as_ref() else {
            return true;
        };
        let Some(token) = admin.token.as_deref() else {
            return true;
        };
        if path == "/metrics" && admin.metrics_open {
            return true;
        }
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| credentials(v.as_bytes()))
            .unwrap_or_default();
        token_matches(&presented, token.as_bytes())
    }
}

/// The token an `Authorization` header presents: `Bearer <token>`, or
/// `Basic` with the token as password (any user name) — what a browser
/// sends for `/ui` and its `/status` polls once the user typed it in.
/// Schemes are case-insensitive.
fn credentials(v: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let (scheme, rest) = v.split_at_checked(6)?;
    if scheme.eq_ignore_ascii_case(b"basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    let (scheme, rest) = v.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.to_vec())
}

/// The status page (`GET /ui`): one self-contained HTML file polling `/status`.
const UI: &[u8] = include_bytes!("admin_ui.html");

/// Constant-time comparison: both sides are hashed first, so neither the
/// content nor the length of the token shows in the time taken.
fn token_matches(presented: &[u8], token: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(presented), Sha256::digest(token));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if !self.authorized(session, &path) {
            let mut r = json_reply(401, json!({"error": "admin token required"}));
            // Two challenges, as two headers: API clients use Bearer; a
            // browser asks the user for the token only on a Basic one.
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer realm=\"weir admin\""),
            );
            r.headers_mut().append(
                "www-authenticate",
                http::HeaderValue::from_static("Basic realm=\"weir admin\", charset=\"UTF-8\""),
            );
            return r;
        }
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
            ("GET", "/status") => json_reply(200, self.status().await),
            ("GET", "/ui") => reply(200, "text/html; charset=utf-8", UI.to_vec()),
            ("GET", "/config") => {
                let rt = self.gateway.current();
                json_reply(200, redact::redacted(&rt.config))
            }
            ("POST", "/reload") => {
                let gw = self.gateway.clone();
                match tokio::task::spawn_blocking(move || gw.reload()).await {
                    Ok(Ok(g)) => json_reply(200, json!({"generation": g})),
                    Ok(Err(e)) => json_reply(
                        422,
                        json!({"generation": self.gateway.current().generation,
                               "errors": e.0.iter().map(|e| redact::redact_urls(&e.to_string()).into_owned()).collect::<Vec<_>>()}),
                    ),
                    Err(e) => json_reply(500, json!({"error": e.to_string()})),
                }
            }
            _ => json_reply(404, json!({"error": format!("no admin endpoint {method} {path}")})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_or_basic_credentials_and_token_comparison() {
        let got = |v: &[u8]| credentials(v).map(|c| String::from_utf8(c).unwrap());
        assert_eq!(got(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(got(b"bearer abc").as_deref(), Some("abc"));
        // Basic: the password is the token, whatever the user name.
        assert_eq!(got(b"Basic YWRtaW46czNjcmV0").as_deref(), Some("s3cret")); // admin:s3cret
        assert_eq!(got(b"basic OnMzY3JldA==").as_deref(), Some("s3cret")); // :s3cret
        assert_eq!(got(b"Basic bm9jb2xvbg=="), None); // no colon
        assert_eq!(got(b"Basic !!!"), None);
        assert_eq!(got(b"Bear"), None);
        assert_eq!(got(b"Digest abc"), None);
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}
