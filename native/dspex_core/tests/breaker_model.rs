//! Model-based tests of the circuit breaker against a reference state machine written
//! separately, with a manual clock. The reference keeps every outcome and recounts its
//! window from scratch; it has no jitter (the jitter bound is tested on its own).

use dspex_core::breaker::{Breaker, Config, Outcome, Permit, Rejection, State, Window};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Allow(u64),
    Record(usize, Outcome, u64, u64),
    Advance(u64),
    ForceOpen,
    Close,
    Reset,
    Disable,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Failure),
        3 => Just(Outcome::Success),
        1 => Just(Outcome::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Times move in steps of 5 so that exact boundaries (wait over, window edge,
        // half-open limit) are hit often.
        6 => (0u64..8).prop_map(|k| Op::Allow(k * 5)),
        6 => (0usize..8, outcome(), 0u64..30, 0u64..8)
            .prop_map(|(i, o, d, k)| Op::Record(i, o, d, k * 5)),
        2 => (0u64..60).prop_map(|k| Op::Advance(k * 5)),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Close),
        1 => Just(Op::Reset),
        1 => Just(Op::Disable),
    ]
}

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        (1u32..5).prop_map(|threshold| Window::Consecutive { threshold }),
        (1u32..6, 0u32..6).prop_map(|(size, min_calls)| Window::Count { size, min_calls }),
        (1u32..5, 1u64..4, 0u32..6).prop_map(|(buckets, w, min_calls)| Window::Time {
            span_ns: u64::from(buckets) * w * 25,
            buckets,
            min_calls
        }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        window(),
        1u32..=4,
        proptest::option::of(1u32..=4),
        1u32..4,
        50u64..200,
        0u32..4,
        100u64..600,
    )
        .prop_map(
            |(window, fr, sr, probes, wait, doublings, half_open)| Config {
                window,
                failure_rate: f64::from(fr) / 4.0,
                slow_rate: sr.map(|r| f64::from(r) / 4.0),
                slow_call_ns: 20,
                open_wait_ns: wait,
                backoff: 2.0,
                max_open_wait_ns: wait << doublings,
                jitter: 0.0,
                half_open_calls: probes,
                max_half_open_ns: half_open,
                seed: 1,
            },
        )
}

/// The reference.
struct Model {
    c: Config,
    state: State,
    generation: u64,
    since: u64,
    open_until: u64,
    trips: u32,
    history: Vec<(u64, bool, bool)>,
    in_flight: u32,
    probe_ok: u32,
}

impl Model {
    fn new(c: Config) -> Self {
        Model {
            c,
            state: State::Closed,
            generation: 0,
            since: 0,
            open_until: 0,
            trips: 0,
            history: vec![],
            in_flight: 0,
            probe_ok: 0,
        }
    }

    fn go(&mut self, to: State, now: u64) {
        self.state = to;
        self.generation += 1;
        self.since = now;
        self.history.clear();
        self.in_flight = 0;
        self.probe_ok = 0;
    }

    fn trip(&mut self, now: u64) {
        self.trips += 1;
        let mut wait = self.c.open_wait_ns;
        for _ in 1..self.trips {
            wait = wait.saturating_mul(2).min(self.c.max_open_wait_ns);
        }
        self.open_until = now + wait.min(self.c.max_open_wait_ns);
        self.go(State::Open, now);
    }

    fn tick(&mut self, now: u64) {
        if self.state == State::Open && now >= self.open_until {
            self.go(State::HalfOpen, now);
        } else if self.state == State::HalfOpen && now - self.since >= self.c.max_half_open_ns {
            self.trip(now);
        }
    }

    fn allow(&mut self, now: u64) -> Result<Permit, Rejection> {
        self.tick(now);
        match self.state {
            State::Closed | State::Disabled => Ok(Permit {
                generation: self.generation,
                probe: false,
            }),
            State::HalfOpen if self.in_flight < self.c.half_open_calls => {
                self.in_flight += 1;
                Ok(Permit {
                    generation: self.generation,
                    probe: true,
                })
            }
            State::HalfOpen => Err(Rejection::ProbesBusy),
            _ => Err(Rejection::Open),
        }
    }

    fn window(&self, now: u64) -> Vec<(bool, bool)> {
        match self.c.window {
            Window::Consecutive { .. } => vec![],
            Window::Count { size, .. } => {
                let skip = self.history.len().saturating_sub(size as usize);
                self.history[skip..].iter().map(|h| (h.1, h.2)).collect()
            }
            Window::Time {
                span_ns, buckets, ..
            } => {
                let w = (span_ns / u64::from(buckets)).max(1);
                self.history
                    .iter()
                    .filter(|h| h.0 / w + u64::from(buckets) > now / w)
                    .map(|h| (h.1, h.2))
                    .collect()
            }
        }
    }

    fn trips_now(&self, now: u64) -> bool {
        match self.c.window {
            Window::Consecutive { threshold } => {
                let run = self.history.iter().rev().take_while(|h| h.1).count();
                run as u32 >= threshold
            }
            Window::Count { min_calls, .. } | Window::Time { min_calls, .. } => {
                let w = self.window(now);
                let n = w.len() as f64;
                if w.is_empty() || (w.len() as u32) < min_calls {
                    return false;
                }
                let failures = w.iter().filter(|x| x.0).count() as f64;
                let slow = w.iter().filter(|x| x.1).count() as f64;
                failures / n >= self.c.failure_rate
                    || self.c.slow_rate.is_some_and(|r| slow / n >= r)
            }
        }
    }

    fn record(&mut self, p: Permit, o: Outcome, d: u64, now: u64) {
        self.tick(now);
        if p.generation != self.generation || self.state == State::Disabled {
            return;
        }
        let slow = o != Outcome::Ignored && d >= self.c.slow_call_ns;
        match self.state {
            State::Closed if o != Outcome::Ignored => {
                self.history.push((now, o == Outcome::Failure, slow));
                if self.trips_now(now) {
                    self.trip(now);
                }
            }
            State::HalfOpen if p.probe => {
                self.in_flight -= 1;
                match o {
                    Outcome::Failure => self.trip(now),
                    Outcome::Success => {
                        self.probe_ok += 1;
                        if self.probe_ok >= self.c.half_open_calls {
                            self.trips = 0;
                            self.go(State::Closed, now);
                        }
                    }
                    Outcome::Ignored => {}
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn breaker_matches_reference(c in config(), ops in proptest::collection::vec(op(), 1..80)) {
        let mut real = Breaker::new(c.clone());
        let mut model = Model::new(c);
        let mut now = 0u64;
        let mut permits: Vec<Permit> = Vec::new();
        for op in ops {
            match op {
                Op::Allow(dt) => {
                    now += dt;
                    let got = real.allow(now).value;
                    prop_assert_eq!(got, model.allow(now));
                    if let Ok(p) = got {
                        permits.push(p);
                    }
                }
                Op::Record(i, o, d, dt) => {
                    if permits.is_empty() {
                        continue;
                    }
                    now += dt;
                    let p = permits.remove(i % permits.len());
                    let _ = real.record(p, o, d, now);
                    model.record(p, o, d, now);
                }
                Op::Advance(dt) => now += dt,
                Op::ForceOpen => { let _ = real.force_open(now); model.go(State::ForcedOpen, now); }
                Op::Close => { let _ = real.close(now); model.go(State::Closed, now); }
                Op::Reset => { let _ = real.reset(now); model.trips = 0; model.go(State::Closed, now); }
                Op::Disable => { let _ = real.disable(now); model.go(State::Disabled, now); }
            }
            model.tick(now);
            prop_assert_eq!(real.state(now).value, model.state);
            prop_assert_eq!(real.generation(), model.generation);
            if model.state == State::Open {
                prop_assert_eq!(real.open_until(), Some(model.open_until));
            }
        }
    }

    #[test]
    fn jitter_only_shortens_the_wait_within_its_bound(jitter in 0.0f64..=1.0, seed in any::<u64>()) {
        let c = Config {
            window: Window::Consecutive { threshold: 1 },
            open_wait_ns: 1_000_000,
            max_open_wait_ns: 1_000_000,
            jitter,
            seed,
            ..Config::default()
        };
        let mut b = Breaker::new(c);
        let p = b.allow(0).value.unwrap();
        let _ = b.record(p, Outcome::Failure, 0, 0);
        let wait = b.open_until().unwrap();
        prop_assert!(wait <= 1_000_000);
        prop_assert!(wait as f64 >= 1_000_000.0 * (1.0 - jitter) - 1.0);
    }
}

#[test]
fn trips_exactly_at_the_threshold() {
    let mut b = Breaker::new(Config {
        window: Window::Consecutive { threshold: 3 },
        jitter: 0.0,
        ..Config::default()
    });
    for i in 0..3 {
        assert_eq!(b.state(0).value, State::Closed, "before failure {i}");
        let p = b.allow(0).value.unwrap();
        let _ = b.record(p, Outcome::Failure, 0, 0);
    }
    assert_eq!(b.state(0).value, State::Open);
}

#[test]
fn late_result_from_an_old_generation_is_not_counted() {
    let c = Config {
        window: Window::Consecutive { threshold: 1 },
        jitter: 0.0,
        ..Config::default()
    };
    let mut b = Breaker::new(c);
    let early = b.allow(0).value.unwrap();
    let _ = b.force_open(1);
    let _ = b.close(2);
    let _ = b.record(early, Outcome::Failure, 0, 3);
    assert_eq!(b.state(3).value, State::Closed);
    assert_eq!(b.stats().ignored, 1);
}

#[test]
fn half_open_cannot_get_stuck_on_lost_probes() {
    let c = Config {
        window: Window::Consecutive { threshold: 1 },
        open_wait_ns: 10,
        max_open_wait_ns: 10,
        jitter: 0.0,
        half_open_calls: 1,
        max_half_open_ns: 100,
        ..Config::default()
    };
    let mut b = Breaker::new(c);
    let p = b.allow(0).value.unwrap();
    let _ = b.record(p, Outcome::Failure, 0, 0);
    let _probe = b.allow(10).value.unwrap(); // never reported
    assert_eq!(b.allow(20).value, Err(Rejection::ProbesBusy));
    assert_eq!(b.state(110).value, State::Open);
    assert!(
        b.allow(130).value.is_ok(),
        "a new probe after the next wait"
    );
}

#[test]
fn bad_configs_are_refused() {
    use dspex_core::breaker::ConfigError;
    let bad_rate = Config {
        failure_rate: 1.5,
        ..Config::default()
    };
    assert_eq!(bad_rate.validate(), Err(ConfigError::BadRate));
    let nan = Config {
        failure_rate: f64::NAN,
        ..Config::default()
    };
    assert_eq!(nan.validate(), Err(ConfigError::BadRate));
    let zero = Config {
        window: Window::Count {
            size: 0,
            min_calls: 0,
        },
        ..Config::default()
    };
    assert_eq!(zero.validate(), Err(ConfigError::ZeroSize));
    let backoff = Config {
        backoff: 0.5,
        ..Config::default()
    };
    assert_eq!(backoff.validate(), Err(ConfigError::BadBackoff));
    assert_eq!(Config::default().validate(), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    // The lazy-clock variants must behave exactly like the explicit ones.
    #[test]
    fn lazy_clock_variants_match(c in config(), ops in proptest::collection::vec(op(), 1..80)) {
        let mut eager = Breaker::new(c.clone());
        let mut lazy = Breaker::new(c);
        let mut now = 0u64;
        let mut permits: Vec<Permit> = Vec::new();
        for op in ops {
            match op {
                Op::Allow(dt) => {
                    now += dt;
                    let a = eager.allow(now);
                    let b = lazy.allow_with(|| now);
                    prop_assert_eq!(&a.value, &b.value);
                    prop_assert_eq!(a.effects, b.effects);
                    if let Ok(p) = a.value {
                        permits.push(p);
                    }
                }
                Op::Record(i, o, d, dt) => {
                    if permits.is_empty() {
                        continue;
                    }
                    now += dt;
                    let p = permits.remove(i % permits.len());
                    let a = eager.record(p, o, d, now);
                    let b = lazy.record_with(p, o, d, || now);
                    prop_assert_eq!(a.effects, b.effects);
                }
                Op::Advance(dt) => now += dt,
                Op::ForceOpen => { let _ = eager.force_open(now); let _ = lazy.force_open(now); }
                Op::Close => { let _ = eager.close(now); let _ = lazy.close(now); }
                Op::Reset => { let _ = eager.reset(now); let _ = lazy.reset(now); }
                Op::Disable => { let _ = eager.disable(now); let _ = lazy.disable(now); }
            }
            prop_assert_eq!(eager.state(now).value, lazy.state(now).value);
            prop_assert_eq!(eager.generation(), lazy.generation());
            prop_assert_eq!(eager.open_until(), lazy.open_until());
            prop_assert_eq!(eager.stats(), lazy.stats());
        }
    }
}
