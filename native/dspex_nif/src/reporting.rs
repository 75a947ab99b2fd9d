//! What the Elixir side needs to hear about, mirrored here so that a hot NIF can answer
//! "nothing to report" without the caller first asking (a persistent-term read per call).

use std::sync::atomic::{AtomicBool, Ordering};

/// True while an event would reach anyone (`DSPex.Bridge.Events.enabled?/0`). Starts true:
/// until told otherwise, report everything.
static EVENTS_ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether events reach anyone now.
pub fn events_enabled() -> bool {
    EVENTS_ENABLED.load(Ordering::Relaxed)
}

/// Set by `DSPex.Bridge.Events` whenever `enabled?/0` changes.
#[rustler::nif]
fn events_set_enabled(enabled: bool) -> rustler::Atom {
    EVENTS_ENABLED.store(enabled, Ordering::Relaxed);
    crate::atoms::ok()
}
