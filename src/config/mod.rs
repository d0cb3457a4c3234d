//! The config file: YAML schema, `${VAR}` expansion, and validation whose
//! errors name file, line and field. `load` gives a checked [`Config`];
//! [`crate::runtime`] compiles it into what serves requests.

pub mod locate;
pub mod units;

use crate::plugins::api_key::ApiKeyConf;
use crate::plugins::cache::CacheConf;
use crate::plugins::circuit_breaker::CircuitBreakerConf;
use crate::plugins::least_connections::LeastConnectionsConf;
use crate::plugins::rate_limit::RateLimitConf;
use crate::wasm::WasmConf;
use indexmap::IndexMap;
use locate::LineIndex;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
pub use units::{Dur, Size};

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
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub token: Option<String>,
}

/// Secrets never leave through `/config`.
fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConf {
    /// OpenAI base URL, e.g. `https://api.openai.com/v1`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact")]
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

    pub fn limits(&self) -> crate::bulkhead::Limits {
        crate::bulkhead::Limits {
            max_concurrent: self.max_concurrent,
            queue: self.queue,
            queue_timeout: self.queue_timeout.0,
        }
    }
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

/// A plugin instance: its type-specific settings and its bulkhead.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginConf {
    ApiKey(ApiKeyConf),
    RateLimit(RateLimitConf),
    CircuitBreaker(CircuitBreakerConf),
    LeastConnections(LeastConnectionsConf),
    Cache(CacheConf),
    Wasm(WasmConf),
}

impl PluginConf {
    pub fn type_name(&self) -> &'static str {
        match self {
            PluginConf::ApiKey(_) => "api_key",
            PluginConf::RateLimit(_) => "rate_limit",
            PluginConf::CircuitBreaker(_) => "circuit_breaker",
            PluginConf::LeastConnections(_) => "least_connections",
            PluginConf::Cache(_) => "cache",
            PluginConf::Wasm(_) => "wasm",
        }
    }

    pub fn bulkhead(&self) -> BulkheadConf {
        let b = match self {
            PluginConf::ApiKey(c) => c.bulkhead,
            PluginConf::RateLimit(c) => c.bulkhead,
            PluginConf::CircuitBreaker(c) => c.bulkhead,
            PluginConf::LeastConnections(c) => c.bulkhead,
            PluginConf::Cache(c) => c.bulkhead,
            PluginConf::Wasm(c) => c.bulkhead,
        };
        b.unwrap_or(BulkheadConf::PLUGIN_DEFAULT)
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

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects located errors while checking a parsed config.
pub struct Checker<'a> {
    file: &'a Path,
    index: &'a LineIndex,
    pub errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path, index: &'a LineIndex) -> Self {
        Checker {
            file,
            index,
            errors: Vec::new(),
        }
    }

    /// Record an error at `field` (a path such as `routes[0].plugins[1]`).
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: self.index.line_of(&field),
            field,
            message: message.into(),
        });
    }

    /// Resolve a path named in the config relative to the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_relative(self.file, p)
    }
}

/// A path named in a config, relative to the working directory if it exists
/// there, else to the config file's folder.
pub fn resolve_relative(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

/// Replace `${VAR}` with the environment's value (comments skipped; `$${` is a
/// literal `${`). An unset variable is an error at its line.
fn expand_env(text: &str, file: &Path, index: &LineIndex) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut in_quote: Option<char> = None;
        let mut i = 0;
        let bytes = rest.as_bytes();
        // Find where a comment starts (a '#' outside quotes, at line start or after space).
        let mut comment_at = None;
        while i < bytes.len() {
            let c = bytes[i] as char;
            match in_quote {
                Some(q) if c == q => in_quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => in_quote = Some(c),
                None if c == '#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                    comment_at = Some(i);
                    break;
                }
                None => {}
            }
            i += 1;
        }
        let (body, comment) = rest.split_at(comment_at.unwrap_or(rest.len()));
        rest = body;
        while let Some(start) = rest.find("${") {
            if start > 0 && rest.as_bytes()[start - 1] == b'$' {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let name = &rest[start + 2..start + end];
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => errors.push(ConfigError {
                    file: file.to_path_buf(),
                    line: Some(n + 1),
                    field: index.path_at(n + 1).unwrap_or("").to_string(),
                    message: format!("environment variable {name} is not set"),
                }),
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Format a serde path the way the line index spells it.
fn path_string(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut s = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => s.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(key)
            }
            Segment::Enum { variant } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(variant)
            }
            Segment::Unknown => {}
        }
    }
    s
}

/// Parse config text (already read from `file`) and check it.
pub fn parse(text: &str, file: &Path) -> Result<(Config, LineIndex), ConfigErrors> {
    let index = LineIndex::build(text);
    if !index.duplicates.is_empty() {
        return Err(ConfigErrors(
            index
                .duplicates
                .iter()
                .map(|(path, line, first)| ConfigError {
                    file: file.to_path_buf(),
                    line: Some(*line),
                    field: path.clone(),
                    message: format!("duplicate name (first defined at line {first})"),
                })
                .collect(),
        ));
    }
    let expanded = expand_env(text, file, &index).map_err(ConfigErrors)?;
    let de = serde_yaml_ng::Deserializer::from_str(&expanded);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = path_string(e.path());
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line()).or_else(|| index.line_of(&field));
        // serde_yaml's message repeats the path and location; keep the core.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        if let Some((prefix, rest)) = message.split_once(": ") {
            if field.starts_with(prefix) {
                message = rest.to_string();
            }
        }
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line,
            field,
            message,
        }])
    })?;
    config.source = file.to_path_buf();
    let mut ck = Checker::new(file, &index);
    config.check(&mut ck);
    if ck.errors.is_empty() {
        Ok((config, index))
    } else {
        Err(ConfigErrors(ck.errors))
    }
}

/// Read, parse and check a config file.
pub fn load(file: &Path) -> Result<(Config, LineIndex), ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read config: {e}"),
        }])
    })?;
    parse(&text, file)
}

impl Config {
    /// Semantic checks: references, addresses, limits.
    fn check(&self, ck: &mut Checker) {
        if self.server.listen.is_empty() {
            ck.error("server.listen", "at least one listen address is required");
        }
        for (i, l) in self.server.listen.iter().enumerate() {
            if l.parse::<std::net::SocketAddr>().is_err() {
                ck.error(
                    format!("server.listen[{i}]"),
                    format!("'{l}' is not an address like 0.0.0.0:8080"),
                );
            }
        }
        if self.server.threads == 0 {
            ck.error("server.threads", "must be at least 1");
        }
        if let Some(a) = &self.admin {
            if a.listen.parse::<std::net::SocketAddr>().is_err() {
                ck.error(
                    "admin.listen",
                    format!("'{}' is not an address like 127.0.0.1:9901", a.listen),
                );
            }
        }
        if self.providers.is_empty() {
            ck.error("providers", "at least one provider is required");
        }
        for (name, p) in &self.providers {
            let at = format!("providers.{name}");
            if let Err(e) = crate::provider::Endpoint::parse(&p.url) {
                ck.error(format!("{at}.url"), e);
            }
            if p.models.pairs().is_empty() {
                ck.error(format!("{at}.models"), "at least one model is required");
            }
            if let Some(b) = &p.bulkhead {
                check_bulkhead(ck, &format!("{at}.bulkhead"), b);
            }
            if let Some(ca) = &p.tls.ca_file {
                if let Err(e) = crate::provider::load_ca(&ck.resolve(ca)) {
                    ck.error(format!("{at}.tls.ca_file"), e);
                }
            }
        }
        for (name, p) in &self.plugins {
            let at = format!("plugins.{name}");
            let b = p.bulkhead();
            check_bulkhead(ck, &format!("{at}.bulkhead"), &b);
            crate::plugins::check(p, &at, ck);
        }
        let mut route_names = std::collections::HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Some(first) = route_names.insert(r.name.as_str(), i) {
                ck.error(
                    format!("{at}.name"),
                    format!("duplicate name '{}' (also routes[{first}])", r.name),
                );
            }
            for (j, p) in r.plugins.iter().enumerate() {
                if !self.plugins.contains_key(p) {
                    ck.error(format!("{at}.plugins[{j}]"), format!("unknown plugin '{p}'"));
                }
            }
            if r.providers.is_empty() {
                ck.error(format!("{at}.providers"), "at least one provider is required");
            }
            for (j, p) in r.providers.iter().enumerate() {
                if !self.providers.contains_key(p) {
                    ck.error(format!("{at}.providers[{j}]"), format!("unknown provider '{p}'"));
                }
            }
            for (j, m) in r.matcher.methods.iter().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    ck.error(
                        format!("{at}.match.methods[{j}]"),
                        format!("'{m}' is not an HTTP method"),
                    );
                }
            }
            for (j, (h, _)) in r.matcher.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    ck.error(
                        format!("{at}.match.headers"),
                        format!("'{h}' (entry {j}) is not a header name"),
                    );
                }
            }
            if let Some(p) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) {
                if !p.starts_with('/') {
                    ck.error(format!("{at}.match"), format!("path '{p}' must start with '/'"));
                }
            }
        }
        if self.routes.is_empty() {
            ck.error("routes", "at least one route is required");
        }
    }
}

fn check_bulkhead(ck: &mut Checker, at: &str, b: &BulkheadConf) {
    if b.max_concurrent == 0 {
        ck.error(format!("{at}.max_concurrent"), "must be at least 1");
    }
    if b.queue_timeout.0.is_zero() && b.queue > 0 {
        ck.error(format!("{at}.queue_timeout"), "must be above zero when queue > 0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server:
  listen: ["127.0.0.1:8080"]
providers:
  a:
    url: http://127.0.0.1:9000/v1
    models: { pub: up }
routes:
  - name: chat
    match: { path_prefix: /v1/ }
    providers: [a]
"#;

    fn err(text: &str) -> ConfigError {
        match parse(text, Path::new("t.yaml")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.0[0].clone(),
        }
    }

    #[test]
    fn good_config_parses() {
        let (c, _) = parse(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.server.max_request_body, Size(8 * 1024 * 1024));
        assert_eq!(c.providers["a"].models.pairs(), vec![("pub".into(), "up".into())]);
    }

    #[test]
    fn unknown_field_named_with_line() {
        let e = err(&GOOD.replace("    models:", "    colour: red\n    models:"));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert_eq!(e.field, "providers.a.colour");
    }

    #[test]
    fn unknown_provider_reference() {
        let e = err(&GOOD.replace("providers: [a]", "providers: [a, b]"));
        assert_eq!(e.field, "routes[0].providers[1]");
        assert_eq!(e.line, Some(11));
        assert!(e
            .to_string()
            .starts_with("t.yaml:11: routes[0].providers[1]: unknown provider 'b'"));
    }

    #[test]
    fn missing_env_var() {
        let e = err(&GOOD.replace("models:", "api_key: ${WEIR_SURELY_UNSET_VAR}\n    models:"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.field, "providers.a.api_key");
        assert!(e.message.contains("WEIR_SURELY_UNSET_VAR"));
    }

    #[test]
    fn env_var_expands_and_comments_are_skipped() {
        std::env::set_var("WEIR_TEST_KEY_X", "sk-123");
        let t = GOOD.replace(
            "models:",
            "api_key: ${WEIR_TEST_KEY_X} # not ${UNSET_IN_COMMENT}\n    models:",
        );
        let (c, _) = parse(&t, Path::new("t.yaml")).unwrap();
        assert_eq!(c.providers["a"].api_key.as_deref(), Some("sk-123"));
    }

    #[test]
    fn bad_duration() {
        let t = GOOD.replace(
            "models:",
            "bulkhead: { max_concurrent: 1, queue: 1, queue_timeout: 2 fortnights }\n    models:",
        );
        let e = err(&t);
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.field.starts_with("providers.a.bulkhead"), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn duplicate_provider_name() {
        let t = GOOD.replace(
            "routes:",
            "  a:\n    url: http://127.0.0.1:1/v1\n    models: [x]\nroutes:",
        );
        let e = err(&t);
        assert_eq!(e.field, "providers.a");
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("duplicate"));
    }
}
