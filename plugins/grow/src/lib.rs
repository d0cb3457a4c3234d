//! `grow`: allocates memory without bound in `on_http_request_headers`.
//!
//! It pushes 1 MiB chunks into a vector forever, writing one byte in every
//! 4 KiB page of each chunk so the memory is really used. Linear memory grows
//! until the host's limit (`limits.memory`) refuses `memory.grow`; the
//! allocator then fails and the module traps (Rust's alloc-error path, which
//! may first write "memory allocation of N bytes failed" to fd 2 via WASI
//! `fd_write`). The host must apply `on_error` and discard the instance.
//!
//! Config (JSON, optional): `{"when_header": "x-grow"}` -- only grow when the
//! request carries that header. Without it every request grows.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GrowRoot { when_header: None })
    });
}}

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    when_header: Option<String>,
}

struct GrowRoot {
    when_header: Option<Rc<str>>,
}

impl Context for GrowRoot {}

impl RootContext for GrowRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config: Config = match self.get_plugin_configuration() {
            None => Config::default(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("grow: bad configuration: {e}");
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
        Some(Box::new(Grow {
            when_header: self.when_header.clone(),
        }))
    }
}

struct Grow {
    when_header: Option<Rc<str>>,
}

impl Context for Grow {}

impl HttpContext for Grow {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(name) = &self.when_header {
            if self.get_http_request_header_bytes(name).is_none() {
                return Action::Continue;
            }
        }
        log::info!("growing without bound");
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let mut round: u8 = 0;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            round = round.wrapping_add(1);
            let mut i = 0;
            while i < CHUNK {
                chunk[i] = round | 1;
                i += PAGE;
            }
            hoard.push(std::hint::black_box(chunk));
            std::hint::black_box(&hoard);
        }
    }
}
