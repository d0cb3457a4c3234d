//! `proxy_http_call`: a filter's own HTTP request, to a provider of the
//! request's config generation (by name: its address and TLS, never its key)
//! or to an address the plugin's `http_call_allow` lists. The answer (or a
//! failure, as an empty answer, as Envoy gives it) goes back to the filter
//! through `proxy_on_http_call_response`.
//!
//! The exchange is `upstream`'s, as for the proxy's own attempts; a call
//! to a provider also goes through the pipeline's attempt (the provider's
//! bulkhead and in-flight count, and the admission of the calling request's
//! route, such as its circuit breaker).

use super::maps::HeaderMap;
use crate::error::WeirError;
use crate::metrics;
use crate::pipeline::{self, Route};
use crate::provider::Provider;
use crate::upstream::{Target as Peer, Upstream};
use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body a filter is given.
const MAX_RESPONSE_BODY: usize = 16 << 20;
/// Longest a call may take, whatever timeout the filter asks for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout when the filter gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a call goes.
#[derive(Clone)]
pub(crate) enum Target {
    Provider(Arc<Provider>),
    Addr(SocketAddr),
    /// A provider name made before any config generation was known (a root
    /// context at start-up): resolved when one is, or the call fails.
    Later,
}

/// A call a filter dispatched, not yet performed.
pub(crate) struct CallRequest {
    pub token: u32,
    /// The context that dispatched it (gets the answer).
    pub context: u32,
    pub upstream: String,
    pub target: Target,
    /// The calling request's route: its chain admits calls to providers.
    pub route: Option<Arc<Route>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Bytes,
    pub timeout: Duration,
}

/// What a filter is given in `proxy_on_http_call_response`.
pub(crate) struct CallResponse {
    pub token: u32,
    pub context: u32,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

/// The filter's timeout in milliseconds, bounded.
pub(crate) fn timeout_of(ms: u32) -> Duration {
    match ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms as u64).min(MAX_TIMEOUT),
    }
}

/// A runtime for work no request waits on: timers (`proxy_on_tick`), queue
/// notifications, and calls made by root contexts or left running after
/// the filter continued. One thread; callbacks there are as bounded as any.
pub(crate) static BACKGROUND: Lazy<tokio::runtime::Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-wasm-bg")
        .enable_all()
        .build()
        .expect("a tokio runtime for wasm background work")
});

/// Connection pools belong to one tokio runtime: this one is the
/// background runtime's; request-time calls use their plugin's own.
pub(crate) static BACKGROUND_UPSTREAM: Lazy<Upstream> = Lazy::new(new_upstream);

pub(crate) fn new_upstream() -> Upstream {
    Upstream::new(64)
}

fn header<'a>(pairs: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Headers never copied from the filter's request.
const SKIP: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
];

/// Build the request line and headers; `Err` names what the filter got wrong.
pub(crate) fn request_header(req: &CallRequest) -> Result<RequestHeader, String> {
    let method = header(&req.headers, b":method").ok_or(":method is required")?;
    let path = header(&req.headers, b":path").ok_or(":path is required")?;
    let method = std::str::from_utf8(method).map_err(|_| "bad :method")?;
    let mut h = RequestHeader::build(method, path, Some(req.headers.len() + 2)).map_err(|e| e.to_string())?;
    for (k, v) in &req.headers {
        if k.first() == Some(&b':') || SKIP.iter().any(|s| k.eq_ignore_ascii_case(s)) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v)) {
            h.append_header(n, v).map_err(|e| e.to_string())?;
        }
    }
    let authority = match header(&req.headers, b":authority") {
        Some(a) if !a.is_empty() => a.to_vec(),
        _ => match &req.target {
            Target::Provider(p) => p.endpoint.authority().into_bytes(),
            Target::Addr(_) | Target::Later => req.upstream.clone().into_bytes(),
        },
    };
    let authority = http::HeaderValue::from_bytes(&authority).map_err(|_| "bad :authority")?;
    h.insert_header(http::header::HOST, authority)
        .map_err(|e| e.to_string())?;
    if !req.body.is_empty() || !matches!(method, "GET" | "HEAD") {
        h.insert_header(http::header::CONTENT_LENGTH, req.body.len().to_string())
            .map_err(|e| e.to_string())?;
    }
    Ok(h)
}

/// Send one request and read the whole answer.
async fn exchange(
    upstream: &Upstream,
    req: &CallRequest,
    head: &RequestHeader,
) -> Result<(ResponseHeader, Bytes), WeirError> {
    match &req.target {
        Target::Provider(p) => {
            let chain = req.route.as_ref().map_or(&[][..], |r| &r.plugins[..]);
            pipeline::call_provider(upstream, chain, p, head, &req.body, MAX_RESPONSE_BODY).await
        }
        Target::Addr(a) => {
            let mut peer = HttpPeer::new(*a, false, String::new());
            peer.options.connection_timeout = Some(req.timeout);
            peer.options.idle_timeout = Some(Duration::from_secs(60));
            let target = Peer {
                name: &req.upstream,
                peer: &peer,
                first_byte: req.timeout,
                idle: req.timeout,
            };
            let ex = upstream.send(&target, head, &req.body).await?;
            let header = ex.header().clone();
            let body = upstream.read_whole(ex, &req.upstream, MAX_RESPONSE_BODY).await?;
            Ok((header, body))
        }
        Target::Later => Err(WeirError::new(
            crate::error::ErrorKind::Upstream,
            format!("'{}' is not a provider", req.upstream),
        )),
    }
}

/// Perform a call within its timeout. A failure is an answer with no
/// headers and no body, which is what filters written for Envoy expect.
pub(crate) async fn perform(upstream: &Upstream, plugin: &str, req: CallRequest) -> CallResponse {
    let mut out = CallResponse {
        token: req.token,
        context: req.context,
        headers: HeaderMap::default(),
        body: Bytes::new(),
        trailers: HeaderMap::default(),
    };
    let head = match request_header(&req) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("wasm plugin '{plugin}': http_call to '{}': {e}", req.upstream);
            metrics::WASM_HTTP_CALLS.with_label_values(&[plugin, "error"]).inc();
            return out;
        }
    };
    let result = tokio::time::timeout(req.timeout, exchange(upstream, &req, &head)).await;
    let outcome = match result {
        Ok(Ok((resp, body))) => {
            let mut pairs = vec![(b":status".to_vec(), resp.status.as_str().as_bytes().to_vec())];
            for (k, v) in resp.headers.iter() {
                pairs.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            out.headers = HeaderMap::from_pairs(pairs);
            out.body = body;
            "ok"
        }
        Ok(Err(e)) => {
            log::warn!("wasm plugin '{plugin}': http_call to '{}' failed: {e}", req.upstream);
            "error"
        }
        Err(_) => {
            log::warn!(
                "wasm plugin '{plugin}': http_call to '{}' timed out after {}ms",
                req.upstream,
                req.timeout.as_millis()
            );
            "timeout"
        }
    };
    metrics::WASM_HTTP_CALLS.with_label_values(&[plugin, outcome]).inc();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&str, &str)], body: &str) -> CallRequest {
        CallRequest {
            token: 1,
            context: 2,
            upstream: "127.0.0.1:9500".into(),
            target: Target::Addr("127.0.0.1:9500".parse().unwrap()),
            route: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            body: Bytes::from(body.to_string()),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn builds_request_header() {
        let h = request_header(&call(
            &[
                (":method", "POST"),
                (":path", "/check?x=1"),
                ("x-a", "1"),
                ("content-length", "99"),
            ],
            "hi",
        ))
        .unwrap();
        assert_eq!(h.method, http::Method::POST);
        assert_eq!(h.uri.to_string(), "/check?x=1");
        assert_eq!(h.headers.get("host").unwrap(), "127.0.0.1:9500");
        assert_eq!(h.headers.get("content-length").unwrap(), "2");
        assert_eq!(h.headers.get("x-a").unwrap(), "1");
        let h = request_header(&call(&[(":method", "GET"), (":path", "/"), (":authority", "auth")], "")).unwrap();
        assert_eq!(h.headers.get("host").unwrap(), "auth");
        assert!(h.headers.get("content-length").is_none());
        assert!(request_header(&call(&[(":path", "/")], "")).is_err());
        assert!(request_header(&call(&[(":method", "GET")], "")).is_err());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_of(0), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(250), Duration::from_millis(250));
        assert_eq!(timeout_of(u32::MAX), MAX_TIMEOUT);
    }
}
