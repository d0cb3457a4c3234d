//! The time budget of one guest callback.
//!
//! A callback may use `callback_time` of CPU. The epoch deadline fires after
//! that much wall time, and the deadline callback then checks the thread's
//! CPU clock, so a callback merely preempted on a busy machine is not killed;
//! a wall-clock bound of 20x (at least 1 s) still applies, so nothing runs
//! unbounded. The wall bound is a backstop only: a guest running wasm code
//! accrues CPU as it runs, so a runaway loop meets the CPU limit first, and a
//! callback preempted for a while on a loaded machine (100 ms was seen on a
//! 2-core CI runner) is left to finish.

use super::engine::EPOCH_TICK;
use crate::wasm::abi::Host;
use once_cell::sync::Lazy;
use std::time::{Duration, Instant};
use wasmtime::{Store, UpdateDeadline};

/// The wall-clock bound is this many times the CPU limit ...
const WALL_FACTOR: u32 = 20;
/// ... and at least this long.
const MIN_WALL_LIMIT: Duration = Duration::from_secs(1);

/// A callback's time budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    cpu_start: Duration,
    wall_start: Instant,
    limit: Duration,
    /// Set when the callback was interrupted: CPU and wall time it had used.
    stopped: Option<(Duration, Duration)>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            cpu_start: Duration::ZERO,
            wall_start: Instant::now(),
            limit: Duration::ZERO,
            stopped: None,
        }
    }
}

impl Budget {
    /// However busy the machine, a callback ends within this much wall time.
    fn wall_limit(&self) -> Duration {
        (self.limit * WALL_FACTOR).max(MIN_WALL_LIMIT)
    }

    /// Why the callback was interrupted, for the fault's message.
    pub(crate) fn overrun(&self) -> String {
        match self.stopped {
            Some((cpu, _)) if cpu >= self.limit => format!(
                "callback used {:.1} ms of CPU, past limits.callback_time ({} ms)",
                cpu.as_secs_f64() * 1e3,
                self.limit.as_millis()
            ),
            Some((cpu, wall)) => format!(
                "callback ran {} ms of wall time ({:.1} ms of CPU), past the wall-clock bound of {} ms",
                wall.as_millis(),
                cpu.as_secs_f64() * 1e3,
                self.wall_limit().as_millis()
            ),
            None => "callback ran past limits.callback_time".to_string(),
        }
    }
}

fn ticks_for(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64) + 1
}

/// CPU time the calling thread has used. Time limits count CPU, not wall
/// time: a callback whose thread the OS preempts on a busy machine has not
/// overrun, while a filter spinning in a loop burns CPU as fast as it runs.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return PROCESS_START.elapsed();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    PROCESS_START.elapsed()
}

static PROCESS_START: Lazy<Instant> = Lazy::new(Instant::now);

/// Make the store's epoch deadline consult the budget of the running
/// callback (see [`on_deadline`]).
pub(super) fn enforce(store: &mut Store<Host>) {
    store.epoch_deadline_callback(|mut ctx| Ok(on_deadline(&mut ctx.data_mut().budget)));
}

/// Start a callback's budget: the epoch deadline fires after `limit` of
/// wall time, and [`on_deadline`] then checks the CPU actually used.
pub(super) fn arm(store: &mut Store<Host>, limit: Duration) {
    store.data_mut().budget = Budget {
        cpu_start: thread_cpu_time(),
        wall_start: Instant::now(),
        limit,
        stopped: None,
    };
    store.set_epoch_deadline(ticks_for(limit));
}

/// The epoch deadline passed: interrupt the guest if it used its CPU time
/// (or the wall-clock bound), else let it go on for what is left.
fn on_deadline(b: &mut Budget) -> UpdateDeadline {
    let used = thread_cpu_time().saturating_sub(b.cpu_start);
    let wall = b.wall_start.elapsed();
    if used >= b.limit || wall >= b.wall_limit() {
        b.stopped = Some((used, wall));
        return UpdateDeadline::Interrupt;
    }
    UpdateDeadline::Continue(ticks_for(b.limit - used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_count_cpu_time() {
        let mut b = Budget {
            cpu_start: thread_cpu_time(),
            wall_start: Instant::now(),
            limit: Duration::from_millis(50),
            stopped: None,
        };
        assert!(matches!(on_deadline(&mut b), UpdateDeadline::Continue(_)));
        // Sleeping uses no CPU: still within budget (until the wall bound).
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(on_deadline(&mut b), UpdateDeadline::Continue(_)));
        // Burn 60 ms of CPU (however long that takes on a busy machine).
        let spin = Instant::now();
        while thread_cpu_time() - b.cpu_start < Duration::from_millis(60) && spin.elapsed() < Duration::from_secs(5) {
            std::hint::black_box(0u64);
        }
        assert!(matches!(on_deadline(&mut b), UpdateDeadline::Interrupt));
        assert!(
            b.overrun().contains("of CPU, past limits.callback_time (50 ms)"),
            "{}",
            b.overrun()
        );
        let mut old = Budget {
            wall_start: Instant::now() - Duration::from_secs(2),
            cpu_start: thread_cpu_time(),
            stopped: None,
            ..b
        };
        assert!(matches!(on_deadline(&mut old), UpdateDeadline::Interrupt));
        assert!(
            old.overrun().contains("past the wall-clock bound of 1000 ms"),
            "{}",
            old.overrun()
        );
    }

    #[test]
    fn epoch_ticks() {
        assert_eq!(ticks_for(Duration::from_millis(5)), 6);
        assert_eq!(ticks_for(Duration::from_micros(1500)), 3);
        assert_eq!(ticks_for(Duration::ZERO), 1);
    }
}
