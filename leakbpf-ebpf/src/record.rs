//! Recording allocations and frees: the entry of an allocation function keeps its
//! arguments and stack per thread, its return records the block in `ALLOCS`, and a free
//! is one delete from it. With `--sample-bytes`, only the sampled calls are walked and
//! recorded (see [`crate::sample`]).
//!
//! Per-event work is what the traced process pays for, so each path does the fewest map
//! operations it can: a free is one delete, whose result says whether the block was
//! known. (Per call site totals kept here would cost a lookup on every free and an
//! update on every allocation, and the agent must scan the allocations for their ages
//! anyway.)

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use leakbpf_common::{
    ARGUMENT_REGISTERS, AllocInfo, AllocKey, AllocKind, Counter, Pending, Setting, cookie_kind,
    cookie_register,
};

use crate::{
    calls,
    counters::{ProbeError, count},
    sample, stack,
    target::{CurrentTask, current_task, setting, traced_task},
};

/// The userspace agent sets the real size at load time (`--max-allocs`).
const DEFAULT_ENTRIES: u32 = 1024;
/// Threads whose last release is kept. Entries are reused per thread and never
/// deleted; an LRU map lets those of exited threads make room.
const MAX_THREADS: u32 = 65536;
pub(crate) const EEXIST: i32 = 17;

#[map]
static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(DEFAULT_ENTRIES, 0);
/// CLOCK_BOOTTIME in nanoseconds, which the agent writes every few milliseconds: reading
/// the clock here costs ~45 ns per allocation, reading this ~2, and ages are reported to
/// a tenth of a second.
#[map]
pub(crate) static CLOCK: Array<u64> = Array::with_max_entries(1, 0);
/// The block each thread's last `operator delete` released, when the allocator's own is
/// probed: a delete that calls the probed `free` for the same block is one free, not a
/// second one of an unknown block.
#[map]
static LAST_RELEASED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// What an allocation call asks for: its kind (from the attach cookie), the size (None
/// when `n * size` overflows), and `realloc`'s old block or `posix_memalign`'s
/// out-pointer. None when the cookie is unknown or an argument cannot be read.
#[inline(always)]
fn read_call(ctx: &ProbeContext) -> Option<(AllocKind, Option<u64>, u64)> {
    // SAFETY: the helper only reads the program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie_kind(cookie)?;
    // All four at once, each a volatile read of its register: reads chosen per kind may
    // be merged by the compiler into one read at a computed offset of the context, which
    // the verifier refuses.
    // SAFETY: the probe's own registers, valid for the program's run.
    let registers: [u64; ARGUMENT_REGISTERS] = unsafe {
        let regs = ctx.regs;
        [
            core::ptr::read_volatile(&(*regs).rdi),
            core::ptr::read_volatile(&(*regs).rsi),
            core::ptr::read_volatile(&(*regs).rdx),
            core::ptr::read_volatile(&(*regs).rcx),
        ]
    };
    // Where placement found each argument, past the prologue's moves.
    let argument = |index: usize| match cookie_register(cookie, index) {
        0 => registers[0],
        1 => registers[1],
        2 => registers[2],
        _ => registers[3],
    };
    let args = [argument(0), argument(1), argument(2)];
    let (size, arg_ptr) = match kind {
        AllocKind::Malloc => (Some(args[0]), 0),
        AllocKind::Calloc => (product(args[0], args[1]), 0),
        AllocKind::Realloc => (Some(args[1]), args[0]),
        AllocKind::ReallocArray => (product(args[1], args[2]), args[0]),
        AllocKind::PosixMemalign => (Some(args[2]), args[0]),
        AllocKind::AlignedAlloc => (Some(args[1]), 0),
    };
    Some((kind, size, arg_ptr))
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

/// An allocation function's entry: keeps the call's arguments and stack for its return.
#[inline(always)]
pub(crate) fn alloc_enter(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some(task) = traced_task() else {
        return Ok(());
    };
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
    let (kind, size, arg_ptr) = read_call(ctx).ok_or(ProbeError(task.tgid))?;
    let Some(size) = size else {
        // The call fails with ENOMEM; a wrapped product must never be recorded.
        count(task.tgid, Counter::FailedAllocations);
        return Ok(());
    };
    // SAFETY: only this thread touches its own slot.
    let mut until_sample = unsafe { (*slot).until_sample };
    let sampled =
        sample::mean_bytes().is_none_or(|mean| sample::sampled(&mut until_sample, size, mean));
    // A call passed over is still kept, unwalked: its nested calls are not the program's,
    // and a realloc's return must still release the old block.
    let stack_id = if sampled {
        stack::capture(ctx, task.tgid)
    } else {
        0
    };
    let pending = Pending {
        size,
        arg_ptr,
        stack_id,
        kind: kind as u32,
        depth: 0,
        active: 1,
        sampled: u32::from(sampled),
        until_sample,
    };
    // SAFETY: only this thread touches its own slot.
    unsafe { *slot = pending };
    Ok(())
}

/// An allocation function's return: records the block the outermost call produced.
#[inline(always)]
pub(crate) fn alloc_exit(ctx: &RetProbeContext) -> Result<(), ProbeError> {
    // Only traced threads have an entry: no need to check the process again.
    let task = current_task();
    // A return whose entry was never seen (attached in between, or another process's).
    let Some(slot) = calls::existing(task.tid) else {
        return Ok(());
    };
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
    let kind = AllocKind::from_u32(pending.kind).ok_or(ProbeError(task.tgid))?;
    let block = match kind {
        AllocKind::PosixMemalign => {
            if ret as u32 != 0 {
                0
            } else {
                // SAFETY: reads the caller's out-pointer through the checked helper.
                unsafe { bpf_probe_read_user(pending.arg_ptr as *const u64) }
                    .map_err(|_| ProbeError(task.tgid))?
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
    if pending.sampled == 0 {
        return Ok(());
    }
    record(ctx, task.tgid, block, pending.size, pending.stack_id)
}

/// The block a free function is given, and the thread freeing it; None for NULL, or
/// outside the traced processes.
#[inline(always)]
fn freed_block(ctx: &ProbeContext) -> Result<Option<(CurrentTask, u64)>, ProbeError> {
    let Some(addr) = ctx.arg::<u64>(0) else {
        return match traced_task() {
            Some(task) => Err(ProbeError(task.tgid)),
            None => Ok(None),
        };
    };
    if addr == 0 {
        return Ok(None);
    }
    Ok(traced_task().map(|task| (task, addr)))
}

/// `free(ptr)`, also reached by allocators freeing internally, and by an allocator's
/// own `operator delete` for the block it just released.
#[inline(always)]
pub(crate) fn free_enter(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((task, addr)) = freed_block(ctx)? else {
        return Ok(());
    };
    // Sampling leaves most blocks unrecorded: their frees are not unknown, only unseen.
    if !release(task.tgid, addr)
        && sample::mean_bytes().is_none()
        && !released_by_delete(task.tid, addr)
    {
        count(task.tgid, Counter::UnknownFrees);
    }
    Ok(())
}

/// An allocator's own `operator delete(ptr)`: the block is remembered as the thread's
/// last, since the delete may then call the probed `free` for it.
#[inline(always)]
pub(crate) fn delete_enter(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((task, addr)) = freed_block(ctx)? else {
        return Ok(());
    };
    let last = LAST_RELEASED.get_ptr_mut(&task.tid);
    if release(task.tgid, addr) {
        match last {
            // SAFETY: only this thread touches its own entry.
            Some(last) => unsafe { *last = addr },
            None => LAST_RELEASED
                .insert(&task.tid, &addr, 0)
                .map_err(|_| ProbeError(task.tgid))?,
        }
    // SAFETY: as above. (`delete[]` may call the probed `delete` for the same block.)
    } else if sample::mean_bytes().is_none() && last.is_none_or(|last| unsafe { *last } != addr) {
        count(task.tgid, Counter::UnknownFrees);
    }
    Ok(())
}

/// Whether thread `tid`'s last delete released `addr`. Only an unknown block's free
/// asks, so a free of a known one pays nothing for the deletes.
#[inline(always)]
fn released_by_delete(tid: u32, addr: u64) -> bool {
    // SAFETY: a plain value copied out of the map.
    setting(Setting::DeleteProbed)
        && unsafe { LAST_RELEASED.get(&tid) }.is_some_and(|last| *last == addr)
}

#[inline(always)]
fn record(
    ctx: &RetProbeContext,
    tgid: u32,
    addr: u64,
    size: u64,
    stack_id: u64,
) -> Result<(), ProbeError> {
    let key = AllocKey { tgid, pad: 0, addr };
    let info = AllocInfo {
        size,
        timestamp_ns: *CLOCK.get(0).ok_or(ProbeError(tgid))?,
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
        return Ok(());
    }
    count(tgid, Counter::Allocations);
    Ok(())
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
