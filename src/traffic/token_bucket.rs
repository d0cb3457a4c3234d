//! A token bucket: `capacity` tokens, refilled continuously at `rate` per second.

use std::time::{Duration, Instant};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// A refusal: how long until `n` tokens will be there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait(pub Duration);

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, rate_per_sec: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            rate: rate_per_sec,
            tokens: capacity,
            last: now,
        }
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Take `n` tokens if they are there; returns what remains.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<f64, Wait> {
        self.refill(now);
        if n <= self.tokens {
            self.tokens -= n;
            Ok(self.tokens)
        } else if n > self.capacity {
            // Can never fit: wait for a full bucket at least.
            Err(Wait(self.secs_until(self.capacity)))
        } else {
            Err(Wait(self.secs_until(n)))
        }
    }

    /// Give `n` tokens back (a refund), or charge more when `n` is negative;
    /// a charge may leave the bucket in debt, paid back by refill.
    pub fn adjust(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// Tokens available now.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Time until the bucket is full again.
    pub fn reset_after(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.secs_until(self.capacity)
    }

    fn secs_until(&self, level: f64) -> Duration {
        if self.tokens >= level {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64((level - self.tokens) / self.rate)
    }

    /// Idle and full: safe to forget.
    pub fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        for _ in 0..10 {
            assert!(b.try_take(1.0, t0).is_ok());
        }
        let w = b.try_take(1.0, t0).unwrap_err();
        assert!((w.0.as_secs_f64() - 0.1).abs() < 1e-9);
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)).is_err());
        assert!(b.reset_after(t0 + Duration::from_millis(100)) >= Duration::from_millis(999));
    }

    #[test]
    fn refund_and_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 1000.0 / 60.0, t0);
        assert_eq!(b.try_take(800.0, t0), Ok(200.0));
        b.adjust(500.0, t0); // used only 300 of the 800 reserved
        assert_eq!(b.available(t0), 700.0);
        b.adjust(-900.0, t0); // used more than reserved: debt
        assert_eq!(b.available(t0), -200.0);
        assert!(b.try_take(1.0, t0).is_err());
        b.adjust(5000.0, t0);
        assert_eq!(b.available(t0), 1000.0, "never above capacity");
    }

    #[test]
    fn oversized_request_waits_for_full_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 1.0, t0);
        b.try_take(10.0, t0).unwrap();
        assert_eq!(b.try_take(50.0, t0).unwrap_err().0, Duration::from_secs(10));
    }
}
