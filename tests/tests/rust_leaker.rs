//! Rust programs: their allocations go through the standard library's allocation
//! functions before the allocator, and are still attributed to the function that made
//! them, called from `main`. Built against glibc, and for x86_64-unknown-linux-musl
//! linked statically: musl's malloc is then in the program itself (a static PIE), with
//! no libc.so to find. Each with frame pointers and without (Rust's release default).

use leakbpf_tests::{
    RUST_LEAKER, RUST_LEAKER_MUSL, RUST_LEAKER_MUSL_NOFP, RUST_LEAKER_NOFP, Report, TargetOutput,
    assert_churn_frees_counted, assert_nothing_dropped, require_root, sum, trace_pid, trace_spawn,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn rust_boxes_and_vec_leaks_are_reported_exactly() {
    require_root();
    let run = trace_pid(LEAKBPF, RUST_LEAKER, &[], &["--top", "1000"]);
    assert_rust_run(run.final_report(), &run.truth);
}

#[test]
fn rust_boxes_and_vec_leaks_without_frame_pointers() {
    require_root();
    let run = trace_pid(LEAKBPF, RUST_LEAKER_NOFP, &[], &["--top", "1000"]);
    assert_rust_run(run.final_report(), &run.truth);
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

fn assert_rust_run(report: &Report, truth: &TargetOutput) {
    for (function, suffix) in [
        ("rust_leaker::leak_boxes", "leak_boxes"),
        ("rust_leaker::leak_vec", "leak_vec"),
    ] {
        let truth = truth.truth(function);
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
                site.chain_between(function, "rust_leaker::main"),
                Some(vec![function, "rust_leaker::main"]),
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
    assert_churn_frees_counted(report, truth, 500_000);
    assert_nothing_dropped(report);
}

#[test]
fn static_musl_rust_traced_by_pid() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        musl_program(RUST_LEAKER_MUSL),
        &[],
        &["--top", "1000"],
    );
    assert_rust_run(run.final_report(), &run.truth);
}

#[test]
fn static_musl_rust_traced_from_spawn() {
    require_root();
    let run = trace_spawn(
        LEAKBPF,
        musl_program(RUST_LEAKER_MUSL),
        &[],
        &["--top", "1000"],
    );
    assert_rust_run(run.final_report(), &run.truth);
}

#[test]
fn static_musl_rust_without_frame_pointers_traced_by_pid() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        musl_program(RUST_LEAKER_MUSL_NOFP),
        &[],
        &["--top", "1000"],
    );
    assert_rust_run(run.final_report(), &run.truth);
}

#[test]
fn static_musl_rust_without_frame_pointers_traced_from_spawn() {
    require_root();
    let run = trace_spawn(
        LEAKBPF,
        musl_program(RUST_LEAKER_MUSL_NOFP),
        &[],
        &["--top", "1000"],
    );
    assert_rust_run(run.final_report(), &run.truth);
}
