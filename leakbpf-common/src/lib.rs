//! Types shared by leakbpf's eBPF programs and its userspace agent.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding
//! fields, so both sides agree on the layout and no uninitialised bytes end up in a
//! map key (a hash map compares keys byte by byte).
#![cfg_attr(target_arch = "bpf", no_std)]

/// Names of the programs, as the eBPF object defines them and userspace loads them.
pub mod program_names {
    /// Entry of every allocation function; the attach cookie says which
    /// [`AllocKind`](crate::AllocKind).
    pub const ALLOC_ENTER: &str = "alloc_enter";
    /// Return of every allocation function: records the block.
    pub const ALLOC_EXIT: &str = "alloc_exit";
    /// Entry of `free`.
    pub const FREE_ENTER: &str = "free_enter";
    /// Entry of an allocator's own `operator delete`, which may call the probed `free`.
    pub const DELETE_ENTER: &str = "delete_enter";
    /// An empty entry program (`--floor`): the cost of the uprobes alone.
    pub const FLOOR_ENTER: &str = "floor_enter";
    /// An empty return program (`--floor`).
    pub const FLOOR_EXIT: &str = "floor_exit";
    /// `task/task_newtask`: a traced process created another.
    pub const PROCESS_FORK: &str = "process_fork";
    /// `sched/sched_process_exec`: a traced process called exec.
    pub const PROCESS_EXEC: &str = "process_exec";
    /// `sched/sched_process_exit`: a thread exited.
    pub const PROCESS_EXIT: &str = "process_exit";

    /// The entry uprobes.
    pub const UPROBES: [&str; 4] = [ALLOC_ENTER, FREE_ENTER, DELETE_ENTER, FLOOR_ENTER];
    /// The return uprobes.
    pub const URETPROBES: [&str; 2] = [ALLOC_EXIT, FLOOR_EXIT];
    /// The tracepoint programs.
    pub const TRACEPOINTS: [&str; 3] = [PROCESS_FORK, PROCESS_EXEC, PROCESS_EXIT];
}

/// Names of the maps, as the eBPF object declares them and userspace looks them up.
pub mod map_names {
    /// Outstanding allocations: [`AllocKey`](crate::AllocKey) → [`AllocInfo`](crate::AllocInfo).
    pub const ALLOCS: &str = "ALLOCS";
    /// Captured stacks: stack id → [`StackTrace`](crate::StackTrace).
    pub const STACKS: &str = "STACKS";
    /// The agent's clock for allocation timestamps: one `u64`, CLOCK_BOOTTIME in ns.
    pub const CLOCK: &str = "CLOCK";
    /// Event counters of the one traced process, per CPU, indexed by
    /// [`Counter`](crate::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// Event counters when several processes are traced, per CPU: tgid →
    /// [`ProcessCounters`](crate::ProcessCounters).
    pub const PROCESS_COUNTERS: &str = "PROCESS_COUNTERS";
    /// The traced processes when there are several: tgid → 1. Kept up to date by the
    /// fork and exit tracepoints with `--follow-forks`.
    pub const TRACED_PIDS: &str = "TRACED_PIDS";
    /// Allocation calls in flight, an array indexed by thread id →
    /// [`Pending`](crate::Pending); the agent sizes it ([`MAX_CALL_SLOTS`](crate::MAX_CALL_SLOTS)).
    pub const CALL_SLOTS: &str = "CALL_SLOTS";
    /// Allocation calls in flight of threads whose id is beyond CALL_SLOTS: tid →
    /// [`Pending`](crate::Pending).
    pub const OTHER_CALLS: &str = "OTHER_CALLS";
    /// Calls made by frameless allocation wrappers (`operator new`), recognised by the
    /// code around their return address (two little-endian words) → the size of the
    /// wrapper's frame there, which the stack walk steps over.
    pub const WRAPPER_CALLS: &str = "WRAPPER_CALLS";
    /// Per-CPU cache of return addresses found to be wrapper calls, or not.
    pub const WRAPPER_CACHE: &str = "WRAPPER_CACHE";
    /// What the agent switches on after load, an array of `u32` indexed by
    /// [`Setting`](crate::Setting): non-zero is on.
    pub const SETTINGS: &str = "SETTINGS";
    /// The block each thread's last probed `operator delete` released: tid → address.
    pub const LAST_RELEASED: &str = "LAST_RELEASED";
    /// Per-CPU scratch space for the stack being walked.
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    /// Per-CPU copy of the words above the stack pointer, read at once by the stack walk.
    pub const STACK_WINDOW: &str = "STACK_WINDOW";
    /// Per-CPU table of stack ids known to be in STACKS.
    pub const KNOWN_STACKS: &str = "KNOWN_STACKS";
    /// Ring buffer of [`Event`](crate::Event)s: new stacks, and the traced processes'
    /// forks, execs and exits.
    pub const EVENTS: &str = "EVENTS";
    /// aya-log's records (the eBPF side's warnings, shown by `--verbose`): declared by
    /// aya-log-ebpf, read by aya-log.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Every map the eBPF object declares.
    pub const ALL: [&str; 17] = [
        ALLOCS,
        STACKS,
        CLOCK,
        COUNTERS,
        PROCESS_COUNTERS,
        TRACED_PIDS,
        CALL_SLOTS,
        OTHER_CALLS,
        WRAPPER_CALLS,
        WRAPPER_CACHE,
        SETTINGS,
        LAST_RELEASED,
        STACK_SCRATCH,
        STACK_WINDOW,
        KNOWN_STACKS,
        EVENTS,
        AYA_LOGS,
    ];
}

/// Names of the read-only globals the agent sets when it loads the programs.
pub mod global_names {
    /// The tgid of the traced process (`u32`); 0 when several are, listed in TRACED_PIDS;
    /// [`ALL_PROCESSES`](crate::ALL_PROCESSES) for every process.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// The agent's own tgid (`u32`), never traced: with `--all` its own allocations
    /// would feed back into what it reports.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Non-zero with `--follow-forks` (`u32`): a traced process's new processes are
    /// traced ([`EventKind::Fork`](crate::EventKind::Fork)); else they are only
    /// announced ([`EventKind::Spawned`](crate::EventKind::Spawned)).
    pub const FOLLOW_FORKS: &str = "FOLLOW_FORKS";
    /// Where `task/task_newtask`'s record has the new task's pid (`u32`).
    pub const NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    /// Where `task/task_newtask`'s record has the clone flags (`u32`).
    pub const NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
    /// Where `sched/sched_process_exit`'s record has `group_dead` (`u32`), or
    /// [`NO_FIELD`](crate::NO_FIELD) on a kernel without it.
    pub const EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";
}

/// [`global_names::TARGET_TGID`] when every process is traced (`--all`).
pub const ALL_PROCESSES: u32 = u32::MAX;

/// A tracepoint field offset the running kernel's record does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// How often the agent writes the clock the eBPF side timestamps allocations with.
pub const CLOCK_TICK_MS: u64 = 10;

/// The most thread ids the in-flight call array covers (5 MiB): beyond, a thread's call
/// is kept in a hash, which costs more per allocation.
pub const MAX_CALL_SLOTS: u32 = 1 << 17;

/// Deepest user stack the eBPF side walks, in frames.
pub const MAX_STACK_DEPTH: usize = 64;

/// Stack id used when no frame could be read at all.
pub const NO_STACK: u64 = 0;

/// How an allocation function reports its result, which decides what its return probe does.
///
/// Carried in the attach cookie of the entry probe, so one eBPF program serves every
/// function with the same argument layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// `malloc(size)`, `valloc(size)`, `pvalloc(size)`: the block is the return value.
    Malloc = 0,
    /// `calloc(n, size)`: the product, refused when it overflows.
    Calloc = 1,
    /// `realloc(ptr, size)`: moves the record from `ptr` to the returned block.
    Realloc = 2,
    /// `reallocarray(ptr, n, size)`: `realloc` with an overflow-checked product.
    ReallocArray = 3,
    /// `posix_memalign(&out, align, size)`: the block is written to `out` on success.
    PosixMemalign = 4,
    /// `aligned_alloc(align, size)`, `memalign(align, size)`.
    AlignedAlloc = 5,
}

impl AllocKind {
    pub const ALL: [AllocKind; 6] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::ReallocArray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
    ];

    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(AllocKind::Malloc),
            1 => Some(AllocKind::Calloc),
            2 => Some(AllocKind::Realloc),
            3 => Some(AllocKind::ReallocArray),
            4 => Some(AllocKind::PosixMemalign),
            5 => Some(AllocKind::AlignedAlloc),
            _ => None,
        }
    }
}

/// Indices into the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocations recorded.
    Allocations = 0,
    /// Frees of recorded allocations (including the old block of a moving `realloc`).
    Frees = 1,
    /// Frees of addresses never recorded: allocated before attach, or dropped.
    UnknownFrees = 2,
    /// Allocations whose stack could not be walked or stored.
    StackFailures = 3,
    /// Allocations not recorded because the allocation map was full.
    DroppedAllocations = 4,
    /// Allocation calls that returned NULL or failed, or whose size overflowed.
    FailedAllocations = 5,
    /// Allocation calls not recorded because the per-thread in-flight map was full.
    DroppedCalls = 6,
    /// Failures of the programs in a traced process, other than the cases above: an
    /// argument, out-pointer or tracepoint field that cannot be read, an unknown attach
    /// cookie or kind, a map that refuses an update. What they were about is not recorded.
    ProbeErrors = 7,
    /// Events that could not be sent on the EVENTS ring buffer (it was full).
    LostEvents = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;
}

/// Indices into the SETTINGS array: what the agent switches on once it attaches the probes
/// that need it, which for a started command is only known at its exec.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// WRAPPER_CALLS has entries: the stack walk looks its callers up there.
    WrappersKnown = 0,
    /// An allocator's own `operator delete` is probed, which may call the probed `free`
    /// for the block it just released: a free of an unknown block then looks at the
    /// thread's last delete.
    DeleteProbed = 1,
}

impl Setting {
    pub const COUNT: u32 = 2;
}

/// Key of an outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub pad: u32,
    pub addr: u64,
}

/// What is known of one outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocInfo {
    pub size: u64,
    /// CLOCK_BOOTTIME at allocation, as the agent last wrote it to the CLOCK map (see
    /// [`CLOCK_TICK_MS`]).
    pub timestamp_ns: u64,
    /// The stack that allocated it: its call site.
    pub stack_id: u64,
}

/// A user stack: return addresses, innermost first (the allocation function's caller).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    pub depth: u64,
    pub frames: [u64; MAX_STACK_DEPTH],
}

/// What the eBPF side tells the agent, on the EVENTS ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A stack was stored (`value`: its id). Sent once per stack, so the agent
    /// symbolizes it while the process that made it is still alive: a report may come
    /// after the process exited and its maps are gone.
    NewStack = 0,
    /// A traced process created process `tgid` (`value`: the parent's tgid), which is
    /// traced from its first instruction on (`--follow-forks`).
    Fork = 1,
    /// Traced process `tgid` called exec (`value`: CLOCK_BOOTTIME then; blocks recorded
    /// before it belong to the old image).
    Exec = 2,
    /// Traced process `tgid` ended: its last thread exited.
    Exit = 3,
    /// A traced process created process `tgid` (`value`: the parent's tgid), which is not
    /// traced (no `--follow-forks`).
    Spawned = 4,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(EventKind::NewStack),
            1 => Some(EventKind::Fork),
            2 => Some(EventKind::Exec),
            3 => Some(EventKind::Exit),
            4 => Some(EventKind::Spawned),
            _ => None,
        }
    }
}

/// One event: an [`EventKind`] as `u32`, the process, and a value that depends on the kind.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub value: u64,
}

/// The event counters of one process, indexed by [`Counter`].
pub type ProcessCounters = [u64; Counter::COUNT as usize];

/// An allocation call between its entry and its return, kept per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// The requested size.
    pub size: u64,
    /// `realloc`'s old block, or `posix_memalign`'s out-pointer.
    pub arg_ptr: u64,
    pub stack_id: u64,
    /// An [`AllocKind`] as `u32`.
    pub kind: u32,
    /// Allocation calls nested inside this one on the same thread (`reallocarray` calling
    /// `realloc`, `realloc(NULL, n)` calling `malloc`): their probes fire too, and only
    /// the outermost call is the one the program made.
    pub depth: u32,
    /// Non-zero between entry and return. A thread's entry stays in the map and is reused
    /// by its next call: an update in place costs far less than an insert and a delete.
    pub active: u32,
    pub pad: u32,
}

/// The frame of a frameless allocation wrapper at one of its calls, for the stack walk
/// to step over: where the wrapper's own return address is, and its caller's frame
/// pointer when the wrapper saved it to use the register for something else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapperFrame {
    /// From the slot of the call's return address to the slot of the wrapper's.
    pub size: u64,
    /// From the slot of the wrapper's return address to the saved frame pointer; 0 when
    /// the wrapper leaves the frame pointer alone (that slot is never 0: it is the
    /// return address's own).
    pub saved_fp: i64,
}

/// The attach cookie of an entry probe: which [`AllocKind`] the probed function is.
pub const fn cookie_for(kind: AllocKind) -> u64 {
    kind as u64
}

#[cfg(feature = "user")]
mod user {
    use super::{AllocInfo, AllocKey, Event, Pending, StackTrace, WrapperFrame};

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made of integers only, with explicit
    // padding fields, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTrace {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WrapperFrame {}

    impl StackTrace {
        /// The captured return addresses, innermost first.
        pub fn addresses(&self) -> &[u64] {
            let depth = usize::try_from(self.depth)
                .unwrap_or(usize::MAX)
                .min(self.frames.len());
            &self.frames[..depth]
        }
    }
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AllocKey>(), 16);
        assert_eq!(size_of::<AllocInfo>(), 24);
        assert_eq!(size_of::<Pending>(), 40);
        assert_eq!(size_of::<Event>(), 16);
        assert_eq!(size_of::<WrapperFrame>(), 16);
        assert_eq!(size_of::<StackTrace>(), 8 * (MAX_STACK_DEPTH + 1));
    }

    #[test]
    fn alloc_kind_round_trips_through_cookie() {
        for kind in AllocKind::ALL {
            let cookie = cookie_for(kind);
            assert_eq!(AllocKind::from_u32(cookie as u32), Some(kind));
        }
        assert_eq!(AllocKind::from_u32(99), None);
    }
}
