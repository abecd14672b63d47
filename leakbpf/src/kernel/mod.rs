//! The kernel side as userspace sees it: the eBPF object loaded with this run's
//! settings, and its maps read. Every aya map is used here and nowhere else; the
//! programs themselves are attached by [`crate::attach`]. And what the kernel offers,
//! for bug reports ([`features`]).

mod batch;
mod bpf;
mod clock;
pub mod features;
mod maps;
mod multi;
mod sampling;
mod shared;

use std::num::NonZeroU32;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::MapError,
    programs::{ProgramError, TracePoint, UProbe},
};
use leakbpf_common::{
    ALL_PROCESSES, MAX_CALL_SLOTS, MAX_STACK_DEPTH, NO_FIELD, global_names, map_names,
    program_names::{TRACEPOINTS, UPROBES, URETPROBES},
};

pub use self::{
    clock::boot_time_ns,
    maps::{Counters, Forget, KernelMaps, Scan, SiteState},
    multi::MultiPrograms,
    sampling::{Estimate, Sampling},
};
use crate::attach::ProcessFields;

/// The object `cargo xtask build-ebpf` builds from `leakbpf-ebpf`, checked by CI to be
/// exactly what the current source builds to.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/leakbpf.bpf.o");

/// How many entries the kernel maps hold.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Outstanding allocations (`--max-allocs`).
    pub allocations: u32,
    /// Distinct stacks, and call sites (`--max-stacks`).
    pub stacks: u32,
    /// Rows of every unwind table together (`--max-unwind-rows`).
    pub unwind_rows: u32,
}

/// Distinct unwind rules the kernel holds (the eBPF side's own bound): real objects
/// have a few hundred.
pub const UNWIND_RULES: u32 = 1 << 16;

/// Which processes the programs record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One process, told apart by a constant: the cheapest.
    One(NonZeroU32),
    /// The processes in the kernel's TRACED_PIDS set (several `--pid`s,
    /// `--follow-forks`).
    Set,
    /// Every process (`--all`).
    All,
}

/// What the programs are loaded with.
pub struct LoadSettings {
    pub capacity: Capacity,
    pub mode: Mode,
    /// Processes the traced ones create are traced too (`--follow-forks`); else the
    /// agent is told of them.
    pub follow_forks: bool,
    /// The process tracepoints' record offsets, when tracefs has them.
    pub fields: Option<ProcessFields>,
    /// Frames walked at most per stack (`--max-depth`).
    pub stack_depth: u32,
    /// The started command, traced with ptrace: held at the dynamic linker's notices.
    pub held: Option<NonZeroU32>,
    /// Only sampled allocations are recorded (`--sample-bytes`).
    pub sampling: Option<Sampling>,
    /// Uprobe programs for uprobe_multi links where the kernel has them.
    pub multi_links: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot load the eBPF programs")]
    Load(#[source] EbpfError),
    #[error("cannot load eBPF program {name}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("the eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("cannot use eBPF map {name}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("cannot start the clock thread")]
    Clock(#[source] std::io::Error),
    #[error("cannot read eBPF map {name}")]
    Read {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Loads the programs into the kernel: the loaded object, which holds the programs
/// (for [`crate::attach`]), the uprobe programs for uprobe_multi links where the kernel
/// has them (else the object's own are loaded, for a perf-event link per probe), and
/// the object's maps.
pub fn load(
    settings: &LoadSettings,
) -> Result<(Ebpf, Option<MultiPrograms>, KernelMaps), KernelError> {
    let target = match settings.mode {
        Mode::One(pid) => pid.get(),
        Mode::Set => 0,
        Mode::All => ALL_PROCESSES,
    };
    let follow_forks = u32::from(settings.follow_forks);
    let fields = settings.fields.unwrap_or(ProcessFields {
        newtask_pid: 0,
        newtask_flags: 0,
        exit_group_dead: NO_FIELD,
    });
    let agent = std::process::id();
    let stack_depth = settings.stack_depth.min(MAX_STACK_DEPTH as u32);
    let held = settings.held.map_or(0, NonZeroU32::get);
    let sample_bytes = settings.sampling.map_or(0, |sampling| sampling.mean_bytes);
    let mut ebpf = EbpfLoader::new()
        .override_global(global_names::TARGET_TGID, &target, true)
        .override_global(global_names::AGENT_TGID, &agent, true)
        .override_global(global_names::FOLLOW_FORKS, &follow_forks, true)
        .override_global(global_names::NEWTASK_PID_OFFSET, &fields.newtask_pid, true)
        .override_global(
            global_names::NEWTASK_FLAGS_OFFSET,
            &fields.newtask_flags,
            true,
        )
        .override_global(
            global_names::EXIT_GROUP_DEAD_OFFSET,
            &fields.exit_group_dead,
            true,
        )
        .override_global(global_names::STACK_DEPTH, &stack_depth, true)
        .override_global(global_names::HELD_TGID, &held, true)
        .override_global(global_names::SAMPLE_BYTES, &sample_bytes, true)
        .map_max_entries(map_names::ALLOCS, settings.capacity.allocations)
        .map_max_entries(map_names::UNWIND_ROWS, settings.capacity.unwind_rows)
        .map_max_entries(map_names::STACKS, settings.capacity.stacks)
        .map_max_entries(map_names::CALL_SLOTS, call_slots())
        .load(OBJECT)
        .map_err(KernelError::Load)?;
    let multi = match settings
        .multi_links
        .then(|| MultiPrograms::load(&ebpf, OBJECT, UPROBES.into_iter().chain(URETPROBES)))
    {
        None => None,
        Some(Ok(multi)) => Some(multi),
        Some(Err(err)) => {
            log::info!(
                "uprobe_multi links: {:#}; a perf-event link per probe instead",
                anyhow::Error::from(err)
            );
            None
        }
    };
    if multi.is_none() {
        for name in UPROBES.into_iter().chain(URETPROBES) {
            let program: &mut UProbe = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| KernelError::Program { name, source })?;
        }
    }
    for name in TRACEPOINTS {
        let program: &mut TracePoint = program(&mut ebpf, name)?;
        program
            .load()
            .map_err(|source| KernelError::Program { name, source })?;
    }
    let maps = KernelMaps::take(&mut ebpf, settings.capacity.unwind_rows)?;
    Ok((ebpf, multi, maps))
}

/// Program `name` of `ebpf`, as the kind of program it is.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::Missing(name))?
        .try_into()
        .map_err(|source| KernelError::Program { name, source })
}

/// Elements of the in-flight call array: one per possible thread id, within a bound.
fn call_slots() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|max| max.trim().parse::<u32>().ok())
        .map_or(MAX_CALL_SLOTS, |max| max.min(MAX_CALL_SLOTS))
}
