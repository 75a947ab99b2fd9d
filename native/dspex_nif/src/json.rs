//! JSON for the Python worker protocol: terms become `serde_json` values, `serde_json`
//! writes and parses the text, rustler's serde support builds terms from parsed values. Atoms become strings, `nil` null, maps objects
//! (keys must be strings or atoms), lists and tuples arrays. Pids, refs, funs and invalid
//! UTF-8 are refused with `{:error, {:not_serializable, detail}}`.

use rustler::types::tuple::get_tuple;
use rustler::{Binary, Encoder, Env, ListIterator, MapIterator, Term, TermType};

use crate::binary::to_binary;
use serde_json::{Map, Number, Value};

use crate::atoms::{self, atom_is};

/// Deepest nesting accepted, so a hostile term cannot exhaust the stack.
const MAX_DEPTH: usize = 256;

fn text(term: Term) -> Result<String, String> {
    match term.get_type() {
        TermType::Atom => term.atom_to_string().map_err(|_| "atom".to_string()),
        TermType::Binary => term
            .decode::<String>()
            .map_err(|_| "invalid UTF-8 string".to_string()),
        other => Err(format!("{other:?} map key")),
    }
}

// Terms to serde_json values: the shapes JSON has, nothing else.
fn to_value(term: Term, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    match term.get_type() {
        TermType::Atom => {
            if atom_is(term, atoms::nil()) {
                Ok(Value::Null)
            } else if let Ok(b) = term.decode::<bool>() {
                Ok(Value::Bool(b))
            } else {
                text(term).map(Value::String)
            }
        }
        TermType::Binary => text(term).map(Value::String),
        TermType::Integer => term
            .decode::<i64>()
            .map(|n| Value::Number(n.into()))
            .or_else(|_| term.decode::<u64>().map(|n| Value::Number(n.into())))
            .map_err(|_| "integer out of 64-bit range".to_string()),
        TermType::Float => {
            let f = term.decode::<f64>().map_err(|_| "float".to_string())?;
            Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| "non-finite float".into())
        }
        TermType::List => {
            let iter: ListIterator = term.decode().map_err(|_| "improper list".to_string())?;
            iter.map(|t| to_value(t, depth + 1))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| "tuple".to_string())?;
            items
                .into_iter()
                .map(|t| to_value(t, depth + 1))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        TermType::Map => {
            let mut out = Map::new();
            for (k, v) in MapIterator::new(term).ok_or_else(|| "map".to_string())? {
                out.insert(text(k)?, to_value(v, depth + 1)?);
            }
            Ok(Value::Object(out))
        }
        other => Err(format!("{other:?} cannot be JSON")),
    }
}

fn encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match to_value(term, 0).and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string())) {
        Ok(bytes) => (atoms::ok(), to_binary(env, &bytes)).encode(env),
        Err(detail) => (atoms::error(), (atoms::not_serializable(), detail)).encode(env),
    }
}

fn decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    match serde_json::from_slice::<serde_json::Value>(json.as_slice()) {
        Ok(value) => match rustler::serde::to_term(env, &value) {
            Ok(term) => (atoms::ok(), term).encode(env),
            Err(e) => (atoms::error(), (atoms::invalid_json(), e.to_string())).encode(env),
        },
        Err(e) => (atoms::error(), (atoms::invalid_json(), e.to_string())).encode(env),
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
