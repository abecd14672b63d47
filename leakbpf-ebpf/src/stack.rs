//! Walks the user stack at an allocation function's entry and stores it once per distinct
//! stack, keyed by a hash of its frames.
//!
//! Walking is most of an allocation's cost, so it reads the words just above the stack
//! pointer in one go (where the first few frames of most stacks lie) instead of one read
//! per frame, and remembers per CPU which stacks are stored, to skip the lookup.
//!
//! The kernel's `bpf_get_stackid` is not used: at a function's first instruction the
//! frame-pointer chain starts at the *caller's* frame, so the kernel's walk skips the
//! return address into the caller, which is the one frame a leak report needs most. Its
//! stack map also fails on bucket collisions long before it is full. Here the return
//! address at the stack pointer comes first, then the frame-pointer chain.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use leakbpf_common::{Counter, EventKind, NO_STACK, Setting, StackTrace, WrapperFrame};

use crate::{counters::count, events, record::EEXIST, target::setting};

/// The agent sets the real size at load time (`--max-stacks`).
const DEFAULT_STACKS: u32 = 1024;
/// How far above the stack pointer a frame may be: a pointer further away is not a
/// frame of this stack but garbage in a register that does not hold a frame pointer.
const MAX_STACK_SPAN: u64 = 64 << 20;
/// Words read at once from the stack pointer up (1 KiB). A power of two, so an index
/// into it can be masked, which is what lets the verifier accept a variable index.
const WINDOW_WORDS: usize = 128;
/// Stack ids remembered per CPU as stored, in a direct-mapped table; a power of two.
const KNOWN_SLOTS: usize = 1024;
/// Frameless wrappers stepped over at most, one inside the other (`new[]` → `new`).
const MAX_WRAPPER_DEPTH: usize = 3;
/// Return addresses remembered per CPU as wrapper calls or not; a power of two.
const CACHED_CALLS: usize = 64;

/// What a return address of a process turned out to be. A few call sites make nearly
/// all allocations, so reading the code at each and looking it up (~100 ns) is done
/// once per CPU, not per allocation. (The cache trusts that a process does not unload a
/// wrapper's object and load other code at the same address.)
#[derive(Clone, Copy)]
struct CachedCall {
    tgid: u32,
    /// Non-zero for a wrapper call.
    wrapper: u32,
    address: u64,
    frame: WrapperFrame,
}

#[map]
static STACKS: HashMap<u64, StackTrace> = HashMap::with_max_entries(DEFAULT_STACKS, 0);
/// Calls made by frameless allocation wrappers, by the code around their return address
/// → the size of the wrapper's frame there (see the agent's `frameless` module).
#[map]
static WRAPPER_CALLS: HashMap<[u64; 2], WrapperFrame> = HashMap::with_max_entries(256, 0);
#[map]
static WRAPPER_CACHE: PerCpuArray<[CachedCall; CACHED_CALLS]> = PerCpuArray::with_max_entries(1, 0);
#[map]
static STACK_SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);
#[map]
static STACK_WINDOW: PerCpuArray<[u64; WINDOW_WORDS]> = PerCpuArray::with_max_entries(1, 0);
/// Ids of stacks known to be in [`STACKS`]; never wrong, since stacks are never removed.
#[map]
static KNOWN_STACKS: PerCpuArray<[u64; KNOWN_SLOTS]> = PerCpuArray::with_max_entries(1, 0);

/// The id of the calling thread's user stack at a probed function's entry, or
/// [`NO_STACK`] when not even the return address can be read.
#[inline(always)]
pub(crate) fn capture(ctx: &ProbeContext, tgid: u32) -> u64 {
    match walk(ctx, tgid) {
        Some(id) => id,
        None => {
            count(tgid, Counter::StackFailures);
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
    let window = read_window(sp);
    let [mut caller, _] = frame_at(window, sp, sp)?;
    // Off until the agent put calls in WRAPPER_CALLS: a C program has nothing to look up.
    if setting(Setting::WrappersKnown) {
        (caller, fp) = beyond_wrappers(window, sp, tgid, caller, fp)?;
    }
    trace.frames[0] = caller;
    let mut hash = mix(0x6c65_616b_6270_6621, caller);
    let mut depth = 1;
    for slot in trace.frames.iter_mut().skip(1) {
        if fp <= sp || fp - sp > MAX_STACK_SPAN || fp % 8 != 0 {
            break;
        }
        let Some([next_fp, ret]) = frame_at(window, sp, fp) else {
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

/// The first return address outside frameless allocation wrappers, from the one at `sp`,
/// and the frame pointer there.
#[inline(always)]
fn beyond_wrappers(
    window: Option<&[u64; WINDOW_WORDS]>,
    sp: u64,
    tgid: u32,
    caller: u64,
    fp: u64,
) -> Option<(u64, u64)> {
    let cache = WRAPPER_CACHE.get_ptr_mut(0)?;
    let (mut slot, mut caller, mut fp) = (sp, caller, fp);
    for _ in 0..MAX_WRAPPER_DEPTH {
        let index = (caller ^ (caller >> 12)) as usize & (CACHED_CALLS - 1);
        // SAFETY: this CPU's cache, used by this program run alone.
        let cached = unsafe { &mut (*cache)[index] };
        if cached.tgid != tgid || cached.address != caller {
            *cached = CachedCall {
                tgid,
                wrapper: 0,
                address: caller,
                frame: WrapperFrame {
                    size: 0,
                    saved_fp: 0,
                },
            };
            // SAFETY: the helper checks the user address.
            if let Ok(code) = unsafe { bpf_probe_read_user((caller - 8) as *const [u64; 2]) }
                // SAFETY: a plain value copied out of the map.
                && let Some(frame) = unsafe { WRAPPER_CALLS.get(&code) }
            {
                cached.wrapper = 1;
                cached.frame = *frame;
            }
        }
        if cached.wrapper == 0 {
            break;
        }
        let frame = cached.frame;
        slot += frame.size;
        [caller, _] = frame_at(window, sp, slot)?;
        if frame.saved_fp != 0 {
            [fp, _] = frame_at(window, sp, slot.wrapping_add_signed(frame.saved_fp))?;
        }
    }
    Some((caller, fp))
}

/// The words from `sp` up, when they can all be read: near the top of a stack they
/// cannot, and then each frame is read on its own.
#[inline(always)]
fn read_window(sp: u64) -> Option<&'static [u64; WINDOW_WORDS]> {
    let window = STACK_WINDOW.get_ptr_mut(0)?;
    // SAFETY: the helper checks the user address and writes at most the slot's size
    // into this CPU's slot, used by this program run alone.
    let status = unsafe {
        generated::bpf_probe_read_user(
            window.cast::<c_void>(),
            (WINDOW_WORDS * 8) as u32,
            sp as *const c_void,
        )
    };
    // SAFETY: as above; the slot lives as long as the map.
    (status == 0).then(|| unsafe { &*window })
}

/// The saved frame pointer and return address of the frame at `fp`.
#[inline(always)]
fn frame_at(window: Option<&[u64; WINDOW_WORDS]>, sp: u64, fp: u64) -> Option<[u64; 2]> {
    let index = ((fp - sp) / 8) as usize;
    // One word short of the end: the compiler folds the mask into this bound, and the
    // verifier's own bound on the index is a word looser than the exact one.
    if let Some(window) = window
        && index + 2 < WINDOW_WORDS
    {
        return Some([
            window[index & (WINDOW_WORDS - 1)],
            window[(index + 1) & (WINDOW_WORDS - 1)],
        ]);
    }
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }.ok()
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
