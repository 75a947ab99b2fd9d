//! The optimizer lock table: fenced, fair, preemptible locks with leases.
//!
//! Locks are keyed by `K` (a session's variable) and held by `H` (an optimizer). Every
//! grant carries a **fencing token** that grows strictly across the whole table; a write is
//! accepted only with the current holder's token, and any older token is refused even after
//! the holder's lease ran out (the guard against a paused holder that outlives its lease).
//!
//! Conflicts are resolved per request: `Abort` fails at once naming the holder, `Wait`
//! queues until a deadline, `Preempt` queues and, if the requester's priority is higher than
//! the holder's, gives the holder a revocation notice and a grace period after which it is
//! force-released. Waiters are served by priority, first come first served within a
//! priority. Time is an input; the table arms no timers: the caller runs [`LockTable::tick`]
//! at [`LockTable::next_deadline`].
//!
//! ```
//! use dspex_core::coordinator::{Acquired, Conflict, LockTable};
//!
//! let mut table: LockTable<&str, &str> = LockTable::new();
//! let a = table.acquire("lr", "opt_a", 0, Conflict::Abort, 1_000, 0).value;
//! let Acquired::Granted { token } = a else { panic!() };
//! assert!(matches!(table.acquire("lr", "opt_b", 0, Conflict::Abort, 1_000, 0).value,
//!                  Acquired::HeldBy { holder: "opt_a" }));
//! assert!(table.check_write(&"lr", token).is_ok());
//! ```

use std::collections::BTreeMap;
use std::hash::Hash;

use ahash::AHashMap;

use crate::effects::WithEffects;

/// What to do when the lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Fail at once.
    Abort,
    /// Queue until `deadline` (absolute nanoseconds).
    Wait {
        /// When the wait gives up.
        deadline: u64,
    },
    /// Queue until `deadline`; if more important than the holder, revoke it after `grace_ns`.
    Preempt {
        /// When the wait gives up.
        deadline: u64,
        /// How long the revoked holder may keep the lock after its notice.
        grace_ns: u64,
    },
}

/// The answer to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired<H> {
    /// The lock is the requester's.
    Granted {
        /// The fencing token.
        token: u64,
    },
    /// `Abort` and the lock is held.
    HeldBy {
        /// The holder.
        holder: H,
    },
    /// Queued; a `Granted` effect with this ticket will follow, or a `WaitTimedOut`.
    Queued {
        /// Identifies the wait.
        ticket: u64,
    },
    /// The requester already holds it.
    AlreadyHeld {
        /// Its token.
        token: u64,
    },
}

/// What the caller must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<K, H> {
    /// A queued request was granted.
    Granted {
        /// The lock.
        key: K,
        /// The new holder.
        holder: H,
        /// The wait that was served.
        ticket: u64,
        /// The fencing token.
        token: u64,
        /// How long it waited.
        waited_ns: u64,
    },
    /// A holder is revoked: it must finish within its grace.
    PreemptNotice {
        /// The lock.
        key: K,
        /// The holder being revoked.
        holder: H,
        /// Who asked.
        by: H,
        /// When the lock is taken away.
        grace_until: u64,
    },
    /// A holder lost its lock.
    LockLost {
        /// The lock.
        key: K,
        /// The former holder.
        holder: H,
        /// Why.
        reason: LossReason,
        /// How long it was held.
        held_ns: u64,
    },
    /// A queued request gave up.
    WaitTimedOut {
        /// The lock.
        key: K,
        /// Who waited.
        waiter: H,
        /// The wait.
        ticket: u64,
    },
}

/// Why a holder lost a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// Its lease ran out.
    LeaseExpired,
    /// A more important optimizer took it after the grace period.
    Preempted,
    /// `force_release` was called.
    Forced,
    /// The session moved to another node, which holds the lock from now on with the same
    /// token ([`LockTable::hand_over`], [`LockTable::adopt`]).
    Moved,
    /// The holder died ([`LockTable::holder_down`]): nobody is told but whoever replicates
    /// the table.
    HolderDown,
}

/// Refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError<H> {
    /// The caller does not hold the lock.
    NotOwner {
        /// The holder, if any.
        holder: Option<H>,
    },
    /// The token is older than the lock's current or last token.
    StaleToken {
        /// The newest token issued for this lock.
        current: u64,
    },
    /// The lock is held and the writer presented no token.
    LockedBy {
        /// The holder.
        holder: H,
    },
}

impl<H: std::fmt::Debug> std::fmt::Display for LockError<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::NotOwner { holder: Some(h) } => {
                write!(f, "not the lock's owner ({h:?} holds it)")
            }
            LockError::NotOwner { holder: None } => {
                f.write_str("not the lock's owner (nobody holds it)")
            }
            LockError::StaleToken { current } => {
                write!(f, "stale fencing token (the newest is {current})")
            }
            LockError::LockedBy { holder } => write!(f, "locked by {holder:?}"),
        }
    }
}

impl<H: std::fmt::Debug> std::error::Error for LockError<H> {}

/// The result of [`LockTable::cancel_wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The wait was removed.
    Withdrawn,
    /// The wait had been granted already; the holder owns this token.
    AlreadyGranted {
        /// The token of the grant.
        token: u64,
    },
    /// No such wait (it timed out or its holder already released).
    NotFound,
}

/// A holder as seen by [`LockTable::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo<H> {
    /// Who.
    pub holder: H,
    /// Its token.
    pub token: u64,
    /// Its priority.
    pub priority: i64,
    /// When it was granted.
    pub since: u64,
    /// When its lease ends.
    pub lease_until: u64,
    /// When a pending preemption takes the lock away.
    pub revoked_at: Option<u64>,
}

/// A waiter as seen by [`LockTable::info`], in service order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaiterInfo<H> {
    /// Who.
    pub waiter: H,
    /// Its ticket.
    pub ticket: u64,
    /// Its priority.
    pub priority: i64,
    /// When it gives up.
    pub deadline: u64,
}

#[derive(Debug, Clone)]
struct Holder<H> {
    who: H,
    token: u64,
    ticket: Option<u64>,
    priority: i64,
    since: u64,
    lease_ns: u64,
    lease_until: u64,
    revoked_at: Option<u64>,
}

#[derive(Debug, Clone)]
struct Waiter<H> {
    who: H,
    ticket: u64,
    priority: i64,
    enqueued: u64,
    deadline: u64,
    lease_ns: u64,
    preempt_grace: Option<u64>,
}

#[derive(Debug, Clone)]
struct Lock<H> {
    holder: Option<Holder<H>>,
    // Service order: (-priority, ticket) ascending = highest priority first, FIFO within.
    waiters: BTreeMap<(i64, u64), Waiter<H>>,
    last_token: u64,
}

impl<H> Lock<H> {
    /// Something [`LockTable::expire`] would act on at `now`: a wait past its deadline, or a
    /// holder past its lease or its preemption grace.
    fn due(&self, now: u64) -> bool {
        self.waiters.values().any(|w| now >= w.deadline)
            || self
                .holder
                .as_ref()
                .is_some_and(|h| now >= h.lease_until || h.revoked_at.is_some_and(|r| now >= r))
    }
}

impl<H> Default for Lock<H> {
    fn default() -> Self {
        Lock {
            holder: None,
            waiters: BTreeMap::new(),
            last_token: 0,
        }
    }
}

/// The lock table.
#[derive(Debug, Clone)]
pub struct LockTable<K, H> {
    locks: AHashMap<K, Lock<H>>,
    next_token: u64,
    next_ticket: u64,
}

impl<K: Eq + Hash + Clone, H: Eq + Clone> Default for LockTable<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

type Out<T, K, H> = WithEffects<T, Effect<K, H>>;

impl<K: Eq + Hash + Clone, H: Eq + Clone> LockTable<K, H> {
    /// An empty table.
    pub fn new() -> Self {
        LockTable {
            locks: AHashMap::new(),
            next_token: 1,
            next_ticket: 1,
        }
    }

    /// Asks for `key` on behalf of `who`.
    pub fn acquire(
        &mut self,
        key: K,
        who: H,
        priority: i64,
        conflict: Conflict,
        lease_ns: u64,
        now: u64,
    ) -> Out<Acquired<H>, K, H> {
        let mut effects = Vec::new();
        self.expire(&key, now, &mut effects);
        let lock = self.locks.entry(key.clone()).or_default();
        let answer = match &mut lock.holder {
            None => {
                let token = self.next_token;
                self.next_token += 1;
                lock.last_token = token;
                lock.holder = Some(Holder {
                    who,
                    token,
                    ticket: None,
                    priority,
                    since: now,
                    lease_ns,
                    lease_until: now.saturating_add(lease_ns),
                    revoked_at: None,
                });
                Acquired::Granted { token }
            }
            Some(h) if h.who == who => Acquired::AlreadyHeld { token: h.token },
            Some(h) => match conflict {
                Conflict::Abort => Acquired::HeldBy {
                    holder: h.who.clone(),
                },
                Conflict::Wait { deadline } | Conflict::Preempt { deadline, .. } => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    let grace = match conflict {
                        Conflict::Preempt { grace_ns, .. } => Some(grace_ns),
                        _ => None,
                    };
                    if let Some(grace_ns) = grace {
                        if priority > h.priority && h.revoked_at.is_none() {
                            let at = now.saturating_add(grace_ns);
                            h.revoked_at = Some(at);
                            effects.push(Effect::PreemptNotice {
                                key: key.clone(),
                                holder: h.who.clone(),
                                by: who.clone(),
                                grace_until: at,
                            });
                        }
                    }
                    lock.waiters.insert(
                        (-priority, ticket),
                        Waiter {
                            who,
                            ticket,
                            priority,
                            enqueued: now,
                            deadline,
                            lease_ns,
                            preempt_grace: grace,
                        },
                    );
                    Acquired::Queued { ticket }
                }
            },
        };
        WithEffects::new(answer, effects)
    }

    /// Releases `key` if `who` holds it; the next waiter is granted at once.
    ///
    /// The effects are returned whatever the outcome: what fell due on `key` before the call
    /// (a wait past its deadline, a lease that ended) is settled first, and its notices must
    /// be delivered even when the release itself is refused.
    ///
    /// # Errors
    /// In the value: [`LockError::NotOwner`] (nothing else changes).
    pub fn release(&mut self, key: &K, who: &H, now: u64) -> Out<Result<(), LockError<H>>, K, H> {
        let mut effects = Vec::new();
        self.expire(key, now, &mut effects);
        let result = match self.locks.get_mut(key) {
            None => Err(LockError::NotOwner { holder: None }),
            Some(lock) => match &lock.holder {
                Some(h) if &h.who == who => {
                    lock.holder = None;
                    if !lock.waiters.is_empty() {
                        self.grant_next(key, now, &mut effects);
                    }
                    Ok(())
                }
                other => Err(LockError::NotOwner {
                    holder: other.as_ref().map(|h| h.who.clone()),
                }),
            },
        };
        WithEffects::new(result, effects)
    }

    /// Extends `who`'s lease on `key` to `now + lease_ns` (a progress report does this too):
    /// the new end of the lease. Effects as for [`release`](Self::release).
    ///
    /// # Errors
    /// In the value: [`LockError::NotOwner`].
    pub fn renew(
        &mut self,
        key: &K,
        who: &H,
        lease_ns: u64,
        now: u64,
    ) -> Out<Result<u64, LockError<H>>, K, H> {
        let mut effects = Vec::new();
        self.expire(key, now, &mut effects);
        let result = match self
            .locks
            .get_mut(key)
            .and_then(|l| l.holder.as_mut())
            .filter(|h| &h.who == who)
        {
            Some(holder) => {
                holder.lease_ns = lease_ns;
                holder.lease_until = now.saturating_add(lease_ns);
                Ok(holder.lease_until)
            }
            None => Err(LockError::NotOwner { holder: None }),
        };
        WithEffects::new(result, effects)
    }

    /// Takes `key` from its holder whatever it is doing.
    pub fn force_release(&mut self, key: &K, now: u64) -> Out<bool, K, H> {
        let mut effects = Vec::new();
        // A lease that already ended is reported as such, not as forced.
        self.expire(key, now, &mut effects);
        let released = self.take_from_holder(key, LossReason::Forced, now, &mut effects);
        if released {
            self.grant_next(key, now, &mut effects);
        }
        WithEffects::new(released, effects)
    }

    /// The locks held in keys matching `belongs`, as `(key, holder, token, lease left)`: what
    /// a session carries to another node ([`hand_over`](Self::hand_over) then takes them).
    pub fn held_where(&self, belongs: impl Fn(&K) -> bool, now: u64) -> Vec<(K, H, u64, u64)> {
        self.locks
            .iter()
            .filter(|(k, _)| belongs(k))
            .filter_map(|(k, l)| {
                let h = l.holder.as_ref()?;
                Some((
                    k.clone(),
                    h.who.clone(),
                    h.token,
                    h.lease_until.saturating_sub(now),
                ))
            })
            .collect()
    }

    /// `key` leaves this table with its session (the other node [`adopt`](Self::adopt)s it):
    /// the holder is told ([`LossReason::Moved`]) and waiters give up ([`Effect::WaitTimedOut`]);
    /// nobody is granted it here. Returns whether it was held.
    pub fn hand_over(&mut self, key: &K, now: u64) -> Out<bool, K, H> {
        let mut effects = Vec::new();
        let held = self.take_from_holder(key, LossReason::Moved, now, &mut effects);
        if let Some(lock) = self.locks.remove(key) {
            for (_, w) in lock.waiters {
                effects.push(Effect::WaitTimedOut {
                    key: key.clone(),
                    waiter: w.who,
                    ticket: w.ticket,
                });
            }
        }
        WithEffects::new(held, effects)
    }

    /// Takes over a lock held on another node: `who` holds `key` with `token` (its fencing
    /// token there) for `lease_ns`. Tokens granted here from now on are above `token`, so the
    /// holder's token stays the newest for `key`.
    ///
    /// # Errors
    /// [`LockError::LockedBy`] when `key` is already held here.
    pub fn adopt(
        &mut self,
        key: K,
        who: H,
        token: u64,
        lease_ns: u64,
        now: u64,
    ) -> Result<(), LockError<H>> {
        let lock = self.locks.entry(key).or_default();
        if let Some(h) = &lock.holder {
            return Err(LockError::LockedBy {
                holder: h.who.clone(),
            });
        }
        lock.last_token = lock.last_token.max(token);
        lock.holder = Some(Holder {
            who,
            token,
            ticket: None,
            priority: 0,
            since: now,
            lease_ns,
            lease_until: now.saturating_add(lease_ns),
            revoked_at: None,
        });
        self.next_token = self.next_token.max(token + 1);
        Ok(())
    }

    /// Withdraws a wait (the waiter timed out or left). A grant may have raced the
    /// cancellation: then the grant stands, its token is returned, and the caller must either
    /// deliver it or release the lock, so nobody holds a lock it does not know about.
    pub fn cancel_wait(&mut self, key: &K, ticket: u64) -> Cancelled {
        let Some(lock) = self.locks.get_mut(key) else {
            return Cancelled::NotFound;
        };
        let before = lock.waiters.len();
        lock.waiters.retain(|_, w| w.ticket != ticket);
        if lock.waiters.len() < before {
            return Cancelled::Withdrawn;
        }
        match &lock.holder {
            Some(h) if h.ticket == Some(ticket) => Cancelled::AlreadyGranted { token: h.token },
            _ => Cancelled::NotFound,
        }
    }

    /// [`cancel_wait`](Self::cancel_wait) when only the ticket is known (searches every lock).
    pub fn cancel_ticket(&mut self, ticket: u64) -> Cancelled {
        let key = self.locks.iter().find_map(|(k, l)| {
            let waiting = l.waiters.values().any(|w| w.ticket == ticket);
            let granted = l.holder.as_ref().is_some_and(|h| h.ticket == Some(ticket));
            (waiting || granted).then(|| k.clone())
        });
        match key {
            Some(k) => self.cancel_wait(&k, ticket),
            None => Cancelled::NotFound,
        }
    }

    /// Everything `who` holds or waits for goes (it died): its locks pass to their waiters.
    pub fn holder_down(&mut self, who: &H, now: u64) -> Out<usize, K, H> {
        self.remove_where(|h| h == who, now)
    }

    /// [`holder_down`](Self::holder_down) for every holder and waiter matching `gone`.
    /// Returns how many locks were released, each also reported as a
    /// [`LossReason::HolderDown`] loss (before the grant to its next waiter); removed waits
    /// produce no effect.
    pub fn remove_where(&mut self, gone: impl Fn(&H) -> bool, now: u64) -> Out<usize, K, H> {
        let mut effects = Vec::new();
        let keys: Vec<K> = self.locks.keys().cloned().collect();
        let mut released = 0;
        for key in keys {
            let lock = self.locks.get_mut(&key).expect("listed key");
            lock.waiters.retain(|_, w| !gone(&w.who));
            if lock.holder.as_ref().is_some_and(|h| gone(&h.who)) {
                self.take_from_holder(&key, LossReason::HolderDown, now, &mut effects);
                released += 1;
                self.grant_next(&key, now, &mut effects);
            }
        }
        WithEffects::new(released, effects)
    }

    /// Applies every lease expiry, preemption and wait deadline due at `now`.
    pub fn tick(&mut self, now: u64) -> Out<(), K, H> {
        let mut effects = Vec::new();
        let keys: Vec<K> = self.locks.keys().cloned().collect();
        for key in keys {
            self.expire(&key, now, &mut effects);
        }
        WithEffects::new((), effects)
    }

    /// The earliest time at which [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.locks
            .values()
            .flat_map(|l| {
                let h = l
                    .holder
                    .as_ref()
                    .map(|h| h.revoked_at.map_or(h.lease_until, |r| r.min(h.lease_until)));
                h.into_iter().chain(l.waiters.values().map(|w| w.deadline))
            })
            .min()
    }

    /// Whether a write to `key` is allowed. An unlocked variable takes writes without a
    /// token; a locked one only with its holder's token. A token that is not the current
    /// holder's is refused, also when the lock has since expired and nobody holds it: a
    /// paused holder that outlived its lease cannot write.
    ///
    /// Expiries are applied by [`tick`](Self::tick); call it first for an exact answer.
    ///
    /// # Errors
    /// [`LockError::StaleToken`] or [`LockError::LockedBy`].
    pub fn check_write_with(&self, key: &K, token: Option<u64>) -> Result<(), LockError<H>> {
        let lock = self.locks.get(key);
        let holder = lock.and_then(|l| l.holder.as_ref());
        let current = lock.map_or(0, |l| l.last_token);
        match (holder, token) {
            (None, None) => Ok(()),
            (Some(h), Some(t)) if t == h.token => Ok(()),
            (Some(h), None) => Err(LockError::LockedBy {
                holder: h.who.clone(),
            }),
            (_, Some(_)) => Err(LockError::StaleToken { current }),
        }
    }

    /// [`check_write_with`](Self::check_write_with) after applying what is due on `key` at
    /// `now` (an expired lease, a finished grace period).
    pub fn check_write_at(
        &mut self,
        key: &K,
        token: Option<u64>,
        now: u64,
    ) -> Out<Result<(), LockError<H>>, K, H> {
        let mut effects = Vec::new();
        self.expire(key, now, &mut effects);
        WithEffects::new(self.check_write_with(key, token), effects)
    }

    /// [`check_write_with`](Self::check_write_with) with a token.
    ///
    /// # Errors
    /// As there.
    pub fn check_write(&self, key: &K, token: u64) -> Result<(), LockError<H>> {
        self.check_write_with(key, Some(token))
    }

    /// The holder and the waiters (in service order) of `key`.
    pub fn info(&self, key: &K) -> (Option<HolderInfo<H>>, Vec<WaiterInfo<H>>) {
        match self.locks.get(key) {
            None => (None, Vec::new()),
            Some(l) => (
                l.holder.as_ref().map(|h| HolderInfo {
                    holder: h.who.clone(),
                    token: h.token,
                    priority: h.priority,
                    since: h.since,
                    lease_until: h.lease_until,
                    revoked_at: h.revoked_at,
                }),
                l.waiters
                    .values()
                    .map(|w| WaiterInfo {
                        waiter: w.who.clone(),
                        ticket: w.ticket,
                        priority: w.priority,
                        deadline: w.deadline,
                    })
                    .collect(),
            ),
        }
    }

    /// Number of locks held.
    pub fn held_count(&self) -> usize {
        self.locks.values().filter(|l| l.holder.is_some()).count()
    }

    fn expire(&mut self, key: &K, now: u64, effects: &mut Vec<Effect<K, H>>) {
        // Most calls find nothing due: one lookup and a look at the lock, nothing collected.
        let Some(lock) = self.locks.get_mut(key).filter(|l| l.due(now)) else {
            return;
        };
        // Waits past their deadline leave first, so they are never granted late.
        let expired: Vec<(i64, u64)> = lock
            .waiters
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            let w = lock.waiters.remove(&k).expect("listed waiter");
            effects.push(Effect::WaitTimedOut {
                key: key.clone(),
                waiter: w.who,
                ticket: w.ticket,
            });
        }
        let reason = lock.holder.as_ref().and_then(|h| {
            if h.revoked_at.is_some_and(|r| now >= r) {
                Some(LossReason::Preempted)
            } else if now >= h.lease_until {
                Some(LossReason::LeaseExpired)
            } else {
                None
            }
        });
        if let Some(reason) = reason {
            self.take_from_holder(key, reason, now, effects);
            self.grant_next(key, now, effects);
        }
    }

    fn take_from_holder(
        &mut self,
        key: &K,
        reason: LossReason,
        now: u64,
        effects: &mut Vec<Effect<K, H>>,
    ) -> bool {
        let Some(h) = self.locks.get_mut(key).and_then(|l| l.holder.take()) else {
            return false;
        };
        effects.push(Effect::LockLost {
            key: key.clone(),
            holder: h.who,
            reason,
            held_ns: now.saturating_sub(h.since),
        });
        true
    }

    fn grant_next(&mut self, key: &K, now: u64, effects: &mut Vec<Effect<K, H>>) {
        let Some(lock) = self.locks.get_mut(key) else {
            return;
        };
        if lock.holder.is_some() {
            return;
        }
        // A wait whose deadline has passed leaves instead of being served, whichever path
        // frees the lock (a release, a forced release, a holder that died).
        let w = loop {
            let Some((_, w)) = lock.waiters.pop_first() else {
                return;
            };
            if now < w.deadline {
                break w;
            }
            effects.push(Effect::WaitTimedOut {
                key: key.clone(),
                waiter: w.who,
                ticket: w.ticket,
            });
        };
        let token = self.next_token;
        self.next_token += 1;
        lock.last_token = token;
        lock.holder = Some(Holder {
            who: w.who.clone(),
            token,
            ticket: Some(w.ticket),
            priority: w.priority,
            since: now,
            lease_ns: w.lease_ns,
            lease_until: now.saturating_add(w.lease_ns),
            revoked_at: None,
        });
        // A preempting waiter still queued behind the new holder keeps its claim.
        let pending = lock
            .waiters
            .values()
            .find(|x| x.preempt_grace.is_some() && x.priority > w.priority)
            .map(|x| (x.who.clone(), x.preempt_grace.unwrap_or(0)));
        if let Some((by, grace)) = pending {
            let at = now.saturating_add(grace);
            if let Some(h) = lock.holder.as_mut() {
                h.revoked_at = Some(at);
            }
            effects.push(Effect::PreemptNotice {
                key: key.clone(),
                holder: w.who.clone(),
                by,
                grace_until: at,
            });
        }
        effects.push(Effect::Granted {
            key: key.clone(),
            holder: w.who,
            ticket: w.ticket,
            token,
            waited_ns: now.saturating_sub(w.enqueued),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_handed_over_keeps_its_token_on_the_adopting_table() {
        let mut source: LockTable<&str, &str> = LockTable::new();
        let mut target: LockTable<&str, &str> = LockTable::new();
        for _ in 0..5 {
            let g = source.acquire("x", "warmup", 0, Conflict::Abort, 1_000, 0);
            assert!(matches!(g.value, Acquired::Granted { .. }));
            source.release(&"x", &"warmup", 0).value.unwrap();
        }
        let Acquired::Granted { token } = source
            .acquire("v", "opt", 0, Conflict::Abort, 1_000, 10)
            .value
        else {
            panic!("free lock not granted")
        };
        let waiting = source.acquire("v", "other", 0, Conflict::Wait { deadline: 500 }, 1_000, 20);
        assert!(matches!(waiting.value, Acquired::Queued { .. }));

        let held = source.held_where(|k| *k == "v", 100);
        assert_eq!(held, vec![("v", "opt", token, 910)]);
        let out = source.hand_over(&"v", 100);
        assert!(out.value);
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::LockLost {
                reason: LossReason::Moved,
                holder: "opt",
                ..
            }
        )));
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::WaitTimedOut {
                waiter: "other",
                ..
            }
        )));
        assert_eq!(
            source.info(&"v").0,
            None,
            "nobody is granted it on the source"
        );

        target.adopt("v", "opt", token, 910, 100).unwrap();
        assert_eq!(target.check_write(&"v", token), Ok(()));
        assert!(target.adopt("v", "x", 1, 10, 100).is_err());
        target.release(&"v", &"opt", 200).value.unwrap();
        let Acquired::Granted { token: next } =
            target.acquire("v", "b", 0, Conflict::Abort, 10, 300).value
        else {
            panic!("released lock not granted")
        };
        assert!(next > token, "{next} after adopted {token}");
    }
}
