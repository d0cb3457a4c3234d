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
                // Connecting gets as long as a reply: on a loaded machine a
                // first connection made inside a burst took over 200 ms.
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.response_timeout)
                    .set_response_timeout(self.response_timeout)
                    .set_number_of_retries(0);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await?;
        Ok(c.clone())
    }
}

/// A Lua script that is put in Redis's script cache once, before its first
/// call. Without that, a cold burst of N concurrent calls costs N `NOSCRIPT`
/// replies and N `SCRIPT LOAD`s (`invoke_async` loads on `NOSCRIPT`), which
/// on a small machine queued a thousand admissions past their timeout. A
/// Redis restart empties its cache; `invoke_async` then loads it again.
pub struct Script {
    script: redis::Script,
    loaded: tokio::sync::OnceCell<()>,
}

impl Script {
    pub fn new(source: &str) -> Script {
        Script {
            script: redis::Script::new(source),
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// An invocation to fill with keys and arguments.
    pub fn prepare(&self) -> redis::ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// Run `inv` (from [`Script::prepare`]) on `conn`, loading the script first
    /// if this process has not yet.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.loaded
            .get_or_try_init(|| async { self.script.prepare_invoke().load_async(conn).await.map(drop) })
            .await?;
        inv.invoke_async(conn).await
    }
}
