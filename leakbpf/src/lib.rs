//! leakbpf: finds the call stacks that hold unfreed memory in a live process.
//!
//! The pipeline, one folder per stage:
//! - [`attach`]: which objects a process maps, which allocation functions they provide,
//!   where in each to put the uprobe, and attaching the programs there.
//! - [`kernel`]: the eBPF object loaded, and its maps read: outstanding allocations,
//!   stacks, counters, the clock the programs timestamp with. The only user of aya maps.
//! - [`unwind`]: what the stack walk in the kernel needs to know about the code it walks.
//! - [`symbolize`]: return addresses to functions, files and lines, with blazesym.
//! - [`analyze`]: call sites ranked, with their growth between reports.
//! - [`snapshot`]: one moment of one process, the type every output renders and a saved
//!   run is read back as.
//! - [`output`]: the formats a snapshot is written in: table, JSON lines, pprof, folded
//!   stacks, SVG flame graph, Prometheus metrics.
//! - [`session`]: the run itself: targets, their lifetimes, the event loop.
//! - `serve`: `--http`, the latest snapshots served to scrapers while the run goes on.
//!
//! The eBPF programs are in the `leakbpf-ebpf` crate; the types both sides share in
//! `leakbpf-common`. The parsers of what a traced process provides (its ELF objects,
//! memory map and loader output, the names in reports) are public so the fuzz targets
//! in `fuzz/` can feed them arbitrary bytes.

mod analyze;
pub mod attach;
pub mod cli;
mod kernel;
pub mod output;
mod serve;
mod session;
pub mod snapshot;
pub mod symbolize;
#[cfg(test)]
mod test_support;
mod unwind;

/// The event counters, defined by the stage that reads them, for those who build a
/// [`snapshot::Snapshot`] (the fuzz targets).
pub use crate::kernel::Counters;
