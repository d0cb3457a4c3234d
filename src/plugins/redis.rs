//! One lazily opened Redis connection for a plugin's shared store (rate-limit
//! buckets, cache entries): short timeouts and no retries, because a store
//! that is down must turn into a quick, counted fallback, not a slow request.

use crate::config::Checker;
use std::time::Duration;

/// Check a plugin's `store` setting: `memory`, or a Redis URL that parses.
pub fn check_store(store: &str, at: &str, ck: &mut Checker) {
    if store == "memory" {
        return;
    }
    if !store.starts_with("redis://") {
        ck.error(
            format!("{at}.store"),
            format!("'{store}': expected memory or redis://host:port/db"),
        );
    } else if let Err(e) = LazyRedis::new(store) {
        ck.error(format!("{at}.store"), e);
    }
}

/// A Redis client whose connection is made on first use.
pub struct LazyRedis {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// Longest wait for one reply.
    response_timeout: Duration,
}

impl LazyRedis {
    /// Check the URL now; connect later. Replies are awaited up to 200 ms.
    pub fn new(url: &str) -> Result<LazyRedis, String> {
        Self::with_response_timeout(url, Duration::from_millis(200))
    }

    /// As [`LazyRedis::new`], awaiting each reply up to `response_timeout`.
    pub fn with_response_timeout(url: &str, response_timeout: Duration) -> Result<LazyRedis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad redis url '{url}': {e}"))?;
        Ok(LazyRedis {
            client,
            conn: tokio::sync::OnceCell::new(),
            response_timeout,
        })
    }

    /// The connection (made on first use; it reconnects by itself afterwards).
    pub async fn conn(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_millis(200))
                    .set_response_timeout(self.response_timeout)
                    .set_number_of_retries(0);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await?;
        Ok(c.clone())
    }
}
