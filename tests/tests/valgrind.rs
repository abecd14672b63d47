//! leakbpf's stacks for programs built without frame pointers, next to valgrind's on the
//! same binaries doing the same work: for every leak valgrind reports at one of the
//! program's leaking functions, leakbpf reports the same bytes and blocks there, called
//! by the same functions up to `main` (valgrind unwinds with the same call frame
//! information, in its own way, from inside the process).

use leakbpf_tests::{
    CALL_CHAIN, CHAT_SERVER_NOFP, LEAKER_FUNCTIONS, LEAKER_NOFP, RUST_LEAKER_NOFP, Report, Traced,
    require_root, short_name, trace,
    valgrind::{self, LossRecord},
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// For each of valgrind's records whose stack, past the allocation machinery, starts at
/// one of `functions`: leakbpf's report has the same bytes and blocks at that function,
/// over call sites whose stacks name the same functions from it to `last`.
fn compare(report: &Report, records: &[LossRecord], functions: &[&str], last: &str) {
    let mut compared = 0;
    for function in functions {
        let ours: Vec<_> = report
            .callsites
            .iter()
            .filter(|site| {
                site.frames
                    .iter()
                    .skip(site.site_frame)
                    .find_map(|frame| frame.name())
                    .map(short_name)
                    == Some(function)
            })
            .collect();
        let theirs: Vec<&LossRecord> = records
            .iter()
            .filter(|record| record.functions.iter().any(|f| f == function))
            .collect();
        if theirs.is_empty() {
            continue;
        }
        compared += 1;
        let their_sum = theirs
            .iter()
            .fold((0, 0), |(b, n), r| (b + r.bytes, n + r.blocks));
        let our_sum = ours
            .iter()
            .fold((0, 0), |(b, n), s| (b + s.bytes, n + s.allocations));
        assert_eq!(
            our_sum,
            their_sum,
            "(bytes, blocks) at {function}, leakbpf then valgrind: {theirs:?}\n{}",
            report.describe()
        );
        for record in theirs {
            let start = record
                .functions
                .iter()
                .position(|f| f == function)
                .expect("found above");
            let end = record.functions[start..]
                .iter()
                .position(|f| f == last)
                .map(|at| start + at)
                .unwrap_or_else(|| panic!("valgrind's stack does not reach {last}: {record:?}"));
            let expected: Vec<&str> = record.functions[start..=end]
                .iter()
                .map(String::as_str)
                .collect();
            for site in &ours {
                assert_eq!(
                    site.chain_between(function, last),
                    Some(expected.clone()),
                    "leakbpf's stack at {function} ({:?}) is not valgrind's",
                    site.names()
                );
            }
        }
    }
    assert!(
        compared > 0,
        "valgrind reported none of {functions:?}: {records:?}"
    );
}

#[test]
fn the_call_chain_s_leak_has_valgrind_s_stack() {
    require_root();
    let args = ["--requests", "300"];
    let records = valgrind::run(CALL_CHAIN, &args, "");
    let run = trace(LEAKBPF, Traced::ByPid, CALL_CHAIN, &args, &[], &[]);
    compare(run.final_report(), &records, &["make_record"], "main");
}

#[test]
fn the_chat_server_s_leak_has_valgrind_s_stack() {
    require_root();
    let args = ["--joins", "300"];
    let records = valgrind::run(CHAT_SERVER_NOFP, &args, "");
    let run = trace(LEAKBPF, Traced::ByPid, CHAT_SERVER_NOFP, &args, &[], &[]);
    compare(
        run.final_report(),
        &records,
        &["EventManager::subscribe"],
        "main",
    );
}

#[test]
fn every_leak_of_the_c_leaker_has_valgrind_s_stack() {
    require_root();
    // Enough churn to exercise every path; valgrind runs it 50 times slower, and aborts
    // the program at its first pvalloc.
    let args = ["--rounds", "3000", "--no-pvalloc"];
    let records = valgrind::run(LEAKER_NOFP, &args, "");
    let run = trace(
        LEAKBPF,
        Traced::ByPid,
        LEAKER_NOFP,
        &args,
        &["--top", "1000"],
        &[],
    );
    compare(run.final_report(), &records, &LEAKER_FUNCTIONS, "main");
}

#[test]
fn rust_leaks_have_valgrind_s_stacks() {
    require_root();
    let records = valgrind::run(RUST_LEAKER_NOFP, &[], "");
    let run = trace(
        LEAKBPF,
        Traced::ByPid,
        RUST_LEAKER_NOFP,
        &[],
        &["--top", "1000"],
        &[],
    );
    compare(
        run.final_report(),
        &records,
        &["rust_leaker::leak_boxes", "rust_leaker::leak_vec"],
        "rust_leaker::main",
    );
}
