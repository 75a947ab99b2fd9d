//! Optimizer-lock NIFs (`dspex_core::coordinator`).
//!
//! One coordinator resource per VM. It monitors every optimizer process and every waiting
//! caller: when one dies (`Resource::down`), its locks pass to the next waiter at once and
//! its waits leave the queues. Grants, revocation notices and lost locks are sent as
//! messages from here (with the calling NIF's env, or the down callback's env). All NIFs are
//! regular: each is a hash lookup and a few queue operations under a mutex.

use std::sync::LazyLock;

use ahash::AHashMap;
use dspex_core::clock::{Clock, MonotonicClock};
use dspex_core::coordinator::{
    Acquired, Cancelled, Conflict, Effect, LockError, LockTable, LossReason,
};
use parking_lot::Mutex;
use rustler::{Atom, Encoder, Env, Error, LocalPid, Monitor, NifResult, ResourceArc, Term};

use crate::atoms::{self, atom_is};
use crate::hot_nif::hot_nif;
use crate::registry;
use crate::var_key::VarKey;
use crate::wall_clock::precise_ms;

// The table's clock, and the wall-clock milliseconds at its zero: a grant's wall time is
// derived from the monotonic reading the table uses anyway (as Erlang derives its system
// time), which saves a second clock read per acquire.
static CLOCK: LazyLock<(MonotonicClock, u64)> =
    LazyLock::new(|| (MonotonicClock::new(), precise_ms()));
const MS: u64 = 1_000_000;

fn now() -> u64 {
    CLOCK.0.now_nanos()
}

fn wall_ms(t: u64) -> u64 {
    CLOCK.1 + t / MS
}

type Key = (VarKey, VarKey);

#[derive(Default)]
struct State {
    table: LockTable<Key, VarKey>,
    // optimizer id -> the process that holds or waits for its locks
    pid_of: AHashMap<VarKey, LocalPid>,
    // process -> optimizer ids it stands for
    optimizers_of: AHashMap<LocalPid, Vec<VarKey>>,
    // wait ticket -> the caller blocked on it
    waits: AHashMap<u64, LocalPid>,
    monitored: AHashMap<LocalPid, Monitor>,
    // the process that publishes lock events (preemptions, lost locks)
    listener: Option<LocalPid>,
}

/// The VM's lock coordinator.
pub struct Coordinator(Mutex<State>);

#[rustler::resource_impl]
impl rustler::Resource for Coordinator {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        let mut st = self.0.lock();
        st.monitored.remove(&pid);
        let gone = st.optimizers_of.remove(&pid).unwrap_or_default();
        for optimizer in &gone {
            if st.pid_of.get(optimizer) == Some(&pid) {
                st.pid_of.remove(optimizer);
            }
        }
        let abandoned: Vec<u64> = st
            .waits
            .iter()
            .filter(|(_, p)| **p == pid)
            .map(|(t, _)| *t)
            .collect();
        for ticket in abandoned {
            st.waits.remove(&ticket);
            let _ = st.table.cancel_ticket(ticket);
        }
        let out = st.table.remove_where(|h| gone.contains(h), now());
        deliver(env, &mut st, out.effects);
    }
}

pub(crate) type Handle = ResourceArc<Coordinator>;

/// Monitors `pid` (once); false when it is not alive, so that nothing is held for a
/// process whose exit would never be reported.
fn watch(env: Env, handle: &Handle, st: &mut State, pid: LocalPid) -> bool {
    if st.monitored.contains_key(&pid) {
        return true;
    }
    match handle.monitor(Some(env), &pid) {
        Some(mon) => {
            st.monitored.insert(pid, mon);
            true
        }
        None => false,
    }
}

/// Binds `optimizer` to its holder process; false when that process is not alive.
fn bind(env: Env, handle: &Handle, st: &mut State, optimizer: &VarKey, pid: LocalPid) -> bool {
    if st.pid_of.get(optimizer) == Some(&pid) {
        return true;
    }
    if !watch(env, handle, st, pid) {
        return false;
    }
    if st.pid_of.insert(optimizer.clone(), pid) != Some(pid) {
        let list = st.optimizers_of.entry(pid).or_default();
        if !list.contains(optimizer) {
            list.push(optimizer.clone());
        }
    }
    true
}

fn loss_atom(r: LossReason) -> Atom {
    match r {
        LossReason::LeaseExpired => atoms::lease_expired(),
        LossReason::Preempted => atoms::preempted(),
        LossReason::Forced => atoms::forced(),
        LossReason::Moved => atoms::moved(),
        LossReason::HolderDown => atoms::holder_down(),
    }
}

// Tells the listener (the process that publishes events) about a lock event.
fn notify(env: Env, st: &State, event: impl Encoder) {
    if let Some(listener) = st.listener {
        let _ = env.send(&listener, (atoms::dspex_coordinator_event(), event));
    }
}

// Carries out the core's effects as messages.
fn deliver(env: Env, st: &mut State, effects: Vec<Effect<Key, VarKey>>) {
    for effect in effects {
        match effect {
            Effect::Granted {
                ticket,
                token,
                waited_ns,
                ..
            } => {
                if let Some(caller) = st.waits.remove(&ticket) {
                    let _ = env.send(
                        &caller,
                        (
                            atoms::dspex_lock_granted(),
                            ticket,
                            token,
                            waited_ns / 1_000,
                        ),
                    );
                }
            }
            Effect::PreemptNotice {
                key,
                holder,
                by,
                grace_until,
            } => {
                let grace_ms = grace_until.saturating_sub(now()) / MS;
                if let Some(pid) = st.pid_of.get(&holder) {
                    let info = (
                        atoms::session_id(),
                        &key.0,
                        atoms::by(),
                        &by,
                        atoms::grace_ms(),
                        grace_ms,
                    );
                    let _ = env.send(pid, (atoms::optimization_preempted(), &key.1, info));
                }
                notify(
                    env,
                    st,
                    (atoms::preempt_notice(), &key.0, &key.1, &holder, grace_ms),
                );
            }
            Effect::LockLost {
                key,
                holder,
                reason,
                held_ns,
            } => {
                if let Some(pid) = st.pid_of.get(&holder) {
                    let _ = env.send(
                        pid,
                        (atoms::lock_lost(), &key.1, loss_atom(reason), held_ns / MS),
                    );
                }
                notify(
                    env,
                    st,
                    (loss_atom(reason), &key.0, &key.1, &holder, held_ns / MS),
                );
            }
            Effect::WaitTimedOut { ticket, .. } => {
                st.waits.remove(&ticket);
            }
        }
    }
}

fn installed<T>(f: impl FnOnce(&Handle) -> NifResult<T>) -> NifResult<T> {
    match registry::COORDINATOR.read().as_ref() {
        Some(handle) => f(handle),
        None => Err(Error::RaiseAtom("coordinator_not_started")),
    }
}

/// The coordinator (one per VM; the Elixir side keeps it). It becomes the one `acquire`
/// and `release` work on.
#[rustler::nif]
fn coordinator_new(env: Env) -> Term {
    let handle = ResourceArc::new(Coordinator(Mutex::new(State::default())));
    *registry::COORDINATOR.write() = Some(handle.clone());
    // Encoded here rather than returned as a ResourceArc: parking_lot's mutex is not
    // RefUnwindSafe, which rustler requires of resources returned directly.
    handle.encode(env)
}

hot_nif!("coordinator_acquire", 9, coordinator_acquire);

/// `acquire(session, var, optimizer, holder_pid, priority, conflict, timeout_ms, grace_ms,
/// lease_ms)` on the installed coordinator: `{:granted, token, at_ms} | {:held_by, optimizer}
/// | {:queued, ticket} | {:already_held, token, at_ms}` (`at_ms`: wall-clock milliseconds).
/// `conflict` is `:abort | :wait | :preempt`; a queued caller (the calling process) gets
/// `{:dspex_lock_granted, ticket, token, waited_us}`. Registered hot: nine arguments would
/// cost the attribute wrapper an allocation per call.
fn coordinator_acquire<'a>(
    env: Env<'a>,
    [session, var, optimizer, holder_pid, priority, conflict, timeout_ms, grace_ms, lease_ms]: [Term<'a>; 9],
) -> NifResult<Term<'a>> {
    let (session, var, optimizer): (VarKey, VarKey, VarKey) =
        (session.decode()?, var.decode()?, optimizer.decode()?);
    let holder_pid: LocalPid = holder_pid.decode()?;
    let priority: i64 = priority.decode()?;
    let (timeout_ms, grace_ms, lease_ms): (u64, u64, u64) =
        (timeout_ms.decode()?, grace_ms.decode()?, lease_ms.decode()?);
    let t = now();
    let deadline = t.saturating_add(timeout_ms.saturating_mul(MS));
    let conflict = if atom_is(conflict, atoms::abort()) {
        Conflict::Abort
    } else if atom_is(conflict, atoms::wait()) {
        Conflict::Wait { deadline }
    } else if atom_is(conflict, atoms::preempt()) {
        Conflict::Preempt {
            deadline,
            grace_ns: grace_ms.saturating_mul(MS),
        }
    } else {
        return Err(Error::BadArg);
    };
    let caller = env.pid();
    installed(|handle| {
        let mut st = handle.0.lock();
        if !bind(env, handle, &mut st, &optimizer, holder_pid) {
            return Ok(atoms::holder_down().encode(env));
        }
        let out = st.table.acquire(
            (session, var),
            optimizer,
            priority,
            conflict,
            lease_ms.saturating_mul(MS),
            t,
        );
        let answer = match out.value {
            Acquired::Granted { token } => (atoms::granted(), token, wall_ms(t)).encode(env),
            Acquired::AlreadyHeld { token } => {
                (atoms::already_held(), token, wall_ms(t)).encode(env)
            }
            Acquired::HeldBy { holder } => (atoms::held_by(), holder).encode(env),
            Acquired::Queued { ticket } => {
                watch(env, handle, &mut st, caller);
                st.waits.insert(ticket, caller);
                (atoms::queued(), ticket).encode(env)
            }
        };
        deliver(env, &mut st, out.effects);
        Ok(answer)
    })
}

fn lock_error<'a>(env: Env<'a>, err: LockError<VarKey>) -> Term<'a> {
    let reason = match err {
        LockError::NotOwner { .. } => atoms::not_lock_owner().encode(env),
        LockError::StaleToken { .. } => atoms::stale_token().encode(env),
        LockError::LockedBy { holder } => (atoms::locked_by(), holder).encode(env),
    };
    (atoms::error(), reason).encode(env)
}

hot_nif!("coordinator_release", 3, coordinator_release);

/// `release(session, var, optimizer)` on the installed coordinator: `:ok` or
/// `{:error, :not_lock_owner}`.
fn coordinator_release<'a>(
    env: Env<'a>,
    [session, var, optimizer]: [Term<'a>; 3],
) -> NifResult<Term<'a>> {
    let (session, var, optimizer): (VarKey, VarKey, VarKey) =
        (session.decode()?, var.decode()?, optimizer.decode()?);
    installed(|handle| {
        let mut st = handle.0.lock();
        let out = st.table.release(&(session, var), &optimizer, now());
        deliver(env, &mut st, out.effects);
        Ok(match out.value {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => lock_error(env, e),
        })
    })
}

/// Renews the lease: `:ok` or `{:error, :not_lock_owner}`.
#[rustler::nif]
fn coordinator_renew(
    env: Env,
    handle: Handle,
    session: VarKey,
    var: VarKey,
    optimizer: VarKey,
    lease_ms: u64,
) -> Term {
    let mut st = handle.0.lock();
    let out = st.table.renew(
        &(session, var),
        &optimizer,
        lease_ms.saturating_mul(MS),
        now(),
    );
    deliver(env, &mut st, out.effects);
    match out.value {
        Ok(_) => atoms::ok().encode(env),
        Err(e) => lock_error(env, e),
    }
}

/// Withdraws a wait: `:withdrawn`, `{:granted, token}` (the grant won the race) or `:not_found`.
#[rustler::nif]
fn coordinator_cancel(env: Env, handle: Handle, session: VarKey, var: VarKey, ticket: u64) -> Term {
    let mut st = handle.0.lock();
    st.waits.remove(&ticket);
    match st.table.cancel_wait(&(session, var), ticket) {
        Cancelled::Withdrawn => atoms::withdrawn().encode(env),
        Cancelled::AlreadyGranted { token } => (atoms::granted(), token).encode(env),
        Cancelled::NotFound => atoms::not_found().encode(env),
    }
}

/// Takes the lock from its holder (`{:lock_lost, var, :forced, held_ms}` to it); `true` if held.
#[rustler::nif]
fn coordinator_force_release(env: Env, handle: Handle, session: VarKey, var: VarKey) -> bool {
    let mut st = handle.0.lock();
    let out = st.table.force_release(&(session, var), now());
    let released = out.value;
    deliver(env, &mut st, out.effects);
    released
}

/// `:ok`, `{:error, :stale_token}` or `{:error, {:locked_by, optimizer}}`; `token` may be nil.
#[rustler::nif]
fn coordinator_check_write<'a>(
    env: Env<'a>,
    handle: Handle,
    session: VarKey,
    var: VarKey,
    token: Term<'a>,
) -> NifResult<Term<'a>> {
    let token = if atom_is(token, atoms::nil()) {
        None
    } else {
        Some(token.decode::<u64>()?)
    };
    let mut st = handle.0.lock();
    let out = st.table.check_write_at(&(session, var), token, now());
    deliver(env, &mut st, out.effects);
    Ok(match out.value {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => lock_error(env, e),
    })
}

/// `{holder, waiters}`: holder `nil` or `{optimizer, token, priority, held_ms, lease_left_ms}`;
/// waiters `[{optimizer, ticket, priority}]` in service order.
#[rustler::nif]
fn coordinator_info(env: Env, handle: Handle, session: VarKey, var: VarKey) -> Term {
    let st = handle.0.lock();
    let t = now();
    let (holder, waiters) = st.table.info(&(session, var));
    let holder = match holder {
        Some(h) => (
            h.holder,
            h.token,
            h.priority,
            t.saturating_sub(h.since) / MS,
            h.lease_until.saturating_sub(t) / MS,
        )
            .encode(env),
        None => atoms::nil().encode(env),
    };
    let waiters: Vec<Term> = waiters
        .into_iter()
        .map(|w| (w.waiter, w.ticket, w.priority).encode(env))
        .collect();
    (holder, waiters).encode(env)
}

/// The locks held on variables of `session`: `[{var, optimizer, token, lease_left_ms,
/// holder_pid | nil}]` (what a migrating session carries to its new node, which monitors
/// the holder from then on).
#[rustler::nif]
fn coordinator_held_in(env: Env, handle: Handle, session: VarKey) -> Term {
    let st = handle.0.lock();
    let held: Vec<Term> = st
        .table
        .held_where(|k| k.0 == session, now())
        .into_iter()
        .map(|((_, var), who, token, left)| {
            let pid = match st.pid_of.get(&who) {
                Some(pid) => pid.encode(env),
                None => atoms::nil().encode(env),
            };
            (var, &who, token, left / MS, pid).encode(env)
        })
        .collect();
    held.encode(env)
}

/// `var` of `session` leaves with its session: the holder gets `{:lock_lost, var, :moved,
/// held_ms}`, waiters stop waiting; `true` if it was held.
#[rustler::nif]
fn coordinator_hand_over(env: Env, handle: Handle, session: VarKey, var: VarKey) -> bool {
    let mut st = handle.0.lock();
    let out = st.table.hand_over(&(session, var), now());
    deliver(env, &mut st, out.effects);
    out.value
}

/// Takes over a lock held on the session's former node: `optimizer` holds `var` with `token`
/// for `lease_ms` more, bound to `holder` (a local process: its death releases the lock
/// here as it would have there) or to nobody (`nil`: the lease bounds it). `:ok`,
/// `{:error, {:locked_by, holder}}`, or `:holder_down` when `holder` is already gone
/// (nothing is adopted).
#[rustler::nif]
#[allow(clippy::too_many_arguments)] // one argument per part of the lock, as Elixir calls it
fn coordinator_adopt<'a>(
    env: Env<'a>,
    handle: Handle,
    session: VarKey,
    var: VarKey,
    optimizer: VarKey,
    token: u64,
    lease_ms: u64,
    holder: Term<'a>,
) -> NifResult<Term<'a>> {
    let holder: Option<LocalPid> = if atom_is(holder, atoms::nil()) {
        None
    } else {
        Some(holder.decode()?)
    };
    let mut st = handle.0.lock();
    if let Some(pid) = holder {
        if !bind(env, &handle, &mut st, &optimizer, pid) {
            return Ok(atoms::holder_down().encode(env));
        }
    }
    Ok(
        match st
            .table
            .adopt((session, var), optimizer, token, lease_ms * MS, now())
        {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => lock_error(env, e),
        },
    )
}

/// Makes the calling process the receiver of `{:dspex_coordinator_event, event}` messages
/// (`{:preempt_notice | :preempted | :lease_expired | :forced, session, var, holder, ms}`).
#[rustler::nif]
fn coordinator_listen(env: Env, handle: Handle) -> Atom {
    handle.0.lock().listener = Some(env.pid());
    atoms::ok()
}

/// Applies due lease expiries, preemptions and wait deadlines; returns the next deadline in
/// ms from now (or nil).
#[rustler::nif]
fn coordinator_tick(env: Env, handle: Handle) -> Term {
    let mut st = handle.0.lock();
    let t = now();
    let out = st.table.tick(t);
    deliver(env, &mut st, out.effects);
    match st.table.next_deadline() {
        Some(d) => (d.saturating_sub(t) / MS).encode(env),
        None => atoms::nil().encode(env),
    }
}
