//! The config file's schema: plain serde types, nothing built. A plugin's
//! own settings stay opaque here ([`PluginConf::settings`]).

use super::units::{Dur, Priority, Share, Size};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConf,
    #[serde(default)]
    pub admin: Option<AdminConf>,
    pub providers: IndexMap<String, ProviderConf>,
    #[serde(default)]
    pub plugins: IndexMap<String, PluginConf>,
    pub routes: Vec<RouteConf>,
    /// One JSON line per request (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConf>,
    /// OpenTelemetry traces over OTLP/HTTP (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConf>,
    /// Where the config was read from (not a field of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The access log: where its lines go, and whether they carry prompts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConf {
    /// `stdout`, or a file appended to (made if missing).
    #[serde(default = "default_access_log_to")]
    pub to: String,
    /// Add the request body as the client sent it (up to 64 KiB). Off by
    /// default: a prompt is the client's data, not weir's to keep.
    #[serde(default)]
    pub prompts: bool,
}

/// Traces: where they go, and how many requests are traced.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConf {
    /// The collector's OTLP/HTTP endpoint, `http://host:4318` (`/v1/traces`
    /// is added unless the path already ends with it).
    pub endpoint: String,
    /// Share of requests traced when the client sent no sampled
    /// `traceparent` (0.0 to 1.0). A client's sampling decision is followed.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// `service.name` of the resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Headers sent with each export (a vendor's API key, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long an export may take.
    #[serde(default = "default_export_timeout")]
    pub timeout: Dur,
    /// How often finished spans are sent.
    #[serde(default = "default_export_interval")]
    pub interval: Dur,
    /// Finished spans held for export at most; past it spans are dropped.
    #[serde(default = "default_trace_queue")]
    pub queue: usize,
}

fn default_sample() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "weir".into()
}
fn default_export_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_export_interval() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_trace_queue() -> usize {
    4096
}

fn default_access_log_to() -> String {
    "stdout".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConf {
    pub listen: Vec<String>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_request_body: Size,
    /// Bounds on what a client may make weir wait for.
    #[serde(default)]
    pub timeouts: ClientTimeouts,
    /// Client connections each listener holds at once; past it a new
    /// connection gets 503 and is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGTERM: listeners close at once, requests in flight (streams
    /// included) get this long to finish; weir exits as soon as they have.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
}

fn default_max_connections() -> usize {
    10_000
}

fn default_shutdown_grace() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// How long weir waits on a client. A client that stalls past these loses
/// its connection, and with it any slot its request held.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    /// The whole request header, from its first byte (a new connection's
    /// from the accept) to its end.
    #[serde(default = "d_request_headers")]
    pub request_headers: Dur,
    /// The whole request body, from the first byte read to the last.
    #[serde(default = "d_request_body")]
    pub request_body: Dur,
    /// Longest a write to the client may wait for it to read (between
    /// bytes accepted, not the whole response: long streams are fine).
    #[serde(default = "d_client_write")]
    pub client_write: Dur,
    /// Longest a kept-alive connection may wait idle for its next request.
    #[serde(default = "d_keepalive_idle")]
    pub keepalive_idle: Dur,
}

fn d_request_headers() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn d_request_body() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn d_client_write() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn d_keepalive_idle() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            request_headers: d_request_headers(),
            request_body: d_request_body(),
            client_write: d_client_write(),
            keepalive_idle: d_keepalive_idle(),
        }
    }
}

fn default_threads() -> usize {
    2
}
fn default_max_body() -> Size {
    Size(8 * 1024 * 1024)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConf {
    pub listen: String,
    /// Bearer token every endpoint but `/healthz` and `/readyz` requires.
    /// Without one the admin API is open and must listen on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Serve `/metrics` without the token (for a scraper that has none).
    #[serde(default)]
    pub metrics_open: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConf {
    /// Base URL, e.g. `https://api.openai.com/v1` or `https://api.anthropic.com/v1`.
    pub url: String,
    /// The wire format the provider speaks (`openai`, the default, or `anthropic`).
    #[serde(default)]
    pub kind: ProviderKind,
    /// `anthropic-version` sent to an `anthropic` provider.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// Never shown: `/config` goes through `config::redact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    pub models: Models,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub bulkhead: Option<BulkheadConf>,
    /// Adaptive concurrency: the bulkhead's `max_concurrent` becomes a
    /// ceiling and the live limit follows what the provider shows (off
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConf>,
    #[serde(default)]
    pub timeouts: TimeoutsConf,
    #[serde(default)]
    pub health_check: Option<HealthCheckConf>,
    #[serde(default)]
    pub tls: TlsConf,
    /// Forward the client's own `Authorization` header (off by default).
    #[serde(default)]
    pub forward_client_auth: bool,
    /// Forward the client's `OpenAI-Organization` / `OpenAI-Project` headers,
    /// which pick what the operator's key bills (off by default).
    #[serde(default)]
    pub forward_client_org: bool,
    /// Whether this provider may continue another provider's stream that
    /// died mid-answer (`prefill`: it is sent the text so far as an
    /// assistant message and continues it).
    #[serde(default)]
    pub continuation: Continuation,
    /// Public model name -> its prices here, per million tokens (any
    /// currency, as long as budgets use the same one).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub prices: IndexMap<String, PriceConf>,
}

/// A model's prices at one provider, per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConf {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Prompt tokens read from the provider's prompt cache; `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

/// A provider's wire format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI's (chat completions and the rest of `/v1`).
    #[default]
    Openai,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
}

fn default_anthropic_version() -> String {
    "2023-06-01".into()
}

/// How a provider can take over a stream that died elsewhere.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Continuation {
    /// Never used to continue a stream.
    #[default]
    None,
    /// Continues from an assistant message holding the text streamed so far.
    Prefill,
}

fn default_weight() -> u32 {
    1
}

/// Models a provider serves: a list, or a map of public alias -> upstream name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Models {
    List(Vec<String>),
    Map(IndexMap<String, String>),
}

impl Models {
    /// (public name, upstream name) pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Models::List(v) => v.iter().map(|m| (m.clone(), m.clone())).collect(),
            Models::Map(m) => m.iter().map(|(a, u)| (a.clone(), u.clone())).collect(),
        }
    }
}

/// A bulkhead: bounded in progress, bounded wait queue, served by priority
/// class and fairly between keys within a class.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConf {
    pub max_concurrent: usize,
    pub queue: usize,
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
    /// Refuse an arrival at once when the oldest waiter of its class has
    /// waited longer than this (a class may set its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_age: Option<Dur>,
    /// Settings per priority class (`critical`, `standard`, `batch` or a number).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<Priority, ClassConf>,
    /// CoDel-style shedding: when a class's oldest waiter has waited longer
    /// than `target` for `interval`, its newest waiters are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shed: Option<ShedConf>,
}

/// One priority class in a bulkhead.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConf {
    /// Slots of `max_concurrent` only this class may use (`25%` or a count);
    /// scaled down with an adaptive limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Share>,
    /// This class's waiters give up after this (the bulkhead's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Dur>,
    /// This class's `max_queue_age` (the bulkhead's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_age: Option<Dur>,
}

/// CoDel-style shedding by queue age.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShedConf {
    /// Queue age a class should stay under.
    pub target: Dur,
    /// How long the oldest waiter may stay over `target` before shedding starts.
    #[serde(default = "default_shed_interval")]
    pub interval: Dur,
}

fn default_shed_interval() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

fn default_queue_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

impl BulkheadConf {
    /// A provider's bulkhead when none is configured.
    pub const PROVIDER_DEFAULT: BulkheadConf = BulkheadConf {
        max_concurrent: 256,
        queue: 1024,
        queue_timeout: Dur(std::time::Duration::from_secs(5)),
        max_queue_age: None,
        classes: BTreeMap::new(),
        shed: None,
    };
    /// A plugin's bulkhead when none is configured: never binds in normal
    /// use, yet still bounds memory.
    pub const PLUGIN_DEFAULT: BulkheadConf = BulkheadConf {
        max_concurrent: 10_000,
        queue: 10_000,
        queue_timeout: Dur(std::time::Duration::from_secs(30)),
        max_queue_age: None,
        classes: BTreeMap::new(),
        shed: None,
    };
}

/// The adaptive concurrency limit of a provider (`traffic::adaptive`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConf {
    /// The lowest the live limit goes.
    #[serde(default = "default_adaptive_floor")]
    pub floor: usize,
    /// The limit is multiplied by this on a decrease, in (0, 1).
    #[serde(default = "default_adaptive_backoff")]
    pub backoff: f64,
    /// Short-term latency (first token, per output token) over this many
    /// times its long-term baseline counts as overload; above 1.
    #[serde(default = "default_adaptive_tolerance")]
    pub tolerance: f64,
    /// `x-ratelimit-remaining-requests` at or below this counts as full.
    #[serde(default)]
    pub min_remaining: u64,
}

impl Default for AdaptiveConf {
    fn default() -> Self {
        AdaptiveConf {
            floor: default_adaptive_floor(),
            backoff: default_adaptive_backoff(),
            tolerance: default_adaptive_tolerance(),
            min_remaining: 0,
        }
    }
}

fn default_adaptive_floor() -> usize {
    2
}

fn default_adaptive_backoff() -> f64 {
    0.8
}

fn default_adaptive_tolerance() -> f64 {
    2.0
}

/// How long weir waits on a provider, by step of an LLM answer.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConf {
    #[serde(default = "d_connect")]
    pub connect: Dur,
    /// From sending the request to the first token: on a stream the first
    /// content delta (not the response header, which providers send at
    /// once), otherwise the response header. `first_byte` is its old name.
    #[serde(default = "d_first_token", alias = "first_byte")]
    pub first_token: Dur,
    /// Longest gap between two chunks of a stream, once content flows.
    #[serde(default = "d_stream_idle")]
    pub stream_idle: Dur,
    /// Longest gap while writing the request or reading a non-stream body.
    #[serde(default = "d_idle")]
    pub idle: Dur,
}

fn d_connect() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn d_first_token() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn d_stream_idle() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn d_idle() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

impl Default for TimeoutsConf {
    fn default() -> Self {
        TimeoutsConf {
            connect: d_connect(),
            first_token: d_first_token(),
            stream_idle: d_stream_idle(),
            idle: d_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConf {
    #[serde(default = "d_hc_path")]
    pub path: String,
    #[serde(default = "d_hc_interval")]
    pub interval: Dur,
}

fn d_hc_path() -> String {
    "/models".into()
}
fn d_hc_interval() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// Upstream TLS settings (https providers).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConf {
    /// PEM file of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Server name to send and verify; defaults to the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Skip certificate verification (tests only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A plugin instance as config knows it: its type's name, its bulkhead, and
/// its own settings, kept opaque. Only the plugin type's factory (see
/// `plugins::registry`) reads `settings`; errors it finds are still located,
/// because fields are named by path (`plugins.NAME.FIELD`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PluginConf {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadConf>,
    /// Every other field of the plugin's entry.
    #[serde(flatten)]
    pub settings: serde_yaml_ng::Mapping,
}

impl PluginConf {
    /// The plugin's bulkhead, or the default that never binds in normal use.
    pub fn bulkhead(&self) -> BulkheadConf {
        self.bulkhead.clone().unwrap_or(BulkheadConf::PLUGIN_DEFAULT)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchConf,
    #[serde(default)]
    pub plugins: Vec<String>,
    pub providers: Vec<String>,
    /// The old way to ask for failover: `retries: N` is `retry: {attempts:
    /// N+1, per_provider: 1, order: next_first}`. Not together with `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// When and where a failed attempt is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConf>,
    /// A model whose provider answered `context_length_exceeded` -> a model
    /// with a larger context to send the request to instead.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub context_fallbacks: IndexMap<String, String>,
    /// Paths forwarded as they are besides the LLM endpoints weir reads
    /// (`/files`, `/batches`, …): no model checks, no token reservation.
    #[serde(default)]
    pub passthrough: Vec<PassthroughConf>,
}

/// A route's retry policy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConf {
    /// Sends in all, the first included.
    #[serde(default = "d_attempts")]
    pub attempts: u32,
    /// Sends to any one provider.
    #[serde(default = "d_per_provider")]
    pub per_provider: u32,
    /// Outcomes that are tried again: `connect_error`, `reset`, `timeout`,
    /// and statuses (`429`, `500`, ...).
    #[serde(default = "d_retry_on")]
    pub on: Vec<RetryOn>,
    /// After a 429/5xx or a reset: the same provider again first, or the next.
    #[serde(default)]
    pub order: RetryOrder,
    /// Backoff before sending to the same provider again: doubles from
    /// `backoff_base` up to `backoff_max`, with jitter.
    #[serde(default = "d_backoff_base")]
    pub backoff_base: Dur,
    #[serde(default = "d_backoff_max")]
    pub backoff_max: Dur,
    /// Longest `Retry-After` a request waits out for a provider; a longer
    /// one takes that provider out of this request.
    #[serde(default = "d_max_retry_after")]
    pub max_retry_after: Dur,
    /// No retry starts, and no wait ends, later than this after the first send.
    #[serde(default = "d_retry_deadline")]
    pub deadline: Dur,
}

/// An outcome a retry policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectError,
    Reset,
    Timeout,
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u16),
            Str(String),
        }
        let bad = |s: &str| {
            serde::de::Error::custom(format!(
                "'{s}' is not a retry outcome (connect_error, reset, timeout, or a status 400..=599)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Num(n) if (400..=599).contains(&n) => Ok(RetryOn::Status(n)),
            Raw::Num(n) => Err(bad(&n.to_string())),
            Raw::Str(s) => match s.as_str() {
                "connect_error" => Ok(RetryOn::ConnectError),
                "reset" => Ok(RetryOn::Reset),
                "timeout" => Ok(RetryOn::Timeout),
                other => match other.parse::<u16>() {
                    Ok(n) if (400..=599).contains(&n) => Ok(RetryOn::Status(n)),
                    _ => Err(bad(other)),
                },
            },
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::ConnectError => s.serialize_str("connect_error"),
            RetryOn::Reset => s.serialize_str("reset"),
            RetryOn::Timeout => s.serialize_str("timeout"),
            RetryOn::Status(n) => s.serialize_u16(*n),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryOrder {
    #[default]
    SameFirst,
    NextFirst,
}

fn d_attempts() -> u32 {
    3
}
fn d_per_provider() -> u32 {
    2
}
fn d_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectError,
        RetryOn::Reset,
        RetryOn::Timeout,
        RetryOn::Status(429),
        RetryOn::Status(500),
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
fn d_backoff_base() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}
fn d_backoff_max() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn d_max_retry_after() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn d_retry_deadline() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

impl Default for RetryConf {
    fn default() -> Self {
        RetryConf {
            attempts: d_attempts(),
            per_provider: d_per_provider(),
            on: d_retry_on(),
            order: RetryOrder::default(),
            backoff_base: d_backoff_base(),
            backoff_max: d_backoff_max(),
            max_retry_after: d_max_retry_after(),
            deadline: d_retry_deadline(),
        }
    }
}

impl RouteConf {
    /// The route's retry policy: `retry`, the old `retries`, or the default.
    pub fn retry_policy(&self) -> RetryConf {
        match (&self.retry, self.retries) {
            (Some(r), _) => r.clone(),
            (None, Some(n)) => RetryConf {
                attempts: n.saturating_add(1),
                per_provider: 1,
                order: RetryOrder::NextFirst,
                ..RetryConf::default()
            },
            (None, None) => RetryConf::default(),
        }
    }
}

/// A path (or prefix) and methods forwarded to providers unread.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConf {
    pub path_prefix: String,
    /// Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConf {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}
