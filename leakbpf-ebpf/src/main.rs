//! leakbpf's eBPF side: uprobes on the allocation functions record every outstanding
//! allocation of the traced processes with the id of the stack that made it; the agent
//! sums them per call site when it drains the map, and never sees a per-event message.
//! The process tracepoints keep up with the traced processes' forks, execs and exits.
//!
//! This file holds the programs' entry points only; each calls into its module, and
//! counts what failed there as a probe error.
#![no_std]
#![no_main]
// The maps take keys and values as `impl Borrow`: by value, a large one (a stack trace)
// is copied onto the 512-byte eBPF stack, which the linker then refuses.
#![allow(clippy::needless_borrows_for_generic_args)]

mod calls;
mod counters;
mod events;
mod loader;
mod processes;
mod record;
mod sample;
mod stack;
mod target;
mod unwind;

use aya_ebpf::{
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

use crate::counters::count_failure;

/// Entry of every allocation function; the attach cookie says which
/// [`AllocKind`](leakbpf_common::AllocKind).
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    count_failure(record::alloc_enter(&ctx));
    0
}

/// Return of every allocation function: records the block the outermost call produced.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    count_failure(record::alloc_exit(&ctx));
    0
}

/// `free(ptr)`, also reached by `operator delete` and by allocators freeing internally.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    count_failure(record::free_enter(&ctx));
    0
}

/// An allocator's own `operator delete(ptr)`.
#[uprobe]
pub fn delete_enter(ctx: ProbeContext) -> u32 {
    count_failure(record::delete_enter(&ctx));
    0
}

/// An empty program, attached by `--floor` wherever an entry program would go: what the
/// benchmark measures as the cost of the uprobes themselves.
#[uprobe]
pub fn floor_enter(_ctx: ProbeContext) -> u32 {
    0
}

/// An empty return program, attached by `--floor` wherever `alloc_exit` would go.
#[uretprobe]
pub fn floor_exit(_ctx: RetProbeContext) -> u32 {
    0
}

/// The dynamic linker's notice that it mapped or unmapped objects (`_dl_debug_state`).
#[uprobe]
pub fn loader_notice(_ctx: ProbeContext) -> u32 {
    count_failure(loader::notice());
    0
}

/// `task/task_newtask`, in the parent.
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    count_failure(processes::fork(&ctx));
    0
}

/// `sched/sched_process_exec`.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    count_failure(processes::exec());
    0
}

/// `sched/sched_process_exit`, once per exiting thread.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    count_failure(processes::exit(&ctx));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
