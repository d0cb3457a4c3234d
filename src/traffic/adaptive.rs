//! An adaptive concurrency limit (AIMD) for one provider, as a pure state
//! machine: samples and the time are passed in, the new limit comes out.
//!
//! Why AIMD rather than a gradient on raw round trips: an LLM answer's
//! duration grows with its length, so the controller judges latency only by
//! time to first token and time per output token, each against its own
//! slow-moving baseline, and trusts the provider's explicit signals (429,
//! 5xx, `x-ratelimit-remaining-requests`, `Retry-After`) first.
//!
//! - **Decrease** (× `backoff`) on a 429, a 5xx or a failed exchange, or on
//!   a short-term latency over `tolerance` × its baseline; **step back** on
//!   a provider saying it has at most `min_remaining` requests left: one
//!   slot at its edge (backing off by a fraction there would idle a share of
//!   it every round), doubling with each further round that still finds it
//!   full (so far past the edge it converges as fast as × `backoff`, never
//!   faster). At most once per "round": a sample from an attempt admitted
//!   before the last decrease saw the old limit and is not counted against
//!   the new one.
//! - **Increase** (+1) after `limit` good samples taken while the limit was
//!   in full use (TCP's congestion avoidance: about one step per round
//!   trip), never while a `Retry-After` the provider gave is running.
//! - The limit stays within `floor ..= ceiling`.

use std::time::{Duration, Instant};

/// What the controller is tuned by (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub floor: usize,
    pub ceiling: usize,
    /// Multiplier on a decrease, in (0, 1).
    pub backoff: f64,
    /// Short-term latency over this many times the baseline is overload.
    pub tolerance: f64,
    /// A provider reporting this many remaining requests or fewer is full.
    pub min_remaining: u64,
}

/// How one finished attempt went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered (2xx): its time to first token, time per output token when
    /// the output length is known, and what the provider said of its limits.
    Ok {
        ttft: Duration,
        per_token: Option<Duration>,
        remaining: Option<u64>,
        retry_after: Option<Duration>,
    },
    /// 429: the provider is over its limit.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx or a failed exchange (reset, timeout).
    Error { retry_after: Option<Duration> },
}

/// One sample: an outcome, when its attempt was admitted, and whether the
/// limit was in full use when it ended (only then does a good sample say
/// more concurrency would be taken).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub admitted: Instant,
    pub saturated: bool,
    pub outcome: Outcome,
}

/// What a sample did to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Increase,
    Decrease(Reason),
    /// No change.
    Hold,
}

/// Why the limit went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RateLimited,
    Error,
    Latency,
    Remaining,
}

impl Decision {
    /// The `reason` label of `weir_concurrency_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Increase => "increase",
            Decision::Hold => "hold",
            Decision::Decrease(Reason::RateLimited) => "rate_limited",
            Decision::Decrease(Reason::Error) => "error",
            Decision::Decrease(Reason::Latency) => "latency",
            Decision::Decrease(Reason::Remaining) => "remaining",
        }
    }
}

/// Weight of the newest sample in the short-term averages (about 5 samples).
const SHORT: f64 = 0.2;
/// Weight of the newest sample in the baselines (about 50 samples).
const LONG: f64 = 0.02;
/// Samples a latency needs before it is judged against its baseline.
const WARMUP: u32 = 5;

/// A short-term and a long-term moving average of one latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub short: f64,
    pub long: f64,
    samples: u32,
}

impl Latency {
    fn observe(&mut self, secs: f64) {
        if self.samples == 0 {
            self.short = secs;
            self.long = secs;
        } else {
            self.short += SHORT * (secs - self.short);
            self.long += LONG * (secs - self.long);
        }
        self.samples = self.samples.saturating_add(1);
    }

    fn over(&self, tolerance: f64) -> bool {
        self.samples >= WARMUP && self.short > tolerance * self.long
    }
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Aimd {
    params: Params,
    limit: f64,
    /// Good saturated samples since the last change.
    good: usize,
    last_decrease: Option<Instant>,
    hold_until: Option<Instant>,
    /// Slots the next step back from the provider's edge takes.
    edge_step: f64,
    pub ttft: Latency,
    pub per_token: Latency,
}

impl Aimd {
    /// Start at `initial`, within the bounds.
    pub fn new(params: Params, initial: usize) -> Aimd {
        let mut a = Aimd {
            params,
            limit: 0.0,
            good: 0,
            last_decrease: None,
            hold_until: None,
            edge_step: 1.0,
            ttft: Latency::default(),
            per_token: Latency::default(),
        };
        a.limit = a.clamp(initial as f64);
        a
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// The limit now, a whole number of slots.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    fn clamp(&self, v: f64) -> f64 {
        let floor = self.params.floor.max(1).min(self.params.ceiling.max(1));
        v.clamp(floor as f64, self.params.ceiling.max(1) as f64)
    }

    /// Take one sample at `now`.
    pub fn observe(&mut self, s: &Sample, now: Instant) -> Decision {
        let (reason, retry_after) = match s.outcome {
            Outcome::RateLimited { retry_after } => (Some(Reason::RateLimited), retry_after),
            Outcome::Error { retry_after } => (Some(Reason::Error), retry_after),
            Outcome::Ok {
                ttft,
                per_token,
                remaining,
                retry_after,
            } => {
                self.ttft.observe(ttft.as_secs_f64());
                if let Some(t) = per_token {
                    self.per_token.observe(t.as_secs_f64());
                }
                let tol = self.params.tolerance;
                let full = remaining.is_some_and(|r| r <= self.params.min_remaining);
                if !full {
                    // Room left at the provider: back from the edge.
                    self.edge_step = 1.0;
                }
                let reason = if full {
                    Some(Reason::Remaining)
                } else if self.ttft.over(tol) || self.per_token.over(tol) {
                    Some(Reason::Latency)
                } else {
                    None
                };
                (reason, retry_after)
            }
        };
        if let Some(ra) = retry_after {
            let until = now + ra;
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
        }
        match reason {
            Some(r) => self.decrease(r, s.admitted, now),
            None => self.increase(s.saturated, now),
        }
    }

    fn decrease(&mut self, reason: Reason, admitted: Instant, now: Instant) -> Decision {
        self.good = 0;
        if self.last_decrease.is_some_and(|t| admitted < t) {
            // Admitted under the old limit: already answered for.
            return Decision::Hold;
        }
        self.last_decrease = Some(now);
        let before = self.limit();
        self.limit = match reason {
            // At the provider's edge: a step back (doubling while it stays
            // full), never more than a fraction would take.
            Reason::Remaining => {
                let step = self.edge_step;
                self.edge_step *= 2.0;
                self.clamp((self.limit.ceil() - step).max(self.limit * self.params.backoff))
            }
            _ => self.clamp(self.limit * self.params.backoff),
        };
        if self.limit() < before {
            Decision::Decrease(reason)
        } else {
            Decision::Hold
        }
    }

    fn increase(&mut self, saturated: bool, now: Instant) -> Decision {
        if !saturated || self.hold_until.is_some_and(|h| now < h) {
            return Decision::Hold;
        }
        self.good += 1;
        if self.good < self.limit() {
            return Decision::Hold;
        }
        self.good = 0;
        let before = self.limit();
        // Whole steps: a limit brought to a fraction by a decrease rises to the next slot.
        self.limit = self.clamp(self.limit.floor() + 1.0);
        if self.limit() > before {
            Decision::Increase
        } else {
            Decision::Hold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            floor: 2,
            ceiling: 20,
            backoff: 0.8,
            tolerance: 2.0,
            min_remaining: 0,
        }
    }

    /// A provider with `capacity` slots and a queue: a request past the
    /// capacity waits for a whole service time, so its first token is late,
    /// and every answer says it is full; one exactly at capacity sees no
    /// remaining requests. Runs `rounds`
    /// rounds of `limit` concurrent requests, one round per 100 ms.
    fn drive(a: &mut Aimd, capacity: usize, rounds: usize, now: &mut Instant) {
        for _ in 0..rounds {
            let admitted = *now;
            *now += Duration::from_millis(100);
            let limit = a.limit();
            for i in 0..limit {
                let queued = i >= capacity;
                let ttft = Duration::from_millis(if queued { 150 } else { 50 });
                // A provider with a queue is full for every answer while
                // more than its capacity are sent; at or under it, the
                // last admitted finds it full.
                let remaining = if limit > capacity {
                    0
                } else {
                    capacity.saturating_sub(i + 1) as u64
                };
                let s = Sample {
                    admitted,
                    saturated: true,
                    outcome: Outcome::Ok {
                        ttft,
                        per_token: Some(Duration::from_millis(10)),
                        remaining: Some(remaining),
                        retry_after: None,
                    },
                };
                a.observe(&s, *now);
            }
        }
    }

    #[test]
    fn converges_down_when_capacity_drops_and_recovers_when_it_returns() {
        let mut now = Instant::now();
        let mut a = Aimd::new(params(), 20);
        drive(&mut a, 20, 50, &mut now);
        assert!(
            a.limit() >= 19,
            "at capacity 20 the limit stays at its edge: {}",
            a.limit()
        );
        drive(&mut a, 8, 30, &mut now);
        assert!(a.limit() <= 8, "follows the capacity down: {}", a.limit());
        assert!(a.limit() >= 5, "not far below it: {}", a.limit());
        drive(&mut a, 20, 200, &mut now);
        assert!(a.limit() >= 14, "recovers: {}", a.limit());
    }

    #[test]
    fn steps_back_from_the_edge_faster_the_further_past_it() {
        let mut now = Instant::now();
        let p = Params {
            ceiling: 40,
            ..params()
        };
        // Far past the edge (40 against 20): back to it within a few rounds.
        let mut a = Aimd::new(p, 40);
        drive(&mut a, 20, 6, &mut now);
        assert!((16..=22).contains(&a.limit()), "{}", a.limit());
        // At the edge it holds there: one slot back, then up again.
        drive(&mut a, 20, 100, &mut now);
        assert!(a.limit() >= 19, "{}", a.limit());
    }

    #[test]
    fn never_below_floor_nor_above_ceiling() {
        let mut now = Instant::now();
        let mut a = Aimd::new(params(), 100);
        assert_eq!(a.limit(), 20, "starts within the ceiling");
        for _ in 0..100 {
            now += Duration::from_millis(10);
            let s = Sample {
                admitted: now,
                saturated: true,
                outcome: Outcome::RateLimited { retry_after: None },
            };
            a.observe(&s, now);
            assert!(a.limit() >= 2);
        }
        assert_eq!(a.limit(), 2);
        drive(&mut a, 1000, 500, &mut now);
        assert_eq!(a.limit(), 20);
    }

    #[test]
    fn one_decrease_per_round_and_retry_after_holds_increases() {
        let t0 = Instant::now();
        let mut a = Aimd::new(params(), 10);
        let err = |admitted, retry_after| Sample {
            admitted,
            saturated: true,
            outcome: Outcome::Error { retry_after },
        };
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(a.observe(&err(t0, None), t1), Decision::Decrease(Reason::Error));
        assert_eq!(a.limit(), 8);
        // Admitted before that decrease: not counted again.
        assert_eq!(a.observe(&err(t0, None), t1), Decision::Hold);
        assert_eq!(a.limit(), 8);
        let t2 = t1 + Duration::from_millis(10);
        a.observe(&err(t2, Some(Duration::from_secs(5))), t2);
        let good = |admitted| Sample {
            admitted,
            saturated: true,
            outcome: Outcome::Ok {
                ttft: Duration::from_millis(50),
                per_token: None,
                remaining: None,
                retry_after: None,
            },
        };
        for _ in 0..50 {
            assert_eq!(a.observe(&good(t2), t2 + Duration::from_secs(1)), Decision::Hold);
        }
        let later = t2 + Duration::from_secs(6);
        let rose = (0..50).any(|_| a.observe(&good(t2), later) == Decision::Increase);
        assert!(rose, "increases once Retry-After has passed");
    }

    #[test]
    fn unsaturated_samples_never_raise_the_limit() {
        let now = Instant::now();
        let mut a = Aimd::new(params(), 4);
        for _ in 0..100 {
            let s = Sample {
                admitted: now,
                saturated: false,
                outcome: Outcome::Ok {
                    ttft: Duration::from_millis(50),
                    per_token: None,
                    remaining: Some(10),
                    retry_after: None,
                },
            };
            assert_eq!(a.observe(&s, now), Decision::Hold);
        }
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn per_token_latency_over_baseline_decreases() {
        let mut now = Instant::now();
        let mut a = Aimd::new(params(), 10);
        let sample = |admitted, per_token_ms| Sample {
            admitted,
            saturated: false,
            outcome: Outcome::Ok {
                ttft: Duration::from_millis(50),
                per_token: Some(Duration::from_millis(per_token_ms)),
                remaining: None,
                retry_after: None,
            },
        };
        for _ in 0..20 {
            now += Duration::from_millis(10);
            assert_eq!(a.observe(&sample(now, 10), now), Decision::Hold);
        }
        let slow = (0..10).any(|_| {
            now += Duration::from_millis(10);
            a.observe(&sample(now, 40), now) == Decision::Decrease(Reason::Latency)
        });
        assert!(slow);
        assert!(a.limit() < 10);
    }
}
