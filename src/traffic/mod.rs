//! Plain decision types for traffic control, with no knowledge of HTTP: the
//! token bucket, the circuit breaker's state machine, the least-connection
//! picker and the retry budget. Plugins in `plugins/` wrap them.

pub mod breaker;
pub mod least_conn;
pub mod retry_budget;
pub mod token_bucket;
