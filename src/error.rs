//! Errors weir itself produces: one kind each, mapped in one place to a status,
//! OpenAI's error envelope, `Retry-After` and `x-weir-queue`.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use std::fmt;

/// What went wrong, as a client sees it (SPEC's error table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    PayloadTooLarge,
    /// The client did not send its request body in time.
    RequestTimeout,
    NotFound,
    Authentication,
    Permission,
    ModelNotFound,
    RateLimited,
    /// A budget (tokens or money over a window) has no room for the request.
    InsufficientQuota,
    QueueFull,
    QueueTimeout,
    CircuitOpen,
    Upstream,
    UpstreamTimeout,
    Plugin,
    /// A plugin's shared store (e.g. Redis) is unreachable and its policy is fail_closed.
    StoreUnavailable,
}

impl ErrorKind {
    /// A bulkhead's or breaker's refusal: overload handled as designed
    /// (counted in metrics, not logged as a failure).
    pub fn is_load_shedding(self) -> bool {
        matches!(
            self,
            ErrorKind::QueueFull | ErrorKind::QueueTimeout | ErrorKind::CircuitOpen
        )
    }

    /// HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::NotFound => 404,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::ModelNotFound => 404,
            ErrorKind::RateLimited | ErrorKind::InsufficientQuota => 429,
            ErrorKind::QueueFull | ErrorKind::QueueTimeout | ErrorKind::CircuitOpen => 503,
            ErrorKind::Upstream => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Plugin => 500,
            ErrorKind::StoreUnavailable => 503,
        }
    }

    /// The envelope's `type` (and `code`).
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::NotFound => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::InsufficientQuota => "insufficient_quota",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Upstream => "upstream_error",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Plugin | ErrorKind::StoreUnavailable => "plugin_error",
        }
    }

    /// The envelope's `code`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::NotFound => "route_not_found",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "invalid_api_key",
            ErrorKind::StoreUnavailable => "store_unavailable",
            other => other.type_name(),
        }
    }
}

/// An error answered by weir, not by a provider.
#[derive(Debug, Clone)]
pub struct WeirError {
    pub kind: ErrorKind,
    pub message: String,
    /// The queue or limit that refused (`x-weir-queue`).
    pub queue: Option<String>,
    /// Seconds for `Retry-After` (429 and 503 only; at least 1).
    pub retry_after: Option<u64>,
    /// The envelope's `param`.
    pub param: Option<&'static str>,
    /// Further headers the refusing plugin adds (its own response phase does
    /// not run on its own refusal).
    pub headers: Vec<(&'static str, String)>,
}

impl WeirError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WeirError {
            kind,
            message: message.into(),
            queue: None,
            retry_after: None,
            param: None,
            headers: Vec::new(),
        }
    }

    pub fn with_queue(mut self, queue: impl Into<String>, retry_after_secs: u64) -> Self {
        self.queue = Some(queue.into());
        self.retry_after = Some(retry_after_secs.max(1));
        self
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// OpenAI's error envelope as JSON bytes.
    pub fn body(&self) -> Bytes {
        /// OpenAI's error envelope, written straight from borrowed fields.
        #[derive(serde::Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        let e = Envelope {
            error: Inner {
                message: &self.message,
                kind: self.kind.type_name(),
                param: self.param,
                code: self.kind.code(),
            },
        };
        Bytes::from(serde_json::to_vec(&e).unwrap_or_default())
    }

    /// The headers of this error's answer, body length set, into `h`
    /// (weir's response header is built around the map by the pipeline, so
    /// that no name here is parsed again).
    pub fn fill_headers(&self, h: &mut HeaderMap, body_len: usize, request_id: &str) {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
        if let Some(v) = (!request_id.is_empty())
            .then(|| HeaderValue::from_str(request_id).ok())
            .flatten()
        {
            h.insert(&X_REQUEST_ID, v);
        }
        if let Some(v) = self.queue.as_deref().and_then(|q| HeaderValue::from_str(q).ok()) {
            h.insert(&X_WEIR_QUEUE, v);
        }
        // Rare (a 429 or a budget's refusal): their names are parsed.
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.insert(k, v);
            }
        }
        let status = self.status();
        if status == 429 || status == 503 {
            let secs = self.retry_after.unwrap_or(1).max(1);
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
    }

    /// How many headers [`WeirError::fill_headers`] writes at most.
    pub fn header_count(&self) -> usize {
        6 + self.headers.len()
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_WEIR_QUEUE: HeaderName = HeaderName::from_static("x-weir-queue");

impl fmt::Display for WeirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.type_name(), self.message)
    }
}

impl std::error::Error for WeirError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_headers() {
        let e = WeirError::new(ErrorKind::QueueFull, "queue 'provider:a' is full").with_queue("provider:a", 0);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "queue_full");
        assert_eq!(v["error"]["code"], "queue_full");
        assert!(v["error"]["param"].is_null());
        let mut h = HeaderMap::new();
        e.fill_headers(&mut h, 10, "rid");
        assert_eq!(e.status(), 503);
        assert_eq!(h.get("retry-after").unwrap(), "1");
        assert_eq!(h.get("x-weir-queue").unwrap(), "provider:a");
        assert_eq!(h.get("x-request-id").unwrap(), "rid");
        assert_eq!(h.get("content-length").unwrap(), "10");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert!(h.len() <= e.header_count());
    }

    #[test]
    fn a_plugins_headers_are_added_and_a_bad_one_left_out() {
        let mut e = WeirError::new(ErrorKind::RateLimited, "slow down").with_queue("ratelimit:l:requests", 3);
        e.headers.push(("x-ratelimit-remaining-requests", "0".into()));
        e.headers.push(("x-bad", "line\nbreak".into()));
        let mut h = HeaderMap::new();
        e.fill_headers(&mut h, 1, "r");
        assert_eq!(h.get("x-ratelimit-remaining-requests").unwrap(), "0");
        assert!(h.get("x-bad").is_none());
        assert_eq!(h.get("retry-after").unwrap(), "3");
    }

    #[test]
    fn no_retry_after_on_400() {
        let e = WeirError::invalid("bad");
        let mut h = HeaderMap::new();
        e.fill_headers(&mut h, 1, "");
        assert!(h.get("retry-after").is_none());
        assert!(h.get("x-request-id").is_none(), "no id, no header");
        assert_eq!(e.status(), 400);
    }
}
