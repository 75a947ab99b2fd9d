//! Canonical bytes for a handful of terms, built on the stack: the key a hot NIF looks a
//! cached result up by without allocating (analytics series, access decisions).

use std::cell::RefCell;
use std::thread::LocalKey;

use ahash::AHashMap;
use rustler::{Binary, NifResult, Term, TermType};

/// A key buffer on the stack of `N` bytes, spilling to the heap only for longer keys.
pub struct Key<const N: usize = 192> {
    inline: [u8; N],
    len: usize,
    heap: Option<Vec<u8>>,
}

/// A buffer for one id (spills past 63 bytes): smaller to set up than a [`Key`], which a hot
/// NIF looking up two ids notices.
pub type IdKey = Key<64>;

impl Key {
    /// A buffer for keys made of several terms (names, labels, contexts).
    pub fn new() -> Self {
        Key::empty()
    }
}

impl<const N: usize> Key<N> {
    /// An empty buffer of this size.
    pub fn empty() -> Self {
        Key {
            inline: [0; N],
            len: 0,
            heap: None,
        }
    }

    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        if self.heap.is_none() && self.len + bytes.len() <= self.inline.len() {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.spill().extend_from_slice(bytes);
        }
    }

    /// Appends a tag byte and a word: a fixed-size copy, no `memcpy` call.
    #[inline]
    fn push_tagged(&mut self, tag: u8, word: u64) {
        let at = self.len;
        if self.heap.is_none() && at + 9 <= self.inline.len() {
            self.inline[at] = tag;
            self.inline[at + 1..at + 9].copy_from_slice(&word.to_le_bytes());
            self.len = at + 9;
        } else {
            let heap = self.spill();
            heap.push(tag);
            heap.extend_from_slice(&word.to_le_bytes());
        }
    }

    #[cold]
    fn spill(&mut self) -> &mut Vec<u8> {
        let inline = &self.inline[..self.len];
        self.heap.get_or_insert_with(|| inline.to_vec())
    }

    /// Appends an atom, string or integer, tagged (and strings length-prefixed) so that no
    /// two terms share bytes and a sequence of terms needs no separators.
    #[inline]
    pub fn push_term(&mut self, term: Term, allow_integer: bool) -> Result<(), &'static str> {
        match term.get_type() {
            TermType::Atom => self.push_tagged(1, atom_word(term) as u64),
            TermType::Binary => {
                let bin = Binary::from_term(term).map_err(|_| "not a binary")?;
                self.push_tagged(2, bin.len() as u64);
                self.push(bin.as_slice());
            }
            TermType::Integer if allow_integer => {
                let n: i64 = term.decode().map_err(|_| "integer out of range")?;
                self.push_tagged(3, n as u64);
            }
            _ => {
                return Err(
                    "names must be atoms or strings; label values atoms, strings or integers",
                )
            }
        }
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        self.heap.as_deref().unwrap_or(&self.inline[..self.len])
    }
}

/// An atom's term word: the same atom is the same word for the life of the VM (atoms are
/// never collected), so it identifies the atom without reading its text.
pub fn atom_word(term: Term) -> usize {
    // SAFETY: `ErlNifTerm` is `#[repr(transparent)]` over `size_t` (`usize`).
    unsafe { std::mem::transmute::<rustler::sys::ErlNifTerm, usize>(term.as_c_arg()) }
}

/// A per-thread memo of something read from atoms, keyed by the atom's word.
pub type AtomMemo<T> = RefCell<AHashMap<usize, T>>;

/// Most atoms a memo holds before it starts over.
const ATOM_MEMO_LIMIT: usize = 4_096;

/// What `read` gives for the atom `term`, remembered in this scheduler thread's `memo`:
/// reading an atom's text takes the VM's atom table lock, and an atom's word names the same
/// atom for the life of the VM.
pub fn remembered<T: Clone>(
    memo: &'static LocalKey<AtomMemo<T>>,
    term: Term,
    read: impl FnOnce() -> NifResult<T>,
) -> NifResult<T> {
    let word = atom_word(term);
    if let Some(known) = memo.with(|m| m.borrow().get(&word).cloned()) {
        return Ok(known);
    }
    let value = read()?;
    memo.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= ATOM_MEMO_LIMIT {
            m.clear();
        }
        m.insert(word, value.clone());
    });
    Ok(value)
}

/// Starts loading the data of a boxed term (a binary's header, a tuple's elements) into the
/// cache, so that several terms a NIF is about to read arrive together rather than one
/// memory round trip after another. Only a hint: nothing is read, and immediate terms
/// (atoms, small integers), which have no data elsewhere, are left alone.
pub fn prefetch(term: Term) {
    prefetch_word(atom_word(term));
}

// The primary tag of a boxed term (ERTS `TAG_PRIMARY_BOXED`): its word is the address of its
// data with these two low bits set.
const BOXED: usize = 0b10;

fn prefetch_word(word: usize) {
    if word & 0b11 == BOXED {
        dspex_core::prefetch::address(word & !0b11);
    }
}

/// [`prefetch`] for the first `n` elements of `term` if it is a tuple (nothing otherwise):
/// readers of a list of tuples call it a few entries ahead, so that the data the elements
/// point to is in the cache when they get there.
pub fn prefetch_elements(term: Term, n: usize) {
    let mut arity = 0;
    let mut elements: *const rustler::sys::ErlNifTerm = std::ptr::null();
    // SAFETY: `enif_get_tuple` only reads `term` and, for a tuple, points `elements` at its
    // `arity` elements, which live as long as the term (the calling NIF's arguments).
    let is_tuple = unsafe {
        rustler::sys::enif_get_tuple(
            term.get_env().as_c_arg(),
            term.as_c_arg(),
            &mut arity,
            &mut elements,
        )
    } != 0;
    if is_tuple {
        for i in 0..n.min(arity as usize) {
            // SAFETY: `i < arity`, within the tuple.
            let element = unsafe { *elements.add(i) };
            // SAFETY: `ErlNifTerm` is `#[repr(transparent)]` over `size_t` (`usize`).
            prefetch_word(unsafe {
                std::mem::transmute::<rustler::sys::ErlNifTerm, usize>(element)
            });
        }
    }
}
