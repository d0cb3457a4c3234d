//! `cache`: exact-match response cache for LLM requests.
//!
//! The key is a canonical form of the request (route, every field but
//! `model`/`stream`/`stream_options`, JSON key order and whitespace
//! ignored), optionally per API key, plus the provider and the upstream
//! model. An answer is stored under the provider and upstream model that
//! actually produced it (known only once failover is over); a lookup tries
//! each candidate's (provider, upstream model) key in candidate order — at
//! most one key per candidate, one `MGET` with Redis. Only complete 200
//! answers are stored; a streamed answer is assembled from its chunks
//! (tool calls included). A hit is served as JSON or, to a streaming
//! client, replayed as a proper event stream. Concurrent identical misses
//! make one upstream call; the others wait (bounded by the plugin's
//! bulkhead) and are served from its answer, or go upstream themselves if
//! it failed.

mod canonical;
mod store;

use crate::config::{Checker, Dur, Size};
use crate::error::WeirError;
use crate::llm;
use crate::metrics;
use crate::pipeline::{Flow, LocalResponse, Phase, Phases, Plugin, RequestCtx, Typed};
use crate::provider::Provider;
use async_trait::async_trait;
use bytes::Bytes;
use canonical::canonical;
use parking_lot::Mutex;
use pingora_http::{RequestHeader, ResponseHeader};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{Entry, MemoryStore, RedisStore};
use tokio::sync::watch;

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConf {
    #[serde(default = "d_ttl")]
    pub ttl: Dur,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: Size,
    /// Largest single answer stored.
    #[serde(default = "d_max_entry")]
    pub max_entry_bytes: Size,
    /// `memory` or `redis://host:port/db`.
    #[serde(default = "d_store")]
    pub store: String,
    /// `api_key`: entries are per key, so one key never sees another's answers.
    #[serde(default)]
    pub key_by: Option<String>,
    /// Cache only requests with `temperature: 0`.
    #[serde(default)]
    pub only_deterministic: bool,
}

/// The `cache` plugin type.
pub static TYPE: Typed<CacheConf> = Typed {
    name: "cache",
    check,
    files: crate::pipeline::no_files,
    build: |c, b| {
        let cache = Cache::new(&b.name, c, b.bulkhead.queue_timeout.0).map_err(|e| ("store", e))?;
        Ok(Arc::new(cache))
    },
};

fn d_ttl() -> Dur {
    Dur(Duration::from_secs(600))
}
fn d_max_bytes() -> Size {
    Size(256 << 20)
}
fn d_max_entry() -> Size {
    Size(4 << 20)
}
fn d_store() -> String {
    "memory".into()
}

/// Config-time checks.
fn check(c: &CacheConf, at: &str, ck: &mut Checker) {
    if let Some(k) = &c.key_by {
        if k != "api_key" {
            ck.error(format!("{at}.key_by"), format!("'{k}': the only choice is api_key"));
        }
    }
    crate::plugins::redis::check_store(&c.store, at, ck);
    if c.ttl.0.is_zero() {
        ck.error(format!("{at}.ttl"), "must be above zero");
    }
}

/// What this request is to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Bypass,
    Miss,
}

/// Per-request state.
struct CacheState {
    no_cache: bool,
    no_store: bool,
    /// Decided in the body phase; `None` if the request never got there.
    outcome: Option<Outcome>,
    /// The key hashed up to the provider and model (see [`entry_key`]).
    base: Option<Sha256>,
    /// Store the answer when it ends well.
    store: bool,
    is_sse: bool,
    buf: Vec<u8>,
    too_big: bool,
    /// Set when this request leads a coalesced miss; tells waiters on drop.
    leader: Option<Leader>,
}

/// The leader of concurrent identical misses. Dropping it (stored or not)
/// wakes the waiters.
struct Leader {
    key: String,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<bool>>>>>,
    tx: watch::Sender<Option<bool>>,
    stored: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.inflight.lock().remove(&self.key);
        let _ = self.tx.send(Some(self.stored));
    }
}

struct Counters {
    hit: IntCounter,
    miss: IntCounter,
    bypass: IntCounter,
    coalesced: IntCounter,
    store_errors: IntCounter,
}

/// See the module doc.
pub struct Cache {
    name: String,
    conf: CacheConf,
    memory: MemoryStore,
    redis: Option<Arc<RedisStore>>,
    redis_down: AtomicBool,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<bool>>>>>,
    counters: Counters,
    /// Longest a coalesced miss waits for its leader.
    wait: Duration,
}

fn directives(req: &RequestHeader) -> (bool, bool) {
    let Some(cc) = req.headers.get("cache-control").and_then(|v| v.to_str().ok()) else {
        return (false, false);
    };
    let has = |d: &str| cc.split(',').any(|p| p.trim().eq_ignore_ascii_case(d));
    (has("no-cache"), has("no-store"))
}

/// The entry of the request hashed in `base`, answered by `provider` as `upstream_model`.
fn entry_key(base: &Sha256, provider: &str, upstream_model: &str) -> String {
    let mut h = base.clone();
    h.update([0]);
    h.update(provider.as_bytes());
    h.update([0]);
    h.update(upstream_model.as_bytes());
    // Into a buffer: `hex::encode` goes char by char through an iterator.
    let mut out = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut out).expect("64 hex digits for 32 bytes");
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

/// The keys a request may be stored under: one per distinct (provider,
/// upstream model) of its candidates, in candidate order.
fn lookup_keys(base: &Sha256, candidates: &[Arc<Provider>], model: &str) -> Vec<String> {
    let mut seen: Vec<(&str, &str)> = Vec::with_capacity(candidates.len());
    let mut keys = Vec::with_capacity(candidates.len());
    for p in candidates {
        let pair = (p.name.as_str(), p.upstream_model(model).unwrap_or(model));
        if !seen.contains(&pair) {
            seen.push(pair);
            keys.push(entry_key(base, pair.0, pair.1));
        }
    }
    keys
}

impl Cache {
    /// `wait`: longest a coalesced miss waits for its leader (the plugin's
    /// queue timeout).
    pub fn new(name: &str, conf: &CacheConf, wait: Duration) -> Result<Cache, String> {
        let redis = match conf.store.as_str() {
            "memory" => None,
            url => Some(Arc::new(RedisStore::new(
                url,
                &format!("weir:cache:{name}:"),
                conf.ttl.0,
            )?)),
        };
        let lookups = |r: &str| metrics::CACHE_LOOKUPS.with_label_values(&[name, r]);
        Ok(Cache {
            memory: MemoryStore::new(
                conf.max_bytes.0,
                conf.ttl.0,
                metrics::CACHE_EVICTIONS.with_label_values(&[name]),
            ),
            redis,
            redis_down: AtomicBool::new(false),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            counters: Counters {
                hit: lookups("hit"),
                miss: lookups("miss"),
                bypass: lookups("bypass"),
                coalesced: metrics::CACHE_COALESCED.with_label_values(&[name]),
                store_errors: metrics::CACHE_STORE_ERRORS.with_label_values(&[name]),
            },
            name: name.to_string(),
            conf: conf.clone(),
            wait,
        })
    }

    fn redis_result<T>(&self, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => {
                if self.redis_down.swap(false, Ordering::Relaxed) {
                    log::warn!("cache '{}': redis store is back", self.name);
                }
                Some(v)
            }
            Err(e) => {
                self.counters.store_errors.inc();
                if !self.redis_down.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "cache '{}': redis store unreachable ({e}); serving as misses",
                        self.name
                    );
                }
                None
            }
        }
    }

    /// The first of `keys` stored (one round trip with Redis).
    async fn get_first(&self, keys: &[String]) -> Option<Entry> {
        match &self.redis {
            None => keys.iter().find_map(|k| self.memory.get(k)),
            Some(r) => self
                // Boxed, so a memory cache's lookups carry no round trip's large future.
                .redis_result(Box::pin(r.get_many(keys)).await)
                .and_then(|found| found.into_iter().flatten().next())
                .map(Entry::unread),
        }
    }

    /// Store an answer, then wake the waiters of a coalesced miss.
    fn put(&self, key: String, value: Bytes, mut leader: Option<Leader>) {
        match &self.redis {
            None => {
                self.memory.put(key, value);
                if let Some(l) = leader.as_mut() {
                    l.stored = true;
                }
            }
            Some(r) => {
                // A Redis write is a round trip: off the request path.
                let r = r.clone();
                let name = self.name.clone();
                let errors = self.counters.store_errors.clone();
                tokio::spawn(async move {
                    match r.put(&key, &value).await {
                        Ok(()) => {
                            if let Some(l) = leader.as_mut() {
                                l.stored = true;
                            }
                        }
                        Err(e) => {
                            errors.inc();
                            log::debug!("cache '{name}': store failed: {e}");
                        }
                    }
                    drop(leader);
                });
            }
        }
    }

    /// The answer for a hit, as JSON or as an event stream.
    fn hit_response(&self, entry: &Entry, ctx: &mut RequestCtx) -> Option<LocalResponse> {
        use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
        let head = ctx.head.as_ref()?;
        let stored = &entry.body;
        // A JSON answer is served as stored: only its usage is read, if the
        // store has not read it already (a stored entry that is not JSON is
        // no hit). A stream is replayed from the whole answer.
        let (body, content_type, usage) = if head.stream {
            let answer: serde_json::Value = serde_json::from_slice(stored).ok()?;
            let usage = answer.get("usage").and_then(|u| serde_json::from_value(u.clone()).ok());
            (
                llm::replay_as_sse(&answer, head.include_usage),
                "text/event-stream",
                usage,
            )
        } else {
            let usage = match entry.usage.or_else(|| llm::usage_of_object(stored)) {
                Some(u) => u,
                // A `usage` of another shape: still a hit if it is JSON.
                None => {
                    serde_json::from_slice::<serde::de::IgnoredAny>(stored).ok()?;
                    None
                }
            };
            (stored.clone(), "application/json", usage)
        };
        if let Some(u) = usage {
            metrics::LLM_TOKENS
                .with_label_values(&[&self.name, &head.model, "cached"])
                .inc_by(u.prompt_tokens.saturating_add(u.completion_tokens));
            ctx.usage = Some(u);
        }
        // Through the map, as the relay's answers: no name is parsed again.
        let h = crate::pipeline::build_headers(http::StatusCode::OK, 5, |h| {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            if head.stream {
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
            h.insert(HeaderName::from_static("x-weir-cache"), HeaderValue::from_static("hit"));
        });
        Some(LocalResponse { header: h, body })
    }

    /// Store a complete 200 answer (a stream is assembled first) under
    /// `key`, the entry of the provider and model that answered (`None`:
    /// unknown, nothing stored), then wake the waiters of a coalesced miss.
    /// Dropping the state without this wakes them too, to go upstream
    /// themselves.
    fn store_answer(&self, s: &mut CacheState, key: Option<String>) {
        s.store = false;
        let leader = s.leader.take();
        let Some(key) = key else { return };
        let answer = if s.is_sse {
            llm::assemble_stream(&s.buf).and_then(|v| serde_json::to_vec(&v).ok())
        } else {
            serde_json::from_slice::<serde_json::Value>(&s.buf)
                .ok()
                .filter(|v| v.get("choices").is_some() || v.get("data").is_some())
                .map(|_| std::mem::take(&mut s.buf))
        };
        if let Some(bytes) = answer {
            self.put(key, Bytes::from(bytes), leader);
        }
    }

    fn state<'a>(&self, ctx: &'a mut RequestCtx) -> Option<&'a mut CacheState> {
        ctx.state::<CacheState>()
    }
}

#[async_trait]
impl Plugin for Cache {
    /// The header phase reads two directives: it never waits. The body
    /// phase may (a coalesced miss, Redis).
    fn phases(&self) -> Phases {
        Phases {
            request_headers: Phase::Run,
            response_headers: Phase::Run,
            ..Phases::ALL
        }
    }

    async fn request_headers(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        let (no_cache, no_store) = directives(req);
        ctx.set_state(CacheState {
            no_cache,
            no_store,
            outcome: None,
            base: None,
            store: false,
            is_sse: false,
            buf: Vec::new(),
            too_big: false,
            leader: None,
        });
        Ok(Flow::Continue)
    }

    async fn request_body(&self, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        let Some(head) = ctx.head.clone() else {
            return Ok(Flow::Continue);
        };
        let (no_cache, no_store) = match self.state(ctx) {
            Some(s) => {
                s.outcome = Some(Outcome::Bypass);
                (s.no_cache, s.no_store)
            }
            None => return Ok(Flow::Continue),
        };
        if no_store {
            return Ok(Flow::Continue);
        }
        if self.conf.only_deterministic {
            let temp = serde_json::from_slice::<serde_json::Value>(&ctx.body)
                .ok()
                .and_then(|v| v.get("temperature").and_then(|t| t.as_f64()));
            if temp != Some(0.0) {
                return Ok(Flow::Continue);
            }
        }
        let Some(canon) = canonical(&ctx.body) else {
            return Ok(Flow::Continue);
        };
        let mut base = Sha256::new();
        base.update(ctx.route_name().as_bytes());
        base.update([0]);
        if self.conf.key_by.is_some() {
            base.update(ctx.identity.as_ref().map_or("", |i| &*i.name).as_bytes());
        }
        base.update([0]);
        base.update(&canon);
        let keys = lookup_keys(&base, &ctx.candidates, &head.model);
        // Concurrent misses coalesce on the first candidate's key.
        let Some(key) = keys.first().cloned() else {
            return Ok(Flow::Continue);
        };

        if !no_cache {
            if let Some(stored) = self.get_first(&keys).await {
                if let Some(r) = self.hit_response(&stored, ctx) {
                    self.counters.hit.inc();
                    ctx.cache = Some("hit");
                    return Ok(Flow::Respond(Box::new(r)));
                }
            }
            // Coalesce: wait for an identical miss already on its way.
            let waiting = self.inflight.lock().get(&key).cloned();
            if let Some(mut rx) = waiting {
                self.counters.coalesced.inc();
                let leader_stored = match tokio::time::timeout(self.wait, rx.wait_for(|v| v.is_some())).await {
                    Ok(Ok(v)) => *v == Some(true),
                    _ => false,
                };
                {
                    if leader_stored {
                        if let Some(stored) = self.get_first(&keys).await {
                            if let Some(r) = self.hit_response(&stored, ctx) {
                                self.counters.hit.inc();
                                ctx.cache = Some("hit");
                                return Ok(Flow::Respond(Box::new(r)));
                            }
                        }
                    }
                }
                // The leader failed or took too long: go upstream ourselves.
            }
        }
        self.counters.miss.inc();
        let leader = {
            let mut map = self.inflight.lock();
            if no_cache || map.contains_key(&key) {
                None
            } else {
                let (tx, rx) = watch::channel(None);
                map.insert(key.clone(), rx);
                Some(Leader {
                    key: key.clone(),
                    inflight: self.inflight.clone(),
                    tx,
                    stored: false,
                })
            }
        };
        if let Some(s) = self.state(ctx) {
            s.outcome = Some(Outcome::Miss);
            s.base = Some(base);
            s.store = true;
            s.leader = leader;
        }
        Ok(Flow::Continue)
    }

    fn response_headers(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let status = resp.status.as_u16();
        let is_sse = resp
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let native = ctx.native_answer();
        let Some(s) = self.state(ctx) else { return };
        let Some(outcome) = s.outcome else { return };
        if resp.headers.contains_key("x-weir-cache") {
            return; // a hit
        }
        if outcome == Outcome::Bypass {
            self.counters.bypass.inc();
        }
        let value = if outcome == Outcome::Miss { "miss" } else { "bypass" };
        let _ = resp.insert_header("x-weir-cache", value);
        s.is_sse = is_sse;
        // Entries are OpenAI answers, served to clients of either format; an
        // Anthropic provider's answer passed natively to an Anthropic client is not one.
        if status != 200 || native {
            s.store = false;
        }
        ctx.cache = Some(value);
    }

    fn response_body(&self, chunk: &mut Bytes, end: bool, ctx: &mut RequestCtx) {
        let max = self.conf.max_entry_bytes.0 as usize;
        // Who answered is known at the end: the provider, and the upstream
        // name of the model it served.
        let answered = if end {
            ctx.provider
                .clone()
                .and_then(|p| Some((p.clone(), p.upstream_model(ctx.served_model()?)?.to_string())))
        } else {
            None
        };
        let Some(s) = self.state(ctx) else { return };
        if !s.store || s.too_big {
            return;
        }
        if s.buf.len() + chunk.len() > max {
            s.too_big = true;
            s.buf = Vec::new();
            return;
        }
        s.buf.extend_from_slice(chunk);
        if end {
            // The provider's answer is complete (an aborted stream never gets
            // here): store it before the client sees the last byte, so its
            // next request can already hit.
            let key = match (&s.base, answered) {
                (Some(base), Some((p, up))) => Some(entry_key(base, &p.name, &up)),
                _ => None,
            };
            self.store_answer(s, key);
        }
    }

    fn refresh_metrics(&self) {
        let (bytes, entries) = self.memory.usage();
        metrics::CACHE_BYTES.with_label_values(&[&self.name]).set(bytes as i64);
        metrics::CACHE_ENTRIES
            .with_label_values(&[&self.name])
            .set(entries as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_serves_the_stored_json_and_reads_its_usage() {
        let conf: CacheConf = serde_json::from_str("{}").unwrap();
        let cache = Cache::new("hit-test", &conf, Duration::from_secs(1)).unwrap();
        let ctx_for = |body: &[u8]| {
            let mut ctx = RequestCtx::default();
            ctx.head = Some(llm::parse_head(body).unwrap());
            ctx
        };
        let json = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let answer = Bytes::from_static(
            br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"yo"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        );
        let odd = Bytes::from_static(br#"{"id":"c","choices":[],"usage":"n/a"}"#);
        let cut = Bytes::from_static(b"{\"id\":");
        // The same hits whether the usage was read when the entry was stored
        // (the memory store) or is read by the hit (Redis).
        for (how, entry) in [("unread", Entry::unread as fn(Bytes) -> Entry), ("read", Entry::read)] {
            let mut ctx = ctx_for(json);
            let r = cache.hit_response(&entry(answer.clone()), &mut ctx).unwrap();
            assert_eq!(r.body, answer, "{how}");
            assert_eq!(r.header.headers.get("content-type").unwrap(), "application/json");
            assert_eq!(r.header.headers.get("x-weir-cache").unwrap(), "hit");
            assert_eq!(
                ctx.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
                Some((3, 2)),
                "{how}"
            );

            // A usage of another shape is no count, but still a hit; what is not JSON is none.
            let mut ctx = ctx_for(json);
            assert_eq!(
                cache.hit_response(&entry(odd.clone()), &mut ctx).unwrap().body,
                odd,
                "{how}"
            );
            assert_eq!(ctx.usage, None, "{how}");
            assert!(
                cache.hit_response(&entry(cut.clone()), &mut ctx_for(json)).is_none(),
                "{how}"
            );

            // A streaming client gets the answer replayed as events, usage included when asked.
            let stream = br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
            let mut ctx = ctx_for(stream);
            let r = cache.hit_response(&entry(answer.clone()), &mut ctx).unwrap();
            assert_eq!(r.header.headers.get("content-type").unwrap(), "text/event-stream");
            let text = String::from_utf8(r.body.to_vec()).unwrap();
            assert!(
                text.contains("\"content\":\"yo\"") && text.contains("\"total_tokens\":5"),
                "{how}: {text}"
            );
            assert!(text.trim_end().ends_with("data: [DONE]"), "{how}: {text}");
            assert_eq!(ctx.usage.map(|u| u.completion_tokens), Some(2), "{how}");
        }
    }

    #[test]
    fn canonical_ignores_order_whitespace_stream_and_model() {
        let a = canonical(br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = canonical(
            br#"{ "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
                  "messages": [ {"content": "hi", "role": "user"} ], "model": "alias" }"#,
        );
        assert_eq!(a, b);
        let c = canonical(br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":1}"#);
        assert_ne!(a, c);
    }

    #[test]
    fn entries_differ_by_provider_and_upstream_model() {
        let mut base = Sha256::new();
        base.update(b"route\0\0{}");
        let k = entry_key(&base, "a", "m");
        assert_eq!(k, entry_key(&base, "a", "m"));
        // Lowercase hex of the digest, as ever (entries already in Redis keep their keys).
        let mut h = base.clone();
        h.update(b"\0a\0m");
        assert_eq!(k, hex::encode(h.finalize()));
        assert_ne!(k, entry_key(&base, "b", "m"));
        assert_ne!(k, entry_key(&base, "a", "m2"));
        // The separator keeps names from running into models.
        assert_ne!(entry_key(&base, "ab", "c"), entry_key(&base, "a", "bc"));
    }

    #[test]
    fn cache_control_directives() {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        assert_eq!(directives(&r), (false, false));
        r.insert_header("cache-control", "max-age=0, No-Cache").unwrap();
        assert_eq!(directives(&r), (true, false));
        r.insert_header("cache-control", "no-store").unwrap();
        assert_eq!(directives(&r), (false, true));
    }
}
