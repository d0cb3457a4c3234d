//! The built-in plugin types and the registry of every plugin type. Adding
//! a type touches its own file or folder and one line of [`registry`].

pub mod api_key;
pub mod budget;
pub mod cache;
pub mod circuit_breaker;
pub mod least_connections;
pub mod rate_limit;
pub mod redis;

use crate::pipeline::PluginType;

/// Every plugin type weir knows, by the `type:` name config uses.
pub fn registry() -> [&'static dyn PluginType; 7] {
    [
        &api_key::TYPE,
        &rate_limit::TYPE,
        &budget::TYPE,
        &circuit_breaker::TYPE,
        &least_connections::TYPE,
        &cache::TYPE,
        &crate::wasm::TYPE,
    ]
}

/// The type config names `name`.
pub fn find(name: &str) -> Option<&'static dyn PluginType> {
    registry().into_iter().find(|t| t.name() == name)
}
