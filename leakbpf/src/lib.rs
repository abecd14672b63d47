//! leakbpf: finds the call stacks that hold unfreed memory in a live process.
//!
//! Uprobes on the allocation functions (in `leakbpf-ebpf`) keep every outstanding
//! allocation and per call site totals in eBPF maps; this crate attaches them, drains the
//! maps every interval, symbolizes stacks with blazesym and reports the top call sites.
//!
//! Besides [`cli`], the modules that parse what a traced process provides (its ELF
//! objects, memory map and loader output, the symbol names in reports) are public so
//! the fuzz targets in `fuzz/` can feed them arbitrary bytes.

mod agent;
mod batch;
mod child;
pub mod cli;
mod clock;
pub mod elf;
mod fd;
mod frameless;
mod kernel_maps;
mod lifetime;
mod monitor;
pub mod objects;
pub mod output;
pub mod placement;
mod privileges;
mod probes;
mod process;
pub mod report;
mod symbolizer;
mod tracefs;
mod tracer;

/// The parts of a [`report::Report`] defined in private modules, for those who build one
/// (the fuzz targets).
pub use crate::{kernel_maps::Counters, symbolizer::Frame};
