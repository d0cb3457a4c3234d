//! The settings that `POST /mock/config` can change while the mock runs, and
//! the request counters behind `/mock/stats`.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::capacity::{Capacity, LimitsUpdate};
use super::faults::{CliFaults, FaultBook, FaultSpec};
use super::options::{check_fail_rate, check_fail_status, check_slope, check_tokens_per_sec, MockOptions};

/// Upper bound for any artificial delay, so a typo cannot park a request forever.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Seconds as a [`Duration`], clamped to `0..=MAX_DELAY`.
fn clamped_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(MAX_DELAY).min(MAX_DELAY)
}

/// A consistent snapshot of the live settings, taken once per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Settings {
    pub(super) fail_rate: f64,
    pub(super) fail_status: u16,
    pub(super) ttft: Duration,
    pub(super) tokens_per_sec: f64,
    pub(super) completion_tokens: u32,
}

impl Settings {
    /// Roll the dice for failure injection (no RNG call when it cannot fail).
    pub(super) fn should_fail(&self) -> bool {
        self.fail_rate >= 1.0 || (self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate)
    }

    /// Spacing between two streamed tokens, `None` when tokens are instant.
    pub(super) fn token_interval(&self) -> Option<Duration> {
        (self.tokens_per_sec > 0.0).then(|| clamped_secs(1.0 / self.tokens_per_sec))
    }

    /// How long a non-streamed answer of `tokens` tokens takes.
    pub(super) fn generation_time(&self, tokens: u32) -> Duration {
        (self.ttft + self.decode_time(tokens)).min(MAX_DELAY)
    }

    /// How long generating `tokens` tokens takes after the first one is due.
    pub(super) fn decode_time(&self, tokens: u32) -> Duration {
        if self.tokens_per_sec > 0.0 {
            clamped_secs(f64::from(tokens) / self.tokens_per_sec)
        } else {
            Duration::ZERO
        }
    }

    /// The settings of a request admitted into a load `slowdown` times
    /// slower: time to first token and per-token time multiplied (instant
    /// decoding stays instant).
    pub(super) fn slowed(self, slowdown: f64) -> Self {
        if slowdown <= 1.0 {
            return self;
        }
        Settings {
            ttft: clamped_secs(self.ttft.as_secs_f64() * slowdown),
            tokens_per_sec: self.tokens_per_sec / slowdown,
            ..self
        }
    }

    /// The settings as `GET /mock/config` shows them.
    pub(super) fn to_json(self) -> Value {
        json!({
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "ttft_ms": self.ttft.as_secs_f64() * 1000.0,
            "tokens_per_sec": self.tokens_per_sec,
            "completion_tokens": self.completion_tokens,
        })
    }
}

/// A change requested through `POST /mock/config`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ConfigUpdate {
    fail_rate: Option<f64>,
    fail_status: Option<u16>,
    ttft: Option<Duration>,
    tokens_per_sec: Option<f64>,
    completion_tokens: Option<u32>,
    limits: LimitsUpdate,
}

/// Parse and validate a `POST /mock/config` body. Unknown keys are rejected
/// so that a typo in a test fails loudly instead of silently doing nothing.
pub(super) fn parse_config_update(body: &[u8]) -> Result<ConfigUpdate, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "body must be a JSON object".to_string())?;
    let mut update = ConfigUpdate::default();
    for (key, v) in object {
        let number = || v.as_f64().ok_or_else(|| format!("`{key}` must be a number"));
        let integer = || {
            v.as_u64()
                .ok_or_else(|| format!("`{key}` must be a non-negative integer"))
        };
        let count = || {
            let n = integer()?;
            u32::try_from(n)
                .ok()
                .filter(|n| *n < u32::MAX)
                .ok_or_else(|| format!("{key} is too large: {n}"))
        };
        // `null` puts a limit back to following the capacity.
        let count_or_null = || if v.is_null() { Ok(None) } else { count().map(Some) };
        match key.as_str() {
            "fail_rate" => update.fail_rate = Some(check_fail_rate(number()?)?),
            "fail_status" => update.fail_status = Some(check_fail_status(integer()?)?),
            "ttft_ms" => {
                let ms = number()?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(format!("ttft_ms must be >= 0, got {ms}"));
                }
                update.ttft = Some(clamped_secs(ms / 1000.0));
            }
            "tokens_per_sec" => update.tokens_per_sec = Some(check_tokens_per_sec(number()?)?),
            "completion_tokens" => {
                let n = integer()?;
                let n = u32::try_from(n).map_err(|_| format!("completion_tokens is too large: {n}"))?;
                update.completion_tokens = Some(n);
            }
            "capacity" => update.limits.capacity = Some(count()?),
            "queue" => update.limits.queue = Some(count_or_null()?),
            "knee" => update.limits.knee = Some(count_or_null()?),
            "slope" => update.limits.slope = Some(check_slope(number()?)?),
            other => {
                return Err(format!(
                    "unknown setting `{other}` (known: fail_rate, fail_status, ttft_ms, \
                     tokens_per_sec, completion_tokens, capacity, queue, knee, slope)"
                ))
            }
        }
    }
    Ok(update)
}

/// Settings that can change at runtime plus counters, all lock-free so the
/// hot path never contends on a mutex (only a request carrying a fault spec
/// takes the lock of its counters, and with `--capacity` admission takes the
/// lock of the queue).
#[derive(Debug)]
pub(super) struct Behaviour {
    /// `f64` bit pattern.
    fail_rate: AtomicU64,
    fail_status: AtomicU16,
    ttft_us: AtomicU64,
    /// `f64` bit pattern.
    tokens_per_sec: AtomicU64,
    completion_tokens: AtomicU32,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    completions: AtomicU64,
    prefills: AtomicU64,
    /// Tokens generated: prompts read and completion tokens written.
    generated_prompt: AtomicU64,
    generated_completion: AtomicU64,
    next_id: AtomicU64,
    faults: FaultBook,
    capacity: Capacity,
}

impl Behaviour {
    /// Start from the command-line values, with zeroed counters.
    pub(super) fn new(opts: &MockOptions, faults: &CliFaults) -> Self {
        Behaviour {
            fail_rate: AtomicU64::new(opts.fail_rate.to_bits()),
            fail_status: AtomicU16::new(opts.fail_status),
            ttft_us: AtomicU64::new(duration_us(opts.ttft.min(MAX_DELAY))),
            tokens_per_sec: AtomicU64::new(opts.tokens_per_sec.to_bits()),
            completion_tokens: AtomicU32::new(opts.completion_tokens),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            prefills: AtomicU64::new(0),
            generated_prompt: AtomicU64::new(0),
            generated_completion: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            faults: FaultBook::new(faults, Instant::now()),
            capacity: Capacity::new(opts),
        }
    }

    /// Snapshot of the live settings.
    pub(super) fn settings(&self) -> Settings {
        Settings {
            fail_rate: f64::from_bits(self.fail_rate.load(Ordering::Relaxed)),
            fail_status: self.fail_status.load(Ordering::Relaxed),
            ttft: Duration::from_micros(self.ttft_us.load(Ordering::Relaxed)),
            tokens_per_sec: f64::from_bits(self.tokens_per_sec.load(Ordering::Relaxed)),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }

    /// Apply a validated `POST /mock/config` change.
    pub(super) fn apply(&self, update: &ConfigUpdate) {
        if let Some(rate) = update.fail_rate {
            self.fail_rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        if let Some(status) = update.fail_status {
            self.fail_status.store(status, Ordering::Relaxed);
        }
        if let Some(ttft) = update.ttft {
            self.ttft_us.store(duration_us(ttft), Ordering::Relaxed);
        }
        if let Some(tps) = update.tokens_per_sec {
            self.tokens_per_sec.store(tps.to_bits(), Ordering::Relaxed);
        }
        if let Some(n) = update.completion_tokens {
            self.completion_tokens.store(n, Ordering::Relaxed);
        }
        if update.limits != LimitsUpdate::default() {
            self.capacity.apply(&update.limits);
        }
    }

    /// The live settings and the capacity limits, as `GET /mock/config` shows them.
    pub(super) fn config_json(&self) -> Value {
        let mut config = self.settings().to_json();
        merge(&mut config, self.capacity.config_json());
        config
    }

    /// The slots of `--capacity`.
    pub(super) fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Count an API request; the returned guard keeps it in flight until dropped
    /// (also when the client goes away mid-answer).
    pub(super) fn begin_request(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Count a (chat) completion answered in full.
    pub(super) fn completed(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    /// A tally of the tokens one answer generates, added to the stats when
    /// it drops: whatever way the answer ends (a client gone mid-stream
    /// too), what was generated counts, with two atomic adds per answer
    /// rather than one per token.
    pub(super) fn generated(&self) -> Generated<'_> {
        Generated {
            behaviour: self,
            prompt: 0,
            completion: 0,
        }
    }

    /// Count a chat completion that continues an assistant prefill.
    pub(super) fn prefilled(&self) {
        self.prefills.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request carrying `spec`; whether its fault acts on this request.
    pub(super) fn record_fault(&self, spec: &FaultSpec) -> Result<bool, String> {
        self.faults.record(spec, Instant::now())
    }

    /// Serial number for the next answer's id.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The counters as `GET /mock/stats` shows them.
    pub(super) fn stats_json(&self) -> Value {
        let mut stats = json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "max_in_flight": self.max_in_flight.load(Ordering::Relaxed),
            "completions": self.completions.load(Ordering::Relaxed),
            "prefills": self.prefills.load(Ordering::Relaxed),
            "faults": self.faults.to_json(),
            "usage": {
                "prompt_tokens": self.generated_prompt.load(Ordering::Relaxed),
                "completion_tokens": self.generated_completion.load(Ordering::Relaxed),
            },
        });
        merge(&mut stats, self.capacity.stats_json());
        stats
    }

    /// Zero the counters. `in_flight` cannot be zeroed (the running requests
    /// still decrement it), so the high-water mark restarts from it instead.
    /// Fault specs are forgotten: `first=N` counts again, and `flap` windows
    /// restart (a command-line one from now).
    pub(super) fn reset_stats(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.completions.store(0, Ordering::Relaxed);
        self.prefills.store(0, Ordering::Relaxed);
        self.generated_prompt.store(0, Ordering::Relaxed);
        self.generated_completion.store(0, Ordering::Relaxed);
        self.faults.reset(Instant::now());
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        self.capacity.reset_stats();
    }
}

/// Add the fields of object `more` to object `into`.
fn merge(into: &mut Value, more: Value) {
    if let (Some(into), Value::Object(more)) = (into.as_object_mut(), more) {
        into.extend(more);
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Tokens one answer generated so far; see [`Behaviour::generated`].
pub(super) struct Generated<'a> {
    behaviour: &'a Behaviour,
    pub(super) prompt: u64,
    pub(super) completion: u64,
}

impl Drop for Generated<'_> {
    fn drop(&mut self) {
        if self.prompt > 0 {
            self.behaviour
                .generated_prompt
                .fetch_add(self.prompt, Ordering::Relaxed);
        }
        if self.completion > 0 {
            self.behaviour
                .generated_completion
                .fetch_add(self.completion, Ordering::Relaxed);
        }
    }
}

/// Guard of one in-flight API request.
pub(super) struct InFlight<'a>(&'a Behaviour);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_updates_validate() {
        let update = parse_config_update(br#"{"fail_rate": 1.0, "fail_status": 500, "ttft_ms": 10}"#).expect("valid");
        assert_eq!(
            update,
            ConfigUpdate {
                fail_rate: Some(1.0),
                fail_status: Some(500),
                ttft: Some(Duration::from_millis(10)),
                ..ConfigUpdate::default()
            }
        );
        assert!(parse_config_update(br#"{"fail_rate": 2}"#).is_err());
        assert!(parse_config_update(br#"{"fail_status": 200}"#).is_err());
        assert!(parse_config_update(br#"{"failrate": 0.5}"#).is_err());
        assert!(parse_config_update(b"nope").is_err());

        let behaviour = Behaviour::new(&MockOptions::default(), &CliFaults::default());
        behaviour.apply(&update);
        let settings = behaviour.settings();
        assert_eq!(settings.fail_rate, 1.0);
        assert_eq!(settings.fail_status, 500);
        assert_eq!(settings.ttft, Duration::from_millis(10));
        assert!(settings.should_fail());
    }

    #[test]
    fn capacity_updates_validate() {
        let update = parse_config_update(br#"{"capacity": 8, "queue": null, "knee": 4, "slope": 0.5}"#).expect("valid");
        assert_eq!(
            update.limits,
            LimitsUpdate {
                capacity: Some(8),
                queue: Some(None),
                knee: Some(Some(4)),
                slope: Some(0.5),
            }
        );
        assert!(parse_config_update(br#"{"capacity": -1}"#).is_err());
        assert!(parse_config_update(br#"{"capacity": null}"#).is_err());
        assert!(parse_config_update(br#"{"queue": 4294967295}"#).is_err());
        assert!(parse_config_update(br#"{"slope": -1}"#).is_err());
        assert!(parse_config_update(br#"{"knee": 1.5}"#).is_err());

        let behaviour = Behaviour::new(&MockOptions::default(), &CliFaults::default());
        behaviour.apply(&update);
        let config = behaviour.config_json();
        assert_eq!(
            (&config["capacity"], &config["queue"], &config["knee"], &config["slope"]),
            (&json!(8), &json!(32), &json!(4), &json!(0.5))
        );
        assert_eq!(config["completion_tokens"], 16);
    }

    /// 50 ms to the first token, 16 tokens at 100/s, never failing.
    fn settings() -> Settings {
        Settings {
            fail_rate: 0.0,
            fail_status: 503,
            ttft: Duration::from_millis(50),
            tokens_per_sec: 100.0,
            completion_tokens: 16,
        }
    }

    #[test]
    fn load_slows_time_to_first_token_and_tokens() {
        let settings = settings();
        assert_eq!(settings.slowed(1.0), settings);
        let slowed = settings.slowed(2.5);
        assert_eq!(slowed.ttft, Duration::from_millis(125));
        assert_eq!(slowed.token_interval(), Some(Duration::from_millis(25)));
        let instant = Settings {
            tokens_per_sec: 0.0,
            ..settings
        };
        assert_eq!(instant.slowed(3.0).token_interval(), None);
    }

    #[test]
    fn timing() {
        let settings = settings();
        assert!(!settings.should_fail());
        assert_eq!(settings.token_interval(), Some(Duration::from_millis(10)));
        assert_eq!(settings.generation_time(10), Duration::from_millis(150));
        let instant = Settings {
            tokens_per_sec: 0.0,
            ..settings
        };
        assert_eq!(instant.token_interval(), None);
        assert_eq!(instant.generation_time(10), Duration::from_millis(50));
    }

    #[test]
    fn stats_track_in_flight() {
        let behaviour = Behaviour::new(&MockOptions::default(), &CliFaults::default());
        {
            let _a = behaviour.begin_request();
            let _b = behaviour.begin_request();
            behaviour.completed();
            behaviour.prefilled();
            let spec = super::super::faults::parse_spec("reset").expect("valid");
            assert_eq!(behaviour.record_fault(&spec), Ok(true));
            let mut g = behaviour.generated();
            g.prompt += 5;
            g.completion += 7;
        }
        let _c = behaviour.begin_request();
        assert_eq!(
            behaviour.stats_json(),
            json!({
                "requests": 3, "in_flight": 1, "max_in_flight": 2, "completions": 1,
                "prefills": 1, "faults": {"reset": 1},
                "usage": {"prompt_tokens": 5, "completion_tokens": 7},
                "capacity": 0, "in_service": 0, "max_in_service": 0, "queued": 0, "rejected_429": 0,
            })
        );
        behaviour.reset_stats();
        assert_eq!(
            behaviour.stats_json(),
            json!({
                "requests": 0, "in_flight": 1, "max_in_flight": 1, "completions": 0,
                "prefills": 0, "faults": {},
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                "capacity": 0, "in_service": 0, "max_in_service": 0, "queued": 0, "rejected_429": 0,
            })
        );
    }
}
