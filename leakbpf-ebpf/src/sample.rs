//! Sampling (`--sample-bytes`): which allocations are recorded when not all are.
//!
//! As tcmalloc and jemalloc sample, each thread's allocated bytes are a Poisson process
//! of mean gap N: the distance to the next sample point is drawn from an exponential
//! distribution of mean N, and an allocation that reaches it is sampled. Whatever came
//! before, a block of `size` bytes is then sampled with probability 1 − exp(−size/N)
//! (the distribution is memoryless), which the agent inverts to estimate the whole.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use leakbpf_common::exponential_gap;

/// The mean gap in bytes, 0 to record every allocation; set by the agent at load time.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

/// The mean gap, or None when every allocation is recorded.
#[inline(always)]
pub(crate) fn mean_bytes() -> Option<u64> {
    // SAFETY: a read-only global; volatile so the compiler does not fold its initial value.
    let mean = unsafe { core::ptr::read_volatile(&SAMPLE_BYTES) };
    (mean != 0).then_some(mean)
}

/// Whether a thread whose countdown is `until` (0 before its first allocation) samples
/// an allocation of `size` bytes; moves the countdown on.
#[inline(always)]
pub(crate) fn sampled(until: &mut u64, size: u64, mean: u64) -> bool {
    if *until == 0 {
        *until = gap(mean);
    }
    if size < *until {
        *until -= size;
        return false;
    }
    // By memorylessness, the next point's distance from this block's end is a fresh gap.
    *until = gap(mean);
    true
}

/// A fresh gap: an exponential variate of mean `mean`.
#[inline(always)]
fn gap(mean: u64) -> u64 {
    // SAFETY: the helper has no preconditions.
    exponential_gap(unsafe { bpf_get_prandom_u32() }, mean)
}
