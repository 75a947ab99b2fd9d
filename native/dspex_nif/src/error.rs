//! Turning `dspex_core::Error` into `{:error, reason}` terms.

use dspex_core::Error;
use rustler::{Atom, Encoder, Env, Term};

/// Encodes a core error as `{:error, reason}` or `{:error, {reason, detail}}`.
///
/// The reason atom comes from [`Error::reason`], a fixed set of names, so no atom is ever
/// made from caller data.
pub fn encode_error<'a>(env: Env<'a>, err: &Error) -> Term<'a> {
    let reason = Atom::from_str(env, err.reason()).expect("reason names are valid atoms");
    let reason_term = match err {
        Error::Truncated { expected, actual } => (reason, (*expected, *actual)).encode(env),
        Error::TrailingBytes { extra } => (reason, *extra).encode(env),
        Error::UnsupportedVersion { found, .. } => (reason, *found).encode(env),
        Error::UnknownKind(kind) => (reason, *kind).encode(env),
        Error::PayloadTooLarge(len) => (reason, *len).encode(env),
        _ => reason.encode(env),
    };
    (crate::atoms::error(), reason_term).encode(env)
}
