//! The snapshot frame: a versioned, checksummed envelope for exported state.
//!
//! A frame is a fixed 20-byte header followed by an opaque payload:
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic `DSPX`                            |
//! | 4      | 2    | format version, little-endian           |
//! | 6      | 1    | kind ([`FrameKind`])                    |
//! | 7      | 1    | flags (reserved, 0)                     |
//! | 8      | 8    | payload length, little-endian           |
//! | 16     | 4    | CRC-32 (IEEE) of the payload, LE        |
//! | 20     | n    | payload                                 |
//!
//! The payload's own encoding belongs to the writer (the Elixir SessionStore writes the
//! Erlang external term format). The frame guarantees that a reader either gets exactly the
//! bytes that were written or a precise error: wrong file, truncated transfer, flipped bits,
//! or a snapshot from a newer version of this library.

use crate::{Error, Result};

/// The magic bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"DSPX";
/// The frame format version this build writes and the highest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 20;
/// Largest payload accepted (4 GiB), so a corrupt length can never ask for more.
pub const MAX_PAYLOAD: u64 = 1 << 32;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// One session: variables with history and the features' per-session state.
    Session = 1,
    /// An analytics snapshot (every series with its windows).
    Analytics = 2,
    /// A session in its high-availability envelope (epoch, lock fences); see `ha::snapshot`.
    HaSession = 3,
    /// A session aggregate's image (see `session::SessionImage`).
    SessionImage = 4,
}

impl FrameKind {
    /// The kind for a stored byte.
    ///
    /// # Errors
    /// [`Error::UnknownKind`] for a byte no kind uses.
    pub fn from_byte(byte: u8) -> Result<Self> {
        match byte {
            1 => Ok(FrameKind::Session),
            2 => Ok(FrameKind::Analytics),
            3 => Ok(FrameKind::HaSession),
            4 => Ok(FrameKind::SessionImage),
            other => Err(Error::UnknownKind(other)),
        }
    }
}

/// A decoded frame borrowing its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Format version the frame was written with.
    pub version: u16,
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload bytes, verified against the checksum.
    pub payload: &'a [u8],
}

/// Wraps `payload` in a frame of the current format version.
///
/// # Panics
/// Never for payloads up to [`MAX_PAYLOAD`]; larger payloads are a programming error on the
/// writer's side (use [`try_encode_frame`] when the size is not under your control).
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    try_encode_frame(kind, payload).expect("payload within MAX_PAYLOAD")
}

/// Wraps `payload` in a frame, refusing payloads over [`MAX_PAYLOAD`].
///
/// # Errors
/// [`Error::PayloadTooLarge`] when the payload exceeds [`MAX_PAYLOAD`].
pub fn try_encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>> {
    let len = payload.len() as u64;
    if len > MAX_PAYLOAD {
        return Err(Error::PayloadTooLarge(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads and verifies a frame.
///
/// # Errors
/// [`Error::BadMagic`], [`Error::Truncated`], [`Error::TrailingBytes`],
/// [`Error::UnsupportedVersion`], [`Error::UnknownKind`], [`Error::PayloadTooLarge`] or
/// [`Error::ChecksumMismatch`], checked in that order of the header.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>> {
    let actual = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..4] != MAGIC {
        // A short input that is a prefix of the magic is a truncated frame, not a foreign file.
        return if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            Err(Error::Truncated {
                expected: HEADER_LEN as u64,
                actual,
            })
        } else {
            Err(Error::BadMagic)
        };
    }
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            expected: HEADER_LEN as u64,
            actual,
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind = FrameKind::from_byte(bytes[6])?;
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8-byte slice"));
    if len > MAX_PAYLOAD {
        return Err(Error::PayloadTooLarge(len));
    }
    let stored = u32::from_le_bytes(bytes[16..20].try_into().expect("4-byte slice"));
    let expected = HEADER_LEN as u64 + len;
    if actual < expected {
        return Err(Error::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(Error::TrailingBytes {
            extra: actual - expected,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    Ok(Frame {
        version,
        kind,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_empty_payload() {
        let frame = encode_frame(FrameKind::Session, b"");
        assert_eq!(frame.len(), HEADER_LEN);
        let decoded = decode_frame(&frame).unwrap();
        assert_eq!(decoded.payload, b"");
        assert_eq!(decoded.version, FORMAT_VERSION);
    }

    #[test]
    fn foreign_bytes_are_bad_magic() {
        assert_eq!(decode_frame(b"PK\x03\x04 zip file"), Err(Error::BadMagic));
        assert_eq!(decode_frame(b"X"), Err(Error::BadMagic));
    }

    #[test]
    fn short_prefix_is_truncated() {
        assert!(matches!(decode_frame(b""), Err(Error::Truncated { .. })));
        assert!(matches!(decode_frame(b"DS"), Err(Error::Truncated { .. })));
        assert!(matches!(
            decode_frame(b"DSPX\x01"),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn newer_version_is_refused() {
        let mut frame = encode_frame(FrameKind::Session, b"abc");
        frame[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            decode_frame(&frame),
            Err(Error::UnsupportedVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION
            })
        );
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut frame = encode_frame(FrameKind::Session, b"abc");
        frame[6] = 200;
        assert_eq!(decode_frame(&frame), Err(Error::UnknownKind(200)));
    }

    #[test]
    fn absurd_length_is_refused_before_allocation() {
        let mut frame = encode_frame(FrameKind::Session, b"abc");
        frame[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_frame(&frame), Err(Error::PayloadTooLarge(u64::MAX)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode_frame(FrameKind::Session, b"abc");
        frame.push(0);
        assert_eq!(decode_frame(&frame), Err(Error::TrailingBytes { extra: 1 }));
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let frame = encode_frame(FrameKind::Session, &payload);
            let decoded = decode_frame(&frame).unwrap();
            prop_assert_eq!(decoded.payload, &payload[..]);
        }

        #[test]
        fn any_single_bit_flip_in_payload_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 1..512),
            index in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut frame = encode_frame(FrameKind::Session, &payload);
            let i = HEADER_LEN + index.index(payload.len());
            frame[i] ^= 1 << bit;
            let is_checksum_error = matches!(
                decode_frame(&frame),
                Err(Error::ChecksumMismatch { .. })
            );
            prop_assert!(is_checksum_error);
        }

        #[test]
        fn every_truncation_is_an_error(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = encode_frame(FrameKind::Session, &payload);
            let keep = cut.index(frame.len());
            let is_truncated = matches!(decode_frame(&frame[..keep]), Err(Error::Truncated { .. }));
            prop_assert!(is_truncated);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame(&bytes);
        }
    }
}
