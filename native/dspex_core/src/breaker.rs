//! A circuit breaker as a pure state machine with time as an input.
//!
//! States: `Closed` (calls flow, outcomes are judged), `Open` (calls are rejected until a
//! wait has passed), `HalfOpen` (a few concurrent probe calls test the dependency),
//! `ForcedOpen` (manual; rejects until closed or reset) and `Disabled` (manual; admits
//! everything and judges nothing).
//!
//! The breaker trips when, over its window, the failure rate reaches the configured rate or
//! the slow-call rate reaches its rate (once the window holds `min_calls`), or, in the
//! consecutive mode, when `threshold` failures arrive in a row. Every admitted call gets a
//! [`Permit`] stamped with the breaker's *generation*; each state change starts a new
//! generation, so the late result of a call admitted before a transition is not counted.
//!
//! There are no timers: `Open -> HalfOpen` happens on the first [`Breaker::allow`] or
//! [`Breaker::state`] after the wait, and the half-open time limit is checked the same way,
//! so there is nothing to double-arm or leak.
//!
//! ```
//! use dspex_core::breaker::{Breaker, Config, Outcome, State, Window};
//!
//! let mut b = Breaker::new(Config { window: Window::Consecutive { threshold: 2 }, ..Config::default() });
//! for _ in 0..2 {
//!     let permit = b.allow(0).value.unwrap();
//!     let _ = b.record(permit, Outcome::Failure, 1_000, 0);
//! }
//! assert_eq!(b.state(0).value, State::Open);
//! assert!(b.allow(1).value.is_err());
//! ```

use std::collections::VecDeque;

use crate::effects::WithEffects;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are judged.
    Closed,
    /// Calls are rejected until the wait passes.
    Open,
    /// A limited number of probe calls are admitted.
    HalfOpen,
    /// Manually opened; only `close` or `reset` leave it.
    ForcedOpen,
    /// Manually disabled: everything is admitted, nothing judged.
    Disabled,
}

/// Most calls a count window remembers ([`Window::Count`]'s `size`).
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;
/// Most slices of a time window ([`Window::Time`]'s `buckets`); each slice is 24 bytes,
/// allocated when the breaker is made.
pub const MAX_TIME_BUCKETS: u32 = 10_000;

/// How outcomes are judged in `Closed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// Trip after `threshold` failures in a row.
    Consecutive {
        /// Failures in a row that trip the breaker.
        threshold: u32,
    },
    /// Rates over the last `size` calls, judged once `min_calls` are in.
    Count {
        /// Calls remembered, at most [`MAX_COUNT_WINDOW`].
        size: u32,
        /// Calls needed before any rate is judged.
        min_calls: u32,
    },
    /// Rates over the last `span_ns` (in `buckets` slices), judged once `min_calls` are in.
    Time {
        /// Window length.
        span_ns: u64,
        /// Slices of the window, at most [`MAX_TIME_BUCKETS`]; a call leaves the window a
        /// slice at a time.
        buckets: u32,
        /// Calls needed before any rate is judged.
        min_calls: u32,
    },
}

/// Breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How outcomes are judged.
    pub window: Window,
    /// Failure rate (0..=1) that trips a rate window.
    pub failure_rate: f64,
    /// Slow-call rate (0..=1) that trips a rate window; `None` ignores slowness.
    pub slow_rate: Option<f64>,
    /// A call at least this long is slow.
    pub slow_call_ns: u64,
    /// Wait in `Open` after the first trip.
    pub open_wait_ns: u64,
    /// Each further trip multiplies the wait by this.
    pub backoff: f64,
    /// The wait never exceeds this.
    pub max_open_wait_ns: u64,
    /// The wait is shortened by a random fraction up to this (0..=1), so many breakers that
    /// tripped together do not probe together.
    pub jitter: f64,
    /// Concurrent probes admitted in `HalfOpen`; this many successes close the breaker.
    pub half_open_calls: u32,
    /// Longest stay in `HalfOpen` before it reopens (lost probes cannot wedge it).
    pub max_half_open_ns: u64,
    /// Seed for the jitter.
    pub seed: u64,
}

impl Default for Config {
    /// The spec's defaults: 5 consecutive failures, 30 s wait doubling up to 5 min with 20%
    /// jitter, 3 probes, at most 60 s half-open.
    fn default() -> Self {
        Config {
            window: Window::Consecutive { threshold: 5 },
            failure_rate: 0.5,
            slow_rate: None,
            slow_call_ns: 10_000_000_000,
            open_wait_ns: 30_000_000_000,
            backoff: 2.0,
            max_open_wait_ns: 300_000_000_000,
            jitter: 0.2,
            half_open_calls: 3,
            max_half_open_ns: 60_000_000_000,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A rate outside 0..=1 (or NaN).
    BadRate,
    /// A zero size, threshold, span, bucket count or probe count.
    ZeroSize,
    /// Backoff below 1, jitter outside 0..=1, or max wait below the first wait.
    BadBackoff,
    /// A count window over [`MAX_COUNT_WINDOW`] or a time window over [`MAX_TIME_BUCKETS`].
    TooLarge,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConfigError::BadRate => "a rate outside 0..=1",
            ConfigError::ZeroSize => "a zero size, threshold, span, bucket count or probe count",
            ConfigError::BadBackoff => {
                "backoff below 1, jitter outside 0..=1, or max wait below the first wait"
            }
            ConfigError::TooLarge => "a window larger than its documented maximum",
        })
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !rate_ok(self.failure_rate) || self.slow_rate.is_some_and(|r| !rate_ok(r)) {
            return Err(ConfigError::BadRate);
        }
        let zero = match self.window {
            Window::Consecutive { threshold } => threshold == 0,
            Window::Count { size, .. } => size == 0,
            Window::Time {
                span_ns, buckets, ..
            } => span_ns == 0 || buckets == 0,
        };
        if zero || self.half_open_calls == 0 {
            return Err(ConfigError::ZeroSize);
        }
        let too_large = match self.window {
            Window::Consecutive { .. } => false,
            Window::Count { size, .. } => size > MAX_COUNT_WINDOW,
            Window::Time { buckets, .. } => buckets > MAX_TIME_BUCKETS,
        };
        if too_large {
            return Err(ConfigError::TooLarge);
        }
        // `backoff >= 1.0` written so that NaN fails it too.
        if self.backoff.partial_cmp(&1.0).is_none_or(|o| o.is_lt())
            || !(0.0..=1.0).contains(&self.jitter)
            || self.max_open_wait_ns < self.open_wait_ns
        {
            return Err(ConfigError::BadBackoff);
        }
        Ok(())
    }
}

/// Proof that a call was admitted, to hand back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The generation the call was admitted in.
    pub generation: u64,
    /// Whether it was a half-open probe.
    pub probe: bool,
}

/// A call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed.
    Failure,
    /// Not counted either way (e.g. a caller error unrelated to the dependency).
    Ignored,
}

/// Why a call was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Open or forced open.
    Open,
    /// Half-open with every probe slot taken.
    ProbesBusy,
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowRate,
    /// Enough failures in a row.
    ConsecutiveFailures,
    /// The open wait passed.
    WaitElapsed,
    /// Every probe succeeded.
    ProbesSucceeded,
    /// A probe failed.
    ProbeFailed,
    /// Half-open lasted too long.
    HalfOpenTimeout,
    /// `force_open` was called.
    Forced,
    /// `close` was called.
    Closed,
    /// `reset` was called.
    Reset,
    /// `disable` was called.
    Disabled,
}

/// What the caller must publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// The state changed.
    StateChanged {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        reason: Reason,
    },
}

/// Counters since the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls admitted.
    pub admitted: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Outcomes recorded as successes.
    pub successes: u64,
    /// Outcomes recorded as failures.
    pub failures: u64,
    /// Outcomes recorded as slow.
    pub slow: u64,
    /// Outcomes ignored (by outcome or because their generation had passed).
    pub ignored: u64,
    /// Times the breaker tripped open.
    pub trips: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: Config,
    state: State,
    generation: u64,
    since: u64,
    open_until: u64,
    consecutive_trips: u32,
    consecutive_failures: u32,
    ring: VecDeque<(bool, bool)>,
    ring_failures: u32,
    ring_slow: u32,
    buckets: Vec<Bucket>,
    probes_in_flight: u32,
    probe_successes: u32,
    rng: u64,
    stats: Stats,
}

impl Breaker {
    /// A closed breaker. Use [`Config::validate`] first for settings from outside; a time
    /// window is never given more than [`MAX_TIME_BUCKETS`] slices, whatever the settings.
    pub fn new(config: Config) -> Self {
        let buckets = match config.window {
            Window::Time { buckets, .. } => {
                vec![Bucket::default(); buckets.min(MAX_TIME_BUCKETS) as usize]
            }
            _ => Vec::new(),
        };
        let rng = config.seed | 1;
        Breaker {
            config,
            state: State::Closed,
            generation: 0,
            since: 0,
            open_until: 0,
            consecutive_trips: 0,
            consecutive_failures: 0,
            ring: VecDeque::new(),
            ring_failures: 0,
            ring_slow: 0,
            buckets,
            probes_in_flight: 0,
            probe_successes: 0,
            rng,
            stats: Stats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// When an `Open` breaker will admit a probe (nanoseconds), if it is open.
    pub fn open_until(&self) -> Option<u64> {
        (self.state == State::Open).then_some(self.open_until)
    }

    /// `(calls, failures, slow)` in the current window (0s in consecutive mode but failures
    /// in a row as `failures`).
    pub fn window_counts(&self, now: u64) -> (u32, u32, u32) {
        match self.config.window {
            Window::Consecutive { .. } => (0, self.consecutive_failures, 0),
            Window::Count { .. } => (self.ring.len() as u32, self.ring_failures, self.ring_slow),
            Window::Time { .. } => self.time_counts(now),
        }
    }

    /// The state at `now`, applying any time-based transition due.
    pub fn state(&mut self, now: u64) -> WithEffects<State, Effect> {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        WithEffects::new(self.state, effects)
    }

    /// [`allow`](Self::allow) with the time read lazily: `now` is called only when the
    /// answer depends on it (the breaker is open or half-open), so a closed breaker's hot
    /// path reads no clock.
    pub fn allow_with(
        &mut self,
        now: impl FnOnce() -> u64,
    ) -> WithEffects<Result<Permit, Rejection>, Effect> {
        let t = if matches!(self.state, State::Open | State::HalfOpen) {
            now()
        } else {
            self.since
        };
        self.allow(t)
    }

    /// [`record`](Self::record) with the time read lazily: a fast success on a closed
    /// breaker in consecutive mode cannot trip it or move it in time, so no clock is read
    /// then. (In a rate window a success can trip it: it may be the call that brings the
    /// window to `min_calls`.)
    pub fn record_with(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        duration_ns: u64,
        now: impl FnOnce() -> u64,
    ) -> WithEffects<(), Effect> {
        let timeless = self.state == State::Closed
            && matches!(self.config.window, Window::Consecutive { .. })
            && outcome == Outcome::Success
            && duration_ns < self.config.slow_call_ns;
        let t = if timeless { self.since } else { now() };
        self.record(permit, outcome, duration_ns, t)
    }

    /// Asks to make a call.
    pub fn allow(&mut self, now: u64) -> WithEffects<Result<Permit, Rejection>, Effect> {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        let result = match self.state {
            State::Closed | State::Disabled => Ok(Permit {
                generation: self.generation,
                probe: false,
            }),
            State::HalfOpen if self.probes_in_flight < self.config.half_open_calls => {
                self.probes_in_flight += 1;
                Ok(Permit {
                    generation: self.generation,
                    probe: true,
                })
            }
            State::HalfOpen => Err(Rejection::ProbesBusy),
            State::Open | State::ForcedOpen => Err(Rejection::Open),
        };
        match result {
            Ok(_) => self.stats.admitted += 1,
            Err(_) => self.stats.rejected += 1,
        }
        WithEffects::new(result, effects)
    }

    /// Reports an admitted call's outcome and duration.
    pub fn record(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        duration_ns: u64,
        now: u64,
    ) -> WithEffects<(), Effect> {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        if permit.generation != self.generation || self.state == State::Disabled {
            self.stats.ignored += 1;
            return WithEffects::new((), effects);
        }
        let slow = outcome != Outcome::Ignored && duration_ns >= self.config.slow_call_ns;
        match outcome {
            Outcome::Success => self.stats.successes += 1,
            Outcome::Failure => self.stats.failures += 1,
            Outcome::Ignored => self.stats.ignored += 1,
        }
        if slow {
            self.stats.slow += 1;
        }
        match self.state {
            State::Closed if outcome != Outcome::Ignored => {
                if let Some(reason) = self.judge(outcome == Outcome::Failure, slow, now) {
                    self.trip(now, reason, &mut effects);
                }
            }
            State::HalfOpen if permit.probe => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failure => self.trip(now, Reason::ProbeFailed, &mut effects),
                    Outcome::Success => {
                        self.probe_successes += 1;
                        if self.probe_successes >= self.config.half_open_calls {
                            self.consecutive_trips = 0;
                            self.move_to(State::Closed, now, Reason::ProbesSucceeded, &mut effects);
                        }
                    }
                    Outcome::Ignored => {}
                }
            }
            _ => {}
        }
        WithEffects::new((), effects)
    }

    /// Opens the breaker until `close` or `reset`.
    pub fn force_open(&mut self, now: u64) -> WithEffects<(), Effect> {
        self.manual(State::ForcedOpen, Reason::Forced, now)
    }

    /// Closes the breaker with an empty window (keeps the trip count for backoff).
    pub fn close(&mut self, now: u64) -> WithEffects<(), Effect> {
        self.manual(State::Closed, Reason::Closed, now)
    }

    /// Closes the breaker and forgets everything: window, backoff and counters.
    pub fn reset(&mut self, now: u64) -> WithEffects<(), Effect> {
        let out = self.manual(State::Closed, Reason::Reset, now);
        self.consecutive_trips = 0;
        self.stats = Stats::default();
        out
    }

    /// Admits everything and judges nothing until `close` or `reset`.
    pub fn disable(&mut self, now: u64) -> WithEffects<(), Effect> {
        self.manual(State::Disabled, Reason::Disabled, now)
    }

    fn manual(&mut self, to: State, reason: Reason, now: u64) -> WithEffects<(), Effect> {
        let mut effects = Vec::new();
        self.move_to(to, now, reason, &mut effects);
        WithEffects::new((), effects)
    }

    fn tick(&mut self, now: u64, effects: &mut Vec<Effect>) {
        match self.state {
            State::Open if now >= self.open_until => {
                self.move_to(State::HalfOpen, now, Reason::WaitElapsed, effects);
            }
            State::HalfOpen if now.saturating_sub(self.since) >= self.config.max_half_open_ns => {
                self.trip(now, Reason::HalfOpenTimeout, effects);
            }
            _ => {}
        }
    }

    fn move_to(&mut self, to: State, now: u64, reason: Reason, effects: &mut Vec<Effect>) {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.since = now;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.clear_window();
        effects.push(Effect::StateChanged { from, to, reason });
    }

    fn trip(&mut self, now: u64, reason: Reason, effects: &mut Vec<Effect>) {
        self.consecutive_trips = self.consecutive_trips.saturating_add(1);
        self.stats.trips += 1;
        self.open_until = now.saturating_add(self.next_wait());
        self.move_to(State::Open, now, reason, effects);
    }

    /// The wait before the next probe: exponential in consecutive trips, capped, then
    /// shortened by up to `jitter` of itself.
    fn next_wait(&mut self) -> u64 {
        let c = &self.config;
        let exp = c
            .backoff
            .powi(self.consecutive_trips.saturating_sub(1).min(64) as i32);
        let capped = (c.open_wait_ns as f64 * exp).min(c.max_open_wait_ns as f64);
        // xorshift64: deterministic for a seed, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        (capped * (1.0 - c.jitter * unit)) as u64
    }

    fn clear_window(&mut self) {
        self.consecutive_failures = 0;
        self.ring.clear();
        self.ring_failures = 0;
        self.ring_slow = 0;
        for b in &mut self.buckets {
            *b = Bucket::default();
        }
    }

    // Adds an outcome to the window and says whether (and why) it trips.
    fn judge(&mut self, failed: bool, slow: bool, now: u64) -> Option<Reason> {
        let (calls, failures, slows, min_calls) = match self.config.window {
            Window::Consecutive { threshold } => {
                if failed {
                    self.consecutive_failures += 1;
                } else {
                    self.consecutive_failures = 0;
                }
                return (self.consecutive_failures >= threshold)
                    .then_some(Reason::ConsecutiveFailures);
            }
            Window::Count { size, min_calls } => {
                if self.ring.len() as u32 == size {
                    if let Some((f, s)) = self.ring.pop_front() {
                        self.ring_failures -= u32::from(f);
                        self.ring_slow -= u32::from(s);
                    }
                }
                self.ring.push_back((failed, slow));
                self.ring_failures += u32::from(failed);
                self.ring_slow += u32::from(slow);
                (
                    self.ring.len() as u32,
                    self.ring_failures,
                    self.ring_slow,
                    min_calls,
                )
            }
            Window::Time { min_calls, .. } => {
                let bucket = self.bucket_mut(now);
                bucket.calls += 1;
                bucket.failures += u32::from(failed);
                bucket.slow += u32::from(slow);
                let (c, f, s) = self.time_counts(now);
                (c, f, s, min_calls)
            }
        };
        if calls == 0 || calls < min_calls {
            return None;
        }
        let rate = |n: u32| f64::from(n) / f64::from(calls);
        if rate(failures) >= self.config.failure_rate {
            Some(Reason::FailureRate)
        } else if self.config.slow_rate.is_some_and(|r| rate(slows) >= r) {
            Some(Reason::SlowRate)
        } else {
            None
        }
    }

    fn bucket_width(&self) -> u64 {
        match self.config.window {
            Window::Time {
                span_ns, buckets, ..
            } => (span_ns / u64::from(buckets)).max(1),
            _ => 1,
        }
    }

    fn bucket_mut(&mut self, now: u64) -> &mut Bucket {
        let index = now / self.bucket_width();
        let slot = (index % self.buckets.len() as u64) as usize;
        let bucket = &mut self.buckets[slot];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket
    }

    // Buckets whose index lies in (current - n, current].
    fn time_counts(&self, now: u64) -> (u32, u32, u32) {
        let current = now / self.bucket_width();
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && b.index <= current && b.index + n > current)
            .fold((0, 0, 0), |(c, f, s), b| {
                (c + b.calls, f + b.failures, s + b.slow)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_window(window: Window) -> Config {
        Config {
            window,
            ..Config::default()
        }
    }

    #[test]
    fn windows_past_their_maximum_are_refused_before_anything_is_allocated() {
        let time = |buckets| Window::Time {
            span_ns: 1_000_000_000,
            buckets,
            min_calls: 1,
        };
        let count = |size| Window::Count { size, min_calls: 1 };
        assert_eq!(with_window(time(MAX_TIME_BUCKETS)).validate(), Ok(()));
        assert_eq!(
            with_window(time(MAX_TIME_BUCKETS + 1)).validate(),
            Err(ConfigError::TooLarge)
        );
        assert_eq!(
            with_window(time(u32::MAX)).validate(),
            Err(ConfigError::TooLarge)
        );
        assert_eq!(with_window(count(MAX_COUNT_WINDOW)).validate(), Ok(()));
        assert_eq!(
            with_window(count(MAX_COUNT_WINDOW + 1)).validate(),
            Err(ConfigError::TooLarge)
        );
    }

    #[test]
    fn a_breaker_made_without_validation_still_allocates_at_most_the_maximum() {
        let b = Breaker::new(with_window(Window::Time {
            span_ns: 1_000_000_000,
            buckets: u32::MAX,
            min_calls: 1,
        }));
        assert_eq!(b.buckets.len(), MAX_TIME_BUCKETS as usize);
    }

    #[test]
    fn config_errors_are_std_errors() {
        let e: Box<dyn std::error::Error> = Box::new(ConfigError::TooLarge);
        assert!(e.to_string().contains("maximum"));
    }
}
