//! Model-based tests of the `Session` aggregate: every command sequence is run against a
//! plain model (maps and an edge set, reachability by exhaustive search), and the log it
//! writes is replayed, whole and from an image taken part way, into the same state.

use std::collections::{BTreeMap, BTreeSet};

use dspex_core::graph::EdgeKind;
use dspex_core::session::{
    Command, Effect, Entry, Outcome, Rejection, ReplayError, Replayed, Reply, Session,
    SessionImage, Write,
};
use proptest::prelude::*;

const N: u8 = 7;

type S = Session<u8, u8>;

#[derive(Debug, Clone)]
enum Op {
    Cmd(Command<u8, u8>),
    // The clock moves on by this many milliseconds.
    Tick(u64),
}

fn kind(k: u8) -> EdgeKind {
    match k {
        0 => EdgeKind::Data,
        1 => EdgeKind::Constraint,
        _ => EdgeKind::Custom("w".into()),
    }
}

fn names(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0..N, 0..max)
}

fn write() -> impl Strategy<Value = Write<u8>> {
    (
        0..N,
        proptest::option::of(0..4u64),
        proptest::option::weighted(0.3, 0..6u64),
    )
        .prop_map(|(name, expected_version, token)| Write {
            name,
            expected_version,
            token,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..N, names(3)).prop_map(|(name, inputs)| Op::Cmd(Command::Register { name, inputs })),
        1 => (0..N, names(3)).prop_map(|(name, inputs)| Op::Cmd(Command::DefineComputed { name, inputs })),
        6 => proptest::collection::vec(write(), 1..4).prop_map(|writes| Op::Cmd(Command::Write { writes })),
        1 => (0..N).prop_map(|name| Op::Cmd(Command::Delete { name })),
        3 => proptest::collection::vec((0..N, 0..N, 0..3u8), 1..4).prop_map(|edges| {
            Op::Cmd(Command::AddEdges {
                edges: edges.into_iter().map(|(f, t, k)| (f, t, kind(k))).collect(),
            })
        }),
        1 => (0..N, 0..N).prop_map(|(from, to)| Op::Cmd(Command::RemoveEdge { from, to })),
        1 => (0..N).prop_map(|name| Op::Cmd(Command::ClearEdges { name })),
        3 => (0..N, 0..3u8, 0..6u64, 0..40u64).prop_map(|(name, holder, token, lease)| {
            Op::Cmd(Command::Hold { name, holder, token, until_ms: lease })
        }),
        1 => (0..N, proptest::option::of(0..3u8))
            .prop_map(|(name, holder)| Op::Cmd(Command::Release { name, holder })),
        1 => proptest::collection::vec(any::<u8>(), 0..4)
            .prop_map(|payload| Op::Cmd(Command::Record { payload })),
        2 => (0..25u64).prop_map(Op::Tick),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    version: u64,
    inputs: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    holder: u8,
    token: u64,
    until: u64,
}

#[derive(Default, Debug, Clone)]
struct Model {
    seq: u64,
    vars: BTreeMap<u8, Var>,
    edges: BTreeMap<(u8, u8), EdgeKind>,
    fences: BTreeMap<u8, Fence>,
    tokens: BTreeMap<u8, u64>,
}

// What a result is compared by: the reply, or the refusal's reason with the details that
// do not depend on an order the model does not keep (a cycle's path, which of several
// computed dependents is named first).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Ok(Reply),
    Err(&'static str, Option<u8>, Option<u64>),
}

impl Model {
    fn reaches(&self, from: u8, to: u8) -> bool {
        let mut seen = BTreeSet::from([from]);
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            for &(a, b) in self.edges.keys() {
                if a == n && seen.insert(b) {
                    stack.push(b);
                }
            }
        }
        false
    }

    fn live(&self, name: u8, now: u64) -> Option<&Fence> {
        self.fences.get(&name).filter(|f| now < f.until)
    }

    fn err(reason: &'static str, name: Option<u8>, n: Option<u64>) -> Seen {
        Seen::Err(reason, name, n)
    }

    fn check_inputs(&self, name: u8, inputs: &[u8]) -> Option<Seen> {
        for (i, &input) in inputs.iter().enumerate() {
            if input == name {
                return Some(Self::err("cycle", None, None));
            }
            if !self.vars.contains_key(&input) {
                return Some(Self::err("variable_not_found", Some(input), None));
            }
            if inputs[..i].contains(&input) {
                return Some(Self::err("duplicate_variable", Some(input), None));
            }
        }
        None
    }

    fn computed_from(&self, name: u8) -> Vec<u8> {
        self.vars
            .iter()
            .filter(|(_, v)| v.inputs.contains(&name))
            .map(|(&k, _)| k)
            .collect()
    }

    fn apply(&mut self, cmd: &Command<u8, u8>, now: u64) -> Seen {
        let seen = self.run(cmd, now);
        if matches!(seen, Seen::Ok(_)) {
            self.seq += 1;
        }
        seen
    }

    fn run(&mut self, cmd: &Command<u8, u8>, now: u64) -> Seen {
        match cmd {
            Command::Register { name, inputs } => {
                if self.vars.contains_key(name) {
                    return Self::err("variable_exists", Some(*name), None);
                }
                if let Some(e) = self.check_inputs(*name, inputs) {
                    return e;
                }
                for &i in inputs {
                    self.edges.insert((i, *name), EdgeKind::Compute);
                }
                self.vars.insert(
                    *name,
                    Var {
                        version: 1,
                        inputs: inputs.clone(),
                    },
                );
                Seen::Ok(Reply::Versions(vec![1]))
            }
            Command::DefineComputed { name, inputs } => {
                let Some(old) = self.vars.get(name).map(|v| v.inputs.clone()) else {
                    return Self::err("variable_not_found", Some(*name), None);
                };
                if let Some(e) = self.check_inputs(*name, inputs) {
                    return e;
                }
                if inputs.iter().any(|&i| self.reaches(*name, i)) {
                    return Self::err("cycle", None, None);
                }
                for &i in inputs {
                    self.edges.insert((i, *name), EdgeKind::Compute);
                }
                for i in old.iter().filter(|i| !inputs.contains(i)) {
                    self.edges.remove(&(*i, *name));
                }
                self.vars.get_mut(name).unwrap().inputs = inputs.clone();
                Seen::Ok(Reply::Done)
            }
            Command::Write { writes } => {
                for (i, w) in writes.iter().enumerate() {
                    if writes[..i].iter().any(|o| o.name == w.name) {
                        return Self::err("duplicate_variable", Some(w.name), None);
                    }
                    let Some(var) = self.vars.get(&w.name) else {
                        return Self::err("variable_not_found", Some(w.name), None);
                    };
                    if let Some(e) = w.expected_version.filter(|&e| e != var.version) {
                        let _ = e;
                        return Self::err("version_mismatch", Some(w.name), Some(var.version));
                    }
                    let newest = self.tokens.get(&w.name).copied().unwrap_or(0);
                    match (self.live(w.name, now), w.token) {
                        (None, None) => {}
                        (Some(f), Some(t)) if t == f.token => {}
                        (Some(f), None) => {
                            return Self::err("locked_by", Some(w.name), Some(f.holder as u64))
                        }
                        (_, Some(_)) => {
                            return Self::err("stale_token", Some(w.name), Some(newest))
                        }
                    }
                }
                let mut versions = Vec::new();
                for w in writes {
                    if self.fences.get(&w.name).is_some_and(|f| now >= f.until) {
                        self.fences.remove(&w.name);
                    }
                    let var = self.vars.get_mut(&w.name).unwrap();
                    var.version += 1;
                    versions.push(var.version);
                }
                Seen::Ok(Reply::Versions(versions))
            }
            Command::Delete { name } => {
                if !self.vars.contains_key(name) {
                    return Self::err("variable_not_found", Some(*name), None);
                }
                if !self.computed_from(*name).is_empty() {
                    return Self::err("has_dependents", None, None);
                }
                self.vars.remove(name);
                self.edges.retain(|&(a, b), _| a != *name && b != *name);
                self.fences.remove(name);
                Seen::Ok(Reply::Done)
            }
            Command::AddEdges { edges } => {
                // Every end is looked up before any edge is tried.
                for end in edges.iter().flat_map(|(f, t, _)| [f, t]) {
                    if !self.vars.contains_key(end) {
                        return Self::err("variable_not_found", Some(*end), None);
                    }
                }
                let mut next = self.clone();
                let mut added = 0;
                for (f, t, k) in edges {
                    if f == t || (!next.edges.contains_key(&(*f, *t)) && next.reaches(*t, *f)) {
                        return Self::err("cycle", None, None);
                    }
                    if next.edges.insert((*f, *t), k.clone()).is_none() {
                        added += 1;
                    }
                }
                *self = next;
                Seen::Ok(Reply::EdgesAdded(added))
            }
            Command::RemoveEdge { from, to } => {
                if self.vars.get(to).is_some_and(|v| v.inputs.contains(from)) {
                    return Self::err("compute_input", Some(*from), Some(1));
                }
                if self.edges.remove(&(*from, *to)).is_some() {
                    Seen::Ok(Reply::EdgesRemoved(1))
                } else {
                    Self::err("dependency_not_found", None, None)
                }
            }
            Command::ClearEdges { name } => {
                let Some(var) = self.vars.get(name) else {
                    return Self::err("variable_not_found", Some(*name), None);
                };
                if !var.inputs.is_empty() {
                    return Self::err("compute_input", Some(*name), None);
                }
                if !self.computed_from(*name).is_empty() {
                    return Self::err("compute_input", Some(*name), Some(1));
                }
                let before = self.edges.len();
                self.edges.retain(|&(a, b), _| a != *name && b != *name);
                Seen::Ok(Reply::EdgesRemoved(before - self.edges.len()))
            }
            Command::Hold {
                name,
                holder,
                token,
                until_ms,
            } => {
                if !self.vars.contains_key(name) {
                    return Self::err("variable_not_found", Some(*name), None);
                }
                let newest = self.tokens.get(name).copied().unwrap_or(0);
                let renewal = self
                    .live(*name, now)
                    .is_some_and(|f| f.token == *token && f.holder == *holder);
                if *token <= newest && !renewal {
                    return Self::err("stale_token", Some(*name), Some(newest));
                }
                self.tokens.insert(*name, *token);
                self.fences.insert(
                    *name,
                    Fence {
                        holder: *holder,
                        token: *token,
                        until: *until_ms,
                    },
                );
                Seen::Ok(Reply::Done)
            }
            Command::Release { name, holder } => {
                let matches = self
                    .fences
                    .get(name)
                    .is_some_and(|f| holder.is_none_or(|h| h == f.holder));
                if matches {
                    self.fences.remove(name);
                }
                Seen::Ok(Reply::Released(matches))
            }
            Command::Record { .. } => Seen::Ok(Reply::Done),
        }
    }
}

fn seen(outcome: &Outcome<u8, u8>) -> Seen {
    match outcome {
        Ok(out) => Seen::Ok(out.value.clone()),
        Err(r) => {
            let (name, n) = match r {
                Rejection::Exists(k) | Rejection::NotFound(k) | Rejection::Duplicate(k) => {
                    (Some(*k), None)
                }
                Rejection::VersionMismatch { name, current } => (Some(*name), Some(*current)),
                Rejection::LockedBy { name, holder } => (Some(*name), Some(*holder as u64)),
                Rejection::StaleToken { name, current } => (Some(*name), Some(*current)),
                // A computed variable's own edges name it; an input's, the input (which of
                // several dependents is named depends on an order the model does not keep).
                Rejection::ComputeInput {
                    computed,
                    input: None,
                } => (Some(*computed), None),
                Rejection::ComputeInput { input: Some(i), .. } => (Some(*i), Some(1)),
                _ => (None, None),
            };
            Seen::Err(r.reason(), name, n)
        }
    }
}

// The state as the model keeps it: variables, edges with kinds, fences live at `now`,
// newest tokens.
type State = (
    u64,
    BTreeMap<u8, Var>,
    BTreeMap<(u8, u8), EdgeKind>,
    BTreeMap<u8, Fence>,
    BTreeMap<u8, u64>,
);

fn state_of(session: &S, now: u64) -> State {
    let image = session.image();
    (
        image.seq,
        image
            .variables
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Var {
                        version: v.version,
                        inputs: v.inputs,
                    },
                )
            })
            .collect(),
        image
            .graph
            .edges
            .into_iter()
            .map(|(f, t, k)| ((f, t), k))
            .collect(),
        image
            .fences
            .into_iter()
            .filter(|(_, f)| now < f.until_ms)
            .map(|(k, f)| {
                (
                    k,
                    Fence {
                        holder: f.holder,
                        token: f.token,
                        until: f.until_ms,
                    },
                )
            })
            .collect(),
        image.tokens.into_iter().collect(),
    )
}

fn model_state(model: &Model, now: u64) -> State {
    (
        model.seq,
        model.vars.clone(),
        model.edges.clone(),
        model
            .fences
            .iter()
            .filter(|(_, f)| now < f.until)
            .map(|(k, f)| (*k, f.clone()))
            .collect(),
        model.tokens.clone(),
    )
}

// Runs the ops on a session and the model side by side; returns the session, the log and
// the clock at the end.
type Run = (S, Vec<Entry<u8, u8>>, u64);

fn run(ops: &[Op]) -> Result<Run, TestCaseError> {
    let mut session = S::new();
    let mut model = Model::default();
    let mut log = Vec::new();
    let mut now = 0;
    for op in ops {
        match op {
            Op::Tick(dt) => now += dt,
            Op::Cmd(cmd) => {
                let outcome = session.apply(cmd.clone(), now);
                let expected = model.apply(cmd, now);
                prop_assert_eq!(seen(&outcome), expected, "{:?} at {}", cmd, now);
                if let Ok(out) = outcome {
                    match out.effects.first() {
                        Some(Effect::Log(entry)) => {
                            prop_assert_eq!(entry.seq, session.seq());
                            prop_assert_eq!(&entry.command, cmd);
                            log.push(entry.clone());
                        }
                        other => prop_assert!(false, "first effect {:?}", other),
                    }
                    prop_assert_eq!(
                        out.effects
                            .iter()
                            .filter(|e| matches!(e, Effect::Log(_)))
                            .count(),
                        1
                    );
                }
                prop_assert_eq!(state_of(&session, now), model_state(&model, now));
                prop_assert!(session.graph().check_invariants());
            }
        }
    }
    Ok((session, log, now))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn the_aggregate_follows_the_model(ops in proptest::collection::vec(op(), 0..60)) {
        run(&ops)?;
    }

    #[test]
    fn replaying_the_log_rebuilds_the_session(ops in proptest::collection::vec(op(), 0..60)) {
        let (session, log, now) = run(&ops)?;
        let mut replica = S::new();
        for entry in log {
            let replayed = replica.apply_entry(entry);
            prop_assert!(matches!(replayed, Ok(Replayed::Applied(_))), "{:?}", replayed);
        }
        prop_assert_eq!(state_of(&replica, now), state_of(&session, now));
    }

    #[test]
    fn an_image_and_the_tail_of_the_log_rebuild_the_session(
        ops in proptest::collection::vec(op(), 0..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let (session, log, now) = run(&ops)?;
        // The image at entry `k`: replay the first k entries, take its image through a
        // frame, then apply the rest (and the first few again, which must be ignored).
        let k = if log.is_empty() { 0 } else { cut.index(log.len() + 1) };
        let mut first = S::new();
        for entry in &log[..k] {
            first.apply_entry(entry.clone()).unwrap();
        }
        let frame = first.image().to_frame().unwrap();
        let mut rebuilt = S::from_image(SessionImage::from_frame(&frame).unwrap()).unwrap();
        prop_assert_eq!(rebuilt.seq(), k as u64);
        for entry in log[..k].iter().rev().take(3) {
            prop_assert_eq!(rebuilt.apply_entry(entry.clone()), Ok(Replayed::Duplicate));
        }
        for entry in &log[k..] {
            rebuilt.apply_entry(entry.clone()).unwrap();
        }
        prop_assert_eq!(state_of(&rebuilt, now), state_of(&session, now));
    }

    #[test]
    fn a_gap_is_refused_and_changes_nothing(
        ops in proptest::collection::vec(op(), 0..60),
        skip in any::<prop::sample::Index>(),
    ) {
        let (_, log, now) = run(&ops)?;
        prop_assume!(log.len() >= 2);
        let missing = skip.index(log.len() - 1);
        let mut replica = S::new();
        for entry in &log[..missing] {
            replica.apply_entry(entry.clone()).unwrap();
        }
        let before = state_of(&replica, now);
        let refused = replica.apply_entry(log[missing + 1].clone());
        prop_assert_eq!(
            refused,
            Err(ReplayError::Gap { last: missing as u64, seq: missing as u64 + 2 })
        );
        prop_assert_eq!(state_of(&replica, now), before);
    }
}
