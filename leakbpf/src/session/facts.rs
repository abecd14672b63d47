//! What `/proc` says of a traced process: whether it still runs, and what it is.

use procfs::process::{ProcState, Process};

use crate::snapshot::ProcessFacts;

/// Whether `pid` still runs (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    Process::new(pid as i32)
        .and_then(|process| process.stat())
        .and_then(|stat| stat.state())
        .is_ok_and(|state| !matches!(state, ProcState::Zombie | ProcState::Dead))
}

/// Its command name and program, as far as they can still be read.
pub fn facts(pid: u32) -> ProcessFacts {
    let Ok(process) = Process::new(pid as i32) else {
        return ProcessFacts::default();
    };
    ProcessFacts {
        command: process.stat().ok().map(|stat| stat.comm),
        executable: process
            .exe()
            .ok()
            .map(|path| path.to_string_lossy().into_owned()),
    }
}

/// Its resident set size and the anonymous part of it (`VmRSS`, `RssAnon`), in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = Process::new(pid as i32).ok()?.status().ok()?;
    Some((status.vmrss? * 1024, status.rssanon? * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_named() {
        let own = std::process::id();
        assert!(is_alive(own));
        let facts = facts(own);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(facts.executable.as_deref(), exe.to_str());
        let name = exe.file_name().unwrap().to_string_lossy();
        // The kernel keeps 15 bytes of the name.
        assert!(name.starts_with(facts.command.as_deref().unwrap()));
    }

    #[test]
    fn reads_this_process_s_resident_set() {
        let (rss, anon) = rss(std::process::id()).unwrap();
        assert!(anon > 0 && anon <= rss, "{anon} of {rss}");
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert_eq!(facts(pid), ProcessFacts::default());
        assert_eq!(rss(pid), None);
    }
}
