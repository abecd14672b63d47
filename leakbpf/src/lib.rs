//! leakbpf: finds the call stacks that hold unfreed memory in a live process.
//!
//! Uprobes on the allocation functions (in `leakbpf-ebpf`) keep every outstanding
//! allocation and per call site totals in eBPF maps; this crate attaches them, drains the
//! maps every interval, symbolizes stacks with blazesym and reports the top call sites.

mod agent;
mod batch;
mod child;
pub mod cli;
mod elf;
mod fd;
mod kernel_maps;
mod objects;
mod output;
mod placement;
mod privileges;
mod probes;
mod process;
mod report;
mod symbolizer;
mod tracer;
