//! Per-key token buckets: the abuse guard in front of the Python bridge.
//!
//! Each key (a session) gets a bucket of `capacity` tokens refilled at `per_second`; a call
//! takes one token or is refused. Memory stays bounded: when more than `max_keys` buckets
//! exist, the ones that have refilled completely (indistinguishable from a new bucket) are
//! dropped.
//!
//! ```
//! use dspex_core::rate_limit::RateLimiter;
//!
//! let mut limiter = RateLimiter::new(2.0, 1.0, 1_000);
//! assert!(limiter.try_take(&"s1", 0));
//! assert!(limiter.try_take(&"s1", 0));
//! assert!(!limiter.try_take(&"s1", 0));
//! assert!(limiter.try_take(&"s2", 0), "keys have separate buckets");
//! assert!(limiter.try_take(&"s1", 1_000_000_000), "one token back after a second");
//! ```

use std::hash::Hash;

use ahash::AHashMap;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: u64,
}

/// Token buckets keyed by `K`.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    capacity: f64,
    per_ns: f64,
    max_keys: usize,
    buckets: AHashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// Buckets of `capacity` tokens refilled at `per_second` tokens per second; at most
    /// about `max_keys` buckets are kept.
    pub fn new(capacity: f64, per_second: f64, max_keys: usize) -> Self {
        RateLimiter {
            capacity: capacity.max(0.0),
            per_ns: per_second.max(0.0) / 1e9,
            max_keys: max_keys.max(1),
            buckets: AHashMap::new(),
        }
    }

    fn refilled(&self, b: Bucket, now: u64) -> f64 {
        let elapsed = now.saturating_sub(b.last) as f64;
        (b.tokens + elapsed * self.per_ns).min(self.capacity)
    }

    /// Takes a token for `key` at `now`; false if its bucket is empty.
    pub fn try_take(&mut self, key: &K, now: u64) -> bool {
        self.take_or_wait(key, now).is_ok()
    }

    /// Takes a token for `key` at `now`, or says how long until one is there: `Err(Some(ns))`,
    /// or `Err(None)` when the bucket never refills (a rate of 0).
    ///
    /// ```
    /// use dspex_core::rate_limit::RateLimiter;
    ///
    /// let mut limiter = RateLimiter::new(1.0, 4.0, 10);
    /// assert_eq!(limiter.take_or_wait(&"s", 0), Ok(()));
    /// assert_eq!(limiter.take_or_wait(&"s", 0), Err(Some(250_000_000)));
    /// ```
    pub fn take_or_wait(&mut self, key: &K, now: u64) -> Result<(), Option<u64>> {
        let current = match self.buckets.get(key) {
            Some(b) => self.refilled(*b, now),
            None => {
                if self.buckets.len() >= self.max_keys {
                    self.evict_full(now);
                }
                self.capacity
            }
        };
        let allowed = current >= 1.0;
        let tokens = if allowed { current - 1.0 } else { current };
        self.buckets
            .insert(key.clone(), Bucket { tokens, last: now });
        if allowed {
            Ok(())
        } else if self.per_ns > 0.0 {
            let exact = (1.0 - tokens) / self.per_ns;
            if exact >= (u64::MAX / 2) as f64 {
                // Beyond any clock: as good as never.
                return Err(None);
            }
            // The division may round short of a whole token; the wait is the first
            // nanosecond at which the refill reaches one (a step or two past the quotient).
            let mut wait = exact.ceil() as u64;
            for _ in 0..4 {
                if tokens + wait as f64 * self.per_ns >= 1.0 {
                    break;
                }
                wait += 1;
            }
            Err(Some(wait))
        } else {
            Err(None)
        }
    }

    /// Tokens `key` has at `now`.
    pub fn available(&self, key: &K, now: u64) -> f64 {
        self.buckets
            .get(key)
            .map_or(self.capacity, |b| self.refilled(*b, now))
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn evict_full(&mut self, now: u64) {
        let (capacity, per_ns) = (self.capacity, self.per_ns);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_sub(b.last) as f64;
            (b.tokens + elapsed * per_ns) < capacity
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Against a model: over any schedule, a key never gets more than
        // capacity + rate * elapsed tokens.
        #[test]
        fn never_more_than_capacity_plus_refill(
            capacity in 1u32..10,
            per_second in 1u32..10,
            gaps in proptest::collection::vec(0u64..400_000_000, 1..200),
        ) {
            let mut limiter = RateLimiter::new(f64::from(capacity), f64::from(per_second), 16);
            let mut now = 0u64;
            let mut granted = 0u64;
            for gap in gaps {
                now += gap;
                if limiter.try_take(&1u8, now) {
                    granted += 1;
                }
                let bound = f64::from(capacity) + f64::from(per_second) * now as f64 / 1e9;
                prop_assert!(granted as f64 <= bound + 1e-9);
            }
        }
    }

    proptest! {
        // The wait a refusal reports is the true one: at `now + wait` a token is there;
        // a microsecond earlier it is not.
        #[test]
        fn the_reported_wait_is_exact(
            capacity in 1u32..5,
            per_second in 1u32..1000,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..50),
        ) {
            let mut limiter = RateLimiter::new(f64::from(capacity), f64::from(per_second), 16);
            let mut now = 0u64;
            for gap in gaps {
                now += gap;
                if let Err(wait) = limiter.take_or_wait(&1u8, now) {
                    let wait = wait.expect("the bucket refills");
                    let mut early = limiter.clone();
                    if wait > 1_000 {
                        prop_assert!(early.take_or_wait(&1u8, now + wait - 1_000).is_err());
                    }
                    let mut on_time = limiter.clone();
                    prop_assert!(on_time.take_or_wait(&1u8, now + wait).is_ok());
                }
            }
        }
    }

    #[test]
    fn a_rate_too_slow_for_any_clock_is_never() {
        let mut limiter = RateLimiter::new(1.0, 1e-12, 16);
        assert_eq!(limiter.take_or_wait(&1u8, 0), Ok(()));
        assert_eq!(limiter.take_or_wait(&1u8, 0), Err(None));
    }

    #[test]
    fn a_bucket_that_never_refills_says_so() {
        let mut limiter = RateLimiter::new(1.0, 0.0, 16);
        assert_eq!(limiter.take_or_wait(&1u8, 0), Ok(()));
        assert_eq!(limiter.take_or_wait(&1u8, u64::MAX / 2), Err(None));
    }

    #[test]
    fn memory_is_bounded_by_evicting_full_buckets() {
        let mut limiter = RateLimiter::new(1.0, 1.0, 100);
        for k in 0..10_000u32 {
            limiter.try_take(&k, u64::from(k) * 2_000_000_000);
        }
        assert!(limiter.len() <= 101);
    }
}
