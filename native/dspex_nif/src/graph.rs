//! Dependency graph NIFs (`dspex_core::graph`), over the graph of a session's core
//! (`session.rs`). All regular NIFs finish in microseconds on graphs of thousands of nodes,
//! except those marked DirtyCpu, which walk the whole graph.
//!
//! Live sessions publish their core in a directory keyed by session id
//! ([`registry::GRAPHS`]), so that a dependency call finds the graph inside the NIF. The
//! session's process changes variables and compute edges through `session_apply`; edges
//! added here by borrowed ids are the aggregate's unlogged writes, taken only while the
//! session's writes are not routed through its process.

use std::sync::atomic::Ordering;

use ahash::AHashMap;
use dspex_core::graph::{DependencyGraph, EdgeKind, EdgeLabels, GraphError};
use dspex_core::session::{Rejection, Session};
use rustler::{Encoder, Env, Error, NifResult, Term, TermType};

use crate::atoms::{self, atom_is};
use crate::hot_nif::hot_nif;
use crate::list::List;
use crate::registry;
use crate::reporting;
use crate::session::{Core, LIVE};
use crate::term_key::{atom_word, prefetch, prefetch_elements, IdKey, Key};
use crate::var_key::{id_term, lookup_bytes, push_id, IdTerm, VarKey};

type Graph = Core;

// Session id -> its graph, for every live session of this node. Atoms are keyed by their
// word (any atom can name a session, even one whose text is outside Latin-1), strings by
// their bytes; both are looked up as the caller's term gives them, nothing copied.
#[derive(Default)]
pub(crate) struct Directory {
    by_atom: AHashMap<usize, Graph>,
    by_text: AHashMap<Box<[u8]>, Graph>,
}

/// A session id as the caller's term holds it.
#[derive(Clone, Copy)]
enum SessionId<'a> {
    Atom(usize),
    Text(&'a [u8]),
}

impl Directory {
    fn get(&self, id: SessionId) -> Option<&Graph> {
        match id {
            SessionId::Atom(word) => self.by_atom.get(&word),
            SessionId::Text(bytes) => self.by_text.get(bytes),
        }
    }

    fn insert(&mut self, id: SessionId, graph: Graph) {
        match id {
            SessionId::Atom(word) => self.by_atom.insert(word, graph),
            SessionId::Text(bytes) => self.by_text.insert(bytes.into(), graph),
        };
    }

    fn remove(&mut self, id: SessionId) -> Option<Graph> {
        match id {
            SessionId::Atom(word) => self.by_atom.remove(&word),
            SessionId::Text(bytes) => self.by_text.remove(bytes),
        }
    }
}

// A session id is an id as for variables.
fn session_id(session: Term) -> NifResult<SessionId> {
    match id_term(session) {
        Some(IdTerm::Text(bytes)) => Ok(SessionId::Text(bytes)),
        Some(IdTerm::Atom(atom)) => Ok(SessionId::Atom(atom_word(atom))),
        None => Err(Error::BadArg),
    }
}

// Runs `f` on the graph `session` published, under the directory's read lock: borrowing
// it there saves the reference-count increment and decrement of a clone on a shared line.
fn with_published<T>(session: Term, f: impl FnOnce(Option<&Graph>) -> T) -> NifResult<T> {
    let id = session_id(session)?;
    let directory = registry::GRAPHS.read();
    Ok(f(directory.get(id)))
}

// Reads the session's graph.
fn with<T>(graph: &Graph, f: impl FnOnce(&DependencyGraph<VarKey>) -> T) -> T {
    f(graph.lock().graph())
}

// Runs an unlogged edge write of the session's process (a bulk of edges it was sent).
fn with_owner<T>(graph: &Graph, f: impl FnOnce(&mut Session<VarKey, VarKey>) -> T) -> T {
    f(&mut graph.lock())
}

// Runs `f` for a caller that is not the session's process: `None` when the session's writes
// are routed through its process.
fn with_direct<T>(graph: &Graph, f: impl FnOnce(&mut Session<VarKey, VarKey>) -> T) -> Option<T> {
    let mut guard = graph.lock();
    if graph.routed.load(Ordering::Relaxed) {
        None
    } else {
        Some(f(&mut guard))
    }
}

/// `graph_route_writes(graph, on)`: from now on, writes from other processes than the
/// session's (`*_direct`, `graph_add_edge_in`) are refused with `:routed` (`on`), or taken
/// again (`off`).
#[rustler::nif]
fn graph_route_writes(graph: Graph, on: bool) -> rustler::Atom {
    let _guard = graph.lock();
    graph.routed.store(on, Ordering::Relaxed);
    atoms::ok()
}

pub(crate) fn decode_kind(term: Term) -> NifResult<EdgeKind> {
    // The usual kind first, by its word: no call into the VM for the term's type.
    if atom_is(term, atoms::data()) {
        return Ok(EdgeKind::Data);
    }
    match term.get_type() {
        TermType::Atom => {
            if atom_is(term, atoms::compute()) {
                Ok(EdgeKind::Compute)
            } else if atom_is(term, atoms::constraint()) {
                Ok(EdgeKind::Constraint)
            } else {
                Err(Error::BadArg)
            }
        }
        TermType::Binary => Ok(EdgeKind::Custom(term.decode::<String>()?)),
        _ => Err(Error::BadArg),
    }
}

pub(crate) fn encode_kind<'a>(env: Env<'a>, kind: &EdgeKind) -> Term<'a> {
    match kind {
        EdgeKind::Data => atoms::data().encode(env),
        EdgeKind::Compute => atoms::compute().encode(env),
        EdgeKind::Constraint => atoms::constraint().encode(env),
        EdgeKind::Custom(label) => label.encode(env),
    }
}

fn encode_graph_error<'a>(env: Env<'a>, err: GraphError<VarKey>) -> Term<'a> {
    let reason = match err {
        GraphError::Cycle(path) => (atoms::cycle(), path).encode(env),
        GraphError::UnknownNode(key) => (atoms::unknown_variable(), key).encode(env),
        GraphError::NodeExists(key) => (atoms::variable_exists(), key).encode(env),
    };
    (atoms::error(), reason).encode(env)
}

fn ok_or_error<'a, T: Encoder>(env: Env<'a>, result: Result<T, GraphError<VarKey>>) -> Term<'a> {
    match result {
        Ok(value) => (atoms::ok(), value).encode(env),
        Err(err) => encode_graph_error(env, err),
    }
}

// An edge write's refusal in the graph NIFs' words (`{:cycle, path}`,
// `{:unknown_variable, id}`).
fn encode_edge_rejection<'a>(env: Env<'a>, r: Rejection<VarKey, VarKey>) -> Term<'a> {
    match r {
        Rejection::Cycle(path) => encode_graph_error(env, GraphError::Cycle(path)),
        Rejection::NotFound(key) => encode_graph_error(env, GraphError::UnknownNode(key)),
        other => crate::session::encode_rejection(env, other),
    }
}

fn edge_result<'a, T: Encoder>(
    env: Env<'a>,
    result: Result<T, Rejection<VarKey, VarKey>>,
) -> Term<'a> {
    match result {
        Ok(value) => (atoms::ok(), value).encode(env),
        Err(r) => encode_edge_rejection(env, r),
    }
}

/// Makes `graph` the graph of `session` (replacing any previous one).
#[rustler::nif]
fn graph_publish(session: Term, graph: Graph) -> NifResult<rustler::Atom> {
    let id = session_id(session)?;
    registry::GRAPHS.write().insert(id, graph);
    Ok(atoms::ok())
}

/// Forgets the graph of `session`; `false` if none was published.
#[rustler::nif]
fn graph_unpublish(session: Term) -> NifResult<bool> {
    let id = session_id(session)?;
    // Dropped outside the lock: the last reference frees the whole graph.
    let graph = registry::GRAPHS.write().remove(id);
    Ok(graph.is_some())
}

/// The graph of `session`: `{:ok, graph}` or `{:error, :session_not_found}`.
#[rustler::nif]
fn graph_of<'a>(env: Env<'a>, session: Term<'a>) -> NifResult<Term<'a>> {
    with_published(session, |graph| match graph {
        Some(graph) => (atoms::ok(), graph).encode(env),
        None => (atoms::error(), atoms::session_not_found()).encode(env),
    })
}

/// `graph_add_edge/4` for a caller other than the session's process: `:routed` when the
/// session's writes go through its process.
#[rustler::nif]
fn graph_add_edge_direct<'a>(
    env: Env<'a>,
    graph: Graph,
    from: VarKey,
    to: VarKey,
    kind: Term<'a>,
) -> NifResult<Term<'a>> {
    add_edge(env, &graph, from, to, kind)
}

fn add_edge<'a>(
    env: Env<'a>,
    graph: &Graph,
    from: VarKey,
    to: VarKey,
    kind: Term<'a>,
) -> NifResult<Term<'a>> {
    let kind = decode_kind(kind)?;
    Ok(
        match with_direct(graph, |s| s.add_edge_unlogged(&from, &to, kind)) {
            Some(result) => edge_result(env, result),
            None => atoms::routed().encode(env),
        },
    )
}

hot_nif!("graph_add_edge_in", 4, add_edge_in);

/// `graph_add_edge_in(session, from, to, kind)`: adds `from -> to` to the session's graph,
/// found in the directory. `:ok` when nothing listens for events, `:added` when the caller
/// should emit the `added` event, `:routed` when the session's writes go through its
/// process, `{:error, :session_not_found}`, `{:error, {:cycle, path}}`
/// or `{:error, {:unknown_variable, id}}`. The ids are looked up as borrowed bytes: the
/// call allocates nothing unless it adds a custom kind or reports an error.
fn add_edge_in<'a>(env: Env<'a>, [session, from, to, kind]: [Term<'a>; 4]) -> NifResult<Term<'a>> {
    // The ids' data are likely cache misses on a large caller heap: ask for both now and
    // find the session's graph while they arrive.
    prefetch(from);
    prefetch(to);
    let kind = decode_kind(kind)?;
    with_published(session, |graph| {
        let (mut from_key, mut to_key) = (IdKey::empty(), IdKey::empty());
        lookup_bytes(from, &mut from_key)?;
        lookup_bytes(to, &mut to_key)?;
        let Some(graph) = graph else {
            return Ok((atoms::error(), atoms::session_not_found()).encode(env));
        };
        Ok(
            match with_direct(graph, |s| {
                s.add_edge_unlogged(from_key.bytes(), to_key.bytes(), kind)
            }) {
                // The events flag is mirrored here, so the caller need not read it.
                Some(Ok(_)) if reporting::events_enabled() => atoms::added().encode(env),
                Some(Ok(_)) => atoms::ok().encode(env),
                Some(Err(r)) => encode_edge_rejection(env, r),
                None => atoms::routed().encode(env),
            },
        )
    })?
}

/// How many entries ahead a bulk insert asks for the data of its entries.
const PREFETCH_AHEAD: usize = 8;

/// Why an entry of a bulk insert was refused.
enum BadEdge {
    /// Not `{from, to}` or `{from, to, kind}` with ids that are atoms or 1..255-byte strings.
    Shape,
    /// A kind other than `:data`, `:compute`, `:constraint` or a string.
    Kind,
    /// An atom id whose text is outside Latin-1.
    Name,
}

/// An entry of a bulk insert, decoded: where its ids' bytes are in the batch's arena, and
/// its kind's id in the batch's [`EdgeLabels`]. Small, because a batch holds one per edge.
struct BulkEdge {
    from: (u32, u32),
    to: (u32, u32),
    kind: u16,
}

/// Appends the edge's ids to `arena` (as [`VarKey`] bytes) and returns where they are, with
/// the kind.
fn decode_bulk_edge(
    edge: Term,
    arena: &mut Key,
    kinds: &mut EdgeLabels,
) -> Result<BulkEdge, BadEdge> {
    let parts = rustler::types::tuple::get_tuple(edge).map_err(|_| BadEdge::Shape)?;
    let (from, to, kind) = match parts.as_slice() {
        [from, to] => (*from, *to, None),
        [from, to, kind] => (*from, *to, Some(*kind)),
        _ => return Err(BadEdge::Shape),
    };
    let mut id = |term: Term| {
        let id = id_term(term).ok_or(BadEdge::Shape)?;
        let start = arena.bytes().len();
        push_id(id, arena).map_err(|_| BadEdge::Name)?;
        // Offsets are 32-bit: `add_dependencies` caps a batch at 1,000,000 edges (at most
        // 512 MB of id bytes); a larger batch given to the NIF directly is refused here.
        let span = |at: usize| u32::try_from(at).map_err(|_| BadEdge::Shape);
        Ok((span(start)?, span(arena.bytes().len())?))
    };
    let (from, to) = (id(from)?, id(to)?);
    let kind = match kind {
        None => 0,
        Some(kind) => kinds.id(decode_kind(kind).map_err(|_| BadEdge::Kind)?),
    };
    Ok(BulkEdge { from, to, kind })
}

/// Adds a list of `{from, to}` or `{from, to, kind}` all or nothing: `{:ok, added}` or the
/// first error, `{:error, {:invalid_option, {:edge, entry}}}` and
/// `{:error, {:invalid_type, kind}}` for malformed entries (the first in list order). The ids
/// are gathered into one buffer and looked up from there: no owned key per id. DirtyCpu:
/// bulk imports can be large.
#[rustler::nif(schedule = "DirtyCpu")]
fn graph_add_edges<'a>(env: Env<'a>, graph: Graph, edges: Term<'a>) -> NifResult<Term<'a>> {
    add_edges(env, &graph, edges, false)
}

/// `graph_add_edges/2` for a caller other than the session's process: `:routed` when the
/// session's writes go through its process. DirtyCpu, as `graph_add_edges/2`.
#[rustler::nif(schedule = "DirtyCpu")]
fn graph_add_edges_direct<'a>(env: Env<'a>, graph: Graph, edges: Term<'a>) -> NifResult<Term<'a>> {
    add_edges(env, &graph, edges, true)
}

fn add_edges<'a>(
    env: Env<'a>,
    graph: &Graph,
    edges: Term<'a>,
    direct: bool,
) -> NifResult<Term<'a>> {
    let mut arena = Key::new();
    // `list_length` refuses an improper list, which the iterator would end early on.
    let mut entries: Vec<Term> = Vec::with_capacity(edges.list_length()?);
    entries.extend(edges.into_list_iterator()?);
    let mut batch = Vec::with_capacity(entries.len());
    let mut kinds = EdgeLabels::new();
    for (i, &edge) in entries.iter().enumerate() {
        // The ids' data are scattered over the caller's heap: ask for them a few entries
        // ahead (and for the entries' tuples further ahead still) so the misses overlap.
        if let Some(&ahead) = entries.get(i + 2 * PREFETCH_AHEAD) {
            prefetch(ahead);
        }
        if let Some(&near) = entries.get(i + PREFETCH_AHEAD) {
            prefetch_elements(near, 2);
        }
        match decode_bulk_edge(edge, &mut arena, &mut kinds) {
            Ok(decoded) => batch.push(decoded),
            Err(bad) => {
                let reason = match bad {
                    BadEdge::Shape => (atoms::invalid_option(), (atoms::edge(), edge)).encode(env),
                    BadEdge::Kind => {
                        let kind = rustler::types::tuple::get_tuple(edge)?[2];
                        (atoms::invalid_type(), kind).encode(env)
                    }
                    BadEdge::Name => atoms::invalid_name().encode(env),
                };
                return Ok((atoms::error(), reason).encode(env));
            }
        }
    }
    let bytes = arena.bytes();
    let id = |(start, end): (u32, u32)| &bytes[start as usize..end as usize];
    let edges = batch
        .iter()
        .map(|edge| (id(edge.from), id(edge.to), kinds.get(edge.kind).clone()));
    if direct {
        Ok(match with_direct(graph, |s| s.add_edges_unlogged(edges)) {
            Some(result) => edge_result(env, result),
            None => atoms::routed().encode(env),
        })
    } else {
        Ok(edge_result(
            env,
            with_owner(graph, |s| s.add_edges_unlogged(edges)),
        ))
    }
}

/// Direct dependencies (`:in`), dependents (`:out`), transitive `:upstream` or `:downstream`.
#[rustler::nif]
fn graph_neighbours<'a>(
    env: Env<'a>,
    graph: Graph,
    key: VarKey,
    which: Term<'a>,
) -> NifResult<Term<'a>> {
    let result = with(&graph, |g| {
        if atom_is(which, atoms::dependencies()) {
            Ok(g.dependencies(&key))
        } else if atom_is(which, atoms::dependents()) {
            Ok(g.dependents(&key))
        } else if atom_is(which, atoms::upstream()) {
            Ok(g.upstream(&key))
        } else if atom_is(which, atoms::downstream()) {
            Ok(g.downstream(&key))
        } else {
            Err(Error::BadArg)
        }
    })?;
    Ok(ok_or_error(env, result))
}

/// The changed variables and everything downstream, in topological order: `{:ok, list}`.
#[rustler::nif]
fn graph_update_order(env: Env, graph: Graph, changed: List<VarKey>) -> Term {
    let changed = changed.0;
    // Encoded under the lock, straight from the graph's own ids: no clone per variable.
    with(&graph, |g| match g.update_order_refs(&changed) {
        Ok(order) => (atoms::ok(), order).encode(env),
        Err(err) => encode_graph_error(env, err),
    })
}

/// The cycle `[to, ..., from, to]` that `from -> to` would close: `{:ok, path | nil}`.
#[rustler::nif]
fn graph_cycle_path(env: Env, graph: Graph, from: VarKey, to: VarKey) -> Term {
    ok_or_error(env, with(&graph, |g| g.cycle_path(&from, &to)))
}

/// Every edge as `{from, to, kind}`. DirtyCpu: walks the whole graph.
#[rustler::nif(schedule = "DirtyCpu")]
fn graph_edges(env: Env, graph: Graph) -> Term {
    let edges = with(&graph, |g| g.edges());
    let terms: Vec<Term> = edges
        .iter()
        .map(|(f, t, k)| (f, t, encode_kind(env, k)).encode(env))
        .collect();
    terms.encode(env)
}

/// Graphviz DOT text. DirtyCpu: walks the whole graph.
#[rustler::nif(schedule = "DirtyCpu")]
fn graph_to_dot(graph: Graph) -> String {
    with(&graph, |g| g.to_dot(VarKey::label))
}

/// `{node_count, edge_count}`.
#[rustler::nif]
fn graph_size(graph: Graph) -> (usize, usize) {
    with(&graph, |g| (g.node_count(), g.edge_count()))
}

/// How many graph resources are alive in this VM.
#[rustler::nif]
fn graph_live_count() -> usize {
    LIVE.load(Ordering::Relaxed)
}
