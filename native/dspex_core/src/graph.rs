//! A dependency DAG that refuses cycles, kept in topological order incrementally.
//!
//! Nodes are variable ids (any `K: Eq + Hash + Clone`); an edge `from -> to` means "`to` is
//! computed from `from`", so values flow along the edges and [`DependencyGraph::update_order`]
//! follows them.
//!
//! Every node carries a position in a topological order that is kept valid on every insert
//! (the dynamic topological sort of Pearce and Kelly). An edge that already agrees with the
//! order costs O(1), which is the common case of a new variable depending on existing ones;
//! so does one into a node that has no successors yet, or out of one that has no
//! predecessors yet, since that node can move to the end (or the front) of the order.
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

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::Hash;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

mod node_line;
mod slot_table;
use node_line::NodeLine;
use slot_table::SlotTable;

use crate::prefetch;

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

impl<K: std::fmt::Debug> std::fmt::Display for GraphError<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::Cycle(path) => write!(f, "the edge would create a cycle: {path:?}"),
            GraphError::UnknownNode(k) => write!(f, "no node {k:?}"),
            GraphError::NodeExists(k) => write!(f, "node {k:?} exists already"),
        }
    }
}

impl<K: std::fmt::Debug> std::error::Error for GraphError<K> {}

/// A serializable image of the graph (for snapshots and HA transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSnapshot<K> {
    /// Every node, in topological order.
    pub nodes: Vec<K>,
    /// Every edge as `(from, to, kind)`.
    pub edges: Vec<(K, K, EdgeKind)>,
}

type Ix = u32;

/// How many edges ahead a batch asks for the memory an edge will need.
const BATCH_AHEAD: usize = 8;

/// How a batch inserted edge by edge ended.
enum BatchOutcome<K> {
    /// Committed: this many edges were new.
    Added(usize),
    /// Undone: this edge failed, given the ones before it.
    Failed(GraphError<K>),
    /// Undone: re-ordering went over its budget.
    OverBudget,
}

/// Where positions start: new nodes and nodes moved to the end count up from here, nodes
/// moved to the front count down, and 2^62 moves either way outlast any graph.
const MIDDLE: u64 = 1 << 62;

/// Label id of [`EdgeKind::Data`]; edges of any other kind are listed in `kinds`.
const DATA: u16 = 0;

/// Edge kinds numbered by small ids, each kind once: `Data` is 0, `Compute` 1,
/// `Constraint` 2, then custom labels in the order they are first seen. The graph keeps an
/// edge's kind as its id; a caller holding many edges can do the same.
///
/// ```
/// use dspex_core::graph::{EdgeKind, EdgeLabels};
///
/// let mut labels = EdgeLabels::new();
/// let feeds = labels.id(EdgeKind::Custom("feeds".into()));
/// assert_eq!(labels.id(EdgeKind::Custom("feeds".into())), feeds);
/// assert_eq!(labels.id(EdgeKind::Data), 0);
/// assert_eq!(labels.get(feeds), &EdgeKind::Custom("feeds".into()));
/// ```
#[derive(Debug, Clone)]
pub struct EdgeLabels(Vec<EdgeKind>);

impl Default for EdgeLabels {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeLabels {
    /// The three built-in kinds.
    pub fn new() -> Self {
        EdgeLabels(vec![
            EdgeKind::Data,
            EdgeKind::Compute,
            EdgeKind::Constraint,
        ])
    }

    /// The id of `kind`, numbering it if it is new. Labels are few in practice; past
    /// `u16::MAX` of them the last one is reused.
    // Inlined so that a built-in kind, as every insert names one, costs a match.
    #[inline]
    pub fn id(&mut self, kind: EdgeKind) -> u16 {
        match kind {
            EdgeKind::Data => DATA,
            EdgeKind::Compute => 1,
            EdgeKind::Constraint => 2,
            custom => self.custom_id(custom),
        }
    }

    fn custom_id(&mut self, custom: EdgeKind) -> u16 {
        match self.0.iter().position(|l| *l == custom) {
            Some(i) => i as u16,
            None => {
                if self.0.len() <= usize::from(u16::MAX) {
                    self.0.push(custom);
                }
                (self.0.len() - 1) as u16
            }
        }
    }

    /// The kind numbered `id`.
    ///
    /// # Panics
    /// If no kind has that id.
    pub fn get(&self, id: u16) -> &EdgeKind {
        &self.0[usize::from(id)]
    }
}

/// A directed acyclic graph with an incrementally maintained topological order.
///
/// Nodes live in slots; a slot's key is kept apart from its position and edges (one
/// 64-byte line per node), because the hot paths (inserts, searches) read positions and
/// edges of many nodes and the keys of almost none. A node's slot is found from its id's
/// hash (open addressing with linear probing): no index maps ids to slots, so an insert
/// knows where both ends most likely are before it reads anything, and asks for all of it
/// at once.
#[derive(Debug, Clone)]
pub struct DependencyGraph<K> {
    // Indexed by slot: a node sits at the slot its id hashes to (`slot_table`).
    keys: Vec<Option<K>>,
    // Each node's position and edges.
    adj: Vec<NodeLine>,
    slots: SlotTable,
    labels: EdgeLabels,
    // The label of every edge that is not plain data; most edges are.
    kinds: AHashMap<(Ix, Ix), u16>,
    edge_total: usize,
    // Positions handed out so far lie in `front..back` (see `last_ord` and `first_ord`).
    front: u64,
    back: u64,
    // Scratch space reused across searches so inserts do not allocate per call.
    mark: Vec<u32>,
    epoch: u32,
    scratch: Scratch,
    // Nodes re-ordering has visited, ever: batches watch it to bound their work.
    visited: u64,
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    forward: Vec<Ix>,
    backward: Vec<Ix>,
    stack: Vec<Ix>,
    positions: Vec<u64>,
}

impl Scratch {
    fn clear(&mut self) {
        self.forward.clear();
        self.backward.clear();
        self.stack.clear();
        self.positions.clear();
    }
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
            keys: Vec::new(),
            adj: Vec::new(),
            slots: SlotTable::new(),
            labels: EdgeLabels::new(),
            kinds: AHashMap::new(),
            edge_total: 0,
            front: MIDDLE,
            back: MIDDLE,
            mark: Vec::new(),
            epoch: 0,
            scratch: Scratch::default(),
            visited: 0,
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.slots.len
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.edge_total
    }

    fn label_of(&self, x: Ix, y: Ix) -> u16 {
        if self.kinds.is_empty() {
            return DATA;
        }
        self.kinds.get(&(x, y)).copied().unwrap_or(DATA)
    }

    fn set_label(&mut self, x: Ix, y: Ix, label: u16) {
        if label == DATA {
            if !self.kinds.is_empty() {
                self.kinds.remove(&(x, y));
            }
        } else {
            self.kinds.insert((x, y), label);
        }
    }

    fn has_edge(&self, x: Ix, y: Ix) -> bool {
        self.adj[x as usize].out().contains(&y)
    }

    fn unlink(&mut self, x: Ix, y: Ix) -> bool {
        if !self.adj[x as usize].detach_out(y) {
            return false;
        }
        self.adj[y as usize].detach_inc(x);
        self.set_label(x, y, DATA);
        self.edge_total -= 1;
        true
    }

    fn link(&mut self, x: Ix, y: Ix, label: u16) {
        self.adj[x as usize].push_out(y);
        self.adj[y as usize].push_inc(x);
        self.set_label(x, y, label);
        self.edge_total += 1;
    }

    /// True if `key` is a node.
    pub fn contains(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    // The slot of `key` (any borrowed form of `K`), if it is a node.
    #[inline]
    fn find<Q>(&self, key: &Q) -> Option<Ix>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find_hashed(key, self.slots.hash(key))
    }

    #[inline]
    fn find_hashed<Q>(&self, key: &Q, hash: u64) -> Option<Ix>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let keys = &self.keys;
        self.slots
            .find(hash, |slot| {
                keys[slot].as_ref().is_some_and(|k| k.borrow() == key)
            })
            .map(|slot| slot as Ix)
    }

    // Every live slot, in slot order.
    fn live(&self) -> impl Iterator<Item = Ix> + '_ {
        self.slots.live().map(|slot| slot as Ix)
    }

    /// Adds a node at the end of the order; returns false (and changes nothing) if present.
    pub fn add_node(&mut self, key: K) -> bool {
        if self.find(&key).is_some() {
            return false;
        }
        if self.slots.is_full() {
            self.grow();
        }
        let slot = self.slots.claim(self.slots.hash(&key));
        self.keys[slot] = Some(key);
        self.adj[slot].ord = self.last_ord();
        true
    }

    // A position after every node's.
    fn last_ord(&mut self) -> u64 {
        let ord = self.back;
        self.back += 1;
        ord
    }

    // A position before every node's.
    fn first_ord(&mut self) -> u64 {
        self.front -= 1;
        self.front
    }

    // Moves every node to a table twice the size (or the same size when removals left
    // enough room) and renames the slots its edges name.
    fn grow(&mut self) {
        let old_capacity = self.keys.len();
        let capacity = if self.slots.len * 2 < old_capacity {
            old_capacity
        } else {
            (old_capacity * 2).max(16)
        };
        let mut slots = self.slots.emptied(capacity);
        let mut keys: Vec<Option<K>> = vec![None; capacity];
        let mut adj = vec![NodeLine::default(); capacity];
        let mut renamed = vec![Ix::MAX; old_capacity];
        for old in self.slots.live().collect::<Vec<_>>() {
            let key = self.keys[old].take().expect("live slots hold a key");
            let new = slots.claim(slots.hash(&key));
            renamed[old] = new as Ix;
            keys[new] = Some(key);
            adj[new] = std::mem::take(&mut self.adj[old]);
        }
        for line in &mut adj {
            for n in line.neighbours_mut() {
                *n = renamed[*n as usize];
            }
        }
        self.kinds = self
            .kinds
            .drain()
            .map(|((x, y), label)| ((renamed[x as usize], renamed[y as usize]), label))
            .collect();
        self.slots = slots;
        self.keys = keys;
        self.adj = adj;
        self.mark = vec![0; capacity];
    }

    /// Removes a node and every edge touching it; returns false if it was absent.
    pub fn remove_node(&mut self, key: &K) -> bool {
        let Some(ix) = self.find(key) else {
            return false;
        };
        self.clear_ix(ix);
        self.slots.release(ix as usize);
        self.keys[ix as usize] = None;
        // A freed slot keeps no heap memory.
        self.adj[ix as usize] = NodeLine::default();
        true
    }

    fn clear_ix(&mut self, ix: Ix) -> usize {
        let out = self.adj[ix as usize].out().to_vec();
        let inc = self.adj[ix as usize].inc().to_vec();
        for &y in &out {
            self.unlink(ix, y);
        }
        for &p in &inc {
            self.unlink(p, ix);
        }
        out.len() + inc.len()
    }

    // The slot of an id given in any borrowed form of `K`, or the error naming it.
    fn ix<Q>(&self, key: &Q) -> Result<Ix, GraphError<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        self.ix_hashed(key, self.slots.hash(key))
    }

    // `ix` for an id whose hash the caller already has.
    #[inline]
    fn ix_hashed<Q>(&self, key: &Q, hash: u64) -> Result<Ix, GraphError<K>>
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        self.find_hashed(key, hash)
            .ok_or_else(|| GraphError::UnknownNode(key.to_owned().into()))
    }

    fn key(&self, ix: Ix) -> &K {
        self.keys[ix as usize].as_ref().expect("live node")
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
        self.prefetch_first_slot(from_hash);
        self.prefetch_first_slot(to_hash);
        let x = self.ix_hashed(from, from_hash)?;
        let y = self.ix_hashed(to, to_hash)?;
        let label = self.labels.id(kind);
        self.add_edge_ix(x, y, label)
    }

    #[inline(always)]
    fn prefetch_first_slot(&self, hash: u64) {
        if let Some(slot) = self.slots.first_slot(hash) {
            prefetch::read(&self.keys[slot]);
            prefetch::read(&self.adj[slot]);
        }
    }

    fn add_edge_ix(&mut self, x: Ix, y: Ix, label: u16) -> Result<bool, GraphError<K>> {
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
    fn reorder(&mut self, x: Ix, y: Ix, lb: u64, ub: u64) -> Result<(), GraphError<K>> {
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

    fn sort_in(&mut self, resolved: &[(Ix, Ix, u16)]) -> Result<usize, GraphError<K>> {
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
    fn resolve_batch<'q, Q>(
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
                for hash in [from_hash, to_hash] {
                    if let Some(slot) = self.slots.first_slot(hash) {
                        prefetch::read(&self.keys[slot]);
                    }
                }
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
    fn insert_batch(&mut self, edges: &[(Ix, Ix, u16)], budget: Option<u64>) -> BatchOutcome<K> {
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
    fn add_edges_by_sort(&mut self, edges: &[(Ix, Ix, u16)]) -> Option<usize> {
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

    /// Removes `from -> to`; returns false if there was no such edge.
    pub fn remove_edge(&mut self, from: &K, to: &K) -> bool {
        match (self.find(from), self.find(to)) {
            (Some(x), Some(y)) => self.unlink(x, y),
            _ => false,
        }
    }

    /// Removes every edge into and out of `key`, keeping the node. Returns how many went.
    ///
    /// # Errors
    /// [`GraphError::UnknownNode`] if `key` is not a node.
    pub fn clear_edges(&mut self, key: &K) -> Result<usize, GraphError<K>> {
        let ix = self.ix(key)?;
        Ok(self.clear_ix(ix))
    }

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

    /// Graphviz DOT text; `label` renders a node id.
    pub fn to_dot(&self, label: impl Fn(&K) -> String) -> String {
        let mut nodes: Vec<Ix> = self.live().collect();
        nodes.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        let mut dot = String::from("digraph dependencies {\n  rankdir=LR;\n");
        for &n in &nodes {
            let _ = writeln!(dot, "  n{n} [label={}];", dot_quote(&label(self.key(n))));
        }
        for (from, to, kind) in self.edges() {
            let _ = writeln!(
                dot,
                "  n{} -> n{} [label={}];",
                self.find(&from).expect("an edge's source is a node"),
                self.find(&to).expect("an edge's target is a node"),
                dot_quote(kind.name())
            );
        }
        dot.push_str("}\n");
        dot
    }

    fn reach(&self, starts: &[Ix], next: impl Fn(&NodeLine) -> &[Ix]) -> Vec<Ix> {
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

    fn keys_in_order(&self, mut ixs: Vec<Ix>) -> Vec<K> {
        ixs.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        ixs.into_iter().map(|n| self.key(n).clone()).collect()
    }

    /// Checks the internal invariants (every edge agrees with the order, indexes match,
    /// labels only for edges that exist). Meant for tests; O(V + E).
    pub fn check_invariants(&self) -> bool {
        let mut ords = std::collections::HashSet::new();
        let live = self.keys.iter().filter(|k| k.is_some()).count();
        if live != self.slots.len {
            return false;
        }
        for ix in self.live() {
            let Some(key) = self.keys.get(ix as usize).and_then(|s| s.as_ref()) else {
                return false;
            };
            if self.find(key) != Some(ix) || !ords.insert(self.adj[ix as usize].ord) {
                return false;
            }
            for &s in self.adj[ix as usize].out() {
                let live = self.keys[s as usize].is_some();
                if !live
                    || self.adj[s as usize].ord <= self.adj[ix as usize].ord
                    || !self.adj[s as usize].inc().contains(&ix)
                {
                    return false;
                }
            }
        }
        let out_total: usize = self
            .live()
            .map(|ix| self.adj[ix as usize].out().len())
            .sum();
        let in_total: usize = self
            .live()
            .map(|ix| self.adj[ix as usize].inc().len())
            .sum();
        let labels_valid = self
            .kinds
            .iter()
            .all(|(&(x, y), &label)| label != DATA && self.has_edge(x, y));
        out_total == self.edge_total && in_total == self.edge_total && labels_valid
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
