//! Properties a filter reads with `proxy_get_property`: a path of
//! NUL-separated segments (`request\0path`), answered from the request being
//! filtered and weir's own view of it (`weir\0model`). Strings are their
//! bytes; numbers (`response.code`, `source.port`) are 8-byte little-endian
//! integers, as Envoy encodes them.

use super::maps::HeaderMap;
use crate::pipeline::{RequestCtx, Route};
use crate::provider::Providers;
use std::net::SocketAddr;
use std::sync::Arc;

/// What weir knows about a request, copied before each callback (cheap: a
/// few short strings), so host functions never touch the `RequestCtx`.
#[derive(Clone, Default)]
pub(crate) struct Props {
    pub request_id: String,
    pub source: Option<SocketAddr>,
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
        Props {
            request_id: ctx.request_id.clone(),
            source: ctx.client_addr,
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

/// Everything a property lookup may read.
pub(crate) struct View<'a> {
    pub plugin: &'a str,
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
        [b"plugin_name"] | [b"plugin_root_id"] => Some(view.plugin.as_bytes().to_vec()),
        [b"plugin_vm_id"] => Some(Vec::new()),
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
        assert_eq!(get(b"weir\0model").unwrap(), b"gpt");
        assert_eq!(get(b"weir.request_id").unwrap(), b"rid");
        assert!(get(b"weir\0provider").is_none());
        assert!(get(b"weir\0nope").is_none());
        assert!(get(b"response\0headers\0x").is_none());
        let map = super::super::maps::deserialize(&get(b"request\0headers").unwrap()).unwrap();
        assert_eq!(map.len(), 3);
    }
}
