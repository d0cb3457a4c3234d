//! `circuit_breaker`: one breaker per provider. An open provider leaves the
//! candidate set; if every candidate is open the request gets 503
//! `circuit_open` with `Retry-After` = time until the first half-open.

use crate::config::{BulkheadConf, Checker, Dur};
use crate::error::{ErrorKind, WeirError};
use crate::metrics;
use crate::pipeline::{Attempt, Plugin, RequestCtx};
use crate::provider::Provider;
use crate::traffic::breaker::{Admit, Breaker, BreakerConf, State};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
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
    #[serde(default)]
    pub bulkhead: Option<BulkheadConf>,
}

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

/// Config-time checks.
pub fn check(c: &CircuitBreakerConf, at: &str, ck: &mut Checker) {
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

/// Per-request: which attempts were probes.
#[derive(Default)]
struct Probes(Vec<(String, bool)>);

/// See the module doc.
pub struct CircuitBreaker {
    conf: CircuitBreakerConf,
    breaker: BreakerConf,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl CircuitBreaker {
    pub fn new(conf: &CircuitBreakerConf) -> Self {
        CircuitBreaker {
            breaker: BreakerConf {
                failure_rate: conf.failure_rate,
                min_requests: conf.min_requests,
                window: conf.window.0,
                consecutive_failures: conf.consecutive_failures,
                open_for: conf.open_for.0,
                half_open_probes: conf.half_open_probes,
            },
            conf: conf.clone(),
            breakers: Mutex::new(HashMap::new()),
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
        }
    }
}

#[async_trait]
impl Plugin for CircuitBreaker {
    fn upstream_choice(&self, ctx: &mut RequestCtx) -> Result<(), WeirError> {
        let now = Instant::now();
        let map = self.breakers.lock().unwrap();
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

    fn attempt_start(&self, p: &Provider, ctx: &mut RequestCtx) -> bool {
        let now = Instant::now();
        let (admit, moved) = {
            let mut map = self.breakers.lock().unwrap();
            let b = map
                .entry(p.name.clone())
                .or_insert_with(|| Breaker::new(self.breaker, now));
            b.admit(now)
        };
        if let Some(to) = moved {
            Self::transition(&p.name, to);
        }
        let probe = match admit {
            Admit::Yes => false,
            Admit::Probe => true,
            Admit::No(_) => return false,
        };
        if ctx.state::<Probes>().is_none() {
            ctx.set_state(Probes::default());
        }
        if let Some(probes) = ctx.state::<Probes>() {
            probes.0.push((p.name.clone(), probe));
        }
        true
    }

    fn attempt_end(&self, p: &Provider, attempt: &Attempt, ctx: &mut RequestCtx) {
        let probe = ctx
            .state::<Probes>()
            .and_then(|pr| pr.0.iter().rev().find(|(n, _)| *n == p.name).map(|(_, probe)| *probe))
            .unwrap_or(false);
        let failed = self.is_failure(attempt);
        let moved = {
            let mut map = self.breakers.lock().unwrap();
            let now = Instant::now();
            let b = map
                .entry(p.name.clone())
                .or_insert_with(|| Breaker::new(self.breaker, now));
            b.record(!failed, probe, now)
        };
        if let Some(to) = moved {
            Self::transition(&p.name, to);
        }
    }

    fn breaker_state(&self, provider: &str) -> Option<State> {
        self.breakers.lock().unwrap().get(provider).map(|b| b.state())
    }
}
