//! A plugin's pool of long-lived VMs: building them, handing out HTTP
//! contexts, running callbacks, rebuilding failed VMs and the plugin's
//! background work (timers, queues, root contexts' calls).
//!
//! A plugin has a few VMs (instance + store, each behind a mutex held only
//! for one synchronous callback); HTTP contexts of many requests interleave
//! on one VM, as in Envoy. A VM that traps, overruns its time or hits its
//! memory limit is thrown away (its other contexts are gone with it) and
//! rebuilt, at most once per 100 ms, so a crashing filter cannot make weir
//! spin rebuilding it.
//!
//! - `engine`: the shared wasmtime engine, its epoch ticker, compiled modules.
//! - `budget`: the CPU-time budget of one callback.
//! - `fault`: what went wrong in a guest call, and reporting it.
//! - `instance`: one VM: start-up and running a callback.

mod budget;
mod engine;
mod fault;
mod instance;

pub(crate) use budget::Budget;
pub(crate) use engine::load;
pub(crate) use fault::Fault;
pub(crate) use instance::Callback;

use super::abi::{self, Host, Stream, ACTION_CONTINUE};
use super::http_call::{self, CallRequest, CallResponse, BACKGROUND, BACKGROUND_UPSTREAM};
use super::shared::SharedState;
use crate::metrics;
use crate::provider::Providers;
use crate::upstream::Upstream;
use bytes::Bytes;
use engine::ENGINE;
use fault::classify;
use instance::{Vm, ROOT_CONTEXT};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use wasmtime::{InstancePre, Module, Store};

/// A dead VM is rebuilt at most this often (on demand by requests).
const REBUILD_INTERVAL: Duration = Duration::from_millis(100);
/// ... and at most this often by the background task (timers without traffic).
const BACKGROUND_REBUILD_INTERVAL: Duration = Duration::from_secs(1);
/// Start-up (`_initialize`, `on_vm_start`, `on_configure`) may parse a
/// config or build tables: it gets at least this long.
const MIN_STARTUP_TIME: Duration = Duration::from_secs(1);

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
    /// The plugin's `config` as the filter reads it (empty when there is none).
    pub plugin_config: Bytes,
    /// The VM's `vm_config`, likewise.
    pub vm_config: Bytes,
    /// `root_id` (the `plugin_root_id` property).
    pub root_id: String,
    /// `vm_id`: the scope of shared data and queues.
    pub vm_id: String,
    /// `http_call_allow`: the name as written, and its address.
    pub http_call_allow: Vec<(String, SocketAddr)>,
    /// The plugin's metrics.
    pub state: Arc<SharedState>,
    /// Shared data of the plugin's `vm_id`.
    pub shared: Arc<SharedState>,
    pub events: UnboundedSender<Event>,
    /// The providers of the newest config generation a request brought:
    /// root contexts' `http_call`s resolve provider names in them.
    providers: Mutex<Weak<Providers>>,
    providers_generation: AtomicU64,
    /// Told when providers are first known (calls made before wait for it).
    pub providers_known: Notify,
}

impl PluginInfo {
    pub fn latest_providers(&self) -> Option<Arc<Providers>> {
        self.providers.lock().upgrade()
    }

    pub fn note_providers(&self, generation: u64, providers: &Arc<Providers>) {
        let g = generation + 1;
        if self.providers_generation.fetch_max(g, Ordering::Relaxed) < g {
            *self.providers.lock() = Arc::downgrade(providers);
            self.providers_known.notify_waiters();
        }
    }

    /// The providers, waiting up to `within` for a config generation to name them.
    pub async fn providers_within(&self, within: Duration) -> Option<Arc<Providers>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.providers_known.notified();
            if let Some(p) = self.latest_providers() {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.latest_providers();
            }
        }
    }

    #[cfg(test)]
    pub fn for_tests(name: &str) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            plugin_config: Bytes::new(),
            vm_config: Bytes::new(),
            root_id: String::new(),
            vm_id: String::new(),
            http_call_allow: Vec::new(),
            state: Arc::new(SharedState::default()),
            shared: Arc::new(SharedState::default()),
            events: tokio::sync::mpsc::unbounded_channel().0,
            providers: Mutex::new(Weak::new()),
            providers_generation: AtomicU64::new(0),
            providers_known: Notify::new(),
        }
    }
}

/// A request paused with nothing pending waits for another context to resume it.
enum Waiter {
    Waiting(tokio::sync::oneshot::Sender<()>),
    /// Resumed before the request began to wait.
    Resumed,
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
    pub vm_config: Bytes,
    pub root_id: String,
    pub vm_id: String,
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
    /// Paused HTTP contexts waiting for a resume: `(vm, context)`.
    waiters: Mutex<std::collections::HashMap<(usize, u32), Waiter>>,
}

impl Core {
    /// Instantiate and configure every VM; any failure fails the build.
    pub fn new(c: CoreConf) -> Result<Arc<Core>, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let info = Arc::new(PluginInfo {
            state: SharedState::for_plugin(&c.name),
            shared: SharedState::for_vm(&c.vm_id),
            name: c.name,
            plugin_config: c.plugin_config,
            vm_config: c.vm_config,
            root_id: c.root_id,
            vm_id: c.vm_id,
            http_call_allow: c.http_call_allow,
            events: tx,
            providers: Mutex::new(Weak::new()),
            providers_generation: AtomicU64::new(0),
            providers_known: Notify::new(),
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
            waiters: Mutex::new(std::collections::HashMap::new()),
        });
        for i in 0..core.slots.len() {
            let vm = core.instantiate(i, 0).map_err(|f| f.message)?;
            let mut g = core.slots[i].state.lock();
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

    /// A fresh VM (see [`Vm::start`]), its root context's requests applied.
    fn instantiate(&self, index: usize, generation: u64) -> Result<Vm, Fault> {
        let mut vm = Vm::start(
            &self.pre,
            &self.info,
            index,
            generation,
            self.max_memory,
            self.startup_limit,
            self.limit,
        )?;
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
        for id in std::mem::take(&mut h.resumes) {
            self.resume(index, id);
        }
    }

    /// Another context resumed HTTP context `id` of VM `index`.
    fn resume(&self, index: usize, id: u32) {
        let mut w = self.waiters.lock();
        match w.remove(&(index, id)) {
            Some(Waiter::Waiting(tx)) => {
                let _ = tx.send(());
            }
            _ => {
                w.insert((index, id), Waiter::Resumed);
            }
        }
    }

    /// Wait (up to `within`) for another context to resume HTTP context `id`.
    pub async fn wait_resume(&self, index: usize, id: u32, within: Duration) -> bool {
        let rx = {
            let mut w = self.waiters.lock();
            if let Some(Waiter::Resumed) = w.remove(&(index, id)) {
                return true;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            w.insert((index, id), Waiter::Waiting(tx));
            rx
        };
        let resumed = matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())));
        self.waiters.lock().remove(&(index, id));
        resumed
    }

    /// Forget a context's resume bookkeeping (it is gone).
    pub fn forget(&self, index: usize, id: u32) {
        self.waiters.lock().remove(&(index, id));
    }

    /// Perform calls on the background runtime; answers go to root contexts only.
    pub fn spawn_background_calls(&self, index: usize, generation: u64, calls: Vec<CallRequest>) {
        for mut call in calls {
            let events = self.info.events.clone();
            let name = self.info.name.clone();
            let info = self.info.clone();
            BACKGROUND.spawn(async move {
                // Made before any config generation named the providers
                // (on_configure, a first tick): resolve the name once one has.
                if let http_call::Target::Later = call.target {
                    let providers = info.providers_within(call.timeout).await;
                    match providers.and_then(|ps| ps.get(&call.upstream).cloned()) {
                        Some(p) => call.target = http_call::Target::Provider(p),
                        None => log::warn!(
                            "wasm plugin '{name}': http_call to '{}': no such provider",
                            call.upstream
                        ),
                    }
                }
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
    fn with_vm<R>(
        &self,
        index: usize,
        generation: Option<u64>,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        let mut g = self.slots[index].state.lock();
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
        let mut g = self.slots[index].state.lock();
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
            .filter_map(|s| s.state.lock().built_at)
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
        f.report(self.name());
    }

    /// Live VMs (for the `weir_wasm_vms` gauge).
    pub fn live_vms(&self) -> usize {
        self.slots.iter().filter(|s| s.state.lock().vm.is_some()).count()
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
