//! The Pingora glue, and nothing else. Pingora owns the client connection
//! and HTTP parsing; weir answers every request from `request_filter`
//! (returning `Ok(true)`) by running the pipeline against the session, so
//! bodies of any size can be read, rewritten and replayed on failover.
//!
//! Pingora phase      -> weir
//! `request_filter`   -> pick the generation and route, `Pipeline::serve`
//! `logging`          -> the log phase, request metrics
//!
//! `HeaderDeadline` wraps Pingora's HTTP app to bound the request header.

use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::pipeline::{Downstream, Ended, Pipeline, RequestCtx};
use crate::runtime::Gateway;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use pingora_timeout::fast_timeout::{fast_sleep, fast_timeout};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

tokio::task_local! {
    /// Set once the current request's header is parsed (`new_ctx` runs).
    static HEADER_READ: Arc<AtomicBool>;
}

/// Pingora's HTTP proxy app with a deadline on each request header
/// (`server.timeouts.request_headers`). Pingora bounds each read of a
/// header (60 s), not the whole: a client sending a byte every few seconds
/// would hold its connection for ever. Past the deadline the connection is
/// closed without an answer, as nginx does.
pub struct HeaderDeadline {
    inner: Arc<HttpProxy<WeirProxy>>,
    gateway: Arc<Gateway>,
}

impl HeaderDeadline {
    /// Wrap `proxy`; the deadline is read from the current generation.
    pub fn new(proxy: HttpProxy<WeirProxy>, gateway: Arc<Gateway>) -> Self {
        HeaderDeadline {
            inner: Arc::new(proxy),
            gateway,
        }
    }
}

#[async_trait]
impl HttpServerApp for HeaderDeadline {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let timeouts = self.gateway.current().client_timeouts;
        let limit = timeouts.request_headers.0;
        let read = Arc::new(AtomicBool::new(false));
        let serve = HEADER_READ.scope(read.clone(), self.inner.process_new_http(session, shutdown));
        tokio::pin!(serve);
        // The first poll parses what has arrived, usually the whole header
        // (a kept-alive connection's next request is waited for below): a
        // deadline is armed only for a header still incomplete after it.
        let first = std::future::poll_fn(|cx| Poll::Ready(serve.as_mut().poll(cx))).await;
        let reused = match first {
            Poll::Ready(r) => r,
            Poll::Pending if read.load(Ordering::Relaxed) => serve.await,
            Poll::Pending => tokio::select! {
                r = &mut serve => r,
                _ = fast_sleep(limit) => {
                    if !read.load(Ordering::Relaxed) {
                        log::debug!("request header not complete within {limit:?}: connection closed");
                        return None; // dropping the session closes the connection
                    }
                    serve.await
                }
            },
        };
        // Wait here for the next request's first byte, so that its deadline
        // starts there and the keep-alive idle time is not counted in it.
        let (mut stream, settings) = reused?.consume();
        next_request(&mut stream, timeouts.keepalive_idle.0, shutdown).await?;
        Some(ReusedHttpStream::new(stream, settings))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    /// Not passed on: Pingora's cleanup drops every connection still
    /// waiting for its request header when the listeners close, including
    /// one accepted just before whose request is on its way (its client sees
    /// a reset). Here an idle kept-alive connection is closed on shutdown by
    /// `next_request`; a connection whose request has begun, or that was
    /// accepted before the listeners closed, is answered (without
    /// keep-alive), its header bounded by `server.timeouts.request_headers`
    /// — as is an idle kept-alive TLS connection, which cannot be peeked.
    async fn http_cleanup(&self) {}
}

/// Wait until a kept-alive connection has a byte of its next request:
/// `None` (close it) if it idles past `idle`, closes, or the
/// server shuts down — what Pingora itself does with an idle connection.
/// Weir listens on plain TCP, whose streams can peek; one that cannot (TLS)
/// returns at once, and its next header's deadline includes the idle time.
/// Pingora's pipelining (bytes of the next request already read) is off.
async fn next_request(stream: &mut Stream, idle: Duration, shutdown: &ShutdownWatch) -> Option<()> {
    let mut shutdown = shutdown.clone();
    let mut byte = [0u8; 1];
    tokio::select! {
        // A request that has begun is served even if shutdown came with it.
        biased;
        r = fast_timeout(idle, stream.try_peek(&mut byte)) => matches!(r, Ok(Ok(_))).then_some(()),
        _ = shutdown.wait_for(|down| *down) => None,
    }
}

/// The client connections of each listener (by local port), bounded by
/// `server.max_connections`: past it a new connection is answered 503
/// `queue_full` (`x-weir-queue: connections:<port>`) at once and closed,
/// without reading its request. Open connections are never cut.
pub struct ConnectionCap<A> {
    inner: Arc<A>,
    gateway: Arc<Gateway>,
    /// Open connections by listener port (the gauge is the counter).
    open: Mutex<HashMap<u16, prometheus::IntGauge>>,
    /// Open connections on every listener, for [`Drain`].
    total: Arc<AtomicUsize>,
}

impl<A> ConnectionCap<A> {
    /// `total` counts the open connections of every listener (shared with
    /// [`WeirProxy::drain`]).
    pub fn new(inner: A, gateway: Arc<Gateway>, total: Arc<AtomicUsize>) -> Self {
        ConnectionCap {
            inner: Arc::new(inner),
            gateway,
            open: Mutex::new(HashMap::new()),
            total,
        }
    }
}

/// One open connection in its listener's gauge, counted down when it closes.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One connection in the count `Drain` waits for, counted down when it closes.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Counted for `Drain` from here on, a refused connection too (its
        // 503 is being written).
        self.total.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(self.total.clone());
        let port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()))
            .unwrap_or(0);
        let open = self
            .open
            .lock()
            .entry(port)
            .or_insert_with(|| metrics::CLIENT_CONNECTIONS.with_label_values(&[&port.to_string()]))
            .clone();
        let max = self.gateway.current().max_connections;
        open.inc();
        if open.get() as usize > max {
            open.dec();
            let queue = format!("connections:{port}");
            metrics::QUEUE_REJECTED.with_label_values(&[&queue, "full"]).inc();
            let e = WeirError::new(
                ErrorKind::QueueFull,
                format!("listener port {port} has {max} connections open (server.max_connections); retry shortly"),
            );
            let body = e.body();
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 retry-after: 1\r\nx-weir-queue: {queue}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let refuse = async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                stream.shutdown().await?;
                // Lingering close: read (and drop) what the client sends, a
                // little, so closing with its request unread does not reset
                // the connection before it has read the 503.
                let mut sink = [0u8; 4096];
                let mut left = 64usize << 10;
                while left > 0 {
                    let n = stream.read(&mut sink).await?;
                    if n == 0 {
                        break;
                    }
                    left = left.saturating_sub(n);
                }
                Ok::<(), std::io::Error>(())
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), refuse).await;
            return None;
        }
        let _open = OpenConnection(open);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Weir's `ProxyHttp`.
pub struct WeirProxy {
    pub gateway: Arc<Gateway>,
    pipeline: Arc<Pipeline>,
}

fn request_id(req: &RequestHeader) -> String {
    match req.headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

impl WeirProxy {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        WeirProxy {
            gateway,
            pipeline: Arc::new(Pipeline::default()),
        }
    }

    /// The service that ends the process once a graceful termination has
    /// drained this proxy's requests and client connections (`connections`,
    /// counted by [`ConnectionCap`]), at most `grace` after it began.
    pub fn drain(&self, grace: std::time::Duration, connections: Arc<AtomicUsize>) -> Drain {
        Drain {
            pipeline: self.pipeline.clone(),
            gateway: self.gateway.clone(),
            connections,
            grace,
        }
    }
}

/// Graceful termination (SIGTERM): Pingora closes the listeners and keeps
/// serving what is in flight for its grace period (`server.shutdown_grace`);
/// this ends the process as soon as nothing is, instead of sleeping the
/// whole grace period out. "Nothing" counts connections, not only requests:
/// a connection accepted just before the listeners closed has no request
/// in the pipeline until its header is read, and ending the process then
/// would reset it. Idle kept-alive connections close at once on shutdown
/// (`next_request`); one still sending its header is bounded by
/// `server.timeouts.request_headers`.
pub struct Drain {
    pipeline: Arc<Pipeline>,
    gateway: Arc<Gateway>,
    connections: Arc<AtomicUsize>,
    grace: std::time::Duration,
}

impl Drain {
    /// Send the spans of the requests that finished (bounded by the
    /// exporter's timeout), off the async workers.
    async fn flush_traces(&self) {
        if let Some(t) = self.gateway.current().tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
    }
}

#[async_trait]
impl pingora_core::services::background::BackgroundService for Drain {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = std::time::Instant::now();
        log::info!(
            "draining: {} requests in flight on {} connections get up to {}",
            self.pipeline.in_flight(),
            self.connections.load(Ordering::Relaxed),
            humantime::format_duration(self.grace)
        );
        // Idle a moment at zero first: a request's log phase (a budget's
        // settlement) runs just after its last byte.
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            // Every request in flight is on an open connection: none open, none in flight.
            if self.connections.load(Ordering::Relaxed) == 0 {
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= std::time::Duration::from_millis(250) {
                    log::info!("drained in {:?}; exiting", started.elapsed());
                    self.flush_traces().await;
                    log::logger().flush();
                    std::process::exit(0);
                }
            } else {
                idle_since = None;
            }
            if started.elapsed() > self.grace {
                log::warn!(
                    "grace period over with {} requests in flight on {} connections",
                    self.pipeline.in_flight(),
                    self.connections.load(Ordering::Relaxed)
                );
                self.flush_traces().await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The client side of a request, as the pipeline sees it.
impl Downstream for Session {
    fn req_header(&self) -> &RequestHeader {
        self.downstream_session.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.downstream_session.req_header_mut()
    }

    fn body_empty(&mut self) -> bool {
        self.downstream_session.is_body_empty()
    }

    fn body_done(&mut self) -> bool {
        self.downstream_session.is_body_done()
    }

    async fn read_body(&mut self) -> Result<Option<Bytes>, ()> {
        self.downstream_session.read_request_body().await.map_err(|_| ())
    }

    async fn gone(&mut self) {
        let _ = self.downstream_session.read_body_or_idle(true).await;
    }

    async fn write_header(&mut self, h: ResponseHeader, end: bool) -> Result<(), ()> {
        if h.status.is_informational() {
            // Pingora closes a connection whose response starts before the
            // request body is read, and counts a `100 Continue` as such a
            // start: the client that asked for it would lose its keep-alive.
            let s = &mut self.downstream_session;
            s.set_close_on_response_before_downstream_finish(false);
            let r = s.write_response_header(Box::new(h)).await;
            s.set_close_on_response_before_downstream_finish(true);
            return r.map_err(|_| ());
        }
        self.write_response_header(Box::new(h), end).await.map_err(|_| ())
    }

    async fn write_body(&mut self, b: Bytes, end: bool) -> Result<(), ()> {
        self.write_response_body(Some(b), end).await.map_err(|_| ())
    }

    fn no_keepalive(&mut self) {
        self.set_keepalive(None);
    }

    fn response_started(&self) -> bool {
        // A `100 Continue` sent before reading the body is not the response.
        self.response_written().is_some_and(|h| !h.status.is_informational())
    }
}

#[async_trait]
impl ProxyHttp for WeirProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // The header is whole: `HeaderDeadline` no longer applies.
        let _ = HEADER_READ.try_with(|read| read.store(true, Ordering::Relaxed));
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.gateway.current();
        ctx.started = Instant::now();
        ctx.generation = rt.generation;
        ctx.providers = Some(rt.providers.clone());
        ctx.max_request_body = rt.max_request_body;
        ctx.request_body_timeout = rt.client_timeouts.request_body.0;
        // Every write to this client is bounded: one that stops reading
        // loses its connection instead of holding a provider slot for ever.
        session
            .downstream_session
            .set_write_timeout(Some(rt.client_timeouts.client_write.0));
        ctx.request_id = request_id(session.req_header());
        ctx.client_addr = session.client_addr().and_then(|a| a.as_inet()).copied();
        ctx.server_addr = session.server_addr().and_then(|a| a.as_inet()).copied();
        if let Some(tls) = session.digest().and_then(|d| d.ssl_digest.as_ref()) {
            ctx.tls = true;
            ctx.mtls = !tls.cert_digest.is_empty();
        }
        if let Some(t) = &rt.tracing {
            ctx.trace = t.begin(session.req_header(), ctx.started);
        }
        let route = rt.route_for(session.req_header());
        match self.pipeline.serve(route, session, ctx).await {
            Ended::Answered => Ok(true),
            Ended::ClientGone => Error::e_explain(ErrorType::ConnectionClosed, "client went away"),
            Ended::Aborted => Error::e_explain(ErrorType::WriteError, "response cut short"),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every request.
        Error::e_explain(ErrorType::InternalError, "weir drives upstreams itself")
    }

    async fn fail_to_proxy(&self, _session: &mut Session, _e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The response (if any) was already handled; just don't reuse the connection.
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.providers.is_none() {
            return; // never reached request_filter
        }
        self.pipeline.log(ctx);
        let route_name = ctx.route_name();
        let provider = ctx.provider.as_ref().map_or("", |p| p.name.as_str());
        let took = ctx.started.elapsed().as_secs_f64();
        // A provider's answer: the route keeps its metric handles.
        let served = match (&ctx.route, &ctx.provider) {
            (Some(r), Some(p)) if ctx.status == 200 => r.served_by(p),
            _ => None,
        };
        if let Some((ok, duration)) = served {
            ok.inc();
            duration.observe(took);
        } else {
            let mut status_buf = itoa_status(ctx.status);
            metrics::REQUESTS
                .with_label_values(&[route_name, provider, status_str(&mut status_buf)])
                .inc();
            metrics::REQUEST_DURATION
                .with_label_values(&[route_name, provider])
                .observe(took);
        }
        if let (Some(t), Some(p)) = (ctx.upstream_ttfb, &ctx.provider) {
            p.observe_ttfb(t);
        }
        if let (Some(u), Some(model), Some(p)) = (ctx.usage, ctx.model(), &ctx.provider) {
            p.count_llm_tokens(model, u);
        }
        record_spent(ctx);
        if let Some(log) = &self.gateway.current().access_log {
            let req = session.req_header();
            log.record(ctx, req.method.as_str(), req.uri.path());
        }
        log::debug!(
            "{} route={route_name} provider={provider} status={} ms={}",
            ctx.request_id,
            ctx.status,
            ctx.started.elapsed().as_millis()
        );
        ctx.finish_trace();
    }
}

/// `weir_tokens_total` and `weir_cost_total` from what the providers did
/// for the request (`ctx.spent`, the view budgets settle on): tokens known to
/// be used, priced at the answering provider's prices for the model it served.
fn record_spent(ctx: &RequestCtx) {
    let u = ctx.spent.usage;
    let (Some(p), Some(model)) = (&ctx.provider, ctx.served_model()) else {
        return;
    };
    if u.total() == 0 {
        return;
    }
    let key = ctx.identity.as_ref().map_or("", |i| &i.name);
    for (kind, n) in [
        ("prompt", u.prompt_tokens),
        ("completion", u.completion_tokens),
        ("cached", u.cached_tokens),
    ] {
        if n > 0 {
            metrics::TOKENS
                .with_label_values(&[key, model, &p.name, kind])
                .inc_by(n);
        }
    }
    if let Some(c) = p.cost(model, u) {
        metrics::COST
            .with_label_values(&[key, model, &p.name])
            .inc_by(c.units());
    }
}

fn itoa_status(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

fn status_str(b: &mut [u8; 3]) -> &str {
    std::str::from_utf8(b).unwrap_or("000")
}
