//! A circuit breaker in front of a flaky dependency: two failures open it, calls are then
//! refused without running, and after the open timeout a probe closes it again.
//!
//!     cargo run -p dspex_core --example breaker --no-default-features --features breaker

use dspex_core::breaker::{Breaker, Config, Outcome, State, Window};

const MS: u64 = 1_000_000;

fn main() {
    let config = Config {
        window: Window::Consecutive { threshold: 2 },
        open_wait_ns: 100 * MS,
        half_open_calls: 1,
        jitter: 0.0,
        ..Config::default()
    };
    let mut breaker = Breaker::new(config);
    let mut now = 0;
    for call in 1..=3 {
        match breaker.allow(now).value {
            Ok(permit) => {
                let _ = breaker.record(permit, Outcome::Failure, 5 * MS, now);
                println!("call {call}: ran and failed");
            }
            Err(refusal) => println!("call {call}: refused ({refusal:?}), nothing ran"),
        }
        now += MS;
    }
    assert_eq!(breaker.state(now).value, State::Open);
    now += 200 * MS;
    let permit = breaker
        .allow(now)
        .value
        .expect("half-open lets a probe through");
    let _ = breaker.record(permit, Outcome::Success, MS, now);
    println!(
        "after the timeout a probe succeeded: {:?}",
        breaker.state(now).value
    );
}
