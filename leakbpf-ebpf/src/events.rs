//! What the eBPF side tells the agent: a few events per stack or process, never one per
//! allocation.

use aya_ebpf::{macros::map, maps::RingBuf};
use leakbpf_common::{Counter, Event, EventKind};

use crate::counters::count;

/// Room for this many events between two reads by the agent. A lost stack notice only
/// delays symbolization to the next report; a lost process event is caught by the
/// agent's own checks (a process's exit by its pidfd).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Sends an event about process `tgid`; one that finds no room is counted as lost
/// against process `owner`, the one whose report should say so.
#[inline(always)]
pub(crate) fn emit(kind: EventKind, tgid: u32, value: u64, owner: u32) {
    let event = Event {
        kind: kind as u32,
        tgid,
        value,
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        count(owner, Counter::LostEvents);
    }
}
