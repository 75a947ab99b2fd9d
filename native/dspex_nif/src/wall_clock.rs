//! Wall-clock milliseconds for the hot NIFs.
//!
//! The kernel's coarse clock costs a few nanoseconds where a precise read costs ~35 ns on
//! this kind of machine, but it lags by a timer tick or more (up to 7 ms measured here, with
//! a 4 ms resolution): good for picking one-second slots, never for judging a deadline.

use std::time::{SystemTime, UNIX_EPOCH};

/// The precise wall clock, in milliseconds since the Unix epoch.
pub fn precise_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read(clock: libc::clockid_t) -> Option<libc::timespec> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then_some(ts)
}

fn millis(ts: libc::timespec) -> u64 {
    ts.tv_sec as u64 * 1_000 + ts.tv_nsec as u64 / 1_000_000
}

/// The coarse clock, in milliseconds (the precise clock where there is none).
pub fn coarse_ms() -> u64 {
    read(libc::CLOCK_REALTIME_COARSE).map_or_else(precise_ms, millis)
}
