//! Everything the NIF keeps for the whole VM, in one place.
//!
//! The pattern for NIF state: a feature's state is a resource (`ResourceArc`) that the
//! Elixir side creates, keeps (in its process or a `:persistent_term`) and passes to every
//! NIF as an argument — a breaker, a rate limiter, a graph, an engine. Nothing else is
//! shared, so two instances never see each other and a dropped one frees its memory.
//!
//! What a NIF must reach *without* an argument lives here, each with its reason. Clocks
//! (one time base per feature) and counters beside the NIFs that bump them are not state in
//! this sense and stay in their modules; so do the per-thread caches of atom texts.

use std::sync::{LazyLock, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustler::ResourceArc;

use crate::{acl, analytics, coordinator, graph};

/// The access policies of every session on this node, with their compiled engine. Global
/// because a check names two sessions (the caller's and the owner's) and must see the
/// owner's policies whichever process asks.
pub(crate) static ACL: LazyLock<Mutex<acl::Store>> =
    LazyLock::new(|| Mutex::new(acl::Store::new()));

/// The node's analytics engine. Global because recording is the hottest call of the
/// bridge, and decoding a resource argument (with its reference count) costs as much as
/// the recording itself.
pub(crate) static ANALYTICS: OnceLock<ResourceArc<analytics::EngineResource>> = OnceLock::new();

/// The coordinator the hot NIFs (acquire, release) work on: the one made last. Read under
/// a read lock rather than decoded from an argument: decoding a resource costs ~40 ns.
pub(crate) static COORDINATOR: LazyLock<RwLock<Option<coordinator::Handle>>> =
    LazyLock::new(|| RwLock::new(None));

/// Session id -> its graph, for every live session of this node, so that a dependency call
/// finds the graph inside the NIF: an ETS lookup that copies the resource reference out
/// cost more than the insert itself.
pub(crate) static GRAPHS: LazyLock<RwLock<graph::Directory>> = LazyLock::new(Default::default);

/// The NIF's own threads for network I/O (the gRPC server): a tokio runtime, never a BEAM
/// scheduler. `None` when the runtime could not be built (reported by the NIF that needs it).
pub(crate) static RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dspex-io")
        .enable_all()
        .build()
        .ok()
});
