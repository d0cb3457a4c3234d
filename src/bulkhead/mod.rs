//! A bulkhead: at most `max_concurrent` in progress, at most `queue`
//! waiting, each waiter bounded by its class's `queue_timeout`. A full queue
//! refuses at once — unless the arrival outranks a waiter, which then loses
//! its place instead.
//!
//! Waiters are served by priority class (`critical` before `standard`
//! before `batch`), a class's reserved slots kept for it, and within a class
//! fairly between keys by weight (`queue.rs`). A refusal carries a
//! `Retry-After` from the measured drain rate of the refused class's queue,
//! booked so that refused clients come back spread out. Queue age sheds too:
//! `max_queue_age` on arrival, CoDel-style `shed` from the back.
//!
//! An adaptive controller may lower the live limit below `max_concurrent`
//! (the ceiling) with [`Bulkhead::set_limit`].
//!
//! Plain type, no HTTP: the pipeline wraps it. The lock is held only for a
//! few instructions, never across an await.

mod queue;

pub use queue::ClassSnapshot;

use crate::config::{BulkheadConf, Priority};
use crate::metrics;
use parking_lot::Mutex;
use prometheus::Histogram;
use queue::{Arrival, Rx, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a bulkhead enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_concurrent: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    /// Refuse an arrival whose class's oldest waiter is older than this.
    pub max_queue_age: Option<Duration>,
    /// Classes with settings of their own; others get the defaults above.
    pub classes: Vec<ClassLimits>,
    pub shed: Option<Shed>,
}

/// A priority class's own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassLimits {
    pub class: Priority,
    /// Slots of `max_concurrent` only this class may take.
    pub reserved: usize,
    pub queue_timeout: Option<Duration>,
    pub max_queue_age: Option<Duration>,
}

/// CoDel-style shedding by queue age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shed {
    pub target: Duration,
    pub interval: Duration,
}

impl Limits {
    /// Just the three numbers: one class, no shedding.
    pub fn new(max_concurrent: usize, queue: usize, queue_timeout: Duration) -> Limits {
        Limits {
            max_concurrent,
            queue,
            queue_timeout,
            max_queue_age: None,
            classes: Vec::new(),
            shed: None,
        }
    }

    pub fn from_conf(c: &BulkheadConf) -> Limits {
        Limits {
            max_concurrent: c.max_concurrent,
            queue: c.queue,
            queue_timeout: c.queue_timeout.0,
            max_queue_age: c.max_queue_age.map(|d| d.0),
            classes: c
                .classes
                .iter()
                .map(|(class, cc)| ClassLimits {
                    class: *class,
                    reserved: cc.reserved.map_or(0, |s| s.of(c.max_concurrent)),
                    queue_timeout: cc.queue_timeout.map(|d| d.0),
                    max_queue_age: cc.max_queue_age.map(|d| d.0),
                })
                .collect(),
            shed: c.shed.map(|s| Shed {
                target: s.target.0,
                interval: s.interval.0,
            }),
        }
    }
}

/// Who asks for a slot: its priority class and its key (the tenant whose
/// weighted share of slots and queue it counts against).
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub class: Priority,
    /// The key's name; `None`: requests without a key share one line.
    pub tenant: Option<Arc<str>>,
    /// The key's weight for fair shares (at least 1).
    pub weight: u32,
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket {
            class: Priority::STANDARD,
            tenant: None,
            weight: 1,
        }
    }
}

/// Why a bulkhead refused a request, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    /// The refused request's class.
    pub class: Priority,
    /// Whole seconds, from the class's measured drain rate.
    pub retry_after: u64,
    /// Waiters in the queue at the refusal.
    pub waiting: usize,
    /// How long the request had waited (zero when refused on arrival).
    pub waited: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The queue was full and nobody could be pushed out for it.
    Full,
    /// Waited its class's `queue_timeout` without a slot.
    Timeout,
    /// A request of a higher class took its place in a full queue.
    Evicted { by: Priority },
    /// Its key held more than its weighted share of a full queue when
    /// another key's request arrived.
    FairShare,
    /// Its class's oldest waiter had waited longer than `max_queue_age`.
    MaxAge { oldest: Duration, max: Duration },
    /// CoDel: its class's oldest waiter stayed over the target too long.
    Shed { oldest: Duration, target: Duration },
}

impl Reason {
    /// The `reason` labels of `weir_queue_rejected_total`, by [`Reason::index`].
    pub const LABELS: [&'static str; 6] = ["full", "timeout", "evicted", "fair_share", "max_age", "shed"];

    /// This reason's place in [`Reason::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Reason::Full => 0,
            Reason::Timeout => 1,
            Reason::Evicted { .. } => 2,
            Reason::FairShare => 3,
            Reason::MaxAge { .. } => 4,
            Reason::Shed { .. } => 5,
        }
    }
}

/// A snapshot for `/status`, least-connection order and the scrape-time gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The live limit (`max_concurrent` unless an adaptive controller set it).
    pub limit: usize,
    pub in_flight: usize,
    pub waiting: usize,
    pub oldest_wait: Duration,
}

/// See the module doc.
pub struct Bulkhead {
    name: String,
    limits: Limits,
    state: Mutex<State>,
    wait: Histogram,
}

impl Bulkhead {
    /// `name` is the queue name users see, e.g. `provider:openai`.
    pub fn new(name: impl Into<String>, limits: Limits) -> Arc<Self> {
        let name = name.into();
        metrics::QUEUE_CAPACITY
            .with_label_values(&[&name])
            .set(limits.queue as i64);
        Arc::new(Bulkhead {
            state: Mutex::new(State::new(&name, &limits)),
            wait: metrics::QUEUE_WAIT.with_label_values(&[&name]),
            name,
            limits,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Take a slot for `ticket`: at once, after a wait in its class's
    /// queue, or not at all. Dropping the returned future while it waits
    /// leaves the queue at once.
    pub async fn acquire(self: &Arc<Self>, ticket: &Ticket) -> Result<Permit, Refusal> {
        let started = Instant::now();
        let arrival = self.state.lock().arrive(ticket, started);
        let (id, rx, timeout, wait) = match arrival {
            Arrival::Admitted => return Ok(Permit::new(self, ticket, Duration::ZERO)),
            Arrival::Refused(r) => return Err(r),
            Arrival::Queued { id, rx, timeout, wait } => (id, rx, timeout, wait),
        };
        let mut guard = WaitGuard {
            bulkhead: self,
            ticket,
            id,
            rx,
            armed: true,
        };
        let told = tokio::time::timeout(timeout, &mut guard.rx).await;
        guard.armed = false;
        let waited = started.elapsed();
        let outcome = match told {
            Ok(Ok(told)) => told,
            _ => {
                let mut st = self.state.lock();
                if st.leave(ticket, id) {
                    Err(st.timed_out(ticket, waited, Instant::now()))
                } else {
                    drop(st);
                    // Told just as the timer fired: a slot or a refusal.
                    match guard.rx.try_recv() {
                        Ok(told) => told,
                        Err(_) => Err(self.state.lock().timed_out(ticket, waited, Instant::now())),
                    }
                }
            }
        };
        wait.observe(waited.as_secs_f64());
        self.wait.observe(waited.as_secs_f64());
        outcome.map(|()| Permit::new(self, ticket, waited))
    }

    /// Set the live limit (within 1 ..= `max_concurrent`). A higher one
    /// admits waiters at once; a lower one lets those in flight finish and
    /// admits no one until fewer than it are in flight.
    pub fn set_limit(&self, limit: usize) {
        self.state.lock().set_limit(limit, Instant::now());
    }

    /// The live limit.
    pub fn limit(&self) -> usize {
        self.state.lock().limit
    }

    /// Whether it has a free slot under the live limit or a free queue
    /// place (reserved slots aside): what least-connection order asks of
    /// every candidate per request, without [`Bulkhead::snapshot`]'s clock
    /// read and scan of the queues.
    pub fn has_room(&self) -> bool {
        let st = self.state.lock();
        st.in_flight < st.limit || st.waiting < self.limits.queue
    }

    /// Current limit, in-flight, waiting and oldest wait.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        Snapshot {
            limit: st.limit,
            in_flight: st.in_flight,
            waiting: st.waiting,
            oldest_wait: st.oldest_wait(Instant::now()),
        }
    }

    /// Each priority class seen so far, highest first.
    pub fn classes(&self) -> Vec<ClassSnapshot> {
        self.state.lock().classes(Instant::now())
    }

    fn release(&self, ticket: &Ticket, since: Instant) {
        let now = Instant::now();
        self.state.lock().release(ticket, now.duration_since(since), now);
    }
}

/// Takes a cancelled waiter out of the queue (or gives back a slot handed
/// to it). It owns the receiver, so a hand-over can only succeed while the
/// guard lives.
struct WaitGuard<'a> {
    bulkhead: &'a Arc<Bulkhead>,
    ticket: &'a Ticket,
    id: u64,
    rx: Rx,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.bulkhead.state.lock();
        if !st.leave(self.ticket, self.id) {
            if let Ok(Ok(())) = self.rx.try_recv() {
                // The slot was handed over just before the waiter went away.
                st.release(self.ticket, Duration::ZERO, Instant::now());
            }
        }
    }
}

/// A slot in a bulkhead; dropping it frees the slot for the next waiter.
pub struct Permit {
    bulkhead: Arc<Bulkhead>,
    ticket: Ticket,
    since: Instant,
    /// Time spent in the queue before the slot (zero when one was free).
    waited: Duration,
}

impl Permit {
    fn new(bulkhead: &Arc<Bulkhead>, ticket: &Ticket, waited: Duration) -> Permit {
        Permit {
            bulkhead: bulkhead.clone(),
            ticket: ticket.clone(),
            since: Instant::now(),
            waited,
        }
    }

    /// How long the request queued for this slot (zero: one was free).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The bulkhead it is a slot of.
    pub fn bulkhead(&self) -> &Arc<Bulkhead> {
        &self.bulkhead
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.bulkhead.release(&self.ticket, self.since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std() -> Ticket {
        Ticket::default()
    }

    fn bh(max: usize, queue: usize, timeout_ms: u64) -> Arc<Bulkhead> {
        Bulkhead::new(
            format!("test:{max}-{queue}-{timeout_ms}-{}", rand::random::<u32>()),
            Limits::new(max, queue, Duration::from_millis(timeout_ms)),
        )
    }

    #[tokio::test]
    async fn admits_up_to_max_then_queues_then_refuses() {
        let b = bh(2, 1, 1000);
        assert!(b.has_room());
        let p1 = b.acquire(&std()).await.unwrap();
        let _p2 = b.acquire(&std()).await.unwrap();
        assert!(b.has_room(), "slots full, a queue place free");
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(&std()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.snapshot().waiting, 1);
        assert!(!b.has_room(), "slots and queue full");
        match b.acquire(&std()).await {
            Err(Refusal {
                reason: Reason::Full,
                waiting: 1,
                retry_after,
                ..
            }) => assert!(retry_after >= 1),
            other => panic!("expected Full, got {:?}", other.map(|_| ())),
        }
        drop(p1);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(b.snapshot().waiting, 0);
        assert!(b.has_room());
    }

    #[tokio::test]
    async fn room_is_read_at_the_live_limit() {
        // No queue; an adaptive controller lowered the limit to the one in flight.
        let b = bh(2, 0, 1000);
        let _p = b.acquire(&std()).await.unwrap();
        assert!(b.has_room());
        b.set_limit(1);
        assert!(!b.has_room(), "at the live limit, though under max_concurrent");
        assert!(b.acquire(&std()).await.is_err(), "as acquire sees it");
    }

    #[tokio::test]
    async fn fifo_order() {
        let b = bh(1, 10, 5000);
        let p = b.acquire(&std()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = b.acquire(&std()).await.unwrap();
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
        let _p = b.acquire(&std()).await.unwrap();
        let started = Instant::now();
        match b.acquire(&std()).await {
            Err(Refusal {
                reason: Reason::Timeout,
                ..
            }) => {}
            other => panic!("expected Timeout, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(b.snapshot().waiting, 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_at_once() {
        let b = bh(1, 1, 5000);
        let p = b.acquire(&std()).await.unwrap();
        let b2 = b.clone();
        let t = tokio::spawn(async move { b2.acquire(&std()).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.snapshot().waiting, 1);
        t.abort();
        let _ = t.await;
        assert_eq!(b.snapshot().waiting, 0);
        // Its place is free: a new waiter fits, and the slot goes to it.
        let b3 = b.clone();
        let t2 = tokio::spawn(async move { b3.acquire(&std()).await.map(|_| ()) });
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
            ps.push(b.acquire(&std()).await.unwrap());
        }
        b.set_limit(2);
        assert_eq!(b.snapshot().in_flight, 4, "those in flight finish");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.acquire(&std()).await.map(std::mem::forget) })
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
            ps.push(b.acquire(&std()).await.unwrap());
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
