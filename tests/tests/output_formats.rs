//! The table (the default format) shows what the JSON shows.

use leakbpf_tests::{Agent, CHAT_SERVER, Target, require_root, trace_pid};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");
const JOINS: &str = "400";

#[test]
fn table_shows_the_json_top_call_site() {
    require_root();
    let json = trace_pid(LEAKBPF, CHAT_SERVER, &["--joins", JOINS], &[]);
    let report = json.final_report();
    let top = report
        .callsites
        .first()
        .unwrap_or_else(|| panic!("no call site:\n{}", report.describe()));
    let function = top.frames[0].function.clone().unwrap_or_else(|| {
        panic!(
            "the top call site's function is unknown:\n{}",
            report.describe()
        )
    });

    // The same run again, as a table on stdout.
    let mut target = Target::start(CHAT_SERVER, &["--joins", JOINS]);
    let pid = target.pid().to_string();
    let agent = Agent::spawn(LEAKBPF, ["--pid", pid.as_str()]);
    agent.wait_attached();
    target.go();
    let truth = target.read_until_done();
    target.finish();
    let table = agent.wait();
    table.assert_success();

    // Both runs did the same, and leaked the same.
    assert_eq!(
        truth.truth("EventManager::subscribe").bytes,
        json.truth.truth("EventManager::subscribe").bytes
    );
    assert!(
        !table.stdout.trim_start().starts_with('{'),
        "the default format is a table, not JSON:\n{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&function),
        "the table lacks the top function {function:?}:\n{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&top.bytes.to_string()),
        "the table lacks the top call site's {} bytes:\n{}",
        top.bytes,
        table.stdout
    );
}
