//! Reads what the eBPF programs keep: counters, outstanding allocations and stacks.

use std::{collections::HashMap as StdHashMap, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leakbpf_common::{AllocInfo, AllocKey, Counter, ProcessCounters, StackTrace, map_names};
use serde::Serialize;

use crate::{batch, tracer::TracerError};

/// Outstanding allocations read per system call: 8192 × 40 bytes of buffer.
const ALLOCS_PER_READ: usize = 8192;

/// The eBPF side's event counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub allocations: u64,
    pub frees: u64,
    pub unknown_frees: u64,
    pub failed_allocations: u64,
    pub stack_failures: u64,
    pub dropped_allocations: u64,
    pub dropped_calls: u64,
    pub probe_errors: u64,
    pub lost_events: u64,
}

/// One call site's outstanding allocations, as drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteState {
    pub stack_id: u64,
    pub bytes: u64,
    pub allocations: u64,
    /// CLOCK_BOOTTIME of its oldest outstanding allocation.
    pub oldest_ns: u64,
}

pub struct KernelMaps {
    /// Read in batches (see [`batch`]), so kept as the map itself.
    allocs: Map,
    stacks: HashMap<MapData, u64, StackTrace>,
    /// The one traced process's counters.
    counters: PerCpuArray<MapData, u64>,
    /// Each process's counters, when several are traced.
    process_counters: PerCpuHashMap<MapData, u32, ProcessCounters>,
    traced: HashMap<MapData, u32, u32>,
    events: Option<RingBuf<MapData>>,
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> TracerError {
    move |source| TracerError::Map { name, source }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, TracerError> {
    let map = ebpf.take_map(name).ok_or(TracerError::Missing(name))?;
    T::try_from(map).map_err(map_error(name))
}

impl KernelMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, TracerError> {
        Ok(Self {
            allocs: match ebpf.take_map(map_names::ALLOCS) {
                Some(map @ Map::HashMap(_)) => map,
                _ => return Err(TracerError::Missing(map_names::ALLOCS)),
            },
            stacks: take(ebpf, map_names::STACKS)?,
            counters: take(ebpf, map_names::COUNTERS)?,
            process_counters: take(ebpf, map_names::PROCESS_COUNTERS)?,
            traced: take(ebpf, map_names::TRACED_PIDS)?,
            events: Some(take(ebpf, map_names::EVENTS)?),
        })
    }

    /// Makes the programs record allocations of process `pid` (in [`Mode::Set`]).
    ///
    /// [`Mode::Set`]: crate::tracer::Mode::Set
    pub fn trace(&mut self, pid: u32) -> Result<(), TracerError> {
        self.traced
            .insert(pid, 1, 0)
            .map_err(map_error(map_names::TRACED_PIDS))
    }

    /// The ring buffer of events; there is one, so the first caller gets it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The counters of process `pid`: those of the one traced process when `only`.
    pub fn counters(&self, pid: u32, only: bool) -> Result<Counters, TracerError> {
        let mut totals: ProcessCounters = [0; Counter::COUNT as usize];
        if only {
            for (index, total) in (0..).zip(totals.iter_mut()) {
                let per_cpu = self
                    .counters
                    .get(&index, 0)
                    .map_err(map_error(map_names::COUNTERS))?;
                *total = per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
            }
        } else {
            match self.process_counters.get(&pid, 0) {
                Ok(per_cpu) => {
                    for cpu in per_cpu.iter() {
                        for (total, value) in totals.iter_mut().zip(cpu) {
                            *total = total.wrapping_add(*value);
                        }
                    }
                }
                // Nothing counted yet.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(map_names::PROCESS_COUNTERS)(source)),
            }
        }
        let total = |counter: Counter| totals[counter as usize];
        Ok(Counters {
            allocations: total(Counter::Allocations),
            frees: total(Counter::Frees),
            unknown_frees: total(Counter::UnknownFrees),
            failed_allocations: total(Counter::FailedAllocations),
            stack_failures: total(Counter::StackFailures),
            dropped_allocations: total(Counter::DroppedAllocations),
            dropped_calls: total(Counter::DroppedCalls),
            probe_errors: total(Counter::ProbeErrors),
            lost_events: total(Counter::LostEvents),
        })
    }

    /// The call sites with outstanding allocations, per process, from one scan of the
    /// allocations; with `allocated_before_ns` (`--min-age`), only those made before it.
    pub fn sites(
        &self,
        allocated_before_ns: Option<u64>,
    ) -> Result<StdHashMap<u32, Vec<SiteState>>, TracerError> {
        let mut sites: StdHashMap<(u32, u64), SiteState> = StdHashMap::new();
        let scan = batch::for_each::<AllocKey, AllocInfo>(
            self.allocs_fd(),
            ALLOCS_PER_READ,
            |key, info| {
                if allocated_before_ns.is_some_and(|cutoff| info.timestamp_ns > cutoff) {
                    return;
                }
                let site = sites.entry((key.tgid, info.stack_id)).or_insert(SiteState {
                    stack_id: info.stack_id,
                    bytes: 0,
                    allocations: 0,
                    oldest_ns: info.timestamp_ns,
                });
                site.bytes += info.size;
                site.allocations += 1;
                site.oldest_ns = site.oldest_ns.min(info.timestamp_ns);
            },
        );
        scan.map_err(|source| TracerError::Read {
            name: map_names::ALLOCS,
            source,
        })?;
        let mut by_process: StdHashMap<u32, Vec<SiteState>> = StdHashMap::new();
        for ((tgid, _), site) in sites {
            by_process.entry(tgid).or_default().push(site);
        }
        Ok(by_process)
    }

    fn allocs_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.allocs {
            Map::HashMap(data) => data.fd().as_fd(),
            _ => unreachable!("checked in take"),
        }
    }

    /// Drops what the processes in `stale` hold: for each, its blocks recorded before a
    /// time (it exec'd), or all of them, its counters and its place in the traced set
    /// (None: it exited). One scan for them all.
    pub fn forget(&mut self, stale: &[(u32, Option<u64>)]) -> Result<(), TracerError> {
        let mut keys = Vec::new();
        let scan = batch::for_each::<AllocKey, AllocInfo>(
            self.allocs_fd(),
            ALLOCS_PER_READ,
            |key, info| {
                let dropped = stale.iter().any(|&(pid, before)| {
                    key.tgid == pid && before.is_none_or(|before| info.timestamp_ns < before)
                });
                if dropped {
                    keys.push(*key);
                }
            },
        );
        scan.map_err(|source| TracerError::Read {
            name: map_names::ALLOCS,
            source,
        })?;
        let mut allocs: HashMap<&mut MapData, AllocKey, AllocInfo> = (&mut self.allocs)
            .try_into()
            .map_err(map_error(map_names::ALLOCS))?;
        for key in &keys {
            // Freed meanwhile: as good.
            let _ = allocs.remove(key);
        }
        for &(pid, before) in stale {
            if before.is_none() {
                let _ = self.process_counters.remove(&pid);
                let _ = self.traced.remove(&pid);
            }
        }
        Ok(())
    }

    /// The return addresses of stack `stack_id`, innermost first; None if not stored.
    pub fn stack(&self, stack_id: u64) -> Result<Option<Vec<u64>>, TracerError> {
        match self.stacks.get(&stack_id, 0) {
            Ok(trace) => Ok(Some(trace.addresses().to_vec())),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map_names::STACKS)(source)),
        }
    }
}
