//! High-availability NIFs (`dspex_core::ha`): placement, the per-node ownership table, and
//! the migration envelope.
//!
//! Session ids arrive as the binaries `DSPex.Bridge.HAManager` derives from them, node names
//! as binaries, epochs as `{counter, node}`.

use std::collections::HashMap;

use dspex_core::ha::ownership::{Epoch, Ownership, Refusal, Role};
use dspex_core::ha::placement::{ranked, Node};
use dspex_core::ha::snapshot::{self, LockFence};
use parking_lot::Mutex;
use rustler::{Atom, Binary, Encoder, Env, Error, NifResult, ResourceArc, Term};

use crate::atoms::atom_is;
use crate::binary::to_binary;
use crate::error::encode_error;
use crate::list::List;

mod atoms {
    rustler::atoms! {
        absent, owned, migrating_out, migrating_in, replica,
        register, begin_out, abort_out, begin_in, finish_in, abort_in, finish_out,
        become_replica, promote, observe, accept_write, accept_replicated,
        not_owner, migrating, stale_epoch, present, wrong_role,
    }
}

/// One node's ownership records, by session key.
pub struct HaTable {
    node: String,
    sessions: Mutex<HashMap<Vec<u8>, Ownership>>,
}

#[rustler::resource_impl]
impl rustler::Resource for HaTable {}

fn bytes_of(term: Term) -> NifResult<Vec<u8>> {
    Ok(term.decode::<Binary>()?.as_slice().to_vec())
}

fn text_of(term: Term) -> NifResult<String> {
    String::from_utf8(bytes_of(term)?).map_err(|_| Error::BadArg)
}

fn decode_epoch(term: Term) -> NifResult<Epoch> {
    let (counter, node): (u64, Term) = term.decode()?;
    Ok(Epoch {
        counter,
        node: text_of(node)?,
    })
}

fn encode_epoch<'a>(env: Env<'a>, e: &Epoch) -> Term<'a> {
    (e.counter, to_binary(env, e.node.as_bytes())).encode(env)
}

fn encode_opt_text<'a>(env: Env<'a>, s: Option<&str>) -> Term<'a> {
    match s {
        Some(s) => to_binary(env, s.as_bytes()),
        None => crate::atoms::nil().encode(env),
    }
}

fn encode_role<'a>(env: Env<'a>, role: &Role) -> Term<'a> {
    match role {
        Role::Absent => atoms::absent().encode(env),
        Role::Owned => atoms::owned().encode(env),
        Role::Replica => atoms::replica().encode(env),
        Role::MigratingOut { target } => {
            (atoms::migrating_out(), to_binary(env, target.as_bytes())).encode(env)
        }
        Role::MigratingIn { source } => {
            (atoms::migrating_in(), to_binary(env, source.as_bytes())).encode(env)
        }
    }
}

fn encode_refusal<'a>(env: Env<'a>, r: &Refusal) -> Term<'a> {
    let reason = match r {
        Refusal::NotOwner { owner, epoch } => (
            atoms::not_owner(),
            encode_opt_text(env, owner.as_deref()),
            encode_epoch(env, epoch),
        )
            .encode(env),
        Refusal::Migrating => atoms::migrating().encode(env),
        Refusal::StaleEpoch { got, current } => (
            atoms::stale_epoch(),
            encode_epoch(env, got),
            encode_epoch(env, current),
        )
            .encode(env),
        Refusal::Present => atoms::present().encode(env),
        Refusal::WrongRole(role) => (atoms::wrong_role(), encode_role(env, role)).encode(env),
    };
    (crate::atoms::error(), reason).encode(env)
}

/// A new, empty ownership table for this node (`node`: its name as a binary).
#[rustler::nif]
fn ha_table_new<'a>(env: Env<'a>, node: Term<'a>) -> NifResult<Term<'a>> {
    Ok(ResourceArc::new(HaTable {
        node: text_of(node)?,
        sessions: Mutex::new(HashMap::new()),
    })
    .encode(env))
}

/// Runs one ownership transition for session `key`; see `Ownership`. `op` is an atom or a
/// tuple naming the transition and its arguments. `{:ok, result}` or `{:error, refusal}`;
/// badarg for an unknown op or malformed arguments.
#[rustler::nif]
fn ha_apply<'a>(
    env: Env<'a>,
    table: ResourceArc<HaTable>,
    key: Term<'a>,
    op: Term<'a>,
) -> NifResult<Term<'a>> {
    let key = bytes_of(key)?;
    let mut sessions = table.sessions.lock();
    let entry = sessions
        .entry(key)
        .or_insert_with(|| Ownership::new(table.node.clone()));
    let ok = |t: Term<'a>| (crate::atoms::ok(), t).encode(env);
    let unit = |r: Result<(), Refusal>| match r {
        Ok(()) => crate::atoms::ok().encode(env),
        Err(e) => encode_refusal(env, &e),
    };
    let minted = |r: Result<Epoch, Refusal>| match r {
        Ok(e) => ok(encode_epoch(env, &e)),
        Err(e) => encode_refusal(env, &e),
    };
    if op.is_atom() {
        return Ok(if atom_is(op, atoms::register()) {
            minted(entry.register())
        } else if atom_is(op, atoms::abort_out()) {
            unit(entry.abort_out())
        } else if atom_is(op, atoms::finish_in()) {
            minted(entry.finish_in())
        } else if atom_is(op, atoms::abort_in()) {
            unit(entry.abort_in())
        } else if atom_is(op, atoms::promote()) {
            minted(entry.promote())
        } else if atom_is(op, atoms::accept_write()) {
            match entry.accept_write() {
                Ok(e) => ok(encode_epoch(env, e)),
                Err(e) => encode_refusal(env, &e),
            }
        } else {
            return Err(Error::BadArg);
        });
    }
    let tuple = rustler::types::tuple::get_tuple(op)?;
    let tag = *tuple.first().ok_or(Error::BadArg)?;
    Ok(match tuple.len() {
        2 if atom_is(tag, atoms::begin_out()) => unit(entry.begin_out(&text_of(tuple[1])?)),
        2 if atom_is(tag, atoms::finish_out()) => unit(entry.finish_out(&decode_epoch(tuple[1])?)),
        3 if atom_is(tag, atoms::begin_in()) => {
            unit(entry.begin_in(&text_of(tuple[1])?, &decode_epoch(tuple[2])?))
        }
        3 if atom_is(tag, atoms::become_replica()) => {
            unit(entry.become_replica(&text_of(tuple[1])?, &decode_epoch(tuple[2])?))
        }
        3 if atom_is(tag, atoms::observe()) => {
            let demoted = entry.observe(&text_of(tuple[1])?, &decode_epoch(tuple[2])?);
            ok(demoted.encode(env))
        }
        3 if atom_is(tag, atoms::accept_replicated()) => {
            unit(entry.accept_replicated(&text_of(tuple[1])?, &decode_epoch(tuple[2])?))
        }
        _ => return Err(Error::BadArg),
    })
}

/// `{role, epoch, owner | nil}` of session `key`, or `nil` when never seen here.
#[rustler::nif]
fn ha_info<'a>(env: Env<'a>, table: ResourceArc<HaTable>, key: Term<'a>) -> NifResult<Term<'a>> {
    let key = bytes_of(key)?;
    let sessions = table.sessions.lock();
    Ok(match sessions.get(&key) {
        Some(o) => (
            encode_role(env, o.role()),
            encode_epoch(env, o.epoch()),
            encode_opt_text(env, o.owner()),
        )
            .encode(env),
        None => crate::atoms::nil().encode(env),
    })
}

/// Forgets session `key` here (it was deleted cluster-wide).
#[rustler::nif]
fn ha_forget(table: ResourceArc<HaTable>, key: Term) -> NifResult<Atom> {
    table.sessions.lock().remove(&bytes_of(key)?);
    Ok(crate::atoms::ok())
}

/// Indices of `nodes` (a list of `{name, weight}`) in placement order for `key`: the owner
/// first. Nodes with a weight that is not positive are left out.
#[rustler::nif]
fn ha_rank(key: Binary, nodes: List<(Binary, f64)>) -> Vec<usize> {
    let nodes: Vec<Node> = nodes
        .0
        .iter()
        .map(|(n, w)| Node::new(String::from_utf8_lossy(n.as_slice()), *w))
        .collect();
    ranked(key.as_slice(), &nodes)
}

/// Wraps a session's export frame with its id, epoch and lock fences (`[{variable, holder,
/// token, lease_ms}]`: two binaries and two integers). `{:ok, envelope}` or `{:error, reason}` when the
/// session frame is not valid. DirtyCpu: a large session is megabytes to checksum and copy.
#[rustler::nif(schedule = "DirtyCpu")]
fn ha_envelope_encode<'a>(
    env: Env<'a>,
    key: Binary,
    epoch: Term<'a>,
    session_frame: Binary,
    locks: List<(Binary, Binary, u64, u64)>,
) -> NifResult<Term<'a>> {
    let epoch = decode_epoch(epoch)?;
    let locks = locks
        .0
        .into_iter()
        .map(|(v, h, token, lease_ms)| LockFence {
            variable: v.as_slice().to_vec(),
            holder: h.as_slice().to_vec(),
            token,
            lease_ms,
        })
        .collect();
    Ok(
        match snapshot::encode(key.as_slice(), &epoch, session_frame.as_slice(), locks) {
            Ok(bytes) => (crate::atoms::ok(), to_binary(env, &bytes)).encode(env),
            Err(err) => encode_error(env, &err),
        },
    )
}

/// Checks and opens an envelope: `{:ok, key, epoch, session_frame, locks}` or
/// `{:error, reason}` (corrupt, truncated, newer format, wrong kind). DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn ha_envelope_decode<'a>(env: Env<'a>, bytes: Binary) -> Term<'a> {
    match snapshot::decode(bytes.as_slice()) {
        Ok(s) => {
            let locks: Vec<Term> = s
                .locks
                .iter()
                .map(|l| {
                    (
                        to_binary(env, &l.variable),
                        to_binary(env, &l.holder),
                        l.token,
                        l.lease_ms,
                    )
                        .encode(env)
                })
                .collect();
            (
                crate::atoms::ok(),
                to_binary(env, &s.session_id),
                encode_epoch(env, &s.epoch),
                to_binary(env, &s.session_frame),
                locks,
            )
                .encode(env)
        }
        Err(err) => encode_error(env, &err),
    }
}
