use super::*;

type S = Session<String, u32>;

fn s(x: &str) -> String {
    x.to_string()
}

fn reg(session: &mut S, name: &str, inputs: &[&str]) -> Outcome<String, u32> {
    session.apply(
        Command::Register {
            name: s(name),
            inputs: inputs.iter().map(|i| s(i)).collect(),
        },
        0,
    )
}

// Unwraps an accepted command's reply (its effects are not under test there).
fn done(outcome: Outcome<String, u32>) -> Reply {
    outcome.expect("accepted").value
}

fn write(name: &str, expected: Option<u64>, token: Option<u64>) -> Write<String> {
    Write {
        name: s(name),
        expected_version: expected,
        token,
    }
}

fn entries(outcome: &WithEffects<Reply, Effect<String, u32>>) -> Vec<Entry<String, u32>> {
    outcome
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Log(entry) => Some(entry.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn accepted_commands_are_numbered_and_logged_first() {
    let mut session = S::new();
    let out = reg(&mut session, "a", &[]).unwrap();
    assert_eq!(out.value, Reply::Versions(vec![1]));
    assert!(matches!(&out.effects[0], Effect::Log(Entry { seq: 1, .. })));
    let out = session
        .apply(
            Command::Record {
                payload: vec![1, 2],
            },
            5,
        )
        .unwrap();
    assert_eq!(
        entries(&out),
        vec![Entry {
            seq: 2,
            at_ms: 5,
            command: Command::Record {
                payload: vec![1, 2]
            }
        }]
    );
    assert_eq!(session.seq(), 2);
}

#[test]
fn a_refusal_changes_nothing_and_logs_nothing() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    let before = session.image();
    assert_eq!(reg(&mut session, "a", &[]), Err(Rejection::Exists(s("a"))));
    assert_eq!(
        reg(&mut session, "b", &["missing"]),
        Err(Rejection::NotFound(s("missing")))
    );
    let batch = Command::Write {
        writes: vec![write("a", None, None), write("nope", None, None)],
    };
    assert_eq!(session.apply(batch, 0), Err(Rejection::NotFound(s("nope"))));
    assert_eq!(session.image(), before);
    assert_eq!(session.version("a"), Some(1));
}

#[test]
fn writes_check_versions_all_or_nothing() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    done(reg(&mut session, "b", &[]));
    let both = |ea, eb| Command::Write {
        writes: vec![write("a", ea, None), write("b", eb, None)],
    };
    assert_eq!(
        session.apply(both(Some(1), Some(1)), 0).unwrap().value,
        Reply::Versions(vec![2, 2])
    );
    assert_eq!(
        session.apply(both(Some(2), Some(1)), 0),
        Err(Rejection::VersionMismatch {
            name: s("b"),
            current: 2
        })
    );
    assert_eq!(session.version("a"), Some(2));
    let twice = Command::Write {
        writes: vec![write("a", None, None), write("a", None, None)],
    };
    assert_eq!(session.apply(twice, 0), Err(Rejection::Duplicate(s("a"))));
}

#[test]
fn fences_guard_writes_until_the_lease_ends() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    let hold = |token, until_ms| Command::Hold {
        name: s("a"),
        holder: 9,
        token,
        until_ms,
    };
    done(session.apply(hold(3, 100), 0));
    let w = |token| Command::Write {
        writes: vec![write("a", None, token)],
    };
    assert_eq!(
        session.apply(w(None), 10),
        Err(Rejection::LockedBy {
            name: s("a"),
            holder: 9
        })
    );
    assert_eq!(
        session.apply(w(Some(2)), 10),
        Err(Rejection::StaleToken {
            name: s("a"),
            current: 3
        })
    );
    assert!(session.apply(w(Some(3)), 10).is_ok());
    // An older grant is refused; the holder's own token renews.
    assert!(matches!(
        session.apply(hold(2, 500), 20),
        Err(Rejection::StaleToken { .. })
    ));
    done(session.apply(hold(3, 200), 20));
    assert!(session.apply(w(None), 150).is_err());
    // At the lease's end the fence stops guarding, and the write that finds it expired
    // says so.
    let out = session.apply(w(None), 200).unwrap();
    assert!(out.effects.contains(&Effect::LeaseExpired {
        name: s("a"),
        holder: 9
    }));
    assert!(session.fence("a", 200).is_none());
    // The expired holder's token is stale now.
    assert!(matches!(
        session.apply(w(Some(3)), 210),
        Err(Rejection::StaleToken { current: 3, .. })
    ));
}

#[test]
fn release_frees_only_the_named_holder() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    let hold = Command::Hold {
        name: s("a"),
        holder: 1,
        token: 1,
        until_ms: 1_000,
    };
    done(session.apply(hold, 0));
    let release = |holder| Command::Release {
        name: s("a"),
        holder,
    };
    assert_eq!(
        session.apply(release(Some(2)), 0).unwrap().value,
        Reply::Released(false)
    );
    assert!(session.fence("a", 0).is_some());
    assert_eq!(
        session.apply(release(None), 0).unwrap().value,
        Reply::Released(true)
    );
    assert!(session.fence("a", 0).is_none());
    // A new grant must still be newer than the released one.
    let again = Command::Hold {
        name: s("a"),
        holder: 2,
        token: 1,
        until_ms: 1_000,
    };
    assert!(matches!(
        session.apply(again, 0),
        Err(Rejection::StaleToken { current: 1, .. })
    ));
}

#[test]
fn computed_variables_guard_their_inputs() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    done(reg(&mut session, "b", &["a"]));
    done(reg(&mut session, "c", &["b"]));
    assert_eq!(
        session.apply(Command::Delete { name: s("a") }, 0),
        Err(Rejection::HasDependents(vec![s("b")]))
    );
    assert_eq!(
        session.apply(
            Command::RemoveEdge {
                from: s("a"),
                to: s("b")
            },
            0
        ),
        Err(Rejection::ComputeInput {
            computed: s("b"),
            input: Some(s("a"))
        })
    );
    assert_eq!(
        session.apply(Command::ClearEdges { name: s("b") }, 0),
        Err(Rejection::ComputeInput {
            computed: s("b"),
            input: None
        })
    );
    // Writing `a` asks for `b` then `c` to be recomputed.
    let out = session
        .apply(
            Command::Write {
                writes: vec![write("a", None, None)],
            },
            0,
        )
        .unwrap();
    assert!(out
        .effects
        .contains(&Effect::Recompute(vec![s("b"), s("c")])));
    // A cycle through compute edges is refused.
    let define = Command::DefineComputed {
        name: s("a"),
        inputs: vec![s("c")],
    };
    assert!(matches!(session.apply(define, 0), Err(Rejection::Cycle(_))));
    assert!(session.variable("a").unwrap().inputs.is_empty());
}

#[test]
fn define_computed_replaces_the_inputs_and_their_edges() {
    let mut session = S::new();
    for v in ["a", "b", "c"] {
        done(reg(&mut session, v, &[]));
    }
    let define = |inputs: &[&str]| Command::DefineComputed {
        name: s("c"),
        inputs: inputs.iter().map(|i| s(i)).collect(),
    };
    done(session.apply(define(&["a"]), 0));
    done(session.apply(define(&["b"]), 0));
    assert_eq!(session.graph().dependencies(&s("c")).unwrap(), vec![s("b")]);
    assert_eq!(
        session
            .apply(Command::Delete { name: s("a") }, 0)
            .unwrap()
            .value,
        Reply::Done
    );
}

#[test]
fn edges_refuse_cycles_and_unknown_ends() {
    let mut session = S::new();
    for v in ["a", "b", "c"] {
        done(reg(&mut session, v, &[]));
    }
    let add = |edges: &[(&str, &str)]| Command::AddEdges {
        edges: edges
            .iter()
            .map(|(f, t)| (s(f), s(t), EdgeKind::Data))
            .collect(),
    };
    assert_eq!(
        session
            .apply(add(&[("a", "b"), ("b", "c")]), 0)
            .unwrap()
            .value,
        Reply::EdgesAdded(2)
    );
    assert!(matches!(
        session.apply(add(&[("c", "a")]), 0),
        Err(Rejection::Cycle(_))
    ));
    assert_eq!(
        session.apply(add(&[("a", "x")]), 0),
        Err(Rejection::NotFound(s("x")))
    );
    assert_eq!(
        session
            .apply(Command::ClearEdges { name: s("b") }, 0)
            .unwrap()
            .value,
        Reply::EdgesRemoved(2)
    );
    assert_eq!(
        session.apply(
            Command::RemoveEdge {
                from: s("a"),
                to: s("b")
            },
            0
        ),
        Err(Rejection::EdgeNotFound {
            from: s("a"),
            to: s("b")
        })
    );
}

#[test]
fn a_replica_applies_in_order_ignores_repeats_and_refuses_gaps() {
    let mut owner = S::new();
    let mut log = Vec::new();
    for v in ["a", "b", "c"] {
        log.extend(entries(&reg(&mut owner, v, &[]).unwrap()));
    }
    let mut replica = S::new();
    assert!(matches!(
        replica.apply_entry(log[0].clone()),
        Ok(Replayed::Applied(_))
    ));
    assert_eq!(replica.apply_entry(log[0].clone()), Ok(Replayed::Duplicate));
    assert_eq!(
        replica.apply_entry(log[2].clone()),
        Err(ReplayError::Gap { last: 1, seq: 3 })
    );
    assert_eq!(replica.seq(), 1);
    replica.apply_entry(log[1].clone()).unwrap();
    replica.apply_entry(log[2].clone()).unwrap();
    assert_eq!(replica.len(), 3);
}

#[test]
fn an_entry_refused_on_replay_is_a_divergence() {
    let mut owner = S::new();
    let log = entries(&reg(&mut owner, "a", &[]).unwrap());
    let mut other = S::new();
    done(reg(&mut other, "a", &[]));
    let mut entry = log[0].clone();
    entry.seq = 2;
    assert_eq!(
        other.apply_entry(entry),
        Err(ReplayError::Diverged {
            seq: 2,
            rejection: Rejection::Exists(s("a"))
        })
    );
    assert_eq!(other.seq(), 1);
}

#[test]
fn an_image_round_trips_through_its_frame() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    done(reg(&mut session, "b", &["a"]));
    done(session.apply(
        Command::Hold {
            name: s("a"),
            holder: 4,
            token: 8,
            until_ms: 50,
        },
        0,
    ));
    let frame = session.image().to_frame().unwrap();
    let image = SessionImage::<String, u32>::from_frame(&frame).unwrap();
    let restored = S::from_image(image).unwrap();
    assert_eq!(restored.seq(), 3);
    assert_eq!(restored.fence("a", 0).map(|f| f.token), Some(8));
    assert_eq!(restored.graph().dependents(&s("a")).unwrap(), vec![s("b")]);
    // A flipped bit is caught before anything is decoded.
    let mut bad = frame.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(SessionImage::<String, u32>::from_frame(&bad).is_err());
}

#[test]
fn an_image_whose_parts_disagree_is_refused() {
    let mut session = S::new();
    done(reg(&mut session, "a", &[]));
    let mut image = session.image();
    image.variables.clear();
    assert!(matches!(
        S::from_image(image),
        Err(crate::Error::Payload(_))
    ));
}

#[test]
fn unlogged_edges_change_the_state_without_a_sequence_number() {
    let mut session = S::new();
    for v in ["a", "b", "c"] {
        done(reg(&mut session, v, &[]));
    }
    assert_eq!(
        session.add_edge_unlogged("a", "b", EdgeKind::Data),
        Ok(true)
    );
    assert!(matches!(
        session.add_edge_unlogged("b", "a", EdgeKind::Data),
        Err(Rejection::Cycle(_))
    ));
    assert_eq!(
        session.add_edge_unlogged("a", "x", EdgeKind::Data),
        Err(Rejection::NotFound(s("x")))
    );
    let batch = [("b", "c", EdgeKind::Data), ("a", "c", EdgeKind::Data)];
    assert_eq!(
        session.add_edges_unlogged(batch.iter().map(|(f, t, k)| (*f, *t, k.clone()))),
        Ok(2)
    );
    assert_eq!(session.seq(), 3);
    assert_eq!(session.image().graph.edges.len(), 3);
}

#[test]
fn a_loaded_session_holds_its_variables_and_edges() {
    let var = |version, inputs: &[&str]| Variable {
        version,
        inputs: inputs.iter().map(|i| s(i)).collect(),
    };
    let variables = vec![
        (s("a"), var(4, &[])),
        (s("b"), var(2, &["a"])),
        (s("c"), var(1, &[])),
    ];
    let loaded = S::load(variables.clone(), &[(s("b"), s("c"), EdgeKind::Data)]).unwrap();
    assert_eq!(loaded.version("a"), Some(4));
    assert_eq!(loaded.graph().edge_count(), 2);
    assert_eq!(
        loaded.graph().edge_kind(&s("a"), &s("b")),
        Some(&EdgeKind::Compute)
    );
    assert!(matches!(
        S::load(
            variables.clone(),
            &[
                (s("b"), s("c"), EdgeKind::Data),
                (s("c"), s("a"), EdgeKind::Data)
            ]
        ),
        Err(Rejection::Cycle(_))
    ));
    assert_eq!(
        S::load(variables, &[(s("c"), s("zz"), EdgeKind::Data)]).err(),
        Some(Rejection::NotFound(s("zz")))
    );
    let twice = vec![(s("a"), var(1, &[])), (s("a"), var(1, &[]))];
    assert_eq!(S::load(twice, &[]).err(), Some(Rejection::Exists(s("a"))));
}
