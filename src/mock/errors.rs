//! OpenAI's error envelope, for the mock's own errors and injected failures.

use serde_json::{json, Value};

/// OpenAI's error envelope.
pub(super) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

/// The envelope of an injected failure, and whether it carries `retry-after`.
pub(super) fn failure_body(status: u16) -> (Value, bool) {
    match status {
        429 => (
            error_body(
                "Rate limit reached (injected by weir mock)",
                "rate_limit_exceeded",
                Some("rate_limit_exceeded"),
            ),
            true,
        ),
        500..=599 => (
            error_body(
                "The server had an error while processing your request (injected by weir mock)",
                "server_error",
                None,
            ),
            false,
        ),
        _ => (
            error_body("Request failed (injected by weir mock)", "invalid_request_error", None),
            false,
        ),
    }
}

/// 429 of `--capacity`: OpenAI's request rate limit envelope (`type`
/// `requests`, `code` `rate_limit_exceeded`), naming the full slots and queue.
pub(super) fn capacity_exceeded(capacity: u32, queue: u32) -> Value {
    error_body(
        &format!(
            "Rate limit reached for requests: all {capacity} slots are busy and {queue} requests \
             wait (weir mock --capacity). Please try again later."
        ),
        "requests",
        Some("rate_limit_exceeded"),
    )
}

/// 404 for a model the mock does not serve.
pub(super) fn model_not_found(model: &str) -> Value {
    error_body(
        &format!("The model `{model}` does not exist"),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

/// 400 `context_length_exceeded`, word for word as OpenAI sends it.
pub(super) fn context_length_exceeded() -> Value {
    json!({"error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted \
                    in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }})
}

/// 400 `content_filter` as Azure OpenAI sends it (`type` null, a `status` field).
pub(super) fn content_filtered() -> Value {
    json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content \
                    management policy.",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
    }})
}

/// 400 for an assistant prefill the model refuses.
pub(super) fn prefill_unsupported() -> Value {
    error_body(
        "This model does not support assistant message prefill.",
        "invalid_request_error",
        Some("prefill_unsupported"),
    )
}

/// 400 for a request the mock cannot answer.
pub(super) fn invalid_request(message: &str) -> Value {
    error_body(message, "invalid_request_error", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelopes() {
        let (body, retry) = failure_body(429);
        assert!(retry);
        assert_eq!(body["error"]["type"], "rate_limit_exceeded");
        let (body, retry) = failure_body(503);
        assert!(!retry);
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["code"].is_null());
        assert!(body["error"]["param"].is_null());
        let body = capacity_exceeded(2, 8);
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");
        let body = model_not_found("nope");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["message"], "The model `nope` does not exist");
    }

    #[test]
    fn provider_error_bodies() {
        let body = context_length_exceeded();
        assert_eq!(
            body["error"]["message"],
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 \
             tokens. Please reduce the length of the messages."
        );
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "messages");
        let body = content_filtered();
        assert_eq!(
            body["error"]["message"],
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."
        );
        assert!(body["error"]["type"].is_null());
        assert_eq!(body["error"]["status"], 400);
        assert_eq!(prefill_unsupported()["error"]["code"], "prefill_unsupported");
    }
}
