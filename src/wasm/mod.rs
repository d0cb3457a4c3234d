//! `wasm`: operators' own filters, compiled to WebAssembly against the
//! Proxy-Wasm ABI (0.2.1 / 0.2.0), so filters built with the proxy-wasm SDKs
//! for Envoy run in weir unchanged.
//!
//! - `vm`: the engine, compiled modules, a plugin's long-lived VMs and
//!   their limits (memory, time per callback), rebuilding failed ones.
//! - `abi`: the host functions (`env.proxy_*` and a little WASI).
//! - `maps`, `properties`: header maps and properties as filters see them.
//! - `http_call`: a filter's own HTTP calls.
//! - `shared`: data, queues and metrics shared by a plugin's VMs.
//!
//! This file maps weir's phases onto the filter's callbacks. Each request
//! gets an HTTP context on one VM (round robin); the context's data lives in
//! the request's plugin state and is moved into the VM only for the length
//! of one synchronous callback, so no VM is ever held across an `.await`.

mod abi;
mod http_call;
mod maps;
mod properties;
mod shared;
mod vm;

use crate::config::{Checker, Dur, Size};
use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::pipeline::{BuildCtx, BuildError, Flow, LocalResponse, Plugin, RequestCtx, Typed};
use abi::{Body, LocalReply, Stream, ACTION_CONTINUE};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_call::{CallRequest, CallResponse, BACKGROUND, BACKGROUND_UPSTREAM};
use pingora_http::{RequestHeader, ResponseHeader};
use properties::Props;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use vm::{Callback, Core, CoreConf, Fault, OpenError};

/// Most of a response body one request may hold while its filter pauses.
const MAX_BUFFERED_BODY: usize = 16 << 20;

/// What happens to a request when its filter fails (trap, timeout, broken rules).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse the request (500 `plugin_error`); in response phases the data
    /// passes unchanged, as nothing else can be done once it has started.
    #[default]
    FailClosed,
    /// Skip the plugin for the rest of that request.
    FailOpen,
}

/// Per-VM limits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasmLimits {
    /// Linear memory of one VM.
    #[serde(default = "d_memory")]
    pub memory: Size,
    /// CPU time one callback may take.
    #[serde(default = "d_callback_time")]
    pub callback_time: Dur,
    /// Longest a request waits on a filter that paused with no http_call
    /// pending, for its `resume` (Envoy waits for ever; weir answers 500).
    #[serde(default = "d_pause")]
    pub pause: Dur,
}

fn d_memory() -> Size {
    Size(32 << 20)
}
fn d_callback_time() -> Dur {
    Dur(Duration::from_millis(5))
}
fn d_pause() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_vms() -> usize {
    2
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory: d_memory(),
            callback_time: d_callback_time(),
            pause: d_pause(),
        }
    }
}

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasmConf {
    /// The `.wasm` file (relative to the working directory or the config).
    pub module: PathBuf,
    /// The filter's configuration (`get_plugin_configuration`), as Envoy
    /// gives it: a string as its bytes, anything else as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// The VM's configuration (`on_vm_start`), given the same way.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub vm_config: serde_json::Value,
    /// Envoy's `root_id`: the `plugin_root_id` property (C++ SDK filters
    /// pick their root context factory by it). Empty by default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    /// Envoy's `vm_id`: filters with the same one share data and queues
    /// (default empty: every filter that leaves it empty shares).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_id: String,
    #[serde(default)]
    pub on_error: OnError,
    /// Long-lived VMs; requests are spread over them round robin.
    #[serde(default = "d_vms")]
    pub vms: usize,
    #[serde(default)]
    pub limits: WasmLimits,
    /// `host:port` addresses `http_call` may reach besides provider names.
    #[serde(default)]
    pub http_call_allow: Vec<String>,
}

/// The `wasm` plugin type. Its bulkhead bounds the requests the plugin
/// works on at once (those waiting on an `http_call` included).
pub static TYPE: Typed<WasmConf> = Typed {
    name: "wasm",
    check,
    files: |c, b| vec![b.resolve(&c.module)],
    build: |c, b| Ok(Arc::new(WasmPlugin::new(c, b)?)),
};

fn resolve_allow(list: &[String]) -> Result<Vec<(String, SocketAddr)>, (usize, String)> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let addr = a
                .to_socket_addrs()
                .map_err(|e| (i, format!("'{a}' is not a host:port address: {e}")))?
                .next()
                .ok_or_else(|| (i, format!("'{a}' resolves to no address")))?;
            Ok((a.clone(), addr))
        })
        .collect()
}

/// A configuration as Envoy hands it over: a string as its own bytes (a
/// YAML string, or JSON written as a string, arrives unquoted), anything
/// else as JSON; none is empty.
fn config_bytes(v: &serde_json::Value) -> Result<Bytes, String> {
    Ok(match v {
        serde_json::Value::Null => Bytes::new(),
        serde_json::Value::String(s) => Bytes::from(s.clone().into_bytes()),
        v => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
    })
}

/// Checks of the values (the module is compiled when the plugin is built).
fn check(c: &WasmConf, at: &str, ck: &mut Checker) {
    if !(1..=64).contains(&c.vms) {
        ck.error(format!("{at}.vms"), "must be between 1 and 64");
    }
    if !((1 << 20)..=(4u64 << 30)).contains(&c.limits.memory.0) {
        ck.error(format!("{at}.limits.memory"), "must be between 1MiB and 4GiB");
    }
    if c.limits.pause.0 > Duration::from_secs(600) {
        ck.error(format!("{at}.limits.pause"), "must be at most 10m");
    }
    let t = c.limits.callback_time.0;
    if t < Duration::from_millis(1) || t > Duration::from_secs(60) {
        ck.error(format!("{at}.limits.callback_time"), "must be between 1ms and 60s");
    }
    if let Err((i, e)) = resolve_allow(&c.http_call_allow) {
        ck.error(format!("{at}.http_call_allow[{i}]"), e);
    }
}

/// A Proxy-Wasm filter as a weir plugin.
pub struct WasmPlugin {
    core: Arc<Core>,
    on_error: OnError,
    /// `limits.pause`.
    pause: Duration,
}

impl WasmPlugin {
    /// Compile (or take from the cache), instantiate `vms` VMs and configure
    /// each; a module that fails to start, or whose `on_configure` refuses
    /// its config, fails the build.
    pub fn new(c: &WasmConf, b: &BuildCtx) -> Result<WasmPlugin, BuildError> {
        Self::from_path(&b.name, c, &b.resolve(&c.module))
    }

    fn from_path(name: &str, c: &WasmConf, path: &Path) -> Result<WasmPlugin, BuildError> {
        let module = vm::load(path).map_err(|e| ("module", e))?;
        // Fault counters from 0, so the first fault is a visible increase.
        metrics::WASM_VM_RESTARTS.with_label_values(&[name]);
        for kind in ["trap", "timeout", "error"] {
            metrics::PLUGIN_ERRORS.with_label_values(&[name, kind]);
        }
        let plugin_config = config_bytes(&c.config).map_err(|e| ("config", e))?;
        let vm_config = config_bytes(&c.vm_config).map_err(|e| ("vm_config", e))?;
        let http_call_allow =
            resolve_allow(&c.http_call_allow).map_err(|(i, e)| ("http_call_allow", format!("[{i}]: {e}")))?;
        let core = Core::new(CoreConf {
            name: name.to_string(),
            module,
            plugin_config,
            vm_config,
            root_id: c.root_id.clone(),
            vm_id: c.vm_id.clone(),
            http_call_allow,
            vms: c.vms.max(1),
            max_memory: c.limits.memory.0.min(usize::MAX as u64) as usize,
            callback_time: c.limits.callback_time.0,
        })
        .map_err(|e| ("", e))?;
        Ok(WasmPlugin {
            core,
            on_error: c.on_error,
            pause: c.limits.pause.0,
        })
    }

    fn name(&self) -> &str {
        self.core.name()
    }

    /// A context on some VM. If every VM just failed, wait for the next
    /// rebuild (at most 100 ms; rebuilds are rate-limited so a filter that
    /// crashes on every request cannot make weir spend its time rebuilding).
    async fn open_context(&self) -> Result<(usize, u64, u32), Fault> {
        for _ in 0..3 {
            match self.core.open_context() {
                Ok(x) => return Ok(x),
                Err(OpenError::Fault(f)) => return Err(f),
                Err(OpenError::Wait(d)) => tokio::time::sleep(d + Duration::from_millis(1)).await,
            }
        }
        Err(Fault::error("every VM of the plugin failed and could not be rebuilt"))
    }

    /// Count the fault and apply `on_error` in a request phase.
    fn fail(&self, st: Option<&mut ReqState>, f: Fault) -> Result<Flow, WeirError> {
        self.core.report(&f);
        if let Some(st) = st {
            st.skip = true;
        }
        match self.on_error {
            OnError::FailOpen => Ok(Flow::Continue),
            OnError::FailClosed => Err(WeirError::new(
                ErrorKind::Plugin,
                format!("plugin '{}' failed ({})", self.name(), f.kind.label()),
            )),
        }
    }

    /// A fault in a response phase: counted and logged, and the filter is
    /// skipped from then on. With `fail_open` the data passes unchanged;
    /// with `fail_closed` the response is withheld (see `Plugin::response_*`),
    /// so a redactor that fails never lets the unredacted body through.
    fn fail_sync(&self, st: &mut ReqState, f: Fault) {
        self.core.report(&f);
        st.skip = true;
        if self.on_error == OnError::FailClosed {
            st.failed = true;
        }
    }

    /// After a response phase: a fail-closed fault withholds the response.
    fn withhold_if_failed(&self, st: &ReqState, ctx: &mut RequestCtx) -> bool {
        if !st.failed {
            return false;
        }
        ctx.fail_response(WeirError::new(
            ErrorKind::Plugin,
            format!("plugin '{}' failed on the response", self.name()),
        ));
        true
    }

    /// Run a request-phase callback, then wait for the filter's http_calls
    /// (outside any lock) and deliver their answers until the filter
    /// continues, answers locally or has nothing left to wait for.
    async fn drive(&self, st: &mut ReqState, cb: Callback, last: bool) -> Result<Outcome, Fault> {
        if let Some(s) = st.stream.as_deref_mut() {
            s.resumed = false;
        }
        let (mut action, calls) = self.core.call_stream(st.vm, st.generation, &mut st.stream, vec![cb])?;
        st.start_calls(&self.core, calls);
        loop {
            let s = st.stream.as_deref_mut().ok_or_else(Fault::gone)?;
            if let Some(l) = s.local.take() {
                s.replied = true;
                return Ok(Outcome::Respond(Box::new(local_response(l))));
            }
            if s.closed {
                return Ok(Outcome::Reset);
            }
            if action == ACTION_CONTINUE || s.resumed {
                return Ok(Outcome::Continue);
            }
            if st.outstanding == 0 {
                if !last {
                    // Paused request headers wait for the body, which weir reads next anyway.
                    return Ok(Outcome::Continue);
                }
                // As in Envoy, the request waits for another context (a
                // root context's tick, a queue) to resume it; weir bounds the wait.
                if self.core.wait_resume(st.vm, st.id, self.pause).await {
                    return Ok(Outcome::Continue);
                }
                return Err(Fault::error(format!(
                    "the filter paused the request with no http_call pending and did not resume it within {:?} (limits.pause)",
                    self.pause
                )));
            }
            let Some(rx) = st.rx.as_mut() else {
                return Err(Fault::error("http_call bookkeeping lost"));
            };
            let resp = match tokio::time::timeout_at(st.deadline.into(), rx.recv()).await {
                Ok(Some(r)) => r,
                _ => return Err(Fault::error("the filter's http_call answers did not arrive in time")),
            };
            st.outstanding -= 1;
            let (_, calls) =
                self.core
                    .call_stream(st.vm, st.generation, &mut st.stream, vec![Callback::CallResponse(resp)])?;
            st.start_calls(&self.core, calls);
            // Still paused unless the answer's handler resumed or answered.
            action = 1;
        }
    }

    /// Answers to http_calls that arrived while the request moved on.
    fn deliver_ready(&self, st: &mut ReqState) -> Result<(), Fault> {
        while let Some(resp) = st.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            st.outstanding = st.outstanding.saturating_sub(1);
            let (_, calls) =
                self.core
                    .call_stream(st.vm, st.generation, &mut st.stream, vec![Callback::CallResponse(resp)])?;
            st.start_calls(&self.core, calls);
        }
        Ok(())
    }

    async fn request_body_outcome(
        &self,
        st: &mut ReqState,
        ctx: &mut RequestCtx,
        outcome: Outcome,
    ) -> Result<Flow, WeirError> {
        let s = match outcome {
            Outcome::Respond(r) => return self.own_local_reply(st, ctx, r).await,
            Outcome::Reset => return Err(self.reset()),
            Outcome::Continue => match st.stream.as_deref_mut() {
                Some(s) => s,
                None => return Ok(Flow::Continue),
            },
        };
        if s.request_headers.changed {
            // The head is held until the body phase is over (as Envoy holds
            // it after a paused headers phase): the changes go upstream.
            let map = s.request_headers.clone();
            ctx.edit_request_header(Box::new(move |req| maps::apply_to_request(&map, req)));
            s.request_headers.changed = false;
        }
        let Some(body) = s.request_body.take().filter(|b| b.changed) else {
            return Ok(Flow::Continue);
        };
        // The head is read again and the candidates follow a changed model.
        ctx.set_body(body.data, self.name())?;
        Ok(Flow::Continue)
    }

    /// A local reply this filter sent from a request phase goes through its
    /// own response callbacks first (Envoy runs it through the encoder of the
    /// filter that sent it; the pipeline runs the filters before this one).
    async fn own_local_reply(
        &self,
        st: &mut ReqState,
        ctx: &mut RequestCtx,
        mut r: Box<LocalResponse>,
    ) -> Result<Flow, WeirError> {
        let _ = r.header.insert_header("content-length", r.body.len().to_string());
        let _ = r.header.insert_header("x-request-id", ctx.request_id.as_str());
        let mut props = st.props(ctx);
        props.response_code = Some(r.header.status.as_u16());
        self.response_headers_held_inner(st, &mut r.header, props).await;
        if !st.failed {
            let mut body = r.body.clone();
            self.response_body_inner(st, &mut body, true);
            if body.len() != r.body.len() {
                let _ = r.header.insert_header("content-length", body.len().to_string());
            }
            r.body = body;
        }
        if st.failed {
            return Err(WeirError::new(
                ErrorKind::Plugin,
                format!("plugin '{}' failed on its own local response", self.name()),
            ));
        }
        Ok(Flow::Respond(r))
    }

    fn reset(&self) -> WeirError {
        WeirError::new(ErrorKind::Plugin, format!("plugin '{}' reset the request", self.name()))
    }

    /// Fill the context's response map and say which callback to run;
    /// `None`: the filter is skipped for this request.
    fn response_headers_start(&self, st: &mut ReqState, resp: &ResponseHeader, props: Props) -> Option<Callback> {
        if st.skip {
            return None;
        }
        if let Err(f) = self.deliver_ready(st) {
            self.fail_sync(st, f);
            return None;
        }
        let s = st.stream.as_deref_mut()?;
        s.response_headers = maps::from_response(resp);
        s.response_started = true;
        s.props = props;
        s.props.response_code = Some(resp.status.as_u16());
        let head_request = s.request_headers.get(b":method").as_deref() == Some(b"HEAD");
        let status = resp.status.as_u16();
        let has_body = !head_request && status >= 200 && status != 204 && status != 304;
        Some(Callback::ResponseHeaders {
            headers: s.response_headers.len(),
            end: !has_body,
        })
    }

    /// After the response-header callback (and any wait it asked for): the
    /// filter's local reply replaces the response, or its header changes apply.
    fn response_headers_finish(&self, st: &mut ReqState, resp: &mut ResponseHeader, local: Option<LocalResponse>) {
        if let Some(local) = local {
            // The response has not started: the filter's answer replaces it,
            // its body replacing the provider's chunk by chunk.
            *resp = local.header;
            resp.remove_header("transfer-encoding");
            let _ = resp.insert_header("content-length", local.body.len().to_string());
            st.replace_body = Some(local.body);
        } else if let Some(s) = st.stream.as_deref_mut() {
            // Content-Length passes as the filter leaves it, as in Envoy
            // (the pipeline sets it for a body it sends whole); a filter
            // that changes the length of a body weir forwards as it comes
            // removes it here, as it would in Envoy.
            maps::apply_to_response(&s.response_headers, resp);
            s.response_headers.changed = false;
        }
        st.resp_header_size = header_size(resp);
    }

    /// The response-header callback without waiting: a Pause is not held
    /// (the synchronous path; the pipeline uses [`Self::response_headers_held_inner`]).
    fn response_headers_inner(&self, st: &mut ReqState, resp: &mut ResponseHeader, props: Props) {
        let Some(cb) = self.response_headers_start(st, resp, props) else {
            return;
        };
        match self.core.call_stream(st.vm, st.generation, &mut st.stream, vec![cb]) {
            Ok((_, calls)) => st.start_calls(&self.core, calls),
            Err(f) => return self.fail_sync(st, f),
        }
        let local = st.stream.as_deref_mut().and_then(|s| {
            let l = s.local.take()?;
            s.replied = true;
            Some(local_response(l))
        });
        self.response_headers_finish(st, resp, local);
    }

    /// The response-header callback; a Pause holds the header until the
    /// filter resumes (after its http_calls answer, or another context's
    /// resume), answers locally, or its calls / `limits.pause` time out.
    async fn response_headers_held_inner(&self, st: &mut ReqState, resp: &mut ResponseHeader, props: Props) {
        let Some(cb) = self.response_headers_start(st, resp, props) else {
            return;
        };
        let local = match self.drive(st, cb, true).await {
            Ok(Outcome::Continue) => None,
            Ok(Outcome::Respond(r)) => Some(*r),
            Ok(Outcome::Reset) => return self.fail_sync(st, Fault::error("the filter reset the response")),
            Err(f) => return self.fail_sync(st, f),
        };
        self.response_headers_finish(st, resp, local);
    }

    fn response_body_inner(&self, st: &mut ReqState, chunk: &mut Bytes, end: bool) {
        self.response_body_filtered(st, chunk, end);
        st.resp_body_size += chunk.len() as u64;
    }

    fn response_body_filtered(&self, st: &mut ReqState, chunk: &mut Bytes, end: bool) {
        if let Some(body) = &st.replace_body {
            *chunk = if end { body.clone() } else { Bytes::new() };
            return;
        }
        // Whatever a pause held back goes first, whatever happens next.
        let data = if st.buffered.is_empty() {
            chunk.clone()
        } else {
            st.buffered.extend_from_slice(chunk);
            st.buffered.split().freeze()
        };
        if st.skip {
            *chunk = data;
            return;
        }
        if let Err(f) = self.deliver_ready(st) {
            *chunk = data;
            return self.fail_sync(st, f);
        }
        if data.len() > MAX_BUFFERED_BODY {
            *chunk = data;
            return self.fail_sync(
                st,
                Fault::error(format!(
                    "the filter paused a response body past {MAX_BUFFERED_BODY} bytes"
                )),
            );
        }
        let Some(s) = st.stream.as_deref_mut() else {
            *chunk = data;
            return;
        };
        s.resumed = false;
        s.response_body = Some(Body {
            data: data.clone(),
            changed: false,
        });
        let cb = Callback::ResponseBody { size: data.len(), end };
        let action = match self.core.call_stream(st.vm, st.generation, &mut st.stream, vec![cb]) {
            Ok((action, calls)) => {
                st.start_calls(&self.core, calls);
                action
            }
            Err(f) => {
                *chunk = data;
                return self.fail_sync(st, f);
            }
        };
        let Some(s) = st.stream.as_deref_mut() else {
            *chunk = data;
            return;
        };
        let body = s.response_body.take().map_or(data, |b| b.data);
        if s.local.take().is_some() {
            log::warn!(
                "wasm plugin '{}': a local response once the response has started is ignored",
                self.name()
            );
        }
        if action != ACTION_CONTINUE && !end && !s.resumed {
            // Paused: keep what we have; the next call presents all of it.
            st.buffered = BytesMut::from(&body[..]);
            *chunk = Bytes::new();
        } else {
            *chunk = body;
        }
    }
}

/// How a request phase ended for the filter.
enum Outcome {
    Continue,
    Respond(Box<LocalResponse>),
    /// `proxy_close_stream`: the filter wants the request dropped.
    Reset,
}

fn local_response(l: LocalReply) -> LocalResponse {
    let mut header = ResponseHeader::build(l.status, Some(l.headers.len() + 1))
        .unwrap_or_else(|_| ResponseHeader::build(500, None).expect("500 is a status"));
    for (k, v) in &l.headers {
        if k.first() == Some(&b':')
            || k.eq_ignore_ascii_case(b"content-length")
            || k.eq_ignore_ascii_case(b"transfer-encoding")
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(k), http::HeaderValue::from_bytes(v)) {
            let _ = header.append_header(n, v);
        }
    }
    LocalResponse { header, body: l.body }
}

/// Bytes of a response head as sent (status line and header lines).
fn header_size(resp: &ResponseHeader) -> u64 {
    let lines: usize = resp.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (17 + lines + 2) as u64
}

/// Bytes of a request head as received (request line and header lines).
fn request_header_size(req: &RequestHeader) -> u64 {
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
    let lines: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + lines + 2) as u64
}

fn request_has_body(req: &RequestHeader) -> bool {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// A request's HTTP context.
struct ReqState {
    core: Arc<Core>,
    vm: usize,
    generation: u64,
    id: u32,
    /// The context's data (moved into the VM during a callback).
    stream: Option<Box<Stream>>,
    /// The filter failed (fail_open) or its VM is gone: skip it from now on.
    skip: bool,
    /// It failed in a response phase under `fail_closed`.
    failed: bool,
    /// on_done/on_log/on_delete have run.
    closed: bool,
    /// The request had no body (headers were end of stream).
    no_body: bool,
    /// Response body held while the filter pauses.
    buffered: BytesMut,
    /// The body of a local response given in the response-header phase.
    replace_body: Option<Bytes>,
    /// Answers to this context's http_calls.
    tx: Option<UnboundedSender<CallResponse>>,
    rx: Option<UnboundedReceiver<CallResponse>>,
    outstanding: usize,
    /// When the outstanding calls must all have answered.
    deadline: Instant,
    /// Sizes for the `request.total_size` and `response.*size` properties.
    req_header_size: u64,
    resp_header_size: u64,
    resp_body_size: u64,
}

impl ReqState {
    fn new(core: Arc<Core>, vm: usize, generation: u64, stream: Box<Stream>, no_body: bool) -> ReqState {
        ReqState {
            core,
            vm,
            generation,
            id: stream.id,
            stream: Some(stream),
            skip: false,
            failed: false,
            closed: false,
            no_body,
            buffered: BytesMut::new(),
            replace_body: None,
            tx: None,
            rx: None,
            outstanding: 0,
            deadline: Instant::now(),
            req_header_size: 0,
            resp_header_size: 0,
            resp_body_size: 0,
        }
    }

    /// What weir knows of the request, with the sizes this state counted.
    fn props(&self, ctx: &RequestCtx) -> Props {
        let mut p = Props::of(ctx);
        p.request_header_size = self.req_header_size;
        p.response_header_size = self.resp_header_size;
        p.response_body_size = self.resp_body_size;
        p
    }

    /// Start the calls the filter dispatched; answers arrive on `rx`.
    fn start_calls(&mut self, core: &Arc<Core>, calls: Vec<CallRequest>) {
        for call in calls {
            if self.tx.is_none() {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                self.tx = Some(tx);
                self.rx = Some(rx);
            }
            let Some(tx) = self.tx.clone() else { continue };
            // Every call answers within its timeout (a failure is an empty answer).
            let by = Instant::now() + call.timeout + Duration::from_secs(1);
            self.deadline = if self.outstanding == 0 {
                by
            } else {
                self.deadline.max(by)
            };
            self.outstanding += 1;
            let core = core.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(async move {
                        let r = http_call::perform(&core.upstream, core.name(), call).await;
                        let _ = tx.send(r);
                    });
                }
                Err(_) => {
                    BACKGROUND.spawn(async move {
                        let r = http_call::perform(&BACKGROUND_UPSTREAM, core.name(), call).await;
                        let _ = tx.send(r);
                    });
                }
            }
        }
    }

    /// on_done, on_log and on_delete, once. Calls made in them are sent,
    /// and their answers dropped: the context is gone.
    fn close(&mut self, props: Option<Props>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.core.forget(self.vm, self.id);
        let mut stream = self.stream.take().unwrap_or_else(|| {
            Box::new(Stream {
                id: self.id,
                ..Stream::default()
            })
        });
        if let Some(p) = props {
            stream.props = p;
        }
        let mut stream = Some(stream);
        let cbs = vec![Callback::Done, Callback::Log, Callback::Delete];
        match self.core.call_stream(self.vm, self.generation, &mut stream, cbs) {
            Ok((_, calls)) if !calls.is_empty() => self.core.spawn_background_calls(self.vm, self.generation, calls),
            Ok(_) => {}
            Err(f) if !f.gone => self.core.report(&f),
            Err(_) => {}
        }
    }
}

impl Drop for ReqState {
    fn drop(&mut self) {
        // The request ended without the log phase (e.g. its task was
        // cancelled): still free the context in the VM.
        self.close(None);
    }
}

#[async_trait]
impl Plugin for WasmPlugin {
    async fn request_headers(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        if let Some(providers) = &ctx.providers {
            self.core.info.note_providers(ctx.generation, providers);
        }
        let (vm, generation, id) = match self.open_context().await {
            Ok(x) => x,
            Err(f) => return self.fail(None, f),
        };
        let mut request_headers = maps::from_request(req);
        // Envoy adds these before filters run; filters read them.
        if request_headers.get(b"x-request-id").is_none() {
            request_headers
                .pairs
                .push((b"x-request-id".to_vec(), ctx.request_id.as_bytes().to_vec()));
        }
        if request_headers.get(b"x-forwarded-proto").is_none() {
            let proto: &[u8] = if ctx.tls { b"https" } else { b"http" };
            request_headers
                .pairs
                .push((b"x-forwarded-proto".to_vec(), proto.to_vec()));
        }
        let no_body = !request_has_body(req);
        let stream = Box::new(Stream {
            id,
            request_headers,
            ..Stream::default()
        });
        let mut st = Box::new(ReqState::new(self.core.clone(), vm, generation, stream, no_body));
        st.req_header_size = request_header_size(req);
        let props = st.props(ctx);
        if let Some(s) = st.stream.as_deref_mut() {
            s.props = props;
        }
        let cb = Callback::RequestHeaders {
            headers: st.stream.as_ref().map_or(0, |s| s.request_headers.len()),
            end: no_body,
        };
        let result = match self.drive(&mut st, cb, no_body).await {
            Ok(Outcome::Continue) => {
                if let Some(s) = st.stream.as_deref_mut() {
                    maps::apply_to_request(&s.request_headers, req);
                    s.request_headers.changed = false;
                }
                Ok(Flow::Continue)
            }
            Ok(Outcome::Respond(r)) => self.own_local_reply(&mut st, ctx, r).await,
            Ok(Outcome::Reset) => Err(self.reset()),
            Err(f) => self.fail(Some(&mut st), f),
        };
        ctx.put_state(st);
        result
    }

    async fn request_body(&self, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        let Some(mut st) = ctx.take_state::<ReqState>() else {
            return Ok(Flow::Continue);
        };
        let result = if st.skip || (st.no_body && ctx.body.is_empty()) {
            Ok(Flow::Continue)
        } else if let Err(f) = self.deliver_ready(&mut st) {
            self.fail(Some(&mut st), f)
        } else {
            let props = st.props(ctx);
            let size = ctx.body.len();
            if let Some(s) = st.stream.as_deref_mut() {
                s.props = props;
                s.request_body = Some(Body {
                    data: ctx.body.clone(),
                    changed: false,
                });
            }
            let cb = Callback::RequestBody { size, end: true };
            let r = match self.drive(&mut st, cb, true).await {
                Ok(outcome) => self.request_body_outcome(&mut st, ctx, outcome).await,
                Err(f) => self.fail(Some(&mut st), f),
            };
            if let Some(s) = st.stream.as_deref_mut() {
                // Bodies are a callback's data, not kept for later phases.
                s.request_body = None;
            }
            r
        };
        ctx.put_state(st);
        result
    }

    fn response_headers(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let Some(mut st) = ctx.take_state::<ReqState>() else {
            return;
        };
        let props = st.props(ctx);
        self.response_headers_inner(&mut st, resp, props);
        self.withhold_if_failed(&st, ctx);
        ctx.put_state(st);
    }

    async fn response_headers_held(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let Some(mut st) = ctx.take_state::<ReqState>() else {
            return;
        };
        let props = st.props(ctx);
        self.response_headers_held_inner(&mut st, resp, props).await;
        self.withhold_if_failed(&st, ctx);
        ctx.put_state(st);
    }

    fn response_body(&self, chunk: &mut Bytes, end: bool, ctx: &mut RequestCtx) {
        let Some(mut st) = ctx.take_state::<ReqState>() else {
            return;
        };
        if !st.failed {
            self.response_body_inner(&mut st, chunk, end);
        }
        if self.withhold_if_failed(&st, ctx) {
            *chunk = Bytes::new();
        }
        ctx.put_state(st);
    }

    fn log(&self, ctx: &mut RequestCtx) {
        let Some(mut st) = ctx.take_state::<ReqState>() else {
            return;
        };
        let props = st.props(ctx);
        if !st.skip {
            if let Err(f) = self.deliver_ready(&mut st) {
                if !f.gone {
                    self.core.report(&f);
                }
            }
        }
        st.close(Some(props));
        ctx.put_state(st);
    }

    fn providers_ready(&self, generation: u64, providers: &Arc<crate::provider::Providers>) {
        self.core.info.note_providers(generation, providers);
    }

    fn refresh_metrics(&self) {
        metrics::WASM_VMS
            .with_label_values(&[self.name()])
            .set(self.core.live_vms() as i64);
    }
}

#[cfg(test)]
mod tests;
