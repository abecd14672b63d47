//! leakbpf's eBPF side: uprobes on the allocation functions record every outstanding
//! allocation of the traced processes with the id of the stack that made it; the agent
//! sums them per call site when it drains the map, and never sees a per-event message.
//!
//! Per-event work is what the traced process pays for, so each path does the fewest map
//! operations it can: a free is one delete, whose result says whether the block was
//! known. (Per call site totals kept here would cost a lookup on every free and an
//! update on every allocation, and the agent must scan the allocations for their ages
//! anyway.)
#![no_std]
#![no_main]

mod calls;
mod events;
mod processes;
mod stack;

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use leakbpf_common::{
    ALL_PROCESSES, AllocInfo, AllocKey, AllocKind, Counter, Pending, ProcessCounters,
};

/// The userspace agent sets the real sizes at load time (`--max-allocs`, `--max-stacks`).
const DEFAULT_ENTRIES: u32 = 1024;
/// Threads whose last release is kept. Entries are reused per thread and never
/// deleted; an LRU map lets those of exited threads make room.
const MAX_THREADS: u32 = 65536;
const EEXIST: i32 = 17;
/// Processes followed at once with `--follow-forks` or `--all`.
const MAX_PROCESSES: u32 = 16384;

/// The traced process, or 0 when several are (then listed in `TRACED_PIDS`), or
/// [`ALL_PROCESSES`]. A global the agent sets at load time: the verifier sees a constant,
/// where a map lookup on every event would cost tens of nanoseconds.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
/// The agent itself, left out of [`ALL_PROCESSES`].
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
/// Non-zero when an allocator's own `operator delete` is probed as a free.
#[unsafe(no_mangle)]
static DELETE_PROBED: u32 = 0;

#[map]
pub(crate) static TRACED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESSES, 0);
#[map]
static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(DEFAULT_ENTRIES, 0);
/// CLOCK_BOOTTIME in nanoseconds, which the agent writes every few milliseconds: reading
/// the clock here costs ~45 ns per allocation, reading this ~2, and ages are reported to
/// a tenth of a second.
#[map]
pub(crate) static CLOCK: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
/// Each process's counters, when there are several; a lookup only those modes pay.
#[map]
static PROCESS_COUNTERS: PerCpuHashMap<u32, ProcessCounters> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, 0);
/// The block each thread released last, kept only when `operator delete` is probed: a
/// delete that calls the probed `free` for the same block is one free, not a second one
/// of an unknown block.
#[map]
static LAST_RELEASED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// Entry of every allocation function; the attach cookie says which [`AllocKind`].
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let _ = try_alloc_enter(&ctx);
    0
}

/// Return of every allocation function: records the block the outermost call produced.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_alloc_exit(&ctx);
    0
}

/// `free(ptr)`, also reached by `operator delete` and by allocators freeing internally.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let _ = try_free_enter(&ctx);
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

struct CurrentTask {
    tgid: u32,
    tid: u32,
}

/// The calling task.
#[inline(always)]
fn current_task() -> CurrentTask {
    let pid_tgid = bpf_get_current_pid_tgid();
    CurrentTask {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
    }
}

/// The traced process, as the agent set it.
#[inline(always)]
fn target() -> u32 {
    // SAFETY: a read-only global; volatile so the compiler does not fold its initial value.
    unsafe { core::ptr::read_volatile(&TARGET_TGID) }
}

/// Whether process `tgid` is traced.
#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    match target() {
        // SAFETY: a plain value, only tested for presence.
        0 => unsafe { TRACED_PIDS.get(&tgid) }.is_some(),
        // SAFETY: a read-only global, as above.
        ALL_PROCESSES => tgid != unsafe { core::ptr::read_volatile(&AGENT_TGID) },
        target => tgid == target,
    }
}

/// The calling task, if its process is traced.
#[inline(always)]
fn traced_task() -> Option<CurrentTask> {
    let task = current_task();
    is_traced(task.tgid).then_some(task)
}

/// Adds one to `counter` of process `tgid`; returns its value on this CPU before, so a
/// diagnostic can be logged on the first occurrence only.
#[inline(always)]
fn count(tgid: u32, counter: Counter) -> u64 {
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

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> Result<u64, ()> {
    ctx.arg::<u64>(n).ok_or(())
}

/// `n * size`, or None when it overflows. `checked_mul` (and any division-based check,
/// which LLVM turns back into one) needs a 128-bit multiply that eBPF lacks, so the
/// product is built from 32-bit halves.
#[inline(always)]
fn product(n: u64, size: u64) -> Option<u64> {
    let (n_hi, n_lo) = (n >> 32, n & 0xffff_ffff);
    let (size_hi, size_lo) = (size >> 32, size & 0xffff_ffff);
    if n_hi != 0 && size_hi != 0 {
        return None;
    }
    // At most one of the two terms is non-zero, and each fits in 64 bits.
    let middle = n_hi * size_lo + n_lo * size_hi;
    if middle >> 32 != 0 {
        return None;
    }
    let low = n_lo * size_lo;
    let total = low.wrapping_add(middle << 32);
    (total >= low).then_some(total)
}

#[inline(always)]
fn try_alloc_enter(ctx: &ProbeContext) -> Result<(), ()> {
    let task = traced_task().ok_or(())?;
    let Some(slot) = calls::slot(task.tid) else {
        count(task.tgid, Counter::DroppedCalls);
        return Ok(());
    };
    // SAFETY: only this thread touches its own slot.
    unsafe {
        if (*slot).active != 0 {
            (*slot).depth += 1;
            return Ok(());
        }
    }
    // SAFETY: the helper only reads the program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = AllocKind::from_u32(cookie as u32).ok_or(())?;
    let (size, arg_ptr) = match kind {
        AllocKind::Malloc => (Some(arg(ctx, 0)?), 0),
        AllocKind::Calloc => (product(arg(ctx, 0)?, arg(ctx, 1)?), 0),
        AllocKind::Realloc => (Some(arg(ctx, 1)?), arg(ctx, 0)?),
        AllocKind::ReallocArray => (product(arg(ctx, 1)?, arg(ctx, 2)?), arg(ctx, 0)?),
        AllocKind::PosixMemalign => (Some(arg(ctx, 2)?), arg(ctx, 0)?),
        AllocKind::AlignedAlloc => (Some(arg(ctx, 1)?), 0),
    };
    let Some(size) = size else {
        // The call fails with ENOMEM; a wrapped product must never be recorded.
        count(task.tgid, Counter::FailedAllocations);
        return Ok(());
    };
    let stack_id = stack::capture(ctx, task.tgid);
    let pending = Pending {
        size,
        arg_ptr,
        stack_id,
        kind: kind as u32,
        depth: 0,
        active: 1,
        pad: 0,
    };
    // SAFETY: only this thread touches its own slot.
    unsafe { *slot = pending };
    Ok(())
}

#[inline(always)]
fn try_alloc_exit(ctx: &RetProbeContext) -> Result<(), ()> {
    // Only traced threads have an entry: no need to check the process again.
    let task = current_task();
    let slot = calls::existing(task.tid).ok_or(())?;
    // SAFETY: only this thread touches its own slot.
    let pending = unsafe {
        if (*slot).active == 0 {
            return Ok(());
        }
        if (*slot).depth > 0 {
            (*slot).depth -= 1;
            return Ok(());
        }
        (*slot).active = 0;
        *slot
    };
    let ret: u64 = ctx.ret();
    let kind = AllocKind::from_u32(pending.kind).ok_or(())?;
    let block = match kind {
        AllocKind::PosixMemalign => {
            if ret as u32 != 0 {
                0
            } else {
                // SAFETY: reads the caller's out-pointer through the checked helper.
                unsafe { bpf_probe_read_user(pending.arg_ptr as *const u64) }.unwrap_or(0)
            }
        }
        AllocKind::Realloc | AllocKind::ReallocArray => {
            if ret != 0 || pending.size == 0 {
                // The old block is gone: moved, resized in place (then recorded anew
                // below), or freed by realloc(p, 0). A free nested in the call may have
                // released it already, so a missing record is not an unknown free.
                release(task.tgid, pending.arg_ptr);
            }
            ret
        }
        AllocKind::Malloc | AllocKind::Calloc | AllocKind::AlignedAlloc => ret,
    };
    if block == 0 {
        if !(pending.size == 0 && matches!(kind, AllocKind::Realloc | AllocKind::ReallocArray)) {
            count(task.tgid, Counter::FailedAllocations);
        }
        return Ok(());
    }
    record(ctx, task.tgid, block, pending.size, pending.stack_id);
    Ok(())
}

#[inline(always)]
fn try_free_enter(ctx: &ProbeContext) -> Result<(), ()> {
    let addr = arg(ctx, 0)?;
    if addr == 0 {
        return Ok(());
    }
    let task = traced_task().ok_or(())?;
    // SAFETY: a read-only global; volatile so the compiler does not fold its initial value.
    if unsafe { core::ptr::read_volatile(&DELETE_PROBED) } == 0 {
        if !release(task.tgid, addr) {
            count(task.tgid, Counter::UnknownFrees);
        }
        return Ok(());
    }
    let last = LAST_RELEASED.get_ptr_mut(&task.tid);
    if release(task.tgid, addr) {
        match last {
            // SAFETY: only this thread touches its own entry.
            Some(last) => unsafe { *last = addr },
            None => {
                let _ = LAST_RELEASED.insert(&task.tid, &addr, 0);
            }
        }
    // SAFETY: as above.
    } else if !last.is_some_and(|last| unsafe { *last } == addr) {
        count(task.tgid, Counter::UnknownFrees);
    }
    Ok(())
}

#[inline(always)]
fn record(ctx: &RetProbeContext, tgid: u32, addr: u64, size: u64, stack_id: u64) {
    let key = AllocKey { tgid, pad: 0, addr };
    let info = AllocInfo {
        size,
        timestamp_ns: CLOCK.get(0).copied().unwrap_or(0),
        stack_id,
    };
    let mut inserted = ALLOCS.insert(&key, &info, u64::from(BPF_NOEXIST));
    if inserted == Err(-EEXIST) {
        // The block was freed by a path no probe sees; its old record is stale.
        release(tgid, addr);
        inserted = ALLOCS.insert(&key, &info, u64::from(BPF_NOEXIST));
    }
    if inserted.is_err() {
        if count(tgid, Counter::DroppedAllocations) == 0 {
            warn!(
                ctx,
                "allocation map full: blocks are not recorded from now on; raise --max-allocs"
            );
        }
        return;
    }
    count(tgid, Counter::Allocations);
}

/// Forgets the block at `addr`; false when it was not recorded.
#[inline(always)]
fn release(tgid: u32, addr: u64) -> bool {
    if addr == 0 {
        return false;
    }
    // Of two racing frees of one block only the one that removes it counts.
    if ALLOCS.remove(&AllocKey { tgid, pad: 0, addr }).is_err() {
        return false;
    }
    count(tgid, Counter::Frees);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
