//! One exchange with a provider over Pingora's pooled connector: send the
//! request header and the (already complete) body, wait for the response
//! header within `first_byte`, then read the body chunk by chunk within `idle`.
//! Driving the upstream side here (instead of Pingora's proxy loop) is what
//! lets weir inspect and rewrite bodies of any size and replay them on failover.
//!
//! Idle keep-alive connections wait in weir's own small pool (a stack per
//! peer, checked for liveness when taken) rather than Pingora's, whose
//! per-connection idle-watch task costs a cross-task hand-off on every reuse.

use crate::error::{ErrorKind, WeirError};
use crate::provider::Provider;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1::client::HttpSession as Http1Session;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::Peer;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connection pools to every provider; shared by all config generations.
pub struct Upstream {
    /// Makes new connections (TCP, TLS); its own pool stays empty.
    connector: Connector,
    /// Idle connections per peer (`reuse_hash`), most recent last.
    idle: Mutex<HashMap<u64, Vec<(Stream, Instant)>>>,
}

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 512;

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connector: Connector::new(Some(ConnectorOptions::new(1024))),
            idle: Mutex::new(HashMap::new()),
        }
    }
}

/// Is an idle connection still usable? (Nothing to read and not closed.)
fn still_open(stream: &mut Stream) -> bool {
    use futures::FutureExt;
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut buf))
        .now_or_never()
        .is_none()
}

/// A response being read from a provider.
pub struct Exchange {
    session: HttpSession,
    idle: Duration,
    /// Time from sending to the response header.
    pub ttfb: Duration,
}

fn classify(e: &pingora_error::Error, provider: &str, during: &str) -> WeirError {
    let kind = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => ErrorKind::UpstreamTimeout,
        _ => ErrorKind::Upstream,
    };
    WeirError::new(kind, format!("provider '{provider}' {during}: {}", e.etype().as_str()))
}

impl Upstream {
    /// Send a request and wait for the response header.
    pub async fn send(&self, p: &Provider, req: &RequestHeader, body: &Bytes) -> Result<Exchange, WeirError> {
        // A pooled connection may have been closed by the provider; retry once on a new one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut s, reused) = match self.take_idle(p) {
                Some(s) => (s, true),
                None => self
                    .connector
                    .get_http_session(&p.peer)
                    .await
                    .map_err(|e| classify(&e, &p.name, "could not be reached"))?,
            };
            match self.exchange(&mut s, p, req, body).await {
                Ok(ttfb) => {
                    return Ok(Exchange {
                        session: s,
                        idle: p.conf.timeouts.idle.0,
                        ttfb,
                    })
                }
                Err((e, sent_fully)) => {
                    if reused && attempts < 3 && !sent_fully && e.kind == ErrorKind::Upstream {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn exchange(
        &self,
        s: &mut HttpSession,
        p: &Provider,
        req: &RequestHeader,
        body: &Bytes,
    ) -> Result<Duration, (WeirError, bool)> {
        let t = &p.conf.timeouts;
        s.set_write_timeout(Some(t.idle.0));
        let started = Instant::now();
        let send = async {
            s.write_request_header(Box::new(req.clone())).await?;
            if !body.is_empty() {
                s.write_request_body(body.clone(), true).await?;
            }
            s.finish_request_body().await
        };
        send.await
            .map_err(|e| (classify(&e, &p.name, "failed while sending"), false))?;
        match tokio::time::timeout(t.first_byte.0, s.read_response_header()).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err((classify(&e, &p.name, "failed before answering"), false)),
            Err(_) => Err((
                WeirError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "provider '{}' sent no response within {}",
                        p.name, p.conf.timeouts.first_byte
                    ),
                ),
                true,
            )),
        }
    }

    /// A live idle connection to `p`, if one is waiting.
    fn take_idle(&self, p: &Provider) -> Option<HttpSession> {
        let max_idle = p.peer.options.idle_timeout.unwrap_or(Duration::from_secs(60));
        let mut idle = self.idle.lock().unwrap();
        let stack = idle.get_mut(&p.peer.reuse_hash())?;
        while let Some((mut stream, since)) = stack.pop() {
            if since.elapsed() < max_idle && still_open(&mut stream) {
                return Some(HttpSession::H1(Http1Session::new_with_options(stream, &p.peer)));
            }
        }
        None
    }

    /// Return a finished exchange's connection to the pool, or close it.
    pub async fn finish(&self, mut ex: Exchange, p: &Provider) {
        if !ex.session.response_done() {
            ex.session.shutdown().await;
            return;
        }
        match ex.session {
            HttpSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    let mut idle = self.idle.lock().unwrap();
                    let stack = idle.entry(p.peer.reuse_hash()).or_default();
                    if stack.len() >= IDLE_PER_PEER {
                        stack.remove(0);
                    }
                    stack.push((stream, Instant::now()));
                }
            }
            other => {
                self.connector
                    .release_http_session(other, &p.peer, p.peer.options.idle_timeout)
                    .await
            }
        }
    }
}

impl Exchange {
    pub fn header(&self) -> &ResponseHeader {
        self.session.response_header().expect("read before Exchange exists")
    }

    /// The next body chunk, `None` at the end.
    pub async fn chunk(&mut self, provider: &str) -> Result<Option<Bytes>, WeirError> {
        match tokio::time::timeout(self.idle, self.session.read_response_body()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(classify(&e, provider, "failed mid-response")),
            Err(_) => Err(WeirError::new(
                ErrorKind::UpstreamTimeout,
                format!("provider '{provider}' went idle mid-response"),
            )),
        }
    }

    pub fn done(&mut self) -> bool {
        self.session.response_done()
    }

    /// Close the connection without returning it to the pool.
    pub async fn abort(mut self) {
        self.session.shutdown().await;
    }
}
