//! Which processes the programs record, and what the agent tells them: read-only globals
//! it sets when it loads them (the verifier sees each as a constant, where a map lookup
//! on every event would cost tens of nanoseconds), and settings it switches on later.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap},
};
use leakbpf_common::{ALL_PROCESSES, Setting};

/// Processes followed at once with `--follow-forks` or `--all`.
pub(crate) const MAX_PROCESSES: u32 = 16384;

/// The traced process, or 0 when several are (then listed in `TRACED_PIDS`), or
/// [`ALL_PROCESSES`].
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
/// The agent itself, left out of [`ALL_PROCESSES`].
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
/// Non-zero when the processes a traced one creates are traced too (`--follow-forks`).
#[unsafe(no_mangle)]
static FOLLOW_FORKS: u32 = 0;

#[map]
pub(crate) static TRACED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESSES, 0);
/// Indexed by [`Setting`]. A map, not globals: the agent learns what it probes as it
/// attaches, after load (a started command's allocator is only known at its exec).
#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(Setting::COUNT, 0);

pub(crate) struct CurrentTask {
    pub(crate) tgid: u32,
    pub(crate) tid: u32,
}

/// The calling task.
#[inline(always)]
pub(crate) fn current_task() -> CurrentTask {
    let pid_tgid = bpf_get_current_pid_tgid();
    CurrentTask {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
    }
}

/// The value the agent gave `global` at load time.
#[inline(always)]
pub(crate) fn global(global: &'static u32) -> u32 {
    // SAFETY: a read-only global; volatile so the compiler does not fold its initial value.
    unsafe { core::ptr::read_volatile(global) }
}

/// The traced process, as the agent set it.
#[inline(always)]
pub(crate) fn target() -> u32 {
    global(&TARGET_TGID)
}

/// Whether the processes a traced one creates are traced too.
#[inline(always)]
pub(crate) fn follows_forks() -> bool {
    global(&FOLLOW_FORKS) != 0
}

/// Whether the agent switched `setting` on.
#[inline(always)]
pub(crate) fn setting(setting: Setting) -> bool {
    SETTINGS.get(setting as u32).is_some_and(|on| *on != 0)
}

/// Whether process `tgid` is traced.
#[inline(always)]
pub(crate) fn is_traced(tgid: u32) -> bool {
    match target() {
        // SAFETY: a plain value, only tested for presence.
        0 => unsafe { TRACED_PIDS.get(&tgid) }.is_some(),
        ALL_PROCESSES => tgid != global(&AGENT_TGID),
        target => tgid == target,
    }
}

/// The calling task, if its process is traced.
#[inline(always)]
pub(crate) fn traced_task() -> Option<CurrentTask> {
    let task = current_task();
    is_traced(task.tgid).then_some(task)
}
