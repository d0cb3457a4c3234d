//! `circuit_breaker`: one breaker per provider. An open provider leaves the
//! candidate set; if every candidate is open the request gets 503
//! `circuit_open` with `Retry-After` = time until the first half-open.

use crate::config::{Checker, Dur};
use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::pipeline::{Admission, Attempt, AttemptHold, Plugin, RequestCtx, Typed};
use crate::provider::Provider;
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
    #[serde(default = "d_open_for")]
    pub open_for: Dur,
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
    Dur(Duration::from_secs(30))
}
fn d_probes() -> u32 {
    2
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
}

/// See the module doc.
pub struct CircuitBreaker {
    shared: Arc<Breakers>,
}

/// The breakers of every provider, shared with the attempts in flight.
struct Breakers {
    conf: CircuitBreakerConf,
    breaker: BreakerConf,
    by_provider: Mutex<HashMap<String, Breaker>>,
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
                    half_open_probes: conf.half_open_probes,
                },
                conf: conf.clone(),
                by_provider: Mutex::new(HashMap::new()),
            }),
        }
    }
}

fn transition(provider: &str, to: State) {
    metrics::CIRCUIT_STATE.with_label_values(&[provider]).set(to as i64);
    metrics::CIRCUIT_TRANSITIONS
        .with_label_values(&[provider, to.name()])
        .inc();
    match to {
        State::Open => log::warn!("circuit breaker for provider '{provider}' opened"),
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

    /// Run `f` on the provider's breaker (made on first use); report a transition.
    fn with<T>(&self, provider: &str, f: impl FnOnce(&mut Breaker, Instant) -> (T, Option<State>)) -> T {
        let now = Instant::now();
        let (out, moved) = {
            let mut map = self.by_provider.lock();
            // Look up before inserting: no key allocation on the request path.
            if !map.contains_key(provider) {
                map.insert(provider.to_string(), Breaker::new(self.breaker, now));
            }
            let b = map.get_mut(provider).expect("inserted above");
            f(b, now)
        };
        if let Some(to) = moved {
            transition(provider, to);
        }
        out
    }
}

impl AttemptHold for Hold {
    fn end(&mut self, attempt: &Attempt) {
        let (probe, name) = (self.probe, self.provider.name.as_str());
        if *attempt == Attempt::Aborted {
            // No outcome: the attempt says nothing about the provider, and
            // a probe it held goes back for the next request to take.
            if probe {
                self.shared.with(name, |b, _| ((), b.release_probe()));
            }
            return;
        }
        let failed = self.shared.is_failure(attempt);
        self.shared.with(name, |b, now| ((), b.record(!failed, probe, now)));
    }
}

#[async_trait]
impl Plugin for CircuitBreaker {
    fn upstream_choice(&self, ctx: &mut RequestCtx) -> Result<(), WeirError> {
        let now = Instant::now();
        let map = self.shared.by_provider.lock();
        let mut soonest: Option<Duration> = None;
        ctx.candidates
            .retain(|p| match map.get(&p.name).and_then(|b| b.blocked_for(now)) {
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
        let probe = match self.shared.with(&p.name, |b, now| b.admit(now)) {
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
        map.get(provider).map(|b| b.state())
    }
}
