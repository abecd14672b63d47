//! The traced processes' lives: forks, execs and exits, from the scheduler's and the
//! task tracepoints. Their records' layouts vary between kernel
//! versions, so the agent reads each field's offset from tracefs and sets it here.

use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, programs::TracePointContext};
use leakbpf_common::{ALL_PROCESSES, EventKind, NO_FIELD};

use crate::{
    counters::ProbeError,
    events,
    record::CLOCK,
    target::{TRACED_PIDS, current_task, follows_forks, global, is_traced, target},
    unwind,
};

/// `clone(2)`'s flag for a thread of the same process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = NO_FIELD;

/// `task/task_newtask`, in the parent. With `--follow-forks`, a new process of a traced
/// one is traced before it runs its first instruction, so nothing it allocates is missed;
/// without, the agent is told of it, to say what was not traced.
#[inline(always)]
pub(crate) fn fork(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let parent = current_task();
    // With `--all` every process is traced, a new one too: nothing to add or tell.
    if target() == ALL_PROCESSES || !is_traced(parent.tgid) {
        return Ok(());
    }
    // SAFETY: offsets the agent read from this kernel's record format.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(global(&NEWTASK_FLAGS_OFFSET) as usize),
            ctx.read_at::<i32>(global(&NEWTASK_PID_OFFSET) as usize),
        )
    };
    let (Ok(flags), Ok(child)) = fields else {
        return Err(ProbeError(parent.tgid));
    };
    if flags & CLONE_THREAD != 0 || child <= 0 {
        return Ok(());
    }
    let child = child as u32;
    if !follows_forks() {
        events::emit(
            EventKind::Spawned,
            child,
            u64::from(parent.tgid),
            parent.tgid,
        );
        return Ok(());
    }
    TRACED_PIDS
        .insert(&child, &1, 0)
        .map_err(|_| ProbeError(parent.tgid))?;
    // Its memory is a copy of its parent's: so is what the stack walk knows of it.
    unwind::inherit(parent.tgid, child);
    events::emit(EventKind::Fork, child, u64::from(parent.tgid), parent.tgid);
    Ok(())
}

/// `sched/sched_process_exec`: the process's old image, and every block it held, is gone.
#[inline(always)]
pub(crate) fn exec() -> Result<(), ProbeError> {
    let task = current_task();
    if !is_traced(task.tgid) {
        return Ok(());
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // The new image's blocks must be dated after the exec, however late the agent's
    // clock is: the agent drops the older ones.
    let clock = CLOCK.get_ptr_mut(0).ok_or(ProbeError(task.tgid));
    if let Ok(clock) = clock {
        // SAFETY: one u64 of an array map, valid for the program's run.
        unsafe { *clock = now };
    }
    // Its old mappings are gone; the agent describes the new ones.
    unwind::forget(task.tgid);
    events::emit(EventKind::Exec, task.tgid, now, task.tgid);
    clock.map(|_| ())
}

/// `sched/sched_process_exit`, once per exiting thread: the process is gone with its
/// last one (`group_dead`; on kernels without that field, with its leader).
#[inline(always)]
pub(crate) fn exit(ctx: &TracePointContext) -> Result<(), ProbeError> {
    let task = current_task();
    let group_dead = match global(&EXIT_GROUP_DEAD_OFFSET) {
        NO_FIELD => task.tid == task.tgid,
        // SAFETY: an offset the agent read from this kernel's record format.
        offset => match unsafe { ctx.read_at::<u8>(offset as usize) } {
            Ok(dead) => dead != 0,
            // Every thread of the system passes here: only a traced one's failure counts.
            Err(_) if is_traced(task.tgid) => return Err(ProbeError(task.tgid)),
            Err(_) => return Ok(()),
        },
    };
    if !group_dead || !is_traced(task.tgid) {
        return Ok(());
    }
    // Missing unless several processes are traced.
    let _ = TRACED_PIDS.remove(&task.tgid);
    unwind::forget(task.tgid);
    events::emit(EventKind::Exit, task.tgid, 0, task.tgid);
    Ok(())
}
