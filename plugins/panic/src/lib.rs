//! `panic`: panics in `on_http_request_headers` (a guest fault).
//!
//! On wasm32-wasip1 a Rust panic aborts: the SDK's panic hook first logs
//! `panicked at ...: boom` through `proxy_log` (level critical), then the
//! module traps (`unreachable`). The host must turn that into the plugin's
//! `on_error` policy and must not reuse the faulted instance.
//!
//! Config (JSON, optional): `{"when_header": "x-boom"}` -- only panic when the
//! request carries that header (otherwise the request passes untouched).
//! Without it every request panics.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PanicRoot { when_header: None })
    });
}}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    when_header: Option<String>,
}

struct PanicRoot {
    when_header: Option<Rc<str>>,
}

impl Context for PanicRoot {}

impl RootContext for PanicRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config: Config = match self.get_plugin_configuration() {
            None => Config::default(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("panic: bad configuration: {e}");
                    return false;
                }
            },
        };
        self.when_header = config.when_header.map(Rc::from);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Panic {
            when_header: self.when_header.clone(),
        }))
    }
}

struct Panic {
    when_header: Option<Rc<str>>,
}

impl Context for Panic {}

impl HttpContext for Panic {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(name) = &self.when_header {
            if self.get_http_request_header_bytes(name).is_none() {
                return Action::Continue;
            }
        }
        panic!("boom");
    }
}
