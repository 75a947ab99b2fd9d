//! The crate's error type.
//!
//! Every variant maps to a stable atom (see [`Error::reason`]) so the NIF shell can turn it
//! into `{:error, reason}` without inspecting messages.

/// Errors returned by dspex_core operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A snapshot frame does not start with the expected magic bytes.
    #[error("not a dspex snapshot (bad magic bytes)")]
    BadMagic,
    /// A snapshot frame is shorter than its header says.
    #[error("snapshot truncated: expected {expected} bytes, got {actual}")]
    Truncated {
        /// Bytes the header announced (header included).
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },
    /// A snapshot frame has bytes after its payload.
    #[error("snapshot has {extra} trailing bytes")]
    TrailingBytes {
        /// Number of unexpected bytes.
        extra: u64,
    },
    /// The snapshot was written by a newer (or unknown) format version.
    #[error("unsupported snapshot format version {found} (this build reads up to {supported})")]
    UnsupportedVersion {
        /// Version found in the frame.
        found: u16,
        /// Highest version this build reads.
        supported: u16,
    },
    /// The snapshot kind byte is unknown.
    #[error("unknown snapshot kind {0}")]
    UnknownKind(u8),
    /// The payload checksum does not match.
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// Checksum stored in the frame.
        stored: u32,
        /// Checksum of the payload as read.
        computed: u32,
    },
    /// The payload is larger than the format allows.
    #[error("payload of {0} bytes exceeds the snapshot size limit")]
    PayloadTooLarge(u64),
    /// A frame of another kind than the one expected.
    #[error("snapshot of kind {found}, expected kind {expected}")]
    WrongKind {
        /// The kind expected.
        expected: u8,
        /// The kind found.
        found: u8,
    },
    /// A frame's payload does not decode.
    #[error("snapshot payload does not decode: {0}")]
    Payload(String),
    /// A manual clock was asked to move backwards.
    #[error("clock cannot go backwards from {current} to {requested}")]
    ClockWentBackwards {
        /// Current reading.
        current: u64,
        /// Requested reading.
        requested: u64,
    },
}

impl Error {
    /// A stable, snake_case reason name for this error, used as the Erlang atom.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadMagic => "bad_magic",
            Error::Truncated { .. } => "truncated",
            Error::TrailingBytes { .. } => "trailing_bytes",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::UnknownKind(_) => "unknown_kind",
            Error::ChecksumMismatch { .. } => "checksum_mismatch",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::WrongKind { .. } => "wrong_kind",
            Error::Payload(_) => "bad_payload",
            Error::ClockWentBackwards { .. } => "clock_went_backwards",
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
