//! Properties a filter reads with `proxy_get_property`: a path of
//! NUL-separated segments (`request\0path`), answered from the request being
//! filtered and weir's own view of it (`weir\0model`), with Envoy's
//! attribute names. Strings are their bytes; numbers (`response.code`,
//! `source.port`) are 8-byte little-endian integers and booleans one byte,
//! as Envoy encodes them; times and durations are 8-byte nanoseconds.

use super::maps::HeaderMap;
use crate::pipeline::{RequestCtx, Route};
use crate::provider::Providers;
use once_cell::sync::Lazy;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What weir knows about a request, copied before each callback (cheap: a
/// few short strings), so host functions never touch the `RequestCtx`.
#[derive(Clone, Default)]
pub(crate) struct Props {
    pub request_id: String,
    pub source: Option<SocketAddr>,
    /// The listener's address the client connected to.
    pub destination: Option<SocketAddr>,
    /// The client showed a certificate on a TLS connection.
    pub mtls: bool,
    /// When the request started (wall clock, ns since the epoch) and by the monotonic clock.
    pub started_ns: i64,
    pub started: Option<Instant>,
    /// Request body bytes (once read) and header bytes.
    pub request_body_size: Option<u64>,
    pub request_header_size: u64,
    /// Response bytes that left this filter so far (header, body).
    pub response_header_size: u64,
    pub response_body_size: u64,
    /// The provider answering, and its address.
    pub upstream: Option<SocketAddr>,
    /// The matched route (its chain applies to the filter's `http_call`s).
    pub route: Option<Arc<Route>>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub api_key_name: Option<Arc<str>>,
    pub response_code: Option<u16>,
    /// The providers of the request's config generation: `http_call`
    /// resolves provider names in it.
    pub providers: Option<Arc<Providers>>,
}

impl Props {
    pub fn of(ctx: &RequestCtx) -> Props {
        let since = ctx.started.elapsed();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Props {
            request_id: ctx.request_id.clone(),
            source: ctx.client_addr,
            destination: ctx.server_addr,
            mtls: ctx.mtls,
            started_ns: now.saturating_sub(since).as_nanos() as i64,
            started: Some(ctx.started),
            request_body_size: (ctx.head.is_some() || !ctx.body.is_empty()).then_some(ctx.body.len() as u64),
            request_header_size: 0,
            response_header_size: 0,
            response_body_size: 0,
            upstream: ctx.provider.as_ref().and_then(|p| p.peer._address.as_inet().copied()),
            route: ctx.route.clone(),
            model: ctx.head.as_ref().map(|h| h.model.clone()),
            provider: ctx.provider.as_ref().map(|p| p.name.clone()),
            api_key_name: ctx.identity.as_ref().map(|i| i.name.clone()),
            response_code: (ctx.status != 0).then_some(ctx.status),
            providers: ctx.providers.clone(),
        }
    }
}

/// Split a serialized property path into its segments. A single segment
/// written with dots (`request.path`) is split on its first two dots, so
/// filters written either way work; the rest (a header name) stays whole.
pub(crate) fn parse_path(raw: &[u8]) -> Vec<&[u8]> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    if parts.len() > 1 {
        return parts;
    }
    let mut out = Vec::with_capacity(3);
    let mut rest = raw;
    while out.len() < 2 {
        match rest.iter().position(|b| *b == b'.') {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn boolean(v: bool) -> Vec<u8> {
    vec![v as u8]
}

/// `node.id`: the host's name, as an Envoy node is usually named.
static NODE_ID: Lazy<String> = Lazy::new(|| {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weir".to_string())
});

/// `connection.id`: the same for every request of one connection (a hash
/// of its two addresses, as a live connection is named by them).
fn connection_id(p: &Props) -> Option<u64> {
    let (src, dst) = (p.source?, p.destination?);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (src, dst).hash(&mut h);
    Some(h.finish())
}

/// Everything a property lookup may read.
pub(crate) struct View<'a> {
    pub plugin: &'a str,
    pub root_id: &'a str,
    pub vm_id: &'a str,
    pub props: Option<&'a Props>,
    pub request_headers: Option<&'a HeaderMap>,
    pub response_headers: Option<&'a HeaderMap>,
}

/// The value of a property, `None` if weir has no such property (or has no
/// value for it at this point of the request).
pub(crate) fn lookup(view: &View, path: &[&[u8]]) -> Option<Vec<u8>> {
    let req = |name: &[u8]| view.request_headers.and_then(|h| h.get(name));
    let str_opt = |s: Option<&str>| s.map(|s| s.as_bytes().to_vec());
    let props = view.props;
    match path {
        [b"plugin_name"] => Some(view.plugin.as_bytes().to_vec()),
        [b"plugin_root_id"] => Some(view.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => Some(view.vm_id.as_bytes().to_vec()),
        [b"route_name"] => str_opt(props.and_then(|p| p.route.as_ref()).map(|r| r.name.as_str())),
        [b"cluster_name"] => str_opt(props.and_then(|p| p.provider.as_deref())),
        [b"node", b"id"] => Some(NODE_ID.as_bytes().to_vec()),
        [b"node", b"cluster"] => Some(b"weir".to_vec()),
        // An empty google.protobuf.Struct serializes to no bytes.
        [b"node", b"metadata"] => Some(Vec::new()),
        [b"upstream", b"address"] => props.and_then(|p| p.upstream).map(|a| a.to_string().into_bytes()),
        [b"upstream", b"port"] => props.and_then(|p| p.upstream).map(|a| int(a.port() as i64)),
        [b"connection", b"id"] => props.and_then(connection_id).map(|id| id.to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => props.map(|p| boolean(p.mtls)),
        [b"connection", b"requested_server_name"] => props.map(|_| Vec::new()),
        [b"destination", b"address"] => props.and_then(|p| p.destination).map(|a| a.to_string().into_bytes()),
        [b"destination", b"port"] => props.and_then(|p| p.destination).map(|a| int(a.port() as i64)),
        [b"request", b"time"] => props.map(|p| int(p.started_ns)),
        [b"request", b"duration"] => props
            .and_then(|p| p.started)
            .map(|t| int(t.elapsed().as_nanos() as i64)),
        [b"request", b"useragent"] => req(b"user-agent"),
        [b"request", b"referer"] => req(b"referer"),
        [b"request", b"size"] => props.and_then(|p| p.request_body_size).map(|n| int(n as i64)),
        [b"request", b"total_size"] => props
            .filter(|p| p.request_body_size.is_some())
            .map(|p| int((p.request_header_size + p.request_body_size.unwrap_or(0)) as i64)),
        [b"response", b"size"] => props
            .filter(|p| p.response_code.is_some())
            .map(|p| int(p.response_body_size as i64)),
        [b"response", b"total_size"] => props
            .filter(|p| p.response_code.is_some())
            .map(|p| int((p.response_header_size + p.response_body_size) as i64)),
        [b"request", b"path"] => req(b":path"),
        [b"request", b"url_path"] => req(b":path").map(|p| match p.iter().position(|b| *b == b'?') {
            Some(i) => p[..i].to_vec(),
            None => p,
        }),
        [b"request", b"query"] => req(b":path").map(|p| match p.iter().position(|b| *b == b'?') {
            Some(i) => p[i + 1..].to_vec(),
            None => Vec::new(),
        }),
        [b"request", b"host"] => req(b":authority"),
        [b"request", b"method"] => req(b":method"),
        [b"request", b"scheme"] => req(b":scheme"),
        [b"request", b"protocol"] => view.request_headers.map(|_| b"HTTP/1.1".to_vec()),
        [b"connection", b"tls_version"] => None,
        [b"request", b"id"] | [b"weir", b"request_id"] => props.map(|p| p.request_id.as_bytes().to_vec()),
        [b"request", b"headers"] => view.request_headers.map(HeaderMap::serialize),
        [b"request", b"headers", name] => req(name),
        [b"response", b"code"] => props.and_then(|p| p.response_code).map(|c| int(c as i64)),
        [b"response", b"headers"] => view.response_headers.map(HeaderMap::serialize),
        [b"response", b"headers", name] => view.response_headers.and_then(|h| h.get(name)),
        [b"source", b"address"] => props.and_then(|p| p.source).map(|a| a.to_string().into_bytes()),
        [b"source", b"port"] => props.and_then(|p| p.source).map(|a| int(a.port() as i64)),
        [b"weir", b"route"] => str_opt(props.and_then(|p| p.route.as_ref()).map(|r| r.name.as_str())),
        [b"weir", b"model"] => str_opt(props.and_then(|p| p.model.as_deref())),
        [b"weir", b"provider"] => str_opt(props.and_then(|p| p.provider.as_deref())),
        [b"weir", b"api_key_name"] => str_opt(props.and_then(|p| p.api_key_name.as_deref())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path(b"request\0path"), vec![&b"request"[..], b"path"]);
        assert_eq!(parse_path(b"request\0path\0"), vec![&b"request"[..], b"path"]);
        assert_eq!(parse_path(b"plugin_name"), vec![&b"plugin_name"[..]]);
        assert_eq!(parse_path(b"request.path"), vec![&b"request"[..], b"path"]);
        assert_eq!(
            parse_path(b"request.headers.x-a.b"),
            vec![&b"request"[..], b"headers", b"x-a.b"]
        );
        assert_eq!(
            parse_path(b"request\0headers\0x.y"),
            vec![&b"request"[..], b"headers", b"x.y"]
        );
        assert!(parse_path(b"").is_empty());
    }

    #[test]
    fn lookups() {
        let headers = HeaderMap::from_pairs(vec![
            (b":path".to_vec(), b"/v1/chat?a=1".to_vec()),
            (b":method".to_vec(), b"POST".to_vec()),
            (b"x-team".to_vec(), b"blue".to_vec()),
        ]);
        let props = Props {
            request_id: "rid".into(),
            source: Some("10.0.0.1:4321".parse().unwrap()),
            model: Some("gpt".into()),
            response_code: Some(200),
            ..Props::default()
        };
        let view = View {
            plugin: "guard",
            root_id: "root",
            vm_id: "",
            props: Some(&props),
            request_headers: Some(&headers),
            response_headers: None,
        };
        let get = |p: &[u8]| lookup(&view, &parse_path(p));
        assert_eq!(get(b"request\0path").unwrap(), b"/v1/chat?a=1");
        assert_eq!(get(b"request\0url_path").unwrap(), b"/v1/chat");
        assert_eq!(get(b"request\0query").unwrap(), b"a=1");
        assert_eq!(get(b"request\0method").unwrap(), b"POST");
        assert_eq!(get(b"request\0headers\0X-Team").unwrap(), b"blue");
        assert_eq!(get(b"source\0address").unwrap(), b"10.0.0.1:4321");
        assert_eq!(get(b"source\0port").unwrap(), 4321i64.to_le_bytes());
        assert_eq!(get(b"response\0code").unwrap(), 200i64.to_le_bytes());
        assert_eq!(get(b"plugin_name").unwrap(), b"guard");
        assert_eq!(get(b"plugin_root_id").unwrap(), b"root");
        assert_eq!(get(b"plugin_vm_id").unwrap(), b"");
        assert_eq!(get(b"connection\0mtls").unwrap(), [0]);
        assert!(get(b"upstream\0address").is_none(), "no provider yet");
        assert_eq!(get(b"weir\0model").unwrap(), b"gpt");
        assert_eq!(get(b"weir.request_id").unwrap(), b"rid");
        assert!(get(b"weir\0provider").is_none());
        assert!(get(b"weir\0nope").is_none());
        assert!(get(b"response\0headers\0x").is_none());
        let map = super::super::maps::deserialize(&get(b"request\0headers").unwrap()).unwrap();
        assert_eq!(map.len(), 3);
    }
}
