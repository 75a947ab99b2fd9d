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
use std::hash::Hash;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

// The graph's concerns, each an `impl` block of its own: inserting one edge in order,
// inserting a batch, reading, DOT output; storage is `slot_table` (where a node is) and
// `node_line` (its position and edges).
mod batch;
mod dot;
mod node_line;
mod ordering;
mod queries;
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

    // Prefetching is explicit: lookups never ask for memory by themselves. A caller that
    // knows the ids it will look up next asks for what those lookups read first, so that
    // the cache misses of several lookups overlap instead of following one another.

    // What finding an id of this hash reads first: its first slot's control byte and key.
    #[inline(always)]
    fn prefetch_lookup(&self, hash: u64) {
        if let Some(slot) = self.slots.first_slot(hash) {
            self.slots.prefetch(slot);
            prefetch::read(&self.keys[slot]);
        }
    }

    // That, and the node's line (position and edges), which an insert reads next.
    #[inline(always)]
    fn prefetch_node(&self, hash: u64) {
        if let Some(slot) = self.slots.first_slot(hash) {
            self.slots.prefetch(slot);
            prefetch::read(&self.keys[slot]);
            prefetch::read(&self.adj[slot]);
        }
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
