//! The event counters the agent reads with each report: one per-CPU array when one
//! process is traced, one per process otherwise.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use leakbpf_common::{ALL_PROCESSES, Counter, ProcessCounters};

use crate::target::{MAX_PROCESSES, target};

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
/// Each process's counters, when there are several; a lookup only those modes pay.
#[map]
static PROCESS_COUNTERS: PerCpuHashMap<u32, ProcessCounters> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, 0);

/// A failure of a program in traced process `.0`, counted as [`Counter::ProbeErrors`].
pub(crate) struct ProbeError(pub(crate) u32);

/// Counts the failure `result` holds, if any: one place per program, whatever failed.
#[inline(always)]
pub(crate) fn count_failure(result: Result<(), ProbeError>) {
    if let Err(ProbeError(tgid)) = result {
        count(tgid, Counter::ProbeErrors);
    }
}

/// Adds one to `counter` of process `tgid`; returns its value on this CPU before, so a
/// diagnostic can be logged on the first occurrence only.
#[inline(always)]
pub(crate) fn count(tgid: u32, counter: Counter) -> u64 {
    let slot = match target() {
        0 | ALL_PROCESSES => process_counters(tgid)
            // SAFETY: a slot of this CPU's value, valid for the program's run.
            .map(|counters| unsafe { (*counters).as_mut_ptr().add(counter as usize) }),
        _ => COUNTERS.get_ptr_mut(counter as u32),
    };
    match slot {
        // SAFETY: a per-CPU slot, and eBPF programs do not migrate while they run.
        Some(value) => unsafe {
            let before = *value;
            *value = before + 1;
            before
        },
        None => 0,
    }
}

/// This CPU's counters of process `tgid`, created zero when missing.
#[inline(always)]
fn process_counters(tgid: u32) -> Option<*mut ProcessCounters> {
    if let Some(counters) = PROCESS_COUNTERS.get_ptr_mut(&tgid) {
        return Some(counters);
    }
    // Another CPU may create them first: that is as good.
    let _ = PROCESS_COUNTERS.insert(&tgid, &[0; Counter::COUNT as usize], u64::from(BPF_NOEXIST));
    PROCESS_COUNTERS.get_ptr_mut(&tgid)
}
