//! One exchange with a provider over Pingora's pooled connector: send the
//! request header and the (already complete) body, wait for the response
//! header within `first_byte`, then read the body chunk by chunk within `idle`.
//! Driving the upstream side here (instead of Pingora's proxy loop) is what
//! lets weir inspect and rewrite bodies of any size and replay them on failover.
//! The proxy's attempts and a wasm filter's `http_call` both use this code.

use crate::error::{ErrorKind, WeirError};
use crate::provider::Provider;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, Instant};

/// Connection pools to every provider; shared by all config generations.
pub struct Upstream {
    connector: Connector,
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
    /// From the end of sending to the response header.
    pub first_byte: Duration,
    /// Longest gap while writing the request or reading the body.
    pub idle: Duration,
}

impl<'a> Target<'a> {
    /// A provider, with its configured timeouts.
    pub fn provider(p: &'a Provider) -> Self {
        Target {
            name: &p.name,
            peer: &p.peer,
            first_byte: p.conf.timeouts.first_byte.0,
            idle: p.conf.timeouts.idle.0,
        }
    }
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
    /// Pools keeping up to `idle_per_pool` idle connections each. A pool
    /// belongs to the tokio runtime its connections were made on.
    pub fn new(idle_per_pool: usize) -> Self {
        Upstream {
            connector: Connector::new(Some(ConnectorOptions::new(idle_per_pool))),
        }
    }

    /// Send a request and wait for the response header.
    pub async fn send(&self, p: &Target<'_>, req: &RequestHeader, body: &Bytes) -> Result<Exchange, WeirError> {
        // A pooled connection may have been closed by the provider; retry once on a new one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut s, reused) = self
                .connector
                .get_http_session(p.peer)
                .await
                .map_err(|e| classify(&e, p.name, "could not be reached"))?;
            match self.exchange(&mut s, p, req, body).await {
                Ok(ttfb) => {
                    return Ok(Exchange {
                        session: s,
                        idle: p.idle,
                        ttfb,
                    })
                }
                Err((e, sent_fully)) => {
                    if reused && attempts < 2 && !sent_fully && e.kind == ErrorKind::Upstream {
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
        p: &Target<'_>,
        req: &RequestHeader,
        body: &Bytes,
    ) -> Result<Duration, (WeirError, bool)> {
        s.set_write_timeout(Some(p.idle));
        let started = Instant::now();
        let send = async {
            s.write_request_header(Box::new(req.clone())).await?;
            if !body.is_empty() {
                s.write_request_body(body.clone(), true).await?;
            }
            s.finish_request_body().await
        };
        send.await
            .map_err(|e| (classify(&e, p.name, "failed while sending"), false))?;
        match tokio::time::timeout(p.first_byte, s.read_response_header()).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err((classify(&e, p.name, "failed before answering"), false)),
            Err(_) => Err((
                WeirError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "provider '{}' sent no response within {}",
                        p.name,
                        humantime::format_duration(p.first_byte)
                    ),
                ),
                true,
            )),
        }
    }

    /// Return a finished exchange's connection to the pool, or close it.
    pub async fn finish(&self, mut ex: Exchange, peer: &HttpPeer) {
        if ex.session.response_done() {
            self.connector
                .release_http_session(ex.session, peer, peer.options.idle_timeout)
                .await;
        } else {
            ex.session.shutdown().await;
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

    /// Read the rest of the body, at most `max` bytes.
    pub async fn read_all(&mut self, provider: &str, max: usize) -> Result<Bytes, WeirError> {
        let mut data = bytes::BytesMut::new();
        while let Some(c) = self.chunk(provider).await? {
            if data.len() + c.len() > max {
                return Err(WeirError::new(
                    ErrorKind::Upstream,
                    format!("'{provider}' answered with a body over {max} bytes"),
                ));
            }
            data.extend_from_slice(&c);
        }
        Ok(data.freeze())
    }

    pub fn done(&mut self) -> bool {
        self.session.response_done()
    }

    /// Close the connection without returning it to the pool.
    pub async fn abort(mut self) {
        self.session.shutdown().await;
    }
}
