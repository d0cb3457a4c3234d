//! A route's retry policy applied to one request: which provider is tried
//! next after a failure, and how long to wait first. Pure bookkeeping (time
//! is passed in), so every rule is tested without a network.
//!
//! - A transient answer (a 429 or 5xx the policy names, a reset) is tried
//!   on the same provider first under `same_first`, after a backoff that
//!   doubles with jitter, or after the provider's `Retry-After` if it asked
//!   for longer. A provider that said `Retry-After: 2` gets nothing from
//!   this request sooner.
//! - An unreachable or silent provider (connect error, timeout) is left for
//!   the next one first: trying it again would cost a whole timeout.
//! - A `Retry-After` longer than `max_retry_after`, or ending past the
//!   request's `deadline`, takes that provider out of this request.
//! - No provider gets more than `per_provider` sends; the request no more
//!   than `attempts`.

use crate::config::{RetryConf, RetryOn, RetryOrder};
use crate::upstream::Fault;
use smallvec::SmallVec;
use std::time::{Duration, Instant, SystemTime};

/// How an attempt failed, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// No answer: a connect error, a reset, a timeout.
    Fault(Fault),
    /// An answer with this status, and the `Retry-After` it carried.
    Status(u16, Option<Duration>),
}

impl Outcome {
    /// For `weir_retries_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Fault(f) => f.name(),
            Outcome::Status(429, _) => "status_429",
            Outcome::Status(..) => "status_5xx",
        }
    }
}

/// The policy, for one request over its candidates.
pub struct Schedule<'a> {
    policy: &'a RetryConf,
    /// Per candidate: sends made, earliest next send, taken out.
    sends: SmallVec<[u32; 4]>,
    not_before: SmallVec<[Option<Instant>; 4]>,
    out: SmallVec<[bool; 4]>,
    total: u32,
    started: Instant,
}

impl<'a> Schedule<'a> {
    pub fn new(policy: &'a RetryConf, candidates: usize, now: Instant) -> Self {
        Schedule {
            policy,
            sends: SmallVec::from_elem(0, candidates),
            not_before: SmallVec::from_elem(None, candidates),
            out: SmallVec::from_elem(false, candidates),
            total: 0,
            started: now,
        }
    }

    /// Does the policy retry this outcome?
    pub fn retries(&self, outcome: Outcome) -> bool {
        let want = match outcome {
            Outcome::Fault(Fault::Connect) => RetryOn::ConnectError,
            Outcome::Fault(Fault::Reset) => RetryOn::Reset,
            Outcome::Fault(Fault::Timeout) => RetryOn::Timeout,
            // Anthropic's overload (529 `overloaded_error`) is a 503 by
            // another number: the policy names it either way.
            Outcome::Status(529, _) => {
                return [RetryOn::Status(529), RetryOn::Status(503)]
                    .iter()
                    .any(|w| self.policy.on.contains(w))
            }
            Outcome::Status(s, _) => RetryOn::Status(s),
        };
        self.policy.on.contains(&want)
    }

    /// The first candidate to try.
    pub fn first(&self) -> Option<usize> {
        self.pick(0, false, Instant::now()).map(|(i, _)| i)
    }

    /// Count a send to candidate `i`.
    pub fn sent(&mut self, i: usize) {
        self.sends[i] += 1;
        self.total += 1;
    }

    /// Take candidate `i` out of this request (its bulkhead refused, a
    /// breaker skipped it, its `Retry-After` is too long).
    pub fn exclude(&mut self, i: usize) {
        self.out[i] = true;
    }

    /// After candidate `i` was skipped without a send: the next one, at once.
    pub fn skip(&mut self, i: usize, now: Instant) -> Option<(usize, Duration)> {
        self.exclude(i);
        self.pick(i + 1, false, now)
    }

    /// After candidate `i` failed with `outcome`: the candidate to send to
    /// next and how long to wait first; `None` when the policy is spent.
    pub fn after(&mut self, i: usize, outcome: Outcome, now: Instant) -> Option<(usize, Duration)> {
        if !self.retries(outcome) || self.total >= self.policy.attempts {
            return None;
        }
        if let Outcome::Status(_, Some(ra)) = outcome {
            if ra > self.policy.max_retry_after.0 || now + ra > self.deadline() {
                self.out[i] = true;
            } else {
                self.not_before[i] = Some(now + ra);
            }
        }
        let same_first = self.policy.order == RetryOrder::SameFirst
            && !matches!(outcome, Outcome::Fault(Fault::Connect | Fault::Timeout));
        if same_first {
            self.pick(i, true, now)
        } else {
            self.pick(i + 1, true, now)
        }
    }

    fn deadline(&self) -> Instant {
        self.started + self.policy.deadline.0
    }

    /// The first usable candidate in order from `from` (wrapping), with
    /// the wait before sending to it. `retry`: this is a resend, so a
    /// candidate already sent to waits a backoff.
    fn pick(&self, from: usize, retry: bool, now: Instant) -> Option<(usize, Duration)> {
        let n = self.sends.len();
        (0..n).map(|k| (from + k) % n).find_map(|j| {
            if self.out[j] || self.sends[j] >= self.policy.per_provider {
                return None;
            }
            let mut wait = self.not_before[j].map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            if retry && self.sends[j] > 0 {
                wait = wait.max(self.backoff(self.sends[j]));
            }
            (now + wait <= self.deadline()).then_some((j, wait))
        })
    }

    /// Before the `n`th resend to one provider: `base * 2^(n-1)` capped at
    /// `backoff_max`, the upper half jittered so retries spread out.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.policy.backoff_base.0;
        let full = base
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(self.policy.backoff_max.0);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some providers send fractional seconds.
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn policy() -> RetryConf {
        RetryConf::default()
    }

    #[test]
    fn a_5xx_is_retried_on_the_same_provider_then_the_next() {
        let p = policy();
        let t = Instant::now();
        let mut s = Schedule::new(&p, 2, t);
        assert_eq!(s.first(), Some(0));
        s.sent(0);
        let (i, wait) = s.after(0, Outcome::Status(500, None), t).unwrap();
        assert_eq!(i, 0, "same provider first");
        assert!(
            wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        s.sent(0);
        let (i, wait) = s.after(0, Outcome::Status(500, None), t).unwrap();
        assert_eq!(
            (i, wait),
            (1, Duration::ZERO),
            "per_provider reached: the next, at once"
        );
        s.sent(1);
        assert_eq!(s.after(1, Outcome::Status(500, None), t), None, "three attempts in all");
    }

    #[test]
    fn retry_after_is_waited_out_or_takes_the_provider_out() {
        let p = policy();
        let t = Instant::now();
        let mut s = Schedule::new(&p, 2, t);
        s.sent(0);
        let (i, wait) = s
            .after(0, Outcome::Status(429, Some(Duration::from_secs(2))), t)
            .unwrap();
        assert_eq!(i, 0);
        assert!(wait >= Duration::from_secs(2), "never sooner than it asked: {wait:?}");
        s.sent(0);
        // Too long to wait: provider 0 is out; provider 1 next.
        let (i, _) = s
            .after(0, Outcome::Status(429, Some(Duration::from_secs(60))), t)
            .unwrap();
        assert_eq!(i, 1);
        s.sent(1);
        assert_eq!(s.after(1, Outcome::Status(500, None), t), None);
    }

    #[test]
    fn a_provider_that_asked_for_time_is_not_hammered_from_elsewhere() {
        let mut p = policy();
        p.order = RetryOrder::NextFirst;
        p.attempts = 5;
        let t = Instant::now();
        let mut s = Schedule::new(&p, 2, t);
        s.sent(0);
        let (i, w) = s
            .after(0, Outcome::Status(429, Some(Duration::from_secs(3))), t)
            .unwrap();
        assert_eq!((i, w), (1, Duration::ZERO));
        s.sent(1);
        let later = t + Duration::from_secs(1);
        let (i, w) = s.after(1, Outcome::Status(503, None), later).unwrap();
        assert_eq!(i, 0);
        assert!(w >= Duration::from_secs(2), "{w:?}");
    }

    #[test]
    fn timeouts_and_connect_errors_move_on_first() {
        let p = policy();
        let t = Instant::now();
        let mut s = Schedule::new(&p, 3, t);
        s.sent(0);
        assert_eq!(s.after(0, Outcome::Fault(Fault::Timeout), t).map(|x| x.0), Some(1));
        s.sent(1);
        assert_eq!(s.after(1, Outcome::Fault(Fault::Connect), t).map(|x| x.0), Some(2));
        s.sent(2);
        assert_eq!(s.after(2, Outcome::Fault(Fault::Reset), t), None, "attempts spent");
    }

    #[test]
    fn unnamed_outcomes_and_the_deadline_stop() {
        let mut p = policy();
        p.on = vec![RetryOn::Status(503)];
        p.deadline = Dur(Duration::from_secs(1));
        let t = Instant::now();
        let mut s = Schedule::new(&p, 2, t);
        s.sent(0);
        assert_eq!(s.after(0, Outcome::Status(500, None), t), None);
        assert!(s.retries(Outcome::Status(529, None)), "Anthropic's overload is a 503");
        assert_eq!(s.after(0, Outcome::Fault(Fault::Reset), t), None);
        // Waiting 2s would end past the deadline: that provider is out; the other is fine.
        let (i, _) = s
            .after(0, Outcome::Status(503, Some(Duration::from_millis(1500))), t)
            .unwrap();
        assert_eq!(i, 1);
    }

    #[test]
    fn skipped_candidates_cost_nothing() {
        let p = policy();
        let t = Instant::now();
        let mut s = Schedule::new(&p, 3, t);
        assert_eq!(s.skip(0, t), Some((1, Duration::ZERO)));
        assert_eq!(s.skip(1, t), Some((2, Duration::ZERO)));
        assert_eq!(s.skip(2, t), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut p = policy();
        p.backoff_base = Dur(Duration::from_millis(100));
        p.backoff_max = Dur(Duration::from_millis(300));
        let s = Schedule::new(&p, 1, Instant::now());
        for _ in 0..50 {
            let b1 = s.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b2 = s.backoff(2);
            assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
            let b9 = s.backoff(40);
            assert!(b9 >= Duration::from_millis(150) && b9 <= Duration::from_millis(300));
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::now();
        assert_eq!(retry_after(b"2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(b" 0.5 ", now), Some(Duration::from_millis(500)));
        let at = httpdate::fmt_http_date(now + Duration::from_secs(10));
        let d = retry_after(at.as_bytes(), now).unwrap();
        assert!(d <= Duration::from_secs(10) && d >= Duration::from_secs(8), "{d:?}");
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(retry_after(past.as_bytes(), now), Some(Duration::ZERO));
        assert_eq!(retry_after(b"soon", now), None);
        assert_eq!(retry_after(b"-1", now), None);
    }
}
