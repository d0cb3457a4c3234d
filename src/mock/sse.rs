//! Server-sent event framing of a streamed answer, and the pre-rendered
//! token events that keep streaming cheap.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;

use super::completions::{token_piece, Generation};

/// One server-sent event carrying a JSON payload.
pub(super) fn sse_event(payload: &Value) -> Bytes {
    let mut event = b"data: ".to_vec();
    // Serialising a `Value` cannot fail (keys are strings).
    if serde_json::to_writer(&mut event, payload).is_err() {
        event.truncate(6);
        event.extend_from_slice(b"{}");
    }
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The stream terminator OpenAI sends.
pub(super) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// How a stream's events are written: with CRLF line ends (`--crlf`) and
/// gzip-compressed (`--gzip`), or, by default, as rendered.
pub(super) struct Framing {
    crlf: bool,
    gzip: Option<GzEncoder<Vec<u8>>>,
    /// Chat chunks written as Anthropic's events.
    anthropic: Option<super::messages::Events>,
}

impl Framing {
    pub(super) fn new(crlf: bool, gzip: bool) -> Self {
        Framing {
            crlf,
            gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::fast())),
            anthropic: None,
        }
    }

    /// Write chat chunks as Anthropic's stream events.
    pub(super) fn anthropic(mut self, on: bool) -> Self {
        self.anthropic = on.then(Default::default);
        self
    }

    /// `event` (rendered with LF line ends) as written.
    pub(super) fn event(&mut self, event: Bytes) -> Bytes {
        let event = match &mut self.anthropic {
            Some(a) => a.event(event),
            None => event,
        };
        if event.is_empty() {
            return event;
        }
        let event = if self.crlf { crlf(&event) } else { event };
        match &mut self.gzip {
            None => event,
            // A sync flush per event: the client can decode each as it arrives.
            Some(gz) => match gz.write_all(&event).and_then(|()| gz.flush()) {
                Ok(()) => Bytes::from(std::mem::take(gz.get_mut())),
                Err(_) => Bytes::new(),
            },
        }
    }

    /// What ends the body (the gzip trailer), possibly nothing.
    pub(super) fn end(&mut self) -> Bytes {
        match self.gzip.take() {
            Some(gz) => Bytes::from(gz.finish().unwrap_or_default()),
            None => Bytes::new(),
        }
    }
}

/// `event` with each LF line end written CRLF.
fn crlf(event: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event.len() + 4);
    for &b in event {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    Bytes::from(out)
}

/// `body` gzip-compressed.
pub(super) fn gzip(body: &[u8]) -> Bytes {
    let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(body);
    Bytes::from(gz.finish().unwrap_or_default())
}

/// `(before, after)` the token text of a rendered event; `None` falls back
/// to full rendering.
type Template = Option<(Vec<u8>, Vec<u8>)>;

/// Pre-rendered token events of one generation.
///
/// Every token chunk is the same JSON except for the token text, so the
/// event is rendered once around a marker and each token costs a copy rather
/// than building and serialising a JSON tree (streaming benchmarks write
/// tens of thousands of events per second). One template per choice.
pub(super) struct TokenEvents {
    templates: Vec<Template>,
}

impl TokenEvents {
    /// Stands for the token text; token pieces (` tokN`) never need escaping.
    const MARKER: &'static str = "@@weir-mock-token@@";

    /// Render the templates of `generation`'s token events.
    pub(super) fn new(generation: &Generation) -> Self {
        let templates = (0..generation.choices)
            .map(|choice| {
                let rendered = sse_event(&generation.piece_chunk(choice, Self::MARKER, None));
                let marker = Self::MARKER.as_bytes();
                let positions: Vec<usize> = rendered
                    .windows(marker.len())
                    .enumerate()
                    .filter_map(|(at, window)| (window == marker).then_some(at))
                    .collect();
                // The model name is client controlled and could contain the marker:
                // only use the template when the marker is unambiguous.
                match positions.as_slice() {
                    [at] => Some((rendered[..*at].to_vec(), rendered[at + marker.len()..].to_vec())),
                    _ => None,
                }
            })
            .collect();
        TokenEvents { templates }
    }

    /// The event of token `index` of choice `choice`.
    pub(super) fn event(&self, generation: &Generation, choice: u32, index: u32) -> Bytes {
        match self.templates.get(choice as usize).and_then(Option::as_ref) {
            Some((before, after)) => {
                let piece = token_piece(index);
                let mut event = Vec::with_capacity(before.len() + piece.len() + after.len());
                event.extend_from_slice(before);
                event.extend_from_slice(piece.as_bytes());
                event.extend_from_slice(after);
                Bytes::from(event)
            }
            None => sse_event(&generation.token_chunk(choice, index)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::completions::{completion_text, Kind};
    use super::*;
    use serde_json::json;

    fn generation(request: Value, kind: Kind, configured: u32) -> Generation {
        Generation::plan(kind, &request, "gpt-test", configured, 7, 1_700_000_000)
    }

    fn parse_sse(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).expect("utf-8");
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("framed as one SSE event");
        serde_json::from_str(json).expect("json payload")
    }

    #[test]
    fn streamed_chunks_rebuild_the_answer() {
        let request = json!({
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "x"}],
        });
        let g = generation(request, Kind::Chat, 4);
        assert!(g.stream && g.include_usage);

        let role = g.role_chunk(0).expect("chat has a role chunk");
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(
            role["choices"],
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
        );
        assert!(role["usage"].is_null());

        let text: String = (0..g.tokens)
            .map(|i| {
                let chunk = parse_sse(&sse_event(&g.token_chunk(0, i)));
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string()
            })
            .collect();
        assert_eq!(text, completion_text(4));

        let finish = g.finish_chunk(0);
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");

        let usage = g.usage_chunk().expect("usage requested");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 4);
        assert_eq!(usage["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn token_template_matches_full_rendering() {
        for (kind, request) in [
            (Kind::Chat, json!({"stream": true})),
            (
                Kind::Chat,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
            (Kind::Text, json!({"stream": true})),
        ] {
            let g = generation(request, kind, 12);
            let events = TokenEvents::new(&g);
            assert!(events.templates.iter().all(Option::is_some));
            for i in 0..g.tokens {
                assert_eq!(events.event(&g, 0, i), sse_event(&g.token_chunk(0, i)));
            }
        }
        // A continuation renders its own token indices the same way.
        let prefilled = json!({"stream": true, "messages": [{"role": "assistant", "content": "tok0 tok1"}]});
        let g = generation(prefilled, Kind::Chat, 5);
        let events = TokenEvents::new(&g);
        assert_eq!(g.indices(), 2..5);
        for i in g.indices() {
            assert_eq!(events.event(&g, 0, i), sse_event(&g.token_chunk(0, i)));
        }
        // A model name containing the marker falls back to full rendering.
        let tricky = Generation::plan(Kind::Chat, &json!({}), TokenEvents::MARKER, 3, 1, 0);
        let events = TokenEvents::new(&tricky);
        assert!(events.templates.iter().all(Option::is_none));
        assert_eq!(events.event(&tricky, 0, 2), sse_event(&tricky.token_chunk(0, 2)));
    }

    #[test]
    fn templates_per_choice() {
        let g = generation(json!({"stream": true, "n": 3}), Kind::Chat, 4);
        let events = TokenEvents::new(&g);
        for choice in 0..3 {
            for i in 0..4 {
                assert_eq!(events.event(&g, choice, i), sse_event(&g.token_chunk(choice, i)));
            }
        }
    }

    #[test]
    fn crlf_and_gzip_framing() {
        use flate2::read::GzDecoder;
        use std::io::Read;
        let mut f = Framing::new(true, false);
        assert_eq!(&f.event(Bytes::from_static(b"data: x\n\n"))[..], b"data: x\r\n\r\n");
        assert!(f.end().is_empty());
        // Each gzip event decodes on its own (sync flush); all of them with the trailer.
        let mut f = Framing::new(false, true);
        let mut all = f.event(Bytes::from_static(b"data: a\n\n")).to_vec();
        let mut partial = String::new();
        let _ = GzDecoder::new(&all[..]).read_to_string(&mut partial);
        assert_eq!(partial, "data: a\n\n");
        all.extend_from_slice(&f.event(Bytes::from_static(SSE_DONE)));
        all.extend_from_slice(&f.end());
        let mut whole = String::new();
        GzDecoder::new(&all[..]).read_to_string(&mut whole).unwrap();
        assert_eq!(whole, "data: a\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn sse_event_framing() {
        let event = sse_event(&json!({"a": 1}));
        assert_eq!(&event[..], b"data: {\"a\":1}\n\n");
        assert_eq!(SSE_DONE, b"data: [DONE]\n\n");
    }
}
