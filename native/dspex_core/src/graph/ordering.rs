//! Inserting one edge while keeping the topological order valid (Pearce and Kelly): the
//! common cases in O(1), otherwise a search of the affected region only.

use std::borrow::Borrow;
use std::hash::Hash;

use super::{DependencyGraph, EdgeKind, GraphError, Ix, Scratch};
use crate::prefetch;

impl<K: Eq + Hash + Clone> DependencyGraph<K> {
    /// Adds `from -> to` (`to` depends on `from`). Adding an existing edge updates its kind.
    ///
    /// Returns `Ok(true)` when the edge is new.
    ///
    /// The ids may be given in any borrowed form of `K` (`&str` for `String` keys, a byte
    /// slice for byte keys), so a caller holding borrowed ids need not allocate.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] if either end is missing; [`GraphError::Cycle`] with the
    /// path `[to, ..., from, to]` if the edge would close a cycle (including `from == to`).
    pub fn add_edge<Q>(&mut self, from: &Q, to: &Q, kind: EdgeKind) -> Result<bool, GraphError<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        // Both ends' first slots are known from the hashes alone: ask for their control
        // bytes, keys, positions and edges at once, so the cache misses of the two ends
        // overlap instead of following one another.
        let (from_hash, to_hash) = (self.slots.hash(from), self.slots.hash(to));
        self.prefetch_node(from_hash);
        self.prefetch_node(to_hash);
        let x = self.ix_hashed(from, from_hash)?;
        let y = self.ix_hashed(to, to_hash)?;
        let label = self.labels.id(kind);
        self.add_edge_ix(x, y, label)
    }

    pub(super) fn add_edge_ix(&mut self, x: Ix, y: Ix, label: u16) -> Result<bool, GraphError<K>> {
        if x == y {
            let key = self.key(x).clone();
            return Err(GraphError::Cycle(vec![key.clone(), key]));
        }
        if self.has_edge(x, y) {
            self.set_label(x, y, label);
            return Ok(false);
        }
        let (lb, ub) = (self.adj[y as usize].ord, self.adj[x as usize].ord);
        if lb < ub {
            // A node with no successors may move to the end of the order, and one with no
            // predecessors to the front, without a search: nothing that must stay on the
            // other side of it exists, and the edge cannot close a cycle. Building the
            // benchmark's graph, two thirds of the edges against the order are of this kind.
            if self.adj[y as usize].out().is_empty() {
                self.adj[y as usize].ord = self.last_ord();
            } else if self.adj[x as usize].inc().is_empty() {
                self.adj[x as usize].ord = self.first_ord();
            } else {
                self.reorder(x, y, lb, ub)?;
            }
        }
        self.link(x, y, label);
        Ok(true)
    }

    // Pearce-Kelly: the edge x -> y violates the order (ord[y] < ord[x]). Collect the nodes
    // reachable from y with ord below ord[x] (forward) and the nodes reaching x with ord
    // above ord[y] (backward), then give the backward set the lowest of their combined
    // positions and the forward set the highest, each keeping its relative order.
    pub(super) fn reorder(&mut self, x: Ix, y: Ix, lb: u64, ub: u64) -> Result<(), GraphError<K>> {
        let epoch = self.next_epoch();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        // Both searches begin at an end whose line is in cache: ask for the marks and lines
        // (positions and edges) of both ends' neighbours now, before either search waits.
        for &n in self.adj[y as usize]
            .out()
            .iter()
            .chain(self.adj[x as usize].inc())
        {
            prefetch::read(&self.mark[n as usize]);
            prefetch::read(&self.adj[n as usize]);
        }
        let found_cycle = {
            let (adj, mark) = (&self.adj, &mut self.mark);
            let Scratch {
                forward,
                backward,
                stack,
                ..
            } = &mut scratch;
            stack.push(y);
            mark[y as usize] = epoch;
            let mut found = false;
            'search: while let Some(n) = stack.pop() {
                forward.push(n);
                // Whichever successor the search looks at, its line is on its way.
                for &s in adj[n as usize].out() {
                    prefetch::read(&adj[s as usize]);
                }
                for &s in adj[n as usize].out() {
                    if s == x {
                        found = true;
                        break 'search;
                    }
                    if mark[s as usize] != epoch && adj[s as usize].ord < ub {
                        mark[s as usize] = epoch;
                        stack.push(s);
                    }
                }
            }
            if !found {
                stack.clear();
                stack.push(x);
                mark[x as usize] = epoch;
                while let Some(n) = stack.pop() {
                    backward.push(n);
                    for &p in adj[n as usize].inc() {
                        prefetch::read(&adj[p as usize]);
                    }
                    for &p in adj[n as usize].inc() {
                        if mark[p as usize] != epoch && adj[p as usize].ord > lb {
                            mark[p as usize] = epoch;
                            stack.push(p);
                        }
                    }
                }
            }
            found
        };
        self.visited += (scratch.forward.len() + scratch.backward.len()) as u64;
        if found_cycle {
            self.scratch = scratch;
            let to = self.key(y).clone();
            let from = self.key(x).clone();
            let path = self
                .cycle_path(&from, &to)
                .ok()
                .flatten()
                .expect("the forward search reached `from`");
            return Err(GraphError::Cycle(path));
        }
        let Scratch {
            forward,
            backward,
            positions,
            ..
        } = &mut scratch;
        let adj = &mut self.adj;
        forward.sort_unstable_by_key(|&n| adj[n as usize].ord);
        backward.sort_unstable_by_key(|&n| adj[n as usize].ord);
        positions.extend(
            forward
                .iter()
                .chain(backward.iter())
                .map(|&n| adj[n as usize].ord),
        );
        positions.sort_unstable();
        for (&n, &pos) in backward.iter().chain(forward.iter()).zip(positions.iter()) {
            adj[n as usize].ord = pos;
        }
        self.scratch = scratch;
        Ok(())
    }
}
