//! Header maps as a filter sees them: ordered (name, value) byte pairs with
//! lowercase names, the Proxy-Wasm wire format for whole maps, and the copy
//! to and from Pingora's request/response headers (with the `:method`,
//! `:path`, `:authority`, `:scheme` and `:status` pseudo headers).

use pingora_http::{RequestHeader, ResponseHeader};

/// An ordered header map. `changed` records that a filter wrote to it, so an
/// untouched map is never copied back.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HeaderMap {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    pub changed: bool,
}

impl HeaderMap {
    pub fn from_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        HeaderMap { pairs, changed: false }
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// The value of `name`; several values are joined with `,` as Envoy does.
    pub fn get(&self, name: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (k, v) in &self.pairs {
            if k.eq_ignore_ascii_case(name) {
                match &mut out {
                    None => out = Some(v.clone()),
                    Some(o) => {
                        o.push(b',');
                        o.extend_from_slice(v);
                    }
                }
            }
        }
        out
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
        self.changed = true;
    }

    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        // Keep the position of the first occurrence, drop the others.
        let mut placed = false;
        self.pairs.retain_mut(|(k, v)| {
            if !k.eq_ignore_ascii_case(name) {
                return true;
            }
            if placed {
                return false;
            }
            placed = true;
            *v = value.to_vec();
            true
        });
        if !placed {
            self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
        }
        self.changed = true;
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.changed = true;
    }

    pub fn set_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        self.pairs = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        self.changed = true;
    }

    /// The Proxy-Wasm wire format (see [`serialize`]).
    pub fn serialize(&self) -> Vec<u8> {
        serialize(self.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }
}

/// Proxy-Wasm's serialized map: a little-endian u32 count, then a (key
/// length, value length) u32 pair per entry, then every key and value, each
/// followed by a NUL byte.
pub(crate) fn serialize<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, payload) = pairs
        .clone()
        .fold((0usize, 0usize), |(n, s), (k, v)| (n + 1, s + k.len() + v.len() + 10));
    let mut out = Vec::with_capacity(4 + payload);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parse a serialized map; `None` if it is malformed (the caller answers
/// BAD_ARGUMENT). An empty input is an empty map, as the SDKs send it.
pub(crate) fn deserialize(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    // Each entry needs at least 10 bytes; refuse counts the data cannot hold.
    if count > data.len() / 10 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (klen, vlen) in sizes {
        let key = data.get(at..at.checked_add(klen)?)?.to_vec();
        at += klen + 1;
        let value = data.get(at..at.checked_add(vlen)?)?.to_vec();
        at += vlen + 1;
        if at > data.len() {
            return None;
        }
        out.push((key, value));
    }
    Some(out)
}

/// The client's request as a filter sees it: pseudo headers first, then the
/// headers (`host` becomes `:authority`, as in Envoy).
pub(crate) fn from_request(req: &RequestHeader) -> HeaderMap {
    let mut pairs = Vec::with_capacity(req.headers.len() + 4);
    let authority = req
        .headers
        .get("host")
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .unwrap_or_default();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    pairs.push((b":authority".to_vec(), authority));
    pairs.push((b":path".to_vec(), path.as_bytes().to_vec()));
    pairs.push((b":method".to_vec(), req.method.as_str().as_bytes().to_vec()));
    pairs.push((
        b":scheme".to_vec(),
        req.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
    ));
    for (name, value) in req.headers.iter() {
        if name.as_str() == "host" {
            continue;
        }
        pairs.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    HeaderMap::from_pairs(pairs)
}

/// A response header as a filter sees it: `:status`, then the headers.
pub(crate) fn from_response(resp: &ResponseHeader) -> HeaderMap {
    let mut pairs = Vec::with_capacity(resp.headers.len() + 1);
    pairs.push((b":status".to_vec(), resp.status.as_str().as_bytes().to_vec()));
    for (name, value) in resp.headers.iter() {
        pairs.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    HeaderMap::from_pairs(pairs)
}

/// Replace the regular headers of `names` (all current ones) with `pairs`'
/// non-pseudo entries. Names or values a filter set that HTTP forbids are
/// dropped (and logged) rather than failing the request.
fn rewrite_headers(
    current: Vec<String>,
    pairs: &[(Vec<u8>, Vec<u8>)],
    skip: &[&[u8]],
    mut remove: impl FnMut(&str),
    mut append: impl FnMut(http::HeaderName, http::HeaderValue),
) {
    for name in current {
        remove(&name);
    }
    for (k, v) in pairs {
        if k.first() == Some(&b':') || skip.contains(&k.as_slice()) {
            continue;
        }
        match (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v)) {
            (Ok(n), Ok(v)) => append(n, v),
            _ => log::debug!(
                "wasm filter set an invalid header {:?}; dropped",
                String::from_utf8_lossy(k)
            ),
        }
    }
}

/// Copy a filter's changes back to the request. A changed `:path` or
/// `:method` changes the request line; `:authority` is the `Host` header.
pub(crate) fn apply_to_request(map: &HeaderMap, req: &mut RequestHeader) {
    if !map.changed {
        return;
    }
    if let Some(m) = map.get(b":method") {
        match http::Method::from_bytes(&m) {
            Ok(m) if m != req.method => req.set_method(m),
            Ok(_) => {}
            Err(_) => log::debug!("wasm filter set an invalid :method; ignored"),
        }
    }
    if let Some(p) = map.get(b":path") {
        let now = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if p != now.as_bytes() {
            match http::Uri::try_from(p.as_slice()) {
                Ok(uri) if p.first() == Some(&b'/') => req.set_uri(uri),
                _ => log::debug!("wasm filter set an invalid :path; ignored"),
            }
        }
    }
    let names: Vec<String> = req.headers.keys().map(|k| k.as_str().to_string()).collect();
    let mut host = map.get(b":authority");
    if host.as_deref() == Some(b"") {
        host = None;
    }
    let mut appended = Vec::new();
    rewrite_headers(
        names,
        &map.pairs,
        &[b"host"],
        |n| {
            req.remove_header(n);
        },
        |n, v| appended.push((n, v)),
    );
    for (n, v) in appended {
        let _ = req.append_header(n, v);
    }
    if let Some(h) = host {
        if let Ok(v) = http::HeaderValue::from_bytes(&h) {
            let _ = req.insert_header(http::header::HOST, v);
        }
    }
}

/// Copy a filter's changes back to a response header (`:status` included).
pub(crate) fn apply_to_response(map: &HeaderMap, resp: &mut ResponseHeader) {
    if !map.changed {
        return;
    }
    if let Some(s) = map.get(b":status") {
        let code = std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u16>().ok());
        match code {
            Some(c) if (100..=999).contains(&c) => {
                let _ = resp.set_status(c);
            }
            _ => log::debug!("wasm filter set an invalid :status; ignored"),
        }
    }
    let names: Vec<String> = resp.headers.keys().map(|k| k.as_str().to_string()).collect();
    let mut appended = Vec::new();
    rewrite_headers(
        names,
        &map.pairs,
        &[],
        |n| {
            resp.remove_header(n);
        },
        |n, v| appended.push((n, v)),
    );
    for (n, v) in appended {
        let _ = resp.append_header(n, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn wire_format_round_trip() {
        let p = pairs(&[(":path", "/a"), ("x-k", ""), ("", "v")]);
        let bytes = serialize(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        // Same layout the proxy-wasm SDK writes.
        let mut want = 3u32.to_le_bytes().to_vec();
        for (k, v) in [(5u32, 2u32), (3, 0), (0, 1)] {
            want.extend_from_slice(&k.to_le_bytes());
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(b":path\0/a\0x-k\0\0\0v\0");
        assert_eq!(bytes, want);
        assert_eq!(deserialize(&bytes).unwrap(), p);
        assert_eq!(deserialize(&[]).unwrap(), Vec::new());
        assert_eq!(deserialize(&0u32.to_le_bytes()).unwrap(), Vec::new());
    }

    #[test]
    fn malformed_maps_are_refused() {
        let p = pairs(&[("key", "value")]);
        let bytes = serialize(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        for cut in 1..bytes.len() {
            assert!(deserialize(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(deserialize(&huge).is_none());
        let mut long = bytes;
        long[4..8].copy_from_slice(&(u32::MAX - 2).to_le_bytes());
        assert!(deserialize(&long).is_none());
    }

    #[test]
    fn map_operations() {
        let mut m = HeaderMap::from_pairs(pairs(&[("a", "1"), ("b", "2"), ("a", "3")]));
        assert_eq!(m.get(b"A").unwrap(), b"1,3");
        assert!(!m.changed);
        m.replace(b"A", b"x");
        assert_eq!(m.pairs, pairs(&[("a", "x"), ("b", "2")]));
        m.add(b"C-Up", b"y");
        assert_eq!(m.get(b"c-up").unwrap(), b"y");
        m.remove(b"b");
        assert_eq!(m.pairs, pairs(&[("a", "x"), ("c-up", "y")]));
        assert!(m.get(b"b").is_none());
        assert!(m.changed);
    }

    #[test]
    fn request_round_trip() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        req.insert_header("host", "gw.example").unwrap();
        req.insert_header("x-a", "1").unwrap();
        let mut m = from_request(&req);
        assert_eq!(m.get(b":authority").unwrap(), b"gw.example");
        assert_eq!(m.get(b":path").unwrap(), b"/v1/chat/completions?x=1");
        assert_eq!(m.get(b":method").unwrap(), b"POST");
        assert_eq!(m.get(b":scheme").unwrap(), b"http");
        assert!(m.get(b"host").is_none());
        m.replace(b":path", b"/v1/embeddings");
        m.replace(b":authority", b"other");
        m.remove(b"x-a");
        m.add(b"x-b", b"2");
        m.add(b"bad header", b"v");
        apply_to_request(&m, &mut req);
        assert_eq!(req.uri.path(), "/v1/embeddings");
        assert_eq!(req.headers.get("host").unwrap(), "other");
        assert!(req.headers.get("x-a").is_none());
        assert_eq!(req.headers.get("x-b").unwrap(), "2");
        assert_eq!(req.method, http::Method::POST);
    }

    #[test]
    fn response_round_trip() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json").unwrap();
        let mut m = from_response(&resp);
        assert_eq!(m.get(b":status").unwrap(), b"200");
        m.replace(b":status", b"418");
        m.add(b"x-hello", b"world");
        apply_to_response(&m, &mut resp);
        assert_eq!(resp.status.as_u16(), 418);
        assert_eq!(resp.headers.get("x-hello").unwrap(), "world");
        assert_eq!(resp.headers.get("content-type").unwrap(), "application/json");
    }
}
