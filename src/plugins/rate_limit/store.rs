//! Where buckets live: in this process, or in Redis shared by every weir
//! instance (one atomic server-side script per decision).

use crate::plugins::redis::{LazyRedis, Script};
use crate::traffic::token_bucket::TokenBucket;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Buckets in this process, in a bounded cache: at most `max_keys` keys
/// (least valuable evicted first), each with its requests and tokens
/// buckets, dropped after twice `refill` without use. `refill` is the time a
/// bucket takes to refill from empty, so a bucket that expires was full
/// anyway: expiry never hands out tokens a client had not earned back. The
/// second `refill` is room for a settlement (see [`MemoryStore::settle`]).
pub struct MemoryStore {
    keys: moka::sync::Cache<String, Arc<Buckets>>,
    /// How long after its lookup a request's handle is surely still its
    /// key's stored buckets, unless marked dropped: `refill`.
    fresh_for: Duration,
}

/// The longest idle time weir waits before dropping a bucket; slower buckets
/// (refilling over more than a year, or never) stay until evicted by size.
const MAX_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

/// One key's buckets, one per dimension (index 0 requests, 1 tokens), each
/// made full on its first take. A request looks its key up once and keeps
/// this handle for its later takes and its settlement.
#[derive(Default)]
pub struct Buckets {
    dims: Mutex<[Option<TokenBucket>; 2]>,
    /// Set when the store drops this key's entry (idle, evicted, invalidated):
    /// a handle held since then settles through the store.
    dropped: AtomicBool,
}

impl Buckets {
    /// Take `n` tokens (or give back `-n`) from bucket `dim` of this key.
    pub fn take(&self, dim: usize, shape: Shape, n: f64) -> Decision {
        self.take_at(dim, shape, n, Instant::now())
    }

    fn take_at(&self, dim: usize, shape: Shape, n: f64, now: Instant) -> Decision {
        let mut all = self.dims.lock();
        let b = all[dim].get_or_insert_with(|| TokenBucket::new(shape.capacity, shape.per_sec, now));
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

impl MemoryStore {
    /// A store of at most `max_keys` keys, each dropped after `2 × refill`
    /// unused (`refill`: how long the slowest bucket takes to refill from empty).
    pub fn new(max_keys: u64, refill: Option<Duration>) -> MemoryStore {
        let mut b = moka::sync::Cache::builder()
            .max_capacity(max_keys)
            .eviction_listener(|_key, buckets: Arc<Buckets>, _cause| buckets.dropped.store(true, Ordering::Relaxed));
        let refill = refill.filter(|d| *d <= MAX_IDLE);
        if let Some(r) = refill {
            b = b.time_to_idle(r.saturating_mul(2));
        }
        MemoryStore {
            keys: b.build(),
            fresh_for: refill.unwrap_or(Duration::MAX),
        }
    }

    /// Keys held now (pending evictions applied first).
    pub fn len(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }

    /// The buckets of `key`, made when it has none.
    pub fn buckets(&self, key: &str) -> Arc<Buckets> {
        // Looked up by reference: the key is copied only when it is new.
        self.keys.get_with_by_ref(key, Default::default)
    }

    /// The buckets `key` has now, given a handle a request held since its
    /// take: the stored entry (its idle time starts again), or, when the
    /// entry was dropped meanwhile, the held one put back, so that a
    /// settlement lands where the key's next request will look.
    fn attach(&self, key: &str, held: &Arc<Buckets>) -> Arc<Buckets> {
        self.keys.get_with_by_ref(key, || held.clone())
    }

    /// Settle `n` (a charge, or `-n` given back) on bucket `dim` of `key`,
    /// given the handle a request looked up no later than `since`.
    ///
    /// Within `refill` of the lookup, and not marked dropped, the handle is
    /// still the stored entry, and its idle clock (reset by that lookup) has
    /// at least `refill` left: time for a bucket charged now to be full again
    /// before it expires. So the settlement goes straight to the handle, with
    /// no second lookup. Later, or once dropped, it goes through the store
    /// ([`MemoryStore::attach`]), which restarts the idle clock. (A key
    /// evicted for room at this very moment, its listener not yet run, can
    /// lose this one settlement: as if the eviction had come a moment later.)
    pub fn settle(
        &self,
        key: &str,
        held: Option<(&Arc<Buckets>, Instant)>,
        dim: usize,
        shape: Shape,
        n: f64,
    ) -> Decision {
        let now = Instant::now();
        match held {
            Some((h, since))
                if !h.dropped.load(Ordering::Relaxed) && now.saturating_duration_since(since) < self.fresh_for =>
            {
                h.take_at(dim, shape, n, now)
            }
            Some((h, _)) => self.attach(key, h).take_at(dim, shape, n, now),
            None => self.buckets(key).take_at(dim, shape, n, now),
        }
    }

    /// Take `n` tokens (or give back `-n`) from bucket `dim` of `key`.
    pub fn take(&self, key: &str, dim: usize, shape: Shape, n: f64) -> Decision {
        self.buckets(key).take(dim, shape, n)
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
            assert!(s.take(&format!("k{i}"), 0, SHAPE, 1.0).allowed);
        }
        assert!(s.len() <= 10, "{}", s.len());
    }

    #[test]
    fn a_bucket_is_kept_while_used_and_dropped_when_idle() {
        // Refills from empty in 0.1 s: dropped after 0.2 s idle, full by then.
        let s = MemoryStore::new(100, Some(Duration::from_millis(100)));
        assert!(s.take("k", 0, SHAPE, 2.0).allowed);
        assert!(!s.take("k", 0, SHAPE, 2.0).allowed, "empty bucket kept");
        assert_eq!(s.len(), 1);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(s.len(), 0);
        assert!(s.take("k", 0, SHAPE, 2.0).allowed);
    }

    #[test]
    fn a_keys_two_buckets_are_apart_and_its_handle_is_the_stored_one() {
        let s = MemoryStore::new(100, None);
        let held = s.buckets("k");
        assert!(held.take(0, SHAPE, 2.0).allowed);
        assert!(
            !s.take("k", 0, SHAPE, 1.0).allowed,
            "the handle took from the stored bucket"
        );
        assert!(s.take("k", 1, SHAPE, 2.0).allowed, "the tokens bucket is its own");
        assert!(!held.take(1, SHAPE, 1.0).allowed);
        assert!(s.take("other", 0, SHAPE, 2.0).allowed);
        assert_eq!(s.len(), 2);
    }

    const SLOW: Shape = Shape {
        capacity: 10.0,
        per_sec: 0.001,
    };

    #[test]
    fn a_settlement_through_a_held_handle_lands_on_the_keys_buckets() {
        let s = MemoryStore::new(100, None);
        let since = Instant::now();
        let held = s.buckets("k");
        assert_eq!(held.take(1, SLOW, 8.0).remaining.round(), 2.0);
        // Still the key's entry: settled straight on the handle.
        assert!(s.settle("k", Some((&held, since)), 1, SLOW, -1.0).allowed);
        assert_eq!(
            s.take("k", 1, SLOW, 0.0).remaining.round(),
            3.0,
            "given back to the key"
        );
        // The key is dropped while its request runs (idle, or evicted): the
        // store marks the handle, and the settlement puts it back.
        s.keys.invalidate("k");
        s.keys.run_pending_tasks();
        assert!(held.dropped.load(Ordering::Relaxed), "the handle was marked dropped");
        assert_eq!(s.len(), 0);
        // The answer used more than was reserved: charged to the key.
        assert!(s.settle("k", Some((&held, since)), 1, SLOW, 1.5).allowed);
        assert_eq!(s.len(), 1, "the held buckets were put back");
        assert!(!s.take("k", 1, SLOW, 2.0).allowed, "the charge stays with the key");
        // Replaced meanwhile by a newer request's entry: that one is the key's.
        s.keys.invalidate("k");
        let newer = s.buckets("k");
        assert!(Arc::ptr_eq(&s.attach("k", &held), &newer));
        s.settle("k", Some((&held, since)), 1, SLOW, 5.0);
        assert!(!newer.take(1, SLOW, 6.0).allowed, "settled on the newer entry");
    }

    #[test]
    fn a_late_settlement_restarts_the_keys_idle_clock() {
        // Refills in 0.2 s: kept 0.4 s idle; a handle is fresh for 0.2 s.
        let refill = Duration::from_millis(200);
        let s = MemoryStore::new(100, Some(refill));
        let since = Instant::now();
        let held = s.buckets("k");
        assert!(held.take(0, SHAPE, 1.0).allowed);
        // Past the handle's freshness, the settlement goes through the store...
        std::thread::sleep(Duration::from_millis(300));
        s.settle("k", Some((&held, since)), 0, SHAPE, 1.0);
        // ...so 0.55 s after the lookup (0.25 s after the settlement) the key
        // is still kept: a bucket charged late has its full time to refill.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(s.len(), 1, "the settlement restarted the idle clock");
        // Then idle for twice the refill time: dropped, and marked.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(s.len(), 0);
        assert!(held.dropped.load(Ordering::Relaxed));
    }

    #[test]
    fn give_back_and_take() {
        let s = MemoryStore::new(100, None);
        assert_eq!(s.take("k", 1, SLOW, 8.0).remaining.round(), 2.0);
        assert_eq!(s.take("k", 1, SLOW, -5.0).remaining.round(), 7.0);
        assert!(!s.take("k", 1, SLOW, 8.0).allowed);
    }
}
