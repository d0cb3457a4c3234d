//! Where buckets live: in this process, or in Redis shared by every weir
//! instance (one atomic server-side script per decision).

use crate::plugins::redis::{LazyRedis, Script};
use crate::traffic::token_bucket::TokenBucket;
use parking_lot::Mutex;
use std::sync::Arc;
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

/// Buckets in this process, in a bounded cache: at most `max_keys` buckets
/// (least valuable evicted first), each dropped after `idle` without use.
/// `idle` is the time a bucket takes to refill from empty, so a bucket that
/// expires was full anyway: expiry never hands out tokens a client had not
/// earned back.
pub struct MemoryStore {
    buckets: moka::sync::Cache<String, Arc<Mutex<TokenBucket>>>,
}

/// The longest idle time weir waits before dropping a bucket; slower buckets
/// (refilling over more than a year, or never) stay until evicted by size.
const MAX_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

impl MemoryStore {
    /// A store of at most `max_keys` buckets, each dropped after `idle` unused.
    pub fn new(max_keys: u64, idle: Option<Duration>) -> MemoryStore {
        let mut b = moka::sync::Cache::builder().max_capacity(max_keys);
        if let Some(idle) = idle.filter(|d| *d <= MAX_IDLE) {
            b = b.time_to_idle(idle);
        }
        MemoryStore { buckets: b.build() }
    }

    /// Buckets held now (pending evictions applied first).
    pub fn len(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// Take `n` tokens (or give back `-n`).
    pub fn take(&self, key: &str, shape: Shape, n: f64) -> Decision {
        let now = Instant::now();
        // Looked up by reference: the key is copied only when a bucket is created.
        let bucket = self.buckets.get_with_by_ref(key, || {
            Arc::new(Mutex::new(TokenBucket::new(shape.capacity, shape.per_sec, now)))
        });
        let mut b = bucket.lock();
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
    script: Script,
    prefix: String,
}

/// Redis did not answer in time, or answered with an error.
#[derive(Debug)]
pub struct StoreError(pub String);

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, String> {
        Ok(RedisStore {
            redis: LazyRedis::new(url)?,
            script: Script::new(SCRIPT),
            prefix: prefix.to_string(),
        })
    }

    pub async fn take(&self, key: &str, shape: Shape, n: f64) -> Result<Decision, StoreError> {
        let fut = async {
            let mut conn = self.redis.conn().await?;
            let mut inv = self.script.prepare();
            inv.key(format!("{}{key}", self.prefix))
                .arg(shape.capacity)
                .arg(shape.per_sec)
                .arg(n);
            let (ok, tokens, wait, reset): (i64, String, String, String) = self.script.invoke(&inv, &mut conn).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        capacity: 2.0,
        per_sec: 20.0,
    };

    #[test]
    fn bounded_by_max_keys() {
        let s = MemoryStore::new(10, None);
        for i in 0..1000 {
            assert!(s.take(&format!("k{i}"), SHAPE, 1.0).allowed);
        }
        assert!(s.len() <= 10, "{}", s.len());
    }

    #[test]
    fn a_bucket_is_kept_while_used_and_dropped_when_idle() {
        // Refills from empty in 0.1 s: dropped after 0.2 s idle, full by then.
        let s = MemoryStore::new(100, Some(Duration::from_millis(200)));
        assert!(s.take("k", SHAPE, 2.0).allowed);
        assert!(!s.take("k", SHAPE, 2.0).allowed, "empty bucket kept");
        assert_eq!(s.len(), 1);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(s.len(), 0);
        assert!(s.take("k", SHAPE, 2.0).allowed);
    }

    #[test]
    fn give_back_and_take() {
        let s = MemoryStore::new(100, None);
        let slow = Shape {
            capacity: 10.0,
            per_sec: 0.001,
        };
        assert_eq!(s.take("k", slow, 8.0).remaining.round(), 2.0);
        assert_eq!(s.take("k", slow, -5.0).remaining.round(), 7.0);
        assert!(!s.take("k", slow, 8.0).allowed);
    }
}
