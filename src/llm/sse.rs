//! Server-sent events of an OpenAI stream: whole events cut from a byte
//! stream (any line ending: CRLF, LF or CR), bounded in size, and what a
//! stream has said so far — its first content, its text, whether it ended
//! properly — so a stream that dies can be told from one that finished.

use super::usage::UsageReport;
use super::Usage;
use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// One event larger than this is a broken stream, not an event to buffer.
pub const MAX_EVENT: usize = 1 << 20;

/// Cuts a byte stream into whole events, each with its blank-line
/// terminator. Holds at most one unfinished event.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: BytesMut,
    /// Bytes of `buf` already scanned without finding an event's end.
    scanned: usize,
    /// Whether the scan stopped at the start of a line.
    at_line_start: bool,
}

/// The stream sent an event over [`MAX_EVENT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

impl SseSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        if self.buf.is_empty() {
            self.at_line_start = true;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole event, if one is buffered.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        let b = &self.buf[..];
        let mut i = self.scanned;
        let mut line_start = if i == 0 { true } else { self.at_line_start };
        while i < b.len() {
            let eol = match b[i] {
                b'\n' => 1,
                // A CR at the very end may be the first half of a CRLF: wait.
                b'\r' if i + 1 == b.len() => break,
                b'\r' if b[i + 1] == b'\n' => 2,
                b'\r' => 1,
                _ => {
                    line_start = false;
                    i += 1;
                    continue;
                }
            };
            i += eol;
            if line_start {
                // An empty line: the event ends here.
                let event = self.buf.split_to(i).freeze();
                self.scanned = 0;
                self.at_line_start = true;
                return Ok(Some(event));
            }
            line_start = true;
        }
        self.scanned = i;
        self.at_line_start = line_start;
        if self.buf.len() > MAX_EVENT {
            return Err(EventTooLarge);
        }
        Ok(None)
    }

    /// What is left unfinished (at the end of the stream).
    pub fn take_rest(&mut self) -> Bytes {
        self.scanned = 0;
        std::mem::take(&mut self.buf).freeze()
    }
}

/// The lines of an event, without their line ends.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = match rest.get(end) {
            Some(b'\r') if rest.get(end + 1) == Some(&b'\n') => 2,
            Some(_) => 1,
            None => 0,
        };
        rest = &rest[end + skip..];
        Some(line)
    })
}

/// The data of an event: its `data:` lines joined by `\n` (one space after
/// the colon dropped). `None` for an event without data (a comment).
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut out: Option<Cow<'_, [u8]>> = None;
    for line in lines(event) {
        let Some(v) = line.strip_prefix(b"data") else { continue };
        let v = match v {
            [] => v,
            [b':', b' ', rest @ ..] => rest,
            [b':', rest @ ..] => rest,
            _ => continue,
        };
        out = Some(match out {
            None => Cow::Borrowed(v),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(v);
                Cow::Owned(joined)
            }
        });
    }
    out
}

/// The `event:` field of an event (its type), if it has one.
pub fn event_name(event: &[u8]) -> Option<&[u8]> {
    lines(event).find_map(|line| {
        let v = line.strip_prefix(b"event:")?;
        Some(v.strip_prefix(b" ").unwrap_or(v))
    })
}

/// One event as a stream watcher read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Content (text, a tool call, a refusal) or a finish: the answer is under way.
    Content,
    /// Something before the content (the role chunk), or no data.
    Preamble,
    /// Only usage (`"choices": []`).
    UsageOnly,
    /// `[DONE]`.
    Done,
    /// The provider reported an error in the stream.
    Error,
    /// Not JSON, or not a chunk.
    Malformed,
}

/// Longest text a watcher keeps for a continuation; a longer answer is not continued.
const MAX_TEXT: usize = 4 << 20;

/// What a stream has said so far.
#[derive(Debug, Default)]
pub struct StreamWatch {
    /// The chunks' `id`.
    pub id: Option<String>,
    /// Content of choice 0 so far (text completions: its text).
    pub text: String,
    /// Everything else the stream generated, for counting a stream that
    /// ends without usage: other choices' content (`n > 1`), refusals,
    /// reasoning, tool-call names and arguments. Up to the same maximum as
    /// `text`.
    pub other_text: String,
    /// Events that carried content.
    pub content_events: u64,
    /// Tool calls (or a legacy function call) were streamed.
    pub tool_calls: bool,
    /// More than one choice, or text over the kept maximum.
    pub not_continuable: bool,
    /// A `finish_reason` was seen.
    pub finished: bool,
    /// `[DONE]` was seen.
    pub done: bool,
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Option<Vec<Choice<'a>>>,
    /// Read leniently: an odd `usage` is no reason to call the chunk malformed.
    #[serde(default)]
    usage: Option<UsageReport>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    /// Legacy text completions.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    /// Reasoning models' thinking (`reasoning_content`, or `reasoning`):
    /// the answer is under way, though it is not text to continue.
    #[serde(borrow, default, alias = "reasoning")]
    reasoning_content: Option<Cow<'a, str>>,
    /// Raw, read only for counting: an odd shape is no reason to call the chunk malformed.
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl FunctionDelta<'_> {
    fn pieces(&self) -> impl Iterator<Item = &str> {
        [self.name.as_deref(), self.arguments.as_deref()].into_iter().flatten()
    }
}

impl Delta<'_> {
    /// Give `f` what a delta generated besides content and refusal:
    /// reasoning, tool-call names and arguments (a shape that does not
    /// parse gives nothing).
    fn generated(&self, mut f: impl FnMut(&str)) {
        if let Some(r) = self.reasoning_content.as_deref() {
            f(r);
        }
        if let Some(Ok(calls)) = self
            .tool_calls
            .map(|raw| serde_json::from_str::<Vec<ToolDelta>>(raw.get()))
        {
            for call in calls.iter().filter_map(|t| t.function.as_ref()) {
                call.pieces().for_each(&mut f);
            }
        }
        if let Some(Ok(call)) = self
            .function_call
            .map(|raw| serde_json::from_str::<FunctionDelta>(raw.get()))
        {
            call.pieces().for_each(&mut f);
        }
    }
}

impl StreamWatch {
    /// Read one event's data.
    pub fn observe(&mut self, data: &[u8]) -> Seen {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return Seen::Done;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return Seen::Malformed;
        };
        if chunk.error.is_some() {
            return Seen::Error;
        }
        let usage = chunk.usage.and_then(|r| r.usage());
        if usage.is_some() {
            self.usage = usage;
        }
        if self.id.is_none() {
            self.id = chunk.id.map(Cow::into_owned);
        }
        let Some(choices) = chunk.choices else {
            return if self.usage.is_some() {
                Seen::UsageOnly
            } else {
                Seen::Malformed
            };
        };
        if choices.is_empty() {
            return if usage.is_some() {
                Seen::UsageOnly
            } else {
                Seen::Preamble
            };
        }
        let mut seen = Seen::Preamble;
        for c in &choices {
            if c.index != 0 {
                self.not_continuable = true;
            }
            let piece = c
                .delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .or(c.text.as_deref())
                .unwrap_or("");
            let refusal = c.delta.as_ref().and_then(|d| d.refusal.as_deref()).unwrap_or("");
            let tools = c
                .delta
                .as_ref()
                .is_some_and(|d| d.tool_calls.is_some() || d.function_call.is_some());
            if tools {
                self.tool_calls = true;
            }
            if !refusal.is_empty() {
                // A refusal is an answer, not text to continue.
                self.not_continuable = true;
            }
            if c.finish_reason.is_some() {
                self.finished = true;
            }
            let thinking = c
                .delta
                .as_ref()
                .and_then(|d| d.reasoning_content.as_deref())
                .is_some_and(|r| !r.is_empty());
            if !piece.is_empty() || !refusal.is_empty() || tools || thinking || c.finish_reason.is_some() {
                seen = Seen::Content;
            }
            if c.index == 0 && !piece.is_empty() {
                if self.text.len() + piece.len() > MAX_TEXT {
                    self.not_continuable = true;
                } else {
                    self.text.push_str(piece);
                }
            }
            let mut keep = |piece: &str| {
                if self.other_text.len() + piece.len() <= MAX_TEXT {
                    self.other_text.push_str(piece);
                }
            };
            if c.index != 0 {
                keep(piece);
            }
            keep(refusal);
            if let Some(d) = &c.delta {
                d.generated(keep);
            }
        }
        if seen == Seen::Content {
            self.content_events += 1;
        }
        seen
    }

    /// The stream ended as an answer should: `[DONE]`, or a finish for
    /// every choice without it (some providers send no `[DONE]`).
    pub fn complete(&self) -> bool {
        self.done || self.finished
    }
}

/// A `data:` event around a JSON payload.
pub fn data_event(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// Whether an event is the usage-only chunk (`choices` empty, `usage`
/// set), read as JSON: whitespace and key order do not matter.
pub fn is_usage_only(event: &[u8]) -> bool {
    event_data(event).is_some_and(|d| StreamWatch::default().observe(&d) == Seen::UsageOnly)
}

/// Removes the usage-only event from a stream forwarded as it comes, for a
/// client that did not ask for it (weir did). Each event goes out as soon as
/// it is complete; at most one unfinished event is held. An event over
/// [`MAX_EVENT`] ends the stripping: from there on, bytes pass unchanged.
#[derive(Debug, Default)]
pub struct UsageStripper {
    splitter: SseSplitter,
    raw: bool,
}

impl UsageStripper {
    /// The whole events `chunk` completes, the usage-only one left out.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        if self.raw {
            return chunk;
        }
        self.splitter.push(&chunk);
        let mut out = BytesMut::new();
        loop {
            match self.splitter.next_event() {
                Ok(Some(e)) if is_usage_only(&e) => {}
                Ok(Some(e)) => out.extend_from_slice(&e),
                Ok(None) => break,
                Err(EventTooLarge) => {
                    self.raw = true;
                    out.extend_from_slice(&self.splitter.take_rest());
                    break;
                }
            }
        }
        out.freeze()
    }

    /// What is held at the end of the stream (an event without its blank line).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.splitter.take_rest();
        if !self.raw && is_usage_only(&rest) {
            return Bytes::new();
        }
        rest
    }
}

/// Rewrites a continuation's events into the stream it continues: the
/// original `id`, no second role chunk, the finish chunk naming both
/// providers (`x_weir_provider`), and usage summed over both.
pub struct Splice {
    /// The provider whose stream died.
    pub from: String,
    id: Option<String>,
    providers: String,
    /// The first provider's usage, if it reported one.
    before: Option<Usage>,
    /// Content chunks the first provider streamed (its completion tokens
    /// when it reported none: OpenAI streams about one token per chunk).
    before_pieces: u64,
    client_usage: bool,
    /// Both providers' usage, once the continuation reported its own.
    pub usage: Option<Usage>,
    /// The continuation's own report.
    pub continuation_usage: Option<Usage>,
}

impl Splice {
    /// `primary` died at provider `from`; `to` continues it.
    pub fn new(primary: &StreamWatch, from: &str, to: &str, client_usage: bool) -> Self {
        Splice {
            from: from.to_string(),
            id: primary.id.clone(),
            providers: format!("{from},{to}"),
            before: primary.usage,
            before_pieces: primary.content_events,
            client_usage,
            usage: None,
            continuation_usage: None,
        }
    }

    /// Rewrite the whole events in `events` into `out`.
    pub fn rewrite(&mut self, events: &[u8], out: &mut BytesMut) {
        let mut split = SseSplitter::default();
        split.push(events);
        // The last event may end in a lone CR the splitter waits on: it is whole too.
        let all = std::iter::from_fn(|| split.next_event().ok().flatten())
            .collect::<Vec<_>>()
            .into_iter()
            .chain(Some(split.take_rest()).filter(|r| !r.is_empty()));
        for event in all {
            if let Some(e) = event_data(&event).and_then(|data| self.event(&data)) {
                out.extend_from_slice(&e);
            }
        }
    }

    /// One event of the continuation as the client gets it; `None`: dropped.
    pub fn event(&mut self, data: &[u8]) -> Option<Bytes> {
        use serde_json::{json, Value};
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            return Some(data_event(data));
        }
        let mut v: Value = serde_json::from_slice(data).ok()?;
        let o = v.as_object_mut()?;
        if let Some(id) = &self.id {
            o.insert("id".into(), json!(id));
        }
        let mut says_something = false;
        let mut finished = false;
        if let Some(choices) = o.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices.iter_mut() {
                if let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    delta.remove("role");
                    let empty = |k: &str| delta.get(k).is_none_or(|x| x.is_null() || x.as_str() == Some(""));
                    if !empty("content") || !empty("refusal") || delta.contains_key("tool_calls") {
                        says_something = true;
                    }
                }
                if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    finished = true;
                    says_something = true;
                }
            }
        }
        if finished {
            o.insert("x_weir_provider".into(), json!(self.providers));
        }
        let usage = o
            .get("usage")
            .filter(|u| !u.is_null())
            .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
        if let Some(after) = usage {
            // The first provider's prompt: the continuation's, less the text it was given.
            let before = self.before.unwrap_or(Usage {
                prompt_tokens: after.prompt_tokens.saturating_sub(self.before_pieces),
                completion_tokens: self.before_pieces,
                ..Usage::default()
            });
            let sum = before.plus(after);
            self.continuation_usage = Some(after);
            self.usage = Some(sum);
            if self.client_usage {
                o.insert(
                    "usage".into(),
                    json!({
                        "prompt_tokens": sum.prompt_tokens,
                        "completion_tokens": sum.completion_tokens,
                        "total_tokens": sum.prompt_tokens + sum.completion_tokens,
                    }),
                );
                says_something = true;
            } else if o.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                return None;
            } else {
                o.remove("usage");
            }
        } else if !self.client_usage {
            o.remove("usage");
        }
        says_something.then(|| data_event(&serde_json::to_vec(&v).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(parts: &[&[u8]]) -> Vec<Bytes> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        for p in parts {
            s.push(p);
            while let Some(e) = s.next_event().unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_split_on_any_line_end() {
        let lf = split_all(&[b"data: a\n\ndata: b\n", b"\n: c"]);
        assert_eq!(
            lf,
            vec![Bytes::from_static(b"data: a\n\n"), Bytes::from_static(b"data: b\n\n")]
        );
        let crlf = split_all(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(crlf.len(), 2);
        assert_eq!(&crlf[0][..], b"data: a\r\n\r\n");
        // A CR at the end may be half a CRLF: the event ends once the next byte shows it is not.
        let cr = split_all(&[b"data: a\r\r", b"data: b\r", b"\r"]);
        assert_eq!(cr.len(), 1, "{cr:?}");
        let cr = split_all(&[b"data: a\r\r", b"data: b\r", b"\r:"]);
        assert_eq!(cr.len(), 2, "{cr:?}");
        let mixed = split_all(&[b"data: a\r\n\ndata: b\n\r\n"]);
        assert_eq!(mixed.len(), 2);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let stream = b"data: {\"x\":1}\r\n\r\nevent: y\ndata: 2\n\ndata: [DONE]\r\n\r\n";
        let whole = split_all(&[stream]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split_all(&bytes), whole);
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut s = SseSplitter::default();
        s.push(&vec![b'x'; MAX_EVENT + 1]);
        assert_eq!(s.next_event(), Err(EventTooLarge));
    }

    #[test]
    fn data_lines_joined() {
        assert_eq!(event_data(b"data: a\ndata:b\n\n").unwrap().as_ref(), b"a\nb");
        assert_eq!(event_data(b": comment\n\n"), None);
        assert_eq!(event_data(b"event: x\r\ndata: {}\r\n\r\n").unwrap().as_ref(), b"{}");
    }

    #[test]
    fn watch_tracks_a_chat_stream() {
        let mut w = StreamWatch::default();
        let role =
            br#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(w.observe(role), Seen::Preamble);
        let piece = br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"tok0"},"finish_reason":null}]}"#;
        assert_eq!(w.observe(piece), Seen::Content);
        assert_eq!(
            w.observe(br#"{"id":"c1", "choices": [ {"index":0,"delta":{"content":" tok1"}} ]}"#),
            Seen::Content
        );
        assert_eq!(w.text, "tok0 tok1");
        assert!(!w.complete());
        let fin = br#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(w.observe(fin), Seen::Content);
        let usage = br#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        assert_eq!(w.observe(usage), Seen::UsageOnly);
        assert_eq!(w.observe(b"[DONE]"), Seen::Done);
        assert!(w.complete());
        assert_eq!(w.id.as_deref(), Some("c1"));
        assert_eq!(w.usage.unwrap().completion_tokens, 2);
        assert_eq!(w.content_events, 3);
    }

    #[test]
    fn splice_rewrites_a_continuation() {
        let mut primary = StreamWatch::default();
        primary.observe(br#"{"id":"first","choices":[{"index":0,"delta":{"content":"tok0"}}]}"#);
        primary.observe(br#"{"id":"first","choices":[{"index":0,"delta":{"content":" tok1"}}]}"#);
        let mut s = Splice::new(&primary, "a", "b", true);
        let role = br#"{"id":"second","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
        assert_eq!(s.event(role), None, "no second role chunk");
        let piece = s
            .event(br#"{"id":"second","choices":[{"index":0,"delta":{"content":" tok2"},"finish_reason":null}],"usage":null}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(event_data(&piece).unwrap().as_ref()).unwrap();
        assert_eq!(v["id"], "first");
        assert_eq!(v["choices"][0]["delta"]["content"], " tok2");
        let fin = s
            .event(br#"{"id":"second","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(event_data(&fin).unwrap().as_ref()).unwrap();
        assert_eq!(v["x_weir_provider"], "a,b");
        let usage = s
            .event(br#"{"id":"second","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1}}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(event_data(&usage).unwrap().as_ref()).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3, "2 streamed before + 1");
        assert_eq!(v["usage"]["prompt_tokens"], 10 + 12);
        assert_eq!(s.event(b"[DONE]").unwrap(), Bytes::from_static(b"data: [DONE]\n\n"));
        // A client that did not ask for usage does not see it.
        let mut quiet = Splice::new(&primary, "a", "b", false);
        assert_eq!(
            quiet.event(br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            None
        );
        assert!(quiet.usage.is_some());
    }

    #[test]
    fn stripper_forwards_each_event_once_complete() {
        let mut s = UsageStripper::default();
        let first = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\n";
        assert_eq!(
            &s.filter(Bytes::from_static(&first[..10]))[..],
            b"",
            "half an event is held"
        );
        assert_eq!(&s.filter(Bytes::from_static(&first[10..]))[..], &first[..]);
        let usage = b"data: {\"choices\" : [],\r\ndata: \"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]\r\n\r\n";
        assert_eq!(&s.filter(Bytes::from_static(usage))[..], b"data: [DONE]\r\n\r\n");
        assert_eq!(s.finish(), Bytes::new());
        assert!(!is_usage_only(b"data: {\"choices\":[],\"usage\":null}\n\n"));
        assert!(is_usage_only(b"data: {\"usage\":{\"prompt_tokens\":1}}"));
        // Past an oversized event, bytes pass as they are.
        let mut s = UsageStripper::default();
        let big = Bytes::from(vec![b'x'; MAX_EVENT + 1]);
        assert_eq!(s.filter(big.clone()), big);
        let usage = Bytes::from_static(b"\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert_eq!(s.filter(usage.clone()), usage);
    }

    #[test]
    fn watch_keeps_what_else_was_generated() {
        let mut w = StreamWatch::default();
        w.observe(br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#);
        w.observe(br#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm","refusal":"no"}}]}"#);
        let call = br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":"{\"x\""}},{"index":1,"function":{"arguments":":1}"}}]}}]}"#;
        w.observe(call);
        w.observe(br#"{"choices":[{"index":0,"delta":{"function_call":{"arguments":"!"}}}]}"#);
        assert_eq!(w.text, "a");
        assert_eq!(w.other_text, "bnohmf{\"x\":1}!");
        assert!(w.tool_calls);
        // Odd tool-call shapes are no reason to call the chunk malformed.
        for odd in [
            &br#"[{"index":0}]"#[..],
            br#"{"a":1}"#,
            b"7",
            br#"[{"function":{"name":3}}]"#,
        ] {
            let chunk = [&br#"{"choices":[{"index":0,"delta":{"tool_calls":"#[..], odd, b"}}]}"].concat();
            assert_eq!(w.observe(&chunk), Seen::Content, "{}", String::from_utf8_lossy(odd));
        }
        assert_eq!(w.other_text, "bnohmf{\"x\":1}!");
    }

    #[test]
    fn watch_flags_tools_errors_and_garbage() {
        let mut w = StreamWatch::default();
        let tool = br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":""}}]}}]}"#;
        assert_eq!(w.observe(tool), Seen::Content);
        assert!(w.tool_calls);
        assert_eq!(w.observe(br#"{"choices": [ not json"#), Seen::Malformed);
        assert_eq!(w.observe(br#"{"error":{"message":"overloaded"}}"#), Seen::Error);
        let mut thinker = StreamWatch::default();
        let thought = br#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#;
        assert_eq!(
            thinker.observe(thought),
            Seen::Content,
            "thinking counts as the first token"
        );
        assert_eq!(thinker.text, "", "but is not text to continue");
        let two = br#"{"choices":[{"index":1,"delta":{"content":"x"}}]}"#;
        assert_eq!(w.observe(two), Seen::Content);
        assert!(w.not_continuable);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::llm::usage::SseUsage;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// An SSE stream of content chunks, a usage-only chunk and `[DONE]`,
    /// with the given line end, and the same stream without the usage chunk.
    fn stream(contents: &[String], usage: (u64, u64), eol: &str) -> (Vec<u8>, Vec<u8>) {
        let mut with = String::new();
        for c in contents {
            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": c}}]});
            with.push_str(&format!("data: {chunk}{eol}{eol}"));
        }
        let without = format!("{with}data: [DONE]{eol}{eol}");
        // Spaces where a string match on `"choices":[]` would miss it.
        with.push_str(&format!(
            "data: {{\"choices\": [ ], \"usage\": {{\"prompt_tokens\": {}, \"completion_tokens\": {}}}}}{eol}{eol}",
            usage.0, usage.1
        ));
        with.push_str(&format!("data: [DONE]{eol}{eol}"));
        (with.into_bytes(), without.into_bytes())
    }

    /// `s` cut into pieces at the given points.
    fn pieces(s: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for c in at.into_iter().chain([s.len()]) {
            out.push(Bytes::copy_from_slice(&s[from..c]));
            from = c;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Arbitrary bytes in arbitrary chunks: no panic anywhere usage is read.
        #[test]
        fn sse_readers_never_panic(chunks in vec(vec(any::<u8>(), 0..64), 0..8)) {
            let mut reader = SseUsage::default();
            let mut strip = UsageStripper::default();
            let mut all = Vec::new();
            for c in &chunks {
                reader.feed(c);
                let _ = strip.filter(Bytes::copy_from_slice(c));
                all.extend_from_slice(c);
            }
            let _ = strip.finish();
            let _ = reader.finish();
            let _ = crate::llm::assemble_stream(&all);
        }

        /// However a stream is cut into chunks, and whatever its line ends,
        /// the usage found is the same, and stripping removes exactly the
        /// usage event, every other byte kept.
        #[test]
        fn chunking_changes_nothing(
            contents in vec("[a-z \\n\"{}\\[\\]]{0,12}", 0..6),
            usage in (0u64..1_000_000, 0u64..1_000_000),
            cuts in vec(any::<usize>(), 0..8),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let (s, expected) = stream(&contents, usage, eol);
            let mut reader = SseUsage::default();
            let mut strip = UsageStripper::default();
            let mut out = Vec::new();
            for p in pieces(&s, &cuts) {
                reader.feed(&p);
                out.extend_from_slice(&strip.filter(p));
            }
            out.extend_from_slice(&strip.finish());
            let u = reader.finish().expect("usage found");
            prop_assert_eq!((u.prompt_tokens, u.completion_tokens), usage);
            prop_assert_eq!(out, expected);
        }
    }
}
