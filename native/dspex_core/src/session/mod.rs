//! One session's state, changed only through typed commands, each accepted one logged with a
//! sequence number: the single write path of a session.
//!
//! A [`Session`] holds what the core decides for a session: which variables exist and their
//! versions, which are computed from which, the dependency graph (which refuses cycles), and
//! the lock fences that guard writes. [`Session::apply`] takes a [`Command`] and the time,
//! and either refuses it (the session unchanged, nothing logged) or applies it and returns
//! the reply with its effects, the first of which is always the [`Entry`] to log.
//!
//! The caller owns everything the core does not interpret — variable values, constraints,
//! access policies, watchers — and keeps it in step by the replies; [`Command::Record`]
//! carries its own changes through the same log so that one sequence orders them all.
//!
//! Whoever holds the log can rebuild the session: replaying the entries on an empty session
//! ([`Session::apply_entry`]) gives the same state, and so does an [`image`](Session::image)
//! taken at entry `n` followed by the entries after `n`. A replica applies entries strictly
//! in sequence: a repeated entry is ignored and a gap is refused with the last sequence
//! number it has, so that it asks for what it missed instead of diverging.
//!
//! ```
//! use dspex_core::session::{Command, Effect, Entry, Rejection, Reply, Session, Write};
//!
//! // Applies a command and keeps its log entry, as an owner that replicates would.
//! fn run(
//!     session: &mut Session<String, u32>,
//!     log: &mut Vec<Entry<String, u32>>,
//!     command: Command<String, u32>,
//!     now_ms: u64,
//! ) -> Result<Reply, Rejection<String, u32>> {
//!     let (reply, effects) = session.apply(command, now_ms)?.into_parts();
//!     for effect in effects {
//!         if let Effect::Log(entry) = effect {
//!             log.push(entry);
//!         }
//!     }
//!     Ok(reply)
//! }
//!
//! let (mut owner, mut log) = (Session::new(), Vec::new());
//! let register = |name: &str, inputs: &[&str]| Command::Register {
//!     name: name.to_string(),
//!     inputs: inputs.iter().map(|s| s.to_string()).collect(),
//! };
//! run(&mut owner, &mut log, register("temperature", &[]), 0).unwrap();
//! run(&mut owner, &mut log, register("label", &["temperature"]), 0).unwrap();
//!
//! // Optimizer 1 holds the lock on `temperature` until t = 1000, with token 7.
//! let hold = Command::Hold { name: "temperature".into(), holder: 1, token: 7, until_ms: 1000 };
//! run(&mut owner, &mut log, hold, 10).unwrap();
//!
//! // A writer without the token is refused; the holder writes with it.
//! let write = |token| Command::Write {
//!     writes: vec![Write { name: "temperature".to_string(), expected_version: Some(1), token }],
//! };
//! let refused = run(&mut owner, &mut log, write(None), 20);
//! assert!(matches!(refused, Err(Rejection::LockedBy { holder: 1, .. })));
//! assert_eq!(run(&mut owner, &mut log, write(Some(7)), 20), Ok(Reply::Versions(vec![2])));
//!
//! // A replica rebuilt from the log has the same state.
//! let mut replica: Session<String, u32> = Session::new();
//! for entry in &log {
//!     replica.apply_entry(entry.clone()).unwrap();
//! }
//! assert_eq!(replica.seq(), owner.seq());
//! assert_eq!(replica.version("temperature"), Some(2));
//! ```

use std::borrow::Borrow;
use std::hash::Hash;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use crate::effects::WithEffects;
use crate::graph::{DependencyGraph, EdgeKind, GraphError};

mod command;
mod image;
mod replay;

pub use command::{Command, Effect, Entry, Rejection, Reply, Write};
pub use image::SessionImage;
pub use replay::{ReplayError, Replayed};

/// What [`Session::apply`] returns: the reply and its effects, or the refusal.
pub type Outcome<K, H> = Result<WithEffects<Reply, Effect<K, H>>, Rejection<K, H>>;

/// What the core keeps of a variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable<K> {
    /// 1 when registered, one more for each write.
    pub version: u64,
    /// The variables it is computed from; empty for a plain variable.
    pub inputs: Vec<K>,
}

/// A lock grant that guards a variable's writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence<H> {
    /// Who holds the lock.
    pub holder: H,
    /// The token a write must carry.
    pub token: u64,
    /// When the lease ends; at and after it the fence no longer guards anything.
    pub until_ms: u64,
}

impl<H> Fence<H> {
    fn live(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

/// One session's variables, graph and fences, and the sequence number of its last change.
/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Session<K, H> {
    seq: u64,
    variables: AHashMap<K, Variable<K>>,
    graph: DependencyGraph<K>,
    fences: AHashMap<K, Fence<H>>,
    // The newest token ever granted per variable: a grant or a write with an older one is
    // stale, even after a release or a delete.
    tokens: AHashMap<K, u64>,
}

impl<K: Eq + Hash + Clone, H: Clone + Eq> Default for Session<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, H: Clone + Eq> Session<K, H> {
    /// An empty session at sequence number 0.
    pub fn new() -> Self {
        Self {
            seq: 0,
            variables: AHashMap::new(),
            graph: DependencyGraph::new(),
            fences: AHashMap::new(),
            tokens: AHashMap::new(),
        }
    }

    /// The sequence number of the last accepted command (0 for none).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.variables.len()
    }

    /// True when the session has no variables.
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
    }

    /// A variable's record.
    pub fn variable<Q>(&self, name: &Q) -> Option<&Variable<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.variables.get(name)
    }

    /// A variable's version.
    pub fn version<Q>(&self, name: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.variables.get(name).map(|v| v.version)
    }

    /// The dependency graph (reads only: edges change through commands).
    pub fn graph(&self) -> &DependencyGraph<K> {
        &self.graph
    }

    /// The fence guarding `name` at `now_ms`, if a lease is live.
    pub fn fence<Q>(&self, name: &Q, now_ms: u64) -> Option<&Fence<H>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.fences.get(name).filter(|f| f.live(now_ms))
    }

    /// The newest token granted for `name` (0 for none).
    pub fn newest_token<Q>(&self, name: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tokens.get(name).copied().unwrap_or(0)
    }

    /// Applies `command` at `now_ms` (the caller's clock, in milliseconds; it must not go
    /// backwards for one session). On success the session's sequence number is one more
    /// and the first effect is [`Effect::Log`] with the entry.
    ///
    /// # Errors
    /// A [`Rejection`]; the session is then unchanged.
    pub fn apply(&mut self, command: Command<K, H>, now_ms: u64) -> Outcome<K, H> {
        let mut effects = Vec::with_capacity(1);
        let reply = self.run(&command, now_ms, &mut effects)?;
        self.seq += 1;
        effects.insert(
            0,
            Effect::Log(Entry {
                seq: self.seq,
                at_ms: now_ms,
                command,
            }),
        );
        Ok(WithEffects::new(reply, effects))
    }

    // Checks everything a command needs before changing anything, then changes it: a
    // refusal leaves the session as it was.
    fn run(
        &mut self,
        command: &Command<K, H>,
        now: u64,
        effects: &mut Vec<Effect<K, H>>,
    ) -> Result<Reply, Rejection<K, H>> {
        match command {
            Command::Register { name, inputs } => self.register(name, inputs),
            Command::DefineComputed { name, inputs } => self.define_computed(name, inputs),
            Command::Write { writes } => self.write(writes, now, effects),
            Command::Delete { name } => self.delete(name),
            Command::AddEdges { edges } => self.add_edges(edges),
            Command::RemoveEdge { from, to } => self.remove_edge(from, to),
            Command::ClearEdges { name } => self.clear_edges(name),
            Command::Hold {
                name,
                holder,
                token,
                until_ms,
            } => self.hold(name, holder, *token, *until_ms, now),
            Command::Release { name, holder } => Ok(self.release(name, holder.as_ref())),
            Command::Record { .. } => Ok(Reply::Done),
        }
    }

    fn existing(&self, name: &K) -> Result<&Variable<K>, Rejection<K, H>> {
        self.variables
            .get(name)
            .ok_or_else(|| Rejection::NotFound(name.clone()))
    }

    fn check_inputs(&self, name: &K, inputs: &[K]) -> Result<(), Rejection<K, H>> {
        for (i, input) in inputs.iter().enumerate() {
            if input == name {
                return Err(Rejection::Cycle(vec![name.clone(), name.clone()]));
            }
            self.existing(input)?;
            if inputs[..i].contains(input) {
                return Err(Rejection::Duplicate(input.clone()));
            }
        }
        Ok(())
    }

    fn register(&mut self, name: &K, inputs: &[K]) -> Result<Reply, Rejection<K, H>> {
        if self.variables.contains_key(name) {
            return Err(Rejection::Exists(name.clone()));
        }
        self.check_inputs(name, inputs)?;
        self.graph.add_node(name.clone());
        // A new node has no outgoing edges, so edges into it cannot close a cycle.
        let edges: Vec<_> = inputs
            .iter()
            .map(|i| (i.clone(), name.clone(), EdgeKind::Compute))
            .collect();
        let added = self.graph.add_edges(&edges);
        debug_assert!(added.is_ok(), "edges into a new node close no cycle");
        self.variables.insert(
            name.clone(),
            Variable {
                version: 1,
                inputs: inputs.to_vec(),
            },
        );
        Ok(Reply::Versions(vec![1]))
    }

    fn define_computed(&mut self, name: &K, inputs: &[K]) -> Result<Reply, Rejection<K, H>> {
        let old = self.existing(name)?.inputs.clone();
        self.check_inputs(name, inputs)?;
        let edges: Vec<_> = inputs
            .iter()
            .map(|i| (i.clone(), name.clone(), EdgeKind::Compute))
            .collect();
        self.graph.add_edges(&edges).map_err(graph_rejection)?;
        // Edges out of the old inputs that are not new inputs go: they were compute edges.
        for input in old.iter().filter(|i| !inputs.contains(i)) {
            self.graph.remove_edge(input, name);
        }
        if let Some(var) = self.variables.get_mut(name) {
            var.inputs = inputs.to_vec();
        }
        Ok(Reply::Done)
    }

    fn write(
        &mut self,
        writes: &[Write<K>],
        now: u64,
        effects: &mut Vec<Effect<K, H>>,
    ) -> Result<Reply, Rejection<K, H>> {
        for (i, w) in writes.iter().enumerate() {
            if writes[..i].iter().any(|o| o.name == w.name) {
                return Err(Rejection::Duplicate(w.name.clone()));
            }
            let var = self.existing(&w.name)?;
            if let Some(expected) = w.expected_version {
                if expected != var.version {
                    return Err(Rejection::VersionMismatch {
                        name: w.name.clone(),
                        current: var.version,
                    });
                }
            }
            self.check_fence(&w.name, w.token, now)?;
        }
        let mut versions = Vec::with_capacity(writes.len());
        for w in writes {
            self.expire(&w.name, now, effects);
            let var = self.variables.get_mut(&w.name).expect("checked above");
            var.version += 1;
            versions.push(var.version);
        }
        let recompute = self.computed_downstream(writes);
        if !recompute.is_empty() {
            effects.push(Effect::Recompute(recompute));
        }
        Ok(Reply::Versions(versions))
    }

    // The same rule as the lock table's: no live fence and no token writes; a live fence
    // needs its token; any other token is stale.
    fn check_fence(&self, name: &K, token: Option<u64>, now: u64) -> Result<(), Rejection<K, H>> {
        match (self.fence(name, now), token) {
            (None, None) => Ok(()),
            (Some(f), Some(t)) if t == f.token => Ok(()),
            (Some(f), None) => Err(Rejection::LockedBy {
                name: name.clone(),
                holder: f.holder.clone(),
            }),
            (_, Some(_)) => Err(Rejection::StaleToken {
                name: name.clone(),
                current: self.newest_token(name),
            }),
        }
    }

    fn expire(&mut self, name: &K, now: u64, effects: &mut Vec<Effect<K, H>>) {
        if self.fences.get(name).is_some_and(|f| !f.live(now)) {
            let fence = self.fences.remove(name).expect("present");
            effects.push(Effect::LeaseExpired {
                name: name.clone(),
                holder: fence.holder,
            });
        }
    }

    fn computed_downstream(&self, writes: &[Write<K>]) -> Vec<K> {
        // The usual write has nothing downstream: no search, no allocation.
        if !writes.iter().any(|w| self.graph.has_dependents(&w.name)) {
            return Vec::new();
        }
        let written: Vec<K> = writes.iter().map(|w| w.name.clone()).collect();
        match self.graph.update_order_refs(&written) {
            Ok(order) => order
                .into_iter()
                .filter(|k| !written.contains(k))
                .filter(|k| self.variables.get(*k).is_some_and(|v| !v.inputs.is_empty()))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn computed_from(&self, name: &K) -> Vec<K> {
        self.graph
            .dependents(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| {
                self.variables
                    .get(d)
                    .is_some_and(|v| v.inputs.contains(name))
            })
            .collect()
    }

    fn delete(&mut self, name: &K) -> Result<Reply, Rejection<K, H>> {
        self.existing(name)?;
        let dependents = self.computed_from(name);
        if !dependents.is_empty() {
            return Err(Rejection::HasDependents(dependents));
        }
        self.graph.remove_node(name);
        self.variables.remove(name);
        self.fences.remove(name);
        Ok(Reply::Done)
    }

    fn add_edges(&mut self, edges: &[(K, K, EdgeKind)]) -> Result<Reply, Rejection<K, H>> {
        self.graph
            .add_edges(edges)
            .map(Reply::EdgesAdded)
            .map_err(graph_rejection)
    }

    fn remove_edge(&mut self, from: &K, to: &K) -> Result<Reply, Rejection<K, H>> {
        if self
            .variables
            .get(to)
            .is_some_and(|v| v.inputs.contains(from))
        {
            return Err(Rejection::ComputeInput {
                computed: to.clone(),
                input: Some(from.clone()),
            });
        }
        if self.graph.remove_edge(from, to) {
            Ok(Reply::EdgesRemoved(1))
        } else {
            Err(Rejection::EdgeNotFound {
                from: from.clone(),
                to: to.clone(),
            })
        }
    }

    fn clear_edges(&mut self, name: &K) -> Result<Reply, Rejection<K, H>> {
        if !self.existing(name)?.inputs.is_empty() {
            return Err(Rejection::ComputeInput {
                computed: name.clone(),
                input: None,
            });
        }
        if let Some(dependent) = self.computed_from(name).into_iter().next() {
            return Err(Rejection::ComputeInput {
                computed: dependent,
                input: Some(name.clone()),
            });
        }
        let removed = self.graph.clear_edges(name).map_err(graph_rejection)?;
        Ok(Reply::EdgesRemoved(removed))
    }

    // A grant with a newer token replaces whatever fence is there (a preemption is a new
    // grant); the current grant's own token renews its lease.
    fn hold(
        &mut self,
        name: &K,
        holder: &H,
        token: u64,
        until_ms: u64,
        now: u64,
    ) -> Result<Reply, Rejection<K, H>> {
        self.existing(name)?;
        let newest = self.newest_token(name);
        let renewal = self
            .fence(name, now)
            .is_some_and(|f| f.token == token && f.holder == *holder);
        if token <= newest && !renewal {
            return Err(Rejection::StaleToken {
                name: name.clone(),
                current: newest,
            });
        }
        self.tokens.insert(name.clone(), token);
        self.fences.insert(
            name.clone(),
            Fence {
                holder: holder.clone(),
                token,
                until_ms,
            },
        );
        Ok(Reply::Done)
    }

    fn release(&mut self, name: &K, holder: Option<&H>) -> Reply {
        let matches = self
            .fences
            .get(name)
            .is_some_and(|f| holder.is_none_or(|h| *h == f.holder));
        if matches {
            self.fences.remove(name);
        }
        Reply::Released(matches)
    }
}

/// Writes outside the log, for an owner that has no log consumer: no replica, no backend,
/// so nothing to keep in step. They change the state as the commands they stand for would,
/// without a sequence number or an entry (an [`image`](Session::image) taken later holds
/// them). They exist for the hot path: many processes adding edges at once, by borrowed ids,
/// without building a command.
impl<K: Eq + Hash + Clone, H: Clone + Eq> Session<K, H> {
    /// [`Command::AddEdges`] for one edge, unlogged; `Ok(true)` when it is new.
    ///
    /// # Errors
    /// As the command: [`Rejection::NotFound`], [`Rejection::Cycle`].
    pub fn add_edge_unlogged<Q>(
        &mut self,
        from: &Q,
        to: &Q,
        kind: EdgeKind,
    ) -> Result<bool, Rejection<K, H>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        self.graph.add_edge(from, to, kind).map_err(graph_rejection)
    }

    /// [`Command::AddEdges`], unlogged, for edges given by borrowed ids (all or none): how
    /// many were new.
    ///
    /// # Errors
    /// As the command.
    pub fn add_edges_unlogged<'q, Q>(
        &mut self,
        edges: impl IntoIterator<Item = (&'q Q, &'q Q, EdgeKind)>,
    ) -> Result<usize, Rejection<K, H>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'q,
        Q::Owned: Into<K>,
    {
        self.graph.add_edges_by(edges).map_err(graph_rejection)
    }

    /// A session built at once from its variables and edges (an import), at sequence
    /// number 0; the compute edges of computed variables go in with the other edges.
    ///
    /// # Errors
    /// [`Rejection::Exists`] for a repeated variable, [`Rejection::NotFound`] for an input
    /// or an edge end that is not a variable, [`Rejection::Cycle`].
    pub fn load(
        variables: Vec<(K, Variable<K>)>,
        edges: &[(K, K, EdgeKind)],
    ) -> Result<Self, Rejection<K, H>> {
        let mut session = Self::new();
        for (name, _) in &variables {
            if !session.graph.add_node(name.clone()) {
                return Err(Rejection::Exists(name.clone()));
            }
        }
        let mut all: Vec<(K, K, EdgeKind)> = Vec::with_capacity(edges.len());
        for (name, var) in &variables {
            for input in &var.inputs {
                all.push((input.clone(), name.clone(), EdgeKind::Compute));
            }
        }
        all.extend_from_slice(edges);
        session.graph.add_edges(&all).map_err(graph_rejection)?;
        session.variables = variables.into_iter().collect();
        Ok(session)
    }
}

fn graph_rejection<K, H>(err: GraphError<K>) -> Rejection<K, H> {
    match err {
        GraphError::Cycle(path) => Rejection::Cycle(path),
        GraphError::UnknownNode(k) => Rejection::NotFound(k),
        // Commands never add nodes through the graph's edge calls.
        GraphError::NodeExists(k) => Rejection::Exists(k),
    }
}

#[cfg(test)]
mod tests;
