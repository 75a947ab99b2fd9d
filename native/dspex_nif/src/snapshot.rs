//! Snapshot framing NIFs (`dspex_core::snapshot`).

use dspex_core::snapshot::{decode_frame, try_encode_frame, FrameKind};
use rustler::{Binary, Encoder, Env, Term};

use crate::binary::to_binary;

use crate::atoms;
use crate::error::encode_error;

/// Above this size framing work (one CRC pass and one copy) can exceed ~1 ms, so the work is
/// done by the dirty variants below.
pub const DIRTY_THRESHOLD: usize = 256 * 1024;

fn encode<'a>(env: Env<'a>, payload: Binary) -> Term<'a> {
    match try_encode_frame(FrameKind::Session, payload.as_slice()) {
        Ok(frame) => (atoms::ok(), to_binary(env, &frame)).encode(env),
        Err(err) => encode_error(env, &err),
    }
}

fn decode<'a>(env: Env<'a>, frame: Binary<'a>) -> Term<'a> {
    match decode_frame(frame.as_slice()) {
        Ok(decoded) => {
            let start = frame.len() - decoded.payload.len();
            // A sub-binary shares the caller's bytes instead of copying the payload.
            let payload = frame
                .make_subbinary(start, decoded.payload.len())
                .expect("payload lies within the frame");
            (atoms::ok(), decoded.version, payload).encode(env)
        }
        Err(err) => encode_error(env, &err),
    }
}

/// Wraps a session payload in a checksummed frame. Regular NIF; callers switch to
/// `snapshot_encode_dirty/1` for payloads over 256 KiB.
#[rustler::nif]
fn snapshot_encode<'a>(env: Env<'a>, payload: Binary) -> Term<'a> {
    encode(env, payload)
}

/// `snapshot_encode/1` for large payloads. DirtyCpu: a multi-megabyte CRC exceeds 1 ms.
#[rustler::nif(schedule = "DirtyCpu")]
fn snapshot_encode_dirty<'a>(env: Env<'a>, payload: Binary) -> Term<'a> {
    encode(env, payload)
}

/// Verifies a frame and returns `{:ok, version, payload}`. Regular NIF for frames up to
/// 256 KiB.
#[rustler::nif]
fn snapshot_decode<'a>(env: Env<'a>, frame: Binary<'a>) -> Term<'a> {
    decode(env, frame)
}

/// `snapshot_decode/1` for large frames. DirtyCpu.
#[rustler::nif(schedule = "DirtyCpu")]
fn snapshot_decode_dirty<'a>(env: Env<'a>, frame: Binary<'a>) -> Term<'a> {
    decode(env, frame)
}

/// The dirty threshold, so the Elixir side does not hard-code it.
#[rustler::nif]
fn snapshot_dirty_threshold() -> usize {
    DIRTY_THRESHOLD
}
