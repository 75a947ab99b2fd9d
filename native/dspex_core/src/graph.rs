//! A dependency DAG that refuses cycles, kept in topological order incrementally.
//!
//! Nodes are variable ids (any `K: Eq + Hash + Clone`); an edge `from -> to` means "`to` is
//! computed from `from`", so values flow along the edges and [`DependencyGraph::update_order`]
//! follows them.
//!
//! Every node carries a position in a topological order that is kept valid on every insert
//! (the dynamic topological sort of Pearce and Kelly). An edge that already agrees with the
//! order costs O(1), which is the common case of a new variable depending on existing ones.
//! Otherwise only the *affected region* — nodes whose positions lie between the two
//! endpoints and that are reachable from (or reach) them — is searched and re-ordered,
//! never the whole graph. Transitive downstream sets then come out topologically sorted by
//! sorting on position.
//!
//! ```
//! use dspex_core::graph::{DependencyGraph, EdgeKind, GraphError};
//!
//! let mut g = DependencyGraph::new();
//! for v in ["a", "b", "c", "d"] {
//!     g.add_node(v);
//! }
//! g.add_edge(&"a", &"b", EdgeKind::Data).unwrap();
//! g.add_edge(&"a", &"c", EdgeKind::Data).unwrap();
//! g.add_edge(&"b", &"d", EdgeKind::Compute).unwrap();
//! g.add_edge(&"c", &"d", EdgeKind::Compute).unwrap();
//! assert_eq!(g.update_order(&"a").unwrap().len(), 4);
//!
//! // d -> a would close a cycle; the refusal names it, starting and ending at `a`.
//! match g.add_edge(&"d", &"a", EdgeKind::Data) {
//!     Err(GraphError::Cycle(path)) => {
//!         assert_eq!(path.first(), Some(&"a"));
//!         assert_eq!(path.last(), Some(&"a"));
//!     }
//!     other => panic!("expected a cycle, got {other:?}"),
//! }
//! ```

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::Hash;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

/// The kind of a dependency edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EdgeKind {
    /// Plain data flow.
    Data,
    /// `to` is computed from `from`.
    Compute,
    /// `to` is constrained by `from`.
    Constraint,
    /// A caller-defined label.
    Custom(String),
}

impl EdgeKind {
    /// The kind's name as used in DOT output and by the Elixir layer.
    pub fn name(&self) -> &str {
        match self {
            EdgeKind::Data => "data",
            EdgeKind::Compute => "compute",
            EdgeKind::Constraint => "constraint",
            EdgeKind::Custom(label) => label,
        }
    }
}

/// Why a graph operation was refused. The graph is unchanged whenever one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError<K> {
    /// The edge would close a cycle; the path is `[to, ..., from, to]`.
    Cycle(Vec<K>),
    /// A node named by the operation is not in the graph.
    UnknownNode(K),
    /// The node is already in the graph.
    NodeExists(K),
}

/// A serializable image of the graph (for snapshots and HA transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSnapshot<K> {
    /// Every node, in topological order.
    pub nodes: Vec<K>,
    /// Every edge as `(from, to, kind)`.
    pub edges: Vec<(K, K, EdgeKind)>,
}

type Ix = u32;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    ord: u64,
    out: Vec<Ix>,
    inc: Vec<Ix>,
}

/// A directed acyclic graph with an incrementally maintained topological order.
#[derive(Debug, Clone)]
pub struct DependencyGraph<K> {
    slots: Vec<Option<Node<K>>>,
    free: Vec<Ix>,
    index: AHashMap<K, Ix>,
    kinds: AHashMap<(Ix, Ix), EdgeKind>,
    next_ord: u64,
    // Scratch space reused across searches so inserts do not allocate per call.
    mark: Vec<u32>,
    epoch: u32,
}

impl<K: Eq + Hash + Clone> Default for DependencyGraph<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> DependencyGraph<K> {
    /// An empty graph.
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: AHashMap::new(),
            kinds: AHashMap::new(),
            next_ord: 0,
            mark: Vec::new(),
            epoch: 0,
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.index.len()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.kinds.len()
    }

    /// True if `key` is a node.
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Adds a node at the end of the order; returns false (and changes nothing) if present.
    pub fn add_node(&mut self, key: K) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        let node = Node {
            key: key.clone(),
            ord: self.next_ord,
            out: Vec::new(),
            inc: Vec::new(),
        };
        self.next_ord += 1;
        let ix = match self.free.pop() {
            Some(ix) => {
                self.slots[ix as usize] = Some(node);
                ix
            }
            None => {
                self.slots.push(Some(node));
                self.mark.push(0);
                (self.slots.len() - 1) as Ix
            }
        };
        self.index.insert(key, ix);
        true
    }

    /// Removes a node and every edge touching it; returns false if it was absent.
    pub fn remove_node(&mut self, key: &K) -> bool {
        let Some(ix) = self.index.remove(key) else {
            return false;
        };
        let node = self.slots[ix as usize].take().expect("indexed node exists");
        for &succ in &node.out {
            self.kinds.remove(&(ix, succ));
            detach(&mut self.node_mut(succ).inc, ix);
        }
        for &pred in &node.inc {
            self.kinds.remove(&(pred, ix));
            detach(&mut self.node_mut(pred).out, ix);
        }
        self.free.push(ix);
        true
    }

    fn ix(&self, key: &K) -> Result<Ix, GraphError<K>> {
        self.index
            .get(key)
            .copied()
            .ok_or_else(|| GraphError::UnknownNode(key.clone()))
    }

    fn node(&self, ix: Ix) -> &Node<K> {
        self.slots[ix as usize].as_ref().expect("live node")
    }

    fn node_mut(&mut self, ix: Ix) -> &mut Node<K> {
        self.slots[ix as usize].as_mut().expect("live node")
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        self.epoch
    }

    /// Adds `from -> to` (`to` depends on `from`). Adding an existing edge updates its kind.
    ///
    /// Returns `Ok(true)` when the edge is new.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] if either end is missing; [`GraphError::Cycle`] with the
    /// path `[to, ..., from, to]` if the edge would close a cycle (including `from == to`).
    pub fn add_edge(&mut self, from: &K, to: &K, kind: EdgeKind) -> Result<bool, GraphError<K>> {
        let x = self.ix(from)?;
        let y = self.ix(to)?;
        if x == y {
            return Err(GraphError::Cycle(vec![to.clone(), to.clone()]));
        }
        if let Some(existing) = self.kinds.get_mut(&(x, y)) {
            *existing = kind;
            return Ok(false);
        }
        let (lb, ub) = (self.node(y).ord, self.node(x).ord);
        if lb < ub {
            self.reorder(x, y, lb, ub)?;
        }
        self.node_mut(x).out.push(y);
        self.node_mut(y).inc.push(x);
        self.kinds.insert((x, y), kind);
        Ok(true)
    }

    // Pearce-Kelly: the edge x -> y violates the order (ord[y] < ord[x]). Collect the nodes
    // reachable from y with ord below ord[x] (forward) and the nodes reaching x with ord
    // above ord[y] (backward), then give the backward set the lowest of their combined
    // positions and the forward set the highest, each keeping its relative order.
    fn reorder(&mut self, x: Ix, y: Ix, lb: u64, ub: u64) -> Result<(), GraphError<K>> {
        let epoch = self.next_epoch();
        let slots = &self.slots;
        let mark = &mut self.mark;
        let node = |ix: Ix| slots[ix as usize].as_ref().expect("live node");
        let mut forward = Vec::new();
        let mut parent: AHashMap<Ix, Ix> = AHashMap::new();
        let mut stack = vec![y];
        mark[y as usize] = epoch;
        while let Some(n) = stack.pop() {
            forward.push(n);
            for &s in &node(n).out {
                if s == x {
                    parent.insert(s, n);
                    return Err(GraphError::Cycle(self.path_back(&parent, y, x)));
                }
                if mark[s as usize] != epoch && node(s).ord < ub {
                    mark[s as usize] = epoch;
                    parent.insert(s, n);
                    stack.push(s);
                }
            }
        }
        let mut backward = Vec::new();
        let mut stack = vec![x];
        mark[x as usize] = epoch;
        while let Some(n) = stack.pop() {
            backward.push(n);
            for &p in &node(n).inc {
                if mark[p as usize] != epoch && node(p).ord > lb {
                    mark[p as usize] = epoch;
                    stack.push(p);
                }
            }
        }
        forward.sort_unstable_by_key(|&n| self.node(n).ord);
        backward.sort_unstable_by_key(|&n| self.node(n).ord);
        let mut positions: Vec<u64> = forward
            .iter()
            .chain(backward.iter())
            .map(|&n| self.node(n).ord)
            .collect();
        positions.sort_unstable();
        for (n, pos) in backward.iter().chain(forward.iter()).zip(positions) {
            let n = *n;
            self.node_mut(n).ord = pos;
        }
        Ok(())
    }

    // The path [to, ..., from, to] from parent pointers of the forward search from `start`
    // (= to) that reached `end` (= from) through the would-be edge.
    fn path_back(&self, parent: &AHashMap<Ix, Ix>, start: Ix, end: Ix) -> Vec<K> {
        let mut rev = vec![end];
        let mut cur = end;
        while cur != start {
            cur = parent[&cur];
            rev.push(cur);
        }
        // rev = [from, ..., to]; reversed it runs to -> from, then the new edge back to `to`.
        let mut path: Vec<K> = rev
            .iter()
            .rev()
            .map(|&n| self.node(n).key.clone())
            .collect();
        path.remove(path.len() - 1);
        path.push(self.node(end).key.clone());
        path.push(self.node(start).key.clone());
        path
    }

    /// Adds many edges, all or nothing.
    ///
    /// Large batches are checked with one topological sort over the whole graph plus the
    /// batch (linear in its size) instead of one search per edge.
    ///
    /// # Errors
    /// As [`add_edge`](Self::add_edge), for the first edge (in input order) that fails given
    /// the edges before it; the graph is then unchanged.
    pub fn add_edges(&mut self, edges: &[(K, K, EdgeKind)]) -> Result<usize, GraphError<K>> {
        for (from, to, _) in edges {
            self.ix(from)?;
            self.ix(to)?;
        }
        if edges.len() * 4 >= self.edge_count() + self.node_count() {
            if let Some(added) = self.add_edges_by_sort(edges) {
                return Ok(added);
            }
        }
        // What to undo if a later edge fails: new edges go, re-labelled ones get their kind back.
        let mut undo: Vec<(K, K, Option<EdgeKind>)> = Vec::new();
        let mut fresh = 0;
        for (from, to, kind) in edges {
            let previous = self.edge_kind(from, to).cloned();
            match self.add_edge(from, to, kind.clone()) {
                Ok(is_new) => {
                    fresh += usize::from(is_new);
                    undo.push((from.clone(), to.clone(), previous));
                }
                Err(err) => {
                    // Undo in reverse. Removing edges keeps any topological order valid.
                    for (f, t, previous) in undo.into_iter().rev() {
                        match previous {
                            None => {
                                self.remove_edge(&f, &t);
                            }
                            Some(kind) => {
                                let _ = self.add_edge(&f, &t, kind);
                            }
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(fresh)
    }

    // Kahn's algorithm over graph + batch. On success the batch is committed and every node
    // gets the position it has in the new order; on a cycle nothing changes and the caller
    // falls back to edge-by-edge insertion to name the first offending edge.
    fn add_edges_by_sort(&mut self, edges: &[(K, K, EdgeKind)]) -> Option<usize> {
        let mut extra: AHashMap<Ix, Vec<Ix>> = AHashMap::new();
        let mut indeg: Vec<u32> = vec![0; self.slots.len()];
        for (ix, slot) in self.slots.iter().enumerate() {
            if let Some(node) = slot {
                indeg[ix] = node.inc.len() as u32;
            }
        }
        let mut fresh = 0usize;
        let mut seen_batch: AHashMap<(Ix, Ix), ()> = AHashMap::new();
        for (from, to, _) in edges {
            let (x, y) = (self.index[from], self.index[to]);
            if x == y {
                return None;
            }
            if self.kinds.contains_key(&(x, y)) || seen_batch.insert((x, y), ()).is_some() {
                continue;
            }
            extra.entry(x).or_default().push(y);
            indeg[y as usize] += 1;
            fresh += 1;
        }
        // Seed in current order so unrelated nodes keep their relative positions.
        let mut live: Vec<Ix> = self.index.values().copied().collect();
        live.sort_unstable_by_key(|&n| self.node(n).ord);
        let mut queue: VecDeque<Ix> = live
            .iter()
            .copied()
            .filter(|&n| indeg[n as usize] == 0)
            .collect();
        let mut order = Vec::with_capacity(live.len());
        while let Some(n) = queue.pop_front() {
            order.push(n);
            let succs = self
                .node(n)
                .out
                .iter()
                .chain(extra.get(&n).into_iter().flatten());
            for &s in succs {
                indeg[s as usize] -= 1;
                if indeg[s as usize] == 0 {
                    queue.push_back(s);
                }
            }
        }
        if order.len() != live.len() {
            return None;
        }
        for (pos, n) in order.into_iter().enumerate() {
            self.node_mut(n).ord = pos as u64;
        }
        self.next_ord = live.len() as u64;
        for (from, to, kind) in edges {
            let (x, y) = (self.index[from], self.index[to]);
            if self.kinds.insert((x, y), kind.clone()).is_none() {
                self.node_mut(x).out.push(y);
                self.node_mut(y).inc.push(x);
            }
        }
        Some(fresh)
    }

    /// Removes `from -> to`; returns false if there was no such edge.
    pub fn remove_edge(&mut self, from: &K, to: &K) -> bool {
        let (Some(&x), Some(&y)) = (self.index.get(from), self.index.get(to)) else {
            return false;
        };
        if self.kinds.remove(&(x, y)).is_none() {
            return false;
        }
        detach(&mut self.node_mut(x).out, y);
        detach(&mut self.node_mut(y).inc, x);
        true
    }

    /// Removes every edge into and out of `key`, keeping the node. Returns how many went.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] if `key` is not a node.
    pub fn clear_edges(&mut self, key: &K) -> Result<usize, GraphError<K>> {
        let ix = self.ix(key)?;
        let node = self.node_mut(ix);
        let out = std::mem::take(&mut node.out);
        let inc = std::mem::take(&mut node.inc);
        for &s in &out {
            self.kinds.remove(&(ix, s));
            detach(&mut self.node_mut(s).inc, ix);
        }
        for &p in &inc {
            self.kinds.remove(&(p, ix));
            detach(&mut self.node_mut(p).out, ix);
        }
        Ok(out.len() + inc.len())
    }

    /// The kind of edge `from -> to`, if present.
    pub fn edge_kind(&self, from: &K, to: &K) -> Option<&EdgeKind> {
        let (x, y) = (self.index.get(from)?, self.index.get(to)?);
        self.kinds.get(&(*x, *y))
    }

    /// Direct dependencies of `key` (the nodes it is computed from), in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn dependencies(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        Ok(self.keys_in_order(self.node(ix).inc.clone()))
    }

    /// Direct dependents of `key` (the nodes computed from it), in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn dependents(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        Ok(self.keys_in_order(self.node(ix).out.clone()))
    }

    /// Every node `key` transitively depends on, in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn upstream(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        let reached = self.reach(&[ix], |n| &n.inc);
        Ok(self.keys_in_order(reached.into_iter().filter(|&n| n != ix).collect()))
    }

    /// Every node transitively computed from `key`, in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn downstream(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        let reached = self.reach(&[ix], |n| &n.out);
        Ok(self.keys_in_order(reached.into_iter().filter(|&n| n != ix).collect()))
    }

    /// `changed` followed by everything downstream of it, in a valid topological order:
    /// the order in which to recompute after `changed` was written.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn update_order(&self, changed: &K) -> Result<Vec<K>, GraphError<K>> {
        self.update_order_batch(std::slice::from_ref(changed))
    }

    /// The union of the changed nodes and their downstream, each once, in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] for the first unknown key.
    pub fn update_order_batch(&self, changed: &[K]) -> Result<Vec<K>, GraphError<K>> {
        let starts = changed
            .iter()
            .map(|k| self.ix(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.keys_in_order(self.reach(&starts, |n| &n.out)))
    }

    /// True if `to` is reachable from `from` (a node reaches itself).
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn reaches(&self, from: &K, to: &K) -> Result<bool, GraphError<K>> {
        Ok(self.path(from, to)?.is_some())
    }

    /// A shortest path `[from, ..., to]` along edges, if one exists.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn path(&self, from: &K, to: &K) -> Result<Option<Vec<K>>, GraphError<K>> {
        let (x, y) = (self.ix(from)?, self.ix(to)?);
        if x == y {
            return Ok(Some(vec![from.clone()]));
        }
        let mut parent: AHashMap<Ix, Ix> = AHashMap::new();
        let mut queue = VecDeque::from([x]);
        parent.insert(x, x);
        let target_ord = self.node(y).ord;
        while let Some(n) = queue.pop_front() {
            for &s in &self.node(n).out {
                // Positions only grow along edges, so nothing past `to` can lead back to it.
                if parent.contains_key(&s) || self.node(s).ord > target_ord {
                    continue;
                }
                parent.insert(s, n);
                if s == y {
                    let mut path = vec![y];
                    let mut cur = y;
                    while cur != x {
                        cur = parent[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    return Ok(Some(
                        path.into_iter().map(|n| self.node(n).key.clone()).collect(),
                    ));
                }
                queue.push_back(s);
            }
        }
        Ok(None)
    }

    /// The cycle `[to, ..., from, to]` that adding `from -> to` would close, if any.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn cycle_path(&self, from: &K, to: &K) -> Result<Option<Vec<K>>, GraphError<K>> {
        Ok(self.path(to, from)?.map(|mut path| {
            path.push(to.clone());
            path
        }))
    }

    /// Every node in topological order.
    pub fn topological_order(&self) -> Vec<K> {
        self.keys_in_order(self.index.values().copied().collect())
    }

    /// Every edge as `(from, to, kind)`, sources in topological order.
    pub fn edges(&self) -> Vec<(K, K, EdgeKind)> {
        let mut nodes: Vec<Ix> = self.index.values().copied().collect();
        nodes.sort_unstable_by_key(|&n| self.node(n).ord);
        let mut out = Vec::with_capacity(self.kinds.len());
        for x in nodes {
            let mut succs = self.node(x).out.clone();
            succs.sort_unstable_by_key(|&s| self.node(s).ord);
            for y in succs {
                out.push((
                    self.node(x).key.clone(),
                    self.node(y).key.clone(),
                    self.kinds[&(x, y)].clone(),
                ));
            }
        }
        out
    }

    /// A serializable image of the graph.
    pub fn snapshot(&self) -> GraphSnapshot<K> {
        GraphSnapshot {
            nodes: self.topological_order(),
            edges: self.edges(),
        }
    }

    /// Rebuilds a graph from a snapshot, re-checking that it is acyclic.
    ///
    /// # Errors
    /// [`GraphError::NodeExists`] for a repeated node, [`GraphError::UnknownNode`] for an edge
    /// to a node not listed, [`GraphError::Cycle`] if the edges contain a cycle.
    pub fn restore(snapshot: &GraphSnapshot<K>) -> Result<Self, GraphError<K>> {
        let mut graph = Self::new();
        for node in &snapshot.nodes {
            if !graph.add_node(node.clone()) {
                return Err(GraphError::NodeExists(node.clone()));
            }
        }
        graph.add_edges(&snapshot.edges)?;
        Ok(graph)
    }

    /// Graphviz DOT text; `label` renders a node id.
    pub fn to_dot(&self, label: impl Fn(&K) -> String) -> String {
        let mut nodes: Vec<Ix> = self.index.values().copied().collect();
        nodes.sort_unstable_by_key(|&n| self.node(n).ord);
        let mut dot = String::from("digraph dependencies {\n  rankdir=LR;\n");
        for &n in &nodes {
            let _ = writeln!(
                dot,
                "  n{n} [label={}];",
                dot_quote(&label(&self.node(n).key))
            );
        }
        for (from, to, kind) in self.edges() {
            let _ = writeln!(
                dot,
                "  n{} -> n{} [label={}];",
                self.index[&from],
                self.index[&to],
                dot_quote(kind.name())
            );
        }
        dot.push_str("}\n");
        dot
    }

    fn reach(&self, starts: &[Ix], next: impl Fn(&Node<K>) -> &Vec<Ix>) -> Vec<Ix> {
        let mut seen: AHashMap<Ix, ()> = AHashMap::with_capacity(starts.len() * 4);
        let mut stack: Vec<Ix> = Vec::new();
        for &s in starts {
            if seen.insert(s, ()).is_none() {
                stack.push(s);
            }
        }
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            out.push(n);
            for &s in next(self.node(n)) {
                if seen.insert(s, ()).is_none() {
                    stack.push(s);
                }
            }
        }
        out
    }

    fn keys_in_order(&self, mut ixs: Vec<Ix>) -> Vec<K> {
        ixs.sort_unstable_by_key(|&n| self.node(n).ord);
        ixs.into_iter().map(|n| self.node(n).key.clone()).collect()
    }

    /// Checks the internal invariants (every edge agrees with the order, indexes match).
    /// Meant for tests; O(V + E).
    pub fn check_invariants(&self) -> bool {
        let mut ords = std::collections::HashSet::new();
        for (key, &ix) in &self.index {
            let Some(node) = self.slots.get(ix as usize).and_then(|s| s.as_ref()) else {
                return false;
            };
            if &node.key != key || !ords.insert(node.ord) {
                return false;
            }
            for &s in &node.out {
                if self.node(s).ord <= node.ord || !self.kinds.contains_key(&(ix, s)) {
                    return false;
                }
            }
        }
        let out_total: usize = self.index.values().map(|&ix| self.node(ix).out.len()).sum();
        out_total == self.kinds.len()
    }
}

fn detach(list: &mut Vec<Ix>, item: Ix) {
    if let Some(pos) = list.iter().position(|&x| x == item) {
        list.swap_remove(pos);
    }
}

fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
