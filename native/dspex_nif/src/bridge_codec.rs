//! Bridge frames (`priv/proto/dspex_bridge.proto`) to and from terms, with prost.
//!
//! Values walk iteratively (`crate::walk`), and nest at most [`MAX_DEPTH`] containers deep:
//! each container is two protobuf messages (a `Value` and its `ValueList`/`ValueMap`), and
//! both prost and Python's protobuf stop at 100 nested messages, so 48 containers inside a
//! frame's own messages stay within every reader's limit.
//!
//! Terms of frames to a worker: `{:welcome, protocol}`, `{:call, id, tool, args, session,
//! timeout_ms}`, `{:cancel, id}`, `{:session_reply, id, {:ok, value} | {:error, type,
//! message}}`, `{:ping, n}`, `{:pong, n}`, `{:change, watch_id, name, old, new, version,
//! lost?}`. Frames from a worker decode to `{:hello, %{...}}`, `{:result, id, {:ok, value} |
//! {:error, type, message}}`, `{:session_request, id, call_id, op, args}`, `{:ping, n}`,
//! `{:pong, n}`, `{:log, :stdout | :stderr, line}`.

use rustler::types::tuple::get_tuple;
use rustler::{Binary, Encoder, Env, MapIterator, Term, TermType};

use crate::atoms::{self, atom_is};
use crate::binary::to_binary;
use crate::proto::{self, value::Kind, Body, Frame, Outcome};
use crate::walk::{walk, Fill, Step};

/// Deepest nesting of lists, tuples and maps in a value (the outermost container is 1).
pub const MAX_DEPTH: usize = 48;

mod tags {
    rustler::atoms! {
        welcome, call, cancel, session_reply, session_request, ping, pong, change, hello,
        result, log, stdout, stderr, protocol, pool, token, tools, concurrency, worker,
        not_serializable, invalid_frame,
    }
}

fn fail(detail: impl Into<String>) -> String {
    detail.into()
}

// ------------------------------------------------------------------------------------
// terms -> values

enum OpenTerm<'a> {
    List(std::vec::IntoIter<Term<'a>>, Vec<proto::Value>),
    // A map hands out key, value, key, value...: the finished key waits in `key`, the value
    // term to hand out after it in `pending`.
    Map {
        pairs: std::vec::IntoIter<(Term<'a>, Term<'a>)>,
        out: Vec<proto::Entry>,
        key: Option<proto::Value>,
        pending: Option<Term<'a>>,
    },
}

impl<'a> Fill<Term<'a>, proto::Value> for OpenTerm<'a> {
    fn next(&mut self, done: Option<proto::Value>) -> Result<Option<Term<'a>>, String> {
        match self {
            OpenTerm::List(items, out) => {
                out.extend(done);
                Ok(items.next())
            }
            OpenTerm::Map {
                pairs,
                out,
                key,
                pending,
            } => {
                if let Some(v) = done {
                    if pending.is_some() {
                        *key = Some(v);
                        return Ok(pending.take());
                    }
                    out.push(proto::Entry {
                        key: key.take(),
                        value: Some(v),
                    });
                }
                Ok(pairs.next().map(|(k, v)| {
                    *pending = Some(v);
                    k
                }))
            }
        }
    }

    fn close(self) -> Result<proto::Value, String> {
        Ok(proto::Value {
            kind: Some(match self {
                OpenTerm::List(_, items) => Kind::List(proto::ValueList { items }),
                OpenTerm::Map { out, .. } => Kind::Map(proto::ValueMap { entries: out }),
            }),
        })
    }
}

fn text_of(term: Term) -> Result<String, String> {
    crate::var_key::with_text(term, str::to_string).map_err(|_| fail("atom"))
}

fn term_step(term: Term, depth: usize) -> Result<Step<proto::Value, OpenTerm>, String> {
    let done = |kind| Ok(Step::Done(proto::Value { kind: Some(kind) }));
    let open = |c| {
        if depth >= MAX_DEPTH {
            Err(format!("nested deeper than {MAX_DEPTH}"))
        } else {
            Ok(Step::Open(c))
        }
    };
    match term.get_type() {
        TermType::Atom => {
            if atom_is(term, atoms::nil()) {
                done(Kind::Null(true))
            } else if let Ok(b) = term.decode::<bool>() {
                done(Kind::Boolean(b))
            } else {
                done(Kind::Text(text_of(term)?))
            }
        }
        TermType::Binary => {
            let bin = Binary::from_term(term).map_err(|_| fail("bitstring"))?;
            match std::str::from_utf8(bin.as_slice()) {
                Ok(s) => done(Kind::Text(s.to_string())),
                Err(_) => done(Kind::Binary(bin.as_slice().to_vec())),
            }
        }
        TermType::Integer => term
            .decode::<i64>()
            .map_err(|_| fail("integer out of 64-bit range"))
            .and_then(|n| done(Kind::Integer(n))),
        TermType::Float => term
            .decode::<f64>()
            .map_err(|_| fail("float"))
            .and_then(|f| done(Kind::Float(f))),
        TermType::List => {
            // The length first: rustler's list iterator panics at an improper tail.
            let n = term.list_length().map_err(|_| fail("improper list"))?;
            let items: Vec<Term> = term
                .into_list_iterator()
                .map_err(|_| fail("list"))?
                .collect();
            open(OpenTerm::List(items.into_iter(), Vec::with_capacity(n)))
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| fail("tuple"))?;
            let n = items.len();
            open(OpenTerm::List(items.into_iter(), Vec::with_capacity(n)))
        }
        TermType::Map => {
            let pairs: Vec<(Term, Term)> =
                MapIterator::new(term).ok_or_else(|| fail("map"))?.collect();
            let n = pairs.len();
            open(OpenTerm::Map {
                pairs: pairs.into_iter(),
                out: Vec::with_capacity(n),
                key: None,
                pending: None,
            })
        }
        other => Err(format!("{other:?} cannot cross the bridge")),
    }
}

fn to_value(term: Term) -> Result<proto::Value, String> {
    walk(term, term_step)
}

fn to_value_map(term: Term) -> Result<proto::ValueMap, String> {
    if term.get_type() != TermType::Map {
        return Err(fail("arguments must be a map"));
    }
    match to_value(term)?.kind {
        Some(Kind::Map(m)) => Ok(m),
        _ => Err(fail("arguments must be a map")),
    }
}

// ------------------------------------------------------------------------------------
// values -> terms

enum Building<'v, 'a> {
    List(Env<'a>, std::slice::Iter<'v, proto::Value>, Vec<Term<'a>>),
    Map(
        Env<'a>,
        std::slice::Iter<'v, proto::Entry>,
        Vec<(Term<'a>, Term<'a>)>,
        Option<Term<'a>>,
        Option<&'v proto::Value>,
    ),
}

const NULL: proto::Value = proto::Value { kind: None };

impl<'v, 'a> Fill<&'v proto::Value, Term<'a>> for Building<'v, 'a> {
    fn next(&mut self, done: Option<Term<'a>>) -> Result<Option<&'v proto::Value>, String> {
        match self {
            Building::List(_, items, out) => {
                out.extend(done);
                Ok(items.next())
            }
            Building::Map(_, entries, out, key, value) => {
                if let Some(t) = done {
                    match (key.take(), value.take()) {
                        // The key is done: its value comes next.
                        (None, Some(v)) => {
                            *key = Some(t);
                            return Ok(Some(v));
                        }
                        (Some(k), None) => out.push((k, t)),
                        _ => return Err(fail("unreachable")),
                    }
                }
                Ok(entries.next().map(|e| {
                    *value = Some(e.value.as_ref().unwrap_or(&NULL));
                    e.key.as_ref().unwrap_or(&NULL)
                }))
            }
        }
    }

    fn close(self) -> Result<Term<'a>, String> {
        match self {
            Building::List(env, _, out) => Ok(out.encode(env)),
            Building::Map(env, _, out, _, _) => {
                let (keys, values): (Vec<Term>, Vec<Term>) = out.into_iter().unzip();
                Term::map_from_term_arrays(env, &keys, &values)
                    .map_err(|_| fail("duplicate map key"))
            }
        }
    }
}

fn to_term<'a>(env: Env<'a>, value: &proto::Value) -> Result<Term<'a>, String> {
    walk(value, |v, depth| {
        let kind = match &v.kind {
            None | Some(Kind::Null(_)) => return Ok(Step::Done(atoms::nil().encode(env))),
            Some(k) => k,
        };
        if matches!(kind, Kind::List(_) | Kind::Map(_)) && depth >= MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        Ok(match kind {
            Kind::Null(_) => Step::Done(atoms::nil().encode(env)),
            Kind::Boolean(b) => Step::Done(b.encode(env)),
            Kind::Integer(i) => Step::Done(i.encode(env)),
            Kind::Float(f) => Step::Done(f.encode(env)),
            Kind::Text(s) => Step::Done(s.as_str().encode(env)),
            Kind::Binary(b) => Step::Done(to_binary(env, b)),
            Kind::List(l) => Step::Open(Building::List(
                env,
                l.items.iter(),
                Vec::with_capacity(l.items.len()),
            )),
            Kind::Map(m) => Step::Open(Building::Map(
                env,
                m.entries.iter(),
                Vec::with_capacity(m.entries.len()),
                None,
                None,
            )),
        })
    })
}

fn map_term<'a>(env: Env<'a>, map: Option<&proto::ValueMap>) -> Result<Term<'a>, String> {
    let empty = proto::ValueMap::default();
    let value = proto::Value {
        kind: Some(Kind::Map(map.unwrap_or(&empty).clone())),
    };
    to_term(env, &value)
}

// ------------------------------------------------------------------------------------
// frames

fn u64_of(t: Term) -> Result<u64, String> {
    t.decode::<u64>()
        .map_err(|_| fail("an id or count must be a non-negative integer"))
}

fn string_of(t: Term) -> Result<String, String> {
    match t.get_type() {
        TermType::Binary => t.decode::<String>().map_err(|_| fail("text must be UTF-8")),
        TermType::Atom => text_of(t),
        _ => Err(fail("text must be a string or an atom")),
    }
}

fn outcome_of(t: Term) -> Result<Outcome, String> {
    let parts = get_tuple(t).map_err(|_| fail("outcome"))?;
    match parts.as_slice() {
        [tag, v] if atom_is(*tag, atoms::ok()) => Ok(Outcome::Ok(to_value(*v)?)),
        [tag, ty, msg] if atom_is(*tag, atoms::error()) => Ok(Outcome::Error(proto::Failure {
            r#type: string_of(*ty)?,
            message: string_of(*msg)?,
            detail: None,
        })),
        [tag, ty, msg, detail] if atom_is(*tag, atoms::error()) => {
            Ok(Outcome::Error(proto::Failure {
                r#type: string_of(*ty)?,
                message: string_of(*msg)?,
                detail: Some(to_value(*detail)?),
            }))
        }
        _ => Err(fail(
            "outcome must be {:ok, value} or {:error, type, message[, detail]}",
        )),
    }
}

fn frame_of(term: Term) -> Result<Frame, String> {
    let parts = get_tuple(term).map_err(|_| fail("a frame is a tuple"))?;
    let (tag, rest) = parts.split_first().ok_or_else(|| fail("empty frame"))?;
    let body = match rest {
        [p] if atom_is(*tag, tags::welcome()) => Body::Welcome(proto::Welcome {
            protocol: p.decode().map_err(|_| fail("protocol"))?,
        }),
        [id, tool, args, session, timeout] if atom_is(*tag, tags::call()) => {
            Body::Call(proto::Call {
                id: u64_of(*id)?,
                tool: string_of(*tool)?,
                args: Some(to_value_map(*args)?),
                session_id: string_of(*session)?,
                timeout_ms: u64_of(*timeout)?,
            })
        }
        [id] if atom_is(*tag, tags::cancel()) => Body::Cancel(proto::Cancel { id: u64_of(*id)? }),
        [id, outcome] if atom_is(*tag, tags::session_reply()) => {
            Body::SessionReply(proto::SessionReply {
                id: u64_of(*id)?,
                outcome: Some(outcome_of(*outcome)?),
            })
        }
        [n] if atom_is(*tag, tags::ping()) => Body::Ping(proto::Heartbeat { nonce: u64_of(*n)? }),
        [n] if atom_is(*tag, tags::pong()) => Body::Pong(proto::Heartbeat { nonce: u64_of(*n)? }),
        [w, name, old, new, version, lost] if atom_is(*tag, tags::change()) => {
            Body::Change(proto::Change {
                watch_id: u64_of(*w)?,
                name: Some(to_value(*name)?),
                old: Some(to_value(*old)?),
                new: Some(to_value(*new)?),
                version: u64_of(*version)?,
                lost: lost.decode().map_err(|_| fail("lost"))?,
            })
        }
        _ => return Err(fail("not a frame this side sends")),
    };
    Ok(Frame { body: Some(body) })
}

fn outcome_term<'a>(env: Env<'a>, outcome: Option<&Outcome>) -> Result<Term<'a>, String> {
    match outcome {
        Some(Outcome::Ok(v)) => Ok((atoms::ok(), to_term(env, v)?).encode(env)),
        Some(Outcome::Error(f)) => {
            Ok((atoms::error(), f.r#type.as_str(), f.message.as_str()).encode(env))
        }
        None => Err(fail("no outcome")),
    }
}

fn frame_term<'a>(env: Env<'a>, frame: &Frame) -> Result<Term<'a>, String> {
    Ok(
        match frame.body.as_ref().ok_or_else(|| fail("empty frame"))? {
            Body::Hello(h) => {
                let keys = [
                    tags::protocol().encode(env),
                    tags::pool().encode(env),
                    tags::token().encode(env),
                    tags::tools().encode(env),
                    tags::concurrency().encode(env),
                    tags::worker().encode(env),
                ];
                let tools: Vec<&str> = h.tools.iter().map(String::as_str).collect();
                let values = [
                    h.protocol.encode(env),
                    h.pool.as_str().encode(env),
                    h.token.as_str().encode(env),
                    tools.encode(env),
                    h.concurrency.encode(env),
                    h.worker.as_str().encode(env),
                ];
                let map =
                    Term::map_from_term_arrays(env, &keys, &values).map_err(|_| fail("hello"))?;
                (tags::hello(), map).encode(env)
            }
            Body::Result(r) => {
                (tags::result(), r.id, outcome_term(env, r.outcome.as_ref())?).encode(env)
            }
            Body::SessionRequest(q) => (
                tags::session_request(),
                q.id,
                q.call_id,
                q.op.as_str(),
                map_term(env, q.args.as_ref())?,
            )
                .encode(env),
            Body::Ping(h) => (tags::ping(), h.nonce).encode(env),
            Body::Pong(h) => (tags::pong(), h.nonce).encode(env),
            Body::Log(l) => {
                let stream = if l.stream == 1 {
                    tags::stderr()
                } else {
                    tags::stdout()
                };
                (tags::log(), stream, l.line.as_str()).encode(env)
            }
            _ => return Err(fail("not a frame a worker sends")),
        },
    )
}

fn encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match frame_of(term) {
        Ok(frame) => (
            atoms::ok(),
            to_binary(env, &prost::Message::encode_to_vec(&frame)),
        )
            .encode(env),
        Err(detail) => (atoms::error(), (tags::not_serializable(), detail)).encode(env),
    }
}

fn decode<'a>(env: Env<'a>, bytes: Binary<'a>) -> Term<'a> {
    let result = <Frame as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|f| frame_term(env, &f));
    match result {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(detail) => (atoms::error(), (tags::invalid_frame(), detail)).encode(env),
    }
}

/// A frame to a worker as protobuf bytes: `{:ok, binary}` or `{:error, {:not_serializable,
/// detail}}`. Regular NIF for frames up to 64 KiB of terms (see `bridge_encode_dirty/1`).
#[rustler::nif]
fn bridge_encode<'a>(env: Env<'a>, frame: Term<'a>) -> Term<'a> {
    encode(env, frame)
}

/// `bridge_encode/1` for large frames. DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_encode_dirty<'a>(env: Env<'a>, frame: Term<'a>) -> Term<'a> {
    encode(env, frame)
}

/// A worker's frame to a term: `{:ok, term}` or `{:error, {:invalid_frame, detail}}`.
/// Regular NIF for up to 64 KiB.
#[rustler::nif]
fn bridge_decode<'a>(env: Env<'a>, bytes: Binary<'a>) -> Term<'a> {
    decode(env, bytes)
}

/// `bridge_decode/1` for large frames. DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_decode_dirty<'a>(env: Env<'a>, bytes: Binary<'a>) -> Term<'a> {
    decode(env, bytes)
}
