//! Where cached answers live: a bounded in-process cache (moka, by bytes,
//! with TTL) or Redis shared by every weir instance (compressed values, TTL).

use crate::plugins::redis::LazyRedis;
use bytes::Bytes;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use prometheus::IntCounter;
use std::io::{Read, Write};
use std::time::Duration;

/// In-process store, bounded by the bytes of keys and values.
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Bytes>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, ttl: Duration, evictions: IntCounter) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Bytes| (k.len() + v.len()).min(u32::MAX as usize) as u32)
            .time_to_live(ttl)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        MemoryStore { cache }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.cache.get(key)
    }

    pub fn put(&self, key: String, value: Bytes) {
        self.cache.insert(key, value);
    }

    /// (bytes, entries) now.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

/// Redis store: values deflate-compressed, expiring after `ttl`.
pub struct RedisStore {
    redis: LazyRedis,
    prefix: String,
    ttl: Duration,
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<RedisStore, String> {
        Ok(RedisStore {
            redis: LazyRedis::new(url)?,
            prefix: prefix.to_string(),
            ttl,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, String> {
        let fut = async {
            let mut c = self.redis.conn().await?;
            redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        };
        let raw = tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .map_err(|_| "redis timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(raw.and_then(|z| {
            let mut out = Vec::new();
            DeflateDecoder::new(z.as_slice())
                .read_to_end(&mut out)
                .ok()
                .map(|_| Bytes::from(out))
        }))
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(value).map_err(|e| e.to_string())?;
        let z = enc.finish().map_err(|e| e.to_string())?;
        let fut = async {
            let mut c = self.redis.conn().await?;
            redis::cmd("SET")
                .arg(format!("{}{key}", self.prefix))
                .arg(z)
                .arg("PX")
                .arg(self.ttl.as_millis() as u64)
                .query_async::<()>(&mut c)
                .await
        };
        tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .map_err(|_| "redis timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}
