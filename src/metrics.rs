//! Prometheus metrics (prefix `weir_`), one registry served by the admin API.
//! Gauges that describe current state (queue depth, oldest wait) are set at
//! scrape time from the live runtime, so the hot path never touches them.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry every weir metric lives in.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn reg<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    REGISTRY.register(Box::new(m.clone())).expect("metric registered once");
    m
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(IntCounterVec::new(Opts::new(name, help), labels).unwrap())
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    reg(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).unwrap())
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub static CLIENT_CONNECTIONS: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_client_connections",
        "Client connections open, by listener port (bounded by server.max_connections).",
        &["listener"],
    )
});
pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_requests_total",
        "Requests answered, by route, provider and status.",
        &["route", "provider", "status"],
    )
});
pub static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "weir_request_duration_seconds",
        "Time from request to last response byte.",
        &["route", "provider"],
        LATENCY_BUCKETS,
    )
});
pub static UPSTREAM_TTFB: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "weir_upstream_time_to_first_byte_seconds",
        "Time from sending upstream to the response header.",
        &["provider"],
        LATENCY_BUCKETS,
    )
});
pub static UPSTREAM_IN_FLIGHT: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_upstream_in_flight",
        "Requests in progress at a provider.",
        &["provider"],
    )
});
pub static QUEUE_DEPTH: Lazy<IntGaugeVec> =
    Lazy::new(|| gauge("weir_queue_depth", "Requests waiting in a bulkhead queue.", &["queue"]));
pub static QUEUE_CAPACITY: Lazy<IntGaugeVec> =
    Lazy::new(|| gauge("weir_queue_capacity", "Size of a bulkhead's wait queue.", &["queue"]));
pub static QUEUE_WAIT: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "weir_queue_wait_seconds",
        "Time spent waiting in a bulkhead queue.",
        &["queue"],
        LATENCY_BUCKETS,
    )
});
pub static QUEUE_OLDEST_WAIT: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    reg(prometheus::GaugeVec::new(
        Opts::new(
            "weir_queue_oldest_wait_seconds",
            "Age of the oldest waiter in a queue now.",
        ),
        &["queue"],
    )
    .unwrap())
});
pub static QUEUE_REJECTED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_queue_rejected_total",
        "Requests a bulkhead refused, by reason (full, timeout, evicted, fair_share, max_age, shed).",
        &["queue", "reason"],
    )
});
pub static QUEUE_CLASS_REJECTED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_queue_class_rejected_total",
        "Requests a bulkhead refused, by priority class and reason.",
        &["queue", "class", "reason"],
    )
});
pub static QUEUE_CLASS_WAIT: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "weir_queue_class_wait_seconds",
        "Time a request of a priority class waited in a bulkhead queue before its slot (refused waiters included).",
        &["queue", "class"],
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    )
});
pub static QUEUE_CLASS_DEPTH: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_queue_class_depth",
        "Requests of a priority class waiting in a bulkhead queue.",
        &["queue", "class"],
    )
});
pub static QUEUE_CLASS_IN_FLIGHT: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_queue_class_in_flight",
        "Requests of a priority class holding a bulkhead slot.",
        &["queue", "class"],
    )
});
pub static QUEUE_CLASS_OLDEST_WAIT: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    reg(prometheus::GaugeVec::new(
        Opts::new(
            "weir_queue_class_oldest_wait_seconds",
            "Age of a priority class's oldest waiter in a bulkhead queue now.",
        ),
        &["queue", "class"],
    )
    .unwrap())
});
pub static QUEUE_CLASS_DRAIN: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    reg(prometheus::GaugeVec::new(
        Opts::new(
            "weir_queue_class_drain_per_second",
            "Measured rate a priority class's queue is served at while it has waiters (what Retry-After is computed from).",
        ),
        &["queue", "class"],
    )
    .unwrap())
});
pub static CONCURRENCY_LIMIT: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_concurrency_limit",
        "A provider's live concurrency limit (adaptive: between its floor and max_concurrent).",
        &["provider"],
    )
});
pub static CONCURRENCY_LATENCY: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    reg(prometheus::GaugeVec::new(
        Opts::new(
            "weir_concurrency_latency_seconds",
            "The adaptive limit's latency averages: signal ttft or per_token, kind short (recent) or long (baseline).",
        ),
        &["provider", "signal", "kind"],
    )
    .unwrap())
});
pub static CONCURRENCY_DECISIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_concurrency_decisions_total",
        "Changes of an adaptive limit: increase, or a decrease by reason (rate_limited, error, latency, remaining).",
        &["provider", "reason"],
    )
});
pub static LLM_TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_llm_tokens_total",
        "LLM tokens reported by providers.",
        &["provider", "model", "kind"],
    )
});
pub static TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_tokens_total",
        "Tokens providers used for requests (reported, or counted by weir for a stream that ended \
         early), by API key name, public model, provider and kind (prompt, completion, cached: the \
         part of prompt read from the provider's prompt cache).",
        &["key", "model", "provider", "kind"],
    )
});
pub static COST: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    reg(prometheus::CounterVec::new(
        Opts::new(
            "weir_cost_total",
            "What those tokens cost at the provider's configured prices (providers.*.prices), in \
             the prices' currency, by API key name, public model and provider.",
        ),
        &["key", "model", "provider"],
    )
    .unwrap())
});
pub static BUDGET_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_budget_refused_total",
        "Requests a budget plugin refused (429 insufficient_quota), by the budget that had no room.",
        &["plugin", "budget"],
    )
});
pub static BUDGET_STORE_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_budget_store_errors_total",
        "Budget decisions (reserve, settle) whose store failed: Redis unreachable, or the memory \
         store full.",
        &["plugin"],
    )
});
pub static PLUGIN_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_plugin_errors_total",
        "Plugin failures, by kind (trap, timeout, error).",
        &["plugin", "kind"],
    )
});
pub static ACCESS_LOG_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "weir_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind (its queue of 16,384 lines was full).",
    )
    .unwrap())
});
pub static CONFIG_RELOADS: Lazy<IntCounterVec> =
    Lazy::new(|| counter("weir_config_reloads_total", "Config reloads, by result.", &["result"]));
pub static CONFIG_GENERATION: Lazy<IntGauge> =
    Lazy::new(|| reg(IntGauge::new("weir_config_generation", "Generation of the config now serving.").unwrap()));

pub static RATE_LIMITED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_rate_limited_total",
        "Requests a rate_limit plugin refused, by dimension.",
        &["plugin", "dimension"],
    )
});
pub static RATE_LIMIT_STORE_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_rate_limit_store_errors_total",
        "Rate-limit decisions whose shared store failed.",
        &["plugin"],
    )
});
pub static RATE_LIMIT_KEYS: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_rate_limit_keys",
        "Keys (each with its buckets) a rate_limit plugin holds in this process (set at scrape time).",
        &["plugin"],
    )
});
pub static CIRCUIT_STATE: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_circuit_state",
        "Breaker state per provider (0 closed, 1 half-open, 2 open).",
        &["provider"],
    )
});
pub static CIRCUIT_TRANSITIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_circuit_transitions_total",
        "Breaker state changes, by provider and new state.",
        &["provider", "to"],
    )
});
pub static CIRCUIT_OPEN_SECONDS: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    reg(prometheus::GaugeVec::new(
        Opts::new(
            "weir_circuit_open_seconds",
            "Open period of a provider's breaker, set each time it opens (open_for, doubled per failed probe up to max_open_for).",
        ),
        &["provider"],
    )
    .unwrap())
});
pub static RETRIES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_retries_total",
        "Sends after a failed attempt, by route and what failed (connect_error, reset, timeout, \
         status_429, status_5xx, context_length); budget_exhausted counts retries the budget refused.",
        &["route", "reason"],
    )
});
pub static STREAM_RECOVERIES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_stream_recoveries_total",
        "Streams that died after content reached the client, by outcome (continued, failed, \
         no_fallback, not_continuable).",
        &["outcome"],
    )
});
pub static PROVIDER_HEALTHY: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_provider_healthy",
        "Active health check result per provider (1 healthy, 0 not).",
        &["provider"],
    )
});

pub static CACHE_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_cache_lookups_total",
        "Cache lookups, by result (hit, miss, bypass).",
        &["plugin", "result"],
    )
});
pub static CACHE_EVICTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_cache_evictions_total",
        "Entries evicted to stay within max_bytes.",
        &["plugin"],
    )
});
pub static CACHE_COALESCED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_cache_coalesced_total",
        "Requests that waited for an identical miss in flight.",
        &["plugin"],
    )
});
pub static CACHE_STORE_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_cache_store_errors_total",
        "Cache reads or writes whose shared store failed.",
        &["plugin"],
    )
});
pub static CACHE_BYTES: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_cache_bytes",
        "Bytes held by an in-memory cache (keys and values).",
        &["plugin"],
    )
});
pub static CACHE_ENTRIES: Lazy<IntGaugeVec> =
    Lazy::new(|| gauge("weir_cache_entries", "Entries held by an in-memory cache.", &["plugin"]));

pub static WASM_METRIC: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_wasm_metric",
        "Counters and gauges a wasm filter defined (proxy_define_metric).",
        &["plugin", "metric"],
    )
});
pub static WASM_HISTOGRAM: Lazy<HistogramVec> = Lazy::new(|| {
    histogram(
        "weir_wasm_histogram",
        "Histograms a wasm filter defined, in the filter's own unit.",
        &["plugin", "metric"],
        &[
            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 1e5, 1e6,
        ],
    )
});
pub static WASM_VM_RESTARTS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_wasm_vm_restarts_total",
        "Wasm VMs replaced after a trap, timeout or memory fault.",
        &["plugin"],
    )
});
pub static WASM_VMS: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge(
        "weir_wasm_vms",
        "Live wasm VMs per plugin (below the configured count while one awaits its rebuild).",
        &["plugin"],
    )
});
pub static WASM_HTTP_CALLS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter(
        "weir_wasm_http_calls_total",
        "HTTP calls made by wasm filters, by result (ok, error, timeout).",
        &["plugin", "result"],
    )
});

/// Register every metric, so each appears on `/metrics` from the start.
pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&UPSTREAM_TTFB);
    Lazy::force(&UPSTREAM_IN_FLIGHT);
    Lazy::force(&QUEUE_DEPTH);
    Lazy::force(&QUEUE_CAPACITY);
    Lazy::force(&QUEUE_WAIT);
    Lazy::force(&QUEUE_OLDEST_WAIT);
    Lazy::force(&QUEUE_REJECTED);
    Lazy::force(&QUEUE_CLASS_REJECTED);
    Lazy::force(&QUEUE_CLASS_WAIT);
    Lazy::force(&QUEUE_CLASS_DEPTH);
    Lazy::force(&QUEUE_CLASS_IN_FLIGHT);
    Lazy::force(&QUEUE_CLASS_OLDEST_WAIT);
    Lazy::force(&QUEUE_CLASS_DRAIN);
    Lazy::force(&CONCURRENCY_LIMIT);
    Lazy::force(&CONCURRENCY_LATENCY);
    Lazy::force(&CONCURRENCY_DECISIONS);
    Lazy::force(&LLM_TOKENS);
    Lazy::force(&TOKENS);
    Lazy::force(&ACCESS_LOG_DROPPED);
    Lazy::force(&COST);
    Lazy::force(&BUDGET_REFUSED);
    Lazy::force(&BUDGET_STORE_ERRORS);
    Lazy::force(&PLUGIN_ERRORS);
    CONFIG_RELOADS.with_label_values(&["ok"]);
    CONFIG_RELOADS.with_label_values(&["error"]);
    Lazy::force(&CONFIG_GENERATION);
    Lazy::force(&RATE_LIMITED);
    Lazy::force(&RATE_LIMIT_STORE_ERRORS);
    Lazy::force(&RATE_LIMIT_KEYS);
    Lazy::force(&CIRCUIT_STATE);
    Lazy::force(&CIRCUIT_TRANSITIONS);
    Lazy::force(&CIRCUIT_OPEN_SECONDS);
    Lazy::force(&RETRIES);
    Lazy::force(&STREAM_RECOVERIES);
    Lazy::force(&PROVIDER_HEALTHY);
    Lazy::force(&CACHE_LOOKUPS);
    Lazy::force(&CACHE_EVICTIONS);
    Lazy::force(&CACHE_COALESCED);
    Lazy::force(&CACHE_STORE_ERRORS);
    Lazy::force(&CACHE_BYTES);
    Lazy::force(&CACHE_ENTRIES);
    Lazy::force(&WASM_METRIC);
    Lazy::force(&WASM_HISTOGRAM);
    Lazy::force(&WASM_VM_RESTARTS);
    Lazy::force(&WASM_VMS);
    Lazy::force(&WASM_HTTP_CALLS);
}

/// Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    init();
    let mut out = Vec::with_capacity(16 * 1024);
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
