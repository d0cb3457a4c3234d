//! The capacity model of `weir mock --capacity`: a provider with N
//! concurrent slots, a bounded queue in front of them, 429 past both, and
//! latency that grows with load past a knee — so overload control can be
//! tested and benchmarked offline.
//!
//! Without a capacity (0, the default) admission is two atomic adds and the
//! latency factor two atomic loads: no lock, no queue. With one, admission
//! and release take a short `parking_lot` lock (never across an await);
//! waiters are woken in arrival order by a oneshot each.
//!
//! Memory orders: a release decrements `in_service` and then looks at
//! `queued`; an arrival that may wait increments `queued` and then looks at
//! `in_service`. Both `SeqCst`, so at least one of them sees the other: either
//! the arrival sees the freed slot, or the release sees a waiter and wakes it
//! under the lock. No wake-up is lost, even while the capacity changes from
//! 0 (where releases take no lock) to N.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::options::MockOptions;

/// `knee`/`queue` unset: they follow the capacity.
const UNSET: u32 = u32::MAX;

/// Queue places per slot when `--queue` is not given.
const QUEUE_PER_SLOT: u32 = 4;

/// Weight of the newest service time in the moving average behind `Retry-After`.
const SERVICE_EWMA_WEIGHT: f64 = 0.2;

/// Bounds of a computed `Retry-After`, in seconds.
const RETRY_AFTER_MIN: u64 = 1;
const RETRY_AFTER_MAX: u64 = 3600;

/// How much slower a request runs with `load` requests in service (itself
/// included): `1 + max(0, load − knee) / knee × slope`; 1 with no knee.
pub(super) fn slowdown(load: u64, knee: u32, slope: f64) -> f64 {
    if knee == 0 || load <= u64::from(knee) {
        return 1.0;
    }
    let over = (load - u64::from(knee)) as f64 / f64::from(knee);
    1.0 + over * slope
}

/// The limits `--capacity`, `--queue`, `--knee`, `--slope` (or
/// `POST /mock/config`) set; `None` follows the capacity.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct LimitsUpdate {
    pub(super) capacity: Option<u32>,
    pub(super) queue: Option<Option<u32>>,
    pub(super) knee: Option<Option<u32>>,
    pub(super) slope: Option<f64>,
}

/// Concurrent slots, their queue, and the counters of both.
#[derive(Debug)]
pub(super) struct Capacity {
    /// Slots; 0 = unlimited.
    capacity: AtomicU32,
    /// Queue places, or [`UNSET`] for [`QUEUE_PER_SLOT`] per slot.
    queue: AtomicU32,
    /// Load past which latency grows, or [`UNSET`] for the capacity.
    knee: AtomicU32,
    /// `f64` bit pattern.
    slope: AtomicU64,
    in_service: AtomicU64,
    max_in_service: AtomicU64,
    /// Requests waiting for a slot (and, for an instant, arrivals checking).
    queued: AtomicU64,
    rejected: AtomicU64,
    waiters: Mutex<Waiters>,
}

/// The queue, in arrival order, and what releases taught about service times.
#[derive(Debug, Default)]
struct Waiters {
    queue: VecDeque<Waiter>,
    next_ticket: u64,
    /// Moving average of how long a request holds its slot, in seconds.
    service_secs: Option<f64>,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// Receives the load once the waiter holds a slot.
    wake: oneshot::Sender<u64>,
}

/// What becomes of an arriving request.
pub(super) enum Admission<'a> {
    /// It holds a slot.
    Admitted(Slot<'a>),
    /// It waits in the queue for one.
    Queued(Waiting<'a>),
    /// Slots and queue are full: answer 429.
    Refused(Refusal),
}

/// Why and for how long a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) capacity: u32,
    pub(super) queue: u32,
    /// Seconds until the queue ahead has drained, by the measured service time.
    pub(super) retry_after_secs: u64,
}

/// A held slot; released when dropped, however the exchange ends.
#[derive(Debug)]
pub(super) struct Slot<'a> {
    capacity: &'a Capacity,
    /// When it was taken, if the capacity was limited then (for `Retry-After`).
    since: Option<Instant>,
    load: u64,
}

/// A place in the queue. Dropping it (the client left) gives the place up,
/// or the slot, if one was granted meanwhile.
#[derive(Debug)]
pub(super) struct Waiting<'a> {
    capacity: &'a Capacity,
    ticket: u64,
    granted: oneshot::Receiver<u64>,
    /// Became a [`Slot`]: nothing to give back on drop.
    taken: bool,
}

impl Capacity {
    pub(super) fn new(opts: &MockOptions) -> Self {
        Capacity {
            capacity: AtomicU32::new(opts.capacity),
            queue: AtomicU32::new(opts.queue.unwrap_or(UNSET)),
            knee: AtomicU32::new(opts.knee.unwrap_or(UNSET)),
            slope: AtomicU64::new(opts.slope.to_bits()),
            in_service: AtomicU64::new(0),
            max_in_service: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    fn limit(&self) -> u32 {
        self.capacity.load(Ordering::SeqCst)
    }

    fn queue_limit(&self, capacity: u32) -> u32 {
        match self.queue.load(Ordering::Relaxed) {
            UNSET => capacity.saturating_mul(QUEUE_PER_SLOT),
            places => places,
        }
    }

    fn knee(&self) -> u32 {
        match self.knee.load(Ordering::Relaxed) {
            UNSET => self.limit(),
            knee => knee,
        }
    }

    /// Latency factor of a request admitted with `load` in service.
    fn slowdown(&self, load: u64) -> f64 {
        slowdown(load, self.knee(), f64::from_bits(self.slope.load(Ordering::Relaxed)))
    }

    /// Admit an arriving request: a slot, a queue place, or a refusal.
    pub(super) fn admit(&self) -> Admission<'_> {
        if self.limit() == 0 {
            return Admission::Admitted(self.take_slot(None));
        }
        let mut waiters = self.waiters.lock();
        let capacity = self.limit();
        if capacity == 0 {
            drop(waiters);
            return Admission::Admitted(self.take_slot(None));
        }
        // Announce a possible waiter before looking at the slots (see the module doc).
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.wake_waiters(&mut waiters);
        if waiters.queue.is_empty() && self.in_service.load(Ordering::SeqCst) < u64::from(capacity) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Admission::Admitted(self.take_slot(Some(Instant::now())));
        }
        let queue = self.queue_limit(capacity);
        if waiters.queue.len() >= queue as usize {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused(Refusal {
                capacity,
                queue,
                retry_after_secs: retry_after_secs(waiters.queue.len(), capacity, waiters.service_secs),
            });
        }
        let ticket = waiters.next_ticket;
        waiters.next_ticket += 1;
        let (wake, granted) = oneshot::channel();
        waiters.queue.push_back(Waiter { ticket, wake });
        Admission::Queued(Waiting {
            capacity: self,
            ticket,
            granted,
            taken: false,
        })
    }

    fn take_slot(&self, since: Option<Instant>) -> Slot<'_> {
        let load = self.in_service.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_service.fetch_max(load, Ordering::Relaxed);
        Slot {
            capacity: self,
            since,
            load,
        }
    }

    /// Hand free slots to the waiters at the head of the queue.
    fn wake_waiters(&self, waiters: &mut Waiters) {
        loop {
            let capacity = self.limit();
            if capacity != 0 && self.in_service.load(Ordering::SeqCst) >= u64::from(capacity) {
                return;
            }
            let Some(waiter) = waiters.queue.pop_front() else {
                return;
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let load = self.in_service.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_service.fetch_max(load, Ordering::Relaxed);
            if waiter.wake.send(load).is_err() {
                // Its receiver went away without dequeuing (cannot happen while
                // `Waiting::drop` dequeues under this lock); give the slot back.
                self.in_service.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Give a slot back and wake whoever it lets in.
    fn release(&self, since: Option<Instant>) {
        self.in_service.fetch_sub(1, Ordering::SeqCst);
        if since.is_none() && self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut waiters = self.waiters.lock();
        if let Some(since) = since {
            let secs = since.elapsed().as_secs_f64();
            waiters.service_secs = Some(match waiters.service_secs {
                Some(mean) => mean + SERVICE_EWMA_WEIGHT * (secs - mean),
                None => secs,
            });
        }
        self.wake_waiters(&mut waiters);
    }

    /// Apply a validated change; a larger capacity lets waiters in at once.
    pub(super) fn apply(&self, update: &LimitsUpdate) {
        let mut waiters = self.waiters.lock();
        if let Some(queue) = update.queue {
            self.queue.store(queue.unwrap_or(UNSET), Ordering::Relaxed);
        }
        if let Some(knee) = update.knee {
            self.knee.store(knee.unwrap_or(UNSET), Ordering::Relaxed);
        }
        if let Some(slope) = update.slope {
            self.slope.store(slope.to_bits(), Ordering::Relaxed);
        }
        if let Some(capacity) = update.capacity {
            self.capacity.store(capacity, Ordering::SeqCst);
        }
        self.wake_waiters(&mut waiters);
    }

    /// The limits as `GET /mock/config` shows them (the values in effect).
    pub(super) fn config_json(&self) -> Value {
        let capacity = self.limit();
        json!({
            "capacity": capacity,
            "queue": self.queue_limit(capacity),
            "knee": self.knee(),
            "slope": f64::from_bits(self.slope.load(Ordering::Relaxed)),
        })
    }

    /// Requests in service now.
    pub(super) fn in_service(&self) -> u64 {
        self.in_service.load(Ordering::Relaxed)
    }

    /// The counters `GET /mock/stats` adds.
    pub(super) fn stats_json(&self) -> Value {
        json!({
            "capacity": self.limit(),
            "in_service": self.in_service.load(Ordering::Relaxed),
            "max_in_service": self.max_in_service.load(Ordering::Relaxed),
            "queued": self.queued.load(Ordering::Relaxed),
            "rejected_429": self.rejected.load(Ordering::Relaxed),
        })
    }

    /// Zero the refusals; the high-water mark restarts from what is in service.
    pub(super) fn reset_stats(&self) {
        self.rejected.store(0, Ordering::Relaxed);
        self.max_in_service
            .store(self.in_service.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Seconds until `queued` waiters have been served by `capacity` slots at the
/// measured service time (whole seconds, rounded up); 1 before any was measured.
fn retry_after_secs(queued: usize, capacity: u32, service_secs: Option<f64>) -> u64 {
    let Some(service) = service_secs else {
        return RETRY_AFTER_MIN;
    };
    let drain = (queued as f64 + 1.0) * service / f64::from(capacity.max(1));
    if drain.is_finite() {
        (drain.ceil() as u64).clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
    } else {
        RETRY_AFTER_MAX
    }
}

impl Slot<'_> {
    /// Latency factor for this request, by the load it was admitted into.
    pub(super) fn slowdown(&self) -> f64 {
        self.capacity.slowdown(self.load)
    }

    /// `x-ratelimit-limit-requests` and `…-remaining-requests` (free slots
    /// once this one was taken), when the capacity is limited.
    pub(super) fn rate_limit(&self) -> Option<(u32, u64)> {
        let capacity = self.capacity.limit();
        (capacity > 0).then(|| (capacity, u64::from(capacity).saturating_sub(self.capacity.in_service())))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.capacity.release(self.since);
    }
}

impl<'a> Waiting<'a> {
    /// Wait for a slot (cancel-safe: dropping the future drops the place).
    pub(super) async fn admitted(mut self) -> Slot<'a> {
        let load = (&mut self.granted).await;
        self.taken = true;
        let capacity = self.capacity;
        match load {
            Ok(load) => Slot {
                capacity,
                since: Some(Instant::now()),
                load,
            },
            // The sender is only dropped after a send, so this is unreachable;
            // take a slot anyway rather than wait forever.
            Err(_) => capacity.take_slot(Some(Instant::now())),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let capacity = self.capacity;
        let mut waiters = capacity.waiters.lock();
        if let Some(at) = waiters.queue.iter().position(|w| w.ticket == self.ticket) {
            waiters.queue.remove(at);
            capacity.queued.fetch_sub(1, Ordering::SeqCst);
        } else if self.granted.try_recv().is_ok() {
            // Granted a slot after the client left: give it back.
            capacity.in_service.fetch_sub(1, Ordering::SeqCst);
        }
        capacity.wake_waiters(&mut waiters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(slots: u32, queue: Option<u32>) -> Capacity {
        Capacity::new(&MockOptions {
            capacity: slots,
            queue,
            ..MockOptions::default()
        })
    }

    fn stat(c: &Capacity, name: &str) -> u64 {
        c.stats_json()[name].as_u64().unwrap()
    }

    #[test]
    fn latency_grows_past_the_knee() {
        assert_eq!(slowdown(4, 4, 1.0), 1.0);
        assert_eq!(slowdown(1, 4, 1.0), 1.0);
        assert_eq!(slowdown(8, 4, 1.0), 2.0);
        assert_eq!(slowdown(6, 4, 1.0), 1.5);
        assert_eq!(slowdown(8, 4, 0.5), 1.5);
        assert_eq!(slowdown(12, 4, 2.0), 5.0);
        assert_eq!(slowdown(8, 4, 0.0), 1.0);
        // No knee: no slowdown.
        assert_eq!(slowdown(1000, 0, 1.0), 1.0);
    }

    #[test]
    fn knee_follows_capacity_unless_set() {
        let c = capacity(4, None);
        assert_eq!(c.slowdown(8), 2.0);
        c.apply(&LimitsUpdate {
            knee: Some(Some(2)),
            ..LimitsUpdate::default()
        });
        assert_eq!(c.slowdown(4), 2.0);
        // Without a capacity the knee still applies to the load.
        let unlimited = Capacity::new(&MockOptions {
            knee: Some(1),
            slope: 1.0,
            ..MockOptions::default()
        });
        let slots: Vec<_> = (0..3).map(|_| unlimited.admit()).collect();
        let Admission::Admitted(last) = &slots[2] else {
            panic!("unlimited admits")
        };
        assert_eq!(last.slowdown(), 3.0);
        assert_eq!(last.rate_limit(), None);
    }

    #[test]
    fn unlimited_admits_everyone() {
        let c = capacity(0, None);
        let slots: Vec<_> = (0..100).map(|_| c.admit()).collect();
        assert!(slots.iter().all(|a| matches!(a, Admission::Admitted(_))));
        assert_eq!(stat(&c, "in_service"), 100);
        drop(slots);
        assert_eq!(stat(&c, "in_service"), 0);
        assert_eq!(stat(&c, "max_in_service"), 100);
        assert!(
            c.waiters.lock().service_secs.is_none(),
            "no lock taken, nothing measured"
        );
    }

    #[test]
    fn slots_then_queue_then_refusal() {
        let c = capacity(2, Some(1));
        let a = c.admit();
        let b = c.admit();
        assert!(matches!(a, Admission::Admitted(_)) && matches!(b, Admission::Admitted(_)));
        let Admission::Admitted(slot) = &b else { unreachable!() };
        assert_eq!(slot.rate_limit(), Some((2, 0)));
        let waiting = c.admit();
        assert!(matches!(waiting, Admission::Queued(_)));
        let Admission::Refused(refusal) = c.admit() else {
            panic!("slots and queue are full")
        };
        assert_eq!(
            refusal,
            Refusal {
                capacity: 2,
                queue: 1,
                retry_after_secs: 1
            }
        );
        assert_eq!(stat(&c, "in_service"), 2);
        assert_eq!(stat(&c, "queued"), 1);
        assert_eq!(stat(&c, "rejected_429"), 1);
        // A released slot goes to the waiter at once, not to a newcomer.
        drop(a);
        assert_eq!(stat(&c, "in_service"), 2);
        assert_eq!(stat(&c, "queued"), 0);
        assert!(matches!(c.admit(), Admission::Queued(_)));
        assert_eq!(stat(&c, "max_in_service"), 2);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order() {
        let c = capacity(1, Some(4));
        let Admission::Admitted(first) = c.admit() else {
            panic!()
        };
        let Admission::Queued(second) = c.admit() else { panic!() };
        let Admission::Queued(third) = c.admit() else { panic!() };
        drop(first);
        let second = second.admitted().await;
        assert_eq!(second.load, 1);
        assert_eq!(stat(&c, "queued"), 1);
        drop(second);
        let third = third.admitted().await;
        drop(third);
        assert_eq!(stat(&c, "in_service"), 0);
    }

    #[test]
    fn a_waiter_that_leaves_gives_back_its_place_or_its_slot() {
        let c = capacity(1, Some(4));
        let Admission::Admitted(first) = c.admit() else {
            panic!()
        };
        let Admission::Queued(second) = c.admit() else { panic!() };
        let Admission::Queued(third) = c.admit() else { panic!() };
        drop(third);
        assert_eq!(stat(&c, "queued"), 1);
        // Granted a slot, then gone before taking it: the slot comes back.
        drop(first);
        assert_eq!(stat(&c, "in_service"), 1);
        drop(second);
        assert_eq!(stat(&c, "in_service"), 0);
        assert_eq!(stat(&c, "queued"), 0);
        assert!(matches!(c.admit(), Admission::Admitted(_)));
    }

    #[test]
    fn capacity_changes_live() {
        let c = capacity(3, Some(10));
        let held: Vec<_> = (0..3).map(|_| c.admit()).collect();
        // Lower: those in service stay, newcomers wait until below the new limit.
        c.apply(&LimitsUpdate {
            capacity: Some(1),
            ..LimitsUpdate::default()
        });
        let waiting = c.admit();
        assert!(matches!(waiting, Admission::Queued(_)));
        let mut held = held;
        held.pop();
        held.pop();
        assert_eq!(stat(&c, "queued"), 1, "one still in service fills a capacity of 1");
        held.pop();
        assert_eq!((stat(&c, "in_service"), stat(&c, "queued")), (1, 0));
        // Raise: waiters get in at once.
        let more: Vec<_> = (0..3).map(|_| c.admit()).collect();
        assert!(more.iter().all(|a| matches!(a, Admission::Queued(_))));
        c.apply(&LimitsUpdate {
            capacity: Some(3),
            ..LimitsUpdate::default()
        });
        assert_eq!((stat(&c, "in_service"), stat(&c, "queued")), (3, 1));
        // Unlimited: everyone.
        c.apply(&LimitsUpdate {
            capacity: Some(0),
            ..LimitsUpdate::default()
        });
        assert_eq!((stat(&c, "in_service"), stat(&c, "queued")), (4, 0));
        drop(more);
        drop(waiting);
        assert_eq!(stat(&c, "in_service"), 0);
    }

    #[test]
    fn queue_defaults_to_four_places_per_slot() {
        let c = capacity(2, None);
        assert_eq!(
            c.config_json(),
            json!({"capacity": 2, "queue": 8, "knee": 2, "slope": 1.0})
        );
        c.apply(&LimitsUpdate {
            capacity: Some(5),
            queue: Some(Some(0)),
            ..LimitsUpdate::default()
        });
        assert_eq!(c.config_json()["queue"], 0);
        let held: Vec<_> = (0..5).map(|_| c.admit()).collect();
        assert!(matches!(c.admit(), Admission::Refused(_)), "no queue: refused at once");
        drop(held);
    }

    #[test]
    fn retry_after_follows_the_measured_service_time() {
        assert_eq!(retry_after_secs(3, 2, None), 1);
        // 3 waiting + this one, 2 slots, 1.5 s each: 3 s.
        assert_eq!(retry_after_secs(3, 2, Some(1.5)), 3);
        assert_eq!(retry_after_secs(0, 4, Some(0.01)), 1);
        assert_eq!(retry_after_secs(0, 1, Some(1e9)), RETRY_AFTER_MAX);
        assert_eq!(retry_after_secs(0, 1, Some(f64::INFINITY)), RETRY_AFTER_MAX);
    }

    #[test]
    fn stats_reset_keeps_what_is_in_service() {
        let c = capacity(1, Some(0));
        let held = c.admit();
        assert!(matches!(c.admit(), Admission::Refused(_)));
        c.reset_stats();
        assert_eq!(
            c.stats_json(),
            json!({"capacity": 1, "in_service": 1, "max_in_service": 1, "queued": 0, "rejected_429": 0})
        );
        drop(held);
    }
}
