//! The config file's schema: plain serde types, nothing built. A plugin's
//! own settings stay opaque here ([`PluginConf::settings`]).

use super::units::{Dur, Size};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
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
    /// Where the config was read from (not a field of the file).
    #[serde(skip)]
    pub source: PathBuf,
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
}

fn default_max_connections() -> usize {
    10_000
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
    /// OpenAI base URL, e.g. `https://api.openai.com/v1`.
    pub url: String,
    /// Never shown: `/config` goes through `config::redact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    pub models: Models,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub bulkhead: Option<BulkheadConf>,
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConf {
    pub max_concurrent: usize,
    pub queue: usize,
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
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
    };
    /// A plugin's bulkhead when none is configured: never binds in normal
    /// use, yet still bounds memory.
    pub const PLUGIN_DEFAULT: BulkheadConf = BulkheadConf {
        max_concurrent: 10_000,
        queue: 10_000,
        queue_timeout: Dur(std::time::Duration::from_secs(30)),
    };
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConf {
    #[serde(default = "d_connect")]
    pub connect: Dur,
    #[serde(default = "d_first_byte")]
    pub first_byte: Dur,
    #[serde(default = "d_idle")]
    pub idle: Dur,
}

fn d_connect() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn d_first_byte() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn d_idle() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

impl Default for TimeoutsConf {
    fn default() -> Self {
        TimeoutsConf {
            connect: d_connect(),
            first_byte: d_first_byte(),
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
        self.bulkhead.unwrap_or(BulkheadConf::PLUGIN_DEFAULT)
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
    #[serde(default)]
    pub retries: u32,
    /// Paths forwarded as they are besides the LLM endpoints weir reads
    /// (`/files`, `/batches`, …): no model checks, no token reservation.
    #[serde(default)]
    pub passthrough: Vec<PassthroughConf>,
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
