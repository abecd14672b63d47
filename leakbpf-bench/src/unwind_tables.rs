//! The agent's unwind-table figures, as `leakbpf --verbose` prints them for each process
//! it describes to the stack walk: what making the process's code walkable took, and
//! the kernel memory the tables' arrays take. The bench reads them from the agent's log
//! rather than timing anything itself: only the agent knows when its tables are built.

use serde::Serialize;

/// How the agent's line starts (leakbpf/src/session: `unwind tables for pid PID: ...`).
const PREFIX: &str = "leakbpf: unwind tables for pid ";

/// One process described: the first line the agent prints for it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UnwindTables {
    /// Executable mappings the kernel was told of.
    pub mappings: u64,
    /// Objects read and tabled for it (those without call frame information too).
    pub objects: u64,
    /// Rows of the tables built for it.
    pub rows: u64,
    /// How long reading its mappings and building and writing the tables took, ms.
    pub build_ms: f64,
    /// Rows of the kernel's array in use and its capacity (`--max-unwind-rows`).
    pub rows_in_use: u64,
    pub row_capacity: u64,
    /// The kernel memory of the unwind arrays, MiB: allocated whole at load, so it is
    /// the cost whatever the process maps.
    pub kernel_map_mib: f64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UnwindLineError {
    #[error("leakbpf printed no unwind-table line (`{PREFIX}...`); was it run with --verbose?")]
    Missing,
    #[error("leakbpf's unwind-table line does not read as the bench expects: {0:?}")]
    Malformed(String),
}

/// The figures of the first process described in the agent's `log`: the traced
/// process, described before its probes go live.
pub fn first_in(log: &str) -> Result<UnwindTables, UnwindLineError> {
    let line = log
        .lines()
        .find(|line| line.starts_with(PREFIX))
        .ok_or(UnwindLineError::Missing)?;
    parse(line).ok_or_else(|| UnwindLineError::Malformed(line.to_owned()))
}

/// `PREFIX PID: M executable mappings, N new tables (R rows) in T ms[, ...][; no table
/// for ...]; U of C rows in use, X MiB of kernel memory`.
fn parse(line: &str) -> Option<UnwindTables> {
    let (_pid, rest) = line.strip_prefix(PREFIX)?.split_once(": ")?;
    // The usage comes last; files without a table, if any, sit between the two.
    let (head, usage) = rest.rsplit_once("; ")?;
    let head: Vec<&str> = head.split_whitespace().collect();
    let [
        mappings,
        "executable",
        "mappings,",
        objects,
        "new",
        "tables",
        rows,
        "rows)",
        "in",
        ms,
        "ms" | "ms,",
        ..,
    ] = head.as_slice()
    else {
        return None;
    };
    let usage: Vec<&str> = usage.split_whitespace().collect();
    let [
        used,
        "of",
        capacity,
        "rows",
        "in",
        "use,",
        mib,
        "MiB",
        "of",
        "kernel",
        "memory",
    ] = usage.as_slice()
    else {
        return None;
    };
    Some(UnwindTables {
        mappings: mappings.parse().ok()?,
        objects: objects.parse().ok()?,
        rows: rows.strip_prefix('(')?.parse().ok()?,
        build_ms: ms.parse().ok()?,
        rows_in_use: used.parse().ok()?,
        row_capacity: capacity.parse().ok()?,
        kernel_map_mib: mib.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_described_process_is_read() {
        let log = "leakbpf: attaching\n\
            leakbpf: unwind tables for pid 4242: 7 executable mappings, 5 new tables \
            (91234 rows) in 38 ms; 91235 of 4194304 rows in use, 32.1 MiB of kernel memory\n\
            leakbpf: attached to pid 4242 (9 probes)\n\
            leakbpf: unwind tables for pid 4242: 8 executable mappings, 1 new tables \
            (10 rows) in 1 ms; 91245 of 4194304 rows in use, 32.1 MiB of kernel memory\n";
        assert_eq!(
            first_in(log),
            Ok(UnwindTables {
                mappings: 7,
                objects: 5,
                rows: 91234,
                build_ms: 38.0,
                rows_in_use: 91235,
                row_capacity: 4194304,
                kernel_map_mib: 32.1,
            })
        );
    }

    #[test]
    fn files_without_a_table_and_pending_ones_are_skipped_over() {
        let line = "leakbpf: unwind tables for pid 1: 3 executable mappings, 2 new tables \
            (40 rows) in 2 ms, 1 waiting for their tables; no table for /x/a b.so: its call \
            frame information is corrupt (bad; really); 41 of 100 rows in use, 0.0 MiB of \
            kernel memory";
        let tables = first_in(line).unwrap();
        assert_eq!(
            (tables.objects, tables.rows, tables.row_capacity),
            (2, 40, 100)
        );
    }

    #[test]
    fn no_line_or_another_wording_is_an_error() {
        assert_eq!(
            first_in("leakbpf: attached\n"),
            Err(UnwindLineError::Missing)
        );
        let other = "leakbpf: unwind tables for pid 1: 3 mappings; 41 of 100 rows in use";
        assert_eq!(
            first_in(other),
            Err(UnwindLineError::Malformed(other.to_owned()))
        );
    }
}
