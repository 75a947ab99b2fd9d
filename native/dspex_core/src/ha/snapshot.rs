//! The migration and replication envelope.
//!
//! A session's own export (a [`FrameKind::Session`] frame: variables with history, the
//! dependency graph, access rules) travels inside an envelope that adds what ownership needs:
//! the session id, the epoch it was taken at, and the lock fences (each held lock's optimizer
//! and fencing token, so the new owner never hands out a token at or below one already
//! issued). The envelope is itself a checked frame ([`FrameKind::HaSession`]) with its own
//! format version; [`decode`] checks both frames, so a corrupt, truncated or newer snapshot is
//! refused before anything is applied.

use serde::{Deserialize, Serialize};

use super::ownership::Epoch;
use crate::snapshot::{decode_frame, try_encode_frame, FrameKind};
use crate::{Error, Result};

/// The envelope format this build writes and the newest it reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// A lock held when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFence {
    /// The locked variable (the caller's encoding of its id).
    pub variable: Vec<u8>,
    /// The holder (the caller's encoding of the optimizer id).
    pub holder: Vec<u8>,
    /// The holder's fencing token.
    pub token: u64,
    /// What was left of its lease, in milliseconds.
    pub lease_ms: u64,
}

/// A session on its way to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// Envelope format version.
    pub version: u16,
    /// The session id (the caller's encoding).
    pub session_id: Vec<u8>,
    /// The owner's epoch when the snapshot was taken.
    pub epoch: Epoch,
    /// The session's own checked frame.
    pub session_frame: Vec<u8>,
    /// Locks held at the time.
    pub locks: Vec<LockFence>,
}

/// Wraps a session frame (checked here first) into an envelope frame.
///
/// # Errors
/// The session frame's own decoding errors, or [`Error::WrongKind`] when it is not a session
/// frame.
pub fn encode(
    session_id: &[u8],
    epoch: &Epoch,
    session_frame: &[u8],
    locks: Vec<LockFence>,
) -> Result<Vec<u8>> {
    let inner = decode_frame(session_frame)?;
    if inner.kind != FrameKind::Session {
        return Err(Error::WrongKind {
            expected: FrameKind::Session as u8,
            found: inner.kind as u8,
        });
    }
    let snapshot = SessionSnapshot {
        version: ENVELOPE_VERSION,
        session_id: session_id.to_vec(),
        epoch: epoch.clone(),
        session_frame: session_frame.to_vec(),
        locks,
    };
    let payload = postcard::to_allocvec(&snapshot).map_err(|e| Error::Payload(e.to_string()))?;
    try_encode_frame(FrameKind::HaSession, &payload)
}

/// Checks and opens an envelope: the outer frame, the envelope version, and the inner
/// session frame.
///
/// # Errors
/// Any frame error of either frame; [`Error::UnsupportedVersion`] for an envelope newer than
/// [`ENVELOPE_VERSION`]; [`Error::WrongKind`] for another kind of frame;
/// [`Error::Payload`] for a payload that does not decode.
pub fn decode(bytes: &[u8]) -> Result<SessionSnapshot> {
    let frame = decode_frame(bytes)?;
    if frame.kind != FrameKind::HaSession {
        return Err(Error::WrongKind {
            expected: FrameKind::HaSession as u8,
            found: frame.kind as u8,
        });
    }
    // The version is the first field, so a newer envelope is recognised even when the rest
    // of its layout changed.
    let (version, _): (u16, _) =
        postcard::take_from_bytes(frame.payload).map_err(|e| Error::Payload(e.to_string()))?;
    if version == 0 || version > ENVELOPE_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_VERSION,
        });
    }
    let snapshot: SessionSnapshot =
        postcard::from_bytes(frame.payload).map_err(|e| Error::Payload(e.to_string()))?;
    let inner = decode_frame(&snapshot.session_frame)?;
    if inner.kind != FrameKind::Session {
        return Err(Error::WrongKind {
            expected: FrameKind::Session as u8,
            found: inner.kind as u8,
        });
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::encode_frame;

    fn sample() -> (Vec<u8>, Epoch) {
        let epoch = Epoch {
            counter: 3,
            node: "a@127.0.0.1".into(),
        };
        let session = encode_frame(FrameKind::Session, b"variables and history");
        let locks = vec![LockFence {
            variable: b"temperature".to_vec(),
            holder: b"opt_1".to_vec(),
            token: 17,
            lease_ms: 30_000,
        }];
        (encode(b"s1", &epoch, &session, locks).unwrap(), epoch)
    }

    #[test]
    fn round_trip() {
        let (bytes, epoch) = sample();
        let s = decode(&bytes).unwrap();
        assert_eq!(s.epoch, epoch);
        assert_eq!(s.session_id, b"s1");
        assert_eq!(s.locks[0].token, 17);
        assert_eq!(
            decode_frame(&s.session_frame).unwrap().payload,
            b"variables and history"
        );
    }

    #[test]
    fn corrupt_truncated_and_foreign_inputs_are_refused() {
        let (bytes, _) = sample();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode(&flipped),
            Err(Error::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(Error::Truncated { .. })
        ));
        let session = encode_frame(FrameKind::Session, b"x");
        assert!(matches!(decode(&session), Err(Error::WrongKind { .. })));
        assert!(matches!(
            encode(b"s", &Epoch::zero(), b"not a frame", vec![]),
            Err(Error::BadMagic)
        ));
    }

    #[test]
    fn a_newer_envelope_is_refused_by_version() {
        let session = encode_frame(FrameKind::Session, b"x");
        let newer = SessionSnapshot {
            version: ENVELOPE_VERSION + 1,
            session_id: b"s".to_vec(),
            epoch: Epoch::zero(),
            session_frame: session,
            locks: vec![],
        };
        let payload = postcard::to_allocvec(&newer).unwrap();
        let bytes = encode_frame(FrameKind::HaSession, &payload);
        assert!(matches!(
            decode(&bytes),
            Err(Error::UnsupportedVersion { found, .. }) if found == ENVELOPE_VERSION + 1
        ));
    }
}
