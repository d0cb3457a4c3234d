//! The host side of the Proxy-Wasm ABI (0.2.1, and 0.2.0's extra imports):
//! every `env.proxy_*` function the SDKs import, and the few WASI preview1
//! functions a `wasm32-wasip1` module needs. Host functions answer with a
//! status and never trap on a filter's mistake; the proxy-wasm Rust SDK
//! panics on statuses it does not expect, so each function returns only the
//! ones the SDK handles for it.
//!
//! Data a callback works on (headers, bodies, the http_call answer) is moved
//! into the store's [`Host`] before the call and taken back after it, so
//! host functions never reach outside the store.

use super::http_call::{self, CallRequest, CallResponse, Target};
use super::maps::{self, HeaderMap};
use super::properties::{self, Props, View};
use super::shared::{self, QueueOwner};
use super::vm::{Budget, PluginInfo};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Engine, Linker, Memory, ResourceLimiter, TypedFunc};

/// A Proxy-Wasm status code.
pub(crate) type Status = i32;

/// Proxy-Wasm status codes (spec 0.2.1).
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const PARSE_FAILURE: i32 = 4;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}

/// Filter actions.
pub(crate) const ACTION_CONTINUE: i32 = 0;

/// Most calls one callback may dispatch.
const MAX_CALLS_PER_CALLBACK: usize = 64;
/// Longest line kept from a module's stdout/stderr before it is logged.
const MAX_STDIO_LINE: usize = 4096;

/// A request body or a response body (or the part of it buffered so far).
#[derive(Debug, Clone, Default)]
pub(crate) struct Body {
    pub data: Bytes,
    pub changed: bool,
}

/// A response a filter asked for with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub(crate) struct LocalReply {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Bytes,
}

/// An HTTP context's data: lives in the request's plugin state between
/// callbacks, and in the store during one.
#[derive(Default)]
pub(crate) struct Stream {
    pub id: u32,
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    pub request_body: Option<Body>,
    pub response_body: Option<Body>,
    pub props: Props,
    /// Properties the filter set for this request.
    pub set_props: HashMap<Vec<u8>, Vec<u8>>,
    pub local: Option<LocalReply>,
    /// The response header has reached this filter: response maps exist.
    pub response_started: bool,
    /// A local response was taken from this context: later ones are ignored.
    pub replied: bool,
    /// `proxy_continue_stream` was called for the request or response.
    pub resumed: bool,
    /// `proxy_close_stream` was called: the filter wants the request reset.
    pub closed: bool,
}

/// Memory limit of one VM; remembers a refused growth, so the trap that
/// usually follows is reported as the limit it is.
pub(crate) struct Limiter {
    pub max_memory: usize,
    pub denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A VM's store data.
pub(crate) struct Host {
    pub plugin: Arc<PluginInfo>,
    /// Index of this VM in its plugin.
    pub vm: usize,
    pub limiter: Limiter,
    pub memory: Option<Memory>,
    /// The guest's `proxy_on_memory_allocate` (or `malloc`).
    pub malloc: Option<TypedFunc<i32, i32>>,
    pub root_id: u32,
    /// The context the current callback runs for.
    pub effective: u32,
    /// HTTP contexts created and not yet deleted.
    pub live: std::collections::HashSet<u32>,
    /// HTTP contexts another context resumed (`set_effective_context`,
    /// then `continue_stream`), taken after each callback.
    pub resumes: Vec<u32>,
    /// The HTTP context of the current callback, if any.
    pub stream: Option<Box<Stream>>,
    /// The answer being delivered by `proxy_on_http_call_response`.
    pub call_response: Option<CallResponse>,
    /// Calls dispatched during the current callback.
    pub dispatched: Vec<CallRequest>,
    pub next_token: u32,
    /// A tick period the root context set (taken after each callback).
    pub tick_period: Option<u32>,
    /// Properties set outside any HTTP context.
    pub root_props: HashMap<Vec<u8>, Vec<u8>>,
    /// Partial lines written to stdout (0) and stderr (1).
    pub stdio: [Vec<u8>; 2],
    /// Set by WASI `proc_exit`.
    pub exited: Option<i32>,
    /// `proxy_on_vm_start` is running (ABI 0.1.0's `proxy_get_configuration`).
    pub starting_vm: bool,
    /// The running callback's time budget.
    pub budget: Budget,
}

impl Host {
    pub fn new(plugin: Arc<PluginInfo>, vm: usize, max_memory: usize) -> Host {
        Host {
            plugin,
            vm,
            limiter: Limiter {
                max_memory,
                denied: false,
            },
            memory: None,
            malloc: None,
            root_id: 0,
            effective: 0,
            live: std::collections::HashSet::new(),
            resumes: Vec::new(),
            stream: None,
            call_response: None,
            dispatched: Vec::new(),
            next_token: 1,
            tick_period: None,
            root_props: HashMap::new(),
            stdio: [Vec::new(), Vec::new()],
            exited: None,
            starting_vm: false,
            budget: Budget::default(),
        }
    }

    fn map_mut(&mut self, t: i32) -> Option<&mut HeaderMap> {
        let s = self.stream.as_deref_mut();
        match t {
            0 => s.map(|s| &mut s.request_headers),
            1 => s.map(|s| &mut s.request_trailers),
            // Response maps exist once the response header reached the filter.
            2 => s.filter(|s| s.response_started).map(|s| &mut s.response_headers),
            3 => s.filter(|s| s.response_started).map(|s| &mut s.response_trailers),
            6 => self.call_response.as_mut().map(|c| &mut c.headers),
            7 => self.call_response.as_mut().map(|c| &mut c.trailers),
            _ => None,
        }
    }

    fn buffer(&self, t: i32) -> Option<Bytes> {
        let s = self.stream.as_deref();
        match t {
            0 => s.and_then(|s| s.request_body.as_ref()).map(|b| b.data.clone()),
            1 => s.and_then(|s| s.response_body.as_ref()).map(|b| b.data.clone()),
            4 => self.call_response.as_ref().map(|c| c.body.clone()),
            6 => Some(self.plugin.vm_config.clone()),
            7 => Some(self.plugin.plugin_config.clone()),
            _ => None,
        }
    }

    fn log(&self, level: log::Level, msg: &str) {
        log::log!(target: "weir::wasm", level, "[{}] {}", self.plugin.name, msg);
    }

    /// Flush complete lines written to stdout/stderr into weir's log.
    fn stdio_write(&mut self, fd: usize, data: &[u8]) {
        self.stdio[fd].extend_from_slice(data);
        while let Some(nl) = self.stdio[fd].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.stdio[fd].drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let level = if fd == 1 { log::Level::Warn } else { log::Level::Info };
            self.log(level, &text);
        }
        if self.stdio[fd].len() > MAX_STDIO_LINE {
            let text = String::from_utf8_lossy(&self.stdio[fd]).into_owned();
            self.stdio[fd].clear();
            self.log(log::Level::Info, &text);
        }
    }
}

type C<'a> = Caller<'a, Host>;

fn range(ptr: i32, len: i32) -> (usize, usize) {
    (ptr as u32 as usize, len as u32 as usize)
}

/// Copy guest memory out.
fn read(c: &C, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let (p, l) = range(ptr, len);
    let data = mem.data(c);
    p.checked_add(l)
        .and_then(|end| data.get(p..end))
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.write(c, ptr as u32 as usize, bytes)
        .map_err(|_| status::INVALID_MEMORY_ACCESS)
}

fn write_u32(c: &mut C, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: i32, v: u64) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hand bytes to the guest: allocate with its allocator, copy, and store
/// pointer and size in its out-parameters. A trap in the allocator is the
/// guest's fault and propagates.
fn give(c: &mut C, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> wasmtime::Result<Status> {
    if data.is_empty() {
        return Ok(write_u32(c, ptr_ptr, 0)
            .and_then(|_| write_u32(c, size_ptr, 0))
            .map_or_else(|s| s, |_| status::OK));
    }
    let Some(malloc) = c.data().malloc.clone() else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let p = malloc.call(&mut *c, data.len() as i32)?;
    if p == 0 {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    let r = write(c, p, data)
        .and_then(|_| write_u32(c, ptr_ptr, p as u32))
        .and_then(|_| write_u32(c, size_ptr, data.len() as u32));
    Ok(r.map_or_else(|s| s, |_| status::OK))
}

fn flat(r: Result<Status, Status>) -> Status {
    r.unwrap_or_else(|s| s)
}

/// The stored key of a property path: segments joined with NUL.
fn property_key(path: &[u8]) -> Vec<u8> {
    properties::parse_path(path).join(&0u8)
}

fn get_property(c: &mut C, path: Vec<u8>, pp: i32, sp: i32) -> wasmtime::Result<Status> {
    let key = property_key(&path);
    let h = c.data();
    let set = match h.stream.as_deref() {
        Some(s) => s.set_props.get(&key),
        None => h.root_props.get(&key),
    };
    let value = match set {
        Some(v) => Some(v.clone()),
        None => {
            let s = h.stream.as_deref();
            let view = View {
                plugin: &h.plugin.name,
                root_id: &h.plugin.root_id,
                vm_id: &h.plugin.vm_id,
                props: s.map(|s| &s.props),
                request_headers: s.map(|s| &s.request_headers),
                response_headers: s.map(|s| &s.response_headers).filter(|m| m.len() > 0),
            };
            properties::lookup(&view, &properties::parse_path(&path))
        }
    };
    match value {
        Some(v) => give(c, &v, pp, sp),
        None => Ok(status::NOT_FOUND),
    }
}

/// Resolve `proxy_http_call`'s upstream: an allowed address, or a provider
/// of the request's config generation (or the latest one seen, for root
/// contexts).
fn resolve_target(h: &Host, upstream: &str) -> Option<Target> {
    if let Some((_, addr)) = h
        .plugin
        .http_call_allow
        .iter()
        .find(|(name, addr)| name == upstream || addr.to_string() == upstream)
    {
        return Some(Target::Addr(*addr));
    }
    let providers = h
        .stream
        .as_deref()
        .and_then(|s| s.props.providers.clone())
        .or_else(|| h.plugin.latest_providers());
    match providers {
        Some(ps) => ps.get(upstream).cloned().map(Target::Provider),
        // A root context before any config generation named the providers:
        // the name is resolved when one does (Envoy knows its clusters then).
        None if h.stream.is_none() => Some(Target::Later),
        None => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    c: &mut C,
    upstream: (i32, i32),
    headers: (i32, i32),
    body: (i32, i32),
    trailers: (i32, i32),
    timeout_ms: i32,
    token_ptr: i32,
) -> Result<Status, Status> {
    let upstream = read(c, upstream.0, upstream.1)?;
    let headers = maps::deserialize(&read(c, headers.0, headers.1)?).ok_or(status::BAD_ARGUMENT)?;
    let body = read(c, body.0, body.1)?;
    // Trailers are read (a bad pointer is the filter's error) but not sent: HTTP/1.1.
    read(c, trailers.0, trailers.1)?;
    let upstream = String::from_utf8(upstream).map_err(|_| status::BAD_ARGUMENT)?;
    let has = |n: &[u8]| headers.iter().any(|(k, _)| k == n);
    if !has(b":method") || !has(b":path") {
        c.data()
            .log(log::Level::Warn, "http_call needs :method and :path headers");
        return Err(status::BAD_ARGUMENT);
    }
    let h = c.data();
    let Some(target) = resolve_target(h, &upstream) else {
        h.log(
            log::Level::Warn,
            &format!("http_call to '{upstream}': neither a provider nor in http_call_allow"),
        );
        return Err(status::BAD_ARGUMENT);
    };
    if h.dispatched.len() >= MAX_CALLS_PER_CALLBACK {
        return Err(status::INTERNAL_FAILURE);
    }
    let h = c.data_mut();
    let token = h.next_token;
    h.next_token = h.next_token.wrapping_add(1).max(1);
    h.dispatched.push(CallRequest {
        token,
        context: h.effective,
        upstream,
        target,
        route: h.stream.as_deref().and_then(|s| s.props.route.clone()),
        headers,
        body: Bytes::from(body),
        timeout: http_call::timeout_of(timeout_ms as u32),
    });
    write_u32(c, token_ptr, token)?;
    Ok(status::OK)
}

fn send_local_response(c: &mut C, status_code: i32, body: (i32, i32), headers: (i32, i32)) -> Result<Status, Status> {
    let body = read(c, body.0, body.1)?;
    let headers = maps::deserialize(&read(c, headers.0, headers.1)?).ok_or(status::BAD_ARGUMENT)?;
    if !(100..=999).contains(&status_code) {
        return Err(status::BAD_ARGUMENT);
    }
    let h = c.data_mut();
    let stream = h.stream.as_deref_mut().ok_or(status::BAD_ARGUMENT)?;
    if stream.local.is_some() || stream.replied {
        // The first local response wins, as in Envoy and Kong.
        h.log(
            log::Level::Warn,
            "send_local_response called twice; the first response stands",
        );
        return Ok(status::OK);
    }
    let stream = h.stream.as_deref_mut().ok_or(status::BAD_ARGUMENT)?;
    stream.local = Some(LocalReply {
        status: status_code as u16,
        headers,
        body: Bytes::from(body),
    });
    Ok(status::OK)
}

fn set_buffer(c: &mut C, t: i32, start: i32, size: i32, data: (i32, i32)) -> Result<Status, Status> {
    let data = read(c, data.0, data.1)?;
    let s = c.data_mut().stream.as_deref_mut().ok_or(status::NOT_FOUND)?;
    let body = match t {
        0 => s.request_body.as_mut(),
        1 => s.response_body.as_mut(),
        _ => None,
    }
    .ok_or(status::NOT_FOUND)?;
    let (start, size) = range(start, size);
    let len = body.data.len();
    let start = start.min(len);
    let end = start.saturating_add(size).min(len);
    body.data = if start == 0 && end == len {
        Bytes::from(data)
    } else {
        let mut v = Vec::with_capacity(len - (end - start) + data.len());
        v.extend_from_slice(&body.data[..start]);
        v.extend_from_slice(&data);
        v.extend_from_slice(&body.data[end..]);
        Bytes::from(v)
    };
    body.changed = true;
    Ok(status::OK)
}

fn stream_flag(c: &mut C, t: i32, close: bool) -> Status {
    if !(0..=3).contains(&t) {
        return status::BAD_ARGUMENT;
    }
    let h = c.data_mut();
    let effective = h.effective;
    match h.stream.as_deref_mut() {
        Some(s) if s.id == effective && t <= 1 => {
            if close {
                s.closed = true;
            } else {
                s.resumed = true;
            }
        }
        Some(s) if s.id == effective => {}
        // Another context (a root context's tick, say) resumes a paused
        // HTTP context it made effective: its request is told after the callback.
        _ if !close && effective != h.root_id && h.live.contains(&effective) => h.resumes.push(effective),
        _ => {}
    }
    status::OK
}

fn log_level() -> i32 {
    match log::max_level() {
        log::LevelFilter::Trace => 0,
        log::LevelFilter::Debug => 1,
        log::LevelFilter::Info => 2,
        log::LevelFilter::Warn => 3,
        log::LevelFilter::Error => 4,
        log::LevelFilter::Off => 5,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

static PROCESS_START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

/// Every host function a Proxy-Wasm module may import.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    let mut l: Linker<Host> = Linker::new(engine);
    define_env(&mut l)?;
    define_wasi(&mut l)?;
    // Older toolchains (AssemblyScript 0.14, for one) import the same calls
    // from WASI's first snapshot.
    l.alias_module("wasi_snapshot_preview1", "wasi_unstable")?;
    Ok(l)
}

fn define_env(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    const M: &str = "env";

    // Logging, time, timers.
    l.func_wrap(M, "proxy_log", |c: C, level: i32, ptr: i32, len: i32| -> i32 {
        let msg = match read(&c, ptr, len) {
            Ok(m) => m,
            Err(s) => return s,
        };
        let level = match level {
            0 => log::Level::Trace,
            1 => log::Level::Debug,
            2 => log::Level::Info,
            3 => log::Level::Warn,
            _ => log::Level::Error,
        };
        c.data().log(level, &String::from_utf8_lossy(&msg));
        status::OK
    })?;
    l.func_wrap(M, "proxy_get_log_level", |mut c: C, ptr: i32| -> i32 {
        flat(write_u32(&mut c, ptr, log_level() as u32).map(|_| status::OK))
    })?;
    l.func_wrap(M, "proxy_get_current_time_nanoseconds", |mut c: C, ptr: i32| -> i32 {
        flat(write_u64(&mut c, ptr, now_nanos()).map(|_| status::OK))
    })?;
    l.func_wrap(M, "proxy_set_tick_period_milliseconds", |mut c: C, ms: i32| -> i32 {
        c.data_mut().tick_period = Some(ms as u32);
        status::OK
    })?;

    // Buffers.
    l.func_wrap(
        M,
        "proxy_get_buffer_bytes",
        |mut c: C, t: i32, start: i32, max: i32, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            let Some(buf) = c.data().buffer(t) else {
                return Ok(status::NOT_FOUND);
            };
            let (start, max) = range(start, max);
            let start = start.min(buf.len());
            let end = start.saturating_add(max).min(buf.len());
            give(&mut c, &buf[start..end], pp, sp)
        },
    )?;
    l.func_wrap(
        M,
        "proxy_get_buffer_status",
        |mut c: C, t: i32, len_ptr: i32, flags_ptr: i32| -> i32 {
            let Some(buf) = c.data().buffer(t) else {
                return status::NOT_FOUND;
            };
            flat(
                write_u32(&mut c, len_ptr, buf.len() as u32)
                    .and_then(|_| write_u32(&mut c, flags_ptr, 0))
                    .map(|_| status::OK),
            )
        },
    )?;
    l.func_wrap(
        M,
        "proxy_set_buffer_bytes",
        |mut c: C, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            flat(set_buffer(&mut c, t, start, size, (ptr, len)))
        },
    )?;

    // ABI 0.1.0: the configuration of the running start-up callback.
    l.func_wrap(
        M,
        "proxy_get_configuration",
        |mut c: C, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            let p = c.data().plugin.clone();
            let conf = if c.data().starting_vm {
                &p.vm_config
            } else {
                &p.plugin_config
            };
            give(&mut c, conf, pp, sp)
        },
    )?;

    // Header maps.
    l.func_wrap(
        M,
        "proxy_get_header_map_pairs",
        |mut c: C, t: i32, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            if !(0..=7).contains(&t) {
                return Ok(status::BAD_ARGUMENT);
            }
            // A map that does not exist at this point reads as empty.
            let data = c
                .data_mut()
                .map_mut(t)
                .map_or_else(|| HeaderMap::default().serialize(), |m| m.serialize());
            give(&mut c, &data, pp, sp)
        },
    )?;
    l.func_wrap(
        M,
        "proxy_get_header_map_size",
        |mut c: C, t: i32, size_ptr: i32| -> i32 {
            let size = c.data_mut().map_mut(t).map_or(4, |m| m.serialize().len());
            flat(write_u32(&mut c, size_ptr, size as u32).map(|_| status::OK))
        },
    )?;
    l.func_wrap(
        M,
        "proxy_set_header_map_pairs",
        |mut c: C, t: i32, ptr: i32, len: i32| -> i32 {
            let data = match read(&c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s,
            };
            let Some(pairs) = maps::deserialize(&data) else {
                return status::BAD_ARGUMENT;
            };
            match c.data_mut().map_mut(t) {
                Some(m) => {
                    m.set_all(pairs);
                    status::OK
                }
                None => status::BAD_ARGUMENT,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_get_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            let key = match read(&c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s),
            };
            match c.data_mut().map_mut(t).and_then(|m| m.get(&key)) {
                Some(v) => give(&mut c, &v, pp, sp),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_add_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            let (k, v) = match (read(&c, kp, kl), read(&c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                _ => return status::INVALID_MEMORY_ACCESS,
            };
            match c.data_mut().map_mut(t) {
                Some(m) => {
                    m.add(&k, &v);
                    status::OK
                }
                None => status::BAD_ARGUMENT,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_replace_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            let (k, v) = match (read(&c, kp, kl), read(&c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                _ => return status::INVALID_MEMORY_ACCESS,
            };
            match c.data_mut().map_mut(t) {
                Some(m) => {
                    m.replace(&k, &v);
                    status::OK
                }
                None => status::BAD_ARGUMENT,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_remove_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32| -> i32 {
            let k = match read(&c, kp, kl) {
                Ok(k) => k,
                Err(s) => return s,
            };
            match c.data_mut().map_mut(t) {
                Some(m) => {
                    m.remove(&k);
                    status::OK
                }
                None => status::BAD_ARGUMENT,
            }
        },
    )?;

    // Properties.
    l.func_wrap(
        M,
        "proxy_get_property",
        |mut c: C, p: i32, pl: i32, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            match read(&c, p, pl) {
                Ok(path) => get_property(&mut c, path, pp, sp),
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_set_property",
        |mut c: C, p: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            let (path, value) = match (read(&c, p, pl), read(&c, vp, vl)) {
                (Ok(p), Ok(v)) => (p, v),
                _ => return status::INVALID_MEMORY_ACCESS,
            };
            let key = property_key(&path);
            let h = c.data_mut();
            match h.stream.as_deref_mut() {
                Some(s) => s.set_props.insert(key, value),
                None => h.root_props.insert(key, value),
            };
            status::OK
        },
    )?;

    // Shared data and queues.
    l.func_wrap(
        M,
        "proxy_get_shared_data",
        |mut c: C, kp: i32, kl: i32, pp: i32, sp: i32, cas_ptr: i32| -> wasmtime::Result<i32> {
            let key = match read(&c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s),
            };
            let Some((value, cas)) = c.data().plugin.shared.get(&key) else {
                return Ok(status::NOT_FOUND);
            };
            if let Err(s) = write_u32(&mut c, cas_ptr, cas) {
                return Ok(s);
            }
            give(&mut c, &value, pp, sp)
        },
    )?;
    l.func_wrap(
        M,
        "proxy_set_shared_data",
        |c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            match (read(&c, kp, kl), read(&c, vp, vl)) {
                (Ok(k), Ok(v)) => c.data().plugin.shared.set(&k, &v, cas as u32),
                _ => status::INVALID_MEMORY_ACCESS,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_register_shared_queue",
        |mut c: C, np: i32, nl: i32, id_ptr: i32| -> i32 {
            let name = match read(&c, np, nl) {
                Ok(n) => n,
                Err(s) => return s,
            };
            let h = c.data();
            let owner = QueueOwner {
                events: h.plugin.events.clone(),
                vm: h.vm,
            };
            match shared::register_queue(&h.plugin.vm_id, &name, owner) {
                Some(id) => flat(write_u32(&mut c, id_ptr, id).map(|_| status::OK)),
                None => status::INTERNAL_FAILURE,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_resolve_shared_queue",
        |mut c: C, vp: i32, vl: i32, np: i32, nl: i32, id_ptr: i32| -> i32 {
            // Queue names are per vm_id, as in Envoy.
            let (vm_id, name) = match (read(&c, vp, vl), read(&c, np, nl)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            match shared::resolve_queue(&String::from_utf8_lossy(&vm_id), &name) {
                Some(id) => flat(write_u32(&mut c, id_ptr, id).map(|_| status::OK)),
                None => status::NOT_FOUND,
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, pp: i32, sp: i32| -> wasmtime::Result<i32> {
            match shared::dequeue(id as u32) {
                Ok(Some(v)) => give(&mut c, &v, pp, sp),
                Ok(None) => Ok(status::EMPTY),
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        M,
        "proxy_enqueue_shared_queue",
        |c: C, id: i32, vp: i32, vl: i32| -> i32 {
            match read(&c, vp, vl) {
                Ok(v) => shared::enqueue(id as u32, &v),
                Err(s) => s,
            }
        },
    )?;

    // Stream control and local responses.
    l.func_wrap(M, "proxy_continue_stream", |mut c: C, t: i32| -> i32 {
        stream_flag(&mut c, t, false)
    })?;
    l.func_wrap(M, "proxy_close_stream", |mut c: C, t: i32| -> i32 {
        stream_flag(&mut c, t, true)
    })?;
    // ABI 0.2.0 spelling.
    l.func_wrap(M, "proxy_continue_request", |mut c: C| -> i32 {
        stream_flag(&mut c, 0, false)
    })?;
    l.func_wrap(M, "proxy_continue_response", |mut c: C| -> i32 {
        stream_flag(&mut c, 1, false)
    })?;
    l.func_wrap(M, "proxy_clear_route_cache", |_c: C| -> i32 { status::OK })?;
    l.func_wrap(
        M,
        "proxy_send_local_response",
        |mut c: C, code: i32, _dp: i32, _dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
            flat(send_local_response(&mut c, code, (bp, bl), (hp, hl)))
        },
    )?;

    // HTTP calls. gRPC is not offered: every gRPC upstream is unknown, and
    // Envoy answers a call to an unknown cluster with PARSE_FAILURE (the
    // Rust SDK turns it into an error the filter sees).
    l.func_wrap(
        M,
        "proxy_http_call",
        |mut c: C,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> i32 {
            flat(http_call(
                &mut c,
                (up, ul),
                (hp, hl),
                (bp, bl),
                (tp, tl),
                timeout,
                token_ptr,
            ))
        },
    )?;
    l.func_wrap(
        M,
        "proxy_grpc_call",
        |_c: C,
         _a: i32,
         _b: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32,
         _k: i32,
         _timeout: i32,
         _token: i32|
         -> i32 { status::PARSE_FAILURE },
    )?;
    l.func_wrap(
        M,
        "proxy_grpc_stream",
        |_c: C, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32, _h: i32, _i: i32, _token: i32| -> i32 {
            status::PARSE_FAILURE
        },
    )?;
    l.func_wrap(
        M,
        "proxy_grpc_send",
        |_c: C, _t: i32, _p: i32, _l: i32, _end: i32| -> i32 { status::NOT_FOUND },
    )?;
    l.func_wrap(M, "proxy_grpc_cancel", |_c: C, _t: i32| -> i32 { status::NOT_FOUND })?;
    l.func_wrap(M, "proxy_grpc_close", |_c: C, _t: i32| -> i32 { status::NOT_FOUND })?;
    l.func_wrap(
        M,
        "proxy_get_status",
        |mut c: C, code_ptr: i32, pp: i32, sp: i32| -> i32 {
            flat(
                write_u32(&mut c, code_ptr, 0)
                    .and_then(|_| write_u32(&mut c, pp, 0))
                    .and_then(|_| write_u32(&mut c, sp, 0))
                    .map(|_| status::OK),
            )
        },
    )?;

    // Contexts and foreign functions.
    l.func_wrap(M, "proxy_set_effective_context", |mut c: C, id: i32| -> i32 {
        let h = c.data_mut();
        let id = id as u32;
        if id == h.root_id || h.live.contains(&id) {
            h.effective = id;
            status::OK
        } else {
            status::BAD_ARGUMENT
        }
    })?;
    l.func_wrap(M, "proxy_done", |_c: C| -> i32 { status::OK })?;
    l.func_wrap(
        M,
        "proxy_call_foreign_function",
        |_c: C, _np: i32, _nl: i32, _ap: i32, _al: i32, _pp: i32, _sp: i32| -> i32 { status::NOT_FOUND },
    )?;

    // Metrics.
    l.func_wrap(
        M,
        "proxy_define_metric",
        |mut c: C, kind: i32, np: i32, nl: i32, id_ptr: i32| -> i32 {
            let name = match read(&c, np, nl) {
                Ok(n) => n,
                Err(s) => return s,
            };
            let plugin = c.data().plugin.clone();
            match plugin.state.define_metric(&plugin.name, kind as u32, &name) {
                Ok(id) => flat(write_u32(&mut c, id_ptr, id).map(|_| status::OK)),
                Err(s) => s,
            }
        },
    )?;
    l.func_wrap(M, "proxy_increment_metric", |c: C, id: i32, by: i64| -> i32 {
        c.data().plugin.state.increment_metric(id as u32, by)
    })?;
    l.func_wrap(M, "proxy_record_metric", |c: C, id: i32, value: i64| -> i32 {
        c.data().plugin.state.record_metric(id as u32, value as u64)
    })?;
    l.func_wrap(M, "proxy_get_metric", |mut c: C, id: i32, ptr: i32| -> i32 {
        match c.data().plugin.state.get_metric(id as u32) {
            Ok(v) => flat(write_u64(&mut c, ptr, v).map(|_| status::OK)),
            Err(s) => s,
        }
    })?;
    Ok(())
}

/// WASI errno values.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const SPIPE: i32 = 70;
}

/// The WASI preview1 functions filters import: no files, no environment,
/// no arguments; stdout and stderr go to weir's log.
fn define_wasi(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    fn zero_pair(c: &mut C, a: i32, b: i32) -> i32 {
        match write_u32(c, a, 0).and_then(|_| write_u32(c, b, 0)) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::FAULT,
        }
    }
    l.func_wrap(W, "environ_sizes_get", |mut c: C, a: i32, b: i32| -> i32 {
        zero_pair(&mut c, a, b)
    })?;
    l.func_wrap(W, "environ_get", |_c: C, _a: i32, _b: i32| -> i32 { errno::SUCCESS })?;
    l.func_wrap(W, "args_sizes_get", |mut c: C, a: i32, b: i32| -> i32 {
        zero_pair(&mut c, a, b)
    })?;
    l.func_wrap(W, "args_get", |_c: C, _a: i32, _b: i32| -> i32 { errno::SUCCESS })?;
    l.func_wrap(
        W,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, written_ptr: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            let Ok(table) = read(&c, iovs, n.saturating_mul(8)) else {
                return errno::FAULT;
            };
            let mut total = 0u32;
            for iov in table.chunks_exact(8) {
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(data) = read(&c, ptr, len) else {
                    return errno::FAULT;
                };
                total = total.wrapping_add(data.len() as u32);
                c.data_mut().stdio_write(fd as usize - 1, &data);
            }
            match write_u32(&mut c, written_ptr, total) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    l.func_wrap(W, "fd_read", |_c: C, _fd: i32, _i: i32, _n: i32, _r: i32| -> i32 {
        errno::BADF
    })?;
    l.func_wrap(W, "fd_close", |_c: C, _fd: i32| -> i32 { errno::BADF })?;
    l.func_wrap(
        W,
        "fd_seek",
        |_c: C, fd: i32, _off: i64, _whence: i32, _r: i32| -> i32 {
            if (0..=2).contains(&fd) {
                errno::SPIPE
            } else {
                errno::BADF
            }
        },
    )?;
    l.func_wrap(W, "fd_fdstat_get", |mut c: C, fd: i32, ptr: i32| -> i32 {
        if !(0..=2).contains(&fd) {
            return errno::BADF;
        }
        // filetype character_device, no flags, rights: fd_write (64) or fd_read (2).
        let mut stat = [0u8; 24];
        stat[0] = 2;
        let rights: u64 = if fd == 0 { 2 } else { 64 };
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        match write(&mut c, ptr, &stat) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::FAULT,
        }
    })?;
    l.func_wrap(W, "fd_prestat_get", |_c: C, _fd: i32, _p: i32| -> i32 { errno::BADF })?;
    l.func_wrap(W, "fd_prestat_dir_name", |_c: C, _fd: i32, _p: i32, _l: i32| -> i32 {
        errno::BADF
    })?;
    l.func_wrap(W, "proc_exit", |mut c: C, code: i32| -> wasmtime::Result<()> {
        c.data_mut().exited = Some(code);
        Err(wasmtime::Error::msg(format!("the module called proc_exit({code})")))
    })?;
    l.func_wrap(W, "sched_yield", |_c: C| -> i32 { errno::SUCCESS })?;
    l.func_wrap(
        W,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, ptr: i32| -> i32 {
            let t = match id {
                0 => now_nanos(),
                1..=3 => PROCESS_START.elapsed().as_nanos() as u64,
                _ => return errno::INVAL,
            };
            match write_u64(&mut c, ptr, t) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    l.func_wrap(W, "clock_res_get", |mut c: C, id: i32, ptr: i32| -> i32 {
        if !(0..=3).contains(&id) {
            return errno::INVAL;
        }
        match write_u64(&mut c, ptr, 1_000) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::FAULT,
        }
    })?;
    l.func_wrap(W, "random_get", |mut c: C, ptr: i32, len: i32| -> i32 {
        let (_, n) = range(ptr, len);
        if n > 1 << 20 {
            return errno::INVAL;
        }
        let mut buf = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
        match write(&mut c, ptr, &buf) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::FAULT,
        }
    })?;
    l.func_wrap(W, "poll_oneoff", |_c: C, _i: i32, _o: i32, _n: i32, _r: i32| -> i32 {
        errno::NOSYS
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_keys_are_normalised() {
        assert_eq!(property_key(b"a.b"), b"a\0b");
        assert_eq!(property_key(b"a\0b"), b"a\0b");
        assert_eq!(property_key(b"a\0b\0"), b"a\0b");
    }

    #[test]
    fn every_sdk_import_is_defined() {
        // The imports proxy-wasm 0.2.5 declares (hostcalls.rs), plus 0.2.0's.
        let names = [
            "proxy_log",
            "proxy_get_log_level",
            "proxy_get_current_time_nanoseconds",
            "proxy_set_tick_period_milliseconds",
            "proxy_get_buffer_bytes",
            "proxy_set_buffer_bytes",
            "proxy_get_buffer_status",
            "proxy_get_header_map_pairs",
            "proxy_get_header_map_size",
            "proxy_set_header_map_pairs",
            "proxy_get_header_map_value",
            "proxy_remove_header_map_value",
            "proxy_replace_header_map_value",
            "proxy_add_header_map_value",
            "proxy_get_property",
            "proxy_set_property",
            "proxy_get_shared_data",
            "proxy_set_shared_data",
            "proxy_register_shared_queue",
            "proxy_resolve_shared_queue",
            "proxy_dequeue_shared_queue",
            "proxy_enqueue_shared_queue",
            "proxy_continue_stream",
            "proxy_close_stream",
            "proxy_continue_request",
            "proxy_continue_response",
            "proxy_clear_route_cache",
            "proxy_send_local_response",
            "proxy_http_call",
            "proxy_grpc_call",
            "proxy_grpc_stream",
            "proxy_grpc_send",
            "proxy_grpc_cancel",
            "proxy_grpc_close",
            "proxy_get_status",
            "proxy_set_effective_context",
            "proxy_call_foreign_function",
            "proxy_done",
            "proxy_get_configuration",
            "proxy_define_metric",
            "proxy_get_metric",
            "proxy_record_metric",
            "proxy_increment_metric",
        ];
        let engine = Engine::default();
        let l = linker(&engine).unwrap();
        let mut store = wasmtime::Store::new(&engine, Host::new(Arc::new(PluginInfo::for_tests("t")), 0, 1 << 20));
        for n in names {
            assert!(l.get(&mut store, "env", n).is_ok(), "{n} is not defined");
        }
    }
}
