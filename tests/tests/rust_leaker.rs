//! Rust programs: their allocations go through the standard library's allocation
//! functions before the allocator, and are still attributed to the function that made
//! them, called from `main`. Built against glibc, and for x86_64-unknown-linux-musl
//! linked statically: musl's malloc is then in the program itself (a static PIE), with
//! no libc.so to find. Each with frame pointers and without (Rust's release default).
//! And on the allocators Rust services link in, found with no flag: tikv-jemallocator
//! (`_rjem_mallocx`, `_rjem_sdallocx`, …) and the mimalloc crate (`mi_malloc_aligned`,
//! `mi_free`, …).

use leakbpf_tests::{
    RUST_JEMALLOC, RUST_LEAKER, RUST_LEAKER_MUSL, RUST_LEAKER_MUSL_NOFP, RUST_LEAKER_NOFP,
    RUST_MIMALLOC, Report, TargetOutput, Traced, assert_churn_frees_counted,
    assert_nothing_dropped, require_root, sum, trace,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn rust_boxes_and_vec_leaks_are_reported_exactly() {
    assert_rust_leaker_run(RUST_LEAKER, Traced::ByPid);
}

#[test]
fn rust_boxes_and_vec_leaks_without_frame_pointers() {
    assert_rust_leaker_run(RUST_LEAKER_NOFP, Traced::ByPid);
}

/// Where rust_leaker.rs's functions are: its own crate, or the module the allocator
/// programs include it as.
const RUST_LEAKER_CRATE: &str = "rust_leaker";
/// The frees rust_leaker's default churn makes.
const FULL_CHURN: u64 = 750_000;
/// Churn rounds on the statically linked allocators, some of whose entry points the kernel
/// single-steps (about 10 µs a probe), and the frees they make.
const SHORT_ROUNDS: &str = "20000";
const SHORT_CHURN: u64 = 60_000;

#[test]
fn tikv_jemallocator_in_the_executable_is_found_without_flags() {
    assert_static_allocator_run(RUST_JEMALLOC, Traced::FromSpawn, "rust_jemalloc::leaker");
}

#[test]
fn tikv_jemallocator_traced_by_pid() {
    assert_static_allocator_run(RUST_JEMALLOC, Traced::ByPid, "rust_jemalloc::leaker");
}

#[test]
fn mimalloc_crate_in_the_executable_is_found_without_flags() {
    assert_static_allocator_run(RUST_MIMALLOC, Traced::FromSpawn, "rust_mimalloc::leaker");
}

/// rust_leaker.rs as `module` of `program`, on an allocator linked into it, traced with
/// no flag but `--top`.
fn assert_static_allocator_run(program: &str, traced: Traced, module: &str) {
    assert_traced_run(
        program,
        traced,
        module,
        &["--rounds", SHORT_ROUNDS],
        SHORT_CHURN,
    );
}

/// rust_leaker itself (a build of it for glibc or musl), its default churn.
fn assert_rust_leaker_run(program: &str, traced: Traced) {
    assert_traced_run(program, traced, RUST_LEAKER_CRATE, &[], FULL_CHURN);
}

/// `program args`, traced with no flag but `--top`: see [`assert_rust_run`].
fn assert_traced_run(program: &str, traced: Traced, module: &str, args: &[&str], frees: u64) {
    require_root();
    let run = trace(LEAKBPF, traced, program, args, &["--top", "1000"], &[]);
    assert_rust_run(run.final_report(), &run.truth, module, frees);
}

/// A build for musl: `program`, unless rustc had no standard library for it.
fn musl_program(program: &'static str) -> &'static str {
    assert!(
        !program.is_empty(),
        "rust_leaker_musl was not built: this rustc has no standard library for \
         x86_64-unknown-linux-musl (`rustup target add x86_64-unknown-linux-musl`, then \
         rebuild the tests)"
    );
    program
}

/// Exact figures at both leaking functions of `module` (each called by its `main`),
/// nothing at the churn, whose `least_frees` frees or more were all counted.
fn assert_rust_run(report: &Report, truth: &TargetOutput, module: &str, least_frees: u64) {
    let main = format!("{module}::main");
    for (truth_of, suffix) in [
        ("rust_leaker::leak_boxes", "leak_boxes"),
        ("rust_leaker::leak_vec", "leak_vec"),
    ] {
        let function = format!("{module}::{suffix}");
        let function = function.as_str();
        let truth = truth.truth(truth_of);
        let outstanding =
            sum(report
                .sites_where(|site| site.site().is_some_and(|caller| caller.ends_with(suffix))));
        assert_eq!(
            outstanding,
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
        // Above the standard library's allocation functions: the leaking function,
        // called by the program's main.
        for site in
            report.sites_where(|site| site.site().is_some_and(|caller| caller.ends_with(suffix)))
        {
            assert_eq!(
                site.chain_between(function, &main),
                Some(vec![function, main.as_str()]),
                "the callers of {function}: {:?}\n{}",
                site.names(),
                report.describe()
            );
        }
    }
    let churned =
        sum(report.sites_where(|site| site.site().is_some_and(|caller| caller.ends_with("churn"))));
    assert_eq!(
        churned,
        (0, 0),
        "churn frees everything:\n{}",
        report.describe()
    );
    assert_churn_frees_counted(report, truth, least_frees);
    assert_nothing_dropped(report);
}

#[test]
fn static_musl_rust_traced_by_pid() {
    assert_rust_leaker_run(musl_program(RUST_LEAKER_MUSL), Traced::ByPid);
}

#[test]
fn static_musl_rust_traced_from_spawn() {
    assert_rust_leaker_run(musl_program(RUST_LEAKER_MUSL), Traced::FromSpawn);
}

#[test]
fn static_musl_rust_without_frame_pointers_traced_by_pid() {
    assert_rust_leaker_run(musl_program(RUST_LEAKER_MUSL_NOFP), Traced::ByPid);
}

#[test]
fn static_musl_rust_without_frame_pointers_traced_from_spawn() {
    assert_rust_leaker_run(musl_program(RUST_LEAKER_MUSL_NOFP), Traced::FromSpawn);
}
