//! `hello`: the SDK's `http_headers` example, adapted for weir's tests.
//!
//! - logs every request header (info level);
//! - answers `GET /hello` itself: 200, `content-type: text/plain`,
//!   `powered-by: proxy-wasm`, body `Hello, World!\n` (the upstream is never called);
//! - adds `x-hello: world` to every response;
//! - logs the response headers and a `completed` line in `on_log`.

use log::info;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(HelloRoot) });
}}

struct HelloRoot;

impl Context for HelloRoot {}

impl RootContext for HelloRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hello { context_id }))
    }
}

struct Hello {
    context_id: u32,
}

impl Context for Hello {}

impl HttpContext for Hello {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.get_http_request_headers_bytes() {
            info!("#{} -> {}: {}", self.context_id, name, String::from_utf8_lossy(value));
        }

        match self.get_http_request_header_bytes(":path") {
            Some(path) if path == b"/hello" || path.starts_with(b"/hello?") => {
                self.send_http_response(
                    200,
                    vec![("content-type", "text/plain"), ("powered-by", "proxy-wasm")],
                    Some(b"Hello, World!\n"),
                );
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.get_http_response_headers_bytes() {
            info!("#{} <- {}: {}", self.context_id, name, String::from_utf8_lossy(value));
        }
        self.add_http_response_header("x-hello", "world");
        Action::Continue
    }

    fn on_log(&mut self) {
        info!("#{} completed.", self.context_id);
    }
}
