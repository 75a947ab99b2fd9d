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

/// What one item of a walk becomes: a finished output, or a container whose items come next.
enum Step<O, C> {
    Done(O),
    Open(C),
}

/// A container being filled during a walk.
trait Fill<I, O> {
    /// Takes the output of the item it handed out last (`None` the first time) and hands
    /// out its next item, or `None` once all are done.
    fn next(&mut self, done: Option<O>) -> Result<Option<I>, String>;
    /// The finished container.
    fn close(self) -> Result<O, String>;
}

/// Converts `root` depth first with an explicit stack of open containers: `step` turns an
/// item into an output or a container (it is told how many containers are open).
fn walk<I, O, C: Fill<I, O>>(
    root: I,
    mut step: impl FnMut(I, usize) -> Result<Step<O, C>, String>,
) -> Result<O, String> {
    let mut stack: Vec<C> = Vec::new();
    let mut next = Some(root);
    loop {
        let mut done = match next.take() {
            Some(item) => match step(item, stack.len())? {
                Step::Done(out) => Some(out),
                Step::Open(container) => {
                    stack.push(container);
                    None
                }
            },
            None => None,
        };
        loop {
            let Some(top) = stack.last_mut() else {
                return done.ok_or_else(|| "empty".to_string());
            };
            if let Some(item) = top.next(done.take())? {
                next = Some(item);
                break;
            }
            done = match stack.pop() {
                Some(finished) => Some(finished.close()?),
                None => unreachable!("the stack was not empty"),
            };
        }
    }
}

/// A list, tuple or map being turned into a JSON array or object.
enum Open<'a> {
    Array(std::vec::IntoIter<Term<'a>>, Vec<Value>),
    Object(
        std::vec::IntoIter<(Term<'a>, Term<'a>)>,
        Map<String, Value>,
        String,
    ),
}

impl<'a> Fill<Term<'a>, Value> for Open<'a> {
    fn next(&mut self, done: Option<Value>) -> Result<Option<Term<'a>>, String> {
        match self {
            Open::Array(items, out) => {
                out.extend(done);
                Ok(items.next())
            }
            Open::Object(pairs, out, key) => {
                if let Some(v) = done {
                    out.insert(std::mem::take(key), v);
                }
                match pairs.next() {
                    Some((k, v)) => {
                        *key = text(k)?;
                        Ok(Some(v))
                    }
                    None => Ok(None),
                }
            }
        }
    }

    fn close(self) -> Result<Value, String> {
        Ok(match self {
            Open::Array(_, out) => Value::Array(out),
            Open::Object(_, out, _) => Value::Object(out),
        })
    }
}

fn scalar_or_open(term: Term, depth: usize) -> Result<Step<Value, Open>, String> {
    let open = |container| {
        if depth >= MAX_DEPTH {
            Err(format!("nested deeper than {MAX_DEPTH}"))
        } else {
            Ok(Step::Open(container))
        }
    };
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
            open(Open::Array(items.into_iter(), Vec::with_capacity(n)))
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| "tuple".to_string())?;
            let n = items.len();
            open(Open::Array(items.into_iter(), Vec::with_capacity(n)))
        }
        TermType::Map => {
            let pairs: Vec<(Term, Term)> = MapIterator::new(term)
                .ok_or_else(|| "map".to_string())?
                .collect();
            open(Open::Object(pairs.into_iter(), Map::new(), String::new()))
        }
        other => Err(format!("{other:?} cannot be JSON")),
    }
}

/// Terms to `serde_json` values.
fn to_value(term: Term) -> Result<Value, String> {
    walk(term, scalar_or_open)
}

/// A parsed array or object being turned into a list or a map with string keys.
enum Building<'v, 'a> {
    Array(Env<'a>, std::slice::Iter<'v, Value>, Vec<Term<'a>>),
    Object(
        Env<'a>,
        serde_json::map::Iter<'v>,
        Vec<(Term<'a>, Term<'a>)>,
        Option<Term<'a>>,
    ),
}

impl<'v, 'a> Fill<&'v Value, Term<'a>> for Building<'v, 'a> {
    fn next(&mut self, done: Option<Term<'a>>) -> Result<Option<&'v Value>, String> {
        match self {
            Building::Array(_, items, out) => {
                out.extend(done);
                Ok(items.next())
            }
            Building::Object(env, pairs, out, key) => {
                if let (Some(t), Some(k)) = (done, key.take()) {
                    out.push((k, t));
                }
                Ok(pairs.next().map(|(k, v)| {
                    *key = Some(k.as_str().encode(*env));
                    v
                }))
            }
        }
    }

    fn close(self) -> Result<Term<'a>, String> {
        match self {
            Building::Array(env, _, out) => Ok(out.encode(env)),
            Building::Object(env, _, out, _) => {
                let (keys, values): (Vec<Term>, Vec<Term>) = out.into_iter().unzip();
                Term::map_from_term_arrays(env, &keys, &values)
                    .map_err(|_| "duplicate object key".to_string())
            }
        }
    }
}

/// `serde_json` values to terms.
fn to_term<'a>(env: Env<'a>, value: &Value) -> Result<Term<'a>, String> {
    walk(value, |v, _depth| {
        Ok(match v {
            Value::Null => Step::Done(atoms::nil().encode(env)),
            Value::Bool(b) => Step::Done(b.encode(env)),
            Value::Number(n) => Step::Done(if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(0.0).encode(env)
            }),
            Value::String(s) => Step::Done(s.as_str().encode(env)),
            Value::Array(items) => Step::Open(Building::Array(
                env,
                items.iter(),
                Vec::with_capacity(items.len()),
            )),
            Value::Object(map) => Step::Open(Building::Object(
                env,
                map.iter(),
                Vec::with_capacity(map.len()),
                None,
            )),
        })
    })
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
