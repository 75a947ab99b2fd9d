//! JSON for the Python worker protocol: terms become `serde_json` values, `serde_json`
//! writes and parses the text, and parsed values become terms again. Atoms become strings,
//! `nil` null, maps objects (keys must be strings or atoms), lists and tuples arrays. Pids,
//! refs, funs, improper lists and invalid UTF-8 are refused with
//! `{:error, {:not_serializable, detail}}`.
//!
//! Both directions walk the term with an explicit stack, never by recursion: a caller's term
//! can be nested as deep as it likes without touching the scheduler's stack (a dirty
//! scheduler's is small: 225 nested lists overflowed the recursive walk this replaces). The
//! nesting limit is `MAX_DEPTH` both ways, the same as `serde_json`'s parser, so whatever
//! the encoder writes the decoder reads back.

use rustler::types::tuple::get_tuple;
use rustler::{Binary, Encoder, Env, ListIterator, MapIterator, Term, TermType};

use crate::binary::to_binary;
use serde_json::{Map, Number, Value};

use crate::atoms::{self, atom_is};

/// Deepest nesting of lists, tuples and maps accepted (the outermost container is depth 1).
/// `serde_json`'s parser accepts text nested up to 127 levels (its recursion limit of 128
/// counts the level that fails); the encoder refuses deeper terms, so the two limits agree.
pub const MAX_DEPTH: usize = 127;

fn text(term: Term) -> Result<String, String> {
    match term.get_type() {
        TermType::Atom => term.atom_to_string().map_err(|_| "atom".to_string()),
        TermType::Binary => term
            .decode::<String>()
            .map_err(|_| "invalid UTF-8 string".to_string()),
        other => Err(format!("{other:?} map key")),
    }
}

/// A container being filled: its remaining items and what was converted so far.
enum Open<'a> {
    Array(std::vec::IntoIter<Term<'a>>, Vec<Value>),
    Object(
        std::vec::IntoIter<(Term<'a>, Term<'a>)>,
        Map<String, Value>,
        String,
    ),
}

/// What one term becomes: a finished value, or a container whose items come next.
enum Step<'a> {
    Done(Value),
    Open(Open<'a>),
}

fn scalar_or_open(term: Term) -> Result<Step, String> {
    match term.get_type() {
        TermType::Atom => {
            if atom_is(term, atoms::nil()) {
                Ok(Step::Done(Value::Null))
            } else if let Ok(b) = term.decode::<bool>() {
                Ok(Step::Done(Value::Bool(b)))
            } else {
                text(term).map(|s| Step::Done(Value::String(s)))
            }
        }
        TermType::Binary => text(term).map(|s| Step::Done(Value::String(s))),
        TermType::Integer => term
            .decode::<i64>()
            .map(|n| Value::Number(n.into()))
            .or_else(|_| term.decode::<u64>().map(|n| Value::Number(n.into())))
            .map(Step::Done)
            .map_err(|_| "integer out of 64-bit range".to_string()),
        TermType::Float => {
            let f = term.decode::<f64>().map_err(|_| "float".to_string())?;
            Number::from_f64(f)
                .map(|n| Step::Done(Value::Number(n)))
                .ok_or_else(|| "non-finite float".into())
        }
        TermType::List => {
            // ListIterator panics at an improper tail: its length (which fails for an
            // improper list) is asked for first.
            let n = term
                .list_length()
                .map_err(|_| "improper list".to_string())?;
            let iter: ListIterator = term.decode().map_err(|_| "improper list".to_string())?;
            let items: Vec<Term> = iter.collect();
            Ok(Step::Open(Open::Array(
                items.into_iter(),
                Vec::with_capacity(n),
            )))
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| "tuple".to_string())?;
            let n = items.len();
            Ok(Step::Open(Open::Array(
                items.into_iter(),
                Vec::with_capacity(n),
            )))
        }
        TermType::Map => {
            let pairs: Vec<(Term, Term)> = MapIterator::new(term)
                .ok_or_else(|| "map".to_string())?
                .collect();
            Ok(Step::Open(Open::Object(
                pairs.into_iter(),
                Map::new(),
                String::new(),
            )))
        }
        other => Err(format!("{other:?} cannot be JSON")),
    }
}

/// Terms to `serde_json` values, iteratively.
fn to_value(term: Term) -> Result<Value, String> {
    let mut stack: Vec<Open> = Vec::new();
    let mut next = Some(term);
    loop {
        // Convert the next term, or close containers whose items are all done.
        let mut done = match next.take() {
            Some(t) => match scalar_or_open(t)? {
                Step::Done(v) => Some(v),
                Step::Open(open) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!("nested deeper than {MAX_DEPTH}"));
                    }
                    stack.push(open);
                    None
                }
            },
            None => None,
        };
        loop {
            let Some(top) = stack.last_mut() else {
                return done.ok_or_else(|| "empty".to_string());
            };
            match top {
                Open::Array(items, out) => {
                    if let Some(v) = done.take() {
                        out.push(v);
                    }
                    if let Some(t) = items.next() {
                        next = Some(t);
                        break;
                    }
                }
                Open::Object(pairs, out, key) => {
                    if let Some(v) = done.take() {
                        out.insert(std::mem::take(key), v);
                    }
                    if let Some((k, v)) = pairs.next() {
                        *key = text(k)?;
                        next = Some(v);
                        break;
                    }
                }
            }
            done = Some(match stack.pop() {
                Some(Open::Array(_, out)) => Value::Array(out),
                Some(Open::Object(_, out, _)) => Value::Object(out),
                None => unreachable!("the stack was not empty"),
            });
        }
    }
}

/// A parsed container being turned into a term: its items, and the terms made so far.
enum Building<'v, 'a> {
    Array(std::slice::Iter<'v, Value>, Vec<Term<'a>>),
    Object(
        serde_json::map::Iter<'v>,
        Vec<(Term<'a>, Term<'a>)>,
        Option<Term<'a>>,
    ),
}

/// `serde_json` values to terms, iteratively. Objects become maps with string keys.
fn to_term<'a>(env: Env<'a>, value: &Value) -> Result<Term<'a>, String> {
    let mut stack: Vec<Building<'_, 'a>> = Vec::new();
    let mut next = Some(value);
    loop {
        let mut done = match next.take() {
            Some(Value::Null) => Some(atoms::nil().encode(env)),
            Some(Value::Bool(b)) => Some(b.encode(env)),
            Some(Value::Number(n)) => Some(if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(0.0).encode(env)
            }),
            Some(Value::String(s)) => Some(s.as_str().encode(env)),
            Some(Value::Array(items)) => {
                stack.push(Building::Array(
                    items.iter(),
                    Vec::with_capacity(items.len()),
                ));
                None
            }
            Some(Value::Object(map)) => {
                stack.push(Building::Object(
                    map.iter(),
                    Vec::with_capacity(map.len()),
                    None,
                ));
                None
            }
            None => None,
        };
        loop {
            let Some(top) = stack.last_mut() else {
                return done.ok_or_else(|| "empty".to_string());
            };
            match top {
                Building::Array(items, out) => {
                    if let Some(t) = done.take() {
                        out.push(t);
                    }
                    if let Some(v) = items.next() {
                        next = Some(v);
                        break;
                    }
                }
                Building::Object(pairs, out, key) => {
                    if let (Some(t), Some(k)) = (done.take(), key.take()) {
                        out.push((k, t));
                    }
                    if let Some((k, v)) = pairs.next() {
                        *key = Some(k.as_str().encode(env));
                        next = Some(v);
                        break;
                    }
                }
            }
            done = Some(match stack.pop() {
                Some(Building::Array(_, out)) => out.encode(env),
                Some(Building::Object(_, out, _)) => {
                    let (keys, values): (Vec<Term>, Vec<Term>) = out.into_iter().unzip();
                    Term::map_from_term_arrays(env, &keys, &values)
                        .map_err(|_| "duplicate object key".to_string())?
                }
                None => unreachable!("the stack was not empty"),
            });
        }
    }
}

fn encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match to_value(term).and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string())) {
        Ok(bytes) => (atoms::ok(), to_binary(env, &bytes)).encode(env),
        Err(detail) => (atoms::error(), (atoms::not_serializable(), detail)).encode(env),
    }
}

fn decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    // serde_json's parser stops past MAX_DEPTH levels, so neither it nor dropping the
    // parsed value recurses deeper than that.
    match serde_json::from_slice::<Value>(json.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|value| to_term(env, &value))
    {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(e) => (atoms::error(), (atoms::invalid_json(), e)).encode(env),
    }
}

/// Term to JSON text. Regular NIF for small terms (the Elixir side sends terms over 64 KiB
/// to `json_encode_dirty/1`).
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode(env, term)
}

/// `json_encode/1` for large terms. DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode(env, term)
}

/// JSON text to a term. Regular NIF for input up to 64 KiB.
#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    decode(env, json)
}

/// `json_decode/1` for large input. DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode_dirty<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    decode(env, json)
}
