//! High availability: where a session lives, who may write it, and how it moves.
//!
//! * [`placement`]: rendezvous (highest random weight) hashing of session ids over weighted
//!   nodes. Every node computes the same owner and the same successors from the same
//!   membership, with no coordination; a membership change moves only the sessions it must.
//! * [`ownership`]: one session's role on one node (`owned`, `migrating_out`,
//!   `migrating_in`, `replica`) with an **epoch** that grows on every ownership change. A
//!   write is accepted only by the owner at the newest epoch it knows; learning a newer epoch
//!   demotes a stale owner, so two writers never coexist once nodes can talk.
//! * [`snapshot`]: the migration and replication envelope: the session's own checked frame
//!   plus the epoch and the lock fences, in a versioned, checksummed frame of its own.
//!
//! The Elixir `DSPex.Bridge.HAManager` drives these over Erlang distribution.

pub mod ownership;
pub mod placement;
pub mod snapshot;
