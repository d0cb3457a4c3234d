//! What went wrong in a guest call, named the way
//! `weir_plugin_errors_total` counts it, and how a fault is reported.
//!
//! Kept apart from the pool so every failure path (start-up, callbacks,
//! a context lost with its VM) names and reports faults the same way.

use crate::metrics;
use crate::wasm::abi::Host;
use wasmtime::Trap;

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

    /// Count and log the fault against plugin `plugin`.
    pub(super) fn report(&self, plugin: &str) {
        metrics::PLUGIN_ERRORS
            .with_label_values(&[plugin, self.kind.label()])
            .inc();
        // A context lost with another request's VM is one fault seen many times.
        let level = if self.gone { log::Level::Debug } else { log::Level::Warn };
        log::log!(
            level,
            "wasm plugin '{}': {}: {}",
            plugin,
            self.kind.label(),
            self.message
        );
    }
}

/// Name what went wrong in a guest call.
pub(super) fn classify(e: &wasmtime::Error, host: Option<&Host>) -> Fault {
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
        (FaultKind::Timeout, _) => host.map_or_else(
            || "callback ran past limits.callback_time".to_string(),
            |h| h.budget.overrun(),
        ),
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
