//! One exchange with a provider over Pingora's pooled connector: send the
//! request header and the (already complete) body, wait for the response
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
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::upstreams::peer::Peer;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::{Duration, Instant};

/// Connection pools to every provider; shared by all config generations.
pub struct Upstream {
    transport: TransportConnector,
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

impl Upstream {
    /// Pools keeping up to `idle_per_pool` idle connections each. A pool
    /// belongs to the tokio runtime its connections were made on.
    pub fn new(idle_per_pool: usize) -> Self {
        Upstream {
            transport: TransportConnector::new(Some(ConnectorOptions::new(idle_per_pool))),
        }
    }

    /// Send a request and wait for the (final) response header.
    ///
    /// A request is sent again on a new connection only when the provider
    /// provably never had it: writing its header failed on a pooled
    /// connection (the provider cannot act on a request it did not receive
    /// whole). Once the header is out, a reset or close is the caller's
    /// failure to handle (and count): the provider may have done, and
    /// billed, the work. Pingora itself drops pooled connections found
    /// closed or unreadable before handing them out.
    pub async fn send(&self, p: &Target<'_>, req: &RequestHeader, body: &Bytes) -> Result<Exchange, SendError> {
        let mut fresh_tried = false;
        let sent_at = Instant::now();
        loop {
            let (mut s, reused) = self.session(p, fresh_tried).await?;
            match self.exchange(&mut s, p, req, body).await {
                Ok(ttfb) => {
                    return Ok(Exchange {
                        mapped: None,
                        session: s,
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
    async fn session(&self, p: &Target<'_>, fresh: bool) -> Result<(HttpSession, bool), SendError> {
        if !fresh {
            if let Some(stream) = self.transport.reused_stream(p.peer).await {
                return Ok((HttpSession::H1(H1Session::new_with_options(stream, p.peer)), true));
            }
        }
        let stream = Box::pin(self.transport.new_stream(p.peer))
            .await
            .map_err(|e| classify(&e, p.name, "could not be reached"))?;
        Ok((HttpSession::H1(H1Session::new_with_options(stream, p.peer)), false))
    }

    async fn exchange(
        &self,
        s: &mut HttpSession,
        p: &Target<'_>,
        req: &RequestHeader,
        body: &Bytes,
    ) -> Result<Duration, (SendError, Sent)> {
        s.set_write_timeout(Some(p.idle));
        let started = Instant::now();
        s.write_request_header(Box::new(req.clone()))
            .await
            .map_err(|e| (classify(&e, p.name, "failed while sending"), Sent::Nothing))?;
        let send_body = async {
            if !body.is_empty() {
                s.write_request_body(body.clone(), true).await?;
            }
            s.finish_request_body().await
        };
        send_body
            .await
            .map_err(|e| (classify(&e, p.name, "failed while sending"), Sent::Some))?;
        match fast_timeout(p.first_byte, final_header(s, p.name)).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err((e, Sent::Some)),
            Err(_) => Err((timed_out(p.name, "sent no response", p.first_byte), Sent::Some)),
        }
    }

    /// Read the rest of an answer (at most `max` bytes), then return its
    /// connection to the pool; on failure the connection is closed.
    pub async fn read_whole(
        &self,
        mut ex: Exchange,
        peer: &HttpPeer,
        name: &str,
        max: usize,
    ) -> Result<Bytes, SendError> {
        match ex.read_all(name, max).await {
            Ok(data) => {
                self.finish(ex, peer).await;
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
    pub async fn finish(&self, ex: Exchange, peer: &HttpPeer) {
        if let HttpSession::H1(mut h1) = ex.session {
            if h1.is_body_done() {
                // Off for a `Connection: close`, an HTTP/1.0 or close-delimited
                // answer, or bytes past the body's end. (A body cut by the
                // provider's close is an error, whose exchange is aborted,
                // not finished; Pingora drops a pooled connection found
                // closed before handing it out anyway.)
                h1.respect_keepalive();
                if h1.will_keepalive() {
                    let idle = peer.options.idle_timeout;
                    self.transport.release_stream(h1.into_inner(), peer.reuse_hash(), idle);
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
