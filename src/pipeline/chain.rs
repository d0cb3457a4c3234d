//! A route as it serves: its plugin chain and its providers, built once per
//! config generation by the runtime.

use super::plugin::{Capabilities, Phases, Plugin};
use crate::bulkhead::Bulkhead;
use crate::config::{MatchConf, PluginConf, RetryConf};
use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::provider::Provider;
use indexmap::IndexMap;
use once_cell::sync::OnceCell;
use pingora_http::RequestHeader;
use prometheus::{Histogram, IntCounter};
use std::path::PathBuf;
use std::sync::Arc;

/// A configured plugin: its code, its settings and its own bulkhead.
pub struct PluginInstance {
    pub name: String,
    /// The config entry it was built from (its identity across reloads).
    pub conf: PluginConf,
    pub plugin: Arc<dyn Plugin>,
    pub bulkhead: Arc<Bulkhead>,
    pub capabilities: Capabilities,
    /// The phases it works in ([`Plugin::phases`]).
    pub phases: Phases,
    /// The files it was built from, with their SHA-256 at build time
    /// (`None`: unreadable).
    pub files: Vec<(PathBuf, Option<[u8; 32]>)>,
}

/// A route as it serves requests.
pub struct Route {
    pub name: String,
    pub matcher: MatchConf,
    pub methods: Vec<http::Method>,
    /// The chain, in route order.
    pub plugins: Vec<Arc<PluginInstance>>,
    pub providers: Vec<Arc<Provider>>,
    /// The retry policy.
    pub retry: RetryConf,
    /// Model -> larger-context model, after `context_length_exceeded`.
    pub context_fallbacks: IndexMap<String, String>,
    /// (public model, first provider serving it), in config order, unique.
    pub models: Vec<(String, String)>,
    /// Some plugin of the chain needs usage on streams.
    pub stream_usage: bool,
    /// (path prefix, methods; empty = any) forwarded unread.
    pub passthrough: Vec<(String, Vec<http::Method>)>,
    /// Each provider's (same index) request metrics on this route.
    pub served: Vec<ServedMetrics>,
}

/// A provider's `weir_requests_total{status="200"}` and
/// `weir_request_duration_seconds` on a route: looked up in the metric
/// families on first use, then kept for the generation instead of hashing
/// the labels on every request. Made lazily, so no series appears before a
/// request is counted in it.
#[derive(Default)]
pub struct ServedMetrics(OnceCell<(IntCounter, Histogram)>);

impl ServedMetrics {
    pub fn get(&self, route: &str, provider: &str) -> &(IntCounter, Histogram) {
        self.0.get_or_init(|| {
            (
                metrics::REQUESTS.with_label_values(&[route, provider, "200"]),
                metrics::REQUEST_DURATION.with_label_values(&[route, provider]),
            )
        })
    }
}

impl Route {
    /// Does this route take the request?
    pub fn matches(&self, req: &RequestHeader) -> bool {
        let path = req.uri.path();
        if let Some(p) = &self.matcher.path {
            if path != p {
                return false;
            }
        }
        if let Some(p) = &self.matcher.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        self.matcher.headers.iter().all(|(k, v)| {
            req.headers
                .get(k.as_str())
                .is_some_and(|h| h.as_bytes() == v.as_bytes())
        })
    }

    /// `provider`'s metrics on this route, if it is one of the route's.
    pub fn served_by(&self, provider: &Arc<Provider>) -> Option<&(IntCounter, Histogram)> {
        let i = self.providers.iter().position(|p| Arc::ptr_eq(p, provider))?;
        Some(self.served[i].get(&self.name, &provider.name))
    }

    /// Providers that serve `model`, in route order.
    pub fn candidates(&self, model: &str) -> Vec<Arc<Provider>> {
        self.providers
            .iter()
            .filter(|p| p.upstream_model(model).is_some())
            .cloned()
            .collect()
    }

    /// Does the route forward this request although weir does not read it?
    pub fn passes_through(&self, method: &http::Method, path: &str) -> bool {
        self.passthrough.iter().any(|(prefix, methods)| {
            path.starts_with(prefix.as_str()) && (methods.is_empty() || methods.contains(method))
        })
    }

    /// The error for a model this route does not serve.
    pub fn model_not_found(&self, model: &str) -> WeirError {
        WeirError::new(
            ErrorKind::ModelNotFound,
            format!("model '{model}' is not served on route '{}'", self.name),
        )
        .with_param("model")
    }
}
