//! The traced processes' lives: forks (with `--follow-forks`), execs and exits, from
//! the scheduler's and the task tracepoints. Their records' layouts vary between kernel
//! versions, so the agent reads each field's offset from tracefs and sets it here.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use leakbpf_common::{EventKind, NO_FIELD};

use crate::{CLOCK, TRACED_PIDS, current_task, events, is_traced};

/// `clone(2)`'s flag for a thread of the same process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = NO_FIELD;

#[inline(always)]
fn offset(global: &u32) -> usize {
    // SAFETY: a read-only global; volatile so the compiler does not fold its initial value.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// `task/task_newtask`, in the parent: a new process of a traced one is traced before
/// it runs its first instruction, so nothing it allocates is missed.
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let parent = current_task();
    if !is_traced(parent.tgid) {
        return 0;
    }
    // SAFETY: offsets the agent read from this kernel's record format.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(offset(&NEWTASK_FLAGS_OFFSET)),
            ctx.read_at::<i32>(offset(&NEWTASK_PID_OFFSET)),
        )
    };
    let (Ok(flags), Ok(child)) = fields else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 || child <= 0 {
        return 0;
    }
    let child = child as u32;
    if TRACED_PIDS.insert(&child, &1, 0).is_ok() {
        events::emit(EventKind::Fork, child, u64::from(parent.tgid));
    }
    0
}

/// `sched/sched_process_exec`: the process's old image, and every block it held, is gone.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let task = current_task();
    if !is_traced(task.tgid) {
        return 0;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // The new image's blocks must be dated after the exec, however late the agent's
    // clock is: the agent drops the older ones.
    if let Some(clock) = CLOCK.get_ptr_mut(0) {
        // SAFETY: one u64 of an array map, valid for the program's run.
        unsafe { *clock = now };
    }
    events::emit(EventKind::Exec, task.tgid, now);
    0
}

/// `sched/sched_process_exit`, once per exiting thread: the process is gone with its
/// last one (`group_dead`; on kernels without that field, with its leader).
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let group_dead = match offset(&EXIT_GROUP_DEAD_OFFSET) {
        offset if offset == NO_FIELD as usize => tid == tgid,
        // SAFETY: an offset the agent read from this kernel's record format.
        offset => unsafe { ctx.read_at::<u8>(offset) }.is_ok_and(|dead| dead != 0),
    };
    if !group_dead || !is_traced(tgid) {
        return 0;
    }
    let _ = TRACED_PIDS.remove(&tgid);
    events::emit(EventKind::Exit, tgid, 0);
    0
}
