//! Variable ids as they cross the boundary: the caller's atom or string, kept as text.
//!
//! An atom comes back as the same atom: it exists because the caller passed it in (atoms
//! are never collected), so no atom is ever created here. NIF API 2.16 (OTP 25) reads atom
//! text as Latin-1 only, so an atom whose text is outside Latin-1 (`:"π"`) is read from its
//! external format instead (UTF-8) and keyed under a tag of its own: every atom has exactly
//! one key, and no atom's key equals a string's.
//!
//! A key is one byte string, a tag then the text, so that a table keyed by [`VarKey`] can
//! be searched with bytes built on the stack ([`lookup_bytes`]) instead of an owned key.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use rustler::{Atom, Binary, Decoder, Encoder, Env, Error, NifResult, Term, TermType};

use crate::binary::to_binary;
use crate::term_key::{remembered, AtomMemo, Key};

const ATOM: u8 = 0;
const STRING: u8 = 1;
/// An atom outside Latin-1, keyed by its UTF-8 text.
const ATOM_UTF8: u8 = 2;

// External term format tags (erl_ext_dist): the version byte and the UTF-8 atom forms.
const EXT_VERSION: u8 = 131;
const EXT_SMALL_ATOM_UTF8: u8 = 119;
const EXT_ATOM_UTF8: u8 = 118;

/// An atom or a string id.
///
/// 16 bytes, inline when the tag and the text fit in 15 (strings of up to 14 bytes, the
/// usual case): the graph keeps one key per variable in a dense array that it reads on
/// every insert, and small keys keep that array in cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarKey(Repr);

// A byte string has one representation (inline exactly when it fits), so the derived
// equality is equality of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    Inline {
        len: InlineLen,
        bytes: [u8; INLINE],
    },
    // Boxed twice so the pointer is thin and the whole key stays 16 bytes.
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    Heap(Box<Box<[u8]>>),
}

const INLINE: usize = 15;

// The length of an inline key. An enum rather than a `u8` so that its unused values give
// `Repr` and `Option<VarKey>` room for their discriminants: both stay 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum InlineLen {
    L1 = 1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
}

const INLINE_LENS: [InlineLen; INLINE] = [
    InlineLen::L1,
    InlineLen::L2,
    InlineLen::L3,
    InlineLen::L4,
    InlineLen::L5,
    InlineLen::L6,
    InlineLen::L7,
    InlineLen::L8,
    InlineLen::L9,
    InlineLen::L10,
    InlineLen::L11,
    InlineLen::L12,
    InlineLen::L13,
    InlineLen::L14,
    InlineLen::L15,
];

impl Hash for VarKey {
    // As the bytes hash: maps keyed by `VarKey` are searched with bytes (`Borrow<[u8]>`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl PartialOrd for VarKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for VarKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl VarKey {
    fn tagged(tag: u8, text: &[u8]) -> VarKey {
        match INLINE_LENS.get(text.len()) {
            Some(&len) => {
                let mut bytes = [0u8; INLINE];
                bytes[0] = tag;
                bytes[1..=text.len()].copy_from_slice(text);
                VarKey(Repr::Inline { len, bytes })
            }
            None => {
                let mut bytes = Vec::with_capacity(text.len() + 1);
                bytes.push(tag);
                bytes.extend_from_slice(text);
                VarKey(Repr::Heap(Box::new(bytes.into_boxed_slice())))
            }
        }
    }

    /// The id exactly (its type and its bytes): equal for the same id, different for any
    /// two different ids, such as `:bob` and `"bob"`. What an owner is compared by.
    #[inline]
    pub fn id_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The key's bytes: the tag, then the text.
    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(bytes) => bytes,
        }
    }

    fn text_bytes(&self) -> &[u8] {
        &self.bytes()[1..]
    }

    fn is_atom(&self) -> bool {
        matches!(self.bytes().first(), Some(&ATOM) | Some(&ATOM_UTF8))
    }

    /// The id's text (an atom's name or a string's bytes), for matching session patterns.
    /// Lossy for a string that is not UTF-8: never use it to tell ids apart
    /// ([`id_bytes`](Self::id_bytes) does that).
    pub fn text(&self) -> String {
        match self.bytes().first() {
            Some(&ATOM) => latin1_text(self.text_bytes()).into_owned(),
            _ => String::from_utf8_lossy(self.text_bytes()).into_owned(),
        }
    }

    /// How the id reads in Elixir (`:name` or `"name"`), for DOT labels.
    pub fn label(&self) -> String {
        if self.is_atom() {
            format!(":{}", self.text())
        } else {
            format!("{:?}", self.text())
        }
    }
}

impl Borrow<[u8]> for VarKey {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

// The owned form of looked-up bytes (a tag, then the text), for the ids errors name.
impl From<Vec<u8>> for VarKey {
    fn from(bytes: Vec<u8>) -> Self {
        match bytes.split_first() {
            Some((&tag, text)) => VarKey::tagged(tag, text),
            None => VarKey(Repr::Heap(Box::default())),
        }
    }
}

/// The longest string id, in bytes (as the Elixir side's `is_id` guard has it).
pub const MAX_ID_BYTES: usize = 255;

/// Whether a string of `len` bytes may be an id.
fn is_id_length(len: usize) -> bool {
    (1..=MAX_ID_BYTES).contains(&len)
}

/// An id as the caller's term holds it (the Elixir side's `is_id`).
#[derive(Clone, Copy)]
pub enum IdTerm<'a> {
    /// A string of 1 to [`MAX_ID_BYTES`] bytes.
    Text(&'a [u8]),
    /// An atom.
    Atom(Term<'a>),
}

/// What `term` is as an id, or `None` if it is none. Inspecting the term as a binary first
/// answers "is it a string?" and gives its bytes in one call into the VM, where asking for
/// its type first would take two.
// Always inlined (with `push_id` and `lookup_bytes`): as calls, the option and the match
// cost a hot graph insert ~10 ns.
#[inline(always)]
pub fn id_term(term: Term) -> Option<IdTerm> {
    if let Ok(bin) = Binary::from_term(term) {
        is_id_length(bin.len()).then(|| IdTerm::Text(bin.as_slice()))
    } else if term.is_atom() {
        Some(IdTerm::Atom(term))
    } else {
        None
    }
}

/// Writes the bytes a [`VarKey`] of `id` would hold into `key` (on the stack while they fit
/// its inline buffer); the bytes then find the id in any map keyed by `VarKey`.
///
/// # Errors
/// None today; `NifResult` for symmetry with the decoders.
#[inline(always)]
pub fn push_id<const N: usize>(id: IdTerm, key: &mut Key<N>) -> NifResult<()> {
    match id {
        IdTerm::Text(bytes) => {
            key.push(&[STRING]);
            key.push(bytes);
        }
        IdTerm::Atom(term) => key.push(atom_key(term)?.bytes()),
    }
    Ok(())
}

/// [`push_id`] for a term that must be an id.
///
/// # Errors
/// `BadArg` for what is not an id ([`id_term`]).
#[inline(always)]
pub fn lookup_bytes<const N: usize>(term: Term, key: &mut Key<N>) -> NifResult<()> {
    push_id(id_term(term).ok_or(Error::BadArg)?, key)
}

// Latin-1 text as Unicode: every byte is the code point of the same value, so ASCII text is
// already UTF-8 and is borrowed.
fn latin1_text(latin1: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(latin1) {
        Ok(ascii) if latin1.is_ascii() => Cow::Borrowed(ascii),
        _ => Cow::Owned(latin1.iter().map(|&b| char::from(b)).collect()),
    }
}

fn atom_latin1(term: Term, buf: &mut [u8; 256]) -> Option<usize> {
    // SAFETY: `enif_get_atom` writes at most `buf.len()` bytes (the text and a NUL) into
    // `buf` and returns the count including the NUL, or 0 for a non-atom or an atom whose
    // text does not fit in Latin-1.
    let written = unsafe {
        rustler::sys::enif_get_atom(
            term.get_env().as_c_arg(),
            term.as_c_arg(),
            buf.as_mut_ptr().cast(),
            buf.len() as _,
            rustler::sys::ErlNifCharEncoding::ERL_NIF_LATIN1,
        )
    };
    (written > 0).then(|| written as usize - 1)
}

/// Calls `f` with the text of an id (an atom's name or a string's bytes, as
/// [`VarKey::text`] gives it) without allocating for strings that are valid UTF-8 or atoms
/// that are ASCII.
///
/// # Errors
/// `BadArg` if `term` is neither an atom nor a string.
pub fn with_text<R>(term: Term, f: impl FnOnce(&str) -> R) -> NifResult<R> {
    match term.get_type() {
        TermType::Binary => {
            let bin = Binary::from_term(term)?;
            Ok(match std::str::from_utf8(bin.as_slice()) {
                Ok(text) => f(text),
                Err(_) => f(&String::from_utf8_lossy(bin.as_slice())),
            })
        }
        TermType::Atom => {
            let mut text = [0u8; 256];
            match atom_latin1(term, &mut text) {
                Some(written) => Ok(f(&latin1_text(&text[..written]))),
                None => Ok(f(&atom_key(term)?.text())),
            }
        }
        _ => Err(Error::BadArg),
    }
}

/// The UTF-8 text of any atom, read from its external format (`enif_term_to_binary`): the
/// way to read an atom outside Latin-1 on NIF API 2.16.
fn atom_utf8(term: Term) -> NifResult<Vec<u8>> {
    if !term.is_atom() {
        return Err(Error::BadArg);
    }
    let ext = term.to_binary();
    let ext = ext.as_slice();
    match ext {
        [EXT_VERSION, EXT_SMALL_ATOM_UTF8, len, text @ ..] if text.len() == *len as usize => {
            Ok(text.to_vec())
        }
        [EXT_VERSION, EXT_ATOM_UTF8, hi, lo, text @ ..]
            if text.len() == usize::from(u16::from_be_bytes([*hi, *lo])) =>
        {
            Ok(text.to_vec())
        }
        _ => Err(Error::BadArg),
    }
}

/// The existing atom whose UTF-8 text is `text`, through the VM's safe external-format
/// decoder (which never creates an atom).
fn existing_utf8_atom<'a>(env: Env<'a>, text: &[u8]) -> Option<Term<'a>> {
    let mut ext = Vec::with_capacity(text.len() + 4);
    ext.push(EXT_VERSION);
    if let Ok(len) = u8::try_from(text.len()) {
        ext.extend_from_slice(&[EXT_SMALL_ATOM_UTF8, len]);
    } else {
        let len = u16::try_from(text.len()).ok()?;
        ext.push(EXT_ATOM_UTF8);
        ext.extend_from_slice(&len.to_be_bytes());
    }
    ext.extend_from_slice(text);
    env.binary_to_term(&ext).map(|(term, _)| term)
}

impl<'a> Decoder<'a> for VarKey {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        // A binary first: one call into the VM answers the type and gives the bytes.
        if let Ok(bin) = Binary::from_term(term) {
            Ok(VarKey::tagged(STRING, bin.as_slice()))
        } else if term.is_atom() {
            atom_key(term)
        } else {
            Err(Error::BadArg)
        }
    }
}

thread_local! {
    static ATOM_KEYS: AtomMemo<VarKey> = AtomMemo::default();
}

fn atom_key(term: Term) -> NifResult<VarKey> {
    remembered(&ATOM_KEYS, term, || {
        // Atom names are at most 255 characters; Latin-1 text needs one byte each.
        let mut text = [0u8; 256];
        match atom_latin1(term, &mut text) {
            Some(written) => Ok(VarKey::tagged(ATOM, &text[..written])),
            None => Ok(VarKey::tagged(ATOM_UTF8, &atom_utf8(term)?)),
        }
    })
}

impl Encoder for VarKey {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let text = self.text_bytes();
        // Unreachable fallbacks for ids that came from the caller; never mint a new atom.
        match self.bytes().first() {
            Some(&ATOM) => match Atom::existing_from_bytes(env, text) {
                Ok(atom) => atom.encode(env),
                _ => to_binary(env, text),
            },
            Some(&ATOM_UTF8) => {
                existing_utf8_atom(env, text).unwrap_or_else(|| to_binary(env, text))
            }
            _ => to_binary(env, text),
        }
    }
}

// The graph's key array holds `Option<VarKey>`: keep it at 16 bytes.
const _: () = assert!(std::mem::size_of::<Option<VarKey>>() == 16);
