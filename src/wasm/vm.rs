//! The engine, compiled modules and a plugin's long-lived VMs.
//!
//! One wasmtime [`Engine`] serves every plugin; a thread advances its epoch
//! every millisecond. A callback may use `callback_time` of CPU: the epoch
//! deadline fires after that much wall time, and the deadline callback then
//! checks the thread's CPU clock, so a callback merely preempted on a busy
//! machine is not killed (a wall-clock bound of 20x still applies). A plugin
//! has a few VMs (instance + store, each behind a mutex held only for one
//! synchronous callback); HTTP contexts of many requests interleave on one
//! VM, as in Envoy. A VM that traps, overruns its time or hits its memory
//! limit is thrown away (its other contexts are gone with it) and rebuilt,
//! at most once per 100 ms.

use super::abi::{self, Host, Stream, ACTION_CONTINUE};
use super::http_call::{self, CallRequest, CallResponse, BACKGROUND, BACKGROUND_UPSTREAM};
use super::shared::{lock, SharedState};
use crate::metrics;
use crate::provider::Providers;
use crate::upstream::Upstream;
use bytes::Bytes;
use once_cell::sync::Lazy;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use wasmtime::{
    Engine, ExternType, InstancePre, Module, Store, Trap, TypedFunc, UpdateDeadline, WasmParams, WasmResults,
};

/// How often the epoch advances: the unit of `callback_time`.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// A dead VM is rebuilt at most this often (on demand by requests).
const REBUILD_INTERVAL: Duration = Duration::from_millis(100);
/// ... and at most this often by the background task (timers without traffic).
const BACKGROUND_REBUILD_INTERVAL: Duration = Duration::from_secs(1);
/// Start-up (`_initialize`, `on_vm_start`, `on_configure`) may parse a
/// config or build tables: it gets at least this long.
const MIN_STARTUP_TIME: Duration = Duration::from_secs(1);
/// Compiled modules kept by content hash (so `check` and `build` compile once).
const MODULE_CACHE: usize = 32;
const ROOT_CONTEXT: u32 = 1;

/// The engine every plugin shares, and the thread that ticks its epoch.
pub(crate) static ENGINE: Lazy<Engine> = Lazy::new(|| {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    // Filters run on Pingora's worker threads: keep their stack use modest.
    cfg.max_wasm_stack(512 << 10);
    let engine = Engine::new(&cfg).expect("wasmtime engine with the default config");
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("weir-wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match ticker.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn the wasm epoch thread");
    engine
});

static MODULES: Lazy<Mutex<HashMap<[u8; 32], Module>>> = Lazy::new(Default::default);

/// SHA-256 of a module file's bytes.
pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Read and compile a module (cached by content), checking that it is a
/// Proxy-Wasm module weir can run.
pub(crate) fn load(path: &std::path::Path) -> Result<(Module, [u8; 32]), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let d = digest(&bytes);
    if let Some(m) = lock(&MODULES).get(&d) {
        return Ok((m.clone(), d));
    }
    let module =
        Module::new(&ENGINE, &bytes).map_err(|e| format!("{} is not a valid wasm module: {e:#}", path.display()))?;
    validate(&module).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cache = lock(&MODULES);
    if cache.len() >= MODULE_CACHE {
        cache.clear();
    }
    cache.insert(d, module.clone());
    Ok((module, d))
}

/// A Proxy-Wasm module exports its memory, an ABI version weir speaks, an
/// allocator and `proxy_on_context_create`.
fn validate(m: &Module) -> Result<(), String> {
    let has = |n: &str| m.get_export(n).is_some();
    if !matches!(m.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err("the module exports no memory".into());
    }
    if !has("proxy_abi_version_0_2_1") && !has("proxy_abi_version_0_2_0") {
        let other: Vec<String> = m
            .exports()
            .filter(|e| e.name().starts_with("proxy_abi_version"))
            .map(|e| e.name().to_string())
            .collect();
        return Err(match other.is_empty() {
            true => "not a Proxy-Wasm module (no proxy_abi_version_* export)".into(),
            false => format!(
                "Proxy-Wasm ABI {} is not supported (0.2.1 and 0.2.0 are)",
                other.join(", ")
            ),
        });
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err("the module exports no allocator (proxy_on_memory_allocate or malloc)".into());
    }
    if !has("proxy_on_context_create") {
        return Err("the module exports no proxy_on_context_create".into());
    }
    Ok(())
}

/// Work for a plugin's background task.
pub(crate) enum Event {
    /// An item arrived on a queue this VM's root context registered.
    QueueReady { vm: usize, queue: u32 },
    /// A call made by a root context finished.
    CallDone {
        vm: usize,
        generation: u64,
        resp: CallResponse,
    },
}

/// What every VM of a plugin (and its host functions) may read.
pub(crate) struct PluginInfo {
    pub name: String,
    /// The plugin's `config` as JSON (empty when there is none).
    pub plugin_config: Bytes,
    pub vm_config: Bytes,
    /// `http_call_allow`: the name as written, and its address.
    pub http_call_allow: Vec<(String, SocketAddr)>,
    pub state: Arc<SharedState>,
    pub events: UnboundedSender<Event>,
    /// The providers of the newest config generation a request brought:
    /// root contexts' `http_call`s resolve provider names in them.
    providers: Mutex<Weak<Providers>>,
    providers_generation: AtomicU64,
}

impl PluginInfo {
    pub fn latest_providers(&self) -> Option<Arc<Providers>> {
        lock(&self.providers).upgrade()
    }

    pub fn note_providers(&self, generation: u64, providers: &Arc<Providers>) {
        let g = generation + 1;
        if self.providers_generation.fetch_max(g, Ordering::Relaxed) < g {
            *lock(&self.providers) = Arc::downgrade(providers);
        }
    }

    #[cfg(test)]
    pub fn for_tests(name: &str) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            plugin_config: Bytes::new(),
            vm_config: Bytes::new(),
            http_call_allow: Vec::new(),
            state: Arc::new(SharedState::default()),
            events: tokio::sync::mpsc::unbounded_channel().0,
            providers: Mutex::new(Weak::new()),
            providers_generation: AtomicU64::new(0),
        }
    }
}

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
type CallResponseFn = Option<TypedFunc<(i32, i32, i32, i32, i32), ()>>;

/// The guest's callbacks; a missing one keeps the SDK default.
struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Cb1,
    on_queue_ready: Cb2,
    on_request_headers: Act3,
    on_request_body: Act3,
    on_response_headers: Act3,
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

/// One live instance.
pub(crate) struct Vm {
    pub store: Store<Host>,
    ex: Exports,
    pub generation: u64,
    next_id: u32,
    /// HTTP contexts created and not yet deleted.
    live: HashSet<u32>,
    /// CPU time one callback may use.
    limit: Duration,
}

impl Vm {
    /// A new HTTP context under the root context.
    pub fn create_context(&mut self) -> wasmtime::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(ROOT_CONTEXT + 1);
        arm(&mut self.store, self.limit);
        self.ex
            .on_context_create
            .call(&mut self.store, (id as i32, ROOT_CONTEXT as i32))?;
        self.live.insert(id);
        Ok(id)
    }

    /// Run one callback for context `id` within the callback time limit; the
    /// answer is the filter's action (CONTINUE for callbacks without one).
    pub fn run(&mut self, id: u32, cb: Callback) -> wasmtime::Result<i32> {
        let Vm {
            store, ex, limit, live, ..
        } = self;
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
        match cb {
            Callback::RequestHeaders { headers, end } => act(store, &ex.on_request_headers, id, headers, end),
            Callback::RequestBody { size, end } => act(store, &ex.on_request_body, id, size, end),
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
                live.remove(&id);
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

/// Why a callback failed, as `weir_plugin_errors_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Trap,
    Timeout,
    Error,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Error => "error",
        }
    }
}

/// A failed callback (or a filter that broke the rules).
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub kind: FaultKind,
    pub message: String,
    /// The context was already gone with its VM (another request's fault).
    pub gone: bool,
}

impl Fault {
    pub fn error(message: impl Into<String>) -> Fault {
        Fault {
            kind: FaultKind::Error,
            message: message.into(),
            gone: false,
        }
    }

    /// The request's context went away with its VM.
    pub fn gone() -> Fault {
        Fault {
            gone: true,
            ..Fault::error("the filter's VM failed and was replaced")
        }
    }
}

struct SlotState {
    vm: Option<Vm>,
    next_generation: u64,
    built_at: Option<Instant>,
}

struct Slot {
    state: Mutex<SlotState>,
    /// The root context's tick period (0 = none).
    tick_ms: AtomicU32,
}

/// What building a plugin needs to know.
pub(crate) struct CoreConf {
    pub name: String,
    pub module: Module,
    pub plugin_config: Bytes,
    pub http_call_allow: Vec<(String, SocketAddr)>,
    pub vms: usize,
    pub max_memory: usize,
    pub callback_time: Duration,
}

/// A plugin's VMs and everything they share.
pub(crate) struct Core {
    pub info: Arc<PluginInfo>,
    pre: InstancePre<Host>,
    slots: Vec<Slot>,
    rr: AtomicUsize,
    limit: Duration,
    startup_limit: Duration,
    max_memory: usize,
    /// Pools for calls made while a request waits (on the proxy's runtime).
    pub upstream: Upstream,
    tick_changed: Arc<Notify>,
}

fn ticks_for(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64) + 1
}

/// CPU time the calling thread has used. Time limits count CPU, not wall
/// time: a callback whose thread the OS preempts on a busy machine has not
/// overrun, while a filter spinning in a loop burns CPU as fast as it runs.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return PROCESS_START.elapsed();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    PROCESS_START.elapsed()
}

static PROCESS_START: Lazy<Instant> = Lazy::new(Instant::now);

/// A callback's time budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    cpu_start: Duration,
    wall_start: Instant,
    limit: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            cpu_start: Duration::ZERO,
            wall_start: Instant::now(),
            limit: Duration::ZERO,
        }
    }
}

impl Budget {
    /// However busy the machine, a callback ends within this much wall time.
    fn wall_limit(&self) -> Duration {
        (self.limit * WALL_FACTOR).max(MIN_WALL_LIMIT)
    }
}

/// The wall-clock bound is this many times the CPU limit ...
const WALL_FACTOR: u32 = 20;
/// ... and at least this long.
const MIN_WALL_LIMIT: Duration = Duration::from_millis(100);

/// Start a callback's budget: the epoch deadline fires after `limit` of
/// wall time, and [`on_deadline`] then checks the CPU actually used.
fn arm(store: &mut Store<Host>, limit: Duration) {
    store.data_mut().budget = Budget {
        cpu_start: thread_cpu_time(),
        wall_start: Instant::now(),
        limit,
    };
    store.set_epoch_deadline(ticks_for(limit));
}

/// The epoch deadline passed: interrupt the guest if it used its CPU time
/// (or the wall-clock bound), else let it go on for what is left.
fn on_deadline(b: &Budget) -> UpdateDeadline {
    let used = thread_cpu_time().saturating_sub(b.cpu_start);
    if used >= b.limit || b.wall_start.elapsed() >= b.wall_limit() {
        return UpdateDeadline::Interrupt;
    }
    UpdateDeadline::Continue(ticks_for(b.limit - used))
}

impl Core {
    /// Instantiate and configure every VM; any failure fails the build.
    pub fn new(c: CoreConf) -> Result<Arc<Core>, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let info = Arc::new(PluginInfo {
            state: SharedState::for_plugin(&c.name),
            name: c.name,
            plugin_config: c.plugin_config,
            vm_config: Bytes::new(),
            http_call_allow: c.http_call_allow,
            events: tx,
            providers: Mutex::new(Weak::new()),
            providers_generation: AtomicU64::new(0),
        });
        let mut linker = abi::linker(&ENGINE).map_err(|e| format!("wasm host functions: {e}"))?;
        let mut probe = Store::new(&ENGINE, Host::new(info.clone(), 0, 0));
        let unknown: Vec<String> = c
            .module
            .imports()
            .filter(|i| linker.get_by_import(&mut probe, i).is_none())
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        drop(probe);
        if !unknown.is_empty() {
            // Envoy refuses these; weir lets the module load and traps only
            // if one is called, so modules built for other hosts still run.
            log::warn!(
                "wasm plugin '{}': imports weir does not provide (calling one fails the request): {}",
                info.name,
                unknown.join(", ")
            );
            linker
                .define_unknown_imports_as_traps(&c.module)
                .map_err(|e| format!("wasm imports: {e}"))?;
        }
        let pre = linker
            .instantiate_pre(&c.module)
            .map_err(|e| format!("wasm imports: {e:#}"))?;
        let core = Arc::new(Core {
            info,
            pre,
            slots: (0..c.vms)
                .map(|_| Slot {
                    state: Mutex::new(SlotState {
                        vm: None,
                        next_generation: 1,
                        built_at: None,
                    }),
                    tick_ms: AtomicU32::new(0),
                })
                .collect(),
            rr: AtomicUsize::new(0),
            limit: c.callback_time,
            startup_limit: c.callback_time.max(MIN_STARTUP_TIME),
            max_memory: c.max_memory,
            upstream: http_call::new_upstream(),
            tick_changed: Arc::new(Notify::new()),
        });
        for i in 0..core.slots.len() {
            let vm = core.instantiate(i, 0).map_err(|f| f.message)?;
            let mut g = lock(&core.slots[i].state);
            g.vm = Some(vm);
            g.built_at = Some(Instant::now());
        }
        let weak = Arc::downgrade(&core);
        let notify = core.tick_changed.clone();
        BACKGROUND.spawn(background(weak, rx, notify));
        Ok(core)
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// A fresh VM: instantiate, `_initialize`, root context, `on_vm_start`,
    /// `on_configure`.
    fn instantiate(&self, index: usize, generation: u64) -> Result<Vm, Fault> {
        let host = Host::new(self.info.clone(), index, self.max_memory);
        let mut store = Store::new(&ENGINE, host);
        store.limiter(|h| &mut h.limiter);
        store.epoch_deadline_callback(|ctx| Ok(on_deadline(&ctx.data().budget)));
        arm(&mut store, self.startup_limit);
        let started = (move || -> wasmtime::Result<Vm> {
            let inst = self.pre.instantiate(&mut store)?;
            let memory = inst.get_memory(&mut store, "memory");
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
                on_request_headers: export(&inst, &mut store, "proxy_on_request_headers")?,
                on_request_body: export(&inst, &mut store, "proxy_on_request_body")?,
                on_response_headers: export(&inst, &mut store, "proxy_on_response_headers")?,
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
                let size = self.info.vm_config.len() as i32;
                if f.call(&mut store, (ROOT_CONTEXT as i32, size))? == 0 {
                    return Err(wasmtime::Error::new(ConfigRefused("proxy_on_vm_start")));
                }
            }
            if let Some(f) = &ex.on_configure {
                let size = self.info.plugin_config.len() as i32;
                if f.call(&mut store, (ROOT_CONTEXT as i32, size))? == 0 {
                    return Err(wasmtime::Error::new(ConfigRefused("proxy_on_configure")));
                }
            }
            Ok(Vm {
                store,
                ex,
                generation,
                next_id: ROOT_CONTEXT + 1,
                live: HashSet::new(),
                limit: self.limit,
            })
        })();
        let mut vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                let refused = e.downcast_ref::<ConfigRefused>().map(|r| r.0);
                let mut fault = classify(&e, None);
                fault.message = match refused {
                    Some(f) => format!("wasm plugin '{}': {f} returned false (see its log)", self.name()),
                    None => format!("wasm plugin '{}' failed to start: {}", self.name(), fault.message),
                };
                return Err(fault);
            }
        };
        self.after_callback(index, &mut vm);
        Ok(vm)
    }

    /// Tick-period changes and calls made by a root context, after any callback.
    fn after_callback(&self, index: usize, vm: &mut Vm) {
        let h = vm.store.data_mut();
        if let Some(ms) = h.tick_period.take() {
            self.slots[index].tick_ms.store(ms, Ordering::Relaxed);
            self.tick_changed.notify_one();
        }
        if !h.dispatched.is_empty() {
            let calls = std::mem::take(&mut h.dispatched);
            self.spawn_background_calls(index, vm.generation, calls);
        }
        let h = vm.store.data_mut();
        h.effective = h.root_id;
    }

    /// Perform calls on the background runtime; answers go to root contexts only.
    pub fn spawn_background_calls(&self, index: usize, generation: u64, calls: Vec<CallRequest>) {
        for call in calls {
            let events = self.info.events.clone();
            let name = self.info.name.clone();
            BACKGROUND.spawn(async move {
                let resp = http_call::perform(&BACKGROUND_UPSTREAM, &name, call).await;
                let _ = events.send(Event::CallDone {
                    vm: index,
                    generation,
                    resp,
                });
            });
        }
    }

    /// Run `f` on VM `index` if it is alive (and of `generation`, if given).
    /// A failure discards the VM; the caller reports the fault.
    pub fn with_vm<R>(
        &self,
        index: usize,
        generation: Option<u64>,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        let mut g = lock(&self.slots[index].state);
        let vm = match g.vm.as_mut() {
            Some(vm) if generation.is_none_or(|x| x == vm.generation) => vm,
            _ => return Err(Fault::gone()),
        };
        // A panic in a host function must not take weir down: the VM is dropped.
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut *vm)));
        let fault = match r {
            Ok(Ok(v)) => {
                self.after_callback(index, vm);
                return Ok(v);
            }
            Ok(Err(e)) => classify(&e, Some(vm.store.data())),
            Err(_) => Fault::error("a host function panicked"),
        };
        g.vm = None;
        log::info!(
            "wasm plugin '{}': VM {index} failed ({}: {}); it will be replaced",
            self.name(),
            fault.kind.label(),
            fault.message
        );
        Err(fault)
    }

    /// Rebuild a dead VM unless one was built within `interval`.
    fn rebuild(&self, index: usize, interval: Duration) -> bool {
        let mut g = lock(&self.slots[index].state);
        if g.vm.is_some() {
            return true;
        }
        if g.built_at.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        g.built_at = Some(Instant::now());
        let generation = g.next_generation;
        g.next_generation += 1;
        self.slots[index].tick_ms.store(0, Ordering::Relaxed);
        match self.instantiate(index, generation) {
            Ok(vm) => {
                g.vm = Some(vm);
                metrics::WASM_VM_RESTARTS.with_label_values(&[self.name()]).inc();
                log::info!("wasm plugin '{}': VM {index} replaced", self.name());
                true
            }
            Err(f) => {
                self.report(&f);
                false
            }
        }
    }

    /// Create an HTTP context on the next VM (round robin), rebuilding a
    /// dead VM if allowed: `(vm index, vm generation, context id)`. When
    /// every VM is dead and rebuilt too recently, says how long to wait.
    pub fn open_context(&self) -> Result<(usize, u64, u32), OpenError> {
        let n = self.slots.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = (start + k) % n;
            if !self.rebuild(i, REBUILD_INTERVAL) {
                continue;
            }
            match self.with_vm(i, None, |vm| Ok((vm.generation, vm.create_context()?))) {
                Ok((generation, id)) => return Ok((i, generation, id)),
                Err(f) if f.gone => continue,
                Err(f) => return Err(OpenError::Fault(f)),
            }
        }
        let wait = self
            .slots
            .iter()
            .filter_map(|s| lock(&s.state).built_at)
            .map(|t| REBUILD_INTERVAL.saturating_sub(t.elapsed()))
            .min()
            .unwrap_or(REBUILD_INTERVAL);
        Err(OpenError::Wait(wait))
    }

    /// Run callbacks for an HTTP context, its data moved into the store for
    /// the duration. Returns the last action and the calls the context
    /// dispatched. `stream` comes back even when a callback fails (it is
    /// `None` only if the VM was already gone).
    pub fn call_stream(
        &self,
        index: usize,
        generation: u64,
        stream: &mut Option<Box<Stream>>,
        callbacks: Vec<Callback>,
    ) -> Result<(i32, Vec<CallRequest>), Fault> {
        let Some(s) = stream.take() else {
            return Err(Fault::gone());
        };
        let id = s.id;
        let mut back = None;
        let r = self.with_vm(index, Some(generation), |vm| {
            let h = vm.store.data_mut();
            h.stream = Some(s);
            h.effective = id;
            let mut result = Ok(ACTION_CONTINUE);
            for cb in callbacks {
                result = vm.run(id, cb);
                if result.is_err() {
                    break;
                }
            }
            let h = vm.store.data_mut();
            back = h.stream.take();
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut h.dispatched)
                .into_iter()
                .partition(|c| c.context == id);
            h.dispatched = others;
            result.map(|a| (a, mine))
        });
        *stream = back;
        r
    }

    /// Count and log a fault.
    pub fn report(&self, f: &Fault) {
        metrics::PLUGIN_ERRORS
            .with_label_values(&[self.name(), f.kind.label()])
            .inc();
        // A context lost with another request's VM is one fault seen many times.
        let level = if f.gone { log::Level::Debug } else { log::Level::Warn };
        log::log!(
            level,
            "wasm plugin '{}': {}: {}",
            self.name(),
            f.kind.label(),
            f.message
        );
    }

    /// Live VMs (for the `weir_wasm_vms` gauge).
    pub fn live_vms(&self) -> usize {
        self.slots.iter().filter(|s| lock(&s.state).vm.is_some()).count()
    }

    /// Ticks that are due; returns when the next one is.
    fn run_ticks(&self, due: &mut Vec<Option<Instant>>) -> Instant {
        let now = Instant::now();
        due.resize(self.slots.len(), None);
        let mut next = now + Duration::from_secs(1);
        for (i, slot) in self.slots.iter().enumerate() {
            if !self.rebuild(i, BACKGROUND_REBUILD_INTERVAL) {
                continue;
            }
            let ms = slot.tick_ms.load(Ordering::Relaxed);
            if ms == 0 {
                due[i] = None;
                continue;
            }
            let period = Duration::from_millis(ms as u64);
            let at = *due[i].get_or_insert(now + period);
            if at <= now {
                if let Err(f) = self.with_vm(i, None, |vm| vm.run(ROOT_CONTEXT, Callback::Tick)) {
                    self.report(&f);
                }
                due[i] = Some(now + period);
            }
            next = next.min(due[i].unwrap_or(next));
        }
        next
    }

    fn handle(&self, ev: Event) {
        let r = match ev {
            Event::QueueReady { vm, queue } => {
                self.with_vm(vm, None, |v| v.run(ROOT_CONTEXT, Callback::QueueReady(queue)))
            }
            Event::CallDone { vm, generation, resp } => self.with_vm(vm, Some(generation), |v| {
                // Calls of HTTP contexts are delivered by their request.
                if resp.context != ROOT_CONTEXT {
                    return Ok(ACTION_CONTINUE);
                }
                v.run(ROOT_CONTEXT, Callback::CallResponse(resp))
            }),
        };
        match r {
            Err(f) if !f.gone => self.report(&f),
            _ => {}
        }
    }
}

/// Why no context could be opened.
pub(crate) enum OpenError {
    Fault(Fault),
    /// Every VM is dead and was rebuilt too recently: retry after this long.
    Wait(Duration),
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

/// Name what went wrong in a guest call.
fn classify(e: &wasmtime::Error, host: Option<&Host>) -> Fault {
    let denied = host.is_some_and(|h| h.limiter.denied);
    if let Some(code) = host.and_then(|h| h.exited) {
        return Fault {
            kind: FaultKind::Trap,
            message: format!("the module exited (proc_exit({code}))"),
            gone: false,
        };
    }
    let kind = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FaultKind::Timeout,
        _ => FaultKind::Trap,
    };
    let mut message = match (kind, e.downcast_ref::<Trap>()) {
        (FaultKind::Timeout, _) => "callback ran past limits.callback_time".to_string(),
        (_, Some(t)) => t.to_string(),
        _ => format!("{e:#}"),
    };
    if denied && kind == FaultKind::Trap {
        message = format!("memory limit reached ({message})");
    }
    log::debug!("wasm fault detail: {e:?}");
    Fault {
        kind,
        message,
        gone: false,
    }
}

/// A plugin's background work: timers, queue notifications and the answers
/// to root contexts' calls. Ends within a second of the plugin being dropped.
async fn background(core: Weak<Core>, mut events: UnboundedReceiver<Event>, tick_changed: Arc<Notify>) {
    let mut due = Vec::new();
    loop {
        let next = match core.upgrade() {
            Some(c) => c.run_ticks(&mut due),
            None => return,
        };
        tokio::select! {
            ev = events.recv() => {
                let (Some(ev), Some(c)) = (ev, core.upgrade()) else { return };
                c.handle(ev);
            }
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = tick_changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_count_cpu_time() {
        let b = Budget {
            cpu_start: thread_cpu_time(),
            wall_start: Instant::now(),
            limit: Duration::from_millis(50),
        };
        assert!(matches!(on_deadline(&b), UpdateDeadline::Continue(_)));
        // Sleeping uses no CPU: still within budget (until the wall bound).
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(on_deadline(&b), UpdateDeadline::Continue(_)));
        // Burn 60 ms of CPU (however long that takes on a busy machine).
        let spin = Instant::now();
        while thread_cpu_time() - b.cpu_start < Duration::from_millis(60) && spin.elapsed() < Duration::from_secs(5) {
            std::hint::black_box(0u64);
        }
        assert!(matches!(on_deadline(&b), UpdateDeadline::Interrupt));
        let old = Budget {
            wall_start: Instant::now() - Duration::from_secs(2),
            cpu_start: thread_cpu_time(),
            ..b
        };
        assert!(matches!(on_deadline(&old), UpdateDeadline::Interrupt));
    }

    #[test]
    fn epoch_ticks() {
        assert_eq!(ticks_for(Duration::from_millis(5)), 6);
        assert_eq!(ticks_for(Duration::from_micros(1500)), 3);
        assert_eq!(ticks_for(Duration::ZERO), 1);
    }
}
