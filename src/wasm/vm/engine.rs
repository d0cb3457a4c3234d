//! The wasmtime engine every plugin shares, the thread that ticks its
//! epoch, and the compiled-module cache.
//!
//! One engine serves all plugins so compiled code and the epoch clock are
//! shared; modules are cached by content hash so `check` and `build` (and a
//! reload that keeps a module) compile each file once.

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;
use wasmtime::{Engine, ExternType, Module};

/// How often the epoch advances: the unit of `callback_time`.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Compiled modules kept by content hash (so `check` and `build` compile once).
const MODULE_CACHE: usize = 32;

/// The engine every plugin shares, and the thread that ticks its epoch.
pub(super) static ENGINE: Lazy<Engine> = Lazy::new(|| {
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
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Read and compile a module (cached by content), checking that it is a
/// Proxy-Wasm module weir can run.
pub(crate) fn load(path: &std::path::Path) -> Result<Module, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let d = digest(&bytes);
    if let Some(m) = MODULES.lock().get(&d) {
        return Ok(m.clone());
    }
    let module =
        Module::new(&ENGINE, &bytes).map_err(|e| format!("{} is not a valid wasm module: {e:#}", path.display()))?;
    validate(&module).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cache = MODULES.lock();
    if cache.len() >= MODULE_CACHE {
        cache.clear();
    }
    cache.insert(d, module.clone());
    Ok(module)
}

/// A Proxy-Wasm module exports its memory, an ABI version weir speaks, an
/// allocator and `proxy_on_context_create`.
fn validate(m: &Module) -> Result<(), String> {
    let has = |n: &str| m.get_export(n).is_some();
    if !matches!(m.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err("the module exports no memory".into());
    }
    if !has("proxy_abi_version_0_2_1") && !has("proxy_abi_version_0_2_0") && !has("proxy_abi_version_0_1_0") {
        let other: Vec<String> = m
            .exports()
            .filter(|e| e.name().starts_with("proxy_abi_version"))
            .map(|e| e.name().to_string())
            .collect();
        return Err(match other.is_empty() {
            true => "not a Proxy-Wasm module (no proxy_abi_version_* export)".into(),
            false => format!(
                "Proxy-Wasm ABI {} is not supported (0.2.1, 0.2.0 and 0.1.0 are)",
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
