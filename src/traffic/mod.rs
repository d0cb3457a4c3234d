//! Plain decision types for traffic control, with no knowledge of HTTP: the
//! token bucket, the circuit breaker's state machine, the least-connection
//! picker, the retry budget and the adaptive concurrency limit (AIMD). Plugins in `plugins/` wrap them.

pub mod adaptive;
pub mod breaker;
pub mod least_conn;
pub mod retry_budget;
pub mod token_bucket;
