//! Circuit-breaker NIFs (`dspex_core::breaker`). One resource per named breaker. All are
//! regular NIFs (well under a microsecond). The shell reads the monotonic clock here, so
//! the core stays clock-free.

use std::sync::LazyLock;

use dspex_core::breaker::{
    Breaker, Config, ConfigError, Effect, Outcome, Permit, Reason, Rejection, State, Window,
};
use dspex_core::clock::{Clock, MonotonicClock};
use parking_lot::Mutex;
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Encoder, Env, Error, NifResult, ResourceArc, Term};

use crate::atoms::{self, atom_is};

static CLOCK: LazyLock<MonotonicClock> = LazyLock::new(MonotonicClock::new);

fn now() -> u64 {
    CLOCK.now_nanos()
}

/// A named breaker's state machine.
pub struct BreakerResource(Mutex<Breaker>);

#[rustler::resource_impl]
impl rustler::Resource for BreakerResource {}

type Handle = ResourceArc<BreakerResource>;

fn state_atom(s: State) -> Atom {
    match s {
        State::Closed => atoms::closed(),
        State::Open => atoms::open(),
        State::HalfOpen => atoms::half_open(),
        State::ForcedOpen => atoms::forced_open(),
        State::Disabled => atoms::disabled(),
    }
}

fn reason_atom(r: Reason) -> Atom {
    match r {
        Reason::FailureRate => atoms::failure_rate(),
        Reason::SlowRate => atoms::slow_rate(),
        Reason::ConsecutiveFailures => atoms::consecutive_failures(),
        Reason::WaitElapsed => atoms::wait_elapsed(),
        Reason::ProbesSucceeded => atoms::probes_succeeded(),
        Reason::ProbeFailed => atoms::probe_failed(),
        Reason::HalfOpenTimeout => atoms::half_open_timeout(),
        Reason::Forced => atoms::forced(),
        Reason::Closed => atoms::closed(),
        Reason::Reset => atoms::reset(),
        Reason::Disabled => atoms::disabled(),
    }
}

fn effects(list: &[Effect]) -> Vec<(Atom, Atom, Atom)> {
    list.iter()
        .map(|Effect::StateChanged { from, to, reason }| {
            (state_atom(*from), state_atom(*to), reason_atom(*reason))
        })
        .collect()
}

fn decode_window(term: Term) -> NifResult<Window> {
    let parts = get_tuple(term)?;
    let tag = *parts.first().ok_or(Error::BadArg)?;
    let int = |i: usize| -> NifResult<u64> { parts.get(i).ok_or(Error::BadArg)?.decode() };
    let small = |i: usize| -> NifResult<u32> { parts.get(i).ok_or(Error::BadArg)?.decode() };
    if atom_is(tag, atoms::consecutive()) {
        Ok(Window::Consecutive {
            threshold: small(1)?,
        })
    } else if atom_is(tag, atoms::count()) {
        Ok(Window::Count {
            size: small(1)?,
            min_calls: small(2)?,
        })
    } else if atom_is(tag, atoms::time()) {
        Ok(Window::Time {
            span_ns: int(1)?,
            buckets: small(2)?,
            min_calls: small(3)?,
        })
    } else {
        Err(Error::BadArg)
    }
}

/// `{window, failure_rate, slow_rate | nil, slow_call_ns, open_wait_ns, backoff,
/// max_open_wait_ns, jitter, half_open_calls, max_half_open_ns, seed}`.
fn decode_config(term: Term) -> NifResult<Config> {
    let p = get_tuple(term)?;
    if p.len() != 11 {
        return Err(Error::BadArg);
    }
    let slow_rate = if atom_is(p[2], atoms::nil()) {
        None
    } else {
        Some(p[2].decode::<f64>()?)
    };
    Ok(Config {
        window: decode_window(p[0])?,
        failure_rate: p[1].decode()?,
        slow_rate,
        slow_call_ns: p[3].decode()?,
        open_wait_ns: p[4].decode()?,
        backoff: p[5].decode()?,
        max_open_wait_ns: p[6].decode()?,
        jitter: p[7].decode()?,
        half_open_calls: p[8].decode()?,
        max_half_open_ns: p[9].decode()?,
        seed: p[10].decode()?,
    })
}

/// `{:ok, handle}` or `{:error, {:invalid_config, reason}}`.
#[rustler::nif]
fn breaker_new<'a>(env: Env<'a>, config: Term<'a>) -> NifResult<Term<'a>> {
    let config = decode_config(config)?;
    Ok(match config.validate() {
        Ok(()) => {
            let handle = ResourceArc::new(BreakerResource(Mutex::new(Breaker::new(config))));
            (atoms::ok(), handle).encode(env)
        }
        Err(e) => {
            let reason = match e {
                ConfigError::BadRate => atoms::bad_rate(),
                ConfigError::ZeroSize => atoms::zero_size(),
                ConfigError::BadBackoff => atoms::bad_backoff(),
                ConfigError::TooLarge => atoms::too_large(),
            };
            (atoms::error(), (atoms::invalid_config(), reason)).encode(env)
        }
    })
}

/// `{:ok, generation, probe?, transitions}` or `{:error, :circuit_open | :probes_busy,
/// transitions}`. The clock is read only when the breaker is open or half-open.
#[rustler::nif]
fn breaker_allow(env: Env, handle: Handle) -> Term {
    let out = handle.0.lock().allow_with(now);
    let transitions = effects(&out.effects);
    match out.value {
        Ok(p) => (atoms::ok(), p.generation, p.probe, transitions).encode(env),
        Err(Rejection::Open) => (atoms::error(), atoms::circuit_open(), transitions).encode(env),
        Err(Rejection::ProbesBusy) => {
            (atoms::error(), atoms::probes_busy(), transitions).encode(env)
        }
    }
}

/// Records an outcome (`:success | :failure | :ignored`); returns the transitions.
#[rustler::nif]
fn breaker_record<'a>(
    handle: Handle,
    generation: u64,
    probe: bool,
    outcome: Term<'a>,
    duration_ns: u64,
) -> NifResult<Vec<(Atom, Atom, Atom)>> {
    let outcome = if atom_is(outcome, atoms::success()) {
        Outcome::Success
    } else if atom_is(outcome, atoms::failure()) {
        Outcome::Failure
    } else if atom_is(outcome, atoms::ignored()) {
        Outcome::Ignored
    } else {
        return Err(Error::BadArg);
    };
    let out = handle
        .0
        .lock()
        .record_with(Permit { generation, probe }, outcome, duration_ns, now);
    Ok(effects(&out.effects))
}

/// `{state, transitions}`.
#[rustler::nif]
fn breaker_state(handle: Handle) -> (Atom, Vec<(Atom, Atom, Atom)>) {
    let out = handle.0.lock().state(now());
    (state_atom(out.value), effects(&out.effects))
}

/// `:force_open | :close | :reset | :disable`; returns the transitions.
#[rustler::nif]
fn breaker_control(handle: Handle, action: Term) -> NifResult<Vec<(Atom, Atom, Atom)>> {
    let mut b = handle.0.lock();
    let t = now();
    let out = if atom_is(action, atoms::force_open()) {
        b.force_open(t)
    } else if atom_is(action, atoms::close()) {
        b.close(t)
    } else if atom_is(action, atoms::reset()) {
        b.reset(t)
    } else if atom_is(action, atoms::disable()) {
        b.disable(t)
    } else {
        return Err(Error::BadArg);
    };
    Ok(effects(&out.effects))
}

/// `{state, {admitted, rejected, successes, failures, slow, ignored, trips},
/// {window_calls, window_failures, window_slow}, transitions}`.
#[rustler::nif]
fn breaker_stats(env: Env, handle: Handle) -> Term {
    let mut b = handle.0.lock();
    let t = now();
    let out = b.state(t);
    let s = b.stats();
    let counts = (
        s.admitted,
        s.rejected,
        s.successes,
        s.failures,
        s.slow,
        s.ignored,
        s.trips,
    );
    (
        state_atom(out.value),
        counts,
        b.window_counts(t),
        effects(&out.effects),
    )
        .encode(env)
}
