//! `pii-redactor`: replaces e-mail addresses with `[EMAIL]` and phone numbers
//! with `[PHONE]` in the request body before it leaves for the provider.
//!
//! The body is buffered (`Action::Pause` until `end_of_stream`), read with
//! `get_http_request_body`, scanned by [`redact`] (hand-written, no regex) and,
//! only when something was found, written back whole with
//! `set_http_request_body(0, body_size, new)`. Every other byte is kept
//! exactly; JSON bodies are only changed inside string literals, so they stay
//! valid JSON. The host must fix `content-length` when the size changes.
//!
//! Config (JSON, optional): `{"email": true, "phone": true}` (both default to
//! `true`).

pub mod redact;

use log::{error, info};
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use redact::Options;
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PiiRedactorRoot { options: Options::default() })
    });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "yes")]
    email: bool,
    #[serde(default = "yes")]
    phone: bool,
}

fn yes() -> bool {
    true
}

struct PiiRedactorRoot {
    options: Options,
}

impl Context for PiiRedactorRoot {}

impl RootContext for PiiRedactorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.options = match self.get_plugin_configuration() {
            None => Options::default(),
            Some(bytes) => match serde_json::from_slice::<Config>(&bytes) {
                Ok(c) => Options {
                    email: c.email,
                    phone: c.phone,
                },
                Err(e) => {
                    error!("pii-redactor: bad configuration: {e}");
                    return false;
                }
            },
        };
        info!(
            "pii-redactor: email={} phone={}",
            self.options.email, self.options.phone
        );
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PiiRedactor {
            context_id,
            options: self.options,
        }))
    }
}

struct PiiRedactor {
    context_id: u32,
    options: Options,
}

impl Context for PiiRedactor {}

impl HttpContext for PiiRedactor {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.options.email && !self.options.phone {
            return Action::Continue;
        }
        if !end_of_stream {
            // Wait for the whole body: the host buffers it and calls again.
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, body_size) else {
            return Action::Continue;
        };
        if let Some((new_body, counts)) = redact::redact_body(&body, self.options) {
            info!(
                "#{} redacted {} e-mail(s), {} phone number(s)",
                self.context_id, counts.emails, counts.phones
            );
            self.set_http_request_body(0, body_size, &new_body);
        }
        Action::Continue
    }
}
