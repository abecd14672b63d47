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
    /// The dynamic linker's notice that it mapped or unmapped objects (`_dl_debug_state`).
    pub const LOADER_NOTICE: &str = "loader_notice";

    /// The entry uprobes.
    pub const UPROBES: [&str; 5] = [
        ALLOC_ENTER,
        FREE_ENTER,
        DELETE_ENTER,
        FLOOR_ENTER,
        LOADER_NOTICE,
    ];
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
    /// The rows of every unwind table, one array shared by all the files the agent has
    /// read (each file's rows contiguous, sorted by address): [`UnwindRow`](crate::UnwindRow).
    /// Memory-mapped by the agent, which writes rows in place.
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// The distinct rules the rows refer to: [`UnwindRule`](crate::UnwindRule), by index.
    /// Memory-mapped by the agent.
    pub const UNWIND_RULES: &str = "UNWIND_RULES";
    /// Each traced process's executable mappings: tgid →
    /// [`ProcessMappings`](crate::ProcessMappings).
    pub const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
    /// One `u32` that changes whenever a process's mappings change in a way that could
    /// make a cached rule wrong (an exec, a mapping gone): the stack walk's per-CPU cache
    /// of rules by address trusts entries of the current generation only.
    pub const UNWIND_GENERATION: &str = "UNWIND_GENERATION";
    /// What a process the agent has not described yet starts with in UNWIND_PROCESSES
    /// (no mappings, a miss reported): one [`ProcessMappings`](crate::ProcessMappings).
    pub const NO_MAPPINGS: &str = "NO_MAPPINGS";
    /// Per-CPU cache of the rules found by address.
    pub const RULE_CACHE: &str = "RULE_CACHE";
    /// Per-CPU state of the stack walk between its steps (one per frame).
    pub const WALK: &str = "WALK";
    /// Threads held at the dynamic linker's notice that it mapped objects, until the
    /// agent has read their process's new mappings: tid → 1 (see
    /// [`global_names::HELD_TGID`](crate::global_names::HELD_TGID)).
    pub const LOADER_HOLDS: &str = "LOADER_HOLDS";
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
    pub const ALL: [&str; 23] = [
        ALLOCS,
        STACKS,
        CLOCK,
        COUNTERS,
        PROCESS_COUNTERS,
        TRACED_PIDS,
        CALL_SLOTS,
        OTHER_CALLS,
        UNWIND_ROWS,
        UNWIND_RULES,
        UNWIND_PROCESSES,
        UNWIND_GENERATION,
        NO_MAPPINGS,
        RULE_CACHE,
        WALK,
        LOADER_HOLDS,
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
    /// Frames walked at most per stack (`u32`, `--max-depth`), at most
    /// [`MAX_STACK_DEPTH`](crate::MAX_STACK_DEPTH).
    pub const STACK_DEPTH: &str = "STACK_DEPTH";
    /// The command leakbpf started and holds with ptrace (`u32`, 0 for none): when its
    /// main thread reaches the dynamic linker's notice that objects were mapped, the
    /// program stops it with SIGSTOP (recorded in LOADER_HOLDS), which only the agent,
    /// its tracer, sees; the agent reads the new mappings and lets it go on, so every
    /// object's table is in place before its code runs.
    pub const HELD_TGID: &str = "HELD_TGID";
    /// `--sample-bytes` (`u64`): the mean distance in bytes between the sample points of
    /// each thread's allocations, or 0 to record every allocation.
    pub const SAMPLE_BYTES: &str = "SAMPLE_BYTES";
}

/// The largest `--sample-bytes`: [`exponential_gap`]'s products fit in 64 bits below it.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 40;

/// Fraction bits of [`exponential_gap`]'s fixed-point logarithm.
const FRACTION_BITS: u32 = 16;
/// ln 2 in the same fixed point.
const LN_2: u64 = 45426;

/// An exponential variate of mean `mean` (at most [`MAX_SAMPLE_BYTES`]), at least 1, from
/// a uniform random 32-bit `random`: −mean·ln U for U uniform in (0, 1], computed as
/// (32 − log2 x)·ln 2 for x = random + 1, in integers (eBPF has no floating point).
#[inline(always)]
pub fn exponential_gap(random: u32, mean: u64) -> u64 {
    let minus_log = (32 << FRACTION_BITS) - log2(u64::from(random) + 1);
    ((mean * ((minus_log * LN_2) >> FRACTION_BITS)) >> FRACTION_BITS).max(1)
}

/// log2 `x` for 1 ≤ x ≤ 2³², with [`FRACTION_BITS`] fraction bits: the integer part
/// from the highest bit set, each fraction bit by squaring the mantissa. Without a
/// branch: eBPF has no conditional move, and the verifier would walk every path.
#[inline(always)]
fn log2(x: u64) -> u64 {
    let mut whole = 0;
    let mut high = x;
    for shift in [32, 16, 8, 4, 2, 1] {
        let above = high >> shift;
        // 1 when `above` is not 0 (it is below 2⁶³): v | −v has its top bit set.
        let step = ((above | above.wrapping_neg()) >> 63) * shift;
        high >>= step;
        whole += step;
    }
    // The mantissa in [1, 2), as a Q31 number in [2³¹, 2³²): its square fits in 64 bits.
    let mut mantissa = (x << 31) >> whole;
    let mut fraction = 0;
    for _ in 0..FRACTION_BITS {
        mantissa = (mantissa * mantissa) >> 31;
        let carry = mantissa >> 32;
        mantissa >>= carry;
        fraction = (fraction << 1) | carry;
    }
    (whole << FRACTION_BITS) | fraction
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

/// Deepest user stack the eBPF side can walk, in frames (the bound of its loop, and the
/// size of a stored stack: 1 KiB with its depth).
pub const MAX_STACK_DEPTH: usize = 127;

/// Frames walked unless `--max-depth` says otherwise.
pub const DEFAULT_STACK_DEPTH: u32 = 64;

/// Executable mappings of one process the stack walk knows of (a process mapping more
/// is walked through the first ones only, by address).
pub const MAX_MAPPINGS: usize = 254;

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
    /// Stacks cut short because unwinding failed: no unwind row for an address, memory
    /// that could not be read, an address outside every known mapping (a mapping whose
    /// table is not ready yet, or garbage), a uretprobe's trampoline. The frames kept
    /// are right; the ones beyond the cut are missing.
    TruncatedStacks = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
}

/// Indices into the SETTINGS array: what the agent switches on once it attaches the probes
/// that need it, which for a started command is only known at its exec.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// An allocator's own `operator delete` is probed, which may call the probed `free`
    /// for the block it just released: a free of an unknown block then looks at the
    /// thread's last delete.
    DeleteProbed = 0,
}

impl Setting {
    pub const COUNT: u32 = 1;
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
    /// A stack of traced process `tgid` reached an address outside every mapping the
    /// walk knows of it (`value`: the address): it mapped code since the agent last read
    /// its mappings, or the agent never did. Sent once until the agent writes them anew.
    UnwindMiss = 5,
    /// The dynamic linker of traced process `tgid` says it mapped or unmapped objects
    /// (`value`: the calling thread; held when it is the started command's, see
    /// [`global_names::HELD_TGID`](crate::global_names::HELD_TGID)).
    LoaderNotice = 6,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(EventKind::NewStack),
            1 => Some(EventKind::Fork),
            2 => Some(EventKind::Exec),
            3 => Some(EventKind::Exit),
            4 => Some(EventKind::Spawned),
            5 => Some(EventKind::UnwindMiss),
            6 => Some(EventKind::LoaderNotice),
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
    /// Non-zero when the call is recorded: always, unless sampling
    /// ([`global_names::SAMPLE_BYTES`](crate::global_names::SAMPLE_BYTES)) passed it over.
    pub sampled: u32,
    /// Sampling's countdown for the thread: the bytes it allocates before its next
    /// sample point; 0 before its first allocation.
    pub until_sample: u64,
}

/// How to find the caller's frame from a frame at some address: the canonical frame
/// address (CFA, the stack pointer before the call that made the frame; the return
/// address is the word below it), and where the caller's frame pointer is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnwindRule {
    /// What [`kind`](Self::kind) computes the CFA from, plus or after this.
    pub cfa_offset: i32,
    /// Where the caller's rbp was saved, from the CFA; [`RBP_UNCHANGED`] or
    /// [`RBP_LOST`].
    pub rbp_offset: i16,
    /// A [`CfaKind`] as `u8`.
    pub kind: u8,
    /// [`RULE_SKIP`] or 0.
    pub flags: u8,
}

/// [`UnwindRule::rbp_offset`] of a frame that leaves rbp as its caller had it.
pub const RBP_UNCHANGED: i16 = 0;
/// [`UnwindRule::rbp_offset`] of a frame after which the caller's rbp is not known.
pub const RBP_LOST: i16 = i16::MIN;
/// [`UnwindRule::flags`]: the frame is an allocation wrapper's (libstdc++'s `operator
/// new`, which calls `malloc`): while it would be the stack's first, it is left out, so
/// the stack starts at the function that asked for memory.
pub const RULE_SKIP: u8 = 1;

/// How an [`UnwindRule`] finds the CFA.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CfaKind {
    /// No unwind information covers the address: the stack ends here, normally if the
    /// frame pointer is 0 (the ABI's mark of the outermost frame), else cut.
    Invalid = 0,
    /// CFA = rsp + offset.
    Rsp = 1,
    /// CFA = rbp + offset.
    Rbp = 2,
    /// CFA = the word at rbp + offset (functions that realign their stack).
    RbpDeref = 3,
    /// A PLT stub: CFA = rsp + 8, plus 8 once the address's low four bits reach the
    /// offset (past the stub's `push`).
    Plt = 4,
    /// A signal frame (`__restore_rt`): the interrupted registers are in the
    /// `sigcontext` at rsp + offset.
    Signal = 5,
    /// The return address is undefined: the outermost frame (`_start`, a thread's start).
    Outermost = 6,
    /// An object without a table (JIT code): CFA = rbp + 16, the caller's rbp at rbp; the
    /// chain ends at rbp 0.
    FramePointer = 7,
}

impl CfaKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(CfaKind::Invalid),
            1 => Some(CfaKind::Rsp),
            2 => Some(CfaKind::Rbp),
            3 => Some(CfaKind::RbpDeref),
            4 => Some(CfaKind::Plt),
            5 => Some(CfaKind::Signal),
            6 => Some(CfaKind::Outermost),
            7 => Some(CfaKind::FramePointer),
            _ => None,
        }
    }
}

/// One row of an unwind table: from `pc` (the address in the file, less the table's
/// base, see [`Mapping::base`]) up to the next row's, frames unwind by rule `rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// Index into UNWIND_RULES.
    pub rule: u32,
}

/// [`Mapping::first_row`] of the page of uprobe trampolines (`[uprobes]`): a return
/// address there was replaced by a pending uretprobe, and the real one is not on the
/// stack. The walk keeps it as the last frame, which names it.
pub const TRAMPOLINE_MAPPING: u32 = u32::MAX;

/// One executable mapping of a process, as the stack walk needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mapping {
    /// Its addresses: `start..end`.
    pub start: u64,
    pub end: u64,
    /// The address that row address 0 of its table is mapped at.
    pub base: u64,
    /// Its table: rows `first_row..first_row + rows` of UNWIND_ROWS. No rows: the
    /// object has no table, its frames are walked by frame pointer; or
    /// [`TRAMPOLINE_MAPPING`].
    pub first_row: u32,
    pub rows: u32,
}

/// What the stack walk knows of one process's code: its executable mappings, by address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessMappings {
    /// Entries of `mappings` in use, sorted by `start`, none overlapping.
    pub count: u32,
    /// Set by the walk when it sent [`EventKind::UnwindMiss`]; the agent's next write
    /// clears it.
    pub miss_reported: u32,
    pub mappings: [Mapping; MAX_MAPPINGS],
}

/// The registers an entry program reads arguments from, in the order of the System V
/// calling convention: `rdi`, `rsi`, `rdx`, `rcx`.
pub const ARGUMENT_REGISTERS: usize = 4;

/// The attach cookie of an entry probe: which [`AllocKind`] the probed function is (bits
/// 0-7), and the unwind rule of the probed instruction (`first_frame`), which the stack
/// walk starts with: its kind (bits 8-15, 0 for none), CFA offset (16-31), rbp offset
/// (32-47) and flags (48-55). A rule whose CFA offset does not fit is left out.
///
/// A probe placed after a prologue's moves may find an argument in another register
/// (mimalloc's `malloc` moves its size from `rdi` to `rsi` before its first branch):
/// `moved` (bits 56-61) holds, two bits per argument, the index of its register among
/// [`ARGUMENT_REGISTERS`] XOR its own index, so 0 is every argument where the call put
/// it.
pub const fn cookie_for(kind: AllocKind, first_frame: Option<UnwindRule>, moved: u8) -> u64 {
    let rule = match first_frame {
        Some(rule) if rule.cfa_offset >= 0 && rule.cfa_offset <= u16::MAX as i32 => {
            (rule.kind as u64) << 8
                | (rule.cfa_offset as u64) << 16
                | (rule.rbp_offset as u16 as u64) << 32
                | (rule.flags as u64) << 48
        }
        _ => 0,
    };
    kind as u64 | rule | ((moved & 0x3f) as u64) << 56
}

/// Which of [`ARGUMENT_REGISTERS`] holds `argument` (0-2) at an entry probe.
pub const fn cookie_register(cookie: u64, argument: usize) -> usize {
    (argument ^ (cookie >> (56 + 2 * argument)) as usize) & 3
}

/// The `moved` of [`cookie_for`] for argument registers `registers` (indexes among
/// [`ARGUMENT_REGISTERS`], one per argument).
pub const fn moved_arguments(registers: [u8; 3]) -> u8 {
    let mut moved = 0;
    let mut argument = 0;
    while argument < 3 {
        moved |= ((registers[argument] ^ argument as u8) & 3) << (2 * argument);
        argument += 1;
    }
    moved
}

/// The [`AllocKind`] in an entry probe's cookie.
pub const fn cookie_kind(cookie: u64) -> Option<AllocKind> {
    AllocKind::from_u32((cookie & 0xff) as u32)
}

/// The probed instruction's unwind rule in an entry probe's cookie, if it has one.
pub const fn cookie_rule(cookie: u64) -> Option<UnwindRule> {
    let kind = (cookie >> 8) as u8;
    if kind == CfaKind::Invalid as u8 {
        return None;
    }
    Some(UnwindRule {
        cfa_offset: (cookie >> 16) as u16 as i32,
        rbp_offset: (cookie >> 32) as u16 as i16,
        kind,
        flags: (cookie >> 48) as u8,
    })
}

#[cfg(feature = "user")]
mod user {
    use super::{
        AllocInfo, AllocKey, Event, Mapping, Pending, ProcessMappings, StackTrace, UnwindRow,
        UnwindRule,
    };

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
    unsafe impl aya::Pod for UnwindRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Mapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessMappings {}

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
        assert_eq!(size_of::<Pending>(), 48);
        assert_eq!(size_of::<Event>(), 16);
        assert_eq!(size_of::<UnwindRule>(), 8);
        assert_eq!(size_of::<UnwindRow>(), 8);
        assert_eq!(size_of::<Mapping>(), 32);
        // With the hash map's element header (48 bytes) and key, 8 KiB.
        assert_eq!(size_of::<ProcessMappings>(), 8 + 32 * MAX_MAPPINGS);
        assert_eq!(size_of::<StackTrace>(), 8 * (MAX_STACK_DEPTH + 1));
    }

    #[test]
    fn alloc_kind_and_first_rule_round_trip_through_cookie() {
        let rules = [
            None,
            Some(UnwindRule {
                cfa_offset: 8,
                rbp_offset: RBP_UNCHANGED,
                kind: CfaKind::Rsp as u8,
                flags: 0,
            }),
            Some(UnwindRule {
                cfa_offset: 0xfff8,
                rbp_offset: -48,
                kind: CfaKind::Rbp as u8,
                flags: RULE_SKIP,
            }),
            Some(UnwindRule {
                cfa_offset: 16,
                rbp_offset: RBP_LOST,
                kind: CfaKind::Rsp as u8,
                flags: 0,
            }),
        ];
        for kind in AllocKind::ALL {
            for rule in rules {
                let cookie = cookie_for(kind, rule, 0);
                assert_eq!(cookie_kind(cookie), Some(kind));
                assert_eq!(cookie_rule(cookie), rule);
            }
        }
        assert_eq!(AllocKind::from_u32(99), None);
    }

    #[test]
    fn a_first_rule_that_does_not_fit_is_left_out() {
        for cfa_offset in [-8, 0x1_0000] {
            let rule = UnwindRule {
                cfa_offset,
                rbp_offset: RBP_UNCHANGED,
                kind: CfaKind::Rsp as u8,
                flags: 0,
            };
            let cookie = cookie_for(AllocKind::Calloc, Some(rule), 0);
            assert_eq!(cookie_kind(cookie), Some(AllocKind::Calloc));
            assert_eq!(cookie_rule(cookie), None);
        }
    }

    #[test]
    fn moved_arguments_round_trip_through_cookie() {
        let rule = Some(UnwindRule {
            cfa_offset: 8,
            rbp_offset: 0,
            kind: CfaKind::Rsp as u8,
            flags: 0,
        });
        for registers in [[0, 1, 2], [1, 1, 2], [1, 0, 3], [3, 2, 1]] {
            let cookie = cookie_for(AllocKind::Realloc, rule, moved_arguments(registers));
            assert_eq!(cookie_kind(cookie), Some(AllocKind::Realloc));
            assert_eq!(cookie_rule(cookie), rule);
            for (argument, &register) in registers.iter().enumerate() {
                assert_eq!(cookie_register(cookie, argument), register as usize);
            }
        }
        assert_eq!(moved_arguments([0, 1, 2]), 0, "unmoved is no bit");
    }

    #[test]
    fn the_fixed_point_logarithm_is_within_its_last_bit() {
        for x in [
            1u64,
            2,
            3,
            1000,
            65_537,
            0x8000_0001,
            u32::MAX as u64,
            1 << 32,
        ] {
            let exact = (x as f64).log2() * f64::from(1u32 << FRACTION_BITS);
            let ours = log2(x) as f64;
            assert!((ours - exact).abs() <= 2.0, "log2({x}): {ours} for {exact}");
        }
    }

    /// Gaps from random numbers spread evenly over all 2³² values: their distribution.
    fn gaps(mean: u64) -> Vec<u64> {
        const DRAWS: u64 = 1 << 20;
        let step = (1u64 << 32) / DRAWS;
        (0..DRAWS)
            .map(|i| exponential_gap((i * step + step / 2) as u32, mean))
            .collect()
    }

    #[test]
    fn gaps_are_exponential_with_the_mean_asked_for() {
        for mean in [1u64 << 10, 512 << 10, 1 << 30, MAX_SAMPLE_BYTES] {
            let gaps = gaps(mean);
            let average = gaps.iter().map(|&g| g as f64).sum::<f64>() / gaps.len() as f64;
            assert!(
                (average / mean as f64 - 1.0).abs() < 0.002,
                "mean {mean}: gaps average {average}"
            );
            // Sampled with probability 1 − exp(−size/mean): the share of gaps ≤ size.
            for share in [0.01, 0.1, 0.5, 1.0, 3.0] {
                let size = (mean as f64 * share) as u64;
                let below = gaps.iter().filter(|&&g| g <= size).count() as f64;
                let expected = 1.0 - (-share).exp();
                assert!(
                    (below / gaps.len() as f64 - expected).abs() < 0.001,
                    "mean {mean}, size {size}: {below} of {}, not {expected}",
                    gaps.len()
                );
            }
        }
    }
}
