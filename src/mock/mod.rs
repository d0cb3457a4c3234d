//! A mock OpenAI-compatible provider, which also speaks Anthropic's
//! Messages API (`/messages`, `/messages/count_tokens`; `--flavor`).
//!
//! Used by `weir demo`, integration tests and load benchmarks. It speaks just
//! enough of the OpenAI API (`/chat/completions`, `/completions`,
//! `/embeddings`, `/responses`, `/models`, under any path prefix) to
//! exercise a gateway:
//! latency shaping (time to first token, tokens per second), failure
//! injection that can be switched at runtime, fault modes chosen per request
//! (`--fault [MODEL=]SPEC`, or the `x-mock-fault` header: resets, hangs, cut
//! or stalled streams, provider error bodies, …), continuation of an
//! assistant prefill, `x-mock-*` response headers that echo what the
//! gateway forwarded, and a capacity model (`--capacity`: N slots, a
//! bounded queue, 429 past both, latency that grows past a knee) for
//! overload control to be tested offline.
//!
//! The mock must never be the bottleneck of a benchmark, so it implements
//! [`HttpServerApp`](pingora_core::apps::HttpServerApp) directly: responses
//! are streamed straight onto the session, nothing is logged per request and
//! keep-alive connections are handed back to Pingora for reuse.
//!
//! Control endpoints (exact paths, no prefix):
//! - `GET /mock/config`, `POST /mock/config` with any subset of
//!   `{"fail_rate": 1.0, "fail_status": 500, "ttft_ms": 10,
//!   "tokens_per_sec": 100, "completion_tokens": 16, "capacity": 8,
//!   "queue": 32, "knee": 8, "slope": 1.0}` (`queue`/`knee` `null`: follow
//!   the capacity);
//! - `GET /mock/stats` → `{"requests", "in_flight", "max_in_flight",
//!   "completions", "prefills", "faults": {SPEC: requests},
//!   "usage": {"prompt_tokens", "completion_tokens"}, "capacity",
//!   "in_service", "max_in_service", "queued", "rejected_429"}` (the tokens it
//!   generated, streamed ones counted as each is written);
//! - `POST /mock/stats/reset` (also forgets the fault specs' counters).
//!
//! Where things live:
//! - `options`      the command line of `weir mock` and the valid range of each value
//! - `behaviour`    the live settings (changed by `POST /mock/config`) and the stats
//! - `capacity`     `--capacity`: slots, their queue, 429 past both, the latency knee
//! - `routes`       which endpoint a method and path name
//! - `app`          the Pingora application: read a request, answer it on the session
//! - `errors`       OpenAI error envelopes, injected failures included
//! - `faults`       the fault spec grammar, which spec a request carries, per-spec counters
//! - `completions`  chat and text completions: token counts, answers, stream chunks, prefills, `n`
//! - `responses`    the Responses API: the response object and its stream's events
//! - `sse`          server-sent event framing (CRLF, gzip) and the pre-rendered token events
//! - `embeddings`   deterministic embeddings, as floats or base64
//! - `messages`     Anthropic's Messages API: its request read as a chat
//!   request, its answers, errors and stream events written in its format
//! - `server`       the Pingora service (`mock_service`) and the standalone `run`
//! - `tls`          the TLS files, checked before Pingora would panic on them
//!
//! Layer rule: the mock stands in for a provider, so it imports nothing of the
//! gateway (pipeline, plugins, wasm, runtime, proxy, provider, upstream,
//! config); `crate::llm` is the only weir module it may use.

mod app;
mod behaviour;
mod capacity;
mod completions;
mod embeddings;
mod errors;
mod faults;
mod messages;
mod options;
mod responses;
mod routes;
mod server;
mod sse;
mod tls;

pub use app::MockApp;
pub use options::{parse_duration, Flavor, Gzip, MockOptions};
pub use server::{mock_service, run};
