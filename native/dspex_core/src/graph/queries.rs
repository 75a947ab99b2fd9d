//! Reading the graph: neighbours, transitive sets in topological order, paths, the whole
//! order and edge list, snapshots.

use std::collections::VecDeque;
use std::hash::Hash;

use ahash::AHashMap;

use super::{DependencyGraph, EdgeKind, GraphError, GraphSnapshot, Ix, NodeLine};

impl<K: Eq + Hash + Clone> DependencyGraph<K> {
    /// The kind of edge `from -> to`, if present.
    pub fn edge_kind(&self, from: &K, to: &K) -> Option<&EdgeKind> {
        let (x, y) = (self.find(from)?, self.find(to)?);
        self.has_edge(x, y)
            .then(|| self.labels.get(self.label_of(x, y)))
    }

    /// Direct dependencies of `key` (the nodes it is computed from), in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn dependencies(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        Ok(self.keys_in_order(self.adj[ix as usize].inc().to_vec()))
    }

    /// Direct dependents of `key` (the nodes computed from it), in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn dependents(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        Ok(self.keys_in_order(self.adj[ix as usize].out().to_vec()))
    }

    /// Whether anything is computed from `key` (false for an unknown key); allocates nothing.
    pub fn has_dependents(&self, key: &K) -> bool {
        self.find(key)
            .is_some_and(|ix| !self.adj[ix as usize].out().is_empty())
    }

    /// Every node `key` transitively depends on, in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn upstream(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        let reached = self.reach(&[ix], |a| a.inc());
        Ok(self.keys_in_order(reached.into_iter().filter(|&n| n != ix).collect()))
    }

    /// Every node transitively computed from `key`, in topological order.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`].
    pub fn downstream(&self, key: &K) -> Result<Vec<K>, GraphError<K>> {
        let ix = self.ix(key)?;
        let reached = self.reach(&[ix], |a| a.out());
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
        Ok(self
            .update_order_refs(changed)?
            .into_iter()
            .cloned()
            .collect())
    }

    /// [`update_order_batch`](Self::update_order_batch) without cloning the ids.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] for the first unknown key.
    pub fn update_order_refs(&self, changed: &[K]) -> Result<Vec<&K>, GraphError<K>> {
        let starts = changed
            .iter()
            .map(|k| self.ix(k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut reached = self.reach(&starts, |a| a.out());
        reached.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        Ok(reached.into_iter().map(|n| self.key(n)).collect())
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
        let target_ord = self.adj[y as usize].ord;
        while let Some(n) = queue.pop_front() {
            for &s in self.adj[n as usize].out() {
                // Positions only grow along edges, so nothing past `to` can lead back to it.
                if parent.contains_key(&s) || self.adj[s as usize].ord > target_ord {
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
                        path.into_iter().map(|n| self.key(n).clone()).collect(),
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
        self.keys_in_order(self.live().collect())
    }

    /// Every edge as `(from, to, kind)`, sources in topological order.
    pub fn edges(&self) -> Vec<(K, K, EdgeKind)> {
        let mut nodes: Vec<Ix> = self.live().collect();
        nodes.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        let mut out = Vec::with_capacity(self.edge_total);
        for x in nodes {
            let mut succs = self.adj[x as usize].out().to_vec();
            succs.sort_unstable_by_key(|&s| self.adj[s as usize].ord);
            for y in succs {
                out.push((
                    self.key(x).clone(),
                    self.key(y).clone(),
                    self.labels.get(self.label_of(x, y)).clone(),
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

    pub(super) fn reach(&self, starts: &[Ix], next: impl Fn(&NodeLine) -> &[Ix]) -> Vec<Ix> {
        // A bitset over slots: one small zeroed allocation beats hashing every visit.
        let mut seen = vec![0u64; self.keys.len().div_ceil(64)];
        let mut visit = |ix: Ix| {
            let (word, bit) = (ix as usize / 64, 1u64 << (ix % 64));
            let fresh = seen[word] & bit == 0;
            seen[word] |= bit;
            fresh
        };
        let mut stack: Vec<Ix> = starts.iter().copied().filter(|&s| visit(s)).collect();
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            out.push(n);
            for &s in next(&self.adj[n as usize]) {
                if visit(s) {
                    stack.push(s);
                }
            }
        }
        out
    }

    pub(super) fn keys_in_order(&self, mut ixs: Vec<Ix>) -> Vec<K> {
        ixs.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        ixs.into_iter().map(|n| self.key(n).clone()).collect()
    }
}
