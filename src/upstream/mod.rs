//! One exchange with a provider, over a connection from weir's pool
//! (`pool`) or a new one from Pingora's connector: send the request header
//! and the (already complete) body, in one write when the body is framed by
//! its length (Pingora's serializer makes the head), wait for the response
//! header within `first_token`, then read the body chunk by chunk, each
//! read bounded by the caller (a stream's first token, its idle gap).
//! Driving the upstream side here (instead of Pingora's proxy loop) is what
//! lets weir inspect and rewrite bodies of any size and replay them on failover.
//! The proxy's attempts and a wasm filter's `http_call` both use this code.
//! Its deadlines use Pingora's coarse timers (10 ms ticks, shared by every
//! deadline in the same tick, armed only once a read has to wait): a timer
//! per read costs no lock on the runtime's timer wheel.

use crate::error::{ErrorKind, WeirError};
use crate::provider::Provider;
use bytes::Bytes;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1::client::HttpSession as H1Session;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::upstreams::peer::Peer;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::{Duration, Instant};

mod pool;

/// Connection pools to every provider; shared by all config generations.
pub struct Upstream {
    /// Makes new connections (TCP, TLS).
    transport: TransportConnector,
    /// Keeps idle ones.
    pool: std::sync::Arc<pool::Pool>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new(1024)
    }
}

/// Where an exchange goes, and how long its steps may take.
pub struct Target<'a> {
    /// For errors and logs.
    pub name: &'a str,
    pub peer: &'a HttpPeer,
    /// From the start of sending to the response header.
    pub first_byte: Duration,
    /// Longest gap while writing the request or reading the body.
    pub idle: Duration,
}

impl<'a> Target<'a> {
    /// A provider, with its configured timeouts: the response header
    /// within `first_token` (a stream's first token is the caller's to time).
    pub fn provider(p: &'a Provider) -> Self {
        Target {
            name: &p.name,
            peer: &p.peer,
            first_byte: p.conf.timeouts.first_token.0,
            idle: p.conf.timeouts.idle.0,
        }
    }
}

/// A rewrite of an answer as it is read: a provider speaking another wire
/// format, translated so that everything reading the exchange sees one.
pub trait AnswerMap: Send {
    /// Rewrite the response head (once, before anything reads it).
    fn head(&mut self, head: &mut ResponseHeader);
    /// One body chunk as read: what the reader gets is appended to `out`.
    /// `Err`: the answer is malformed (a failed exchange).
    fn chunk(&mut self, chunk: &[u8], out: &mut bytes::BytesMut) -> Result<(), String>;
    /// The body ended: whatever the map still holds goes to `out`.
    fn end(&mut self, out: &mut bytes::BytesMut) -> Result<(), String>;
}

/// An exchange's answer seen through an [`AnswerMap`].
struct Mapped {
    map: Box<dyn AnswerMap>,
    head: ResponseHeader,
    ended: bool,
}

/// A response being read from a provider.
pub struct Exchange {
    session: HttpSession,
    /// The pool its connection returns to (the peer's `reuse_hash`) and
    /// for how long it may idle there: fixed when it was sent, so that a
    /// connection can only ever go back to the peer it was made for.
    pool_key: u64,
    keep_idle: Option<Duration>,
    /// Boxed: rare (a provider in another wire format), and an exchange is moved along a request's path.
    mapped: Option<Box<Mapped>>,
    idle: Duration,
    /// When sending began: a stream's first-token deadline counts from here.
    pub sent_at: Instant,
    /// Time from sending to the response header.
    pub ttfb: Duration,
}

/// What kind of failure an exchange met, for a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No connection: the provider never saw the request.
    Connect,
    /// The connection broke (closed, reset, garbled) before or while answering.
    Reset,
    /// The provider did not answer (or went quiet) in time.
    Timeout,
}

impl Fault {
    /// For metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Connect => "connect_error",
            Fault::Reset => "reset",
            Fault::Timeout => "timeout",
        }
    }
}

/// An exchange that failed: weir's error for the client, and its fault.
#[derive(Debug, Clone)]
pub struct SendError {
    pub error: WeirError,
    pub fault: Fault,
}

impl From<SendError> for WeirError {
    fn from(e: SendError) -> Self {
        e.error
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

fn classify(e: &pingora_error::Error, provider: &str, during: &str) -> SendError {
    let (kind, fault) = match e.etype() {
        ErrorType::ConnectTimedout => (ErrorKind::UpstreamTimeout, Fault::Connect),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => (ErrorKind::UpstreamTimeout, Fault::Timeout),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => (ErrorKind::Upstream, Fault::Connect),
        _ => (ErrorKind::Upstream, Fault::Reset),
    };
    SendError {
        error: WeirError::new(kind, format!("provider '{provider}' {during}: {}", e.etype().as_str())),
        fault,
    }
}

/// A provider that stayed silent past `limit`.
pub fn timed_out(provider: &str, what: &str, limit: Duration) -> SendError {
    SendError {
        error: WeirError::new(
            ErrorKind::UpstreamTimeout,
            format!(
                "provider '{provider}' {what} within {}",
                humantime::format_duration(limit)
            ),
        ),
        fault: Fault::Timeout,
    }
}

/// How much of a request may have reached the provider when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not even the whole header: the provider cannot have acted on it.
    Nothing,
    /// The header at least: the provider may have acted on it.
    Some,
}

/// Interim (1xx) heads skipped before a final one; more is a broken provider.
const MAX_INTERIM_HEADS: usize = 8;

/// Read response heads until a final (non-1xx) one. Pingora returns a
/// `100 Continue` or `103 Early Hints` head as if it were the response, and
/// reading a body after it panics (no body reader for a 1xx head); weir has
/// sent the whole request already, so interim heads carry nothing for it.
async fn final_header(s: &mut HttpSession, provider: &str) -> Result<(), SendError> {
    for _ in 0..=MAX_INTERIM_HEADS {
        s.read_response_header()
            .await
            .map_err(|e| classify(&e, provider, "failed before answering"))?;
        let status = s.response_header().map_or(0, |h| h.status.as_u16());
        match status {
            // weir never asks to switch protocols (it strips `Upgrade`).
            101 => {
                return Err(broken(format!(
                    "provider '{provider}' switched protocols unasked (101)"
                )))
            }
            100..=199 => continue,
            _ => return Ok(()),
        }
    }
    Err(broken(format!(
        "provider '{provider}' sent more than {MAX_INTERIM_HEADS} interim (1xx) responses"
    )))
}

/// A provider that broke the protocol.
fn broken(message: String) -> SendError {
    SendError {
        error: WeirError::new(ErrorKind::Upstream, message),
        fault: Fault::Reset,
    }
}

/// The request's head on the wire, when head and body can go out in one
/// write: the body is whole and framed by `Content-Length` (what weir and
/// `http_call` always send), and nothing about the request changes how its
/// answer is read (a `HEAD`, a `Connection` or `Upgrade` header: Pingora's
/// session reads those from the request it wrote itself). Else `None`, and
/// Pingora's session writes head and body (two writes, each flushed).
/// One write instead of two is one send and one segment fewer per request
/// on the provider's connection.
fn one_write(req: &RequestHeader, body: &Bytes) -> Option<bytes::BytesMut> {
    use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
    let h = &req.headers;
    if req.method == http::Method::HEAD
        || h.contains_key(TRANSFER_ENCODING)
        || h.contains_key(CONNECTION)
        || h.contains_key(UPGRADE)
    {
        return None;
    }
    let framed = match h.get(CONTENT_LENGTH) {
        Some(v) => v.to_str().ok()?.parse::<usize>().ok()? == body.len(),
        None => body.is_empty(),
    };
    if !framed {
        return None;
    }
    pingora_core::protocols::http::v1::client::http_req_header_to_wire(req)
}

/// Write `head` then `body` as one (vectored) write, and flush.
/// `head_out` tells, even after a timeout, whether the whole head went out.
async fn write_head_and_body<S: tokio::io::AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    head: &[u8],
    body: &[u8],
    head_out: &mut bool,
) -> Result<(), Box<pingora_error::Error>> {
    use tokio::io::AsyncWriteExt;
    let (mut h, mut b) = (head, body);
    let failed = |e| pingora_error::Error::because(ErrorType::WriteError, "writing request", e);
    while !h.is_empty() || !b.is_empty() {
        let n = stream
            .write_vectored(&[std::io::IoSlice::new(h), std::io::IoSlice::new(b)])
            .await
            .map_err(failed)?;
        if n == 0 {
            return Err(failed(std::io::ErrorKind::WriteZero.into()));
        }
        let from_head = n.min(h.len());
        h = &h[from_head..];
        b = &b[n - from_head..];
        *head_out = h.is_empty();
    }
    stream.flush().await.map_err(failed)
}

/// Send head and body in one write (see [`one_write`]); the session then
/// only reads the answer.
async fn send_at_once(
    mut stream: Stream,
    p: &Target<'_>,
    head: &[u8],
    body: &[u8],
) -> Result<HttpSession, (SendError, Sent)> {
    let mut head_out = false;
    let written = fast_timeout(p.idle, write_head_and_body(&mut stream, head, body, &mut head_out))
        .await
        .unwrap_or_else(|_| {
            Err(pingora_error::Error::explain(
                ErrorType::WriteTimedout,
                "writing request",
            ))
        });
    if let Err(e) = written {
        // As with Pingora's own writes: a provider that has not had the
        // whole head cannot have acted on the request.
        let sent = if head_out { Sent::Some } else { Sent::Nothing };
        return Err((classify(&e, p.name, "failed while sending"), sent));
    }
    Ok(HttpSession::H1(H1Session::new_with_options(stream, p.peer)))
}

/// Send head and body through Pingora's session (two writes).
async fn send_in_parts(
    stream: Stream,
    p: &Target<'_>,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<HttpSession, (SendError, Sent)> {
    let mut s = HttpSession::H1(H1Session::new_with_options(stream, p.peer));
    s.set_write_timeout(Some(p.idle));
    let failed = |e: Box<pingora_error::Error>, sent| (classify(&e, p.name, "failed while sending"), sent);
    s.write_request_header(Box::new(req.clone()))
        .await
        .map_err(|e| failed(e, Sent::Nothing))?;
    if !body.is_empty() {
        s.write_request_body(body.clone(), true)
            .await
            .map_err(|e| failed(e, Sent::Some))?;
    }
    s.finish_request_body().await.map_err(|e| failed(e, Sent::Some))?;
    Ok(s)
}

impl Upstream {
    /// Keeping up to `idle_per_pool` idle connections, to all peers
    /// together. A pool belongs to the tokio runtime its connections were
    /// made on.
    pub fn new(idle_per_pool: usize) -> Self {
        Upstream {
            // Its own pool is never used: `pool` keeps idle connections.
            transport: TransportConnector::new(Some(ConnectorOptions::new(0))),
            pool: pool::Pool::new(idle_per_pool),
        }
    }

    /// Send a request and wait for the (final) response header.
    ///
    /// A request is sent again on a new connection only when the provider
    /// provably never had it: writing its header failed on a pooled
    /// connection (the provider cannot act on a request it did not receive
    /// whole). Once the header is out, a reset or close is the caller's
    /// failure to handle (and count): the provider may have done, and
    /// billed, the work. The pool itself drops idle connections found
    /// closed or unreadable before handing them out.
    pub async fn send(&self, p: &Target<'_>, req: &RequestHeader, body: &Bytes) -> Result<Exchange, SendError> {
        let mut fresh_tried = false;
        let sent_at = Instant::now();
        let pool_key = p.peer.reuse_hash();
        loop {
            let (stream, reused) = self.stream(p, pool_key, fresh_tried).await?;
            match self.exchange(stream, p, req, body).await {
                Ok((session, ttfb)) => {
                    return Ok(Exchange {
                        mapped: None,
                        session,
                        pool_key,
                        keep_idle: p.peer.options.idle_timeout,
                        idle: p.idle,
                        sent_at,
                        ttfb,
                    })
                }
                Err((e, Sent::Nothing)) if reused && !fresh_tried => {
                    log::debug!("{e}; pooled connection was dead, sending on a new one");
                    fresh_tried = true;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// A pooled connection to the provider, else a new one (unless
    /// `fresh` asks for a new one). Making a connection (TCP, perhaps TLS)
    /// is a large future and rare once pools are warm: it is boxed, so that
    /// every request's future does not carry its size.
    async fn stream(&self, p: &Target<'_>, pool_key: u64, fresh: bool) -> Result<(Stream, bool), SendError> {
        if !fresh {
            if let Some(stream) = self.pool.take(pool_key) {
                return Ok((stream, true));
            }
        }
        let stream = Box::pin(self.transport.new_stream(p.peer))
            .await
            .map_err(|e| classify(&e, p.name, "could not be reached"))?;
        Ok((stream, false))
    }

    /// Send the request, then wait for the final response header.
    async fn exchange(
        &self,
        stream: Stream,
        p: &Target<'_>,
        req: &RequestHeader,
        body: &Bytes,
    ) -> Result<(HttpSession, Duration), (SendError, Sent)> {
        let started = Instant::now();
        let mut s = match one_write(req, body) {
            Some(head) => send_at_once(stream, p, &head, body).await?,
            None => send_in_parts(stream, p, req, body).await?,
        };
        match fast_timeout(p.first_byte, final_header(&mut s, p.name)).await {
            Ok(Ok(())) => Ok((s, started.elapsed())),
            Ok(Err(e)) => Err((e, Sent::Some)),
            Err(_) => Err((timed_out(p.name, "sent no response", p.first_byte), Sent::Some)),
        }
    }

    /// Read the rest of an answer (at most `max` bytes), then return its
    /// connection to the pool; on failure the connection is closed.
    pub async fn read_whole(&self, mut ex: Exchange, name: &str, max: usize) -> Result<Bytes, SendError> {
        match ex.read_all(name, max).await {
            Ok(data) => {
                self.finish(ex).await;
                Ok(data)
            }
            Err(e) => {
                ex.abort().await;
                Err(e)
            }
        }
    }

    /// Return a finished exchange's connection to the pool, or close it.
    /// Pooling is synchronous (what Pingora's `reuse` does but for its
    /// close): the common case adds nothing to the caller's future.
    pub async fn finish(&self, ex: Exchange) {
        if let HttpSession::H1(mut h1) = ex.session {
            if h1.is_body_done() {
                // Off for a `Connection: close`, an HTTP/1.0 or close-delimited
                // answer, or bytes past the body's end. (A body cut by the
                // provider's close is an error, whose exchange is aborted,
                // not finished; the pool drops an idle connection found
                // closed before handing it out anyway.)
                h1.respect_keepalive();
                if h1.will_keepalive() {
                    self.pool.put(ex.pool_key, h1.into_inner(), ex.keep_idle);
                    return;
                }
            }
            h1.shutdown().await;
        }
    }
}

impl Exchange {
    pub fn header(&self) -> &ResponseHeader {
        match &self.mapped {
            Some(m) => &m.head,
            None => self.session.response_header().expect("read before Exchange exists"),
        }
    }

    /// From now on, the answer is read through `map` (its head at once).
    pub fn map_answer(&mut self, mut map: Box<dyn AnswerMap>) {
        let mut head = self.header().clone();
        map.head(&mut head);
        self.mapped = Some(Box::new(Mapped {
            map,
            head,
            ended: false,
        }));
    }

    /// The next body chunk, `None` at the end; at most `idle` away.
    pub async fn chunk(&mut self, provider: &str) -> Result<Option<Bytes>, SendError> {
        self.chunk_within(provider, self.idle).await
    }

    /// The next body chunk within `limit`, `None` at the end. Through a
    /// map, reads that yield nothing (a keep-alive ping) are skipped, all
    /// within the same `limit`.
    pub async fn chunk_within(&mut self, provider: &str, limit: Duration) -> Result<Option<Bytes>, SendError> {
        let Some(m) = self.mapped.as_mut() else {
            return match fast_timeout(limit, self.session.read_response_body()).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(classify(&e, provider, "failed mid-response")),
                Err(_) => Err(timed_out(provider, "sent nothing more", limit)),
            };
        };
        let deadline = Instant::now() + limit;
        let mut out = bytes::BytesMut::new();
        while !m.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            let read = match fast_timeout(left, self.session.read_response_body()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(classify(&e, provider, "failed mid-response")),
                Err(_) => return Err(timed_out(provider, "sent nothing more", limit)),
            };
            let mapped = match read {
                Some(c) => m.map.chunk(&c, &mut out),
                None => {
                    m.ended = true;
                    m.map.end(&mut out)
                }
            };
            mapped.map_err(|e| broken(format!("'{provider}' {e}")))?;
            if !out.is_empty() {
                return Ok(Some(out.freeze()));
            }
        }
        Ok(None)
    }

    /// Read the rest of the body, at most `max` bytes.
    pub async fn read_all(&mut self, provider: &str, max: usize) -> Result<Bytes, SendError> {
        let mut data = bytes::BytesMut::new();
        while let Some(c) = self.chunk(provider).await? {
            if data.len() + c.len() > max {
                return Err(broken(format!("'{provider}' answered with a body over {max} bytes")));
            }
            data.extend_from_slice(&c);
        }
        Ok(data.freeze())
    }

    pub fn done(&mut self) -> bool {
        self.session.response_done() && self.mapped.as_ref().is_none_or(|m| m.ended)
    }

    /// Close the connection without returning it to the pool.
    pub async fn abort(mut self) {
        self.session.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn post(headers: &[(&str, &str)], method: &str) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/v1/chat/completions", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn one_write_only_for_a_whole_body_framed_by_its_length() {
        let body = Bytes::from_static(b"{\"model\":\"m\"}");
        let n = body.len().to_string();
        let wire = one_write(&post(&[("host", "p"), ("content-length", &n)], "POST"), &body).unwrap();
        let wire = std::str::from_utf8(&wire).unwrap();
        assert!(wire.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\n"), "{wire}");
        assert!(wire.contains(&format!("content-length: {n}\r\n")), "{wire}");
        // A GET without a body needs no length.
        assert!(one_write(&post(&[("host", "p")], "GET"), &Bytes::new()).is_some());
        // Everything else goes through Pingora's own writes.
        for (headers, method, body) in [
            (vec![("content-length", "3")], "POST", body.clone()),
            (vec![], "POST", body.clone()),
            (vec![("content-length", "x")], "POST", body.clone()),
            (vec![("transfer-encoding", "chunked")], "POST", body.clone()),
            (
                vec![("content-length", n.as_str()), ("connection", "close")],
                "POST",
                body.clone(),
            ),
            (
                vec![("content-length", n.as_str()), ("upgrade", "websocket")],
                "POST",
                body.clone(),
            ),
            (vec![], "HEAD", Bytes::new()),
        ] {
            assert!(
                one_write(&post(&headers, method), &body).is_none(),
                "{method} {headers:?}"
            );
        }
    }

    /// What one exchange over a scripted connection came to: the answer's
    /// status, or how much of the request the provider may have had.
    async fn exchange_over(script: tokio_test::io::Mock, idle: Duration) -> Result<u16, Sent> {
        let up = Upstream::new(4);
        let peer = HttpPeer::new("127.0.0.1:9", false, String::new());
        let target = Target {
            name: "p",
            peer: &peer,
            first_byte: Duration::from_secs(5),
            idle,
        };
        let (req, body) = request();
        match up.exchange(Box::new(script), &target, &req, &body).await {
            Ok((s, _)) => Ok(s.response_header().unwrap().status.as_u16()),
            Err((_, sent)) => Err(sent),
        }
    }

    fn request() -> (RequestHeader, Bytes) {
        let body = Bytes::from_static(b"{\"model\":\"m\"}");
        (
            post(&[("host", "p"), ("content-length", &body.len().to_string())], "POST"),
            body,
        )
    }

    #[tokio::test]
    async fn a_failed_exchange_says_whether_the_provider_may_have_the_request() {
        let (req, body) = request();
        let head = one_write(&req, &body).unwrap();
        let idle = Duration::from_secs(5);
        let broken = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        use tokio_test::io::Builder;
        // (Each script is built in a statement of its own: the builder keeps
        // a reference to its error until it is dropped.)
        let script = Builder::new().write(&head).write(&body).read(answer).build();
        assert_eq!(exchange_over(script, idle).await, Ok(200));
        // Broken inside the head: it cannot have been acted on (a pooled
        // connection's request is then sent again on a new one).
        let script = Builder::new().write(&head[..5]).write_error(broken()).build();
        assert_eq!(exchange_over(script, idle).await, Err(Sent::Nothing));
        // Broken inside the body, or once the request is out: it may have been.
        let script = Builder::new()
            .write(&head)
            .write(&body[..2])
            .write_error(broken())
            .build();
        assert_eq!(exchange_over(script, idle).await, Err(Sent::Some));
        let script = Builder::new().write(&head).write(&body).read_error(broken()).build();
        assert_eq!(exchange_over(script, idle).await, Err(Sent::Some));
        // Writes that stall until `idle` runs out: the same line.
        let short = Duration::from_millis(50);
        let stall = Duration::from_secs(30);
        let script = Builder::new().write(&head[..5]).wait(stall).build();
        assert_eq!(exchange_over(script, short).await, Err(Sent::Nothing));
        let script = Builder::new().write(&head).wait(stall).build();
        assert_eq!(exchange_over(script, short).await, Err(Sent::Some));
    }

    /// Takes at most `per_call` bytes a write; fails once `fail_at` bytes are in.
    #[derive(Default)]
    struct Wire {
        got: Vec<u8>,
        writes: usize,
        flushes: usize,
        per_call: usize,
        fail_at: Option<usize>,
    }

    impl tokio::io::AsyncWrite for Wire {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if self.fail_at.is_some_and(|f| self.got.len() >= f) {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(w: &mut Wire, head: &[u8], body: &[u8]) -> (bool, bool) {
        let mut head_out = false;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(write_head_and_body(w, head, body, &mut head_out));
        (r.is_ok(), head_out)
    }

    #[test]
    fn head_and_body_go_out_in_one_write_and_one_flush() {
        let (head, body) = (b"POST / HTTP/1.1\r\n\r\n".as_slice(), b"{\"a\":1}".as_slice());
        let mut w = Wire {
            per_call: usize::MAX,
            ..Wire::default()
        };
        assert_eq!(write(&mut w, head, body), (true, true));
        assert_eq!((w.writes, w.flushes), (1, 1));
        assert_eq!(w.got, [head, body].concat());
        // Short writes: everything still goes out, in order, once.
        for per_call in [1, 5, head.len(), head.len() + 1] {
            let mut w = Wire {
                per_call,
                ..Wire::default()
            };
            assert_eq!(write(&mut w, head, body), (true, true), "{per_call}");
            assert_eq!(w.got, [head, body].concat(), "{per_call}");
        }
        // No body: the head alone.
        let mut w = Wire {
            per_call: usize::MAX,
            ..Wire::default()
        };
        assert_eq!(write(&mut w, head, b""), (true, true));
        assert_eq!(w.got, head);
    }

    #[test]
    fn a_failed_write_tells_whether_the_whole_head_went_out() {
        let (head, body) = (b"POST / HTTP/1.1\r\n\r\n".as_slice(), b"{\"a\":1}".as_slice());
        // Broken inside the head: the provider cannot have acted on it.
        let mut w = Wire {
            per_call: 4,
            fail_at: Some(4),
            ..Wire::default()
        };
        assert_eq!(write(&mut w, head, body), (false, false));
        // Broken inside the body: it may have.
        let mut w = Wire {
            per_call: head.len(),
            fail_at: Some(head.len()),
            ..Wire::default()
        };
        assert_eq!(write(&mut w, head, body), (false, true));
    }
}
