//! A bulkhead: at most `max_concurrent` in progress, at most `queue` waiting
//! (FIFO), each waiter bounded by `queue_timeout`. A full queue refuses at once.
//! An adaptive controller may lower the live limit below `max_concurrent`
//! (the ceiling) with [`Bulkhead::set_limit`].
//!
//! Plain type, no HTTP: the pipeline wraps it. The lock is a std mutex held
//! only for a few instructions, never across an await.

use crate::metrics;
use parking_lot::Mutex;
use prometheus::{Histogram, IntCounter};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The three numbers of a bulkhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
}

/// Why a bulkhead refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The wait queue was full; `retry_after` is a hint in whole seconds.
    Full { waiting: usize, retry_after: u64 },
    /// Waited `queue_timeout` without getting a slot.
    Timeout { waited: Duration, retry_after: u64 },
}

/// A snapshot for `/status` and the scrape-time gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The live limit (`max_concurrent` unless an adaptive controller set it).
    pub limit: usize,
    pub in_flight: usize,
    pub waiting: usize,
    pub oldest_wait: Duration,
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<()>,
}

struct State {
    /// The live limit, at most `max_concurrent`.
    limit: usize,
    in_flight: usize,
    waiters: VecDeque<Waiter>,
    next_id: u64,
    /// Smoothed seconds between releases (the queue's drain rate).
    release_interval: f64,
    last_release: Option<Instant>,
}

struct Counters {
    rejected_full: IntCounter,
    rejected_timeout: IntCounter,
    wait: Histogram,
}

/// See the module doc.
pub struct Bulkhead {
    name: String,
    limits: Limits,
    state: Mutex<State>,
    counters: Counters,
}

impl Bulkhead {
    /// `name` is the queue name users see, e.g. `provider:openai`.
    pub fn new(name: impl Into<String>, limits: Limits) -> Arc<Self> {
        let name = name.into();
        let counters = Counters {
            rejected_full: metrics::QUEUE_REJECTED.with_label_values(&[&name, "full"]),
            rejected_timeout: metrics::QUEUE_REJECTED.with_label_values(&[&name, "timeout"]),
            wait: metrics::QUEUE_WAIT.with_label_values(&[&name]),
        };
        metrics::QUEUE_CAPACITY
            .with_label_values(&[&name])
            .set(limits.queue as i64);
        Arc::new(Bulkhead {
            state: Mutex::new(State {
                limit: limits.max_concurrent,
                in_flight: 0,
                waiters: VecDeque::with_capacity(limits.queue.min(4096)),
                next_id: 0,
                release_interval: 0.0,
                last_release: None,
            }),
            name,
            limits,
            counters,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Take a slot: at once, after a FIFO wait, or not at all.
    /// Dropping the returned future while it waits leaves the queue at once.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Refusal> {
        let (id, rx) = {
            let mut st = self.state.lock();
            if st.in_flight < st.limit && st.waiters.is_empty() {
                st.in_flight += 1;
                return Ok(Permit { bulkhead: self.clone() });
            }
            if st.waiters.len() >= self.limits.queue {
                let waiting = st.waiters.len();
                let retry_after = self.retry_after_locked(&st);
                drop(st);
                self.counters.rejected_full.inc();
                return Err(Refusal::Full { waiting, retry_after });
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            st.waiters.push_back(Waiter {
                id,
                since: Instant::now(),
                tx,
            });
            (id, rx)
        };
        let started = Instant::now();
        let mut guard = WaitGuard {
            bulkhead: self,
            id,
            rx,
            armed: true,
        };
        match tokio::time::timeout(self.limits.queue_timeout, &mut guard.rx).await {
            Ok(Ok(())) => {
                guard.armed = false;
                self.counters.wait.observe(started.elapsed().as_secs_f64());
                Ok(Permit { bulkhead: self.clone() })
            }
            _ => {
                guard.armed = false;
                let mut st = self.state.lock();
                if let Some(pos) = st.waiters.iter().position(|w| w.id == id) {
                    st.waiters.remove(pos);
                    let retry_after = self.retry_after_locked(&st);
                    drop(st);
                    self.counters.rejected_timeout.inc();
                    self.counters.wait.observe(started.elapsed().as_secs_f64());
                    Err(Refusal::Timeout {
                        waited: started.elapsed(),
                        retry_after,
                    })
                } else {
                    // A slot was handed to us as the timer fired: keep it.
                    Ok(Permit { bulkhead: self.clone() })
                }
            }
        }
    }

    /// Set the live limit (within 1 ..= `max_concurrent`). A higher one
    /// admits waiters at once; a lower one lets those in flight finish and
    /// admits no one until fewer than it are in flight.
    pub fn set_limit(&self, limit: usize) {
        let mut st = self.state.lock();
        st.limit = limit.clamp(1, self.limits.max_concurrent.max(1));
        while st.in_flight < st.limit {
            let Some(w) = st.waiters.pop_front() else { break };
            if w.tx.send(()).is_ok() {
                st.in_flight += 1;
            }
        }
    }

    /// The live limit.
    pub fn limit(&self) -> usize {
        self.state.lock().limit
    }

    /// Current limit, in-flight, waiting and oldest wait.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        Snapshot {
            limit: st.limit,
            in_flight: st.in_flight,
            waiting: st.waiters.len(),
            oldest_wait: st.waiters.front().map(|w| w.since.elapsed()).unwrap_or_default(),
        }
    }

    /// Seconds until a new waiter would likely be served, from the recent drain rate.
    fn retry_after_locked(&self, st: &State) -> u64 {
        let secs = if st.release_interval > 0.0 {
            let per_slot = st.release_interval;
            (st.waiters.len() + 1) as f64 * per_slot
        } else {
            self.limits.queue_timeout.as_secs_f64()
        };
        (secs.ceil() as u64).clamp(1, 60)
    }

    fn release(&self) {
        let mut st = self.state.lock();
        let now = Instant::now();
        if let Some(last) = st.last_release {
            let dt = now.duration_since(last).as_secs_f64();
            st.release_interval = if st.release_interval == 0.0 {
                dt
            } else {
                0.8 * st.release_interval + 0.2 * dt
            };
        }
        st.last_release = Some(now);
        if st.in_flight > st.limit {
            // The limit was lowered: this slot goes away.
            st.in_flight -= 1;
            return;
        }
        // Hand the slot to the oldest live waiter; in_flight stays the same.
        while let Some(w) = st.waiters.pop_front() {
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        st.in_flight -= 1;
    }
}

/// Removes a cancelled waiter from the queue (or gives back a slot handed to it).
/// It owns the receiver so that a hand-over can only succeed while the guard lives.
struct WaitGuard<'a> {
    bulkhead: &'a Arc<Bulkhead>,
    id: u64,
    rx: oneshot::Receiver<()>,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.bulkhead.state.lock();
        if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
            st.waiters.remove(pos);
        } else {
            // The slot was handed over just before the waiter went away.
            drop(st);
            self.bulkhead.release();
        }
    }
}

/// A slot in a bulkhead; dropping it frees the slot for the next waiter.
pub struct Permit {
    bulkhead: Arc<Bulkhead>,
}

impl Permit {
    pub fn bulkhead(&self) -> &Arc<Bulkhead> {
        &self.bulkhead
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bh(max: usize, queue: usize, timeout_ms: u64) -> Arc<Bulkhead> {
        Bulkhead::new(
            format!("test:{max}-{queue}-{timeout_ms}-{}", rand::random::<u32>()),
            Limits {
                max_concurrent: max,
                queue,
                queue_timeout: Duration::from_millis(timeout_ms),
            },
        )
    }

    #[tokio::test]
    async fn admits_up_to_max_then_queues_then_refuses() {
        let b = bh(2, 1, 1000);
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.snapshot().waiting, 1);
        match b.acquire().await {
            Err(Refusal::Full {
                waiting: 1,
                retry_after,
            }) => assert!(retry_after >= 1),
            other => panic!("expected Full, got {:?}", other.map(|_| ())),
        }
        drop(p1);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(b.snapshot().waiting, 0);
    }

    #[tokio::test]
    async fn fifo_order() {
        let b = bh(1, 10, 5000);
        let p = b.acquire().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = b.acquire().await.unwrap();
                order.lock().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(p);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn timeout_refuses_and_leaves_queue() {
        let b = bh(1, 4, 50);
        let _p = b.acquire().await.unwrap();
        let started = Instant::now();
        match b.acquire().await {
            Err(Refusal::Timeout { .. }) => {}
            other => panic!("expected Timeout, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(b.snapshot().waiting, 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_at_once() {
        let b = bh(1, 1, 5000);
        let p = b.acquire().await.unwrap();
        let b2 = b.clone();
        let t = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.snapshot().waiting, 1);
        t.abort();
        let _ = t.await;
        assert_eq!(b.snapshot().waiting, 0);
        // Its place is free: a new waiter fits, and the slot goes to it.
        let b3 = b.clone();
        let t2 = tokio::spawn(async move { b3.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p);
        assert!(t2.await.unwrap().is_ok());
        assert_eq!(b.snapshot().in_flight, 0);
    }

    #[tokio::test]
    async fn live_limit_lowers_without_cutting_and_raises_at_once() {
        let b = bh(4, 10, 5000);
        let mut ps = Vec::new();
        for _ in 0..4 {
            ps.push(b.acquire().await.unwrap());
        }
        b.set_limit(2);
        assert_eq!(b.snapshot().in_flight, 4, "those in flight finish");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.acquire().await.map(std::mem::forget) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.snapshot().waiting, 3);
        // Two leave: still at the new limit, nobody admitted.
        ps.pop();
        ps.pop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((b.snapshot().in_flight, b.snapshot().waiting), (2, 3));
        // One more leaves: one waiter gets its slot.
        ps.pop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((b.snapshot().in_flight, b.snapshot().waiting), (2, 2));
        // Raised: the others are admitted at once, up to the new limit.
        b.set_limit(3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((b.snapshot().in_flight, b.snapshot().waiting), (3, 1));
        b.set_limit(100);
        assert_eq!(b.limit(), 4, "never above max_concurrent");
        for w in waiters {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(b.snapshot().in_flight, 4);
    }

    #[tokio::test]
    async fn in_flight_returns_to_zero() {
        let b = bh(3, 3, 1000);
        let mut ps = Vec::new();
        for _ in 0..3 {
            ps.push(b.acquire().await.unwrap());
        }
        assert_eq!(b.snapshot().in_flight, 3);
        ps.clear();
        assert_eq!(
            b.snapshot(),
            Snapshot {
                limit: 3,
                in_flight: 0,
                waiting: 0,
                oldest_wait: Duration::ZERO
            }
        );
    }
}
