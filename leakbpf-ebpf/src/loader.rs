//! The dynamic linker's notice that it mapped or unmapped objects (`_dl_debug_state`,
//! the function debuggers break on): the agent reads the process's mappings again, so
//! the stack walk knows the new objects' code.
//!
//! The started command's main thread is held there until the agent has done so, so
//! even its libraries' constructors are walked whole: the program stops it with
//! SIGSTOP, which the agent, its tracer, sees first and does not deliver.

use aya_ebpf::{helpers::generated::bpf_send_signal_thread, macros::map, maps::HashMap};
use leakbpf_common::EventKind;

use crate::{
    counters::ProbeError,
    events,
    target::{global, traced_task},
};

const SIGSTOP: u32 = 19;
/// Threads held at once, at most: the started command has one main thread.
const MAX_HOLDS: u32 = 64;

/// The command leakbpf started and traces with ptrace, or 0.
#[unsafe(no_mangle)]
static HELD_TGID: u32 = 0;

/// Threads stopped here and not yet let go by the agent: tid → 1.
#[map]
static LOADER_HOLDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_HOLDS, 0);

/// The notice: held, or told to the agent.
#[inline(always)]
pub(crate) fn notice() -> Result<(), ProbeError> {
    let Some(task) = traced_task() else {
        return Ok(());
    };
    let held = global(&HELD_TGID);
    // Only the thread the agent traces: a stop of any other would stop the process.
    if task.tgid == held && task.tid == held && LOADER_HOLDS.insert(&task.tid, &1, 0).is_ok() {
        // SAFETY: the helper signals the current thread only.
        if unsafe { bpf_send_signal_thread(SIGSTOP) } == 0 {
            return Ok(());
        }
        let _ = LOADER_HOLDS.remove(&task.tid);
    }
    events::emit(
        EventKind::LoaderNotice,
        task.tgid,
        u64::from(task.tid),
        task.tgid,
    );
    Ok(())
}
