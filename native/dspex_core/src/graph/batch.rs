//! Inserting many edges at once, all or nothing: edge by edge with the memory of each asked
//! for a few edges ahead, or, when that fights the current order, one topological sort of
//! the graph and the batch together.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;

use super::{BatchOutcome, DependencyGraph, EdgeKind, GraphError, Ix, BATCH_AHEAD, DATA, MIDDLE};
use crate::prefetch;

impl<K: Eq + Hash + Clone> DependencyGraph<K> {
    /// Adds many edges, all or nothing.
    ///
    /// The edges go in one by one, in input order, each one's memory asked for a few edges
    /// ahead (faster than as many [`add_edge`](Self::add_edge) calls). A batch that makes
    /// re-ordering visit more than a few times as many nodes as graph and batch hold is
    /// undone and checked instead with one topological sort over the whole graph plus the
    /// batch, so no batch costs more than linear time on top of that budget.
    ///
    /// # Errors
    /// As [`add_edge`](Self::add_edge), for the first edge (in input order) that fails given
    /// the edges before it; the graph is then unchanged.
    pub fn add_edges(&mut self, edges: &[(K, K, EdgeKind)]) -> Result<usize, GraphError<K>> {
        self.add_edges_by(edges.iter().map(|(f, t, k)| (f, t, k.clone())))
    }

    /// [`add_edges`](Self::add_edges) for edges given by an iterator, with the ids in any
    /// borrowed form of `K` (as [`add_edge`](Self::add_edge)), so a caller decoding a large
    /// batch need build neither an owned key per id nor a list of the edges.
    ///
    /// ```
    /// use dspex_core::graph::{DependencyGraph, EdgeKind};
    ///
    /// let mut g: DependencyGraph<String> = DependencyGraph::new();
    /// for v in ["a", "b", "c"] {
    ///     g.add_node(v.to_string());
    /// }
    /// let pairs = [("a", "b"), ("b", "c")];
    /// let added = g.add_edges_by(pairs.iter().map(|&(f, t)| (f, t, EdgeKind::Data)));
    /// assert_eq!(added, Ok(2));
    /// ```
    ///
    /// # Errors
    /// As [`add_edges`](Self::add_edges).
    pub fn add_edges_by<'q, Q>(
        &mut self,
        edges: impl IntoIterator<Item = (&'q Q, &'q Q, EdgeKind)>,
    ) -> Result<usize, GraphError<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'q,
        Q::Owned: Into<K>,
    {
        let resolved = self.resolve_batch(edges)?;
        // Edge by edge, each one's lines asked for a few edges ahead: on the usual batch
        // this beats sorting the whole graph. Re-ordering work beyond a few times the
        // graph's size means the batch fights the current order: it is undone, and one
        // topological sort of graph and batch together settles it in linear time.
        let budget = 4 * (self.node_count() + self.edge_count() + resolved.len()) as u64;
        match self.insert_batch(&resolved, Some(budget)) {
            BatchOutcome::Added(added) => Ok(added),
            BatchOutcome::Failed(err) => Err(err),
            BatchOutcome::OverBudget => self.sort_in(&resolved),
        }
    }

    /// [`add_edges`](Self::add_edges) by one topological sort of the whole graph plus the
    /// batch: linear time in their size, whatever order the batch comes in.
    /// [`add_edges`](Self::add_edges) turns to it by itself when inserting edge by edge
    /// goes over a budget; call it directly for a batch known to reverse much of the
    /// current order.
    ///
    /// ```
    /// use dspex_core::graph::{DependencyGraph, EdgeKind};
    ///
    /// let mut g: DependencyGraph<u32> = DependencyGraph::new();
    /// for v in 0..4 {
    ///     g.add_node(v);
    /// }
    /// // A chain against the order the nodes were added in, all the way.
    /// let chain = [(3, 2, EdgeKind::Data), (2, 1, EdgeKind::Data), (1, 0, EdgeKind::Data)];
    /// assert_eq!(g.add_edges_sorted(&chain), Ok(3));
    /// assert_eq!(g.topological_order(), vec![3, 2, 1, 0]);
    /// ```
    ///
    /// # Errors
    /// As [`add_edges`](Self::add_edges).
    pub fn add_edges_sorted(&mut self, edges: &[(K, K, EdgeKind)]) -> Result<usize, GraphError<K>> {
        let resolved = self.resolve_batch(edges.iter().map(|(f, t, k)| (f, t, k.clone())))?;
        self.sort_in(&resolved)
    }

    pub(super) fn sort_in(&mut self, resolved: &[(Ix, Ix, u16)]) -> Result<usize, GraphError<K>> {
        match self.add_edges_by_sort(resolved) {
            Some(added) => Ok(added),
            // A cycle: the edge that closes it first, in input order, is the one to name.
            None => match self.insert_batch(resolved, None) {
                BatchOutcome::Failed(err) => Err(err),
                BatchOutcome::Added(_) | BatchOutcome::OverBudget => {
                    unreachable!("the sort found a cycle among these edges")
                }
            },
        }
    }

    // Every id of a batch to its slot, in input order; an unknown id fails the batch before
    // anything changes. The ids' first slots are asked for a few edges ahead.
    pub(super) fn resolve_batch<'q, Q>(
        &mut self,
        edges: impl IntoIterator<Item = (&'q Q, &'q Q, EdgeKind)>,
    ) -> Result<Vec<(Ix, Ix, u16)>, GraphError<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'q,
        Q::Owned: Into<K>,
    {
        let mut edges = edges.into_iter();
        let mut resolved = Vec::with_capacity(edges.size_hint().0);
        let mut ahead: VecDeque<(&Q, &Q, u16, u64, u64)> = VecDeque::with_capacity(BATCH_AHEAD);
        loop {
            while ahead.len() < BATCH_AHEAD {
                let Some((from, to, kind)) = edges.next() else {
                    break;
                };
                let (from_hash, to_hash) = (self.slots.hash(from), self.slots.hash(to));
                self.prefetch_lookup(from_hash);
                self.prefetch_lookup(to_hash);
                ahead.push_back((from, to, self.labels.id(kind), from_hash, to_hash));
            }
            let Some((from, to, label, from_hash, to_hash)) = ahead.pop_front() else {
                return Ok(resolved);
            };
            resolved.push((
                self.ix_hashed(from, from_hash)?,
                self.ix_hashed(to, to_hash)?,
                label,
            ));
        }
    }

    // Inserts resolved edges one by one in input order, asking for each one's lines a few
    // edges ahead. On a failure, or once re-ordering has visited more than `budget` nodes,
    // every change is undone (removing edges keeps any topological order valid).
    pub(super) fn insert_batch(
        &mut self,
        edges: &[(Ix, Ix, u16)],
        budget: Option<u64>,
    ) -> BatchOutcome<K> {
        let visited_before = self.visited;
        // What to undo: new edges go, re-labelled ones get their kind back.
        let mut undo: Vec<(Ix, Ix, Option<u16>)> = Vec::with_capacity(edges.len());
        let mut fresh = 0;
        for (i, &(x, y, label)) in edges.iter().enumerate() {
            if let Some(&(ax, ay, _)) = edges.get(i + BATCH_AHEAD) {
                prefetch::read(&self.adj[ax as usize]);
                prefetch::read(&self.adj[ay as usize]);
            }
            let previous = self.has_edge(x, y).then(|| self.label_of(x, y));
            let outcome = match self.add_edge_ix(x, y, label) {
                Ok(is_new) => {
                    fresh += usize::from(is_new);
                    undo.push((x, y, previous));
                    match budget {
                        Some(budget) if self.visited - visited_before > budget => {
                            BatchOutcome::OverBudget
                        }
                        _ => continue,
                    }
                }
                Err(err) => BatchOutcome::Failed(err),
            };
            for (ux, uy, previous) in undo.into_iter().rev() {
                match previous {
                    None => {
                        self.unlink(ux, uy);
                    }
                    Some(old) => self.set_label(ux, uy, old),
                }
            }
            return outcome;
        }
        BatchOutcome::Added(fresh)
    }

    // Kahn's algorithm over graph + batch. On success the batch is committed and every node
    // gets the position it has in the new order; on a cycle nothing changes and the caller
    // falls back to edge-by-edge insertion to name the first offending edge.
    pub(super) fn add_edges_by_sort(&mut self, edges: &[(Ix, Ix, u16)]) -> Option<usize> {
        let n = self.keys.len();
        // Grouped by source with a counting sort, which keeps input order within a group (of
        // two entries for one edge the later sets its kind), so the passes below walk the
        // nodes' edge lines in slot order instead of at random.
        let mut group_start = vec![0u32; n + 1];
        for &(x, _, _) in edges {
            group_start[x as usize + 1] += 1;
        }
        for i in 0..n {
            group_start[i + 1] += group_start[i];
        }
        let mut by_source = vec![(0, 0, DATA); edges.len()];
        let mut fill = group_start.clone();
        for &edge in edges {
            let at = &mut fill[edge.0 as usize];
            by_source[*at as usize] = edge;
            *at += 1;
        }
        // The new edges in compressed rows by source: the targets of x are
        // fresh[start[x]..start[x + 1]]. A target seen twice in one group is new once.
        let mut fresh: Vec<(Ix, Ix)> = Vec::with_capacity(edges.len());
        let mut start = vec![0u32; n + 1];
        let mut indeg = vec![0u32; n];
        for x in 0..n {
            let group = &by_source[group_start[x] as usize..group_start[x + 1] as usize];
            if !group.is_empty() {
                let epoch = self.next_epoch();
                for &(_, y, _) in group {
                    if x == y as usize {
                        return None;
                    }
                    if self.mark[y as usize] != epoch && !self.has_edge(x as Ix, y) {
                        self.mark[y as usize] = epoch;
                        fresh.push((x as Ix, y));
                        indeg[y as usize] += 1;
                    }
                }
            }
            start[x + 1] = fresh.len() as u32;
        }
        for (ix, adj) in self.adj.iter().enumerate() {
            indeg[ix] += adj.inc().len() as u32;
        }
        // Seed in current order so unrelated nodes keep their relative positions.
        let mut live: Vec<Ix> = self.live().collect();
        live.sort_unstable_by_key(|&v| self.adj[v as usize].ord);
        let mut queue: VecDeque<Ix> = live
            .iter()
            .copied()
            .filter(|&v| indeg[v as usize] == 0)
            .collect();
        let mut order = Vec::with_capacity(live.len());
        while let Some(v) = queue.pop_front() {
            order.push(v);
            let extra = &fresh[start[v as usize] as usize..start[v as usize + 1] as usize];
            let succs = self.adj[v as usize]
                .out()
                .iter()
                .chain(extra.iter().map(|e| &e.1));
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
        self.front = MIDDLE;
        self.back = MIDDLE;
        for v in order {
            self.adj[v as usize].ord = self.last_ord();
        }
        // Out-lines in source order, then in-lines in target order.
        for &(x, y, label) in &by_source {
            if !self.has_edge(x, y) {
                self.adj[x as usize].push_out(y);
                self.edge_total += 1;
            }
            self.set_label(x, y, label);
        }
        let mut by_target: Vec<(Ix, Ix)> = fresh.iter().map(|&(x, y)| (y, x)).collect();
        by_target.sort_unstable();
        for (y, x) in by_target {
            self.adj[y as usize].push_inc(x);
        }
        Some(fresh.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Chains of `len` nodes, each linked from the end of the next one, in an order that
    // makes every link re-order all the chains linked before it.
    fn chains_linked_backwards(
        chains: u32,
        len: u32,
    ) -> (DependencyGraph<u32>, Vec<(u32, u32, EdgeKind)>) {
        let mut g = DependencyGraph::new();
        for v in 0..chains * len {
            g.add_node(v);
        }
        let mut batch = Vec::new();
        for c in 0..chains {
            for i in 0..len - 1 {
                batch.push((c * len + i, c * len + i + 1, EdgeKind::Data));
            }
        }
        for c in (1..chains).rev() {
            batch.push((c * len + len - 1, (c - 1) * len, EdgeKind::Data));
        }
        (g, batch)
    }

    #[test]
    fn a_batch_over_its_budget_is_sorted_instead() {
        let (mut g, batch) = chains_linked_backwards(60, 10);
        let budget = 4 * (g.node_count() + batch.len()) as u64;
        assert_eq!(g.add_edges(&batch), Ok(batch.len()));
        // The edge-by-edge pass gave up as soon as it went over its budget (one insert
        // visits at most every node), and sorting finished the job.
        assert!(g.visited > budget && g.visited <= budget + g.node_count() as u64);
        assert!(g.check_invariants());
        assert_eq!(g.edge_count(), batch.len());
        // The last chain now comes first.
        assert_eq!(g.topological_order()[0], 590);
    }

    #[test]
    fn a_batch_over_its_budget_names_its_first_cycle_in_input_order() {
        let (mut g, mut batch) = chains_linked_backwards(60, 10);
        // Two edges that each close a cycle given the chains and links before them.
        batch.push((9, 590, EdgeKind::Data));
        batch.push((5, 3, EdgeKind::Data));
        match g.add_edges(&batch) {
            Err(GraphError::Cycle(path)) => {
                assert_eq!((path.first(), path.last()), (Some(&590), Some(&590)));
                assert!(path.contains(&9));
            }
            other => panic!("expected the cycle through 9 -> 590, got {other:?}"),
        }
        assert_eq!(g.edge_count(), 0);
        assert!(g.check_invariants());
    }
}
