//! What the eBPF side tells the agent: a few events per stack or process, never one per
//! allocation.

use aya_ebpf::{macros::map, maps::RingBuf};
use leakbpf_common::{Event, EventKind};

/// Room for this many events between two reads by the agent. A lost stack notice only
/// delays symbolization to the next report; a lost process event is caught by the
/// agent's own checks (a process's exit by its pidfd).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[inline(always)]
pub fn emit(kind: EventKind, tgid: u32, value: u64) {
    let event = Event {
        kind: kind as u32,
        tgid,
        value,
    };
    let _ = EVENTS.output::<Event>(&event, 0);
}
