//! Canonical bytes for a handful of terms, built on the stack: the key a hot NIF looks a
//! cached result up by without allocating (analytics series, access decisions).

use rustler::{Binary, Term, TermType};

/// A key buffer on the stack, spilling to the heap only for very long names or labels.
pub struct Key {
    inline: [u8; 192],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl Key {
    pub fn new() -> Self {
        Key {
            inline: [0; 192],
            len: 0,
            heap: None,
        }
    }

    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.heap {
            h.extend_from_slice(bytes);
        } else if self.len + bytes.len() <= self.inline.len() {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut h = self.inline[..self.len].to_vec();
            h.extend_from_slice(bytes);
            self.heap = Some(h);
        }
    }

    /// Appends an atom, string or integer, tagged so that no two terms share bytes.
    #[inline]
    pub fn push_term(&mut self, term: Term, allow_integer: bool) -> Result<(), &'static str> {
        match term.get_type() {
            TermType::Atom => {
                self.push(&[1]);
                self.push(&atom_word(term).to_le_bytes());
            }
            TermType::Binary => {
                let bin = Binary::from_term(term).map_err(|_| "not a binary")?;
                self.push(&[2]);
                self.push(&(bin.len() as u64).to_le_bytes());
                self.push(bin.as_slice());
            }
            TermType::Integer if allow_integer => {
                let n: i64 = term.decode().map_err(|_| "integer out of range")?;
                self.push(&[3]);
                self.push(&n.to_le_bytes());
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
