//! The harness of leakbpf's end-to-end tests: starts a target program (built by build.rs
//! with tests/targets/Makefile), traces it with the real agent, and reads both sides: the
//! target's own account of what it leaked ([`truth`]) and leakbpf's JSON reports
//! ([`report`]), then checks one against the other ([`allocator`]), or against
//! valgrind's account of the same work ([`valgrind`]).
//!
//! The tests load eBPF programs, so they must run as root (`cargo xtask test` arranges
//! it); as anyone else they fail, saying so, rather than pass without testing anything.

pub mod allocator;
pub mod kernel;
pub mod process;
pub mod readers;
pub mod report;
pub mod run;
pub mod targets;
pub mod truth;
pub mod valgrind;

pub use crate::{
    allocator::{
        START_UP_ALLOCATIONS, assert_allocator_run, assert_churn_freed, assert_churn_frees_counted,
        assert_nothing_dropped,
    },
    kernel::{KernelObjects, find_program, require_root},
    process::{Agent, Finished, Target},
    report::{
        Callsite, Counters, Frame, Report, Totals, assert_chain, assert_chains_to_main,
        check_reports, final_report_of, parse_reports, reports_of, short_name, strip_rust_hash,
        sum,
    },
    run::{Run, Session, Traced, trace, trace_pid, trace_spawn},
    targets::*,
    truth::{Churn, TargetOutput, Truth},
};
