//! Where buckets live: in this process, or in Redis shared by every weir
//! instance (one atomic server-side script per decision).

use crate::plugins::redis::LazyRedis;
use crate::traffic::token_bucket::TokenBucket;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub capacity: f64,
    pub per_sec: f64,
}

/// The answer to one take (or adjust, with `n` <= 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: f64,
    /// Until `n` would fit (when refused).
    pub wait: Duration,
    /// Until the bucket is full.
    pub reset: Duration,
}

/// Buckets in this process. Bounded: full (idle) buckets are dropped when
/// the map grows past `MAX_KEYS`.
#[derive(Default)]
pub struct MemoryStore {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

const MAX_KEYS: usize = 100_000;

impl MemoryStore {
    /// Take `n` tokens (or give back `-n`).
    pub fn take(&self, key: &str, shape: Shape, n: f64) -> Decision {
        let now = Instant::now();
        let mut map = self.buckets.lock();
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, b| !b.is_full_at(now));
        }
        let b = map
            .entry(key.to_string())
            .or_insert_with(|| TokenBucket::new(shape.capacity, shape.per_sec, now));
        if n <= 0.0 {
            b.adjust(-n, now);
            let remaining = b.available(now);
            return Decision {
                allowed: true,
                remaining,
                wait: Duration::ZERO,
                reset: b.reset_after(now),
            };
        }
        match b.try_take(n, now) {
            Ok(remaining) => Decision {
                allowed: true,
                remaining,
                wait: Duration::ZERO,
                reset: b.reset_after(now),
            },
            Err(w) => Decision {
                allowed: false,
                remaining: b.available(now),
                wait: w.0,
                reset: b.reset_after(now),
            },
        }
    }
}

/// The token-bucket script: refill from the server's clock, take or give back, one round trip.
const SCRIPT: &str = r#"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local ok = 0
if n <= 0 or n <= tokens then tokens = math.min(cap, tokens - n); ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local full_in = 0
if rate > 0 then full_in = (cap - tokens) / rate end
redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
local wait = 0
if ok == 0 and rate > 0 then wait = (math.min(n, cap) - tokens) / rate end
return {ok, tostring(tokens), tostring(wait), tostring(full_in)}
"#;

/// Buckets in Redis.
pub struct RedisStore {
    redis: LazyRedis,
    script: redis::Script,
    prefix: String,
}

/// Redis did not answer in time, or answered with an error.
#[derive(Debug)]
pub struct StoreError(pub String);

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, String> {
        Ok(RedisStore {
            redis: LazyRedis::new(url)?,
            script: redis::Script::new(SCRIPT),
            prefix: prefix.to_string(),
        })
    }

    pub async fn take(&self, key: &str, shape: Shape, n: f64) -> Result<Decision, StoreError> {
        let fut = async {
            let mut conn = self.redis.conn().await?;
            let (ok, tokens, wait, reset): (i64, String, String, String) = self
                .script
                .key(format!("{}{key}", self.prefix))
                .arg(shape.capacity)
                .arg(shape.per_sec)
                .arg(n)
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((ok, tokens, wait, reset))
        };
        let (ok, tokens, wait, reset) = tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .map_err(|_| StoreError("redis timed out".into()))?
            .map_err(|e| StoreError(e.to_string()))?;
        let f = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        Ok(Decision {
            allowed: ok == 1,
            remaining: f(&tokens),
            wait: Duration::from_secs_f64(f(&wait).max(0.0)),
            reset: Duration::from_secs_f64(f(&reset).max(0.0)),
        })
    }
}
