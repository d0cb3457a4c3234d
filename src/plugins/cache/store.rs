//! Where cached answers live: a bounded in-process cache (moka, by bytes,
//! with TTL) or Redis shared by every weir instance (compressed values, TTL).

use crate::llm::{self, Usage};
use crate::plugins::redis::LazyRedis;
use bytes::Bytes;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use prometheus::IntCounter;
use std::io::{Read, Write};
use std::time::Duration;

/// A stored answer as a hit serves it.
#[derive(Clone)]
pub struct Entry {
    pub body: Bytes,
    /// `Some`: read when the entry was stored (the body is a JSON object;
    /// its usage, if it has one of a known shape). `None`: not read yet
    /// (an entry from Redis, or a usage of another shape).
    pub usage: Option<Option<Usage>>,
}

impl Entry {
    /// An entry whose usage the hit reads.
    pub fn unread(body: Bytes) -> Entry {
        Entry { body, usage: None }
    }

    /// An entry whose usage is read now, once, rather than on every hit.
    pub fn read(body: Bytes) -> Entry {
        let usage = llm::usage_of_object(&body);
        Entry { body, usage }
    }
}

/// In-process store, bounded by the bytes of keys and values.
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Entry>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, ttl: Duration, evictions: IntCounter) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Entry| (k.len() + v.body.len()).min(u32::MAX as usize) as u32)
            .time_to_live(ttl)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        MemoryStore { cache }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key)
    }

    pub fn put(&self, key: String, value: Bytes) {
        self.cache.insert(key, Entry::read(value));
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

    /// The values of `keys`, in order, in one round trip (`MGET`).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, String> {
        let fut = async {
            let mut c = self.redis.conn().await?;
            let mut cmd = redis::cmd("MGET");
            for key in keys {
                cmd.arg(format!("{}{key}", self.prefix));
            }
            cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut c).await
        };
        let raw = tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .map_err(|_| "redis timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(raw.into_iter().map(|v| v.and_then(|z| inflate(&z))).collect())
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

/// A stored value, decompressed (`None` if it is not deflate data).
fn inflate(z: &[u8]) -> Option<Bytes> {
    let mut out = Vec::new();
    DeflateDecoder::new(z).read_to_end(&mut out).ok()?;
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_store_reads_an_answers_usage_once_when_it_stores_it() {
        let evictions = IntCounter::new("test_cache_evictions", "evictions").unwrap();
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60), evictions);
        let answer = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        store.put("k".into(), Bytes::from_static(answer));
        let e = store.get("k").unwrap();
        assert_eq!(&e.body[..], &answer[..]);
        let u = e.usage.expect("read when stored").expect("the answer has a usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 2));

        // No usage: known to have none. A usage of another shape: left for the hit.
        store.put("none".into(), Bytes::from_static(br#"{"id":"c","choices":[]}"#));
        assert_eq!(store.get("none").unwrap().usage, Some(None));
        store.put(
            "odd".into(),
            Bytes::from_static(br#"{"id":"c","choices":[],"usage":"n/a"}"#),
        );
        assert_eq!(store.get("odd").unwrap().usage, None);
    }
}
