//! Spawn mode sees what happens before main, and main's first statement.

use leakbpf_tests::{EARLY, require_root, trace_spawn};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn spawn_mode_sees_constructor_and_first_statement_leaks() {
    require_root();
    let run = trace_spawn(LEAKBPF, EARLY, &[], &["--top", "1000"]);
    let report = run.final_report();
    for function in ["early_ctor_leak", "early_main_leak"] {
        let truth = run.truth.truth(function);
        assert_eq!(truth.count, 1, "{truth:?}");
        assert_eq!(
            report.outstanding_at(function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
    }
}
