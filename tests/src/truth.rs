//! What a target program says about itself: the protocol of every target in
//! tests/targets (alloc_target.h, chat_server.cpp, src/bin/rust_leaker.rs).
//!
//! With `--wait` a target prints `ready` and waits for a line on stdin ("go"). Then it
//! works and prints, one JSON object a line, its truths (`{"truth":{...}}`, one per
//! leaking function: what it leaked there), a `churn` line (what it allocated and freed
//! again) and, for some, other facts; then `done`. With `--wait` it then waits for EOF on
//! stdin and exits 0. Some targets stop at `paused` on the way and wait for another line.
//!
//! Each kind of line is parsed strictly: a key nobody reads here is refused, so what a
//! target says and what the tests read cannot drift apart silently.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a target leaked at one function.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub function: String,
    /// The sizes asked for, summed over the blocks still held.
    pub bytes: u64,
    pub count: u64,
    /// Targets spread over several processes name the one that leaked, and its parent.
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    /// chat_server: the size of one leaked callback, the joins that leaked one each, and
    /// whether it is the fixed build.
    pub sizeof: Option<u64>,
    pub joins: Option<u64>,
    pub fixed: Option<bool>,
}

impl Truth {
    /// The process that printed it (targets spread over several processes say).
    pub fn pid(&self) -> u32 {
        self.pid
            .unwrap_or_else(|| panic!("the truth names no process: {self:?}"))
    }

    /// The parent of the process that printed it.
    pub fn ppid(&self) -> u32 {
        self.ppid
            .unwrap_or_else(|| panic!("the truth names no parent: {self:?}"))
    }
}

/// What a target's churn did: it gave back every block it got.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// The function that allocated the churned blocks.
    pub function: String,
    /// Calls that returned a new block (not counted by rust_leaker).
    pub allocations: Option<u64>,
    /// Calls of a free function.
    pub frees: u64,
    /// Calls that failed on purpose (an overflowing calloc), where the target makes some.
    pub failed_allocations: Option<u64>,
    /// Targets spread over several processes name the one that churned.
    pub pid: Option<u32>,
}

/// A JSON line of a target.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Line {
    Truth(Truth),
    Churn(Churn),
    /// stripped: the source line of each leaking function's allocating call.
    Lines(BTreeMap<String, u32>),
}

/// Everything a target printed up to `done` (or a `paused`).
#[derive(Clone, Debug, Default)]
pub struct TargetOutput {
    pub truths: Vec<Truth>,
    pub churns: Vec<Churn>,
    pub lines: BTreeMap<String, u32>,
}

impl TargetOutput {
    /// Adds one line of the target's output, which must be one of its JSON lines.
    pub(crate) fn add_line(&mut self, name: &str, line: &str) {
        let parsed = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("{name} printed a line of no known kind ({err}): {line}"));
        match parsed {
            Line::Truth(truth) => self.truths.push(truth),
            Line::Churn(churn) => self.churns.push(churn),
            Line::Lines(lines) => self.lines.extend(lines),
        }
    }

    /// The truth about `function`.
    pub fn truth(&self, function: &str) -> &Truth {
        self.truths
            .iter()
            .find(|truth| truth.function == function)
            .unwrap_or_else(|| panic!("the target printed no truth about {function}: {self:?}"))
    }

    /// The churn of a target that runs as one process.
    pub fn churn(&self) -> &Churn {
        match &self.churns[..] {
            [churn] => churn,
            churns => panic!("one churn line expected, the target printed {churns:?}"),
        }
    }

    /// The churn of process `pid`, in a target spread over several.
    pub fn churn_of(&self, pid: u32) -> &Churn {
        self.churns
            .iter()
            .find(|churn| churn.pid == Some(pid))
            .unwrap_or_else(|| panic!("no churn line from pid {pid}: {self:?}"))
    }

    /// The source line the target gives for `function`'s allocating call.
    pub fn line_of(&self, function: &str) -> u32 {
        *self
            .lines
            .get(function)
            .unwrap_or_else(|| panic!("the target printed no line for {function}: {self:?}"))
    }

    /// The lines of `other`, printed after these.
    pub fn extend(&mut self, other: Self) {
        self.truths.extend(other.truths);
        self.churns.extend(other.churns);
        self.lines.extend(other.lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_line_is_read() {
        let mut output = TargetOutput::default();
        for line in [
            r#"{"truth":{"function":"leak_malloc","bytes":4096,"count":2}}"#,
            r#"{"truth":{"function":"leak_in_child","bytes":10,"count":1,"pid":7,"ppid":6}}"#,
            r#"{"truth":{"function":"EventManager::subscribe","bytes":368,"count":2,"sizeof":184,"joins":2,"fixed":false}}"#,
            r#"{"churn":{"function":"churn","allocations":10,"frees":9,"failed_allocations":1}}"#,
            r#"{"churn":{"function":"rust_leaker::churn","frees":3}}"#,
            r#"{"lines":{"leak_malloc":20,"leak_calloc":26}}"#,
        ] {
            output.add_line("target", line);
        }
        assert_eq!(output.truth("leak_malloc").bytes, 4096);
        assert_eq!(output.truth("leak_in_child").pid(), 7);
        assert_eq!(output.truth("EventManager::subscribe").sizeof, Some(184));
        assert_eq!(output.churns[0].failed_allocations, Some(1));
        assert_eq!(output.churns[1].allocations, None);
        assert_eq!(output.line_of("leak_calloc"), 26);
    }

    #[test]
    #[should_panic(expected = "no known kind")]
    fn an_unknown_key_is_refused() {
        TargetOutput::default().add_line(
            "target",
            r#"{"truth":{"function":"f","bytes":1,"count":1,"size":1}}"#,
        );
    }
}
