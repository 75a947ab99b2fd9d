//! Cache prefetch hints for the graph's hot paths.

/// Asks the CPU to start loading the cache line holding `value`, without waiting for it.
/// A hint only: it changes no state the program can see, and does nothing on targets
/// without one.
#[inline(always)]
pub(super) fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch loads nothing into registers and cannot fault; the address comes
    // from a live reference.
    #[allow(unsafe_code)]
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
