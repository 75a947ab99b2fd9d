//! The rustler shell over `dspex_core`: decode terms, call the core, encode the result.
//!
//! One module per feature, mirroring the core. No business logic lives here. Every NIF is a
//! regular (non-dirty) NIF unless its doc comment says otherwise; see DESIGN.md for the
//! measured boundary costs behind that rule.

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
mod reporting;
mod snapshot;
mod term_key;
mod var_key;
mod walk;
mod wall_clock;

rustler::init!("Elixir.DSPex.Bridge.Native");
