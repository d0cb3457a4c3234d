//! `auditor`: asks an allow service about every request, counts requests per
//! model and stamps responses with an audit id.
//!
//! 1. Request headers: `dispatch_http_call(allow_service, [(":method","GET"),
//!    (":path", allow_path + "?key=" + <key>), (":authority","allow")], no body,
//!    timeout_ms)` and pause. `<key>` is the `x-api-key` header, else the
//!    `authorization` header without a leading `Bearer `, else empty;
//!    percent-encoded. (`&key=` when `allow_path` already has a query.)
//! 2. `on_http_call_response`: `:status` 200 -> `resume_http_request()`;
//!    anything else (other status, timeout/failure = no headers) or a call that
//!    could not be dispatched -> local 403 with an OpenAI error envelope
//!    (`type: permission_error`, `code: not_allowed`).
//! 3. Request body (at `end_of_stream`): reads `model` from the JSON body and
//!    increments the counter `auditor_requests_total.model.<model>` (defined
//!    lazily, ids cached per VM). Requests without a body, or whose body has no
//!    string `model`, count as model `unknown`.
//! 4. Response headers: sets `<prefix>-id: audit-<n>` (n counts this VM's
//!    requests from 1) and `<prefix>-model: <model>` when the model is known.
//!
//! Config (JSON): `{"allow_service": "<upstream name>", "allow_path": "/allow",
//! "timeout_ms": 500, "header_prefix": "x-audit"}`; `allow_service` is
//! required, the rest default as shown.

use log::{debug, error, info, warn};
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(AuditorRoot { config: None, shared: Rc::new(RefCell::new(Shared::default())) })
    });
}}

/// Prefix of the per-model request counters.
const MODEL_METRIC_PREFIX: &str = "auditor_requests_total.model.";
/// Counter of requests refused with 403.
const DENIED_METRIC: &str = "auditor_denied_total";
/// Distinct model counters per VM; further models count under `other`.
const MAX_MODEL_METRICS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    allow_service: String,
    #[serde(default = "default_allow_path")]
    allow_path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_header_prefix")]
    header_prefix: String,
}

fn default_allow_path() -> String {
    "/allow".to_string()
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_header_prefix() -> String {
    "x-audit".to_string()
}

/// State of one VM, shared by its root and HTTP contexts.
#[derive(Default)]
struct Shared {
    /// Requests seen so far (the last audit id handed out).
    requests: u64,
    /// Metric name -> metric id, filled lazily by `define_metric`.
    metrics: HashMap<String, u32>,
}

impl Shared {
    fn increment(&mut self, name: &str) {
        let id = match self.metrics.get(name) {
            Some(id) => *id,
            None => match proxy_wasm::hostcalls::define_metric(MetricType::Counter, name) {
                Ok(id) => {
                    self.metrics.insert(name.to_string(), id);
                    id
                }
                Err(status) => {
                    warn!("define_metric({name}) failed: {status:?}");
                    return;
                }
            },
        };
        if let Err(status) = proxy_wasm::hostcalls::increment_metric(id, 1) {
            warn!("increment_metric({name}) failed: {status:?}");
        }
    }

    fn count_model(&mut self, model: &str) {
        let mut name = format!("{MODEL_METRIC_PREFIX}{}", metric_safe(model));
        let models = self
            .metrics
            .keys()
            .filter(|k| k.starts_with(MODEL_METRIC_PREFIX))
            .count();
        if !self.metrics.contains_key(&name) && models >= MAX_MODEL_METRICS {
            name = format!("{MODEL_METRIC_PREFIX}other");
        }
        self.increment(&name);
    }
}

/// A model name made safe for a metric name: `A-Z a-z 0-9 . _ -` kept, any
/// other byte becomes `_`, at most 64 bytes, empty becomes `unknown`.
fn metric_safe(model: &str) -> String {
    let safe: String = model
        .bytes()
        .take(64)
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "unknown".to_string()
    } else {
        safe
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The caller's key: `x-api-key`, else `authorization` minus `Bearer `.
fn api_key(x_api_key: Option<Vec<u8>>, authorization: Option<Vec<u8>>) -> Vec<u8> {
    if let Some(key) = x_api_key {
        return key;
    }
    match authorization {
        Some(auth) if auth.len() >= 7 && auth[..7].eq_ignore_ascii_case(b"bearer ") => auth[7..].to_vec(),
        Some(auth) => auth,
        None => Vec::new(),
    }
}

/// The `model` of an OpenAI-style JSON request body, if any.
fn model_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("model")?.as_str().map(str::to_string)
}

fn error_envelope(message: &str) -> Vec<u8> {
    serde_json::json!({
        "error": {
            "message": message,
            "type": "permission_error",
            "code": "not_allowed",
            "param": null,
        }
    })
    .to_string()
    .into_bytes()
}

struct AuditorRoot {
    config: Option<Rc<Config>>,
    shared: Rc<RefCell<Shared>>,
}

impl Context for AuditorRoot {}

impl RootContext for AuditorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("auditor: a configuration {{\"allow_service\": ...}} is required");
            return false;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                info!(
                    "auditor: allow check {}{} (timeout {}ms)",
                    config.allow_service, config.allow_path, config.timeout_ms
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                error!("auditor: bad configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auditor {
            context_id,
            config: self.config.clone(),
            shared: self.shared.clone(),
            audit_id: None,
            model: None,
            counted: false,
        }))
    }
}

struct Auditor {
    context_id: u32,
    config: Option<Rc<Config>>,
    shared: Rc<RefCell<Shared>>,
    audit_id: Option<String>,
    model: Option<String>,
    counted: bool,
}

impl Auditor {
    fn deny(&self, message: &str) {
        self.shared.borrow_mut().increment(DENIED_METRIC);
        self.send_http_response(
            403,
            vec![("content-type", "application/json")],
            Some(&error_envelope(message)),
        );
    }

    fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            let model = self.model.as_deref().unwrap_or("unknown");
            self.shared.borrow_mut().count_model(model);
        }
    }
}

impl HttpContext for Auditor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let n = {
            let mut shared = self.shared.borrow_mut();
            shared.requests += 1;
            shared.requests
        };
        self.audit_id = Some(format!("audit-{n}"));
        if end_of_stream {
            // No body will come: the model stays unknown.
            self.count();
        }

        let Some(config) = self.config.clone() else {
            self.deny("request denied: auditor is not configured");
            return Action::Pause;
        };
        let key = api_key(
            self.get_http_request_header_bytes("x-api-key"),
            self.get_http_request_header_bytes("authorization"),
        );
        let separator = if config.allow_path.contains('?') { '&' } else { '?' };
        let path = format!("{}{}key={}", config.allow_path, separator, percent_encode(&key));
        match self.dispatch_http_call(
            &config.allow_service,
            vec![(":method", "GET"), (":path", &path), (":authority", "allow")],
            None,
            vec![],
            Duration::from_millis(config.timeout_ms),
        ) {
            Ok(token) => {
                debug!("#{} allow check {} dispatched", self.context_id, token);
            }
            Err(status) => {
                warn!(
                    "#{} cannot call {}: {:?}",
                    self.context_id, config.allow_service, status
                );
                self.deny("request denied: the allow service could not be called");
            }
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if self.model.is_none() {
            if let Some(body) = self.get_http_request_body(0, body_size) {
                self.model = model_of(&body);
            }
        }
        self.count();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let prefix = self
            .config
            .as_ref()
            .map(|c| c.header_prefix.clone())
            .unwrap_or_else(default_header_prefix);
        if let Some(id) = &self.audit_id {
            self.set_http_response_header(&format!("{prefix}-id"), Some(id));
        }
        if let Some(model) = &self.model {
            self.set_http_response_header(&format!("{prefix}-model"), Some(model));
        }
        Action::Continue
    }
}

impl Context for Auditor {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, _body_size: usize, _: usize) {
        let status = self.get_http_call_response_header_bytes(":status");
        if status.as_deref() == Some(b"200".as_slice()) {
            debug!("#{} allow check {}: allowed", self.context_id, token_id);
            self.resume_http_request();
            return;
        }
        let shown = match &status {
            Some(s) => String::from_utf8_lossy(s).into_owned(),
            None if num_headers == 0 => "no response".to_string(),
            None => "no status".to_string(),
        };
        info!("#{} allow check {}: denied ({})", self.context_id, token_id, shown);
        self.deny("request denied by the allow service");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(api_key(Some(b"k1".to_vec()), Some(b"Bearer k2".to_vec())), b"k1");
        assert_eq!(api_key(None, Some(b"bearer k2".to_vec())), b"k2");
        assert_eq!(api_key(None, Some(b"Basic abc".to_vec())), b"Basic abc");
        assert_eq!(api_key(None, None), b"");
        assert_eq!(percent_encode(b"sk-a_b.c~d e/f+g"), "sk-a_b.c~d%20e%2Ff%2Bg");
    }

    #[test]
    fn models() {
        assert_eq!(
            model_of(br#"{"model":"gpt-4o-mini","messages":[]}"#).as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(model_of(br#"{"model":7}"#), None);
        assert_eq!(model_of(b"nope"), None);
        assert_eq!(metric_safe("meta/llama-3.1:8b"), "meta_llama-3.1_8b");
        assert_eq!(metric_safe(""), "unknown");
        assert_eq!(metric_safe(&"x".repeat(100)).len(), 64);
    }
}
