//! The program interpreter's `--list` output for the command the agent starts: the
//! resolved paths of the libraries it will map.

#![no_main]

use leakbpf::attach::objects::listed_library;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads it as text, lossily.
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Some(path) = listed_library(line) {
            assert!(
                path.starts_with('/') && line.contains(path),
                "{line:?} gave {path:?}"
            );
        }
    }
});
