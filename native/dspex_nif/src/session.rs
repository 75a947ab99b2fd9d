//! The session aggregate (`dspex_core::session`) as one resource per session: its
//! variables' versions and compute inputs, its dependency graph, its lock fences. The
//! session's process changes it through [`session_apply`] with a typed command (decoded by
//! rustler's derives: nothing on this path is hot enough to need hand-written decoding);
//! the dependency NIFs (`graph.rs`) read its graph, and add edges by borrowed ids while the
//! session is not routed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use dspex_core::graph::EdgeKind;
use dspex_core::session::{Command, Rejection, Reply, Session, Variable, Write};
use rustler::{
    Binary, Decoder, Encoder, Env, NifMap, NifResult, NifTaggedEnum, NifTuple, ResourceArc, Term,
};

use crate::atoms;
use crate::graph::{decode_kind, encode_kind};
use crate::list::List;
use crate::var_key::VarKey;

/// A session's core state, and whether its writes must go through the session's process
/// (set while the session is under HA, so every edge is ordered and replicated with the
/// session's other writes). The flag is set and read under the lock, so a direct write
/// either lands before the flag (and in the snapshot taken after it) or is refused with
/// `:routed`.
pub struct SessionResource {
    pub(crate) state: Mutex<Session<VarKey, VarKey>>,
    pub(crate) routed: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for SessionResource {}

// Live sessions, so tests can prove that deleting a session frees its state.
pub(crate) static LIVE: AtomicUsize = AtomicUsize::new(0);

impl SessionResource {
    fn new(session: Session<VarKey, VarKey>) -> ResourceArc<Self> {
        LIVE.fetch_add(1, Ordering::Relaxed);
        ResourceArc::new(SessionResource {
            state: Mutex::new(session),
            routed: AtomicBool::new(false),
        })
    }

    /// The state, for one call. No core operation panics half-way, so a poisoned lock still
    /// guards a valid state.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Session<VarKey, VarKey>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SessionResource {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) type Core = ResourceArc<SessionResource>;

/// An edge kind as the graph NIFs spell it: `:data`, `:compute`, `:constraint` or a string.
pub struct Kind(EdgeKind);

impl<'a> Decoder<'a> for Kind {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        decode_kind(term).map(Kind)
    }
}

impl Encoder for Kind {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_kind(env, &self.0)
    }
}

/// Opaque bytes (a binary) for [`Command::Record`].
pub struct Payload(Vec<u8>);

impl<'a> Decoder<'a> for Payload {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        Ok(Payload(Binary::from_term(term)?.as_slice().to_vec()))
    }
}

impl Encoder for Payload {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        crate::binary::to_binary(env, &self.0)
    }
}

/// `{name, expected_version | nil, token | nil}` (a tuple: the one command on every
/// variable write, where a map's three lookups showed).
#[derive(NifTuple)]
pub struct WriteTerm {
    name: VarKey,
    expected_version: Option<u64>,
    token: Option<u64>,
}

/// `%{name: id, inputs: [id]}`.
#[derive(NifMap)]
pub struct Computed {
    name: VarKey,
    inputs: List<VarKey>,
}

/// `%{from: id, to: id}`.
#[derive(NifMap)]
pub struct EdgeTerm {
    from: VarKey,
    to: VarKey,
}

/// `%{name: id, holder: id, token: t, until_ms: ms}`.
#[derive(NifMap)]
pub struct HoldTerm {
    name: VarKey,
    holder: VarKey,
    token: u64,
    until_ms: u64,
}

/// `%{name: id, holder: nil | id}`.
#[derive(NifMap)]
pub struct ReleaseTerm {
    name: VarKey,
    holder: AnyOr,
}

/// `nil` for any, or an id. (rustler's `Option` would read `nil` as the atom id `:nil`.)
pub struct AnyOr(Option<VarKey>);

impl<'a> Decoder<'a> for AnyOr {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        if atoms::atom_is(term, atoms::nil()) {
            Ok(AnyOr(None))
        } else {
            term.decode().map(|id| AnyOr(Some(id)))
        }
    }
}

impl Encoder for AnyOr {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match &self.0 {
            Some(id) => id.encode(env),
            None => atoms::nil().encode(env),
        }
    }
}

/// A command as Elixir writes it: `{:register, %{name: n, inputs: [..]}}`,
/// `{:define_computed, %{..}}`, `{:write, [{name, expected_version, token}]}`,
/// `{:delete, n}`, `{:add_edges, [{from, to, kind}]}`, `{:remove_edge, %{from: f, to: t}}`,
/// `{:clear_edges, n}`, `{:hold, %{name:, holder:, token:, until_ms:}}`,
/// `{:release, %{name:, holder:}}`, `{:record, binary}`.
#[derive(NifTaggedEnum)]
pub enum CommandTerm {
    Register(Computed),
    DefineComputed(Computed),
    Write(List<WriteTerm>),
    Delete(VarKey),
    AddEdges(List<(VarKey, VarKey, Kind)>),
    RemoveEdge(EdgeTerm),
    ClearEdges(VarKey),
    Hold(HoldTerm),
    Release(ReleaseTerm),
    Record(Payload),
}

impl CommandTerm {
    fn into_command(self) -> Command<VarKey, VarKey> {
        match self {
            CommandTerm::Register(c) => Command::Register {
                name: c.name,
                inputs: c.inputs.0,
            },
            CommandTerm::DefineComputed(c) => Command::DefineComputed {
                name: c.name,
                inputs: c.inputs.0,
            },
            CommandTerm::Write(writes) => Command::Write {
                writes: writes
                    .0
                    .into_iter()
                    .map(|w| Write {
                        name: w.name,
                        expected_version: w.expected_version,
                        token: w.token,
                    })
                    .collect(),
            },
            CommandTerm::Delete(name) => Command::Delete { name },
            CommandTerm::AddEdges(edges) => Command::AddEdges {
                edges: edges.0.into_iter().map(|(f, t, k)| (f, t, k.0)).collect(),
            },
            CommandTerm::RemoveEdge(e) => Command::RemoveEdge {
                from: e.from,
                to: e.to,
            },
            CommandTerm::ClearEdges(name) => Command::ClearEdges { name },
            CommandTerm::Hold(h) => Command::Hold {
                name: h.name,
                holder: h.holder,
                token: h.token,
                until_ms: h.until_ms,
            },
            CommandTerm::Release(r) => Command::Release {
                name: r.name,
                holder: r.holder.0,
            },
            CommandTerm::Record(p) => Command::Record { payload: p.0 },
        }
    }
}

/// A reply as Elixir reads it: `:done`, `{:versions, [v]}`, `{:edges_added, n}`,
/// `{:edges_removed, n}`, `{:released, bool}`.
#[derive(NifTaggedEnum)]
pub enum ReplyTerm {
    Done,
    Versions(Vec<u64>),
    EdgesAdded(usize),
    EdgesRemoved(usize),
    Released(bool),
}

impl From<Reply> for ReplyTerm {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Done => ReplyTerm::Done,
            Reply::Versions(v) => ReplyTerm::Versions(v),
            Reply::EdgesAdded(n) => ReplyTerm::EdgesAdded(n),
            Reply::EdgesRemoved(n) => ReplyTerm::EdgesRemoved(n),
            Reply::Released(b) => ReplyTerm::Released(b),
        }
    }
}

/// A refusal in SessionStore's words: `{:variable_exists, n}`, `{:variable_not_found, n}`,
/// `{:duplicate_variable, n}`, `{:version_mismatch, current}`, `{:locked_by, holder}`,
/// `:stale_token`, `{:cycle, path}`, `:dependency_not_found`,
/// `{:compute_input, computed, input | :computed}`, `{:has_dependents, [n]}`.
pub(crate) fn encode_rejection<'a>(env: Env<'a>, r: Rejection<VarKey, VarKey>) -> Term<'a> {
    let reason = match r {
        Rejection::Exists(k) => (atoms::variable_exists(), k).encode(env),
        Rejection::NotFound(k) => (atoms::variable_not_found(), k).encode(env),
        Rejection::Duplicate(k) => (atoms::duplicate_variable(), k).encode(env),
        Rejection::VersionMismatch { current, .. } => {
            (atoms::version_mismatch(), current).encode(env)
        }
        Rejection::LockedBy { holder, .. } => (atoms::locked_by(), holder).encode(env),
        Rejection::StaleToken { .. } => atoms::stale_token().encode(env),
        Rejection::Cycle(path) => (atoms::cycle(), path).encode(env),
        Rejection::EdgeNotFound { .. } => atoms::dependency_not_found().encode(env),
        Rejection::ComputeInput {
            computed,
            input: Some(input),
        } => (atoms::compute_input(), computed, input).encode(env),
        Rejection::ComputeInput {
            computed,
            input: None,
        } => (atoms::compute_input(), computed, atoms::computed()).encode(env),
        Rejection::HasDependents(list) => (atoms::has_dependents(), list).encode(env),
    };
    (atoms::error(), reason).encode(env)
}

/// An empty session.
#[rustler::nif]
fn session_new() -> Core {
    SessionResource::new(Session::new())
}

/// Applies a command (see [`CommandTerm`]) at `now_ms`: `{:ok, seq, reply}` or
/// `{:error, reason}` (see [`encode_rejection`]), the state unchanged then. A malformed
/// command is an `ArgumentError`. Regular scheduler, except for large edge batches, which
/// go through `graph_add_edges/2`.
#[rustler::nif]
fn session_apply<'a>(
    env: Env<'a>,
    core: Core,
    command: Term<'a>,
    now_ms: u64,
) -> NifResult<Term<'a>> {
    // The derive answers a term of no known shape with `:invalid_variant`; every NIF of this
    // library answers a wrong term with `ArgumentError`.
    let command: CommandTerm = command.decode().map_err(|_| rustler::Error::BadArg)?;
    let mut session = core.lock();
    Ok(match session.apply(command.into_command(), now_ms) {
        Ok(out) => (atoms::ok(), session.seq(), ReplyTerm::from(out.value)).encode(env),
        Err(rejection) => encode_rejection(env, rejection),
    })
}

/// Fills an empty session at once (an import, a node's copy of a session): `variables` as
/// `[{name, version, inputs}]` and `edges` as `[{from, to, kind}]`. `:ok`,
/// `{:error, :not_empty}`, or `{:error, reason}` as for the commands (nothing changed).
/// DirtyCpu: a session can hold hundreds of thousands of variables.
#[rustler::nif(schedule = "DirtyCpu")]
fn session_load<'a>(
    env: Env<'a>,
    core: Core,
    variables: List<(VarKey, u64, List<VarKey>)>,
    edges: List<(VarKey, VarKey, Kind)>,
) -> Term<'a> {
    let variables = variables
        .0
        .into_iter()
        .map(|(name, version, inputs)| {
            (
                name,
                Variable {
                    version,
                    inputs: inputs.0,
                },
            )
        })
        .collect();
    let edges: Vec<_> = edges.0.into_iter().map(|(f, t, k)| (f, t, k.0)).collect();
    let mut current = core.lock();
    if !current.is_empty() || current.seq() != 0 {
        return (atoms::error(), atoms::not_empty()).encode(env);
    }
    match Session::load(variables, &edges) {
        Ok(session) => {
            *current = session;
            atoms::ok().encode(env)
        }
        Err(rejection) => encode_rejection(env, rejection),
    }
}

/// `{seq, variable_count}` of a session.
#[rustler::nif]
fn session_info(core: Core) -> (u64, usize) {
    let session = core.lock();
    (session.seq(), session.len())
}

/// A variable's version as the session's core has it: `{:ok, v}` or `:error`.
#[rustler::nif]
fn session_version<'a>(env: Env<'a>, core: Core, name: VarKey) -> Term<'a> {
    match core.lock().version(&name) {
        Some(v) => (atoms::ok(), v).encode(env),
        None => atoms::error().encode(env),
    }
}
