//! weir: a programmable edge proxy for LLM providers, built on Pingora.
//!
//! Where things live:
//! - `config/`   the YAML schema, `${VAR}` expansion, located errors
//! - `runtime`   one built value per config generation, swapped whole; reload
//! - `reload`    reload triggers: SIGHUP and watched files
//! - `server`    Pingora server wiring for `weir serve`
//! - `proxy`     Pingora's phases mapped onto weir's pipeline
//! - `pipeline`  the `Plugin` trait (phases in run order) and per-request state
//! - `bulkhead`  bounded concurrency + bounded FIFO wait queue
//! - `provider`, `upstream`  where providers live and one exchange with them
//! - `traffic/`  token bucket, breaker, least-connection picker, retry budget
//! - `health`    active health checks of providers
//! - `plugins/`  built-in plugins
//! - `wasm/`     the Proxy-Wasm host: operators' own filters as a plugin type
//! - `llm`       OpenAI request head, model rewrite, usage in JSON and SSE
//! - `error`     error kinds -> status, envelope, Retry-After
//! - `metrics`, `admin`  Prometheus metrics and the admin API
//! - `mock`, `demo`      the mock provider and `weir demo`

pub mod admin;
pub mod bulkhead;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod llm;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod plugins;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod traffic;
pub mod upstream;
pub mod wasm;
