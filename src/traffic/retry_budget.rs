//! A retry budget (as Envoy's): retries in progress may be at most a share of
//! the requests in progress, with a small floor, so retries cannot multiply an outage.

use std::sync::atomic::{AtomicUsize, Ordering};

/// See the module doc.
#[derive(Debug)]
pub struct RetryBudget {
    active: AtomicUsize,
    retrying: AtomicUsize,
    ratio: f64,
    min: usize,
}

impl RetryBudget {
    pub fn new(ratio: f64, min: usize) -> Self {
        RetryBudget {
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            ratio,
            min,
        }
    }

    /// Count a request in progress until the guard drops.
    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn request(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { b: self }
    }

    /// Try to start a retry; `None` when the budget is spent.
    pub fn try_retry(&self) -> Option<RetryGuard<'_>> {
        let limit = ((self.active.load(Ordering::Relaxed) as f64 * self.ratio) as usize).max(self.min);
        let mut cur = self.retrying.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            match self
                .retrying
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(RetryGuard { b: self }),
                Err(c) => cur = c,
            }
        }
    }
}

/// A request in progress.
pub struct ActiveGuard<'a> {
    b: &'a RetryBudget,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.b.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in progress.
pub struct RetryGuard<'a> {
    b: &'a RetryBudget,
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.b.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_then_ratio() {
        let b = RetryBudget::new(0.2, 3);
        let _active: Vec<_> = (0..20).map(|_| b.request()).collect();
        let r: Vec<_> = (0..10).filter_map(|_| b.try_retry()).collect();
        assert_eq!(r.len(), 4, "20% of 20");
        drop(r);
        let b2 = RetryBudget::new(0.2, 3);
        let _a = b2.request();
        let r2: Vec<_> = (0..10).filter_map(|_| b2.try_retry()).collect();
        assert_eq!(r2.len(), 3, "the floor");
    }
}
