//! What the eBPF programs keep (counters, outstanding allocations, stacks, the traced
//! set) and what the agent tells them (the clock, the unwind tables and each process's
//! mappings).

use std::{collections::HashMap as StdHashMap, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use leakbpf_common::{
    AllocInfo, AllocKey, Counter, ProcessCounters, ProcessMappings, Setting, StackTrace, UnwindRow,
    UnwindRule, map_names,
};
use serde::{Deserialize, Serialize};

use super::{
    KernelError, batch,
    clock::Clock,
    sampling::{Estimate, Sampling},
    shared::SharedArray,
};

/// Outstanding allocations read per system call: 8192 × 40 bytes of buffer.
const ALLOCS_PER_READ: usize = 8192;

/// The eBPF side's event counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    pub truncated_stacks: u64,
}

/// One call site's outstanding allocations, as drained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteState {
    pub stack_id: u64,
    /// Estimates, rounded, when sampled.
    pub bytes: u64,
    pub allocations: u64,
    /// CLOCK_BOOTTIME of its oldest outstanding allocation.
    pub oldest_ns: u64,
    /// Its allocations made before the scan's `old_before_ns`.
    pub old_allocations: u64,
    /// When sampled: what its recorded blocks stand for.
    pub estimate: Option<Estimate>,
}

impl SiteState {
    /// Adds the blocks of `other`, a site with the same frames.
    pub fn merge(&mut self, other: &SiteState) {
        self.stack_id = self.stack_id.min(other.stack_id);
        self.oldest_ns = self.oldest_ns.min(other.oldest_ns);
        match (&mut self.estimate, &other.estimate) {
            (Some(estimate), Some(other)) => {
                estimate.merge(other);
                self.round_estimate();
            }
            _ => {
                self.bytes += other.bytes;
                self.allocations += other.allocations;
                self.old_allocations += other.old_allocations;
            }
        }
    }

    /// Its figures from its estimate.
    fn round_estimate(&mut self) {
        if let Some(estimate) = &self.estimate {
            self.bytes = estimate.bytes.round() as u64;
            self.allocations = estimate.allocations.round() as u64;
            self.old_allocations = estimate.old_allocations.round() as u64;
        }
    }
}

/// Which allocations a scan counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scan {
    /// Only those made before this CLOCK_BOOTTIME (`--min-age`).
    pub allocated_before_ns: Option<u64>,
    /// Those made before this count as old.
    pub old_before_ns: u64,
    /// Recorded with a chance by size, each stands for the blocks passed over.
    pub sampling: Option<Sampling>,
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
    settings: Array<MapData, u32>,
    unwind_rows: SharedArray<UnwindRow>,
    unwind_rules: SharedArray<UnwindRule>,
    unwind_processes: HashMap<MapData, u32, ProcessMappings>,
    unwind_generation: Array<MapData, u32>,
    loader_holds: HashMap<MapData, u32, u32>,
    /// Writes the CLOCK map while the maps live.
    _clock: Clock,
}

/// What of a process's blocks to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forget {
    /// It exited: every block, its counters and its place in the traced set.
    Process(u32),
    /// It called exec at this CLOCK_BOOTTIME: the blocks of its old image.
    Before { pid: u32, exec_ns: u64 },
}

impl Forget {
    fn pid(self) -> u32 {
        match self {
            Forget::Process(pid) | Forget::Before { pid, .. } => pid,
        }
    }

    fn drops(self, key: &AllocKey, info: &AllocInfo) -> bool {
        key.tgid == self.pid()
            && match self {
                Forget::Process(_) => true,
                Forget::Before { exec_ns, .. } => info.timestamp_ns < exec_ns,
            }
    }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    T::try_from(map).map_err(map_error(name))
}

/// An array map of `name`, memory-mapped with its `len` elements.
fn shared<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    len: u32,
) -> Result<SharedArray<T>, KernelError> {
    match ebpf.take_map(name) {
        Some(Map::Array(data)) => {
            SharedArray::new(data, len).map_err(|source| KernelError::Read { name, source })
        }
        _ => Err(KernelError::Missing(name)),
    }
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf, unwind_rows: u32) -> Result<Self, KernelError> {
        let clock = Clock::start(take(ebpf, map_names::CLOCK)?).map_err(KernelError::Clock)?;
        Ok(Self {
            allocs: match ebpf.take_map(map_names::ALLOCS) {
                Some(map @ Map::HashMap(_)) => map,
                _ => return Err(KernelError::Missing(map_names::ALLOCS)),
            },
            stacks: take(ebpf, map_names::STACKS)?,
            counters: take(ebpf, map_names::COUNTERS)?,
            process_counters: take(ebpf, map_names::PROCESS_COUNTERS)?,
            traced: take(ebpf, map_names::TRACED_PIDS)?,
            events: Some(take(ebpf, map_names::EVENTS)?),
            settings: take(ebpf, map_names::SETTINGS)?,
            unwind_rows: shared(ebpf, map_names::UNWIND_ROWS, unwind_rows)?,
            unwind_rules: shared(ebpf, map_names::UNWIND_RULES, super::UNWIND_RULES)?,
            unwind_processes: take(ebpf, map_names::UNWIND_PROCESSES)?,
            unwind_generation: take(ebpf, map_names::UNWIND_GENERATION)?,
            loader_holds: take(ebpf, map_names::LOADER_HOLDS)?,
            _clock: clock,
        })
    }

    /// The first `count` of the kernel's unwind rows, which the stack walk reads as they
    /// are written (fewer if the array is smaller; none if it cannot be mapped).
    pub fn unwind_rows(&mut self, count: usize) -> &mut [UnwindRow] {
        self.unwind_rows.prefix_mut(count).unwrap_or_default()
    }

    /// How many unwind rows the kernel's array holds.
    pub fn unwind_rows_capacity(&self) -> usize {
        self.unwind_rows.len()
    }

    /// The first `count` of the kernel's unwind rules, by index.
    pub fn unwind_rules(&mut self, count: usize) -> &mut [UnwindRule] {
        self.unwind_rules.prefix_mut(count).unwrap_or_default()
    }

    /// Bytes of kernel memory the unwind arrays take.
    pub fn unwind_bytes(&self) -> usize {
        self.unwind_rows.bytes() + self.unwind_rules.bytes()
    }

    /// Tells the stack walk what process `pid` maps, replacing what it knew.
    pub fn set_unwind_mappings(
        &mut self,
        pid: u32,
        mappings: &ProcessMappings,
    ) -> Result<(), KernelError> {
        self.unwind_processes
            .insert(pid, mappings, 0)
            .map_err(map_error(map_names::UNWIND_PROCESSES))
    }

    /// Forgets what process `pid` maps.
    pub fn remove_unwind_mappings(&mut self, pid: u32) -> Result<(), KernelError> {
        match self.unwind_processes.remove(&pid) {
            Ok(()) => Ok(()),
            // The exit tracepoint removed it first.
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(map_error(map_names::UNWIND_PROCESSES)(source)),
        }
    }

    /// Makes every CPU's cached unwind rules stale.
    pub fn bump_unwind_generation(&mut self) -> Result<(), KernelError> {
        let generation = self
            .unwind_generation
            .get(&0, 0)
            .map_err(map_error(map_names::UNWIND_GENERATION))?;
        self.unwind_generation
            .set(0, generation.wrapping_add(1), 0)
            .map_err(map_error(map_names::UNWIND_GENERATION))
    }

    /// Whether thread `tid` is held at the dynamic linker's notice (and no longer, once
    /// asked): its stop is the agent's to undo, not a signal to deliver.
    pub fn take_loader_hold(&mut self, tid: u32) -> bool {
        self.loader_holds.remove(&tid).is_ok()
    }

    /// Switches `setting` on for the programs.
    pub fn switch_on(&mut self, setting: Setting) -> Result<(), KernelError> {
        self.settings
            .set(setting as u32, 1, 0)
            .map_err(map_error(map_names::SETTINGS))
    }

    /// Makes the programs record allocations of process `pid` (in [`Mode::Set`]).
    ///
    /// [`Mode::Set`]: super::Mode::Set
    pub fn trace(&mut self, pid: u32) -> Result<(), KernelError> {
        self.traced
            .insert(pid, 1, 0)
            .map_err(map_error(map_names::TRACED_PIDS))
    }

    /// The ring buffer of events; there is one, so the first caller gets it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The counters of process `pid`: those of the one traced process when `only`.
    pub fn counters(&self, pid: u32, only: bool) -> Result<Counters, KernelError> {
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
            truncated_stacks: total(Counter::TruncatedStacks),
        })
    }

    /// The call sites with outstanding allocations, per process, from one scan of the
    /// allocations.
    pub fn sites(&self, scan: Scan) -> Result<StdHashMap<u32, Vec<SiteState>>, KernelError> {
        let mut sites: StdHashMap<(u32, u64), SiteState> = StdHashMap::new();
        let scanned = batch::for_each::<AllocKey, AllocInfo>(
            self.allocs_fd(),
            ALLOCS_PER_READ,
            |key, info| {
                if scan
                    .allocated_before_ns
                    .is_some_and(|cutoff| info.timestamp_ns > cutoff)
                {
                    return;
                }
                let site = sites.entry((key.tgid, info.stack_id)).or_insert(SiteState {
                    stack_id: info.stack_id,
                    bytes: 0,
                    allocations: 0,
                    oldest_ns: info.timestamp_ns,
                    old_allocations: 0,
                    estimate: scan.sampling.map(|_| Estimate::default()),
                });
                let old = info.timestamp_ns < scan.old_before_ns;
                site.oldest_ns = site.oldest_ns.min(info.timestamp_ns);
                match (scan.sampling, &mut site.estimate) {
                    (Some(sampling), Some(estimate)) => {
                        estimate.add(info.size, sampling.probability(info.size), old);
                    }
                    _ => {
                        site.bytes += info.size;
                        site.allocations += 1;
                        site.old_allocations += u64::from(old);
                    }
                }
            },
        );
        scanned.map_err(|source| KernelError::Read {
            name: map_names::ALLOCS,
            source,
        })?;
        let mut by_process: StdHashMap<u32, Vec<SiteState>> = StdHashMap::new();
        for ((tgid, _), mut site) in sites {
            site.round_estimate();
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

    /// Drops what `stale` says of each process, in one scan for them all.
    pub fn forget(&mut self, stale: &[Forget]) -> Result<(), KernelError> {
        let mut keys = Vec::new();
        let scan = batch::for_each::<AllocKey, AllocInfo>(
            self.allocs_fd(),
            ALLOCS_PER_READ,
            |key, info| {
                if stale.iter().any(|forget| forget.drops(key, info)) {
                    keys.push(*key);
                }
            },
        );
        scan.map_err(|source| KernelError::Read {
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
        for forget in stale {
            if let Forget::Process(pid) = forget {
                let _ = self.process_counters.remove(pid);
                let _ = self.traced.remove(pid);
            }
        }
        Ok(())
    }

    /// The return addresses of stack `stack_id`, innermost first; None if not stored.
    pub fn stack(&self, stack_id: u64) -> Result<Option<Vec<u64>>, KernelError> {
        match self.stacks.get(&stack_id, 0) {
            Ok(trace) => Ok(Some(trace.addresses().to_vec())),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map_names::STACKS)(source)),
        }
    }
}
