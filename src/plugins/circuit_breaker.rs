//! `circuit_breaker`: one breaker per provider. An open provider leaves the
//! candidate set; if every candidate is open the request gets 503
//! `circuit_open` with `Retry-After` = time until the first half-open.
//!
//! Recovery is quick by default: the first opening lasts `open_for` (5 s),
//! each failed probe doubles it up to `max_open_for` (60 s). And when the
//! provider has an active `health_check` that passed after the breaker
//! opened, the breaker half-opens at once: the next request is a probe. Only
//! real traffic closes or opens a breaker; a failing check changes nothing.

use crate::config::{Checker, Dur};
use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::pipeline::{Admission, Attempt, AttemptHold, Phases, Plugin, RequestCtx, Typed};
use crate::provider::{NameHasher, Provider};
use crate::traffic::breaker::{Admit, Breaker, BreakerConf, State};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConf {
    #[serde(default = "d_rate")]
    pub failure_rate: f64,
    #[serde(default = "d_min")]
    pub min_requests: u32,
    #[serde(default = "d_window")]
    pub window: Dur,
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// How long the breaker first stays open.
    #[serde(default = "d_open_for")]
    pub open_for: Dur,
    /// Ceiling of the open period, which doubles on each failed probe. Unset:
    /// 60 s, or `open_for` if that is longer (so a config written before this
    /// setting existed still loads; it then never backs off).
    #[serde(default)]
    pub max_open_for: Option<Dur>,
    #[serde(default = "d_probes")]
    pub half_open_probes: u32,
    /// Answers slower than this (to the response header) count as failures.
    #[serde(default)]
    pub slow_call: Option<Dur>,
    /// What counts as a failure.
    #[serde(default)]
    pub failure_on: FailureOn,
}

/// The `circuit_breaker` plugin type.
pub static TYPE: Typed<CircuitBreakerConf> = Typed {
    name: "circuit_breaker",
    check,
    files: crate::pipeline::no_files,
    build: |c, _| Ok(Arc::new(CircuitBreaker::new(c))),
};

/// Which outcomes count as failures.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailureOn {
    #[serde(default = "yes")]
    pub connect_error: bool,
    #[serde(default = "yes")]
    pub timeout: bool,
    #[serde(default = "yes")]
    pub status_5xx: bool,
    #[serde(default = "yes")]
    pub status_429: bool,
}

impl Default for FailureOn {
    fn default() -> Self {
        FailureOn {
            connect_error: true,
            timeout: true,
            status_5xx: true,
            status_429: true,
        }
    }
}

fn yes() -> bool {
    true
}
fn d_rate() -> f64 {
    0.5
}
fn d_min() -> u32 {
    10
}
fn d_window() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_consecutive() -> u32 {
    5
}
fn d_open_for() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_probes() -> u32 {
    2
}

const DEFAULT_MAX_OPEN_FOR: Duration = Duration::from_secs(60);

impl CircuitBreakerConf {
    /// `max_open_for` as set, else its default.
    fn max_open_for(&self) -> Duration {
        self.max_open_for
            .map_or_else(|| DEFAULT_MAX_OPEN_FOR.max(self.open_for.0), |d| d.0)
    }
}

/// Checks of the values.
fn check(c: &CircuitBreakerConf, at: &str, ck: &mut Checker) {
    if !(0.0..=1.0).contains(&c.failure_rate) || c.failure_rate == 0.0 {
        ck.error(format!("{at}.failure_rate"), "must be in (0, 1]");
    }
    if c.half_open_probes == 0 {
        ck.error(format!("{at}.half_open_probes"), "must be at least 1");
    }
    if c.window.0.is_zero() || c.open_for.0.is_zero() {
        ck.error(at.to_string(), "window and open_for must be above zero");
    }
    if let Some(max) = c.max_open_for.filter(|m| m.0 < c.open_for.0) {
        ck.error(
            format!("{at}.max_open_for"),
            format!("must be at least open_for ({}), got {max}", c.open_for),
        );
    }
}

/// See the module doc.
pub struct CircuitBreaker {
    shared: Arc<Breakers>,
}

/// The breakers of every provider, shared with the attempts in flight.
struct Breakers {
    conf: CircuitBreakerConf,
    breaker: BreakerConf,
    /// By provider name (from the config, never from a client), looked up
    /// several times per request.
    by_provider: Mutex<HashMap<String, Entry, NameHasher>>,
}

/// One provider's breaker, and the provider's count of passing health
/// checks when the breaker last opened: a higher count now means a check
/// passed since, and the breaker need not wait out its open period.
struct Entry {
    breaker: Breaker,
    passes_at_open: u64,
}

impl Entry {
    /// Open, and the provider's active health check passed since it opened.
    fn recovered(&self, p: &Provider) -> bool {
        self.breaker.state() == State::Open && p.conf.health_check.is_some() && p.health.passes() != self.passes_at_open
    }

    /// Like [`Breaker::blocked_for`], but a recovered provider is not blocked:
    /// it is due to half-open.
    fn blocked_for(&self, p: &Provider, now: Instant) -> Option<Duration> {
        if self.recovered(p) {
            return None;
        }
        self.breaker.blocked_for(now)
    }

    /// Like [`Breaker::admit`], half-opening a recovered provider first.
    fn admit(&mut self, p: &Provider, now: Instant) -> (Admit, Option<State>) {
        let early = if self.recovered(p) {
            self.breaker.half_open()
        } else {
            None
        };
        let (admit, moved) = self.breaker.admit(now);
        (admit, early.or(moved))
    }
}

/// One attempt's stake: whether it is a half-open probe, to be recorded or given back.
struct Hold {
    shared: Arc<Breakers>,
    provider: Arc<Provider>,
    probe: bool,
}

impl CircuitBreaker {
    pub fn new(conf: &CircuitBreakerConf) -> Self {
        CircuitBreaker {
            shared: Arc::new(Breakers {
                breaker: BreakerConf {
                    failure_rate: conf.failure_rate,
                    min_requests: conf.min_requests,
                    window: conf.window.0,
                    consecutive_failures: conf.consecutive_failures,
                    open_for: conf.open_for.0,
                    max_open_for: conf.max_open_for(),
                    half_open_probes: conf.half_open_probes,
                },
                conf: conf.clone(),
                by_provider: Mutex::new(HashMap::default()),
            }),
        }
    }
}

/// Report a transition; `open_period` is the breaker's, shown when it opened.
fn transition(provider: &str, to: State, open_period: Duration) {
    metrics::CIRCUIT_STATE.with_label_values(&[provider]).set(to as i64);
    metrics::CIRCUIT_TRANSITIONS
        .with_label_values(&[provider, to.name()])
        .inc();
    match to {
        State::Open => {
            metrics::CIRCUIT_OPEN_SECONDS
                .with_label_values(&[provider])
                .set(open_period.as_secs_f64());
            log::warn!("circuit breaker for provider '{provider}' opened for {open_period:?}")
        }
        _ => log::info!("circuit breaker for provider '{provider}' is now {}", to.name()),
    }
}

impl Breakers {
    fn is_failure(&self, a: &Attempt) -> bool {
        let f = self.conf.failure_on;
        match *a {
            Attempt::Answered { status, ttfb } => {
                (status >= 500 && f.status_5xx)
                    || (status == 429 && f.status_429)
                    || self.conf.slow_call.is_some_and(|s| ttfb > s.0)
            }
            Attempt::Failed(ErrorKind::UpstreamTimeout) => f.timeout,
            Attempt::Failed(_) => f.connect_error,
            Attempt::Aborted => false,
        }
    }

    /// Run `f` on the provider's breaker (made on first use); on opening,
    /// note the provider's passing health checks; report a transition.
    fn with<T>(&self, p: &Provider, f: impl FnOnce(&mut Entry, Instant) -> (T, Option<State>)) -> T {
        let now = Instant::now();
        let (out, moved, open_period) = {
            let mut map = self.by_provider.lock();
            // Look up before inserting: no key allocation on the request path.
            if !map.contains_key(&p.name) {
                let entry = Entry {
                    breaker: Breaker::new(self.breaker, now),
                    passes_at_open: p.health.passes(),
                };
                map.insert(p.name.clone(), entry);
                // The state from the breaker's first use, not its first
                // change; each transition's count from 0.
                metrics::CIRCUIT_STATE
                    .with_label_values(&[p.name.as_str()])
                    .set(State::Closed as i64);
                for to in [State::Closed, State::HalfOpen, State::Open] {
                    metrics::CIRCUIT_TRANSITIONS.with_label_values(&[p.name.as_str(), to.name()]);
                }
            }
            let e = map.get_mut(&p.name).expect("inserted above");
            let (out, moved) = f(e, now);
            if moved == Some(State::Open) {
                e.passes_at_open = p.health.passes();
            }
            (out, moved, e.breaker.open_period())
        };
        if let Some(to) = moved {
            transition(&p.name, to, open_period);
        }
        out
    }
}

impl AttemptHold for Hold {
    fn end(&mut self, attempt: &Attempt) {
        let (probe, p) = (self.probe, &self.provider);
        if *attempt == Attempt::Aborted {
            // No outcome: the attempt says nothing about the provider, and
            // a probe it held goes back for the next request to take.
            if probe {
                self.shared.with(p, |e, _| ((), e.breaker.release_probe()));
            }
            return;
        }
        let failed = self.shared.is_failure(attempt);
        self.shared
            .with(p, |e, now| ((), e.breaker.record(!failed, probe, now)));
    }
}

#[async_trait]
impl Plugin for CircuitBreaker {
    fn phases(&self) -> Phases {
        Phases::NONE
    }

    fn upstream_choice(&self, ctx: &mut RequestCtx) -> Result<(), WeirError> {
        let now = Instant::now();
        let map = self.shared.by_provider.lock();
        let mut soonest: Option<Duration> = None;
        ctx.candidates
            .retain(|p| match map.get(&p.name).and_then(|e| e.blocked_for(p, now)) {
                Some(left) => {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                    false
                }
                None => true,
            });
        if ctx.candidates.is_empty() {
            let secs = soonest.unwrap_or_default().as_secs_f64().ceil().max(1.0) as u64;
            return Err(WeirError::new(
                ErrorKind::CircuitOpen,
                format!("every provider for this request has an open circuit breaker; retry in {secs}s"),
            )
            .with_queue("circuit_breaker", secs));
        }
        Ok(())
    }

    fn attempt_start(&self, p: &Arc<Provider>) -> Admission {
        let probe = match self.shared.with(p, |e, now| e.admit(p, now)) {
            Admit::Yes => false,
            Admit::Probe => true,
            Admit::No(_) => return Admission::Skip,
        };
        Admission::Go(Some(Box::new(Hold {
            shared: self.shared.clone(),
            provider: p.clone(),
            probe,
        })))
    }

    fn breaker_state(&self, provider: &str) -> Option<State> {
        let map = self.shared.by_provider.lock();
        map.get(provider).map(|e| e.breaker.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::locate::LineIndex;
    use std::path::Path;

    /// The settings of plugin `b` in `text`, and the errors their check found.
    fn checked(text: &str) -> (CircuitBreakerConf, Vec<String>) {
        let index = LineIndex::build(text);
        let mut ck = Checker::new(Path::new("t.yaml"), &index);
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        let conf: CircuitBreakerConf = ck.parse_at("plugins.b", doc["plugins"]["b"].clone()).unwrap();
        check(&conf, "plugins.b", &mut ck);
        (conf, ck.errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn open_periods_default_to_quick_recovery() {
        let (c, errors) = checked("plugins:\n  b: {}\n");
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(c.open_for.0, Duration::from_secs(5));
        assert_eq!(c.max_open_for(), Duration::from_secs(60));
        let (c, errors) = checked("plugins:\n  b: { open_for: 2m }\n");
        assert_eq!(errors, Vec::<String>::new(), "an older config still loads");
        assert_eq!(c.max_open_for(), Duration::from_secs(120), "and does not back off");
    }

    #[test]
    fn max_open_for_below_open_for_is_an_error_naming_it() {
        let (_, errors) = checked("plugins:\n  b:\n    open_for: 10s\n    max_open_for: 5s\n");
        assert_eq!(
            errors,
            ["t.yaml:4: plugins.b.max_open_for: must be at least open_for (10s), got 5s"]
        );
        let (c, errors) = checked("plugins:\n  b: { open_for: 10s, max_open_for: 10s }\n");
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(c.max_open_for(), Duration::from_secs(10));
    }
}
