//! Per-session token buckets: a burst of 2, then one call per 250 ms, with the exact wait.
//!
//!     cargo run -p dspex_core --example rate_limit --no-default-features --features rate_limit

use dspex_core::rate_limit::RateLimiter;

fn main() {
    let mut limiter = RateLimiter::new(2.0, 4.0, 10_000);
    for (t_ms, session) in [(0, "s1"), (0, "s1"), (0, "s1"), (0, "s2"), (250, "s1")] {
        let now = t_ms * 1_000_000;
        match limiter.take_or_wait(&session, now) {
            Ok(()) => println!("{t_ms:>4} ms {session}: allowed"),
            Err(Some(ns)) => println!(
                "{t_ms:>4} ms {session}: refused, retry in {} ms",
                ns / 1_000_000
            ),
            Err(None) => println!("{t_ms:>4} ms {session}: refused for good"),
        }
    }
}
