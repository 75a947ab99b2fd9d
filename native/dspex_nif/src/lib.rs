//! The rustler shell over `dspex_core`: decode terms, call the core, encode the result.
//!
//! One module per feature, mirroring the core. No business logic lives here. Every NIF is a
//! regular (non-dirty) NIF unless its doc comment says otherwise: a plain NIF call costs
//! about 30 ns here and a dirty one about 3.8 µs, so only work that can pass ~1 ms (a large
//! snapshot, a bulk import) goes to a dirty scheduler.
//!
//! State: a feature's state is a resource passed to its NIFs as an argument; what must be
//! reached without one (and why) is in `registry.rs`, and nowhere else. The hottest NIFs
//! are registered by `hot_nif.rs`, the one module that uses rustler's internals (the
//! `plain_nifs` feature swaps it for plain `#[rustler::nif]` wrappers).

mod acl;
mod analytics;
mod atoms;
mod binary;
mod breaker;
mod bridge_codec;
mod coordinator;
mod error;
mod graph;
mod grpc_server;
mod ha;
mod hot_nif;
mod list;
mod proto;
mod rate_limit;
mod redis_client;
mod redis_pubsub;
mod registry;
mod reporting;
mod session;
mod snapshot;
mod term_key;
mod var_key;
mod walk;
mod wall_clock;

rustler::init!("Elixir.DSPex.Bridge.Native");
