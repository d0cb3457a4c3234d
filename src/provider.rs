//! Providers: where an upstream lives (address, TLS, base path), the key weir
//! adds, the models it serves, and the bulkhead in front of it.

use crate::bulkhead::{Bulkhead, Limits};
use crate::config::{AdaptiveConf, BulkheadConf, PriceConf, ProviderConf, ProviderKind};
use crate::llm::Usage;
use crate::metrics;
use crate::traffic::adaptive::{Aimd, Decision, Latency, Outcome, Params, Sample};
use bytes::Bytes;
use http::HeaderValue;
use indexmap::IndexMap;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::WrappedX509;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A provider's URL, split and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix the client's path after `/v1` is appended to (no trailing `/`).
    pub base_path: String,
}

impl Endpoint {
    /// Parse `http(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("'{url}' must start with http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| format!("'{url}' has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Endpoint {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// Resolve the host once (never on the request path).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve '{}': {e}", self.host))?
            .next()
            .ok_or_else(|| format!("'{}' resolves to no address", self.host))
    }

    /// Value of the `Host` header sent upstream.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The upstream path for a client path: `/v1/chat/completions` ->
    /// `{base}/chat/completions`. Paths outside `/v1` are appended whole.
    pub fn upstream_path(&self, client_path_and_query: &str) -> String {
        let rest = client_path_and_query
            .strip_prefix("/v1")
            .filter(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
            .unwrap_or(client_path_and_query);
        format!("{}{}", self.base_path, rest)
    }
}

/// The credential headers a provider is sent, by its kind.
fn auth_headers(conf: &ProviderConf) -> Vec<(&'static str, HeaderValue)> {
    let pairs: Vec<(&'static str, String)> = match conf.kind {
        ProviderKind::Openai => conf
            .api_key
            .iter()
            .map(|k| ("authorization", format!("Bearer {k}")))
            .collect(),
        ProviderKind::Anthropic => conf
            .api_key
            .iter()
            .map(|k| ("x-api-key", k.clone()))
            .chain([("anthropic-version", conf.anthropic_version.clone())])
            .collect(),
    };
    // Built once per generation: a request clones them (a reference count).
    // A value no header can carry is left out, as inserting it would fail.
    pairs
        .into_iter()
        .filter_map(|(n, v)| {
            let mut v = HeaderValue::from_maybe_shared(Bytes::from(v)).ok()?;
            v.set_sensitive(true);
            Some((n, v))
        })
        .collect()
}

/// A bulkhead for `conf`: the previous generation's one (queue and all)
/// when its limits are unchanged, else a new one named `name`.
pub fn bulkhead(name: String, conf: &BulkheadConf, previous: Option<&Arc<Bulkhead>>) -> Arc<Bulkhead> {
    let limits = Limits::from_conf(conf);
    match previous {
        Some(b) if *b.limits() == limits => b.clone(),
        _ => Bulkhead::new(name, limits),
    }
}

/// A provider's adaptive concurrency limit: the controller, the bulkhead
/// whose live limit it sets, and its metrics. Shared across reloads with the
/// bulkhead while the provider's `adaptive` settings are unchanged.
pub struct AdaptiveLimit {
    conf: AdaptiveConf,
    provider: String,
    controller: Mutex<Aimd>,
    bulkhead: Arc<Bulkhead>,
    limit: IntGauge,
    /// ttft short, ttft long, per_token short, per_token long.
    latency: [Gauge; 4],
}

impl AdaptiveLimit {
    /// A controller for `bulkhead` (whose `max_concurrent` is the ceiling),
    /// starting from the bulkhead's live limit.
    pub fn new(provider: &str, conf: AdaptiveConf, bulkhead: Arc<Bulkhead>) -> Arc<AdaptiveLimit> {
        let params = Params {
            floor: conf.floor,
            ceiling: bulkhead.limits().max_concurrent,
            backoff: conf.backoff,
            tolerance: conf.tolerance,
            min_remaining: conf.min_remaining,
        };
        let controller = Aimd::new(params, bulkhead.limit());
        bulkhead.set_limit(controller.limit());
        let latency = [
            ("ttft", "short"),
            ("ttft", "long"),
            ("per_token", "short"),
            ("per_token", "long"),
        ]
        .map(|(signal, kind)| metrics::CONCURRENCY_LATENCY.with_label_values(&[provider, signal, kind]));
        let limit = metrics::CONCURRENCY_LIMIT.with_label_values(&[provider]);
        limit.set(controller.limit() as i64);
        // Every reason's series from the start (at 0), so a rate of the
        // first decision is not lost and dashboards have a series to show.
        for reason in ["increase", "rate_limited", "error", "latency", "remaining"] {
            metrics::CONCURRENCY_DECISIONS.with_label_values(&[provider, reason]);
        }
        Arc::new(AdaptiveLimit {
            conf,
            provider: provider.to_string(),
            controller: Mutex::new(controller),
            bulkhead,
            limit,
            latency,
        })
    }

    /// Take one finished attempt's sample; `saturated` is read here (the
    /// attempt still holds its slot).
    pub fn record(&self, admitted: std::time::Instant, outcome: Outcome) {
        let snap = self.bulkhead.snapshot();
        let sample = Sample {
            admitted,
            saturated: snap.in_flight >= snap.limit || snap.waiting > 0,
            outcome,
        };
        let (decision, limit, ttft, per_token) = {
            let mut c = self.controller.lock();
            let d = c.observe(&sample, std::time::Instant::now());
            if d != Decision::Hold {
                // Under the controller's lock, so concurrent samples set
                // the bulkhead in the order they were decided.
                self.bulkhead.set_limit(c.limit());
            }
            (d, c.limit(), c.ttft, c.per_token)
        };
        if decision != Decision::Hold {
            self.limit.set(limit as i64);
            metrics::CONCURRENCY_DECISIONS
                .with_label_values(&[&self.provider, decision.label()])
                .inc();
        }
        let l: [&Latency; 2] = [&ttft, &per_token];
        for (i, lat) in l.iter().enumerate() {
            self.latency[2 * i].set(lat.short);
            self.latency[2 * i + 1].set(lat.long);
        }
    }

    /// The live limit.
    pub fn limit(&self) -> usize {
        self.controller.lock().limit()
    }
}

/// The adaptive limit for a provider whose bulkhead is `bulkhead`: the
/// previous one when it drives the same bulkhead with the same settings,
/// else a new one; none (and the bulkhead back at its ceiling) when off.
fn adaptive(
    name: &str,
    conf: Option<AdaptiveConf>,
    bulkhead: &Arc<Bulkhead>,
    previous: Option<&Provider>,
) -> Option<Arc<AdaptiveLimit>> {
    let Some(conf) = conf else {
        bulkhead.set_limit(bulkhead.limits().max_concurrent);
        metrics::CONCURRENCY_LIMIT
            .with_label_values(&[name])
            .set(bulkhead.limits().max_concurrent as i64);
        return None;
    };
    match previous.and_then(|p| p.adaptive.as_ref()) {
        Some(a) if a.conf == conf && Arc::ptr_eq(&a.bulkhead, bulkhead) => Some(a.clone()),
        _ => Some(AdaptiveLimit::new(name, conf, bulkhead.clone())),
    }
}

/// A generation's providers by name.
pub type Providers = IndexMap<String, Arc<Provider>>;

/// Read PEM CA certificates.
pub fn load_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = item.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
        certs.push(der.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// What the active health check found, carried over across reloads: the
/// last result, which the balancer reads, and a count of passing checks, which
/// a circuit breaker compares with the count it saw when it opened ("has a
/// check passed since?").
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    passes: AtomicU64,
}

impl Default for Health {
    /// Healthy until a check says otherwise; no check passed yet.
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            passes: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Record one check's result; true if it changed the healthy flag.
    pub fn record(&self, ok: bool) -> bool {
        if ok {
            self.passes.fetch_add(1, Ordering::Relaxed);
        }
        self.healthy.swap(ok, Ordering::Relaxed) != ok
    }

    /// False only after an active health check failed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Checks passed so far (only ever grows).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

/// A provider as it serves requests. State that must outlive a config
/// generation (the bulkhead) is shared through `Arc`s.
pub struct Provider {
    pub name: String,
    pub conf: ProviderConf,
    pub endpoint: Endpoint,
    /// Connection description, shared by all requests (pooled by Pingora).
    pub peer: HttpPeer,
    /// Credential headers sent to it: `authorization: Bearer …` for an
    /// OpenAI provider; `x-api-key` and `anthropic-version` for an Anthropic one.
    pub auth: Vec<(&'static str, HeaderValue)>,
    /// The `host` header sent to it (`Endpoint::authority`).
    pub host: HeaderValue,
    /// `weir_upstream_ttfb_seconds` for it, and `weir_llm_tokens_total`
    /// (prompt, completion) for each public model it serves: looked up on
    /// first use, then kept for the generation.
    ttfb: OnceCell<Histogram>,
    llm_tokens: HashMap<String, OnceCell<[IntCounter; 2]>, NameHasher>,
    /// public model name -> upstream model name
    pub models: HashMap<String, String, NameHasher>,
    pub bulkhead: Arc<Bulkhead>,
    /// The bulkhead's adaptive limit, when `adaptive` is on.
    pub adaptive: Option<Arc<AdaptiveLimit>>,
    /// In-flight requests; the metric child is keyed by name, so the count
    /// survives any rebuild of the provider set. Changed only through
    /// [`Provider::in_flight`]'s guard.
    in_flight: IntGauge,
    /// Results of the active health check; carried over across reloads.
    pub health: Arc<Health>,
}

/// The hasher of maps keyed by names from the config, looked up on every
/// request (a client's model name only looks a key up, never adds one).
pub(crate) type NameHasher = foldhash::fast::RandomState;

impl Provider {
    /// Count the time to its first byte (`weir_upstream_ttfb_seconds`).
    pub fn observe_ttfb(&self, t: Duration) {
        self.ttfb
            .get_or_init(|| metrics::UPSTREAM_TTFB.with_label_values(&[&self.name]))
            .observe(t.as_secs_f64());
    }

    /// Count the tokens it reported for public model `model`
    /// (`weir_llm_tokens_total`).
    pub fn count_llm_tokens(&self, model: &str, usage: Usage) {
        let counters = |m: &str| {
            ["prompt", "completion"].map(|kind| metrics::LLM_TOKENS.with_label_values(&[&self.name, m, kind]))
        };
        let add = |[p, c]: &[IntCounter; 2]| {
            p.inc_by(usage.prompt_tokens);
            c.inc_by(usage.completion_tokens);
        };
        match self.llm_tokens.get(model) {
            Some(cell) => add(cell.get_or_init(|| counters(model))),
            None => add(&counters(model)),
        }
    }

    /// Build a provider; `ca` is the already loaded CA list, if any.
    pub fn build(
        name: &str,
        conf: &ProviderConf,
        ca: Option<Vec<Vec<u8>>>,
        previous: Option<&Provider>,
    ) -> Result<Provider, String> {
        let endpoint = Endpoint::parse(&conf.url)?;
        let addr = endpoint.resolve()?;
        let sni = conf.tls.sni.clone().unwrap_or_else(|| endpoint.host.clone());
        let mut peer = HttpPeer::new(addr, endpoint.tls, sni);
        // Pool connections per provider definition: two providers at one
        // address with different TLS trust must never share a connection.
        peer.group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (name, &conf.url, &conf.tls.ca_file, &ca, conf.tls.insecure_skip_verify).hash(&mut h);
            h.finish()
        };
        let t = &conf.timeouts;
        peer.options.connection_timeout = Some(t.connect.0);
        peer.options.total_connection_timeout = Some(t.connect.0 + Duration::from_secs(1));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if endpoint.tls {
            peer.options.verify_cert = !conf.tls.insecure_skip_verify;
            peer.options.verify_hostname = !conf.tls.insecure_skip_verify;
            if let Some(ca) = ca {
                let list: Vec<WrappedX509> = ca
                    .into_iter()
                    .map(|der| WrappedX509::new(der, pingora_core::utils::tls::parse_x509))
                    .collect();
                peer.options.ca = Some(Arc::from(list.into_boxed_slice()));
            }
        }
        let bulkhead = bulkhead(
            format!("provider:{name}"),
            &conf.bulkhead.clone().unwrap_or(BulkheadConf::PROVIDER_DEFAULT),
            previous.map(|p| &p.bulkhead),
        );
        let adaptive = adaptive(name, conf.adaptive, &bulkhead, previous);
        Ok(Provider {
            adaptive,
            name: name.to_string(),
            conf: conf.clone(),
            auth: auth_headers(conf),
            ttfb: OnceCell::new(),
            llm_tokens: conf
                .models
                .pairs()
                .into_iter()
                .map(|(m, _)| (m, OnceCell::new()))
                .collect(),
            host: HeaderValue::from_maybe_shared(Bytes::from(endpoint.authority()))
                .map_err(|e| format!("provider {name}: its host is not a header value: {e}"))?,
            models: conf.models.pairs().into_iter().collect(),
            in_flight: metrics::UPSTREAM_IN_FLIGHT.with_label_values(&[name]),
            health: previous.map_or_else(Default::default, |p| p.health.clone()),
            endpoint,
            peer,
            bulkhead,
        })
    }

    /// Count one request in flight until the guard is dropped (on every
    /// path, a cancelled future included).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Requests in flight now.
    pub fn in_flight_now(&self) -> u64 {
        self.in_flight.get().max(0) as u64
    }

    /// False only after an active health check failed.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// The upstream name of a public model, if this provider serves it.
    pub fn upstream_model(&self, public: &str) -> Option<&str> {
        self.models.get(public).map(String::as_str)
    }

    /// The prices of a public model here, if config gives them.
    pub fn prices(&self, public: &str) -> Option<&PriceConf> {
        self.conf.prices.get(public)
    }

    /// What `usage` of a public model costs here, if the model has a price.
    pub fn cost(&self, public: &str, usage: Usage) -> Option<Cost> {
        self.prices(public).map(|p| Cost::of(p, usage))
    }
}

/// An amount of money in billionths of the config's currency: integers, so
/// budgets add and take back reservations exactly (in Redis too, whose
/// integer commands keep 64 bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(pub u64);

impl Cost {
    /// Billionths per unit of currency.
    pub const SCALE: f64 = 1e9;
    /// The most a [`Cost`] holds: 2^62 billionths (4.6 billion units), so
    /// sums of a few never overflow a signed 64-bit integer in Redis.
    pub const MAX: u64 = 1 << 62;

    /// `tokens` at `per_million`, rounded up to a billionth (so a count
    /// never costs less than a smaller count).
    pub fn tokens(tokens: u64, per_million: f64) -> Cost {
        // Prices are per million tokens: a token costs per_million × 1e-6,
        // i.e. per_million × 1000 billionths.
        let v = (tokens as f64 * per_million * 1000.0).ceil();
        Cost(if v.is_finite() && v > 0.0 {
            (v as u64).min(Self::MAX)
        } else {
            0
        })
    }

    /// What `u` costs at `p`: cached prompt tokens at `cached_input` (when
    /// given), the rest of the prompt (cache writes included) at `input`,
    /// completion at `output`.
    pub fn of(p: &PriceConf, u: Usage) -> Cost {
        let (cached, rest) = match p.cached_input {
            Some(price) => {
                let c = u.cached_tokens.min(u.prompt_tokens);
                (Cost::tokens(c, price), u.prompt_tokens - c)
            }
            None => (Cost(0), u.prompt_tokens),
        };
        Cost::tokens(rest, p.input)
            .plus(cached)
            .plus(Cost::tokens(u.completion_tokens, p.output))
    }

    /// Both added, within [`Cost::MAX`].
    pub fn plus(self, o: Cost) -> Cost {
        Cost(self.0.saturating_add(o.0).min(Self::MAX))
    }

    /// In units of the currency.
    pub fn units(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }

    /// From units of the currency (a limit in config), rounded down.
    pub fn from_units(v: f64) -> Cost {
        let n = (v * Self::SCALE).floor();
        Cost(if n.is_finite() && n > 0.0 {
            (n as u64).min(Self::MAX)
        } else {
            0
        })
    }
}

/// One request in flight at a provider; counted down on drop.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_counts_passes_and_reports_flips() {
        let h = Health::default();
        assert!(h.is_healthy());
        assert!(!h.record(true), "healthy to healthy is no change");
        assert!(h.record(false));
        assert!(!h.is_healthy());
        assert_eq!(h.passes(), 1, "a failed check counts no pass");
        assert!(h.record(true));
        assert_eq!(h.passes(), 2);
    }

    #[test]
    fn cost_of_usage() {
        let p = PriceConf {
            input: 2.5,
            output: 10.0,
            cached_input: Some(1.25),
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
            cached_tokens: 400_000,
            cache_write_tokens: 100_000,
        };
        // 600k uncached (cache writes included) at 2.5, 400k cached at 1.25, 100k out at 10.
        assert_eq!(Cost::of(&p, u).units(), 1.5 + 0.5 + 1.0);
        let no_cache_price = PriceConf {
            cached_input: None,
            ..p
        };
        assert_eq!(Cost::of(&no_cache_price, u).units(), 2.5 + 1.0);
        // Rounded up to a billionth: one token at 0.15 per million is 150 billionths.
        assert_eq!(Cost::tokens(1, 0.15), Cost(150));
        assert_eq!(Cost::tokens(3, 0.0000001), Cost(1));
        assert_eq!(Cost::tokens(u64::MAX, 1e6), Cost(Cost::MAX));
        assert_eq!(Cost::from_units(20.0), Cost(20_000_000_000));
        // More cached than prompt (a provider's odd report) never underflows.
        let odd = Usage {
            prompt_tokens: 10,
            cached_tokens: 50,
            ..Usage::default()
        };
        assert_eq!(Cost::of(&p, odd), Cost::tokens(10, 1.25));
    }

    fn conf(yaml: &str) -> ProviderConf {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn adaptive_limit_is_carried_over_while_unchanged() {
        let base = "url: http://127.0.0.1:9/v1\nmodels: [m]\nbulkhead: { max_concurrent: 10, queue: 4 }\n";
        let name = format!("adaptive-{}", rand::random::<u32>());
        let on = conf(&format!("{base}adaptive: {{ floor: 3 }}\n"));
        let first = Provider::build(&name, &on, None, None).unwrap();
        let a = first.adaptive.clone().expect("adaptive is on");
        assert_eq!(a.limit(), 10, "starts at the ceiling");
        // The controller lowered it: a reload with the same settings keeps it.
        first.bulkhead.set_limit(6);
        let params = a.controller.lock().params();
        *a.controller.lock() = Aimd::new(params, 6);
        let second = Provider::build(&name, &on, None, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(second.adaptive.as_ref().unwrap(), &a));
        assert_eq!(second.bulkhead.snapshot().limit, 6);
        // Changed settings: a new controller, starting from the live limit.
        let other = conf(&format!("{base}adaptive: {{ floor: 2 }}\n"));
        let third = Provider::build(&name, &other, None, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(third.adaptive.as_ref().unwrap(), &a));
        assert_eq!(third.adaptive.as_ref().unwrap().limit(), 6);
        // Off: the bulkhead is back at its ceiling.
        let off = conf(base);
        let fourth = Provider::build(&name, &off, None, Some(&third)).unwrap();
        assert!(fourth.adaptive.is_none());
        assert_eq!(fourth.bulkhead.snapshot().limit, 10);
    }

    #[test]
    fn endpoint_parse_and_paths() {
        let e = Endpoint::parse("https://api.openai.com/v1").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.authority(), "api.openai.com");
        assert_eq!(e.upstream_path("/v1/chat/completions"), "/v1/chat/completions");
        let e = Endpoint::parse("http://127.0.0.1:9000/openai/v1/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:9000");
        assert_eq!(e.upstream_path("/v1/models?x=1"), "/openai/v1/models?x=1");
        assert_eq!(e.upstream_path("/health"), "/openai/v1/health");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
