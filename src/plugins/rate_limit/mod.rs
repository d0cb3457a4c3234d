//! `rate_limit`: token buckets for requests and for LLM tokens, keyed by API
//! key, IP, a header, model, route or globally. Tokens are *reserved* at
//! admission (prompt counted with OpenAI's BPE + `max_tokens`) and settled
//! against the provider's `usage` when the response ends, so a concurrent
//! burst cannot overshoot the budget.

mod store;

use crate::config::Checker;
use crate::error::{ErrorKind, WeirError};
use crate::llm::tokens;
use crate::metrics;
use crate::pipeline::{Capabilities, Flow, Phase, Phases, Plugin, RequestCtx, Typed};
use async_trait::async_trait;
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{Buckets, Decision, MemoryStore, RedisStore, Shape};

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConf {
    /// `api_key`, `ip`, `header:<name>`, `model`, `route` or `global`.
    #[serde(default = "d_key")]
    pub key: String,
    #[serde(default)]
    pub requests: Option<RequestsLimit>,
    #[serde(default)]
    pub tokens: Option<TokensLimit>,
    /// `memory` or `redis://host:port/db`.
    #[serde(default = "d_store")]
    pub store: String,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Most keys kept in this process, each with its buckets (the memory
    /// store, and the local fallback of a Redis store); the least used go
    /// first.
    #[serde(default = "d_max_keys")]
    pub max_keys: u64,
}

/// The `rate_limit` plugin type.
pub static TYPE: Typed<RateLimitConf> = Typed {
    name: "rate_limit",
    check,
    files: crate::pipeline::no_files,
    build: |c, b| {
        Ok(std::sync::Arc::new(
            RateLimit::new(&b.name, c).map_err(|e| ("store", e))?,
        ))
    },
};

fn d_key() -> String {
    "api_key".into()
}
fn d_store() -> String {
    "memory".into()
}
fn d_max_keys() -> u64 {
    100_000
}

/// Longest key value (header or model) used as is; longer ones are hashed,
/// so a client cannot make weir hold kilobytes per bucket.
const MAX_KEY_VALUE: usize = 64;

/// The bucket key for a client-chosen value: `<kind>:<value>` when short and
/// UTF-8, else `<kind>#<sha256 hex>` (the `#` keeps the two forms apart).
pub(crate) fn bounded_key(kind: &str, value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(v) if v.len() <= MAX_KEY_VALUE => format!("{kind}:{v}"),
        _ => {
            use sha2::Digest;
            format!("{kind}#{}", hex::encode(sha2::Sha256::digest(value)))
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestsLimit {
    #[serde(default)]
    pub per_second: Option<f64>,
    #[serde(default)]
    pub per_minute: Option<f64>,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokensLimit {
    pub per_minute: f64,
    pub burst: f64,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    #[serde(default = "d_default_max")]
    pub default_max_tokens: u64,
}

fn d_default_max() -> u64 {
    256
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Fall back to a bucket in this process.
    #[default]
    FailOpen,
    /// Refuse with 503.
    FailClosed,
}

/// Checks of the values.
fn check(c: &RateLimitConf, at: &str, ck: &mut Checker) {
    let key_ok = matches!(c.key.as_str(), "api_key" | "ip" | "model" | "route" | "global")
        || c.key
            .strip_prefix("header:")
            .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
    if !key_ok {
        ck.error(
            format!("{at}.key"),
            format!(
                "'{}': expected api_key, ip, header:<name>, model, route or global",
                c.key
            ),
        );
    }
    if c.max_keys < 1 {
        ck.error(format!("{at}.max_keys"), "must be at least 1");
    }
    if c.requests.is_none() && c.tokens.is_none() {
        ck.error(at.to_string(), "set `requests`, `tokens` or both");
    }
    if let Some(r) = c.requests {
        if r.per_second.is_some() == r.per_minute.is_some() {
            ck.error(format!("{at}.requests"), "set exactly one of per_second or per_minute");
        }
        if r.burst < 1.0 {
            ck.error(format!("{at}.requests.burst"), "must be at least 1");
        }
    }
    if let Some(t) = c.tokens {
        if t.burst < 1.0 || t.per_minute <= 0.0 {
            ck.error(format!("{at}.tokens"), "per_minute and burst must be positive");
        }
    }
    crate::plugins::redis::check_store(&c.store, at, ck);
}

/// The two dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Requests,
    Tokens,
}

impl Dim {
    /// Its bucket among a key's buckets in memory.
    fn index(self) -> usize {
        match self {
            Dim::Requests => 0,
            Dim::Tokens => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::Tokens => "tokens",
        }
    }
}

/// What a request took, for the headers and for settlement.
#[derive(Default)]
struct Taken {
    requests: Option<Decision>,
    tokens: Option<Decision>,
    /// The bucket key, once known.
    key: Option<String>,
    /// Tokens reserved under `key` (settled at the end).
    reserved: Option<f64>,
    /// The buckets of `key` in memory, looked up once for the takes and the
    /// settlement (looked up again only if the key may have been dropped
    /// meanwhile: [`MemoryStore::settle`]).
    buckets: Option<Arc<Buckets>>,
}

/// A bucket's shape for one dimension (checked to be configured).
fn shape(conf: &RateLimitConf, dim: Dim) -> Shape {
    match dim {
        Dim::Requests => {
            let r = conf.requests.expect("checked");
            let per_sec = r.per_second.unwrap_or_else(|| r.per_minute.unwrap_or(0.0) / 60.0);
            Shape {
                capacity: r.burst,
                per_sec,
            }
        }
        Dim::Tokens => {
            let t = conf.tokens.expect("checked");
            Shape {
                capacity: t.burst,
                per_sec: t.per_minute / 60.0,
            }
        }
    }
}

/// The longest time a bucket of this plugin takes to refill from empty
/// (`None`: never refills). An idle bucket is dropped after twice this:
/// full again, even if a settlement charged it late.
fn refill_time(conf: &RateLimitConf) -> Option<Duration> {
    let mut longest = Duration::ZERO;
    for (dim, on) in [
        (Dim::Requests, conf.requests.is_some()),
        (Dim::Tokens, conf.tokens.is_some()),
    ] {
        if !on {
            continue;
        }
        let s = shape(conf, dim);
        let secs = s.capacity / s.per_sec;
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        // Rounded up, plus a second of slack for the cache's clock.
        longest = longest.max(Duration::try_from_secs_f64(secs.ceil() + 1.0).ok()?);
    }
    Some(longest)
}

/// See the module doc.
pub struct RateLimit {
    name: String,
    conf: RateLimitConf,
    local: MemoryStore,
    redis: Option<std::sync::Arc<RedisStore>>,
    store_down: AtomicBool,
    store_errors: prometheus::IntCounter,
    keys: prometheus::IntGauge,
    /// `x-ratelimit-limit-{requests,tokens}`: the buckets' capacities, made once.
    limits: [HeaderValue; 2],
}

impl RateLimit {
    pub fn new(name: &str, conf: &RateLimitConf) -> Result<RateLimit, String> {
        let redis = match conf.store.as_str() {
            "memory" => None,
            url => Some(std::sync::Arc::new(RedisStore::new(url, &format!("weir:rl:{name}:"))?)),
        };
        if conf.tokens.is_some() {
            tokens::warm_up();
        }
        Ok(RateLimit {
            name: name.to_string(),
            conf: conf.clone(),
            local: MemoryStore::new(conf.max_keys.max(1), refill_time(conf)),
            redis,
            store_down: AtomicBool::new(false),
            store_errors: metrics::RATE_LIMIT_STORE_ERRORS.with_label_values(&[name]),
            keys: metrics::RATE_LIMIT_KEYS.with_label_values(&[name]),
            limits: [
                (Dim::Requests, conf.requests.is_some()),
                (Dim::Tokens, conf.tokens.is_some()),
            ]
            .map(|(dim, on)| HeaderValue::from(if on { shape(conf, dim).capacity as u64 } else { 0 })),
        })
    }

    fn shape(&self, dim: Dim) -> Shape {
        shape(&self.conf, dim)
    }

    /// The bucket key for this request, or `None` when it cannot be known yet.
    fn key(&self, ctx: &RequestCtx, req: Option<&RequestHeader>) -> Option<String> {
        let ip = || match ctx.client_addr {
            Some(a) => format!("ip:{}", a.ip()),
            None => "ip:".to_string(),
        };
        let k = match self.conf.key.as_str() {
            "global" => "global".to_string(),
            "route" => format!("route:{}", ctx.route.as_ref()?.name),
            "model" => bounded_key("model", ctx.head.as_ref()?.model.as_bytes()),
            "ip" => ip(),
            // No identity (no api_key plugin before this one): fall back to the IP.
            "api_key" => match &ctx.identity {
                Some(id) => format!("key:{}", id.name),
                None => ip(),
            },
            h => {
                let name = h.strip_prefix("header:")?;
                let v = req?.headers.get(name).map_or(&b""[..], |v| v.as_bytes());
                bounded_key("h", v)
            }
        };
        Some(k)
    }

    /// The buckets of `key` in memory: the request's own handle, or looked
    /// up once and kept in it. Every take of one request passes the same key
    /// (`Taken::key`, or the model's key made once in the body phase).
    fn buckets(&self, ctx: &mut RequestCtx, key: &str) -> Arc<Buckets> {
        if let Some(b) = ctx.state::<Taken>().and_then(|t| t.buckets.clone()) {
            return b;
        }
        let b = self.local.buckets(key);
        with_taken(ctx, |t| t.buckets = Some(b.clone()));
        b
    }

    /// One decision against the configured store, with the outage policy.
    async fn take(&self, ctx: &mut RequestCtx, dim: Dim, key: &str, n: f64) -> Result<Decision, WeirError> {
        let shape = self.shape(dim);
        let Some(redis) = &self.redis else {
            return Ok(self.buckets(ctx, key).take(dim.index(), shape, n));
        };
        let key_of_dim = format!("{}:{key}", dim.name());
        // Boxed: the round trip's large future would otherwise make every
        // request's take (and its plugin phase's boxed future) that large.
        match Box::pin(redis.take(&key_of_dim, shape, n)).await {
            Ok(d) => {
                if self.store_down.swap(false, Ordering::Relaxed) {
                    log::warn!("rate_limit '{}': redis store is back", self.name);
                }
                Ok(d)
            }
            Err(e) => {
                self.store_errors.inc();
                if !self.store_down.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "rate_limit '{}': redis store unreachable ({}); {}",
                        self.name,
                        e.0,
                        match self.conf.on_store_error {
                            OnStoreError::FailOpen => "falling back to local buckets",
                            OnStoreError::FailClosed => "refusing requests",
                        }
                    );
                }
                match self.conf.on_store_error {
                    OnStoreError::FailOpen => Ok(self.local.take(key, dim.index(), shape, n)),
                    OnStoreError::FailClosed => {
                        metrics::PLUGIN_ERRORS.with_label_values(&[&self.name, "error"]).inc();
                        Err(WeirError::new(
                            ErrorKind::StoreUnavailable,
                            format!("rate limit store of '{}' is unreachable; retry shortly", self.name),
                        )
                        .with_queue(format!("ratelimit:{}", self.name), 1))
                    }
                }
            }
        }
    }

    /// The 429, carrying the limit headers of what the request took.
    fn refuse(&self, dim: Dim, d: &Decision, ctx: &mut RequestCtx) -> WeirError {
        metrics::RATE_LIMITED.with_label_values(&[&self.name, dim.name()]).inc();
        let secs = d.wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = WeirError::new(
            ErrorKind::RateLimited,
            format!("rate limit '{}' ({}) exceeded; retry in {secs}s", self.name, dim.name()),
        )
        .with_queue(format!("ratelimit:{}:{}", self.name, dim.name()), secs);
        if let Some(t) = ctx.state::<Taken>() {
            self.limit_headers(t, |k, v| {
                e.headers.push((k.as_str(), v.to_str().unwrap_or_default().to_string()))
            });
        }
        e
    }

    async fn check_requests(&self, ctx: &mut RequestCtx, key: &str) -> Result<(), WeirError> {
        let d = self.take(ctx, Dim::Requests, key, 1.0).await?;
        with_taken(ctx, |t| t.requests = Some(d));
        if d.allowed {
            Ok(())
        } else {
            Err(self.refuse(Dim::Requests, &d, ctx))
        }
    }

    /// OpenAI's `x-ratelimit-*` headers for what the request took so far.
    fn limit_headers(&self, t: &Taken, mut put: impl FnMut(&'static HeaderName, HeaderValue)) {
        // The changing values are written into one buffer and split off it:
        // one allocation (and its shared count) for all four, not one each.
        let mut buf = BytesMut::with_capacity(VALUES_ROOM);
        let value = |buf: &mut BytesMut| HeaderValue::from_maybe_shared(buf.split().freeze());
        for (dim, d) in [(Dim::Requests, t.requests), (Dim::Tokens, t.tokens)] {
            let Some(d) = d else { continue };
            let [limit, remaining, reset] = match dim {
                Dim::Requests => &LIMIT_NAMES[0],
                Dim::Tokens => &LIMIT_NAMES[1],
            };
            put(limit, self.limits[dim.index()].clone());
            buf.extend_from_slice(itoa::Buffer::new().format(d.remaining.max(0.0) as u64).as_bytes());
            if let Ok(v) = value(&mut buf) {
                put(remaining, v);
            }
            write_reset(&mut buf, d.reset);
            if let Ok(v) = value(&mut buf) {
                put(reset, v);
            }
        }
    }
}

/// Room for the four changing values: two counts (at most 20 digits each)
/// and two resets (at most 22 bytes each: `<minutes>m<seconds>s`).
const VALUES_ROOM: usize = 2 * 20 + 2 * 22;

/// OpenAI's `x-ratelimit-*` names for requests and for tokens: limit,
/// remaining, reset. Made once, so no request parses them.
static LIMIT_NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

fn with_taken(ctx: &mut RequestCtx, f: impl FnOnce(&mut Taken)) {
    if ctx.state::<Taken>().is_none() {
        ctx.set_state(Taken::default());
    }
    if let Some(t) = ctx.state::<Taken>() {
        f(t);
    }
}

/// OpenAI's reset format: `1s`, `6m0s`, `0.5s` (rounded up to the
/// millisecond under a minute, to the second above). Written digit by digit:
/// `format!` cost more than the rest of the six headers.
fn write_reset(out: &mut BytesMut, d: Duration) {
    let mut num = itoa::Buffer::new();
    let ms = d.as_nanos().div_ceil(1_000_000) as u64;
    if ms < 60_000 {
        out.extend_from_slice(num.format(ms / 1000).as_bytes());
        let frac = ms % 1000;
        if frac > 0 {
            let digit = |n: u64| b'0' + n as u8;
            let digits = [b'.', digit(frac / 100), digit(frac / 10 % 10), digit(frac % 10)];
            // Without trailing zeros.
            let keep = if frac % 100 == 0 {
                2
            } else if frac % 10 == 0 {
                3
            } else {
                4
            };
            out.extend_from_slice(&digits[..keep]);
        }
        out.extend_from_slice(b"s");
    } else {
        let secs = ms.div_ceil(1000);
        out.extend_from_slice(num.format(secs / 60).as_bytes());
        out.extend_from_slice(b"m");
        out.extend_from_slice(num.format(secs % 60).as_bytes());
        out.extend_from_slice(b"s");
    }
}

/// [`write_reset`] as a string, for the tests.
#[cfg(test)]
fn reset_str(d: Duration) -> String {
    let mut out = BytesMut::new();
    write_reset(&mut out, d);
    String::from_utf8(out.to_vec()).expect("ASCII")
}

#[async_trait]
impl Plugin for RateLimit {
    /// Tokens are settled against the provider's usage, streams included.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            stream_usage: self.conf.tokens.is_some(),
        }
    }

    /// With buckets in memory a take never waits; the body phase may (a
    /// large prompt is counted off the workers) when tokens are limited:
    /// see [`Plugin::request_body_waits`] for which requests.
    fn phases(&self) -> Phases {
        let waits = |may: bool| if may { Phase::Wait } else { Phase::Run };
        Phases {
            request_headers: waits(self.redis.is_some()),
            request_body: waits(self.redis.is_some() || self.conf.tokens.is_some()),
            response_headers: Phase::Run,
        }
    }

    /// Only a Redis round trip or a prompt too large to count inline (and not
    /// yet counted for this request) waits:
    /// the small prompts of most requests take no slot of the bulkhead.
    fn request_body_waits(&self, ctx: &RequestCtx) -> bool {
        self.redis.is_some() || (self.conf.tokens.is_some() && ctx.prompt_count_waits())
    }

    async fn request_headers(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        // Refuse cheaply, before the body is read, when the key is already known.
        let Some(key) = self.key(ctx, Some(req)) else {
            return Ok(Flow::Continue);
        };
        let checked = match self.conf.requests {
            Some(_) => self.check_requests(ctx, &key).await,
            None => Ok(()),
        };
        // Kept (moved, not copied) for the body phase's take and the settlement.
        with_taken(ctx, |t| t.key = Some(key));
        checked.map(|()| Flow::Continue)
    }

    async fn request_body(&self, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        // Taken out while the takes borrow the request; put back with the reservation.
        let known = ctx.state::<Taken>().and_then(|t| t.key.take());
        let key = match known {
            Some(k) => k,
            None => {
                // Keyed by model: only now known.
                let k = self.key(ctx, None).unwrap_or_else(|| "unknown".into());
                if self.conf.requests.is_some() {
                    self.check_requests(ctx, &k).await?;
                }
                k
            }
        };
        let asked = ctx.head.as_ref().map(|h| (h.max_tokens, h.n));
        if let (Some(limit), Some((max_tokens, n))) = (self.conf.tokens, asked) {
            // Saturating: the head caps max_tokens and n, but a sum must never
            // wrap to a small reservation.
            let completion = max_tokens.unwrap_or(limit.default_max_tokens).saturating_mul(n);
            let estimate = ctx.prompt_tokens().await.saturating_add(completion);
            let d = self.take(ctx, Dim::Tokens, &key, estimate as f64).await?;
            with_taken(ctx, |t| t.tokens = Some(d));
            if !d.allowed {
                return Err(self.refuse(Dim::Tokens, &d, ctx));
            }
            with_taken(ctx, |t| {
                t.key = Some(key);
                t.reserved = Some(estimate as f64);
            });
        }
        Ok(Flow::Continue)
    }

    fn refresh_metrics(&self) {
        self.keys.set(i64::try_from(self.local.len()).unwrap_or(i64::MAX));
    }

    fn response_headers(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let Some(t) = ctx.state::<Taken>() else { return };
        // Through the map: Pingora's insert_header would parse each name again.
        crate::pipeline::insert_with(resp, |put| self.limit_headers(t, |k, v| put(k, v)));
    }

    fn log(&self, ctx: &mut RequestCtx) {
        let spent = ctx.spent;
        let Some((key, reserved)) = ctx
            .state::<Taken>()
            .and_then(|t| Some((t.key.take()?, t.reserved.take()?)))
        else {
            return;
        };
        // Settle on what the providers did (`Spent`): their usage, weir's
        // count of a stream that ended early, or the reservation when a
        // provider may have worked unseen; nothing when none worked.
        let used = spent.charge(reserved as u64) as f64;
        let delta = reserved - used;
        if delta == 0.0 {
            return;
        }
        let shape = self.shape(Dim::Tokens);
        match &self.redis {
            // Settling with Redis is a round trip: do it off the request path.
            // If Redis is down the bucket simply refills on its own.
            Some(redis) if !self.store_down.load(Ordering::Relaxed) => {
                let redis = redis.clone();
                let key = format!("{}:{key}", Dim::Tokens.name());
                tokio::spawn(async move {
                    let _ = redis.take(&key, shape, -delta).await;
                });
            }
            _ => {
                // The held handle, looked up after the request started; the
                // store sees whether the key was dropped while the answer ran.
                let since = ctx.started;
                let held = ctx.state::<Taken>().and_then(|t| t.buckets.take());
                self.local.settle(
                    &key,
                    held.as_ref().map(|h| (h, since)),
                    Dim::Tokens.index(),
                    shape,
                    -delta,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::body_waits;

    #[test]
    fn reset_format() {
        assert_eq!(reset_str(Duration::from_millis(500)), "0.5s");
        assert_eq!(reset_str(Duration::from_secs(1)), "1s");
        assert_eq!(reset_str(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_str(Duration::from_millis(17)), "0.017s");
        assert_eq!(reset_str(Duration::from_millis(1250)), "1.25s");
        assert_eq!(reset_str(Duration::from_micros(100_001)), "0.101s", "rounded up");
        assert_eq!(reset_str(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(reset_str(Duration::from_millis(419_500)), "7m0s", "not 6m60s");
        assert_eq!(reset_str(Duration::ZERO), "0s");
    }

    #[test]
    fn keys_bounded_and_apart() {
        assert_eq!(bounded_key("h", b"tenant-1"), "h:tenant-1");
        let long = bounded_key("h", &[b'a'; 10_000]);
        assert!(long.starts_with("h#") && long.len() == 2 + 64, "{long}");
        // Non-UTF-8 values get their own buckets, not one shared "h:".
        assert_ne!(bounded_key("h", b"\xff"), bounded_key("h", b"\xfe"));
        assert_ne!(bounded_key("h", b"\xff"), bounded_key("h", b""));
    }

    #[test]
    fn only_a_prompt_counted_off_the_workers_makes_the_body_phase_wait() {
        let conf: RateLimitConf = serde_yaml_ng::from_str("key: ip\ntokens: {per_minute: 600, burst: 1000}\n").unwrap();
        let rl = RateLimit::new("t", &conf).unwrap();
        assert_eq!(rl.phases().request_body, Phase::Wait, "declared: it may wait");
        let [small, large] = tokens::inline_and_pooled_bodies();
        assert!(!body_waits(&rl, small), "a small prompt is counted inline");
        assert!(body_waits(&rl, large.clone()), "a large one on the blocking pool");
        // Requests alone: nothing in the body phase waits, whatever the body.
        let conf: RateLimitConf = serde_yaml_ng::from_str("key: ip\nrequests: {per_second: 1, burst: 5}\n").unwrap();
        let rl = RateLimit::new("t", &conf).unwrap();
        assert_eq!(rl.phases().request_body, Phase::Run);
        assert!(!body_waits(&rl, large));
    }

    #[test]
    fn refill_time_is_the_slowest_bucket() {
        let conf: RateLimitConf = serde_yaml_ng::from_str(
            "key: ip\nrequests: {per_second: 1, burst: 5}\ntokens: {per_minute: 600, burst: 1000}\n",
        )
        .unwrap();
        assert_eq!(refill_time(&conf), Some(Duration::from_secs(101)));
        let conf: RateLimitConf = serde_yaml_ng::from_str("key: ip\nrequests: {per_second: 0, burst: 5}\n").unwrap();
        assert_eq!(refill_time(&conf), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000.max(ProptestConfig::default().cases)))]

            #[test]
            fn reset_is_written_as_the_formatter_writes_it(ns in 0u64..(3 * 3600 * 1_000_000_000)) {
                let d = Duration::from_nanos(ns);
                let ms = d.as_nanos().div_ceil(1_000_000) as u64;
                let want = if ms < 60_000 {
                    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
                    format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
                } else {
                    let secs = ms.div_ceil(1000);
                    format!("{}m{}s", secs / 60, secs % 60)
                };
                prop_assert_eq!(reset_str(d), want);
            }

            #[test]
            fn key_derivation_bounded_and_injective(
                a in proptest::collection::vec(any::<u8>(), 0..200),
                b in proptest::collection::vec(any::<u8>(), 0..200),
                same in any::<bool>(),
            ) {
                let b = if same { a.clone() } else { b };
                let (ka, kb) = (bounded_key("h", &a), bounded_key("h", &b));
                prop_assert!(ka.len() <= 2 + MAX_KEY_VALUE.max(64));
                prop_assert_eq!(&ka, &bounded_key("h", &a));
                prop_assert_eq!(ka == kb, a == b);
                if let Ok(s) = std::str::from_utf8(&a) {
                    if s.len() <= MAX_KEY_VALUE {
                        prop_assert_eq!(ka, format!("h:{s}"));
                    }
                }
            }
        }
    }
}
