//! A traced process in which not one allocation or free is seen for a few reports is
//! said to be so, with the objects that define malloc in it: an allocator leakbpf does
//! not probe must never pass for a quiet process.

use std::process::{Command, Stdio};

use leakbpf_tests::{Agent, require_root};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

#[test]
fn no_allocation_seen_is_said_with_the_objects_that_define_malloc() {
    require_root();
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep");
    let agent = Agent::attach(LEAKBPF, &[sleeper.id()], &["--interval", "200ms"]);
    let line = agent.wait_for_stderr("the warning of no allocation seen", |line| {
        line.contains("no allocation or free seen")
    });
    assert!(line.contains(&format!("pid {}", sleeper.id())), "{line}");
    assert!(
        line.contains("libc.so.6"),
        "names the object defining malloc: {line}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    agent.wait().assert_success();
}
