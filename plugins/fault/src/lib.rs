//! `fault`: a filter that misbehaves on purpose in `on_http_request_headers`,
//! so tests can check that the host contains it:
//! - `panic`: a Rust panic. On wasm32-wasip1 it aborts: the SDK's panic hook
//!   logs `panicked at ...` through `proxy_log` (critical), then the module
//!   traps (`unreachable`). The host applies `on_error` and drops the instance.
//! - `spin`: an endless loop the optimizer cannot remove (`black_box`); the
//!   host must stop it with `limits.callback_time`.
//! - `grow`: allocates and touches 1 MiB blocks without bound; the host must
//!   stop it with `limits.memory`.
//!
//! Config (JSON): `{"fault": "panic" | "spin" | "grow", "when_header": "x-boom",
//! "phase": "request_headers" | "response_headers" | "response_body"}`; with
//! `when_header` the fault happens only when the request carries that header
//! (otherwise the request passes untouched), without it on every request.
//! `phase` (default `request_headers`) picks the callback that misbehaves; in
//! `response_body` the filter first pauses until the whole body is buffered.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FaultRoot { config: None }) });
}}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Fault {
    Panic,
    Spin,
    Grow,
}

/// Where the fault happens.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
enum Phase {
    #[default]
    RequestHeaders,
    ResponseHeaders,
    ResponseBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    fault: Fault,
    when_header: Option<String>,
    #[serde(default)]
    phase: Phase,
}

/// Blocks `grow` allocates, and the stride it touches them at (one write per page).
const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

struct FaultRoot {
    config: Option<Rc<Config>>,
}

impl Context for FaultRoot {}

impl RootContext for FaultRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("fault: a configuration {{\"fault\": \"panic\" | \"spin\" | \"grow\"}} is required");
            return false;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => {
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("fault: bad configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FaultContext {
            config: self.config.clone()?,
            armed: false,
        }))
    }
}

struct FaultContext {
    config: Rc<Config>,
    /// The request carried `when_header` (or there is none).
    armed: bool,
}

impl Context for FaultContext {}

impl HttpContext for FaultContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.armed = match &self.config.when_header {
            Some(name) => self.get_http_request_header_bytes(name).is_some(),
            None => true,
        };
        self.fault_in(Phase::RequestHeaders)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.fault_in(Phase::ResponseHeaders)
    }

    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        // Buffer the whole body first, as a redactor does, then fail.
        if !self.armed || self.config.phase != Phase::ResponseBody {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.fault_in(Phase::ResponseBody)
    }
}

impl FaultContext {
    fn fault_in(&self, phase: Phase) -> Action {
        if !self.armed || self.config.phase != phase {
            return Action::Continue;
        }
        match self.config.fault {
            Fault::Panic => panic!("boom"),
            Fault::Spin => {
                log::info!("spinning forever");
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Fault::Grow => {
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
    }
}
