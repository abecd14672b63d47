//! Walks the user stack at an allocation function's entry and stores it once per distinct
//! stack, keyed by a hash of its frames.
//!
//! The kernel's `bpf_get_stackid` is not used: at a function's first instruction the
//! frame-pointer chain starts at the *caller's* frame, so the kernel's walk skips the
//! return address into the caller, which is the one frame a leak report needs most. Its
//! stack map also fails on bucket collisions long before it is full. Here the return
//! address at the stack pointer comes first, then the frame-pointer chain.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use leakbpf_common::{Counter, NO_STACK, NewStack, StackTrace};

use crate::{EEXIST, count};

/// The agent sets the real size at load time (`--max-stacks`).
const DEFAULT_STACKS: u32 = 1024;
/// How far above the stack pointer a frame may be: a pointer further away is not a
/// frame of this stack but garbage in a register that does not hold a frame pointer.
const MAX_STACK_SPAN: u64 = 64 << 20;

#[map]
static STACKS: HashMap<u64, StackTrace> = HashMap::with_max_entries(DEFAULT_STACKS, 0);
/// Room for this many notices between two reads by the agent; a lost notice only delays
/// symbolization to the next report.
#[map]
static NEW_STACKS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
#[map]
static STACK_SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

/// The id of the calling thread's user stack at a probed function's entry, or
/// [`NO_STACK`] when not even the return address can be read.
#[inline(always)]
pub(crate) fn capture(ctx: &ProbeContext, tgid: u32) -> u64 {
    match walk(ctx, tgid) {
        Some(id) => id,
        None => {
            count(Counter::StackFailures);
            NO_STACK
        }
    }
}

#[inline(always)]
fn walk(ctx: &ProbeContext, tgid: u32) -> Option<u64> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU scratch slot, used by this program run alone.
    let trace = unsafe { &mut *scratch };
    // SAFETY: reading registers of the probe's own context.
    let (sp, mut fp) = unsafe { ((*ctx.regs).rsp, (*ctx.regs).rbp) };
    // SAFETY: the helper checks the user address.
    let caller: u64 = unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?;
    trace.frames[0] = caller;
    let mut hash = mix(0x6c65_616b_6270_6621, caller);
    let mut depth = 1;
    for slot in trace.frames.iter_mut().skip(1) {
        if fp <= sp || fp - sp > MAX_STACK_SPAN || fp % 8 != 0 {
            break;
        }
        // SAFETY: the helper checks the user address.
        let Ok([next_fp, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if ret == 0 {
            break;
        }
        *slot = ret;
        hash = mix(hash, ret);
        depth += 1;
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
    }
    trace.depth = depth;
    let id = match finish(hash ^ depth) {
        NO_STACK => 1,
        id => id,
    };
    // SAFETY: a plain value, only tested for presence.
    if unsafe { STACKS.get(&id) }.is_some() {
        return Some(id);
    }
    match STACKS.insert(&id, &*trace, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            let notice = NewStack {
                tgid,
                pad: 0,
                stack_id: id,
            };
            let _ = NEW_STACKS.output::<NewStack>(&notice, 0);
        }
        Err(err) if err == -EEXIST => {}
        // The allocation is still counted at its site; only its frames are lost.
        Err(_) => {
            count(Counter::StackFailures);
        }
    }
    Some(id)
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
