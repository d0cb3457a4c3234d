//! `secret-redact`: the SDK's `http_body` example, adapted for weir's tests.
//!
//! Buffers the whole response body (returns `Action::Pause` until
//! `end_of_stream`), then replaces every `secret` with `******` (same length, so
//! `content-length` stays right) and writes the body back with
//! `set_http_response_body`. Bodies without `secret` are left untouched.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SecretRedactRoot) });
}}

const NEEDLE: &[u8] = b"secret";
const MASK: &[u8] = b"******";

struct SecretRedactRoot;

impl Context for SecretRedactRoot {}

impl RootContext for SecretRedactRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SecretRedact))
    }
}

struct SecretRedact;

impl Context for SecretRedact {}

impl HttpContext for SecretRedact {
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Wait -- we'll be called again when the complete body is buffered
            // at the host side.
            return Action::Pause;
        }

        // Replace the message body if it contains the text "secret".
        if let Some(body) = self.get_http_response_body(0, body_size) {
            if let Some(masked) = mask(&body) {
                log::info!("masked {} byte response body", body_size);
                self.set_http_response_body(0, body_size, &masked);
            }
        }
        Action::Continue
    }
}

/// `None` when `body` holds no `secret`; else the body with each one masked.
fn mask(body: &[u8]) -> Option<Vec<u8>> {
    if !body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(NEEDLE) {
            out.extend_from_slice(MASK);
            i += NEEDLE.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    Some(out)
}
