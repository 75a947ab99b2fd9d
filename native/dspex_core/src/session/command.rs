//! What a [`Session`](super::Session) is told to do, what it answers, and what it asks the
//! caller to carry out.

use serde::{Deserialize, Serialize};

use crate::graph::EdgeKind;

/// One change to a session. Every change a session accepts is one command, and every
/// accepted command becomes one [`Entry`] of its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command<K, H> {
    /// A new variable; computed from `inputs` when they are not empty (compute edges
    /// `input -> name` go in with it).
    Register {
        /// The variable.
        name: K,
        /// The variables it is computed from, if any.
        inputs: Vec<K>,
    },
    /// Makes an existing variable computed from `inputs` (the edges go in, all or none).
    DefineComputed {
        /// The variable.
        name: K,
        /// The variables it is computed from.
        inputs: Vec<K>,
    },
    /// Writes one or more variables, all or none. Each write bumps its variable's version.
    Write {
        /// The writes, at most one per variable.
        writes: Vec<Write<K>>,
    },
    /// Removes a variable, its edges and its lock fence. Refused while a computed variable
    /// depends on it.
    Delete {
        /// The variable.
        name: K,
    },
    /// Dependency edges `from -> to`, all or none.
    AddEdges {
        /// The edges.
        edges: Vec<(K, K, EdgeKind)>,
    },
    /// Removes the edge `from -> to`; refused for a compute edge.
    RemoveEdge {
        /// Upstream end.
        from: K,
        /// Downstream end.
        to: K,
    },
    /// Removes every edge into and out of a variable; refused if a compute edge is among them.
    ClearEdges {
        /// The variable.
        name: K,
    },
    /// Records a lock grant on a variable: from now until `until_ms`, a write of it needs
    /// `token`. A grant replaces the one before it (a preemption) only with a newer token.
    Hold {
        /// The variable.
        name: K,
        /// Who holds the lock.
        holder: H,
        /// The grant's fencing token.
        token: u64,
        /// When the lease ends (the caller's milliseconds, as `now_ms`).
        until_ms: u64,
    },
    /// Records a release: the fence of `holder` (or whoever holds it, for `None`) goes.
    Release {
        /// The variable.
        name: K,
        /// The holder whose fence goes; `None` for any.
        holder: Option<H>,
    },
    /// A change the aggregate does not interpret (the caller's policy, watcher or value
    /// bookkeeping), logged in order with the others.
    Record {
        /// What the change was, in the caller's encoding.
        payload: Vec<u8>,
    },
}

/// One variable's part of a [`Command::Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write<K> {
    /// The variable.
    pub name: K,
    /// The version the writer read; the write is refused when the current one differs.
    pub expected_version: Option<u64>,
    /// The fencing token of the writer's lock on the variable, if it holds one.
    pub token: Option<u64>,
}

impl<K> Write<K> {
    /// A write with no version check and no token.
    pub fn plain(name: K) -> Self {
        Self {
            name,
            expected_version: None,
            token: None,
        }
    }
}

/// What an accepted command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// The version of each variable written or registered, in the command's order.
    Versions(Vec<u64>),
    /// How many of the edges were new.
    EdgesAdded(usize),
    /// How many edges went.
    EdgesRemoved(usize),
    /// Whether a fence was there to release.
    Released(bool),
}

/// Why a command was refused. The session is unchanged, and nothing is logged, whenever one
/// is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection<K, H> {
    /// A variable of that name exists.
    Exists(K),
    /// No variable of that name.
    NotFound(K),
    /// A write names the same variable twice.
    Duplicate(K),
    /// The variable's version is not the one the writer read.
    VersionMismatch {
        /// The variable.
        name: K,
        /// Its current version.
        current: u64,
    },
    /// The variable is locked and the writer presented no token.
    LockedBy {
        /// The variable.
        name: K,
        /// The lock's holder.
        holder: H,
    },
    /// The writer's token is not the current grant's, or a grant's token is not newer than
    /// the last one.
    StaleToken {
        /// The variable.
        name: K,
        /// The newest token seen for it.
        current: u64,
    },
    /// The edge would close a cycle; the path is `[to, ..., from, to]`.
    Cycle(Vec<K>),
    /// No such edge.
    EdgeNotFound {
        /// Upstream end.
        from: K,
        /// Downstream end.
        to: K,
    },
    /// The change would remove an input of a computed variable.
    ComputeInput {
        /// The computed variable.
        computed: K,
        /// The input; `None` when the computed variable's own edges were named.
        input: Option<K>,
    },
    /// Computed variables depend on it.
    HasDependents(Vec<K>),
}

impl<K, H> Rejection<K, H> {
    /// A stable, snake_case name for the refusal, used as the Erlang atom.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Exists(_) => "variable_exists",
            Rejection::NotFound(_) => "variable_not_found",
            Rejection::Duplicate(_) => "duplicate_variable",
            Rejection::VersionMismatch { .. } => "version_mismatch",
            Rejection::LockedBy { .. } => "locked_by",
            Rejection::StaleToken { .. } => "stale_token",
            Rejection::Cycle(_) => "cycle",
            Rejection::EdgeNotFound { .. } => "dependency_not_found",
            Rejection::ComputeInput { .. } => "compute_input",
            Rejection::HasDependents(_) => "has_dependents",
        }
    }
}

/// One accepted command, numbered. Entries applied in `seq` order to an empty session (or
/// to a snapshot and then the entries after it) rebuild the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<K, H> {
    /// 1 for a session's first command, one more for each after it.
    pub seq: u64,
    /// The `now_ms` the command was applied at (replay applies it at the same time).
    pub at_ms: u64,
    /// The command.
    pub command: Command<K, H>,
}

/// What an accepted command asks the caller to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<K, H> {
    /// Store and replicate this entry (to replicas, to a backend), in `seq` order.
    Log(Entry<K, H>),
    /// Recompute these computed variables, in this (topological) order: they depend on
    /// what the command wrote.
    Recompute(Vec<K>),
    /// A lock's lease ran out before the command and its fence went.
    LeaseExpired {
        /// The variable.
        name: K,
        /// The holder whose lease ran out.
        holder: H,
    },
}
