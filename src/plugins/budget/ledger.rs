//! The window arithmetic of a budget, with the clock passed in: pure, so
//! it is tested without waiting. The memory store runs it as is; the Redis
//! store's Lua script (`store.rs`) is the same algorithm, field for field.
//!
//! A ledger is one budget's account for one subject (a key, a group, or
//! everyone): what was **spent** (settled) in each sub-bucket of a sliding
//! window, and what is **reserved** by requests in flight. A request is
//! admitted only if `spent + reserved + need <= limit` holds for every limit
//! it falls under; settling swaps its reservation for what it really used,
//! which is never more when the reservation was an upper bound. So the sum
//! never rises past the limit, and settled spend with it.

/// Tokens and money (in [`crate::provider::Cost`] billionths) together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub tokens: u64,
    pub cost: u64,
}

impl Amount {
    fn plus(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_add(o.tokens),
            cost: self.cost.saturating_add(o.cost),
        }
    }

    fn minus(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_sub(o.tokens),
            cost: self.cost.saturating_sub(o.cost),
        }
    }

    pub fn get(self, d: Dim) -> u64 {
        match d {
            Dim::Tokens => self.tokens,
            Dim::Cost => self.cost,
        }
    }
}

/// One dimension of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Tokens,
    Cost,
}

impl Dim {
    pub const BOTH: [Dim; 2] = [Dim::Tokens, Dim::Cost];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Tokens => "tokens",
            Dim::Cost => "cost",
        }
    }
}

/// A budget's limits; `None` is no limit in that dimension (it is still
/// counted, for `/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    pub tokens: Option<u64>,
    pub cost: Option<u64>,
}

impl Limit {
    pub fn get(self, d: Dim) -> Option<u64> {
        match d {
            Dim::Tokens => self.tokens,
            Dim::Cost => self.cost,
        }
    }
}

/// A sliding window cut into `slots` sub-buckets of `width_ms`; sub-bucket
/// `i` holds what happened in `[i × width, (i+1) × width)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub width_ms: u64,
    pub slots: u64,
}

/// Sub-buckets per window: spend leaves the window between 59/60 of it and
/// all of it after it was settled.
pub const SLOTS: u64 = 60;

impl Window {
    /// `window` in [`SLOTS`] sub-buckets, each rounded up to a whole
    /// millisecond (the window covered is never shorter than asked).
    pub fn of(window: std::time::Duration) -> Window {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Window {
            width_ms: ms.div_ceil(SLOTS).max(1),
            slots: SLOTS,
        }
    }

    /// The whole window.
    pub fn span_ms(self) -> u64 {
        self.width_ms.saturating_mul(self.slots)
    }

    fn index(self, now_ms: u64) -> u64 {
        now_ms / self.width_ms
    }
}

/// Amounts over a sliding window: a ring of sub-buckets and their running
/// total, so a decision costs the sub-buckets that expired since the last
/// one, not a sum over the window.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Absolute index of the newest sub-bucket.
    head: u64,
    slots: Vec<Amount>,
    total: Amount,
}

impl Ring {
    pub fn new(w: Window) -> Ring {
        Ring {
            head: 0,
            slots: vec![Amount::default(); w.slots as usize],
            total: Amount::default(),
        }
    }

    fn n(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&mut self, idx: u64) -> &mut Amount {
        let n = self.slots.len();
        &mut self.slots[(idx % n as u64) as usize]
    }

    /// Move the window to `now_ms`: what left it leaves the total. Returns
    /// the index new amounts go to (the head: a clock that went back never
    /// writes behind it).
    pub fn advance(&mut self, w: Window, now_ms: u64) -> u64 {
        let cur = w.index(now_ms);
        if cur <= self.head {
            return self.head;
        }
        if cur - self.head >= self.n() {
            self.slots.iter_mut().for_each(|s| *s = Amount::default());
            self.total = Amount::default();
        } else {
            for idx in self.head + 1..=cur {
                let old = std::mem::take(self.slot(idx));
                self.total = self.total.minus(old);
            }
        }
        self.head = cur;
        cur
    }

    /// Whether sub-bucket `idx` is still in the window.
    fn live(&self, idx: u64) -> bool {
        idx <= self.head && idx + self.n() > self.head
    }

    /// Add to the head sub-bucket (after [`Ring::advance`]).
    pub fn add(&mut self, a: Amount) {
        let h = self.head;
        *self.slot(h) = self.slot(h).plus(a);
        self.total = self.total.plus(a);
    }

    /// Take back (at most) `a` from sub-bucket `idx`, if it is still in the
    /// window; gone, it already left the total.
    pub fn take_back(&mut self, idx: u64, a: Amount) {
        if !self.live(idx) {
            return;
        }
        let slot = self.slot(idx);
        let back = Amount {
            tokens: a.tokens.min(slot.tokens),
            cost: a.cost.min(slot.cost),
        };
        *slot = slot.minus(back);
        self.total = self.total.minus(back);
    }

    pub fn total(&self) -> Amount {
        self.total
    }

    /// Nothing in the window.
    pub fn is_empty(&self) -> bool {
        self.total == Amount::default()
    }

    /// When, after `now_ms`, enough of this ring's amounts leave the window
    /// that `left + others + need <= limit` in dimension `d`, or `None` if
    /// not even an empty window would do.
    fn room_after(&self, w: Window, now_ms: u64, d: Dim, others: u64, need: u64, limit: u64) -> Option<u64> {
        let fits = |left: u64| left.saturating_add(others).saturating_add(need) <= limit;
        let mut left = self.total.get(d);
        let oldest = (self.head + 1).saturating_sub(self.n());
        for idx in oldest..=self.head {
            if fits(left) {
                break;
            }
            left = left.saturating_sub(self.slots[(idx % self.n()) as usize].get(d));
            if fits(left) {
                // Sub-bucket idx leaves when the window's oldest index passes it.
                let leaves = (idx + self.n()).saturating_mul(w.width_ms);
                return Some(leaves.saturating_sub(now_ms));
            }
        }
        fits(left).then_some(0)
    }
}

/// One budget's account for one subject.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub spent: Ring,
    /// Reservations by the sub-bucket of the lease window they were made
    /// in: one a settlement never comes for (a crashed instance sharing
    /// Redis) is let go when it leaves that window.
    pub reserved: Ring,
}

/// How a request stands against one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Room left in each limited dimension before this request (0 when
    /// spent), indexed like [`Dim::BOTH`].
    pub room: [Option<u64>; 2],
    /// The limited dimension the request does not fit in that frees up
    /// last, and when.
    pub short: Option<(Dim, Wait)>,
}

/// When a request that does not fit now may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wait {
    /// Once settled spend has left the window: this many ms from now.
    After(u64),
    /// Only when requests in flight settle for less than they reserved.
    InFlight,
    /// Never: the request alone is over the limit.
    Never,
}

impl Ledger {
    pub fn new(window: Window, lease: Window) -> Ledger {
        Ledger {
            spent: Ring::new(window),
            reserved: Ring::new(lease),
        }
    }

    /// Move both rings to `now_ms`.
    pub fn advance(&mut self, window: Window, lease: Window, now_ms: u64) {
        self.spent.advance(window, now_ms);
        self.reserved.advance(lease, now_ms);
    }

    /// Whether `need` fits under `limit` (after [`Ledger::advance`]).
    pub fn check(&self, window: Window, limit: Limit, need: Amount, now_ms: u64) -> Check {
        let mut c = Check {
            room: [None; 2],
            short: None,
        };
        for (i, d) in Dim::BOTH.into_iter().enumerate() {
            let Some(lim) = limit.get(d) else { continue };
            let (spent, reserved) = (self.spent.total().get(d), self.reserved.total().get(d));
            let used = spent.saturating_add(reserved);
            c.room[i] = Some(lim.saturating_sub(used));
            if used.saturating_add(need.get(d)) <= lim {
                continue;
            }
            let wait = if need.get(d) > lim {
                Wait::Never
            } else {
                match self.spent.room_after(window, now_ms, d, reserved, need.get(d), lim) {
                    Some(ms) => Wait::After(ms),
                    None => Wait::InFlight,
                }
            };
            if c.short.is_none_or(|(_, w)| wait > w) {
                c.short = Some((d, wait));
            }
        }
        c
    }

    /// Reserve `need` (after a check passed on every ledger); returns the
    /// lease sub-bucket to settle against.
    pub fn reserve(&mut self, need: Amount) -> u64 {
        self.reserved.add(need);
        self.reserved.head
    }

    /// Swap a reservation made in lease sub-bucket `at` for what was spent
    /// (after [`Ledger::advance`]).
    pub fn settle(&mut self, at: u64, reserved: Amount, spent: Amount) {
        self.reserved.take_back(at, reserved);
        self.spent.add(spent);
    }

    /// Nothing spent in the window and nothing reserved: safe to forget.
    pub fn is_empty(&self) -> bool {
        self.spent.is_empty() && self.reserved.is_empty()
    }
}

/// The request's standing over all its ledgers: the tightest room per
/// dimension, and the worst refusal (longest wait) if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub room: [Option<u64>; 2],
    /// (line, dimension, wait) of the limit that binds longest.
    pub short: Option<(usize, Dim, Wait)>,
}

impl Standing {
    /// Fold one ledger's check (the request's `line`-th) in.
    pub fn add(&mut self, line: usize, c: Check) {
        for i in 0..2 {
            self.room[i] = match (self.room[i], c.room[i]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Some((d, wait)) = c.short {
            if self.short.is_none_or(|(_, _, w)| wait > w) {
                self.short = Some((line, d, wait));
            }
        }
    }

    /// Room after the request's own reservation.
    pub fn after(mut self, need: Amount) -> Standing {
        for (i, d) in Dim::BOTH.into_iter().enumerate() {
            self.room[i] = self.room[i].map(|r| r.saturating_sub(need.get(d)));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const W: Window = Window {
        width_ms: 1000,
        slots: 60,
    };
    const LEASE: Window = Window {
        width_ms: 60_000,
        slots: 60,
    };

    fn tokens(n: u64) -> Amount {
        Amount { tokens: n, cost: 0 }
    }

    fn limit(t: u64) -> Limit {
        Limit {
            tokens: Some(t),
            cost: None,
        }
    }

    /// Reserve on one ledger if it fits; the lease sub-bucket or the check.
    fn try_reserve(l: &mut Ledger, lim: Limit, need: Amount, now: u64) -> Result<u64, Check> {
        l.advance(W, LEASE, now);
        let c = l.check(W, lim, need, now);
        if c.short.is_some() {
            return Err(c);
        }
        Ok(l.reserve(need))
    }

    #[test]
    fn window_geometry() {
        assert_eq!(Window::of(Duration::from_secs(60)), W);
        let day = Window::of(Duration::from_secs(86_400));
        assert_eq!((day.width_ms, day.span_ms()), (1_440_000, 86_400_000));
        // Rounded up: never shorter than asked.
        let odd = Window::of(Duration::from_millis(1001));
        assert_eq!(odd.width_ms, 17);
        assert!(odd.span_ms() >= 1001);
        assert_eq!(Window::of(Duration::ZERO).width_ms, 1);
    }

    #[test]
    fn ring_forgets_what_leaves_the_window() {
        let mut r = Ring::new(W);
        r.advance(W, 0);
        r.add(tokens(5));
        r.advance(W, 30_500);
        r.add(tokens(7));
        assert_eq!(r.total().tokens, 12);
        // Sub-bucket 0 leaves when index 60 is the head (at 60 s).
        r.advance(W, 59_999);
        assert_eq!(r.total().tokens, 12);
        r.advance(W, 60_000);
        assert_eq!(r.total().tokens, 7);
        // A long silence clears everything at once.
        r.advance(W, 10_000_000);
        assert!(r.is_empty());
        // A clock that went back writes at the head, never behind it.
        assert_eq!(r.advance(W, 5_000), 10_000);
    }

    #[test]
    fn take_back_only_while_in_the_window_and_never_below_zero() {
        let mut r = Ring::new(W);
        r.advance(W, 0);
        r.add(tokens(10));
        r.take_back(0, tokens(25));
        assert_eq!(r.total().tokens, 0, "clamped at what the sub-bucket holds");
        r.add(tokens(10));
        r.advance(W, 120_000);
        r.add(tokens(3));
        r.take_back(0, tokens(10));
        assert_eq!(r.total().tokens, 3, "sub-bucket 0 already left");
    }

    #[test]
    fn reservation_then_settlement_frees_the_difference() {
        let mut l = Ledger::new(W, LEASE);
        let lim = limit(100);
        let at = try_reserve(&mut l, lim, tokens(60), 0).unwrap();
        assert!(
            try_reserve(&mut l, lim, tokens(50), 10).is_err(),
            "60 reserved + 50 > 100"
        );
        l.advance(W, LEASE, 2_000);
        l.settle(at, tokens(60), tokens(20));
        assert_eq!((l.spent.total().tokens, l.reserved.total().tokens), (20, 0));
        assert!(
            try_reserve(&mut l, lim, tokens(80), 2_001).is_ok(),
            "20 spent + 80 fits"
        );
        assert!(try_reserve(&mut l, lim, tokens(1), 2_002).is_err());
    }

    #[test]
    fn nothing_reached_a_provider_releases_everything() {
        let mut l = Ledger::new(W, LEASE);
        let at = try_reserve(&mut l, limit(10), tokens(10), 0).unwrap();
        l.advance(W, LEASE, 1);
        l.settle(at, tokens(10), Amount::default());
        assert!(l.is_empty());
    }

    #[test]
    fn wait_is_when_enough_spend_leaves() {
        let mut l = Ledger::new(W, LEASE);
        let lim = limit(100);
        for (t, n) in [(1_000, 30), (5_000, 30), (9_000, 30)] {
            let at = try_reserve(&mut l, lim, tokens(n), t).unwrap();
            l.advance(W, LEASE, t);
            l.settle(at, tokens(n), tokens(n));
        }
        // 90 spent; 40 more needs the first 30 (sub-bucket 1) to leave: at 61 s.
        let c = try_reserve(&mut l, lim, tokens(40), 20_000).unwrap_err();
        assert_eq!(c.short, Some((Dim::Tokens, Wait::After(41_000))));
        assert_eq!(c.room, [Some(10), None]);
        // 70 needs two of them gone: sub-bucket 5 leaves at 65 s.
        let c = try_reserve(&mut l, lim, tokens(70), 20_000).unwrap_err();
        assert_eq!(c.short, Some((Dim::Tokens, Wait::After(45_000))));
        // 75 needs all three gone: sub-bucket 9 leaves at 69 s.
        let c = try_reserve(&mut l, lim, tokens(75), 20_000).unwrap_err();
        assert_eq!(c.short, Some((Dim::Tokens, Wait::After(49_000))));
        // More than the limit: never.
        let c = try_reserve(&mut l, lim, tokens(101), 20_000).unwrap_err();
        assert_eq!(c.short, Some((Dim::Tokens, Wait::Never)));
        // At 61 s the 40 fits.
        assert!(try_reserve(&mut l, lim, tokens(40), 61_000).is_ok());
    }

    #[test]
    fn reservations_in_flight_block_until_they_settle() {
        let mut l = Ledger::new(W, LEASE);
        let lim = limit(100);
        try_reserve(&mut l, lim, tokens(80), 0).unwrap();
        let c = try_reserve(&mut l, lim, tokens(30), 1).unwrap_err();
        assert_eq!(c.short, Some((Dim::Tokens, Wait::InFlight)));
    }

    #[test]
    fn a_lost_reservation_is_let_go_after_the_lease() {
        let mut l = Ledger::new(W, LEASE);
        try_reserve(&mut l, limit(100), tokens(100), 0).unwrap();
        assert!(try_reserve(&mut l, limit(100), tokens(1), 3_599_999).is_err());
        assert!(try_reserve(&mut l, limit(100), tokens(1), 3_600_000).is_ok());
    }

    #[test]
    fn both_dimensions_and_the_tightest_room() {
        let mut l = Ledger::new(W, LEASE);
        let lim = Limit {
            tokens: Some(1000),
            cost: Some(50),
        };
        let need = Amount { tokens: 10, cost: 30 };
        l.advance(W, LEASE, 0);
        let c = l.check(W, lim, need, 0);
        assert_eq!(
            c,
            Check {
                room: [Some(1000), Some(50)],
                short: None
            }
        );
        l.reserve(need);
        let c = l.check(W, lim, need, 0);
        assert_eq!(c.short, Some((Dim::Cost, Wait::InFlight)));
        let mut s = Standing::default();
        s.add(0, c);
        s.add(
            1,
            Check {
                room: [Some(5), None],
                short: Some((Dim::Tokens, Wait::After(10))),
            },
        );
        assert_eq!(s.room, [Some(5), Some(20)]);
        assert_eq!(s.short, Some((0, Dim::Cost, Wait::InFlight)), "the longest wait binds");
        assert_eq!(s.after(Amount { tokens: 2, cost: 30 }).room, [Some(3), Some(0)]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the order of reservations, settlements (each at most
            /// its reservation) and clock steps, settled spend in the window
            /// never exceeds the limit.
            #[test]
            fn settled_spend_never_exceeds_the_limit(
                ops in proptest::collection::vec((0u64..60, 1u64..40, 0u64..=100, 0u64..3_000), 1..200),
                lim in 1u64..200,
            ) {
                let mut l = Ledger::new(W, LEASE);
                let (mut now, mut open) = (0u64, Vec::new());
                for (settle_pick, need, used_pct, step) in ops {
                    now += step;
                    if settle_pick < 30 && !open.is_empty() {
                        let (at, r): (u64, u64) = open.remove(settle_pick as usize % open.len());
                        l.advance(W, LEASE, now);
                        l.settle(at, tokens(r), tokens(r * used_pct / 100));
                    } else if let Ok(at) = try_reserve(&mut l, limit(lim), tokens(need), now) {
                        open.push((at, need));
                    }
                    prop_assert!(l.spent.total().tokens + l.reserved.total().tokens <= lim);
                }
            }
        }
    }
}
