//! The demo's leak: every join leaks one EventCallback, allocated at
//! EventManager::subscribe <- ChatRoom::addUser <- Server::handleJoin, whether the
//! server keeps frame pointers or not (as distributions build it).

use leakbpf_tests::{
    CHAT_SERVER, CHAT_SERVER_NOFP, Report, TargetOutput, Truth, assert_chain, require_root,
    trace_pid, trace_spawn,
};

/// The leak's stack, from the function that said `new` to `main`.
const LEAK_CHAIN: [&str; 5] = [
    "EventManager::subscribe",
    "ChatRoom::addUser",
    "Server::handleJoin",
    "simulate",
    "main",
];

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

fn subscribe_truth(truth: &TargetOutput) -> &Truth {
    truth.truth("EventManager::subscribe")
}

/// The report shows the leak at its stack, with exactly the target's figures, on top.
fn assert_leak_reported(report: &Report, truth: &Truth) {
    let joins = truth.joins.expect("chat_server's truth has its joins");
    let size = truth
        .sizeof
        .expect("chat_server's truth has the callback's size");
    assert_eq!(truth.fixed, Some(false), "{truth:?}");
    assert!(joins > 0, "the target did no joins: {truth:?}");
    // The target's own account: the bug leaks one callback per join.
    assert_eq!(
        (truth.count, truth.bytes),
        (joins, joins * size),
        "{truth:?}"
    );

    let sites: Vec<_> = report
        .sites_where(|site| {
            site.function(0)
                .is_some_and(|f| f.contains("EventManager::subscribe"))
        })
        .collect();
    assert_eq!(
        sites.len(),
        1,
        "expected one call site allocating in EventManager::subscribe:\n{}",
        report.describe()
    );
    let site = sites[0];
    let frame = |index| site.function(index).unwrap_or("<none>");
    assert!(
        frame(1).contains("ChatRoom::addUser"),
        "frames[1] is {}",
        frame(1)
    );
    assert!(
        frame(2).contains("Server::handleJoin"),
        "frames[2] is {}",
        frame(2)
    );
    assert_eq!(
        (site.allocations, site.bytes),
        (truth.count, truth.bytes),
        "allocations and bytes at EventManager::subscribe (sizeof(EventCallback) = {size}):\n{}",
        report.describe()
    );
    assert_eq!(site.average_size, size, "{}", report.describe());
    assert_eq!(
        site.rank,
        1,
        "the leak is the top call site:\n{}",
        report.describe()
    );
    assert_chain(report, LEAK_CHAIN[0], &LEAK_CHAIN);
}

fn buggy_chat_server_traced_by_pid(server: &str) {
    require_root();
    let run = trace_pid(LEAKBPF, server, &["--joins", "1000"], &["--top", "1000"]);
    let report = run.final_report();
    assert_leak_reported(report, subscribe_truth(&run.truth));
    assert_eq!(
        report.counters.truncated_stacks,
        0,
        "every stack reaches its outermost frame:\n{}",
        report.describe()
    );
}

fn buggy_chat_server_traced_from_spawn(server: &str) {
    require_root();
    let run = trace_spawn(LEAKBPF, server, &["--joins", "500"], &["--top", "1000"]);
    let report = run.final_report();
    assert_leak_reported(report, subscribe_truth(&run.truth));
    // Held at its dynamic linker's notice, it ran no code whose table was not ready.
    assert_eq!(
        report.counters.truncated_stacks,
        0,
        "every stack reaches its outermost frame:\n{}",
        report.describe()
    );
}

#[test]
fn buggy_chat_server_traced_by_pid_with_frame_pointers() {
    buggy_chat_server_traced_by_pid(CHAT_SERVER);
}

#[test]
fn buggy_chat_server_traced_by_pid_without_frame_pointers() {
    buggy_chat_server_traced_by_pid(CHAT_SERVER_NOFP);
}

#[test]
fn buggy_chat_server_traced_from_spawn_with_frame_pointers() {
    buggy_chat_server_traced_from_spawn(CHAT_SERVER);
}

#[test]
fn buggy_chat_server_traced_from_spawn_without_frame_pointers() {
    buggy_chat_server_traced_from_spawn(CHAT_SERVER_NOFP);
}

#[test]
fn fixed_chat_server_leaks_nothing_at_subscribe() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        CHAT_SERVER,
        &["--joins", "1000", "--fixed"],
        &["--top", "1000"],
    );
    let report = run.final_report();
    let truth = subscribe_truth(&run.truth);
    let joins = truth.joins.expect("chat_server's truth has its joins");
    assert_eq!(truth.fixed, Some(true), "{truth:?}");
    assert_eq!(
        (truth.count, truth.bytes),
        (0, 0),
        "the fixed build leaks: {truth:?}"
    );
    // The run was traced: each join allocated (and freed) at least its callback.
    assert!(
        report.counters.allocations >= joins && report.counters.frees >= joins,
        "leakbpf saw too few events for {joins} joins:\n{}",
        report.describe()
    );
    let leaking: Vec<_> = report
        .sites_where(|site| {
            site.bytes > 0
                && site
                    .function(0)
                    .is_some_and(|f| f.contains("EventManager::subscribe"))
        })
        .collect();
    assert!(
        leaking.is_empty(),
        "the fixed build holds nothing allocated by EventManager::subscribe:\n{}",
        report.describe()
    );
}
