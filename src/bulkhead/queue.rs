//! A bulkhead's slots and wait queue as plain state: who is admitted at
//! once, who waits where, who is served next, who is pushed out when the
//! queue is full, what queue age sheds, and when a refused client should
//! come back. No lock, no clock, no await: the caller holds the lock and
//! passes `now`.
//!
//! The queue is split by priority class (highest served first), and each
//! class into one line per key (its tenant). A freed slot goes to the
//! highest class that may take it (reservations of other classes
//! respected), and within it to the key holding the least of its weighted
//! share of slots; each line is FIFO.

use super::{Limits, Reason, Refusal, Ticket};
use crate::config::Priority;
use crate::metrics;
use prometheus::{Histogram, IntCounter};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a waiter is told: its slot, or why it lost its place.
pub(super) type Tx = oneshot::Sender<Result<(), Refusal>>;
pub(super) type Rx = oneshot::Receiver<Result<(), Refusal>>;

/// How an arrival went.
pub(super) enum Arrival {
    /// A slot at once.
    Admitted,
    /// In the queue: wait on `rx` for at most `timeout`.
    Queued {
        id: u64,
        rx: Rx,
        timeout: Duration,
        wait: Histogram,
    },
    Refused(Refusal),
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: Tx,
}

/// One key's waiters in one class.
struct Line {
    tenant: Option<Arc<str>>,
    weight: u32,
    waiters: VecDeque<Waiter>,
}

/// One priority class of the queue.
pub(super) struct Class {
    pub(super) class: Priority,
    /// Slots reserved at `max_concurrent` (scaled with the live limit).
    reserved: usize,
    queue_timeout: Duration,
    max_queue_age: Option<Duration>,
    pub(super) in_flight: usize,
    pub(super) waiting: usize,
    /// Keys with waiters (a line goes when it empties).
    lines: Vec<Line>,
    /// Slots given to this class from its queue per second, measured over
    /// windows of at least a second while it had waiters: its drain rate,
    /// what `Retry-After` is computed from.
    drain: Rate,
    /// Refused clients of this class were told to come back up to here.
    promised_until: Option<Instant>,
    /// CoDel: since when the oldest waiter has been over `shed.target`, the
    /// sheds in this episode, and when the next may happen.
    above_since: Option<Instant>,
    sheds: u32,
    next_shed: Option<Instant>,
    wait: Histogram,
    rejected: [IntCounter; 6],
}

impl Class {
    fn new(queue: &str, class: Priority, limits: &Limits) -> Class {
        let conf = limits.classes.iter().find(|c| c.class == class);
        let label = class.to_string();
        Class {
            class,
            reserved: conf.map_or(0, |c| c.reserved),
            queue_timeout: conf.and_then(|c| c.queue_timeout).unwrap_or(limits.queue_timeout),
            max_queue_age: conf.and_then(|c| c.max_queue_age).or(limits.max_queue_age),
            in_flight: 0,
            waiting: 0,
            lines: Vec::new(),
            drain: Rate::default(),
            promised_until: None,
            above_since: None,
            sheds: 0,
            next_shed: None,
            wait: metrics::QUEUE_CLASS_WAIT.with_label_values(&[queue, &label]),
            rejected: Reason::LABELS.map(|r| metrics::QUEUE_CLASS_REJECTED.with_label_values(&[queue, &label, r])),
        }
    }

    fn oldest(&self) -> Option<Instant> {
        self.lines
            .iter()
            .filter_map(|l| l.waiters.front())
            .map(|w| w.since)
            .min()
    }

    /// The line and position of the newest waiter.
    fn newest(&self) -> Option<usize> {
        (0..self.lines.len()).max_by_key(|&i| self.lines[i].waiters.back().map(|w| w.id))
    }

    /// Take the last waiter of line `li` out of the queue.
    fn pop_back(&mut self, li: usize) -> Option<Waiter> {
        let w = self.lines[li].waiters.pop_back()?;
        self.waiting -= 1;
        if self.lines[li].waiters.is_empty() {
            self.lines.swap_remove(li);
        }
        Some(w)
    }

    /// Seconds between slots given to this class, once measured.
    fn serve_interval(&self) -> Option<f64> {
        (self.drain.per_sec > 0.0).then(|| 1.0 / self.drain.per_sec)
    }
}

/// A rate of events per second, measured over windows of at least
/// [`Rate::WINDOW`] during which the queue never ran empty (an idle gap is
/// not a slow drain), smoothed across windows.
#[derive(Default)]
struct Rate {
    per_sec: f64,
    window: Option<(Instant, u32)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(1);

    /// One event at `now`; `backlogged`: waiters were left behind it.
    fn tick(&mut self, now: Instant, backlogged: bool) {
        let Some((start, n)) = self.window.as_mut() else {
            self.window = backlogged.then_some((now, 0));
            return;
        };
        *n += 1;
        let elapsed = now.duration_since(*start);
        if elapsed >= Self::WINDOW {
            let sample = *n as f64 / elapsed.as_secs_f64();
            self.per_sec = if self.per_sec == 0.0 {
                sample
            } else {
                0.5 * self.per_sec + 0.5 * sample
            };
            *start = now;
            *n = 0;
        }
        if !backlogged {
            self.window = None;
        }
    }
}

/// One per-class line of [`State::classes`], as `/status` and the gauges show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSnapshot {
    pub class: Priority,
    pub in_flight: usize,
    pub waiting: usize,
    pub oldest_wait: Duration,
    /// Slots reserved for it at the live limit.
    pub reserved: usize,
    /// Measured slots per second given to it while it had waiters (0: not yet measured).
    pub drain_per_sec: f64,
    /// Keys with waiters in it.
    pub keys_waiting: usize,
    /// CoDel is shedding its newest waiters.
    pub shedding: bool,
}

pub(super) struct State {
    queue_name: String,
    limits: Limits,
    /// The live limit, at most `max_concurrent`.
    pub(super) limit: usize,
    pub(super) in_flight: usize,
    pub(super) waiting: usize,
    /// By priority, highest first; a class is added the first time it is seen.
    classes: Vec<Class>,
    /// Slots held per key (the key-less share one entry).
    held: HashMap<Option<Arc<str>>, usize>,
    /// Some class reserves slots (else any free slot may be taken).
    reserving: bool,
    next_id: u64,
    /// Smoothed seconds between released slots while anyone waited.
    /// Smoothed seconds a slot is held: with the live limit, the drain
    /// rate before a class's own is measured.
    hold: f64,
    rejected: [IntCounter; 6],
}

impl State {
    pub(super) fn new(queue_name: &str, limits: &Limits) -> State {
        let mut st = State {
            queue_name: queue_name.to_string(),
            limits: limits.clone(),
            limit: limits.max_concurrent,
            in_flight: 0,
            waiting: 0,
            classes: Vec::new(),
            held: HashMap::new(),
            reserving: limits.classes.iter().any(|c| c.reserved > 0),
            next_id: 0,
            hold: 0.0,
            rejected: Reason::LABELS.map(|r| metrics::QUEUE_REJECTED.with_label_values(&[queue_name, r])),
        };
        for c in &limits.classes {
            st.class_index(c.class);
        }
        st
    }

    fn class_index(&mut self, class: Priority) -> usize {
        match self.classes.binary_search_by(|c| class.cmp(&c.class)) {
            Ok(i) => i,
            Err(i) => {
                let c = Class::new(&self.queue_name, class, &self.limits);
                self.classes.insert(i, c);
                i
            }
        }
    }

    fn find_class(&self, class: Priority) -> Option<usize> {
        self.classes.binary_search_by(|c| class.cmp(&c.class)).ok()
    }

    /// A class's reservation at the live limit.
    fn reserved(&self, c: &Class) -> usize {
        c.reserved * self.limit / self.limits.max_concurrent.max(1)
    }

    /// Class `ci` may take a free slot: one is free, and taking it leaves
    /// every other class its unused reservation.
    fn can_take(&self, ci: usize) -> bool {
        if self.in_flight >= self.limit {
            return false;
        }
        if !self.reserving {
            return true;
        }
        let others: usize = self
            .classes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != ci)
            .map(|(_, c)| self.reserved(c).saturating_sub(c.in_flight))
            .sum();
        self.in_flight + others < self.limit
    }

    fn take_slot(&mut self, ci: usize, tenant: &Option<Arc<str>>) {
        self.in_flight += 1;
        self.classes[ci].in_flight += 1;
        match self.held.get_mut(tenant) {
            Some(n) => *n += 1,
            None => {
                self.held.insert(tenant.clone(), 1);
            }
        }
    }

    fn count(&self, ci: usize, r: &Reason) {
        let i = r.index();
        self.rejected[i].inc();
        self.classes[ci].rejected[i].inc();
    }

    /// A refusal of a request of class `ci` now, its `Retry-After` booked.
    fn refuse(&mut self, ci: usize, reason: Reason, waited: Duration, now: Instant) -> Refusal {
        self.count(ci, &reason);
        let retry_after = self.retry_after(ci, now);
        Refusal {
            reason,
            class: self.classes[ci].class,
            retry_after,
            waiting: self.waiting,
            waited,
        }
    }

    /// Tell a queued waiter it lost its place.
    fn push_out(&mut self, ci: usize, li: usize, reason: Reason, now: Instant) {
        if let Some(w) = self.classes[ci].pop_back(li) {
            self.waiting -= 1;
            let waited = now.duration_since(w.since);
            self.classes[ci].wait.observe(waited.as_secs_f64());
            let r = self.refuse(ci, reason, waited, now);
            let _ = w.tx.send(Err(r));
        }
    }

    /// A request arrives.
    pub(super) fn arrive(&mut self, t: &Ticket, now: Instant) -> Arrival {
        self.shed(now);
        let ci = self.class_index(t.class);
        if self.classes[ci].waiting == 0 && self.can_take(ci) {
            self.take_slot(ci, &t.tenant);
            return Arrival::Admitted;
        }
        let c = &self.classes[ci];
        if let Some(oldest) = c.oldest().map(|o| now.duration_since(o)) {
            if c.sheds > 0 {
                if let Some(shed) = self.limits.shed.filter(|s| oldest >= s.target) {
                    let reason = Reason::Shed {
                        oldest,
                        target: shed.target,
                    };
                    return Arrival::Refused(self.refuse(ci, reason, Duration::ZERO, now));
                }
            }
            if let Some(max) = c.max_queue_age.filter(|max| oldest > *max) {
                let reason = Reason::MaxAge { oldest, max };
                return Arrival::Refused(self.refuse(ci, reason, Duration::ZERO, now));
            }
        }
        if self.waiting >= self.limits.queue && !self.make_room(ci, t, now) {
            return Arrival::Refused(self.refuse(ci, Reason::Full, Duration::ZERO, now));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let c = &mut self.classes[ci];
        let w = Waiter { id, since: now, tx };
        match c.lines.iter_mut().find(|l| l.tenant == t.tenant) {
            Some(line) => {
                line.weight = t.weight.max(1);
                line.waiters.push_back(w);
            }
            None => c.lines.push(Line {
                tenant: t.tenant.clone(),
                weight: t.weight.max(1),
                waiters: VecDeque::from([w]),
            }),
        }
        c.waiting += 1;
        self.waiting += 1;
        Arrival::Queued {
            id,
            rx,
            timeout: c.queue_timeout,
            wait: c.wait.clone(),
        }
    }

    /// The queue is full and `t` arrives: push out the newest waiter of the
    /// lowest class below it, or, within its class, the newest waiter of the
    /// key holding the most over its weighted share of the queue. False when
    /// nobody may be pushed out for it.
    fn make_room(&mut self, ci: usize, t: &Ticket, now: Instant) -> bool {
        if let Some(low) = (ci + 1..self.classes.len())
            .rev()
            .find(|&i| self.classes[i].waiting > 0)
        {
            if let Some(li) = self.classes[low].newest() {
                let by = self.classes[ci].class;
                self.push_out(low, li, Reason::Evicted { by }, now);
                return true;
            }
        }
        let c = &self.classes[ci];
        let mine = c
            .lines
            .iter()
            .find(|l| l.tenant == t.tenant)
            .map_or(0, |l| l.waiters.len());
        let my_share = (mine + 1) as f64 / t.weight.max(1) as f64;
        let heaviest = c
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tenant != t.tenant)
            .map(|(i, l)| (i, l.waiters.len() as f64 / l.weight as f64))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match heaviest {
            Some((li, share)) if share > my_share => {
                self.push_out(ci, li, Reason::FairShare, now);
                true
            }
            _ => false,
        }
    }

    /// Waiter `id` leaves the queue (it gave up or timed out). False when it
    /// is no longer there: it was given a slot or refused meanwhile.
    pub(super) fn leave(&mut self, t: &Ticket, id: u64) -> bool {
        let Some(ci) = self.find_class(t.class) else {
            return false;
        };
        let c = &mut self.classes[ci];
        let Some(li) = c.lines.iter().position(|l| l.tenant == t.tenant) else {
            return false;
        };
        let Some(pos) = c.lines[li].waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        c.lines[li].waiters.remove(pos);
        if c.lines[li].waiters.is_empty() {
            c.lines.swap_remove(li);
        }
        c.waiting -= 1;
        self.waiting -= 1;
        true
    }

    /// A waiter waited its class's `queue_timeout` in vain.
    pub(super) fn timed_out(&mut self, t: &Ticket, waited: Duration, now: Instant) -> Refusal {
        let ci = self.class_index(t.class);
        self.refuse(ci, Reason::Timeout, waited, now)
    }

    /// A slot held by `t` for `held` is given back (zero: handed to a
    /// waiter that had just left).
    pub(super) fn release(&mut self, t: &Ticket, held: Duration, now: Instant) {
        if !held.is_zero() {
            let h = held.as_secs_f64();
            self.hold = if self.hold == 0.0 { h } else { 0.8 * self.hold + 0.2 * h };
        }
        self.in_flight -= 1;
        if let Some(ci) = self.find_class(t.class) {
            self.classes[ci].in_flight -= 1;
        }
        if let Some(n) = self.held.get_mut(&t.tenant) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&t.tenant);
            }
        }
        self.shed(now);
        self.dispatch(now);
    }

    /// Set the live limit (1 ..= `max_concurrent`); a higher one admits
    /// waiters at once.
    pub(super) fn set_limit(&mut self, limit: usize, now: Instant) {
        self.limit = limit.clamp(1, self.limits.max_concurrent.max(1));
        self.dispatch(now);
    }

    /// Give free slots to waiters: highest class that may take one first,
    /// within it the key furthest under its weighted share of slots.
    fn dispatch(&mut self, now: Instant) {
        while self.in_flight < self.limit && self.waiting > 0 {
            let Some(ci) = (0..self.classes.len()).find(|&i| self.classes[i].waiting > 0 && self.can_take(i)) else {
                return;
            };
            let c = &self.classes[ci];
            let held = |l: &Line| self.held.get(&l.tenant).copied().unwrap_or(0) as f64 / l.weight as f64;
            let li = (0..c.lines.len())
                .min_by(|&a, &b| {
                    let (la, lb) = (&c.lines[a], &c.lines[b]);
                    held(la)
                        .total_cmp(&held(lb))
                        .then_with(|| la.waiters.front().map(|w| w.id).cmp(&lb.waiters.front().map(|w| w.id)))
                })
                .expect("a class with waiters has a line");
            let c = &mut self.classes[ci];
            let w = c.lines[li].waiters.pop_front().expect("lines are never empty");
            let tenant = if c.lines[li].waiters.is_empty() {
                c.lines.swap_remove(li).tenant
            } else {
                c.lines[li].tenant.clone()
            };
            c.waiting -= 1;
            self.waiting -= 1;
            let backlogged = self.classes[ci].waiting > 0;
            self.classes[ci].drain.tick(now, backlogged);
            if w.tx.send(Ok(())).is_ok() {
                self.take_slot(ci, &tenant);
            }
        }
    }

    /// CoDel-style shedding: a class whose oldest waiter has been over
    /// `target` for `interval` loses its newest waiter, then another after
    /// `interval / sqrt(n)`, until its oldest is back under `target` or
    /// only one waiter is left.
    fn shed(&mut self, now: Instant) {
        let Some(shed) = self.limits.shed else { return };
        for ci in 0..self.classes.len() {
            let c = &mut self.classes[ci];
            let oldest = c.oldest().map(|o| now.duration_since(o));
            let Some(oldest) = oldest.filter(|o| *o >= shed.target) else {
                c.above_since = None;
                c.sheds = 0;
                c.next_shed = None;
                continue;
            };
            if c.above_since.is_none() {
                c.above_since = Some(now);
                c.next_shed = Some(now + shed.interval);
                continue;
            }
            // The oldest waiter is next to be served: shedding it would
            // shorten nobody's wait, so a class's last waiter is kept.
            if c.waiting > 1 && c.next_shed.is_some_and(|at| now >= at) {
                c.sheds += 1;
                c.next_shed = Some(now + shed.interval.div_f64((c.sheds as f64).sqrt()));
                if let Some(li) = c.newest() {
                    let reason = Reason::Shed {
                        oldest,
                        target: shed.target,
                    };
                    self.push_out(ci, li, reason, now);
                }
            }
        }
    }

    /// Whole seconds until a client of class `ci` refused now would likely
    /// be admitted, booked so that clients refused one after another are
    /// told to come back one drain interval apart (not all at once). The
    /// drain is the class's measured one; before it is measured, the slot
    /// hold time over the live limit, behind every waiter of its class and
    /// above. Bookings reach at most the class's `queue_timeout` past the
    /// queue's own wait (clients that ignore `Retry-After` would otherwise
    /// push it out without end).
    fn retry_after(&mut self, ci: usize, now: Instant) -> u64 {
        let c = &self.classes[ci];
        let (per, wait) = match c.serve_interval() {
            Some(per) => (per, c.waiting as f64 * per),
            None if self.hold > 0.0 => {
                let per = self.hold / self.limit.max(1) as f64;
                let ahead: usize = self.classes[..=ci].iter().map(|c| c.waiting).sum();
                (per, ahead as f64 * per)
            }
            None => (0.0, c.queue_timeout.as_secs_f64()),
        };
        let earliest = now + Duration::from_secs_f64(wait.min(3600.0));
        let horizon = earliest + c.queue_timeout;
        let at = match c.promised_until {
            Some(p) if p > earliest => p.min(horizon),
            _ => earliest,
        };
        if per > 0.0 {
            self.classes[ci].promised_until = Some(at + Duration::from_secs_f64(per.min(60.0)));
        }
        let secs = at.duration_since(now).as_secs_f64();
        (secs.ceil() as u64).clamp(1, 60)
    }

    /// The age of the oldest waiter of any class.
    pub(super) fn oldest_wait(&self, now: Instant) -> Duration {
        self.classes
            .iter()
            .filter_map(Class::oldest)
            .min()
            .map_or(Duration::ZERO, |o| now.duration_since(o))
    }

    pub(super) fn classes(&self, now: Instant) -> Vec<ClassSnapshot> {
        self.classes
            .iter()
            .map(|c| ClassSnapshot {
                class: c.class,
                in_flight: c.in_flight,
                waiting: c.waiting,
                oldest_wait: c.oldest().map_or(Duration::ZERO, |o| now.duration_since(o)),
                reserved: self.reserved(c),
                drain_per_sec: c.drain.per_sec,
                keys_waiting: c.lines.len(),
                shedding: c.sheds > 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulkhead::ClassLimits;

    const HOLD: Duration = Duration::from_millis(500);

    fn limits(max: usize, queue: usize) -> Limits {
        Limits::new(max, queue, Duration::from_secs(5))
    }

    fn state(l: &Limits) -> State {
        State::new(&format!("test:queue-{}", rand::random::<u32>()), l)
    }

    fn ticket(class: Priority, tenant: &str, weight: u32) -> Ticket {
        Ticket {
            class,
            tenant: (!tenant.is_empty()).then(|| Arc::from(tenant)),
            weight,
        }
    }

    /// A queued arrival's receiver (panics when it was not queued).
    fn queued(a: Arrival) -> Rx {
        match a {
            Arrival::Queued { rx, .. } => rx,
            Arrival::Admitted => panic!("admitted, expected queued"),
            Arrival::Refused(r) => panic!("refused ({r:?}), expected queued"),
        }
    }

    fn refused(a: Arrival) -> Refusal {
        match a {
            Arrival::Refused(r) => r,
            _ => panic!("expected a refusal"),
        }
    }

    /// Whether the waiter behind `rx` was given its slot by now.
    fn granted(rx: &mut Rx) -> bool {
        matches!(rx.try_recv(), Ok(Ok(())))
    }

    #[test]
    fn higher_classes_are_served_first_fifo_within() {
        let t0 = Instant::now();
        let mut st = state(&limits(1, 10));
        let holder = ticket(Priority::STANDARD, "", 1);
        assert!(matches!(st.arrive(&holder, t0), Arrival::Admitted));
        let batch = ticket(Priority::BATCH, "", 1);
        let std_ = ticket(Priority::STANDARD, "", 1);
        let crit = ticket(Priority::CRITICAL, "", 1);
        let mut rb = queued(st.arrive(&batch, t0));
        let mut rs1 = queued(st.arrive(&std_, t0));
        let mut rs2 = queued(st.arrive(&std_, t0));
        let mut rc = queued(st.arrive(&crit, t0));
        st.release(&holder, HOLD, t0);
        assert!(granted(&mut rc), "critical first");
        st.release(&crit, HOLD, t0);
        assert!(granted(&mut rs1) && !granted(&mut rs2), "then standard, oldest first");
        st.release(&std_, HOLD, t0);
        assert!(granted(&mut rs2) && !granted(&mut rb));
        st.release(&std_, HOLD, t0);
        assert!(granted(&mut rb), "batch last");
    }

    #[test]
    fn a_full_queue_evicts_the_newest_lower_class_waiter() {
        let t0 = Instant::now();
        let mut st = state(&limits(1, 2));
        let batch = ticket(Priority::BATCH, "", 1);
        assert!(matches!(st.arrive(&batch, t0), Arrival::Admitted));
        let mut old = queued(st.arrive(&batch, t0));
        let mut new = queued(st.arrive(&batch, t0 + Duration::from_millis(5)));
        // Another batch request: the queue is full, nobody to push out.
        let r = refused(st.arrive(&batch, t0));
        assert_eq!((r.reason, r.class), (Reason::Full, Priority::BATCH));
        let crit = ticket(Priority::CRITICAL, "", 1);
        let mut rc = queued(st.arrive(&crit, t0 + Duration::from_millis(10)));
        match new.try_recv() {
            Ok(Err(r)) => {
                assert_eq!(
                    (r.reason, r.class),
                    (Reason::Evicted { by: Priority::CRITICAL }, Priority::BATCH)
                );
                assert_eq!(r.waited, Duration::from_millis(5));
                assert!(r.retry_after >= 1);
            }
            other => panic!("the newest batch waiter should be evicted, got {other:?}"),
        }
        st.release(&batch, HOLD, t0);
        assert!(granted(&mut rc) && !granted(&mut old), "critical is served first");
        st.release(&crit, HOLD, t0);
        assert!(granted(&mut old));
    }

    #[test]
    fn a_flooding_key_is_pushed_out_of_a_full_queue_for_a_light_one() {
        let t0 = Instant::now();
        let mut st = state(&limits(2, 4));
        let heavy = ticket(Priority::STANDARD, "heavy", 1);
        let light = ticket(Priority::STANDARD, "light", 1);
        assert!(matches!(st.arrive(&heavy, t0), Arrival::Admitted));
        assert!(matches!(st.arrive(&heavy, t0), Arrival::Admitted));
        let mut hs: Vec<Rx> = (0..4).map(|_| queued(st.arrive(&heavy, t0))).collect();
        // The heavy key's own next request finds a full queue.
        assert_eq!(refused(st.arrive(&heavy, t0)).reason, Reason::Full);
        let mut rl = queued(st.arrive(&light, t0));
        match hs[3].try_recv() {
            Ok(Err(r)) => assert_eq!(r.reason, Reason::FairShare),
            other => panic!("the heavy key's newest waiter should be pushed out, got {other:?}"),
        }
        // The light key is served next although it came last: the heavy
        // key still holds a slot, the light one none.
        st.release(&heavy, HOLD, t0);
        assert!(granted(&mut rl));
        assert!(!granted(&mut hs[0]));
        // Then the heavy key's waiters, oldest first.
        st.release(&light, HOLD, t0);
        assert!(granted(&mut hs[0]) && !granted(&mut hs[1]));
    }

    #[test]
    fn slots_go_by_weight_between_keys() {
        let t0 = Instant::now();
        let mut st = state(&limits(4, 20));
        let other = ticket(Priority::STANDARD, "other", 1);
        for _ in 0..4 {
            assert!(matches!(st.arrive(&other, t0), Arrival::Admitted));
        }
        let a = ticket(Priority::STANDARD, "a", 3);
        let b = ticket(Priority::STANDARD, "b", 1);
        let mut ra: Vec<Rx> = (0..6).map(|_| queued(st.arrive(&a, t0))).collect();
        let mut rb: Vec<Rx> = (0..6).map(|_| queued(st.arrive(&b, t0))).collect();
        for _ in 0..4 {
            st.release(&other, HOLD, t0);
        }
        let got_a = ra.iter_mut().map(granted).filter(|g| *g).count();
        let got_b = rb.iter_mut().map(granted).filter(|g| *g).count();
        assert_eq!((got_a, got_b), (3, 1), "weights 3:1");
    }

    #[test]
    fn reserved_slots_wait_for_their_class() {
        let t0 = Instant::now();
        let mut l = limits(4, 10);
        l.classes.push(ClassLimits {
            class: Priority::CRITICAL,
            reserved: 1,
            queue_timeout: None,
            max_queue_age: None,
        });
        let mut st = state(&l);
        let batch = ticket(Priority::BATCH, "", 1);
        for _ in 0..3 {
            assert!(matches!(st.arrive(&batch, t0), Arrival::Admitted));
        }
        let mut rb = queued(st.arrive(&batch, t0));
        assert!(!granted(&mut rb), "the 4th slot is critical's");
        let crit = ticket(Priority::CRITICAL, "", 1);
        assert!(
            matches!(st.arrive(&crit, t0), Arrival::Admitted),
            "critical gets it at once"
        );
        // With the live limit halved the reservation halves too (1 * 2 / 4 = 0).
        st.set_limit(2, t0);
        assert_eq!(st.classes(t0)[0].reserved, 0);
    }

    #[test]
    fn refused_clients_are_told_to_come_back_spread_at_the_drain_rate() {
        let t0 = Instant::now();
        let mut st = state(&Limits::new(2, 2, Duration::from_secs(20)));
        let t = ticket(Priority::STANDARD, "", 1);
        assert!(matches!(st.arrive(&t, t0), Arrival::Admitted));
        assert!(matches!(st.arrive(&t, t0), Arrival::Admitted));
        let _q1 = queued(st.arrive(&t, t0));
        let _q2 = queued(st.arrive(&t, t0));
        // Before any release, nothing is known: the queue timeout.
        assert_eq!(refused(st.arrive(&t, t0)).retry_after, 20);
        // One slot frees every 250 ms, each held 500 ms: 4 per second.
        let mut now = t0;
        let mut keep = Vec::new();
        now += Duration::from_millis(250);
        st.release(&t, HOLD, now);
        keep.push(queued(st.arrive(&t, now)));
        // From the hold time (500 ms over 2 slots) before the drain is measured.
        let r = refused(st.arrive(&t, now));
        assert_eq!(r.retry_after, 1, "2 waiting x 250 ms");
        st.classes[0].promised_until = None;
        for _ in 0..5 {
            now += Duration::from_millis(250);
            st.release(&t, HOLD, now);
            keep.push(queued(st.arrive(&t, now)));
        }
        let drain = st.classes(now)[0].drain_per_sec;
        assert!((drain - 4.0).abs() < 0.01, "drain {drain}");
        // 40 clients refused at once are told to come back over ~10 s, at
        // most ~4 per second, never all at the same time.
        let afters: Vec<u64> = (0..40).map(|_| refused(st.arrive(&t, now)).retry_after).collect();
        assert!(afters.windows(2).all(|w| w[0] <= w[1]), "{afters:?}");
        assert!(afters[0] <= 1 && *afters.last().unwrap() >= 10, "{afters:?}");
        for s in 1..=10 {
            let n = afters.iter().filter(|a| **a == s).count();
            assert!(n <= 5, "{n} clients told to come back after {s}s: {afters:?}");
        }
        // Clients that ignore it cannot push it past one queue_timeout
        // beyond the queue's own wait.
        let more: Vec<u64> = (0..200).map(|_| refused(st.arrive(&t, now)).retry_after).collect();
        assert!(more.iter().all(|a| *a <= 21), "{more:?}");
        // The booking runs out: much later, a refusal is back to the queue's own wait.
        let later = now + Duration::from_secs(60);
        assert_eq!(refused(st.arrive(&t, later)).retry_after, 1);
    }

    #[test]
    fn an_old_queue_refuses_arrivals_of_its_class() {
        let t0 = Instant::now();
        let mut l = limits(1, 10);
        l.max_queue_age = Some(Duration::from_secs(1));
        let mut st = state(&l);
        let t = ticket(Priority::BATCH, "", 1);
        assert!(matches!(st.arrive(&t, t0), Arrival::Admitted));
        let _q = queued(st.arrive(&t, t0));
        let _q2 = queued(st.arrive(&t, t0 + Duration::from_millis(900)));
        let r = refused(st.arrive(&t, t0 + Duration::from_millis(1500)));
        assert_eq!(
            r.reason,
            Reason::MaxAge {
                oldest: Duration::from_millis(1500),
                max: Duration::from_secs(1)
            }
        );
        // Another class's queue is young: it is not refused.
        let c = ticket(Priority::CRITICAL, "", 1);
        let _qc = queued(st.arrive(&c, t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn codel_sheds_the_newest_waiters_while_the_oldest_stays_over_target() {
        let t0 = Instant::now();
        let mut l = limits(1, 10);
        l.shed = Some(crate::bulkhead::Shed {
            target: Duration::from_millis(100),
            interval: Duration::from_millis(100),
        });
        let mut st = state(&l);
        let t = ticket(Priority::STANDARD, "", 1);
        assert!(matches!(st.arrive(&t, t0), Arrival::Admitted));
        let mut rxs: Vec<Rx> = (0..5)
            .map(|i| queued(st.arrive(&t, t0 + Duration::from_millis(i))))
            .collect();
        let ms = |n| t0 + Duration::from_millis(n);
        // Over target from 150 ms: shedding starts an interval later.
        st.shed(ms(150));
        assert!(rxs.iter_mut().all(|r| r.try_recv().is_err()), "nothing shed yet");
        st.shed(ms(260));
        match rxs[4].try_recv() {
            Ok(Err(r)) => assert!(matches!(r.reason, Reason::Shed { .. }), "{r:?}"),
            other => panic!("the newest waiter should be shed, got {other:?}"),
        }
        // While shedding, an arrival of that class is refused at once.
        assert!(matches!(refused(st.arrive(&t, ms(270))).reason, Reason::Shed { .. }));
        // The next after `interval / sqrt(1)`, then sooner and sooner.
        st.shed(ms(330));
        assert!(rxs[3].try_recv().is_err(), "not yet");
        st.shed(ms(361));
        assert!(matches!(rxs[3].try_recv(), Ok(Err(_))));
        assert!(st.classes(ms(361))[0].shedding);
        // The oldest waiter is served, the next is still old: shedding goes
        // on; once every waiter left is gone, it stops.
        st.release(&t, HOLD, ms(370));
        assert!(granted(&mut rxs[0]));
        st.release(&t, HOLD, ms(371));
        st.release(&t, HOLD, ms(372));
        assert!(granted(&mut rxs[1]) && granted(&mut rxs[2]));
        st.shed(ms(373));
        assert!(!st.classes(ms(373))[0].shedding);
    }
}
