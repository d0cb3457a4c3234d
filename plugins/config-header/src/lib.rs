//! `config-header`: sets a response header whose name and value come from the
//! plugin configuration.
//!
//! Config (JSON): `{"header": "x-config", "value": "some text"}`; `header`
//! defaults to `x-config`, `value` is required. A missing, non-JSON or
//! value-less configuration makes `on_configure` return `false`, so the host
//! must refuse to load the plugin (handy to test that path).

use log::{error, info};
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ConfigHeaderRoot { config: None })
    });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    value: String,
}

fn default_header() -> String {
    "x-config".to_string()
}

struct ConfigHeaderRoot {
    config: Option<Rc<Config>>,
}

impl Context for ConfigHeaderRoot {}

impl RootContext for ConfigHeaderRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("config-header: a configuration {{\"header\": ..., \"value\": ...}} is required");
            return false;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                info!("config-header: will set {}: {}", config.header, config.value);
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                error!("config-header: bad configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ConfigHeader {
            config: self.config.clone(),
        }))
    }
}

struct ConfigHeader {
    config: Option<Rc<Config>>,
}

impl Context for ConfigHeader {}

impl HttpContext for ConfigHeader {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(config) = &self.config {
            self.set_http_response_header(&config.header, Some(&config.value));
        }
        Action::Continue
    }
}
