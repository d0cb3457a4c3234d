//! `spin`: never returns from `on_http_request_headers` (an endless loop that
//! the optimizer cannot remove, thanks to `std::hint::black_box`).
//!
//! The host must stop it with its per-callback time limit
//! (`limits.callback_time`, e.g. wasmtime epoch interruption or fuel), apply
//! the plugin's `on_error` policy and throw the instance away.
//!
//! Config (JSON, optional): `{"when_header": "x-spin"}` -- only spin when the
//! request carries that header. Without it every request spins.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(SpinRoot { when_header: None })
    });
}}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    when_header: Option<String>,
}

struct SpinRoot {
    when_header: Option<Rc<str>>,
}

impl Context for SpinRoot {}

impl RootContext for SpinRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config: Config = match self.get_plugin_configuration() {
            None => Config::default(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("spin: bad configuration: {e}");
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
        Some(Box::new(Spin {
            when_header: self.when_header.clone(),
        }))
    }
}

struct Spin {
    when_header: Option<Rc<str>>,
}

impl Context for Spin {}

impl HttpContext for Spin {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(name) = &self.when_header {
            if self.get_http_request_header_bytes(name).is_none() {
                return Action::Continue;
            }
        }
        log::info!("spinning forever");
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}
