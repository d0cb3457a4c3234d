//! weir: a programmable edge proxy for LLM providers, built on Pingora.
//! ARCHITECTURE.md has the layers and the arrows allowed between them.
//!
//! Where things live, from the leaves up:
//! - `config/`   the YAML schema as plain data, `${VAR}` expansion, located errors
//! - `metrics`, `error`, `llm`  Prometheus metrics; error kinds -> status,
//!   envelope, Retry-After; the OpenAI wire format (head, model rewrite, usage)
//! - `traffic/`  token bucket, breaker, least-connection order, retry budget
//! - `bulkhead`  bounded concurrency + bounded FIFO wait queue
//! - `provider`, `upstream`  a provider as it serves; one exchange with it
//! - `pipeline/` the `Plugin` trait (phases in run order), plugin factories,
//!   per-request state, and the chain run both ways (attempts, relay)
//! - `plugins/`  the built-in plugin types and the registry of every type
//! - `wasm/`     the Proxy-Wasm host: operators' own filters as a plugin type
//! - `runtime`   config -> one built generation (all I/O), swapped whole; reload
//! - `proxy`     the Pingora glue; `server` wires `weir serve`; `listen`
//!   checks an address can be bound before Pingora binds it
//! - `reload`, `health`, `admin`  reload triggers, health checks, admin API
//! - `access_log` one JSON line per request, written off the request path
//! - `mock/`, `demo`  the mock provider and `weir demo`

pub mod access_log;
pub mod admin;
pub mod bulkhead;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod listen;
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
pub mod trace;
pub mod traffic;
pub mod upstream;
pub mod wasm;
