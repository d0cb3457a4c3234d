//! Response headers edited through their map.
//!
//! Pingora's `ResponseHeader::insert_header` and `append_header` take a name
//! as anything that turns into bytes, and parse it back into a `HeaderName`
//! every time (a copy, an allocation for a name that is not a standard one,
//! a lookup), even when the caller holds a `HeaderName` already. Its map is
//! not reachable mutably, but a `ResponseHeader` converts to and from
//! `http::response::Parts` by moving its fields: these helpers insert
//! through that, so a name made once (`HeaderName::from_static`, or taken
//! from another map) is never parsed again.
//!
//! A header that keeps its names' spellings (Pingora's case map, which the
//! conversion would drop) is edited with `insert_header` instead, and a
//! reason phrase other than the status's own is carried over.

use http::header::{HeaderName, HeaderValue};
use http::response::Parts;
use pingora_http::ResponseHeader;

/// Insert headers into `resp`: `fill` gets a `put(name, value)` that
/// inserts straight into the map, replacing what it had under that name
/// (so a name put twice keeps its last value).
pub fn insert_with(resp: &mut ResponseHeader, fill: impl FnOnce(&mut dyn FnMut(&HeaderName, HeaderValue))) {
    if resp.has_case() {
        fill(&mut |name, value| {
            let _ = resp.insert_header(name.clone(), value);
        });
        return;
    }
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    // An empty map allocates nothing: this placeholder costs a move.
    let placeholder = ResponseHeader::build_no_case(resp.status, Some(0)).expect("a valid status is valid");
    let mut parts: Parts = std::mem::replace(resp, placeholder).into();
    fill(&mut |name, value| {
        parts.headers.insert(name, value);
    });
    *resp = ResponseHeader::from(parts);
    if let Some(r) = reason {
        let _ = resp.set_reason_phrase(Some(&r));
    }
}

/// A response header with `status` and no case map, its map filled by
/// `fill` (which may append several values under one name).
pub fn build_headers(
    status: http::StatusCode,
    capacity: usize,
    fill: impl FnOnce(&mut http::HeaderMap),
) -> ResponseHeader {
    let head = ResponseHeader::build_no_case(status, Some(capacity)).expect("a valid status is valid");
    let mut parts: Parts = head.into();
    fill(&mut parts.headers);
    ResponseHeader::from(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(h: &ResponseHeader) -> String {
        let mut buf = bytes::BytesMut::new();
        h.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn inserts_replace_and_keep_the_rest() {
        let mut h = ResponseHeader::build_no_case(200, None).unwrap();
        h.append_header("set-cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        h.insert_header("x-limit", "old").unwrap();
        insert_with(&mut h, |put| {
            put(&HeaderName::from_static("x-limit"), HeaderValue::from(10u64));
            put(&HeaderName::from_static("x-new"), HeaderValue::from_static("yes"));
        });
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h.headers.get_all("x-limit").iter().collect::<Vec<_>>(), ["10"]);
        assert_eq!(h.headers["x-new"], "yes");
        assert!(!h.has_case());
    }

    #[test]
    fn a_header_with_spellings_keeps_them_and_a_custom_reason_stays() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("X-Provider-Thing", "1").unwrap();
        insert_with(&mut h, |put| {
            put(&HeaderName::from_static("x-limit"), HeaderValue::from(3u64))
        });
        assert!(h.has_case());
        let w = wire(&h);
        assert!(
            w.contains("X-Provider-Thing: 1\r\n") && w.contains("x-limit: 3\r\n"),
            "{w}"
        );

        let mut h = ResponseHeader::build_no_case(429, None).unwrap();
        h.set_reason_phrase(Some("Slow Down")).unwrap();
        insert_with(&mut h, |put| {
            put(&HeaderName::from_static("x-limit"), HeaderValue::from(0u64))
        });
        // What Pingora writes in the status line.
        assert_eq!(h.get_reason_phrase(), Some("Slow Down"));
        assert_eq!(h.status, 429);
    }

    #[test]
    fn builds_a_header_with_repeated_names() {
        let h = build_headers(http::StatusCode::OK, 2, |m| {
            m.append(http::header::SET_COOKIE, HeaderValue::from_static("a=1"));
            m.append(http::header::SET_COOKIE, HeaderValue::from_static("b=2"));
        });
        assert_eq!(h.status, 200);
        assert_eq!(wire(&h).to_ascii_lowercase(), "set-cookie: a=1\r\nset-cookie: b=2\r\n");
        assert_eq!(h.get_reason_phrase(), Some("OK"));
    }
}
