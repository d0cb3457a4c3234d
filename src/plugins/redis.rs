//! One lazily opened Redis connection for a plugin's shared store (rate-limit
//! buckets, cache entries): short timeouts and no retries, because a store
//! that is down must turn into a quick, counted fallback, not a slow request.

use std::time::Duration;

/// A Redis client whose connection is made on first use.
pub struct LazyRedis {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl LazyRedis {
    /// Check the URL now; connect later.
    pub fn new(url: &str) -> Result<LazyRedis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad redis url '{url}': {e}"))?;
        Ok(LazyRedis {
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    /// The connection (made on first use; it reconnects by itself afterwards).
    pub async fn conn(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_millis(200))
                    .set_response_timeout(Duration::from_millis(200))
                    .set_number_of_retries(0);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await?;
        Ok(c.clone())
    }
}
