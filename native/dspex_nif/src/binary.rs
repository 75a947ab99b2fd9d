//! Bytes to an Erlang binary term.

use rustler::{Binary, Encoder, Env, NewBinary, Term};

/// A new binary term holding a copy of `bytes`.
pub fn to_binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut out = NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).encode(env)
}
