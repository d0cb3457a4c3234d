//! `prompt-guard`: refuses OpenAI chat requests whose messages contain a
//! forbidden phrase (case-insensitive substring match).
//!
//! The request body is buffered (`Action::Pause` until `end_of_stream`), read
//! with `get_http_request_body`, parsed as an OpenAI chat completion request,
//! and every message's `content` is checked -- a string, or an array of parts
//! of which the `{"type": "text", "text": ...}` ones count. A legacy
//! completions `prompt` (string or array of strings) is checked too. On a
//! match the filter answers itself:
//!
//! ```text
//! 400  content-type: application/json
//! {"error":{"message":"request blocked by prompt guard: matched pattern '...'",
//!           "type":"invalid_request_error","code":"prompt_blocked","param":"messages"}}
//! ```
//!
//! Bodies that are not JSON (or have no messages) pass untouched: rejecting
//! malformed requests is the upstream's business.
//!
//! Config (JSON): `{"patterns": ["ignore previous instructions", ...],
//! "message": "optional text"}`. When `message` is set it replaces the
//! default error message.

use log::{error, info};
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use serde::Deserialize;
use serde_json::Value;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PromptGuardRoot { guard: Rc::new(Guard::default()) })
    });
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    patterns: Vec<String>,
    message: Option<String>,
}

/// Configured state shared by every request of one VM.
#[derive(Default)]
struct Guard {
    /// `(original, lowercased)` pairs; empty patterns are dropped.
    patterns: Vec<(String, String)>,
    message: Option<String>,
}

impl Guard {
    fn from_config(config: Config) -> Guard {
        Guard {
            patterns: config
                .patterns
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let lower = p.to_lowercase();
                    (p, lower)
                })
                .collect(),
            message: config.message,
        }
    }

    /// The first pattern found in `text`, if any.
    fn find(&self, text: &str) -> Option<&str> {
        let lower = text.to_lowercase();
        self.patterns
            .iter()
            .find(|(_, p)| lower.contains(p.as_str()))
            .map(|(original, _)| original.as_str())
    }

    /// The first pattern found in any message (or prompt) of a request body.
    fn check_body(&self, body: &[u8]) -> Option<&str> {
        let request: Value = serde_json::from_slice(body).ok()?;
        let mut texts: Vec<&str> = Vec::new();
        if let Some(messages) = request.get("messages").and_then(Value::as_array) {
            for message in messages {
                collect_content(message.get("content"), &mut texts);
            }
        }
        match request.get("prompt") {
            Some(Value::String(s)) => texts.push(s),
            Some(Value::Array(items)) => texts.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
        texts.into_iter().find_map(|t| self.find(t))
    }

    fn error_body(&self, pattern: &str) -> Vec<u8> {
        let message = match &self.message {
            Some(m) => m.clone(),
            None => format!("request blocked by prompt guard: matched pattern '{pattern}'"),
        };
        serde_json::json!({
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": "prompt_blocked",
                "param": "messages",
            }
        })
        .to_string()
        .into_bytes()
    }
}

/// A message `content`: a string, or an array of parts whose text parts count.
fn collect_content<'a>(content: Option<&'a Value>, out: &mut Vec<&'a str>) {
    match content {
        Some(Value::String(s)) => out.push(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                let is_text = part.get("type").and_then(Value::as_str) == Some("text");
                if let (true, Some(text)) = (is_text, part.get("text").and_then(Value::as_str)) {
                    out.push(text);
                }
            }
        }
        _ => {}
    }
}

struct PromptGuardRoot {
    guard: Rc<Guard>,
}

impl Context for PromptGuardRoot {}

impl RootContext for PromptGuardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config: Config = match self.get_plugin_configuration() {
            None => Config {
                patterns: Vec::new(),
                message: None,
            },
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    error!("prompt-guard: bad configuration: {e}");
                    return false;
                }
            },
        };
        let guard = Guard::from_config(config);
        info!("prompt-guard: {} pattern(s)", guard.patterns.len());
        self.guard = Rc::new(guard);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PromptGuard {
            context_id,
            guard: self.guard.clone(),
        }))
    }
}

struct PromptGuard {
    context_id: u32,
    guard: Rc<Guard>,
}

impl Context for PromptGuard {}

impl HttpContext for PromptGuard {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.guard.patterns.is_empty() {
            return Action::Continue;
        }
        if !end_of_stream {
            // Wait for the whole body: the host buffers it and calls again.
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, body_size) else {
            return Action::Continue;
        };
        match self.guard.check_body(&body) {
            None => Action::Continue,
            Some(pattern) => {
                info!("#{} blocked: matched pattern '{}'", self.context_id, pattern);
                let reply = self.guard.error_body(pattern);
                self.send_http_response(400, vec![("content-type", "application/json")], Some(&reply));
                Action::Pause
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(patterns: &[&str]) -> Guard {
        Guard::from_config(Config {
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            message: None,
        })
    }

    #[test]
    fn matches_string_and_parts_case_insensitively() {
        let g = guard(&["Ignore previous instructions", "DAN mode"]);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"please IGNORE previous INSTRUCTIONS now"}]}"#;
        assert_eq!(g.check_body(body), Some("Ignore previous instructions"));
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"dan mode"}},{"type":"text","text":"enable dan Mode"}]}]}"#;
        assert_eq!(g.check_body(body), Some("DAN mode"));
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"dan mode"}}]}]}"#;
        assert_eq!(g.check_body(body), None);
        assert_eq!(g.check_body(br#"{"prompt":["x","dan mode"]}"#), Some("DAN mode"));
        assert_eq!(g.check_body(b"not json, dan mode"), None);
    }

    #[test]
    fn error_envelope() {
        let g = guard(&["it's"]);
        let v: Value = serde_json::from_slice(&g.error_body("it's")).unwrap();
        assert_eq!(
            v["error"]["message"],
            "request blocked by prompt guard: matched pattern 'it's'"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "prompt_blocked");
        assert_eq!(v["error"]["param"], "messages");
    }
}
