//! Variable ids as they cross the boundary: the caller's atom or string, kept as text.
//!
//! An atom comes back as the same atom through `enif_make_existing_atom`: it exists because
//! the caller passed it in (atoms are never collected), so no atom is ever created here.
//! Atom text is read as Latin-1 (NIF API 2.16, OTP 25): atoms outside Latin-1 are refused
//! with badarg; use strings for such names.

use rustler::{Atom, Binary, Decoder, Encoder, Env, Error, NifResult, Term, TermType};

use crate::binary::to_binary;

/// An atom or a string id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VarKey {
    /// An atom's text.
    Atom(Box<str>),
    /// A string's bytes.
    Str(Box<[u8]>),
}

impl VarKey {
    /// The id's text (an atom's name or a string's bytes), for matching session patterns.
    pub fn text(&self) -> String {
        match self {
            VarKey::Atom(a) => a.to_string(),
            VarKey::Str(s) => String::from_utf8_lossy(s).into_owned(),
        }
    }

    /// How the id reads in Elixir (`:name` or `"name"`), for DOT labels.
    pub fn label(&self) -> String {
        match self {
            VarKey::Atom(a) => format!(":{a}"),
            VarKey::Str(_) => format!("{:?}", self.text()),
        }
    }
}

impl<'a> Decoder<'a> for VarKey {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        match term.get_type() {
            TermType::Atom => Ok(VarKey::Atom(term.atom_to_string()?.into_boxed_str())),
            TermType::Binary => {
                let bin = Binary::from_term(term)?;
                Ok(VarKey::Str(bin.as_slice().into()))
            }
            _ => Err(Error::BadArg),
        }
    }
}

impl Encoder for VarKey {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            VarKey::Atom(text) => match Atom::existing_from_bytes(env, text.as_bytes()) {
                Ok(atom) => atom.encode(env),
                // Unreachable for ids that came from the caller; never mint a new atom.
                _ => text.as_ref().encode(env),
            },
            VarKey::Str(bytes) => to_binary(env, bytes),
        }
    }
}
