//! # dspex_core
//!
//! The state machines behind the DSPex **BridgedState** backend, in plain Rust.
//!
//! This crate knows nothing about Erlang: it does no I/O, starts no threads and never
//! reads the clock by itself. Time comes in as an argument (nanoseconds from a [`Clock`]),
//! and every operation that has consequences beyond its return value returns them as
//! plain data ([`WithEffects`]) for the caller to carry out. The `dspex_nif` crate is a
//! thin shell over this crate; Rust programs can link it directly.
//!
//! ## Features
//!
//! One cargo feature per state machine, all on by default: `acl`, `analytics`, `breaker`,
//! `coordinator`, `graph`, `ha`, `rate_limit`, and `session` (the one write path of a
//! session: typed commands over its graph, versions and lock fences, each accepted one
//! logged with a sequence number). With `default-features = false, features = ["breaker"]`
//! only the breaker (and the always-present clock, effects, error and snapshot frame) is
//! compiled, without regex, ipnet or postcard.
//!
//! ## Example: a checked snapshot frame
//!
//! ```
//! use dspex_core::snapshot::{decode_frame, encode_frame, FrameKind};
//!
//! let frame = encode_frame(FrameKind::Session, b"payload bytes");
//! let decoded = decode_frame(&frame).expect("a frame we just wrote is valid");
//! assert_eq!(decoded.kind, FrameKind::Session);
//! assert_eq!(decoded.payload, b"payload bytes");
//!
//! // A single flipped bit is caught by the checksum.
//! let mut corrupt = frame.clone();
//! let last = corrupt.len() - 1;
//! corrupt[last] ^= 1;
//! assert!(decode_frame(&corrupt).is_err());
//! ```
//!
//! ## Example: a manual clock for deterministic tests
//!
//! ```
//! use dspex_core::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(0);
//! clock.advance_millis(1_500);
//! assert_eq!(clock.now_nanos(), 1_500_000_000);
//! ```

// No unsafe code but one reviewed exception: the cache prefetch hint (`prefetch.rs`),
// which reads nothing and cannot fault.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "acl")]
pub mod acl;
#[cfg(feature = "analytics")]
pub mod analytics;
#[cfg(feature = "breaker")]
pub mod breaker;
pub mod clock;
#[cfg(feature = "coordinator")]
pub mod coordinator;
pub mod effects;
pub mod error;
#[cfg(feature = "graph")]
pub mod graph;
#[cfg(feature = "ha")]
pub mod ha;
pub mod prefetch;
#[cfg(feature = "rate_limit")]
pub mod rate_limit;
#[cfg(feature = "session")]
pub mod session;
pub mod snapshot;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use effects::WithEffects;
pub use error::{Error, Result};
