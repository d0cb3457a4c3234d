//! One VM of a plugin: a wasmtime instance and its store, the guest's
//! callbacks, the start-up sequence and running one callback under the
//! time budget.
//!
//! The pool (the parent module) decides which VM runs what and throws a
//! failed one away; this file only knows how to start a VM and call into it.

use super::budget::{self, arm};
use super::engine::ENGINE;
use super::fault::{classify, Fault};
use super::PluginInfo;
use crate::wasm::abi::{Host, ACTION_CONTINUE};
use crate::wasm::http_call::CallResponse;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{InstancePre, Store, TypedFunc, WasmParams, WasmResults};

/// The root context every VM creates at start-up; ticks, queue
/// notifications and background call answers go to it.
pub(super) const ROOT_CONTEXT: u32 = 1;

/// A callback into the guest.
pub(crate) enum Callback {
    RequestHeaders { headers: usize, end: bool },
    RequestBody { size: usize, end: bool },
    ResponseHeaders { headers: usize, end: bool },
    ResponseBody { size: usize, end: bool },
    CallResponse(CallResponse),
    Done,
    Log,
    Delete,
    Tick,
    QueueReady(u32),
}

type Cb1 = Option<TypedFunc<i32, ()>>;
type Cb2 = Option<TypedFunc<(i32, i32), ()>>;
type Act3 = Option<TypedFunc<(i32, i32, i32), i32>>;
/// ABI 0.1.0's header callbacks take no end-of-stream flag.
type Act2 = Option<TypedFunc<(i32, i32), i32>>;
type CallResponseFn = Option<TypedFunc<(i32, i32, i32, i32, i32), ()>>;

/// The guest's callbacks; a missing one keeps the SDK default.
struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Cb1,
    on_queue_ready: Cb2,
    on_request_headers: Act3,
    on_request_headers_01: Act2,
    on_request_body: Act3,
    on_response_headers: Act3,
    on_response_headers_01: Act2,
    on_response_body: Act3,
    on_http_call_response: CallResponseFn,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Cb1,
    on_delete: Cb1,
}

fn export<P: WasmParams, R: WasmResults>(
    inst: &wasmtime::Instance,
    store: &mut Store<Host>,
    name: &str,
) -> wasmtime::Result<Option<TypedFunc<P, R>>> {
    match inst.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| wasmtime::Error::msg(format!("export {name} has an unexpected signature: {e}"))),
    }
}

/// A header callback of ABI 0.2.x (`(context, headers, end_of_stream)`).
fn headers_export(
    inst: &wasmtime::Instance,
    store: &mut Store<Host>,
    name: &str,
    abi01: bool,
) -> wasmtime::Result<Act3> {
    if abi01 {
        return Ok(None);
    }
    export(inst, store, name)
}

/// A header callback of ABI 0.1.0 (`(context, headers)`).
fn headers_export01(
    inst: &wasmtime::Instance,
    store: &mut Store<Host>,
    name: &str,
    abi01: bool,
) -> wasmtime::Result<Act2> {
    if !abi01 {
        return Ok(None);
    }
    export(inst, store, name)
}

/// One live instance.
pub(super) struct Vm {
    pub(super) store: Store<Host>,
    ex: Exports,
    pub(super) generation: u64,
    next_id: u32,
    /// CPU time one callback may use.
    limit: Duration,
}

impl Vm {
    /// A fresh VM: instantiate, `_initialize`, root context, `on_vm_start`,
    /// `on_configure`. Start-up gets `startup_limit`; later callbacks `limit`.
    pub(super) fn start(
        pre: &InstancePre<Host>,
        info: &Arc<PluginInfo>,
        index: usize,
        generation: u64,
        max_memory: usize,
        startup_limit: Duration,
        limit: Duration,
    ) -> Result<Vm, Fault> {
        let host = Host::new(info.clone(), index, max_memory);
        let mut store = Store::new(&ENGINE, host);
        store.limiter(|h| &mut h.limiter);
        budget::enforce(&mut store);
        arm(&mut store, startup_limit);
        let started = (move || -> wasmtime::Result<Vm> {
            let inst = pre.instantiate(&mut store)?;
            let memory = inst.get_memory(&mut store, "memory");
            let abi01 = inst.get_func(&mut store, "proxy_abi_version_0_1_0").is_some();
            let malloc = match export::<i32, i32>(&inst, &mut store, "proxy_on_memory_allocate")? {
                Some(f) => Some(f),
                None => export::<i32, i32>(&inst, &mut store, "malloc")?,
            };
            let ex = Exports {
                on_context_create: export(&inst, &mut store, "proxy_on_context_create")?
                    .ok_or_else(|| wasmtime::Error::msg("no proxy_on_context_create"))?,
                on_vm_start: export(&inst, &mut store, "proxy_on_vm_start")?,
                on_configure: export(&inst, &mut store, "proxy_on_configure")?,
                on_tick: export(&inst, &mut store, "proxy_on_tick")?,
                on_queue_ready: export(&inst, &mut store, "proxy_on_queue_ready")?,
                on_request_headers: headers_export(&inst, &mut store, "proxy_on_request_headers", abi01)?,
                on_request_headers_01: headers_export01(&inst, &mut store, "proxy_on_request_headers", abi01)?,
                on_request_body: export(&inst, &mut store, "proxy_on_request_body")?,
                on_response_headers: headers_export(&inst, &mut store, "proxy_on_response_headers", abi01)?,
                on_response_headers_01: headers_export01(&inst, &mut store, "proxy_on_response_headers", abi01)?,
                on_response_body: export(&inst, &mut store, "proxy_on_response_body")?,
                on_http_call_response: export(&inst, &mut store, "proxy_on_http_call_response")?,
                on_done: export(&inst, &mut store, "proxy_on_done")?,
                on_log: export(&inst, &mut store, "proxy_on_log")?,
                on_delete: export(&inst, &mut store, "proxy_on_delete")?,
            };
            let h = store.data_mut();
            h.memory = memory;
            h.malloc = malloc;
            h.root_id = ROOT_CONTEXT;
            h.effective = ROOT_CONTEXT;
            // Reactors export `_initialize`; commands (e.g. TinyGo) `_start`,
            // which may end with proc_exit(0).
            if let Some(init) = export::<(), ()>(&inst, &mut store, "_initialize")? {
                init.call(&mut store, ())?;
            } else if let Some(start) = export::<(), ()>(&inst, &mut store, "_start")? {
                if let Err(e) = start.call(&mut store, ()) {
                    if store.data().exited != Some(0) {
                        return Err(e);
                    }
                    store.data_mut().exited = None;
                }
            }
            ex.on_context_create.call(&mut store, (ROOT_CONTEXT as i32, 0))?;
            if let Some(f) = &ex.on_vm_start {
                let size = info.vm_config.len() as i32;
                store.data_mut().starting_vm = true;
                let ok = f.call(&mut store, (ROOT_CONTEXT as i32, size));
                store.data_mut().starting_vm = false;
                if ok? == 0 {
                    return Err(wasmtime::Error::new(ConfigRefused("proxy_on_vm_start")));
                }
            }
            if let Some(f) = &ex.on_configure {
                let size = info.plugin_config.len() as i32;
                if f.call(&mut store, (ROOT_CONTEXT as i32, size))? == 0 {
                    return Err(wasmtime::Error::new(ConfigRefused("proxy_on_configure")));
                }
            }
            Ok(Vm {
                store,
                ex,
                generation,
                next_id: ROOT_CONTEXT + 1,
                limit,
            })
        })();
        started.map_err(|e| {
            let refused = e.downcast_ref::<ConfigRefused>().map(|r| r.0);
            let mut fault = classify(&e, None);
            fault.message = match refused {
                Some(f) => format!("wasm plugin '{}': {f} returned false (see its log)", info.name),
                None => format!("wasm plugin '{}' failed to start: {}", info.name, fault.message),
            };
            fault
        })
    }

    /// A new HTTP context under the root context.
    pub(super) fn create_context(&mut self) -> wasmtime::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(ROOT_CONTEXT + 1);
        arm(&mut self.store, self.limit);
        self.ex
            .on_context_create
            .call(&mut self.store, (id as i32, ROOT_CONTEXT as i32))?;
        self.store.data_mut().live.insert(id);
        Ok(id)
    }

    /// Run one callback for context `id` within the callback time limit; the
    /// answer is the filter's action (CONTINUE for callbacks without one).
    pub(super) fn run(&mut self, id: u32, cb: Callback) -> wasmtime::Result<i32> {
        let Vm { store, ex, limit, .. } = self;
        arm(store, *limit);
        fn act(store: &mut Store<Host>, f: &Act3, id: u32, n: usize, end: bool) -> wasmtime::Result<i32> {
            match f {
                Some(f) => f.call(store, (id as i32, n as i32, end as i32)),
                None => Ok(ACTION_CONTINUE),
            }
        }
        fn unit(store: &mut Store<Host>, f: &Cb1, arg: u32) -> wasmtime::Result<i32> {
            if let Some(f) = f {
                f.call(store, arg as i32)?;
            }
            Ok(ACTION_CONTINUE)
        }
        fn act2(store: &mut Store<Host>, f: &Act2, id: u32, n: usize) -> wasmtime::Result<i32> {
            match f {
                Some(f) => f.call(store, (id as i32, n as i32)),
                None => Ok(ACTION_CONTINUE),
            }
        }
        match cb {
            Callback::RequestHeaders { headers, end } if ex.on_request_headers_01.is_some() => {
                let _ = end;
                act2(store, &ex.on_request_headers_01, id, headers)
            }
            Callback::RequestHeaders { headers, end } => act(store, &ex.on_request_headers, id, headers, end),
            Callback::RequestBody { size, end } => act(store, &ex.on_request_body, id, size, end),
            Callback::ResponseHeaders { headers, .. } if ex.on_response_headers_01.is_some() => {
                act2(store, &ex.on_response_headers_01, id, headers)
            }
            Callback::ResponseHeaders { headers, end } => act(store, &ex.on_response_headers, id, headers, end),
            Callback::ResponseBody { size, end } => act(store, &ex.on_response_body, id, size, end),
            Callback::CallResponse(resp) => {
                let Some(f) = &ex.on_http_call_response else {
                    return Ok(ACTION_CONTINUE);
                };
                let args = (
                    id as i32,
                    resp.token as i32,
                    resp.headers.len() as i32,
                    resp.body.len() as i32,
                    resp.trailers.len() as i32,
                );
                store.data_mut().call_response = Some(resp);
                let r = f.call(&mut *store, args);
                store.data_mut().call_response = None;
                r.map(|_| ACTION_CONTINUE)
            }
            Callback::Done => match &ex.on_done {
                Some(f) => f.call(store, id as i32).map(|_| ACTION_CONTINUE),
                None => Ok(ACTION_CONTINUE),
            },
            Callback::Log => unit(store, &ex.on_log, id),
            Callback::Delete => {
                store.data_mut().live.remove(&id);
                unit(store, &ex.on_delete, id)
            }
            Callback::Tick => unit(store, &ex.on_tick, ROOT_CONTEXT),
            Callback::QueueReady(q) => match &ex.on_queue_ready {
                Some(f) => f.call(store, (ROOT_CONTEXT as i32, q as i32)).map(|_| ACTION_CONTINUE),
                None => Ok(ACTION_CONTINUE),
            },
        }
    }
}

/// A start-up callback answered `false`.
#[derive(Debug)]
struct ConfigRefused(&'static str);

impl std::fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} returned false", self.0)
    }
}

impl std::error::Error for ConfigRefused {}
