//! Time as an input.
//!
//! Every state machine in this crate takes `now` (nanoseconds on a monotonic scale) as an
//! argument. [`Clock`] is how callers obtain it: [`MonotonicClock`] in production,
//! [`ManualClock`] in tests, where time moves only when the test says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds per millisecond.
pub const NANOS_PER_MILLI: u64 = 1_000_000;

/// A source of monotonic time in nanoseconds.
pub trait Clock: Send + Sync {
    /// The current time in nanoseconds since an arbitrary, fixed origin. Never decreases.
    fn now_nanos(&self) -> u64;
}

/// The real monotonic clock; its origin is the moment it was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        // u64 nanoseconds last 584 years from the origin; saturate rather than wrap.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to; shareable between threads.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A manual clock reading `start` nanoseconds.
    pub fn new(start: u64) -> Self {
        Self {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward by `nanos` (saturating).
    pub fn advance_nanos(&self, nanos: u64) {
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(nanos))
            });
    }

    /// Moves the clock forward by `millis` milliseconds.
    pub fn advance_millis(&self, millis: u64) {
        self.advance_nanos(millis.saturating_mul(NANOS_PER_MILLI));
    }

    /// Sets the clock to `nanos`, which must not be earlier than the current reading.
    ///
    /// # Errors
    /// [`crate::Error::ClockWentBackwards`] if `nanos` is earlier than now; the clock is unchanged.
    pub fn set_nanos(&self, nanos: u64) -> crate::Result<()> {
        self.now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (nanos >= t).then_some(nanos)
            })
            .map(|_| ())
            .map_err(|current| crate::Error::ClockWentBackwards {
                current,
                requested: nanos,
            })
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(10);
        assert_eq!(clock.now_nanos(), 10);
        clock.advance_nanos(5);
        assert_eq!(clock.now_nanos(), 15);
        clock.advance_millis(2);
        assert_eq!(clock.now_nanos(), 2_000_015);
    }

    #[test]
    fn manual_clock_refuses_to_go_backwards() {
        let clock = ManualClock::new(100);
        assert_eq!(
            clock.set_nanos(50),
            Err(crate::Error::ClockWentBackwards {
                current: 100,
                requested: 50
            })
        );
        assert_eq!(clock.now_nanos(), 100);
        clock.set_nanos(200).unwrap();
        assert_eq!(clock.now_nanos(), 200);
    }

    #[test]
    fn manual_clock_saturates() {
        let clock = ManualClock::new(u64::MAX - 1);
        clock.advance_nanos(10);
        assert_eq!(clock.now_nanos(), u64::MAX);
    }

    #[test]
    fn monotonic_clock_never_decreases() {
        let clock = MonotonicClock::new();
        let mut last = clock.now_nanos();
        for _ in 0..1000 {
            let now = clock.now_nanos();
            assert!(now >= last);
            last = now;
        }
    }
}
