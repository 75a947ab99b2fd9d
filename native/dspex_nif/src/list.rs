//! Lists decoded without panicking.
//!
//! rustler's `ListIterator` (and so its `Vec<T>` decoder) panics when it reaches an improper
//! tail such as `[1 | 2]`; rustler turns that panic into a `:nif_panicked` raise. Every list
//! a NIF takes goes through here instead: its length is asked for first, which fails cleanly
//! for an improper list, so a bad list is an `ArgumentError` (or the NIF's own error) like
//! any other wrong term.

use rustler::{Decoder, Encoder, Env, NifResult, Term};

/// The items of a proper list; `Err(BadArg)` for an improper list or a non-list.
pub fn terms(term: Term) -> NifResult<Vec<Term>> {
    let n = term.list_length()?;
    let mut out = Vec::with_capacity(n);
    out.extend(term.into_list_iterator()?);
    Ok(out)
}

/// A proper list of `T`, decoded as a `Vec<T>` is, minus the panic.
pub struct List<T>(pub Vec<T>);

impl<'a, T: Decoder<'a>> Decoder<'a> for List<T> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        terms(term)?
            .into_iter()
            .map(|t| t.decode::<T>())
            .collect::<NifResult<Vec<T>>>()
            .map(List)
    }
}

impl<T: Encoder> Encoder for List<T> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        self.0.encode(env)
    }
}
