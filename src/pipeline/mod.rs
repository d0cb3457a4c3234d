//! The plugin pipeline: what a plugin is (`plugin`), the state of one
//! request (`context`), a route's chain (`chain`), and the chain run both
//! ways (`run`, `attempt`, `failover` with the route's `retry` policy,
//! `relay`) against a client (`downstream`).
//!
//! Run order for a route with plugins `[a, b]`:
//! 1. `request_headers`: a, b  — before the body is read; may refuse cheaply.
//! 2. `request_body`:    a, b  — the JSON head is parsed, the model known.
//! 3. `upstream_choice`: a, b  — may filter or reorder the candidate providers.
//!    Then, for each attempt (the first, and each retry the route's policy
//!    makes, to the same provider or the next): the provider's bulkhead
//!    slot, then `attempt_start` of a, b (either may skip it); the
//!    attempt's guard tells each plugin's hold how it ended. A stream that
//!    dies mid-answer may get one more attempt, its continuation.
//! 4. `response_headers`: b, a — the provider's (once its answer is ready:
//!    a stream's first token, a non-stream body whole), a local or an error response.
//! 5. `response_body`:   b, a  — each chunk as it passes, never buffered here.
//! 6. `log`:             a, b  — after the last byte, whatever the outcome.
//!
//! A local response (a cache hit, a wasm filter's reply, weir's own error
//! once a route matched) goes through phases 4 and 5 of the plugins that
//! ran before the one that answered, so `b` answering means only `a` sees
//! it. Where two plugins set the same response header, the one listed
//! first runs last and wins, as it was first to see the request.
//!
//! A plugin holds a slot of its own bulkhead while one of its request phases
//! runs (including any wait inside it, such as a wasm `http_call`), so its
//! bulkhead bounds the requests it is working on at once. A request phase
//! that never waits takes no slot (`Phase::Run`): at most one request per
//! worker thread can be in it.

mod attempt;
mod chain;
mod context;
mod downstream;
mod factory;
mod failover;
mod header;
mod plugin;
mod relay;
mod retry;
mod run;
mod traced;
mod wire;

pub use attempt::call_provider;
pub use chain::{PluginInstance, Route};
pub use context::{Identity, RequestCtx, Spent, Wire};
pub use downstream::Downstream;
pub use factory::{no_check, no_files, BuildCtx, BuildError, PluginSpec, PluginType, Settings, Typed};
pub use header::{build_headers, insert_with};
#[cfg(test)]
pub(crate) use plugin::body_waits;
pub use plugin::{Admission, Attempt, AttemptHold, Capabilities, Flow, LocalResponse, Phase, Phases, Plugin};
pub use run::{Ended, Pipeline};
