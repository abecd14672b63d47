//! Every allocator leakbpf traces, each with a target that leaks known amounts from
//! functions of its own next to hundreds of thousands of blocks freed again: each leak is
//! reported once, exactly, at the function that made it, called by `main`, and nothing
//! freed is ([`assert_allocator_run`]); every stack is walked whole. One case per
//! allocator, one test per way it is traced; the main ones also built as distributions
//! build (no frame pointers), with the same results.

use std::path::Path;

use leakbpf_tests::{
    JEMALLOC_LINKED, JEMALLOC_LINKED_NOFP, LEAKER, LEAKER_FUNCTIONS, LEAKER_NOFP, MIMALLOC_LINKED,
    PREFIXED, STATIC_GLIBC, STATIC_GLIBC_FUNCTIONS, STATIC_GLIBC_NOFP, TCMALLOC_NEW,
    TCMALLOC_NEW_NOFP, Traced, assert_allocator_run, assert_chains_to_main, require_root, trace,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Every call site in the report.
const TOP: [&str; 2] = ["--top", "1000"];

/// Debian's libjemalloc2.
const LIBJEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// A target and how to trace it.
struct Case {
    target: &'static str,
    /// Its leaking functions: it prints a truth about each, and about nothing else.
    functions: &'static [&'static str],
    /// leakbpf's options besides those choosing the target and the JSON format.
    leakbpf_args: &'static [&'static str],
    /// The target's own (`--wait` aside).
    args: &'static [&'static str],
    /// A library that must exist, put in `LD_PRELOAD` (from spawn, leakbpf's too).
    preload: Option<&'static str>,
}

impl Case {
    fn run(&self, traced: Traced) {
        require_root();
        let preload: Vec<(&str, &str)> = self
            .preload
            .map(|library| {
                assert!(
                    Path::new(library).is_file(),
                    "{library} is missing: install it (`cargo xtask setup` does)"
                );
                ("LD_PRELOAD", library)
            })
            .into_iter()
            .collect();
        let run = trace(
            LEAKBPF,
            traced,
            self.target,
            self.args,
            self.leakbpf_args,
            &preload,
        );
        let report = run.final_report();
        assert_allocator_run(report, &run.truth, self.functions, traced);
        assert_chains_to_main(report, self.functions);
        assert_eq!(
            report.counters.truncated_stacks,
            0,
            "every stack reaches its outermost frame:\n{}",
            report.describe()
        );
    }
}

macro_rules! traced {
    (by_pid) => {
        Traced::ByPid
    };
    (from_spawn) => {
        Traced::FromSpawn
    };
}

/// `name: CASE => [by_pid, from_spawn];` makes the tests `name::by_pid` and
/// `name::from_spawn`, each running CASE traced that way.
macro_rules! cases {
    ($($(#[$doc:meta])* $name:ident: $case:expr => [$($traced:ident),+];)+) => {
        $(
            $(#[$doc])*
            mod $name {
                use super::*;
                $(
                    #[test]
                    fn $traced() {
                        $case.run(traced!($traced));
                    }
                )+
            }
        )+
    };
}

cases! {
    /// glibc's malloc family, every function leakbpf probes, with millions of blocks
    /// churned.
    glibc: Case {
        target: LEAKER,
        functions: &LEAKER_FUNCTIONS,
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// The same, built without frame pointers.
    glibc_nofp: Case {
        target: LEAKER_NOFP,
        functions: &LEAKER_FUNCTIONS,
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// jemalloc linked: malloc and friends are jemalloc's, not libc's, and jemalloc's own
    /// API (mallocx, rallocx, dallocx, sdallocx) allocates and frees too.
    jemalloc_linked: Case {
        target: JEMALLOC_LINKED,
        functions: &[
            "leak_malloc",
            "leak_calloc",
            "leak_realloc",
            "leak_posix_memalign",
            "leak_mallocx",
            "leak_rallocx",
        ],
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// The same, built without frame pointers (as Debian's jemalloc is).
    jemalloc_linked_nofp: Case {
        target: JEMALLOC_LINKED_NOFP,
        functions: &[
            "leak_malloc",
            "leak_calloc",
            "leak_realloc",
            "leak_posix_memalign",
            "leak_mallocx",
            "leak_rallocx",
        ],
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid];

    /// jemalloc preloaded into leaker: pvalloc (which jemalloc lacks) is still libc's, and
    /// libc's reallocarray calls jemalloc's realloc.
    jemalloc_preloaded: Case {
        target: LEAKER,
        functions: &LEAKER_FUNCTIONS,
        leakbpf_args: &TOP,
        args: &[],
        preload: Some(LIBJEMALLOC),
    } => [by_pid, from_spawn];

    /// tcmalloc (gperftools' minimal build), linked into a C++ program: its operator new
    /// and delete are its own code and call no malloc, so they are probed themselves. The
    /// leaking functions are extern "C", so named without parameters.
    tcmalloc_new: Case {
        target: TCMALLOC_NEW,
        functions: &[
            "leak_new",
            "leak_new_array",
            "leak_new_nothrow",
            "leak_new_aligned",
            "leak_malloc",
        ],
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// The same, built without frame pointers.
    tcmalloc_new_nofp: Case {
        target: TCMALLOC_NEW_NOFP,
        functions: &[
            "leak_new",
            "leak_new_array",
            "leak_new_nothrow",
            "leak_new_aligned",
            "leak_malloc",
        ],
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid];

    /// mimalloc, linked ahead of libc: malloc and mi_malloc are one function under two
    /// names; reallocarray and posix_memalign jump to mimalloc's own.
    // Fewer churn rounds (630,000 frees, enough for the checks): mimalloc's malloc and
    // free are probed on instructions the kernel single-steps.
    mimalloc_linked: Case {
        target: MIMALLOC_LINKED,
        functions: &[
            "leak_malloc",
            "leak_calloc",
            "leak_realloc",
            "leak_reallocarray",
            "leak_posix_memalign",
            "leak_aligned_alloc",
            "leak_mi_malloc",
            "leak_mi_realloc",
        ],
        leakbpf_args: &TOP,
        args: &["--rounds", "70000"],
        preload: None,
    } => [by_pid, from_spawn];

    /// An allocator exporting only prefixed names (je_malloc, je_calloc, je_realloc,
    /// je_free, on memory of its own), found without a flag (jemalloc's usual prefix),
    /// beside libc's malloc: both are reported.
    prefixed: Case {
        target: PREFIXED,
        functions: &[
            "leak_je_malloc",
            "leak_je_calloc",
            "leak_je_realloc",
            "leak_je_realloc_in_place",
            "leak_je_realloc_null",
            "leak_malloc",
        ],
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// A fully static executable: glibc's malloc is in the program itself, and there is
    /// no libc.so and no dynamic loader to find it through.
    static_glibc: Case {
        target: STATIC_GLIBC,
        functions: &STATIC_GLIBC_FUNCTIONS,
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];

    /// The same, built without frame pointers.
    static_glibc_nofp: Case {
        target: STATIC_GLIBC_NOFP,
        functions: &STATIC_GLIBC_FUNCTIONS,
        leakbpf_args: &TOP,
        args: &[],
        preload: None,
    } => [by_pid, from_spawn];
}
