//! Cache prefetch hints, for hot paths that know what they will read before they read it
//! (the graph's inserts here; the NIF's reads of the caller's terms).

/// Asks the CPU to start loading the cache line holding `value`, without waiting for it.
#[inline(always)]
pub fn read<T>(value: &T) {
    address(value as *const T as usize);
}

/// Asks the CPU to start loading the cache line at `address`, which need not be valid. A
/// hint only: it changes no state the program can see, cannot fault, and does nothing on
/// targets without one.
#[inline(always)]
pub fn address(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch loads nothing into registers and cannot fault, whatever the
    // address; SSE is part of the x86_64 baseline.
    #[allow(unsafe_code)]
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
