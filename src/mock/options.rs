//! The command line of `weir mock`, and the valid range of each value (the
//! same checks guard `POST /mock/config`).

use std::time::Duration;

use http::HeaderName;

/// Run a mock OpenAI-compatible provider (options of `weir mock`).
#[derive(Debug, Clone, clap::Args)]
pub struct MockOptions {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Time to first token (e.g. 50ms)
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub ttft: Duration,
    /// Completion tokens per second when streaming/generating (0 = instant)
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Completion tokens in each answer
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u32,
    /// Share of requests that fail (0.0..=1.0)
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Status of an injected failure
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,
    /// Models served, comma separated; others get 404 (empty = any model)
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Serve TLS with this PEM certificate chain
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// PEM private key matching --tls-cert
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Worker threads
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Inject a fault into every API request (SPEC) or into requests for one
    /// model (MODEL=SPEC, when no `:` precedes the first `=`); repeatable.
    /// SPEC is NAME or NAME:key=value,... (see README, `weir mock`)
    #[arg(long = "fault", value_name = "[MODEL=]SPEC")]
    pub faults: Vec<String>,
    /// Request header carrying a fault SPEC for that request (wins over --fault)
    #[arg(long, default_value = DEFAULT_FAULT_HEADER)]
    pub fault_header: String,
    /// Gzip 200 answers (JSON and streams): `--gzip` when the request's
    /// Accept-Encoding allows gzip, `--gzip=always` whatever it says
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "requested")]
    pub gzip: Option<Gzip>,
    /// Write server-sent events with CRLF line ends
    #[arg(long)]
    pub crlf: bool,
    /// Concurrent requests in service; more wait in a queue, past it 429 (0 = unlimited)
    #[arg(long, default_value_t = 0)]
    pub capacity: u32,
    /// Requests that may wait for a slot (default: 4 × --capacity)
    #[arg(long)]
    pub queue: Option<u32>,
    /// Requests in service past which latency grows (default: --capacity; 0 = never)
    #[arg(long)]
    pub knee: Option<u32>,
    /// How fast latency grows past the knee: times
    /// `1 + max(0, in_service − knee) / knee × slope`
    #[arg(long, default_value_t = 1.0)]
    pub slope: f64,
    /// Which API it speaks: both by path (`/chat/completions` and the rest
    /// of OpenAI's, `/messages` Anthropic's), or only one of them
    #[arg(long, value_enum, default_value_t = Flavor::Both)]
    pub flavor: Flavor,
}

/// Which provider the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// OpenAI's API and Anthropic's Messages API, each on its own paths.
    Both,
    /// Only OpenAI's API (`/messages` is a 404).
    Openai,
    /// Only Anthropic's Messages API (OpenAI's paths are 404s).
    Anthropic,
}

/// When `--gzip` compresses an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Gzip {
    /// When the request's `Accept-Encoding` allows gzip.
    Requested,
    /// Always, as a provider that ignores `Accept-Encoding` would.
    Always,
}

/// The header a client names a fault in, unless `--fault-header` says otherwise.
pub(super) const DEFAULT_FAULT_HEADER: &str = "x-mock-fault";

impl Default for MockOptions {
    /// The same values as the command line defaults.
    fn default() -> Self {
        MockOptions {
            listen: "127.0.0.1:9000".to_string(),
            ttft: Duration::ZERO,
            tokens_per_sec: 0.0,
            completion_tokens: 16,
            fail_rate: 0.0,
            fail_status: 503,
            models: Vec::new(),
            tls_cert: None,
            tls_key: None,
            threads: 1,
            faults: Vec::new(),
            fault_header: DEFAULT_FAULT_HEADER.to_string(),
            gzip: None,
            crlf: false,
            capacity: 0,
            queue: None,
            knee: None,
            slope: 1.0,
            flavor: Flavor::Both,
        }
    }
}

/// Parse a human readable duration such as `50ms`, `1s` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

/// Check the options up front, so a bad value is a readable error rather
/// than a panic inside Pingora once the server starts. (The `--fault` specs
/// are parsed, and checked, where the application is built.)
pub(super) fn validate_options(opts: &MockOptions) -> Result<(), String> {
    crate::listen::resolve(&opts.listen)?;
    fault_header_name(&opts.fault_header)?;
    check_fail_rate(opts.fail_rate)?;
    check_fail_status(u64::from(opts.fail_status))?;
    check_tokens_per_sec(opts.tokens_per_sec)?;
    check_slope(opts.slope)?;
    for (name, value) in [("--queue", opts.queue), ("--knee", opts.knee)] {
        if value == Some(u32::MAX) {
            return Err(format!("{name} is too large: {}", u32::MAX));
        }
    }
    if opts.threads == 0 {
        return Err("--threads must be at least 1".to_string());
    }
    Ok(())
}

/// The `--fault-header` name as a header name (lower-cased).
pub(super) fn fault_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("--fault-header `{name}` is not a valid header name"))
}

/// A failure share within `0.0..=1.0`.
pub(super) fn check_fail_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("fail_rate must be between 0.0 and 1.0, got {rate}"))
    }
}

/// A status that an injected failure can carry.
pub(super) fn check_fail_status(status: u64) -> Result<u16, String> {
    // Only final error statuses make sense: a 1xx would break HTTP framing and
    // a 2xx/3xx is not a failure.
    match u16::try_from(status) {
        Ok(s) if (400..=599).contains(&s) => Ok(s),
        _ => Err(format!("fail_status must be within 400..=599, got {status}")),
    }
}

/// A finite, non-negative token rate (0 = instant).
pub(super) fn check_tokens_per_sec(tps: f64) -> Result<f64, String> {
    if tps.is_finite() && tps >= 0.0 {
        Ok(tps)
    } else {
        Err(format!("tokens_per_sec must be >= 0, got {tps}"))
    }
}

/// The steepest slope of latency past the knee: steep enough for any test,
/// and far from the factor overflowing a delay.
const MAX_SLOPE: f64 = 1000.0;

/// A slope of latency past the knee within `0.0..=1000.0`.
pub(super) fn check_slope(slope: f64) -> Result<f64, String> {
    if slope.is_finite() && (0.0..=MAX_SLOPE).contains(&slope) {
        Ok(slope)
    } else {
        Err(format!("slope must be between 0 and {MAX_SLOPE}, got {slope}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn fault_header_names() {
        assert_eq!(
            fault_header_name("X-Fault-A").map(|h| h.to_string()),
            Ok("x-fault-a".to_string())
        );
        assert!(fault_header_name("bad header").is_err());
        assert!(fault_header_name("").is_err());
    }
}
