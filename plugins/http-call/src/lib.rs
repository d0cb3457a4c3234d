//! `http-call`: the SDK's `http_auth_random` example, adapted for weir's tests.
//!
//! On request headers it asks another service whether to let the request
//! through (`dispatch_http_call`) and pauses the request. When the answer
//! comes (`on_http_call_response`):
//! - its body contains `allow` -> `resume_http_request()`;
//! - anything else (other body, no body, timeout, failed call) ->
//!   `send_http_response(403, [], "Access forbidden.\n")`.
//!
//! Config (JSON): `{"upstream": "<upstream name>", "path": "/check",
//! "authority": "auth", "timeout_ms": 1000}`; `upstream` and `path` are
//! required, `authority` defaults to the upstream name, `timeout_ms` to 1000.

use log::{error, info, warn};
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HttpCallRoot { config: None })
    });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    upstream: String,
    path: String,
    authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    1000
}

struct HttpCallRoot {
    config: Option<Rc<Config>>,
}

impl Context for HttpCallRoot {}

impl RootContext for HttpCallRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("http-call: a configuration {{\"upstream\": ..., \"path\": ...}} is required");
            return false;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                error!("http-call: bad configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpCall {
            context_id,
            config: self.config.clone(),
        }))
    }
}

struct HttpCall {
    context_id: u32,
    config: Option<Rc<Config>>,
}

impl HttpCall {
    fn forbid(&self) {
        self.send_http_response(403, vec![], Some(b"Access forbidden.\n"));
    }
}

impl HttpContext for HttpCall {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.forbid();
            return Action::Pause;
        };
        let authority = config.authority.as_deref().unwrap_or(&config.upstream);
        match self.dispatch_http_call(
            &config.upstream,
            vec![(":method", "GET"), (":path", &config.path), (":authority", authority)],
            None,
            vec![],
            Duration::from_millis(config.timeout_ms),
        ) {
            Ok(token) => {
                info!("#{} dispatched call {} to {}", self.context_id, token, config.upstream);
            }
            Err(status) => {
                warn!("#{} could not call {}: {:?}", self.context_id, config.upstream, status);
                self.forbid();
            }
        }
        Action::Pause
    }
}

impl Context for HttpCall {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if let Some(body) = self.get_http_call_response_body(0, body_size) {
            if body.windows(5).any(|w| w == b"allow") {
                info!("#{} call {}: access granted.", self.context_id, token_id);
                self.resume_http_request();
                return;
            }
        }
        info!("#{} call {}: access forbidden.", self.context_id, token_id);
        self.forbid();
    }
}
