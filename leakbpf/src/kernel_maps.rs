//! Reads what the eBPF programs keep: counters, per call site totals, outstanding
//! allocations and stacks.

use std::{collections::HashMap as StdHashMap, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leakbpf_common::{AllocInfo, AllocKey, Counter, SiteKey, SiteTotals, StackTrace, map_names};
use serde::Serialize;

use crate::{batch, tracer::TracerError};

/// Outstanding allocations read per system call: 8192 × 48 bytes of buffer.
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
    pub dropped_sites: u64,
    pub dropped_calls: u64,
}

/// One call site's outstanding allocations, as drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteState {
    pub stack_id: u64,
    pub bytes: u64,
    pub allocations: u64,
    /// CLOCK_BOOTTIME of its oldest outstanding allocation.
    pub oldest_ns: Option<u64>,
}

pub struct KernelMaps {
    /// Read in batches (see [`batch`]), so kept untyped.
    allocs: MapData,
    sites: PerCpuHashMap<MapData, SiteKey, SiteTotals>,
    stacks: HashMap<MapData, u64, StackTrace>,
    counters: PerCpuArray<MapData, u64>,
    traced: HashMap<MapData, u32, u32>,
    new_stacks: Option<RingBuf<MapData>>,
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
                Some(Map::HashMap(data)) => data,
                _ => return Err(TracerError::Missing(map_names::ALLOCS)),
            },
            sites: take(ebpf, map_names::SITE_TOTALS)?,
            stacks: take(ebpf, map_names::STACKS)?,
            counters: take(ebpf, map_names::COUNTERS)?,
            traced: take(ebpf, map_names::TRACED_PIDS)?,
            new_stacks: Some(take(ebpf, map_names::NEW_STACKS)?),
        })
    }

    /// Makes the programs record allocations of process `pid` (when several are traced).
    pub fn trace(&mut self, pid: u32) -> Result<(), TracerError> {
        self.traced
            .insert(pid, 1, 0)
            .map_err(map_error(map_names::TRACED_PIDS))
    }

    /// The ring buffer announcing new stacks; there is one, so the first caller gets it.
    pub fn take_new_stacks(&mut self) -> Option<RingBuf<MapData>> {
        self.new_stacks.take()
    }

    pub fn counters(&self) -> Result<Counters, TracerError> {
        let read = |counter: Counter| -> Result<u64, TracerError> {
            let values = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(map_error(map_names::COUNTERS))?;
            Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        Ok(Counters {
            allocations: read(Counter::Allocations)?,
            frees: read(Counter::Frees)?,
            unknown_frees: read(Counter::UnknownFrees)?,
            failed_allocations: read(Counter::FailedAllocations)?,
            stack_failures: read(Counter::StackFailures)?,
            dropped_allocations: read(Counter::DroppedAllocations)?,
            dropped_sites: read(Counter::DroppedSites)?,
            dropped_calls: read(Counter::DroppedCalls)?,
        })
    }

    /// The call sites of `pid` with outstanding allocations.
    ///
    /// Bytes and counts come from the per-site totals the eBPF side maintains, unless
    /// `allocated_before_ns` is set (`--min-age`): then only allocations made before it
    /// count, which only the allocations themselves can tell. Ages always come from them.
    pub fn sites(
        &self,
        pid: u32,
        allocated_before_ns: Option<u64>,
    ) -> Result<Vec<SiteState>, TracerError> {
        let mut sites: StdHashMap<u64, SiteState> = StdHashMap::new();
        if allocated_before_ns.is_none() {
            for entry in self.sites.iter() {
                let (key, per_cpu) = entry.map_err(map_error(map_names::SITE_TOTALS))?;
                if key.tgid != pid {
                    continue;
                }
                let (bytes, allocations) = per_cpu.iter().fold((0u64, 0u64), |(b, a), t| {
                    (b.wrapping_add(t.bytes), a.wrapping_add(t.allocations))
                });
                if allocations != 0 {
                    sites.insert(
                        key.stack_id,
                        SiteState {
                            stack_id: key.stack_id,
                            bytes,
                            allocations,
                            oldest_ns: None,
                        },
                    );
                }
            }
        }
        let scan = batch::for_each::<AllocKey, AllocInfo>(
            self.allocs.fd().as_fd(),
            ALLOCS_PER_READ,
            |key, info| {
                if key.tgid != pid {
                    return;
                }
                let site = match allocated_before_ns {
                    Some(cutoff) if info.timestamp_ns > cutoff => return,
                    Some(_) => {
                        let site = sites.entry(info.site.stack_id).or_insert(SiteState {
                            stack_id: info.site.stack_id,
                            bytes: 0,
                            allocations: 0,
                            oldest_ns: None,
                        });
                        site.bytes += info.size;
                        site.allocations += 1;
                        site
                    }
                    None => match sites.get_mut(&info.site.stack_id) {
                        Some(site) => site,
                        None => return,
                    },
                };
                site.oldest_ns = Some(
                    site.oldest_ns
                        .map_or(info.timestamp_ns, |t| t.min(info.timestamp_ns)),
                );
            },
        );
        scan.map_err(|source| TracerError::Read {
            name: map_names::ALLOCS,
            source,
        })?;
        Ok(sites.into_values().collect())
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
