//! Property tests of the lock table: random operations from several optimizers on a few
//! keys with a manual clock, checking the invariants after every step against a record of
//! what was asked and what was delivered.

use std::collections::{BTreeMap, BTreeSet};

use dspex_core::coordinator::{Acquired, Cancelled, Conflict, Effect, LockTable, LossReason};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        key: u8,
        who: u8,
        priority: i64,
        kind: u8,
        lease: u64,
        patience: u64,
    },
    Release {
        key: u8,
        who: u8,
    },
    Renew {
        key: u8,
        who: u8,
        lease: u64,
    },
    // Moves the clock; with `true` also runs `tick`. Without it, what fell due is left for
    // the next operation on its key to notice.
    Advance(u64, bool),
    Down(u8),
    Cancel(usize),
    Force(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..5, 0i64..3, 0u8..3, 1u64..8, 1u64..8).prop_map(|(key, who, priority, kind, lease, patience)| {
            Op::Acquire { key, who, priority, kind, lease: lease * 10, patience: patience * 10 }
        }),
        4 => (0u8..3, 0u8..5).prop_map(|(key, who)| Op::Release { key, who }),
        1 => (0u8..3, 0u8..5, 1u64..8).prop_map(|(key, who, lease)| Op::Renew { key, who, lease: lease * 10 }),
        3 => (0u64..6, any::<bool>()).prop_map(|(k, tick)| Op::Advance(k * 5, tick)),
        1 => (0u8..5).prop_map(Op::Down),
        1 => (0usize..16).prop_map(Op::Cancel),
        1 => (0u8..3).prop_map(Op::Force),
    ]
}

#[derive(Default)]
struct Record {
    last_token: u64,
    // ticket -> (key, who)
    outstanding: BTreeMap<u64, (u8, u8)>,
    // ticket -> priority, for checking service order
    priority: BTreeMap<u64, i64>,
    // ticket -> the wait's deadline, and the clock now: no wait is granted late
    deadline: BTreeMap<u64, u64>,
    now: u64,
}

// Every wait granted by an operation must outrank every wait still queued on its key.
fn check_service_order(
    table: &LockTable<u8, u8>,
    rec: &Record,
    effects: &[Effect<u8, u8>],
) -> Result<(), TestCaseError> {
    for e in effects {
        if let Effect::Granted { key, ticket, .. } = e {
            let granted = (rec.priority[ticket], std::cmp::Reverse(*ticket));
            for w in table.info(key).1 {
                prop_assert!(
                    granted > (w.priority, std::cmp::Reverse(w.ticket)),
                    "granted {} before {}",
                    ticket,
                    w.ticket
                );
            }
        }
    }
    Ok(())
}

fn absorb(rec: &mut Record, effects: &[Effect<u8, u8>]) -> Result<(), TestCaseError> {
    for e in effects {
        if let Effect::Granted { ticket, .. } = e {
            prop_assert!(rec.priority.contains_key(ticket));
        }
        match e {
            Effect::Granted { ticket, token, .. } => {
                prop_assert!(*token > rec.last_token, "tokens strictly increase");
                prop_assert!(
                    rec.now < rec.deadline[ticket],
                    "granted a wait past its deadline"
                );
                rec.last_token = *token;
                prop_assert!(
                    rec.outstanding.remove(ticket).is_some(),
                    "granted an unknown wait"
                );
            }
            Effect::WaitTimedOut { ticket, .. } => {
                prop_assert!(
                    rec.outstanding.remove(ticket).is_some(),
                    "timed out an unknown wait"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn lock_table_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut table: LockTable<u8, u8> = LockTable::new();
        let mut rec = Record::default();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Acquire { key, who, priority, kind, lease, patience } => {
                    let conflict = match kind {
                        0 => Conflict::Abort,
                        1 => Conflict::Wait { deadline: now + patience },
                        _ => Conflict::Preempt { deadline: now + patience, grace_ns: 10 },
                    };
                    let out = table.acquire(key, who, priority, conflict, lease, now);
                    absorb(&mut rec, &out.effects)?;
                    // Whoever is reported as the holder holds a live lease.
                    let live = |h: &dspex_core::coordinator::HolderInfo<u8>| {
                        now < h.lease_until && h.revoked_at.is_none_or(|r| now < r)
                    };
                    if matches!(out.value, Acquired::HeldBy { .. } | Acquired::AlreadyHeld { .. }) {
                        let h = table.info(&key).0;
                        prop_assert!(h.as_ref().is_some_and(live), "an ended lease still holds");
                    }
                    if let Acquired::HeldBy { holder } = &out.value {
                        prop_assert_eq!(table.info(&key).0.map(|h| h.holder), Some(*holder));
                    }
                    match out.value {
                        Acquired::Granted { token } => {
                            prop_assert!(token > rec.last_token);
                            rec.last_token = token;
                        }
                        Acquired::Queued { ticket } => {
                            rec.outstanding.insert(ticket, (key, who));
                            rec.priority.insert(ticket, priority);
                            rec.deadline.insert(ticket, now + patience);
                        }
                        Acquired::HeldBy { holder } => prop_assert_ne!(holder, who),
                        Acquired::AlreadyHeld { .. } => {
                            prop_assert_eq!(table.info(&key).0.map(|h| h.holder), Some(who));
                        }
                    }
                }
                Op::Release { key, who } => {
                    let held = table.info(&key).0.is_some_and(|h| h.holder == who && now < h.lease_until && h.revoked_at.is_none_or(|r| now < r));
                    let out = table.release(&key, &who, now);
                    // Notices of what fell due are delivered whether or not the release works.
                    absorb(&mut rec, &out.effects)?;
                    check_service_order(&table, &rec, &out.effects)?;
                    // A waiter may be granted by the settling that precedes its own release.
                    let held = held || out.effects.iter().any(|e| {
                        matches!(e, Effect::Granted { key: k, holder, .. } if *k == key && *holder == who)
                    });
                    match out.value {
                        Ok(()) => prop_assert!(held, "released a lock whose lease had ended"),
                        Err(_) => prop_assert!(!held, "the holder could not release"),
                    }
                }
                Op::Renew { key, who, lease } => {
                    let out = table.renew(&key, &who, lease, now);
                    absorb(&mut rec, &out.effects)?;
                    if let Ok(until) = out.value {
                        prop_assert_eq!(until, now + lease);
                    }
                }
                Op::Advance(dt, false) => {
                    now += dt;
                    rec.now = now;
                }
                Op::Advance(dt, true) => {
                    now += dt;
                    rec.now = now;
                    let out = table.tick(now);
                    absorb(&mut rec, &out.effects)?;
                    check_service_order(&table, &rec, &out.effects)?;
                    // Everything due at `now` is gone.
                    for key in 0..3u8 {
                        let (h, ws) = table.info(&key);
                        prop_assert!(ws.iter().all(|w| w.deadline > now), "a wait outlived its deadline");
                        prop_assert!(h.is_none_or(|h| h.lease_until > now && h.revoked_at.is_none_or(|r| r > now)));
                    }
                }
                Op::Down(who) => {
                    let out = table.holder_down(&who, now);
                    absorb(&mut rec, &out.effects)?;
                    rec.outstanding.retain(|_, (_, w)| *w != who);
                    for key in 0..3 {
                        let (h, ws) = table.info(&key);
                        prop_assert!(h.is_none_or(|h| h.holder != who));
                        prop_assert!(ws.iter().all(|w| w.waiter != who));
                    }
                }
                Op::Cancel(i) => {
                    if let Some((&ticket, &(key, _))) = rec.outstanding.iter().nth(i % rec.outstanding.len().max(1)) {
                        match table.cancel_wait(&key, ticket) {
                            Cancelled::Withdrawn => { rec.outstanding.remove(&ticket); }
                            other => prop_assert!(false, "an outstanding wait was {:?}", other),
                        }
                    }
                }
                Op::Force(key) => {
                    let out = table.force_release(&key, now);
                    absorb(&mut rec, &out.effects)?;
                    check_service_order(&table, &rec, &out.effects)?;
                }
            }

            // Invariants.
            let mut queued = BTreeSet::new();
            for key in 0..3u8 {
                let (holder, waiters) = table.info(&key);
                // Service order: priority descending, ticket ascending.
                for pair in waiters.windows(2) {
                    prop_assert!((pair[0].priority, std::cmp::Reverse(pair[0].ticket)) > (pair[1].priority, std::cmp::Reverse(pair[1].ticket)));
                }
                if let Some(h) = &holder {
                    prop_assert!(table.check_write(&key, h.token).is_ok());
                    prop_assert!(table.check_write(&key, h.token.saturating_sub(1)).is_err());
                    prop_assert!(table.check_write_with(&key, None).is_err());
                } else {
                    // A free lock with waiters would be a lost wakeup.
                    prop_assert!(waiters.is_empty(), "free lock with waiters");
                    prop_assert!(table.check_write_with(&key, None).is_ok());
                    prop_assert!(table.check_write(&key, rec.last_token).is_err());
                }
                for w in &waiters {
                    queued.insert(w.ticket);
                }
            }
            // No lost waiter: every wait not yet granted, timed out or cancelled is queued.
            let outstanding: BTreeSet<u64> = rec.outstanding.keys().copied().collect();
            prop_assert_eq!(outstanding, queued);
        }

        // Expired leases and waits are released by tick.
        now += 1_000;
        rec.now = now;
        let out = table.tick(now);
        absorb(&mut rec, &out.effects)?;
        for key in 0..3u8 {
            let (h, ws) = table.info(&key);
            prop_assert!(h.is_none() && ws.is_empty());
        }
        prop_assert!(rec.outstanding.is_empty());
    }
}

#[test]
fn preemption_notice_grace_then_grant() {
    let mut t: LockTable<&str, &str> = LockTable::new();
    let Acquired::Granted { token: first } =
        t.acquire("v", "low", 0, Conflict::Abort, 1_000, 0).value
    else {
        panic!()
    };
    let out = t.acquire(
        "v",
        "high",
        5,
        Conflict::Preempt {
            deadline: 500,
            grace_ns: 50,
        },
        1_000,
        10,
    );
    assert!(matches!(out.value, Acquired::Queued { .. }));
    assert!(matches!(
        out.effects.as_slice(),
        [Effect::PreemptNotice {
            holder: "low",
            by: "high",
            grace_until: 60,
            ..
        }]
    ));
    assert!(t.tick(59).effects.is_empty());
    let effects = t.tick(60).effects;
    assert!(matches!(effects[0], Effect::LockLost { holder: "low", .. }));
    assert!(matches!(effects[1], Effect::Granted { holder: "high", .. }));
    // The paused low-priority holder's late write is refused.
    assert!(t.check_write(&"v", first).is_err());
}

#[test]
fn lower_priority_preempt_just_waits() {
    let mut t: LockTable<&str, &str> = LockTable::new();
    let _ = t.acquire("v", "high", 5, Conflict::Abort, 1_000, 0);
    let out = t.acquire(
        "v",
        "low",
        1,
        Conflict::Preempt {
            deadline: 500,
            grace_ns: 50,
        },
        1_000,
        0,
    );
    assert!(out.effects.is_empty());
    assert!(t.info(&"v").0.unwrap().revoked_at.is_none());
}

#[test]
fn expired_holder_token_is_refused_even_with_the_lock_free() {
    let mut t: LockTable<&str, &str> = LockTable::new();
    let Acquired::Granted { token } = t.acquire("v", "a", 0, Conflict::Abort, 100, 0).value else {
        panic!()
    };
    let lost = t.tick(100).effects;
    assert!(matches!(lost.as_slice(), [Effect::LockLost { .. }]));
    assert!(t.check_write(&"v", token).is_err());
    assert!(t.check_write_with(&"v", None).is_ok());
}

#[test]
fn a_cancel_racing_a_grant_reports_the_grant() {
    let mut t: LockTable<&str, &str> = LockTable::new();
    let _ = t.acquire("v", "a", 0, Conflict::Abort, 1_000, 0);
    let Acquired::Queued { ticket } = t
        .acquire("v", "b", 0, Conflict::Wait { deadline: 100 }, 1_000, 0)
        .value
    else {
        panic!()
    };
    t.release(&"v", &"a", 5).value.unwrap();
    assert!(matches!(
        t.cancel_wait(&"v", ticket),
        Cancelled::AlreadyGranted { .. }
    ));
}

#[test]
fn a_dead_holder_is_reported_lost_before_its_waiter_is_granted() {
    let mut t: LockTable<&str, &str> = LockTable::new();
    let _ = t.acquire("v", "a", 0, Conflict::Abort, 1_000, 0);
    let _ = t.acquire("w", "b", 0, Conflict::Abort, 1_000, 0);
    let wait = Conflict::Wait { deadline: 500 };
    let _ = t.acquire("v", "c", 0, wait, 1_000, 5);
    let out = t.holder_down(&"a", 10);
    assert_eq!(out.value, 1);
    assert!(matches!(
        out.effects.as_slice(),
        [
            Effect::LockLost {
                key: "v",
                holder: "a",
                reason: LossReason::HolderDown,
                held_ns: 10,
            },
            Effect::Granted {
                key: "v",
                holder: "c",
                ..
            },
        ]
    ));
    // Another holder's lock is untouched.
    assert_eq!(t.info(&"w").0.map(|h| h.holder), Some("b"));
}
