//! Rate-limiter NIFs (`dspex_core::rate_limit`): one resource per named limiter, holding a
//! token bucket per session. Regular NIFs (a hash lookup under a mutex).

use std::sync::LazyLock;

use dspex_core::clock::{Clock, MonotonicClock};
use dspex_core::rate_limit::RateLimiter;
use parking_lot::Mutex;
use rustler::{Encoder, Env, Error, NifResult, ResourceArc, Term};

use crate::var_key::VarKey;

static CLOCK: LazyLock<MonotonicClock> = LazyLock::new(MonotonicClock::new);

/// A named limiter.
pub struct LimiterResource(Mutex<RateLimiter<VarKey>>);

#[rustler::resource_impl]
impl rustler::Resource for LimiterResource {}

/// A limiter of `capacity` tokens refilled at `per_second`, keeping about `max_keys` buckets.
#[rustler::nif]
fn rate_limiter_new(env: Env, capacity: f64, per_second: f64, max_keys: usize) -> NifResult<Term> {
    let valid =
        capacity >= 1.0 && per_second >= 0.0 && capacity.is_finite() && per_second.is_finite();
    if !valid {
        return Err(Error::BadArg);
    }
    let limiter = RateLimiter::new(capacity, per_second, max_keys);
    Ok(ResourceArc::new(LimiterResource(Mutex::new(limiter))).encode(env))
}

mod tags {
    rustler::atoms! { wait, never }
}

/// Takes a token for `key`: `:ok`, `{:wait, ns}` until the next token, or `:never` when the
/// bucket does not refill.
#[rustler::nif]
fn rate_limiter_take(env: Env, limiter: ResourceArc<LimiterResource>, key: VarKey) -> Term {
    match limiter.0.lock().take_or_wait(&key, CLOCK.now_nanos()) {
        Ok(()) => crate::atoms::ok().encode(env),
        Err(Some(ns)) => (tags::wait(), ns).encode(env),
        Err(None) => tags::never().encode(env),
    }
}
