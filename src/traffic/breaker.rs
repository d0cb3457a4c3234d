//! A circuit breaker's state machine: closed -> open on `consecutive_failures`
//! or on `failure_rate` over `window` (once `min_requests` were seen); open for
//! the open period; then half-open lets `half_open_probes` through, closes when
//! they all succeed and reopens on any failure.
//!
//! The open period starts at `open_for` and doubles on each reopen after a
//! failed probe, up to `max_open_for`, so a provider that stays down is probed
//! less and less often while one that recovers quickly is tried again soon;
//! closing resets it. An outside sign of recovery (a passing health check) may
//! cut the wait short through [`Breaker::half_open`].

use std::time::{Duration, Instant};

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConf {
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub consecutive_failures: u32,
    pub open_for: Duration,
    /// Ceiling of the open period's doubling (at least `open_for`).
    pub max_open_for: Duration,
    pub half_open_probes: u32,
}

/// The three states (metric values 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// May a request go to this provider now?
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    Yes,
    /// Yes, as one of the half-open probes.
    Probe,
    /// No; the breaker may half-open after this long.
    No(Duration),
}

const SLOTS: usize = 10;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Breaker {
    conf: BreakerConf,
    state: State,
    consecutive: u32,
    /// Ring of (total, failures) per window/SLOTS slice.
    slots: [(u32, u32); SLOTS],
    slot_started: Instant,
    slot_idx: usize,
    opened_at: Instant,
    /// How long this opening lasts: `open_for`, doubled per failed probe.
    open_period: Duration,
    probes_out: u32,
    probes_ok: u32,
}

impl Breaker {
    pub fn new(conf: BreakerConf, now: Instant) -> Self {
        Breaker {
            conf,
            state: State::Closed,
            consecutive: 0,
            slots: [(0, 0); SLOTS],
            slot_started: now,
            slot_idx: 0,
            opened_at: now,
            open_period: conf.open_for,
            probes_out: 0,
            probes_ok: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The open period of the current (or last) opening.
    pub fn open_period(&self) -> Duration {
        self.open_period
    }

    /// Without taking a probe: is the breaker open and not yet due to half-open?
    /// Returns the time left if so.
    pub fn blocked_for(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open => {
                let left = self
                    .open_period
                    .saturating_sub(now.saturating_duration_since(self.opened_at));
                (!left.is_zero()).then_some(left)
            }
            State::HalfOpen if self.probes_out >= self.conf.half_open_probes => Some(Duration::from_millis(100)),
            _ => None,
        }
    }

    /// Decide for one request; may move open -> half-open. Returns the
    /// transition, if any, alongside.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<State>) {
        let mut moved = None;
        if self.state == State::Open && now.saturating_duration_since(self.opened_at) >= self.open_period {
            moved = self.half_open();
        }
        let admit = match self.state {
            State::Closed => Admit::Yes,
            State::Open => Admit::No(self.blocked_for(now).unwrap_or_default()),
            State::HalfOpen if self.probes_out < self.conf.half_open_probes => {
                self.probes_out += 1;
                Admit::Probe
            }
            State::HalfOpen => Admit::No(Duration::from_millis(100)),
        };
        (admit, moved)
    }

    /// Open -> half-open at once, without waiting out the open period: the
    /// caller saw the provider recover (a passing health check). The next
    /// admissions take the probes, so real traffic still decides whether the
    /// breaker closes. Does nothing in any other state.
    pub fn half_open(&mut self) -> Option<State> {
        if self.state != State::Open {
            return None;
        }
        self.state = State::HalfOpen;
        self.probes_out = 0;
        self.probes_ok = 0;
        Some(State::HalfOpen)
    }

    /// Give back a half-open probe whose attempt ended with no outcome (the
    /// client left): the next request may probe instead. Never a transition.
    pub fn release_probe(&mut self) -> Option<State> {
        if self.state == State::HalfOpen {
            self.probes_out = self.probes_out.saturating_sub(1);
        }
        None
    }

    /// Record an outcome; returns the new state if it changed.
    pub fn record(&mut self, success: bool, probe: bool, now: Instant) -> Option<State> {
        match self.state {
            State::HalfOpen if probe => {
                if !success {
                    return Some(self.open(now));
                }
                self.probes_ok += 1;
                if self.probes_ok >= self.conf.half_open_probes {
                    self.close(now);
                    return Some(State::Closed);
                }
                None
            }
            State::Closed => {
                self.advance(now);
                let slot = &mut self.slots[self.slot_idx];
                slot.0 += 1;
                if success {
                    self.consecutive = 0;
                    return None;
                }
                slot.1 += 1;
                self.consecutive += 1;
                let (total, failures) = self.slots.iter().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
                let rate_trips = total >= self.conf.min_requests
                    && total > 0
                    && failures as f64 / total as f64 >= self.conf.failure_rate;
                let run_trips =
                    self.conf.consecutive_failures > 0 && self.consecutive >= self.conf.consecutive_failures;
                (rate_trips || run_trips).then(|| self.open(now))
            }
            // Late answers from before the breaker opened change nothing.
            _ => None,
        }
    }

    /// Open from closed for `open_for`; reopen from half-open for twice the
    /// last period, capped at `max_open_for`.
    fn open(&mut self, now: Instant) -> State {
        self.open_period = match self.state {
            State::HalfOpen => self.open_period.saturating_mul(2).min(self.conf.max_open_for),
            _ => self.conf.open_for,
        };
        self.state = State::Open;
        self.opened_at = now;
        self.probes_out = 0;
        self.probes_ok = 0;
        State::Open
    }

    fn close(&mut self, now: Instant) {
        self.state = State::Closed;
        self.open_period = self.conf.open_for;
        self.consecutive = 0;
        self.slots = [(0, 0); SLOTS];
        self.slot_started = now;
    }

    /// Rotate the window's slots up to `now`.
    fn advance(&mut self, now: Instant) {
        let slot_len = (self.conf.window / SLOTS as u32).max(Duration::from_millis(1));
        let mut elapsed = now.saturating_duration_since(self.slot_started);
        let mut steps = 0;
        while elapsed >= slot_len && steps <= SLOTS {
            self.slot_idx = (self.slot_idx + 1) % SLOTS;
            self.slots[self.slot_idx] = (0, 0);
            self.slot_started += slot_len;
            elapsed -= slot_len;
            steps += 1;
        }
        if steps > SLOTS {
            self.slot_started = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> BreakerConf {
        BreakerConf {
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            consecutive_failures: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(100),
            half_open_probes: 2,
        }
    }

    /// A breaker opened by five failures at `t0`.
    fn opened(c: BreakerConf, t0: Instant) -> Breaker {
        let mut b = Breaker::new(c, t0);
        for _ in 0..5 {
            b.record(false, false, t0);
        }
        assert_eq!(b.state(), State::Open);
        b
    }

    /// Wait out the open period, take a probe at the end of it and fail it;
    /// returns when the probe failed.
    fn fail_a_probe(b: &mut Breaker, opened: Instant) -> Instant {
        let due = opened + b.open_period();
        assert!(
            b.blocked_for(due - Duration::from_millis(1)).is_some(),
            "open until due"
        );
        assert_eq!(b.admit(due).0, Admit::Probe);
        assert_eq!(b.record(false, true, due), Some(State::Open));
        due
    }

    #[test]
    fn opens_on_consecutive_failures_then_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(conf(), t0);
        for i in 0..4 {
            assert_eq!(b.record(false, false, t0), None, "failure {i}");
        }
        assert_eq!(b.record(false, false, t0), Some(State::Open));
        assert!(matches!(b.admit(t0).0, Admit::No(d) if d == Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1), (Admit::Probe, Some(State::HalfOpen)));
        assert_eq!(b.admit(t1), (Admit::Probe, None));
        assert!(matches!(b.admit(t1).0, Admit::No(_)), "only two probes");
        assert_eq!(b.record(true, true, t1), None);
        assert_eq!(b.record(true, true, t1), Some(State::Closed));
        assert_eq!(b.admit(t1).0, Admit::Yes);
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(conf(), t0);
        for _ in 0..5 {
            b.record(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        assert_eq!(b.record(false, true, t1), Some(State::Open));
        assert!(b.blocked_for(t1).is_some());
    }

    #[test]
    fn opens_on_failure_rate_after_min_requests() {
        let t0 = Instant::now();
        let mut c = conf();
        c.consecutive_failures = 0;
        let mut b = Breaker::new(c, t0);
        for _ in 0..4 {
            assert_eq!(b.record(true, false, t0), None);
            assert_eq!(b.record(false, false, t0), None);
        }
        assert_eq!(b.record(true, false, t0), None);
        assert_eq!(b.record(false, false, t0), Some(State::Open), "5 of 10 failed");
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut c = conf();
        c.consecutive_failures = 0;
        let mut b = Breaker::new(c, t0);
        for _ in 0..9 {
            b.record(false, false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..9 {
            assert_eq!(b.record(true, false, later), None);
        }
        assert_eq!(b.record(false, false, later), None, "1 of 10 in the window");
    }

    #[test]
    fn a_probe_given_back_can_be_taken_again() {
        let t0 = Instant::now();
        let mut c = conf();
        c.half_open_probes = 1;
        let mut b = Breaker::new(c, t0);
        for _ in 0..5 {
            b.record(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        assert!(matches!(b.admit(t1).0, Admit::No(_)), "the only probe is out");
        assert_eq!(b.release_probe(), None);
        assert_eq!(b.admit(t1).0, Admit::Probe, "given back, taken again");
        assert_eq!(b.record(true, true, t1), Some(State::Closed));
    }

    #[test]
    fn each_failed_probe_doubles_the_open_period_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = opened(conf(), t0);
        assert_eq!(b.open_period(), Duration::from_secs(30), "first opening: open_for");
        let mut at = t0;
        for expected in [60, 100, 100] {
            at = fail_a_probe(&mut b, at);
            assert_eq!(b.open_period(), Duration::from_secs(expected));
            assert_eq!(b.blocked_for(at), Some(Duration::from_secs(expected)));
        }
    }

    #[test]
    fn closing_resets_the_open_period() {
        let t0 = Instant::now();
        let mut b = opened(conf(), t0);
        let t1 = fail_a_probe(&mut b, t0);
        assert_eq!(b.open_period(), Duration::from_secs(60));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.admit(t2).0, Admit::Probe);
        assert_eq!(b.admit(t2).0, Admit::Probe);
        b.record(true, true, t2);
        assert_eq!(b.record(true, true, t2), Some(State::Closed));
        assert_eq!(b.open_period(), Duration::from_secs(30), "reset on close");
        for _ in 0..5 {
            b.record(false, false, t2);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.blocked_for(t2),
            Some(Duration::from_secs(30)),
            "opens for open_for again"
        );
    }

    #[test]
    fn half_open_cuts_the_wait_short_and_a_failed_probe_still_backs_off() {
        let t0 = Instant::now();
        let mut b = opened(conf(), t0);
        assert_eq!(b.half_open(), Some(State::HalfOpen));
        assert_eq!(b.half_open(), None, "only from open");
        assert_eq!(b.blocked_for(t0), None, "due for a probe at once");
        assert_eq!(b.admit(t0), (Admit::Probe, None));
        assert_eq!(b.record(false, true, t0), Some(State::Open));
        assert_eq!(b.open_period(), Duration::from_secs(60));
        let mut closed = Breaker::new(conf(), t0);
        assert_eq!(closed.half_open(), None, "a closed breaker stays closed");
        assert_eq!(closed.state(), State::Closed);
    }
}
