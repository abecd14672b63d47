//! Walks the user stack at an allocation function's probe and stores it once per distinct
//! stack, keyed by a hash of its frames.
//!
//! Each frame is unwound by the rule of its address (see [`unwind`]): the canonical
//! frame address (CFA) from the stack pointer or the frame pointer, the return address
//! just below it, the caller's frame pointer where the frame saved it. So code without
//! frame pointers is walked as well as code with them; only code no table covers (JIT
//! code) is walked by frame pointer. The first frame's rule is the probed instruction's,
//! which the agent puts in the probe's cookie: no lookup, and right even before the
//! allocator's mapping is known.
//!
//! The walk ends normally at the outermost frame (an undefined return address, a frame
//! pointer of 0 where no rule is left), or at `--max-depth`. Anything else (no rule for
//! an address, unreadable memory, a frame that does not move up the stack, an address
//! outside the known mappings, a uretprobe's trampoline) cuts the stack there: the
//! frames kept are right, and the cut is counted in `TruncatedStacks`. An address
//! outside the known mappings is not kept (it may be garbage) unless it is the first.
//!
//! For the verifier, one frame is one call of [`step`] by `bpf_loop`, with the walk's
//! state in a per-CPU map value: the step is verified once, whatever the depth, and its
//! binary searches do not fork the verifier's states (see [`Walk::opaque`]).
//!
//! Walking is most of an allocation's cost, so the words above the stack pointer are
//! read a kilobyte at a time, not one read per frame, and the stacks known to be stored
//! are remembered per CPU, to skip the lookup.
//!
//! The kernel's `bpf_get_stackid` is not used: it walks frame pointers only, and at a
//! function's first instruction it skips the return address into the caller, the one
//! frame a leak report needs most. Its stack map also fails on bucket collisions long
//! before it is full.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use leakbpf_common::{
    CfaKind, Counter, DEFAULT_STACK_DEPTH, EventKind, MAX_STACK_DEPTH, NO_STACK, RBP_LOST,
    RBP_UNCHANGED, RULE_SKIP, StackTrace, UnwindRule, cookie_rule,
};

use crate::{
    counters::count,
    events,
    record::EEXIST,
    unwind::{self, Found},
};

/// The agent sets the real size at load time (`--max-stacks`).
const DEFAULT_STACKS: u32 = 1024;
/// How far above the first stack pointer a frame may be: a CFA further away is not a
/// frame of this stack but garbage.
const MAX_STACK_SPAN: u64 = 64 << 20;
/// Words read at once from the stack (1 KiB). A power of two, so an index into it can
/// be masked, which is what lets the verifier accept a variable index.
const WINDOW_WORDS: usize = 128;
/// Bytes below a word that a new window starts at: the frame's saved registers are
/// below its return address.
const WINDOW_LEAD: u64 = 64;
/// Stack ids remembered per CPU as stored, in a direct-mapped table; a power of two.
const KNOWN_SLOTS: usize = 1024;
/// The signal frame's `sigcontext` as the kernel lays it out: rbp is its 11th word, rsp
/// and rip its 16th and 17th.
const SIGCONTEXT_RBP: u64 = 10 * 8;
const SIGCONTEXT_RSP: usize = 5;
const SIGCONTEXT_RIP: usize = 6;
const SEED: u64 = 0x6c65_616b_6270_6621;

/// Frames walked at most (`--max-depth`), set by the agent at load time.
#[unsafe(no_mangle)]
static STACK_DEPTH: u32 = DEFAULT_STACK_DEPTH;

/// A stored stack costs its 1 KiB only once stored.
#[map]
static STACKS: HashMap<u64, StackTrace> =
    HashMap::with_max_entries(DEFAULT_STACKS, BPF_F_NO_PREALLOC);
#[map]
static STACK_SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);
#[map]
static STACK_WINDOW: PerCpuArray<[u64; WINDOW_WORDS]> = PerCpuArray::with_max_entries(1, 0);
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);
/// Ids of stacks known to be in [`STACKS`]; never wrong, since stacks are never removed.
#[map]
static KNOWN_STACKS: PerCpuArray<[u64; KNOWN_SLOTS]> = PerCpuArray::with_max_entries(1, 0);

/// One walk's state, between the steps that unwind a frame each.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Walk {
    /// The frame being unwound: the address whose rule unwinds it, and its registers.
    pc: u64,
    sp: u64,
    rbp: u64,
    /// The first frame's stack pointer: every frame is above it, and not far.
    bottom: u64,
    hash: u64,
    /// Where [`STACK_WINDOW`]'s words were read from.
    window_start: u64,
    /// A value written and read back, so the verifier does not follow it (see
    /// [`Walk::opaque`]).
    scratch: u64,
    rule: UnwindRule,
    pub tgid: u32,
    pub generation: u32,
    depth: u32,
    max_depth: u32,
    /// False once a frame's rule says the caller's rbp cannot be known.
    rbp_known: u32,
    window_valid: u32,
    /// Unwinding failed: the stack is cut short.
    cut: u32,
    pad: u32,
}

impl Walk {
    /// `value`, through memory the verifier does not track: a binary search's bounds
    /// then do not make its states fork on every comparison.
    #[inline(always)]
    pub fn opaque(&mut self, value: u64) -> u64 {
        // SAFETY: a field of this CPU's walk state.
        unsafe {
            core::ptr::write_volatile(&mut self.scratch, value);
            core::ptr::read_volatile(&self.scratch)
        }
    }
}

/// The id of the calling thread's user stack at a probed function, or [`NO_STACK`] when
/// it cannot be stored. The probe's cookie has the probed instruction's rule.
#[inline(always)]
pub(crate) fn capture(ctx: &ProbeContext, tgid: u32) -> u64 {
    // SAFETY: the helper only reads the program's attach cookie.
    let cookie = unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) };
    match walk(ctx, tgid, cookie) {
        Some(id) => id,
        None => {
            count(tgid, Counter::StackFailures);
            NO_STACK
        }
    }
}

#[inline(always)]
fn walk(ctx: &ProbeContext, tgid: u32, cookie: u64) -> Option<u64> {
    let state = WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's walk state, used by this program run alone.
    let state = unsafe { &mut *state };
    // SAFETY: reading registers of the probe's own context.
    let (pc, sp, rbp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    *state = Walk {
        pc,
        sp,
        rbp,
        bottom: sp,
        hash: SEED,
        window_start: sp,
        scratch: 0,
        // Placement keeps the stack and frame pointers as they were at the call:
        // without the agent's word, the return address is at the stack pointer.
        rule: cookie_rule(cookie).unwrap_or(UnwindRule {
            cfa_offset: 8,
            rbp_offset: RBP_UNCHANGED,
            kind: CfaKind::Rsp as u8,
            flags: 0,
        }),
        tgid,
        generation: unwind::generation(),
        depth: 0,
        // SAFETY: a read-only global; volatile so the compiler does not fold it.
        max_depth: unsafe { core::ptr::read_volatile(&STACK_DEPTH) }.min(MAX_STACK_DEPTH as u32),
        rbp_known: 1,
        window_valid: 0,
        cut: 0,
        pad: 0,
    };
    fill_window(state, sp);
    // SAFETY: the helper calls `step` at most this many times, on this CPU.
    unsafe {
        generated::bpf_loop(
            MAX_STACK_DEPTH as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let state = WALK.get_ptr_mut(0)?;
    // SAFETY: as above.
    let state = unsafe { &*state };
    if state.cut != 0 {
        count(tgid, Counter::TruncatedStacks);
    }
    let scratch = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU scratch slot, used by this program run alone.
    let trace = unsafe { &mut *scratch };
    let depth = u64::from(state.depth).min(MAX_STACK_DEPTH as u64);
    trace.depth = depth;
    let id = match finish(state.hash ^ depth) {
        NO_STACK => 1,
        id => id,
    };
    let known = KNOWN_STACKS.get_ptr_mut(0)?;
    let known_slot = (id as usize) & (KNOWN_SLOTS - 1);
    // SAFETY: this CPU's table, used by this program run alone.
    let known = unsafe { &mut (*known)[known_slot] };
    if *known == id {
        return Some(id);
    }
    // SAFETY: a plain value, only tested for presence.
    if unsafe { STACKS.get(&id) }.is_some() {
        *known = id;
        return Some(id);
    }
    match STACKS.insert(&id, &*trace, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            *known = id;
            events::emit(EventKind::NewStack, tgid, id, tgid);
        }
        Err(err) if err == -EEXIST => *known = id,
        // The allocation is still recorded with its stack id; only its frames are lost.
        Err(_) => {
            count(tgid, Counter::StackFailures);
        }
    }
    Some(id)
}

/// One frame: unwinds the current one into its caller's, records the caller, finds its
/// rule. 0 to go on, 1 once the walk is over.
#[inline(never)]
extern "C" fn step(_index: u64, _context: *mut c_void) -> i64 {
    let (Some(state), Some(trace)) = (WALK.get_ptr_mut(0), STACK_SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: this CPU's walk state and stack, used by this program run alone.
    let (state, trace) = unsafe { (&mut *state, &mut *trace) };
    let (record, lookup) = match unwind_frame(state) {
        Step::Caller { record, lookup } => (record, lookup),
        Step::End => return 1,
        Step::Cut => {
            state.cut = 1;
            return 1;
        }
    };
    let found = unwind::find(state, lookup);
    let keep = match found {
        Found::Rule(_) | Found::Trampoline => true,
        Found::Unknown => state.depth == 0,
    };
    if keep {
        let Some(slot) = trace.frames.get_mut(state.depth as usize) else {
            return 1;
        };
        *slot = record;
        state.hash = mix(state.hash, record);
        state.depth += 1;
    }
    state.pc = lookup;
    match found {
        Found::Rule(rule) => state.rule = rule,
        Found::Trampoline => {
            state.cut = 1;
            return 1;
        }
        Found::Unknown => {
            unwind::report_unknown(state, lookup);
            state.cut = 1;
            return 1;
        }
    }
    // An allocation wrapper's frame, while it would be the first: the stack starts at
    // its caller.
    if state.rule.flags & RULE_SKIP != 0 && state.depth == 1 {
        state.depth = 0;
        state.hash = SEED;
    }
    i64::from(state.depth >= state.max_depth)
}

/// What unwinding one frame gives.
enum Step {
    /// The caller's frame: `record` is the address to report for it (a return address:
    /// the symbolizer looks up the byte before), `lookup` the address whose rule
    /// unwinds it further.
    Caller { record: u64, lookup: u64 },
    /// The outermost frame: the stack is whole.
    End,
    /// Unwinding failed here.
    Cut,
}

/// Unwinds the walk's frame by its rule into its caller's.
#[inline(always)]
fn unwind_frame(state: &mut Walk) -> Step {
    let rule = state.rule;
    let offset = i64::from(rule.cfa_offset);
    let kind = rule.kind;
    let cfa = if kind == CfaKind::Rsp as u8 {
        state.sp.wrapping_add_signed(offset)
    } else if kind == CfaKind::Rbp as u8 || kind == CfaKind::FramePointer as u8 {
        if state.rbp_known == 0 {
            return Step::Cut;
        }
        // The ABI's mark of the outermost frame, where frame pointers are all there is.
        if state.rbp == 0 && kind == CfaKind::FramePointer as u8 {
            return Step::End;
        }
        state.rbp.wrapping_add_signed(offset)
    } else if kind == CfaKind::RbpDeref as u8 {
        if state.rbp_known == 0 {
            return Step::Cut;
        }
        match word(state, state.rbp.wrapping_add_signed(offset)) {
            Some(cfa) => cfa,
            None => return Step::Cut,
        }
    } else if kind == CfaKind::Plt as u8 {
        // The address is exact here: a stub is only ever the frame a probe or a signal
        // interrupted.
        let pushed = if (state.pc & 15) as i64 >= offset {
            8
        } else {
            0
        };
        state.sp + 8 + pushed
    } else if kind == CfaKind::Signal as u8 {
        return signal_frame(state, offset);
    } else if kind == CfaKind::Outermost as u8 {
        return Step::End;
    } else {
        // No rule covers the address: the end of the stack if the frame pointer says so.
        return if state.rbp_known != 0 && state.rbp == 0 {
            Step::End
        } else {
            Step::Cut
        };
    };
    // A caller's frame is above its callee's, on the same stack.
    if cfa <= state.sp || cfa - state.bottom > MAX_STACK_SPAN || !cfa.is_multiple_of(8) {
        return Step::Cut;
    }
    let Some(return_address) = word(state, cfa - 8) else {
        return Step::Cut;
    };
    match rule.rbp_offset {
        RBP_UNCHANGED => {}
        RBP_LOST => state.rbp_known = 0,
        saved => match word(state, cfa.wrapping_add_signed(i64::from(saved))) {
            Some(rbp) => {
                state.rbp = rbp;
                state.rbp_known = 1;
            }
            None => return Step::Cut,
        },
    }
    state.sp = cfa;
    if return_address == 0 {
        return Step::End;
    }
    Step::Caller {
        record: return_address,
        lookup: return_address - 1,
    }
}

/// Unwinds a signal handler's return into the frame the signal interrupted, from the
/// registers the kernel saved in the `sigcontext` at rsp + `offset`.
#[inline(always)]
fn signal_frame(state: &mut Walk, offset: i64) -> Step {
    let saved = state.sp.wrapping_add_signed(offset) + SIGCONTEXT_RBP;
    // SAFETY: the helper checks the user address.
    let Ok(registers) = (unsafe { bpf_probe_read_user(saved as *const [u64; 7]) }) else {
        return Step::Cut;
    };
    let (sp, pc) = (registers[SIGCONTEXT_RSP], registers[SIGCONTEXT_RIP]);
    if sp <= state.sp || sp - state.bottom > MAX_STACK_SPAN || pc == 0 {
        return Step::Cut;
    }
    state.rbp = registers[0];
    state.rbp_known = 1;
    state.sp = sp;
    // The interrupted instruction itself, not a return address: reported one byte on,
    // so the symbolizer's step back lands on it.
    Step::Caller {
        record: pc + 1,
        lookup: pc,
    }
}

/// Reads the stack's words from `start` on into the window, when they can all be read:
/// near the top of a stack they cannot, and then each word is read on its own.
#[inline(always)]
fn fill_window(state: &mut Walk, start: u64) {
    let Some(window) = STACK_WINDOW.get_ptr_mut(0) else {
        state.window_valid = 0;
        return;
    };
    // SAFETY: the helper checks the user address and writes at most the slot's size
    // into this CPU's slot, used by this program run alone.
    let status = unsafe {
        generated::bpf_probe_read_user(
            window.cast::<c_void>(),
            (WINDOW_WORDS * 8) as u32,
            start as *const c_void,
        )
    };
    state.window_start = start;
    state.window_valid = u32::from(status == 0);
}

/// The stack's word at `address`: from the window, read again further up once the walk
/// leaves it, else on its own.
#[inline(always)]
fn word(state: &mut Walk, address: u64) -> Option<u64> {
    if let Some(word) = windowed(state, address) {
        return Some(word);
    }
    // The walk goes up the stack: a window that starts a little below the word holds
    // the frame's saved registers and the frames above.
    if address > state.window_start {
        let start = address.saturating_sub(WINDOW_LEAD).max(state.window_start);
        fill_window(state, start);
        if let Some(word) = windowed(state, address) {
            return Some(word);
        }
    }
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}

#[inline(always)]
fn windowed(state: &Walk, address: u64) -> Option<u64> {
    let start = state.window_start;
    if state.window_valid == 0 || address < start || !(address - start).is_multiple_of(8) {
        return None;
    }
    let index = ((address - start) / 8) as usize;
    // One word short of the end: the compiler folds the mask into this bound, and the
    // verifier's own bound on the index is a word looser than the exact one.
    if index + 1 >= WINDOW_WORDS {
        return None;
    }
    let window = STACK_WINDOW.get_ptr(0)?;
    // SAFETY: this CPU's window, used by this program run alone.
    Some(unsafe { (*window)[index & (WINDOW_WORDS - 1)] })
}

#[inline(always)]
fn mix(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// splitmix64's finaliser: spreads the last frames over all the bits.
#[inline(always)]
fn finish(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
