//! Built-in plugins and the instance wrapper that gives each its bulkhead.

pub mod api_key;
pub mod cache;
pub mod circuit_breaker;
pub mod least_connections;
pub mod rate_limit;
pub mod redis;

use crate::bulkhead::Bulkhead;
use crate::config::{Checker, Config, PluginConf};
use crate::pipeline::Plugin;
use std::sync::Arc;

/// A configured plugin: its code, its settings and its own bulkhead.
pub struct PluginInstance {
    pub name: String,
    pub conf: PluginConf,
    pub plugin: Arc<dyn Plugin>,
    pub bulkhead: Arc<Bulkhead>,
    /// Digest of the files the plugin's code comes from (a wasm module):
    /// the instance is reused across a reload only if they are unchanged.
    pub files_digest: Option<[u8; 32]>,
}

/// Checks of a plugin's settings beyond their types (files exist, values sane).
pub fn check(conf: &PluginConf, at: &str, ck: &mut Checker) {
    match conf {
        PluginConf::ApiKey(c) => api_key::check(c, at, ck),
        PluginConf::RateLimit(c) => rate_limit::check(c, at, ck),
        PluginConf::CircuitBreaker(c) => circuit_breaker::check(c, at, ck),
        PluginConf::LeastConnections(_) => {}
        PluginConf::Cache(c) => cache::check(c, at, ck),
        PluginConf::Wasm(c) => crate::wasm::check(c, at, ck),
    }
}

/// Build a plugin instance. An unchanged instance from the previous
/// generation is reused whole, so its state carries over.
pub fn build(
    name: &str,
    conf: &PluginConf,
    config: &Config,
    previous: Option<&Arc<PluginInstance>>,
) -> Result<Arc<PluginInstance>, String> {
    let files_digest = match conf {
        PluginConf::Wasm(c) => Some(crate::wasm::module_digest(c, config)?),
        _ => None,
    };
    if let Some(p) = previous {
        if &p.conf == conf && !p.depends_on_files() && p.files_digest == files_digest {
            return Ok(p.clone());
        }
    }
    let plugin: Arc<dyn Plugin> = match conf {
        PluginConf::ApiKey(c) => Arc::new(api_key::ApiKeys::load(c, config)?),
        PluginConf::RateLimit(c) => Arc::new(rate_limit::RateLimit::new(name, c)?),
        PluginConf::CircuitBreaker(c) => Arc::new(circuit_breaker::CircuitBreaker::new(c)),
        PluginConf::LeastConnections(_) => Arc::new(least_connections::LeastConnections::default()),
        PluginConf::Cache(c) => Arc::new(cache::Cache::new(name, c)?),
        PluginConf::Wasm(c) => Arc::new(crate::wasm::WasmPlugin::new(name, c, config)?),
    };
    let limits = conf.bulkhead().limits();
    let bulkhead = match previous {
        Some(p) if p.bulkhead.limits() == limits => p.bulkhead.clone(),
        _ => Bulkhead::new(format!("plugin:{name}"), limits),
    };
    Ok(Arc::new(PluginInstance {
        name: name.to_string(),
        conf: conf.clone(),
        plugin,
        bulkhead,
        files_digest,
    }))
}

impl PluginInstance {
    /// Plugins that read files are rebuilt on every reload (the file may have changed).
    fn depends_on_files(&self) -> bool {
        matches!(self.conf, PluginConf::ApiKey(_))
    }
}
