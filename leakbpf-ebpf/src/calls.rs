//! Allocation calls between their entry and their return, per thread.
//!
//! Both probes of every allocation look the call up, so where it is kept is paid twice
//! per allocation. A thread's call goes in the element of a plain array indexed by its
//! thread id, which costs a fraction of a hash lookup; no two live threads share an id,
//! so no two share an element. The agent sizes the array to the system's `pid_max`
//! (within a bound); threads with larger ids keep theirs in a hash.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use leakbpf_common::Pending;

/// The agent sets the real size at load time.
const DEFAULT_SLOTS: u32 = 1024;
/// Threads beyond the array whose call is kept. Entries are reused per thread and never
/// deleted; an LRU map lets those of exited threads make room.
const MAX_OTHERS: u32 = 65536;

#[map]
static CALL_SLOTS: Array<Pending> = Array::with_max_entries(DEFAULT_SLOTS, 0);
#[map]
static OTHER_CALLS: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(MAX_OTHERS, 0);

/// Thread `tid`'s call, or None when it has none and no room is left for one.
#[inline(always)]
pub fn slot(tid: u32) -> Option<*mut Pending> {
    if let Some(slot) = CALL_SLOTS.get_ptr_mut(tid) {
        return Some(slot);
    }
    if let Some(slot) = OTHER_CALLS.get_ptr_mut(&tid) {
        return Some(slot);
    }
    let empty = Pending {
        size: 0,
        arg_ptr: 0,
        stack_id: 0,
        kind: 0,
        depth: 0,
        active: 0,
        sampled: 0,
        until_sample: 0,
    };
    OTHER_CALLS.insert(&tid, &empty, 0).ok()?;
    OTHER_CALLS.get_ptr_mut(&tid)
}

/// Thread `tid`'s call, if it ever had one.
#[inline(always)]
pub fn existing(tid: u32) -> Option<*mut Pending> {
    CALL_SLOTS
        .get_ptr_mut(tid)
        .or_else(|| OTHER_CALLS.get_ptr_mut(&tid))
}
