//! Reading the `usage` a provider reports, wherever and however it comes:
//! the object in each provider's shape, a whole JSON answer, the tail of
//! one too large to hold, an event stream, and a compressed body (a copy
//! decompressed for accounting only).
//!
//! The shapes, and how they map onto [`Usage`]:
//! - OpenAI chat, completions, embeddings: `prompt_tokens`,
//!   `completion_tokens` (absent for embeddings: 0),
//!   `prompt_tokens_details.cached_tokens`.
//! - OpenAI Responses API: `input_tokens`, `output_tokens`,
//!   `input_tokens_details.cached_tokens` (`input_tokens` includes the cached ones).
//! - Anthropic-style: `input_tokens`, `output_tokens`,
//!   `cache_read_input_tokens`, `cache_creation_input_tokens`. Anthropic's
//!   `input_tokens` excludes both cache counts, so the prompt is their sum.
//!   When a body has `prompt_tokens` too (OpenAI-compatible layers that
//!   add Anthropic's fields), `prompt_tokens` is already the whole prompt and
//!   the cache fields only say how much of it was read or written.
//!
//! Cached and cache-write counts are parts of the prompt: clamped so that
//! together they never exceed it.

use super::sse::{event_data, SseSplitter};
use super::Usage;
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::io::Write;

/// A token count as a provider wrote it: a non-negative integer, or
/// nothing (a negative, fractional or non-numeric value reads as absent,
/// never as an error that would make the whole answer unreadable).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a token count")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Option<u64>, A::Error> {
            while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Option<u64>, A::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// `prompt_tokens_details` / `input_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
}

/// A `usage` object as a provider sent it: every count weir knows, each
/// optional. Two reports merge field by field (a stream may report the
/// prompt in one event and the output in a later one).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct UsageReport {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "count")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    cache_creation_input_tokens: Option<u64>,
}

impl UsageReport {
    /// The counts, by the rules in the module doc; `None` when the object
    /// holds no count at all (`{}` is not a report of zero).
    pub fn usage(&self) -> Option<Usage> {
        let completion = self.completion_tokens.or(self.output_tokens);
        let read = self.cache_read_input_tokens;
        let write = self.cache_creation_input_tokens;
        let detail = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(self.input_tokens_details.and_then(|d| d.cached_tokens));
        let (prompt, cached) = match (self.prompt_tokens, self.input_tokens) {
            (Some(p), _) => (p, detail.or(read)),
            // Anthropic: input_tokens is what was neither read from nor written to the cache.
            (None, Some(i)) if read.is_some() || write.is_some() => (
                i.saturating_add(read.unwrap_or(0)).saturating_add(write.unwrap_or(0)),
                read,
            ),
            (None, Some(i)) => (i, detail),
            (None, None) => match (self.total_tokens, completion) {
                (Some(t), c) => (t.saturating_sub(c.unwrap_or(0)), detail),
                (None, Some(_)) => (0, None),
                (None, None) => return None,
            },
        };
        let cached = cached.unwrap_or(0).min(prompt);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion.unwrap_or(0),
            cached_tokens: cached,
            cache_write_tokens: write.unwrap_or(0).min(prompt - cached),
        })
    }

    /// `later` over `self`, field by field.
    fn merge(self, later: UsageReport) -> UsageReport {
        let details = |a: Option<Details>, b: Option<Details>| match (a, b) {
            (Some(a), Some(b)) => Some(Details {
                cached_tokens: b.cached_tokens.or(a.cached_tokens),
            }),
            (a, b) => b.or(a),
        };
        UsageReport {
            prompt_tokens: later.prompt_tokens.or(self.prompt_tokens),
            completion_tokens: later.completion_tokens.or(self.completion_tokens),
            total_tokens: later.total_tokens.or(self.total_tokens),
            input_tokens: later.input_tokens.or(self.input_tokens),
            output_tokens: later.output_tokens.or(self.output_tokens),
            prompt_tokens_details: details(self.prompt_tokens_details, later.prompt_tokens_details),
            input_tokens_details: details(self.input_tokens_details, later.input_tokens_details),
            cache_read_input_tokens: later.cache_read_input_tokens.or(self.cache_read_input_tokens),
            cache_creation_input_tokens: later.cache_creation_input_tokens.or(self.cache_creation_input_tokens),
        }
    }
}

impl<'de> Deserialize<'de> for Usage {
    /// A `usage` object in any of the shapes of the module doc; one without
    /// any count is an error.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UsageReport::deserialize(d)?
            .usage()
            .ok_or_else(|| serde::de::Error::custom("usage has no token counts"))
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageReport>,
}

/// `usage` of a complete JSON answer.
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    usage_of_object(body)?
}

/// `None` if `body` is not a JSON object, else its `usage` (if any),
/// without building the rest of it.
pub fn usage_of_object(body: &[u8]) -> Option<Option<Usage>> {
    // (A derived struct would also take an array.)
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    Some(
        serde_json::from_slice::<WithUsage>(body)
            .ok()?
            .usage
            .and_then(|u| u.usage()),
    )
}

/// An event's usage report, where each API puts it: a chat or completions
/// chunk's `usage`, a Responses API event's `response.usage`
/// (`response.completed`), an Anthropic `message_start`'s `message.usage`.
fn event_report(data: &[u8]) -> Option<UsageReport> {
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        usage: Option<UsageReport>,
    }
    #[derive(Deserialize)]
    struct Event {
        #[serde(default)]
        usage: Option<UsageReport>,
        #[serde(default)]
        response: Option<Inner>,
        #[serde(default)]
        message: Option<Inner>,
    }
    // Cheap before parsing: only events that name it carry it.
    if !contains(data, b"\"usage\"") {
        return None;
    }
    let e: Event = serde_json::from_slice(data).ok()?;
    e.usage
        .or(e.response.and_then(|r| r.usage))
        .or(e.message.and_then(|m| m.usage))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Finds usage in an event stream fed chunk by chunk (any line ending,
/// bounded like every SSE reader: [`SseSplitter`]). Reports merge, so a
/// stream that gives the prompt and the output in different events is
/// read whole.
#[derive(Debug, Default)]
pub struct SseUsage {
    splitter: SseSplitter,
    report: Option<UsageReport>,
}

impl SseUsage {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.splitter.push(chunk);
        loop {
            match self.splitter.next_event() {
                Ok(Some(event)) => self.event(&event),
                Ok(None) => return,
                // An event over the bound is no usage event: dropped unread.
                Err(_) => {
                    self.splitter.take_rest();
                    return;
                }
            }
        }
    }

    fn event(&mut self, event: &[u8]) {
        let Some(report) = event_data(event).and_then(|d| event_report(&d)) else {
            return;
        };
        self.report = Some(match self.report {
            Some(before) => before.merge(report),
            None => report,
        });
    }

    /// The usage found, reading what trails the last event as one more.
    pub fn finish(&mut self) -> Option<Usage> {
        let rest = self.splitter.take_rest();
        if !rest.is_empty() {
            self.event(&rest);
        }
        self.report?.usage()
    }
}

/// Bytes kept from the end of a JSON answer too large to hold whole:
/// `usage` and what follows it (`system_fingerprint`, `metadata`, …) are far
/// smaller.
pub const TAIL_WINDOW: usize = 64 << 10;

/// Finds `usage` in a JSON answer of any size: the whole body while it is
/// small, its last [`TAIL_WINDOW`] bytes past that.
#[derive(Debug, Default)]
pub struct JsonUsage {
    kept: Vec<u8>,
    /// Bytes fed in all.
    seen: usize,
}

impl JsonUsage {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.seen = self.seen.saturating_add(chunk.len());
        if chunk.len() >= TAIL_WINDOW {
            self.kept.clear();
            self.kept.extend_from_slice(&chunk[chunk.len() - TAIL_WINDOW..]);
            return;
        }
        self.kept.extend_from_slice(chunk);
        // Trimmed in batches, so each byte is moved at most once or twice.
        if self.kept.len() >= 2 * TAIL_WINDOW {
            self.kept.drain(..self.kept.len() - TAIL_WINDOW);
        }
    }

    pub fn finish(&mut self) -> Option<Usage> {
        if self.seen == self.kept.len() {
            return usage_of_json(&self.kept);
        }
        let from = self.kept.len().saturating_sub(TAIL_WINDOW);
        tail_usage(&self.kept[from..])
    }
}

/// The top-level `usage` of a JSON object, found in `tail`, its last bytes.
///
/// Searching back from the end, a candidate is the key `"usage"` (quotes
/// not escaped, so not inside a string) followed by `:` and an object that
/// parses as a usage report, then only further `"key": value` members and
/// the `}` that ends the body. Whatever precedes the candidate is never
/// looked at, and a `usage` nested in a later member (or in content) fails
/// the test, since a nested object's closing brace is not the body's end.
pub fn tail_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let body = tail.trim_ascii_end();
    if body.last() != Some(&b'}') {
        return None;
    }
    let mut end = body.len();
    while let Some(at) = body[..end].windows(KEY.len()).rposition(|w| w == KEY) {
        end = at + KEY.len() - 1;
        let escaped = body[..at].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1;
        if escaped {
            continue;
        }
        if let Some(u) = member_at_end(&body[at + KEY.len()..]) {
            return u.usage();
        }
    }
    None
}

/// `rest` (what follows the `"usage"` key) is `: {usage}` then the last
/// members of the top-level object and its closing brace.
fn member_at_end(rest: &[u8]) -> Option<UsageReport> {
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let (report, mut rest) = value::<UsageReport>(rest)?;
    loop {
        rest = rest.trim_ascii_start();
        match rest.first()? {
            b'}' => return rest[1..].trim_ascii().is_empty().then_some(report),
            b',' => {
                let (_key, after) = value::<String>(&rest[1..])?;
                let after = after.trim_ascii_start().strip_prefix(b":")?;
                rest = value::<IgnoredAny>(after)?.1;
            }
            _ => return None,
        }
    }
}

/// One JSON value at the start of `s` (after whitespace), and what follows it.
fn value<'a, T: Deserialize<'a>>(s: &'a [u8]) -> Option<(T, &'a [u8])> {
    let mut stream = serde_json::Deserializer::from_slice(s).into_iter::<T>();
    let v = stream.next()?.ok()?;
    let used = stream.byte_offset();
    Some((v, &s[used..]))
}

/// The most decompressed bytes read for accounting: past it, the answer's
/// usage is unknown (a small compressed body cannot make weir inflate
/// without bound).
pub const MAX_DECODED: u64 = 256 << 20;

/// How a body is encoded (`Content-Encoding`), as far as weir can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// `deflate`: zlib-wrapped by the standard, raw by some servers; told
    /// apart by the first two bytes.
    Deflate,
    /// Anything else (`br`, `zstd`, several codings): not readable.
    Other,
}

impl Encoding {
    /// From a `Content-Encoding` header's value (absent: identity).
    pub fn of(header: Option<&[u8]>) -> Encoding {
        let Some(v) = header else { return Encoding::Identity };
        let v = v.trim_ascii();
        if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
            Encoding::Identity
        } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
            Encoding::Gzip
        } else if v.eq_ignore_ascii_case(b"deflate") {
            Encoding::Deflate
        } else {
            Encoding::Other
        }
    }
}

/// What reads the decoded body.
#[derive(Debug)]
enum Reader {
    Json(JsonUsage),
    Sse(SseUsage),
}

/// The decoded bytes' destination: the reader, counting what it got.
#[derive(Debug)]
struct Sink {
    reader: Reader,
    decoded: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.decoded = self.decoded.saturating_add(buf.len() as u64);
        if self.decoded > MAX_DECODED {
            return Err(std::io::Error::other("decoded body over the accounting bound"));
        }
        match &mut self.reader {
            Reader::Json(j) => j.feed(buf),
            Reader::Sse(s) => s.feed(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn finish(&mut self) -> Option<Usage> {
        match &mut self.reader {
            Reader::Json(j) => j.finish(),
            Reader::Sse(s) => s.finish(),
        }
    }
}

enum Decode {
    Plain(Sink),
    Gzip(Box<GzDecoder<Sink>>),
    Zlib(Box<ZlibDecoder<Sink>>),
    Raw(Box<DeflateDecoder<Sink>>),
    /// `deflate` before two bytes told which kind.
    Undecided(Vec<u8>, Sink),
    /// Unreadable encoding, corrupt data or over the bound.
    Lost,
}

/// Reads the usage of an answer's body fed chunk by chunk as it passes,
/// without holding it: JSON (small whole, large by its tail) or an event
/// stream, through a decompressed copy when the provider compressed it.
pub struct BodyUsage {
    decode: Decode,
}

impl BodyUsage {
    /// `sse`: the body is an event stream; `encoding`: its `Content-Encoding`.
    pub fn new(sse: bool, encoding: Encoding) -> BodyUsage {
        let sink = Sink {
            reader: if sse {
                Reader::Sse(SseUsage::default())
            } else {
                Reader::Json(JsonUsage::default())
            },
            decoded: 0,
        };
        let decode = match encoding {
            Encoding::Identity => Decode::Plain(sink),
            Encoding::Gzip => Decode::Gzip(Box::new(GzDecoder::new(sink))),
            Encoding::Deflate => Decode::Undecided(Vec::new(), sink),
            Encoding::Other => Decode::Lost,
        };
        BodyUsage { decode }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let ok = match &mut self.decode {
            Decode::Plain(s) => s.write_all(chunk).is_ok(),
            Decode::Gzip(d) => d.write_all(chunk).is_ok(),
            Decode::Zlib(d) => d.write_all(chunk).is_ok(),
            Decode::Raw(d) => d.write_all(chunk).is_ok(),
            Decode::Undecided(first, _) => {
                first.extend_from_slice(chunk);
                if first.len() < 2 {
                    return;
                }
                let Decode::Undecided(first, sink) = std::mem::replace(&mut self.decode, Decode::Lost) else {
                    return;
                };
                // A zlib header: CM 8 (deflate), and the two bytes a multiple of 31.
                let zlib = first[0] & 0x0f == 8 && (u16::from(first[0]) << 8 | u16::from(first[1])) % 31 == 0;
                self.decode = if zlib {
                    Decode::Zlib(Box::new(ZlibDecoder::new(sink)))
                } else {
                    Decode::Raw(Box::new(DeflateDecoder::new(sink)))
                };
                return self.feed(&first);
            }
            Decode::Lost => return,
        };
        if !ok {
            self.decode = Decode::Lost;
        }
    }

    /// The usage found once the body has ended.
    pub fn finish(mut self) -> Option<Usage> {
        match &mut self.decode {
            Decode::Plain(s) => s.finish(),
            Decode::Gzip(d) => d.try_finish().ok().and_then(|_| d.get_mut().finish()),
            Decode::Zlib(d) => d.try_finish().ok().and_then(|_| d.get_mut().finish()),
            Decode::Raw(d) => d.try_finish().ok().and_then(|_| d.get_mut().finish()),
            Decode::Undecided(..) | Decode::Lost => None,
        }
    }
}

/// The usage of a whole answer as received (`Content-Encoding` given).
pub fn usage_of_body(body: &[u8], sse: bool, encoding: Encoding) -> Option<Usage> {
    if encoding == Encoding::Identity && !sse {
        return usage_of_json(body).or_else(|| tail_usage(&body[body.len().saturating_sub(TAIL_WINDOW)..]));
    }
    let mut u = BodyUsage::new(sse, encoding);
    u.feed(body);
    u.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn u(prompt: u64, completion: u64, cached: u64, write: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            cache_write_tokens: write,
        })
    }

    #[test]
    fn shapes() {
        let chat = br#"{"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,
            "prompt_tokens_details":{"cached_tokens":6,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(usage_of_json(chat), u(10, 4, 6, 0));
        let responses = br#"{"object":"response","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":8},
            "output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null}"#;
        assert_eq!(usage_of_json(responses), u(36, 87, 8, 0));
        let embeddings = br#"{"object":"list","data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(usage_of_json(embeddings), u(9, 0, 0, 0));
        // Anthropic: input_tokens excludes what the cache read and wrote.
        let anthropic = br#"{"usage":{"input_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":7}}"#;
        assert_eq!(usage_of_json(anthropic), u(125, 7, 100, 20));
        // An OpenAI-compatible layer adding Anthropic's fields: prompt_tokens is the whole prompt.
        let layered = br#"{"usage":{"prompt_tokens":125,"completion_tokens":7,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#;
        assert_eq!(usage_of_json(layered), u(125, 7, 100, 20));
        // Only a total: all prompt.
        assert_eq!(usage_of_json(br#"{"usage":{"total_tokens":3}}"#), u(3, 0, 0, 0));
    }

    #[test]
    fn usage_of_an_object_or_none() {
        assert_eq!(
            usage_of_object(br#" {"id":"x","usage":{"prompt_tokens":2,"completion_tokens":1}}"#),
            Some(u(2, 1, 0, 0))
        );
        assert_eq!(usage_of_object(br#"{"id":"x","choices":[]}"#), Some(None));
        assert_eq!(usage_of_object(br#"{"usage":{}}"#), Some(None));
        // Not an object: an array, a truncated or empty body.
        assert_eq!(usage_of_object(br#"[{"usage":{"total_tokens":3}}]"#), None);
        assert_eq!(usage_of_object(br#"{"id":"x","usage":{"total_tokens":3}"#), None);
        assert_eq!(usage_of_object(b""), None);
    }

    #[test]
    fn odd_counts_and_empty_usage() {
        assert_eq!(usage_of_json(br#"{"usage":{}}"#), None);
        assert_eq!(usage_of_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_of_json(br#"{"usage":{"x":1}}"#), None);
        // A bad count reads as absent, not as an unreadable answer.
        let odd = br#"{"usage":{"prompt_tokens":-1,"completion_tokens":2.5,"total_tokens":"7","input_tokens":[1],"output_tokens":{"a":1}}}"#;
        assert_eq!(usage_of_json(odd), None);
        let half = br#"{"usage":{"prompt_tokens":4,"completion_tokens":"many"}}"#;
        assert_eq!(usage_of_json(half), u(4, 0, 0, 0));
        // Cached counts are parts of the prompt.
        let over = br#"{"usage":{"prompt_tokens":4,"prompt_tokens_details":{"cached_tokens":9},"cache_creation_input_tokens":3}}"#;
        assert_eq!(usage_of_json(over), u(4, 0, 4, 0));
        let huge = br#"{"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":5}}"#;
        assert_eq!(usage_of_json(huge), u(u64::MAX, 0, 5, 0));
        // `Usage` itself refuses an object without counts.
        assert!(serde_json::from_str::<Usage>("{}").is_err());
        assert_eq!(
            serde_json::from_str::<Usage>(r#"{"prompt_tokens":1}"#).ok(),
            u(1, 0, 0, 0)
        );
    }

    /// A large chat answer: `usage` then later members, content that mentions usage.
    fn big_answer(content_len: usize) -> Vec<u8> {
        let content = format!("{}\"usage\":{{\"prompt_tokens\":1}}}}", "word ".repeat(content_len / 5));
        serde_json::to_vec(&serde_json::json!({
            "id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3456, "total_tokens": 3468,
                      "prompt_tokens_details": {"cached_tokens": 2}},
            "service_tier": "default",
            "system_fingerprint": "fp_1",
            "metadata": {"usage": {"prompt_tokens": 99}, "note": "\"usage\":{\"prompt_tokens\":5}}"},
        }))
        .unwrap()
    }

    #[test]
    fn tail_finds_top_level_usage_only() {
        let body = big_answer(300_000);
        assert!(body.len() > 4 * TAIL_WINDOW);
        assert_eq!(tail_usage(&body[body.len() - TAIL_WINDOW..]), u(12, 3456, 2, 0));
        for split in [1, 1000, 70_000, body.len() - 10] {
            let mut j = JsonUsage::default();
            j.feed(&body[..split]);
            j.feed(&body[split..]);
            assert_eq!(j.finish(), u(12, 3456, 2, 0), "split {split}");
        }
        // Byte by byte near the end, big chunks before.
        let mut j = JsonUsage::default();
        for c in body.chunks(40_000) {
            j.feed(c);
        }
        assert_eq!(j.finish(), u(12, 3456, 2, 0));
        // No top-level usage: a nested one or one in content is not taken.
        let nested = br#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":5}}"}}],"x":{"usage":{"prompt_tokens":7}}}"#;
        assert_eq!(tail_usage(nested), None);
        let in_content = br#"{"choices":[{"text":"{\"usage\":{\"prompt_tokens\":5}}"}]}"#;
        assert_eq!(tail_usage(in_content), None);
        // Cut off, or not an object: nothing.
        assert_eq!(tail_usage(&body[..body.len() - 1]), None);
        assert_eq!(tail_usage(br#"[{"usage":{"prompt_tokens":1}}]"#), None);
        assert_eq!(tail_usage(br#"{"usage" : {"prompt_tokens":1} } "#), u(1, 0, 0, 0));
        assert_eq!(
            tail_usage(br#""usage":{"prompt_tokens":1},"a":[1,{"b":2}]}"#),
            u(1, 0, 0, 0)
        );
    }

    fn sse(events: &[&str], crlf: bool) -> Vec<u8> {
        let end = if crlf { "\r\n" } else { "\n" };
        events
            .iter()
            .map(|e| format!("{e}{end}{end}"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn streams_of_each_api() {
        let chat = sse(
            &[
                r#"data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#,
                r#"data: {"choices": [ ], "usage" : {"prompt_tokens":5,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":1}}}"#,
                "data: [DONE]",
            ],
            true,
        );
        let responses = sse(
            &[
                r#"event: response.created
data: {"type":"response.created","response":{"id":"r","status":"in_progress","usage":null}}"#,
                r#"event: response.output_text.delta
data: {"type":"response.output_text.delta","delta":"usage"}"#,
                r#"event: response.completed
data: {"type":"response.completed","response":{"id":"r","status":"completed","usage":{"input_tokens":5,"output_tokens":9,"input_tokens_details":{"cached_tokens":1}}}}"#,
            ],
            false,
        );
        let anthropic = sse(
            &[
                r#"event: message_start
data: {"type":"message_start","message":{"usage":{"input_tokens":2,"cache_read_input_tokens":1,"cache_creation_input_tokens":2,"output_tokens":1}}}"#,
                r#"event: message_delta
data: {"type":"message_delta","usage":{"output_tokens":9}}"#,
            ],
            false,
        );
        for (name, s) in [("chat", chat), ("responses", responses), ("anthropic", anthropic)] {
            let expected = if name == "anthropic" {
                u(5, 9, 1, 2)
            } else {
                u(5, 9, 1, 0)
            };
            for split in [1, 7, 40, 80, s.len() - 3] {
                let mut r = SseUsage::default();
                r.feed(&s[..split]);
                r.feed(&s[split..]);
                assert_eq!(r.finish(), expected, "{name} split {split}");
            }
        }
        // The last event without its blank line still counts.
        let mut r = SseUsage::default();
        r.feed(br#"data: {"choices":[],"usage":{"prompt_tokens":2}}"#);
        assert_eq!(r.finish(), u(2, 0, 0, 0));
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn compressed_bodies_read_through_a_copy() {
        let body = big_answer(2_000_000);
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::fast());
        zlib.write_all(&body).unwrap();
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::fast());
        raw.write_all(&body).unwrap();
        for (enc, z) in [
            (Encoding::Gzip, gzip(&body)),
            (Encoding::Deflate, zlib.finish().unwrap()),
            (Encoding::Deflate, raw.finish().unwrap()),
        ] {
            for chunk in [1, 1000, 1 << 20] {
                let mut r = BodyUsage::new(false, enc);
                for c in z.chunks(chunk.min(z.len())) {
                    r.feed(c);
                }
                assert_eq!(r.finish(), u(12, 3456, 2, 0), "{enc:?} by {chunk}");
            }
        }
        let stream = sse(
            &[r#"data: {"choices":[],"usage":{"prompt_tokens":3}}"#, "data: [DONE]"],
            false,
        );
        assert_eq!(usage_of_body(&gzip(&stream), true, Encoding::Gzip), u(3, 0, 0, 0));
        // Truncated, corrupt, or unreadable: unknown.
        let z = gzip(&body);
        assert_eq!(usage_of_body(&z[..z.len() / 2], false, Encoding::Gzip), None);
        assert_eq!(usage_of_body(b"not gzip at all", false, Encoding::Gzip), None);
        assert_eq!(usage_of_body(&z, false, Encoding::Other), None);
        assert_eq!(Encoding::of(Some(b" GZIP ")), Encoding::Gzip);
        assert_eq!(Encoding::of(Some(b"br")), Encoding::Other);
        assert_eq!(Encoding::of(Some(b"gzip, br")), Encoding::Other);
        assert_eq!(Encoding::of(None), Encoding::Identity);
    }

    #[test]
    fn a_bomb_stops_at_the_bound() {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..(MAX_DECODED >> 20) + 2 {
            e.write_all(&zeros).unwrap();
        }
        e.write_all(br#"{"usage":{"prompt_tokens":1}}"#).unwrap();
        let z = e.finish().unwrap();
        assert!(z.len() < 2 << 20);
        assert_eq!(usage_of_body(&z, false, Encoding::Gzip), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes in arbitrary chunks, any encoding: no panic.
        #[test]
        fn readers_never_panic(chunks in vec(vec(any::<u8>(), 0..64), 0..8), sse in any::<bool>(), enc in 0..4u8) {
            let enc = [Encoding::Identity, Encoding::Gzip, Encoding::Deflate, Encoding::Other][enc as usize];
            let mut r = BodyUsage::new(sse, enc);
            let mut all = Vec::new();
            for c in &chunks {
                r.feed(c);
                all.extend_from_slice(c);
            }
            let _ = r.finish();
            let _ = tail_usage(&all);
            let _ = usage_of_body(&all, sse, enc);
        }

        /// However a large answer is cut, its tail gives the usage.
        #[test]
        fn tail_reading_ignores_chunking(
            pad in 0usize..200_000,
            usage in (0u64..1_000_000, 0u64..1_000_000),
            cuts in vec(any::<usize>(), 0..6),
        ) {
            let body = serde_json::to_vec(&serde_json::json!({
                "choices": [{"text": "x".repeat(pad)}],
                "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1},
                "system_fingerprint": null,
            })).unwrap();
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            at.sort_unstable();
            let mut r = JsonUsage::default();
            let mut from = 0;
            for c in at.into_iter().chain([body.len()]) {
                r.feed(&body[from..c]);
                from = c;
            }
            let got = r.finish().expect("usage found");
            prop_assert_eq!((got.prompt_tokens, got.completion_tokens), usage);
        }
    }
}
