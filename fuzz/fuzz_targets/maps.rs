//! What the agent reads from /proc/PID: the memory map's executable file mappings, and
//! `LD_PRELOAD` from the environment.

#![no_main]

use leakbpf::attach::objects::{executable_mapping, preloaded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads the map as text.
    if let Ok(maps) = std::str::from_utf8(data) {
        for line in maps.lines() {
            if let Some(path) = executable_mapping(line) {
                let path = path.to_str().unwrap();
                // The path is the line's last field, as written.
                assert!(
                    path.starts_with('/') && line.ends_with(path),
                    "{line:?} gave {path:?}"
                );
            }
        }
    }
    for library in preloaded(data) {
        assert!(
            !library.is_empty() && !library.contains([' ', ':']),
            "{library:?}"
        );
    }
});
